"""Custom task files: round trips, several answers, padding, and the documented errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuitscan.cli import main
from circuitscan.errors import TaskError
from circuitscan.models.handle import ModelHandle
from circuitscan.tasks import build_task
from circuitscan.tasks.custom import load_task_file, read_task_file, write_task_file
from circuitscan.types import HeadLayout, PromptSet


@pytest.fixture(scope="module")
def gpt2_tok() -> ModelHandle:
    from transformers import AutoTokenizer

    from circuitscan.models.loading import find_gpt2_tokenizer

    tok = AutoTokenizer.from_pretrained(str(find_gpt2_tokenizer()))
    return ModelHandle(None, "gpt2-tokenizer", "gpt2", HeadLayout(12, 12), tok, True)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _same(a: PromptSet, b: PromptSet) -> None:
    for attr in ("positive", "negative", "answers", "wrong_answers", "positive_mask", "negative_mask"):
        x, y = getattr(a, attr), getattr(b, attr)
        assert (x is None) == (y is None), attr
        if x is not None:
            assert torch.equal(x, y), attr


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("task", ["ioi", "docstring", "greater-than:negative=unrelated"])
def test_export_then_load_gives_the_same_prompts(gpt2_tok, tmp_path, suffix, task):
    built = build_task(task, gpt2_tok, 12, seed=5)
    path = tmp_path / f"task{suffix}"
    assert write_task_file(built, path, gpt2_tok) == 12
    back = load_task_file(path, gpt2_tok, n=100)
    _same(built, back)
    assert back.positive_text == built.positive_text and back.negative_text == built.negative_text
    assert back.metadata["metric"] == ("logit_diff" if built.answers is not None else "kl")
    assert back.metadata["rows_in_file"] == 12 and back.metadata["lines"][0] == (1 if suffix == ".jsonl" else 2)


def test_token_id_tasks_round_trip_through_discover(planted, tmp_path, capsys):
    built = build_task("planted", planted, 30, seed=0)
    path = tmp_path / "planted.jsonl"
    write_task_file(built, path, planted)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["positive"] == built.positive[0].tolist() and first["answer"] == int(built.answers[0, 0])
    _same(built, load_task_file(path, planted, n=30))
    with pytest.raises(TaskError, match="only the JSONL format"):
        write_task_file(built, tmp_path / "planted.csv", planted)
    out = tmp_path / "run"
    code = main(["discover", "--model", "toy-planted", "--task-file", str(path), "-n", "30", "--out", str(out),
                 "--ground-truth", "planted", "--epochs", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "task   custom  (30 positive + 30 negative prompts, 8 tokens)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ground_truth"]["sae-codes"]["auc"] == 1.0  # the planted heads, found from the file


def test_cli_export_and_show(tmp_path, capsys):
    path = tmp_path / "induction.jsonl"
    assert main(["tasks", "export", "induction", "--model", "toy-planted", "-n", "6", "-O", "length=4", "-o", str(path)]) == 0
    assert len(path.read_text().splitlines()) == 6
    assert main(["tasks", "export", "induction", "--model", "toy-planted", "-o", str(path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["tasks", "show", "--task-file", str(path), "--model", "toy-planted", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "task custom for toy-planted: 2 positive + 2 negative prompts of 8 tokens; metric: kl" in out
    assert "differs at token position(s) [4, 5, 6, 7]" in out


def test_several_answers(gpt2_tok, tmp_path):
    p = _jsonl(tmp_path / "multi.jsonl", [
        {"positive": "The capital of France is", "negative": "The capital of Spain was", "answer": [" Paris", " Lyon"],
         "wrong_answer": " Madrid"},
        {"positive": "The capital of Italy is", "negative": "The capital of Spain was", "answer": [" Rome", " Milan"],
         "wrong_answer": " Madrid"},
    ])
    ps = load_task_file(p, gpt2_tok, n=5)
    tok = gpt2_tok.tokenizer
    assert [tok.decode([int(i)]) for i in ps.answers[0]] == [" Paris", " Lyon"]
    assert ps.wrong_answers.shape == (2, 1) and "answer_sets" not in ps.metadata
    # a different number of answers per row: no tensor, per-row id lists in the metadata
    ragged = _jsonl(tmp_path / "ragged.jsonl", [
        {"positive": "The capital of France is", "negative": "The capital of Spain was", "answer": [" Paris", " Lyon"]},
        {"positive": "The capital of Italy is", "negative": "The capital of Spain was", "answer": " Rome"},
    ])
    ps = load_task_file(ragged, gpt2_tok, n=5)
    assert ps.answers is None and [len(s) for s in ps.metadata["answer_sets"]] == [2, 1]
    assert ps.metadata["answer_sets"][1] == [gpt2_tok.single_token_id(" Rome")]
    # CSV: a JSON list in the cell; exporting and reading back keeps the sets
    csv_path = tmp_path / "ragged.csv"
    write_task_file(ps, csv_path, gpt2_tok)
    assert '"["" Paris"", "" Lyon""]"' in csv_path.read_text()
    again = load_task_file(csv_path, gpt2_tok, n=5)
    assert again.metadata["answer_sets"] == ps.metadata["answer_sets"]


def test_unequal_lengths_are_left_padded_and_masked(gpt2_tok, tmp_path):
    rows = [
        {"positive": "When Mary and John went to the store, John gave a drink to", "negative": "Hello there"},
        {"positive": "Then, Anna and Tom went out. Tom gave a book to", "negative": "When Mary and John went to the store, Carol gave a drink to"},
    ]
    path = _jsonl(tmp_path / "unequal.jsonl", rows)
    ps = load_task_file(path, gpt2_tok, n=10)
    assert ps.metadata["padded"] and ps.metadata["pad_id"] == gpt2_tok.tokenizer.eos_token_id
    for tokens, masks, texts in ((ps.positive, ps.positive_mask, [r["positive"] for r in rows]),
                                 (ps.negative, ps.negative_mask, [r["negative"] for r in rows])):
        for i, text in enumerate(texts):
            real = gpt2_tok.to_tokens([text])[0]
            assert int(masks[i].sum()) == len(real) and bool(masks[i, -1])
            assert tokens[i, masks[i].bool()].tolist() == real
            assert not masks[i, : tokens.shape[1] - len(real)].any()  # padding on the left only
    with pytest.raises(TaskError) as exc:
        load_task_file(path, gpt2_tok, n=10, unequal="reject")
    msg = str(exc.value)
    assert "line 1 (negative: 3 tokens)" in msg and "line 2 (positive: 14 tokens)" in msg and str(path) in msg


def test_padded_prompts_give_the_head_outputs_of_the_prompts_alone(gpt2_random, tmp_path):
    """Masks reach the model and the mean: padding changes no head output."""
    from circuitscan.activations import head_outputs

    a, b = "When Mary and John went to the store, John gave a drink to", "Then, Anna and Tom went. Tom gave a book to"
    path = _jsonl(tmp_path / "pad.jsonl", [{"positive": a, "negative": b}])
    padded = load_task_file(path, gpt2_random, n=1)
    assert padded.metadata["padded"]
    x = head_outputs(gpt2_random, padded).x
    alone = [PromptSet(task="t", positive=torch.tensor(gpt2_random.to_tokens([t])), negative=torch.tensor(gpt2_random.to_tokens([t])))
             for t in (a, b)]
    for row, ps in enumerate(alone):
        ref = head_outputs(gpt2_random, ps).x[0]
        torch.testing.assert_close(x[row], ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_first_n_rows_are_used(gpt2_tok, tmp_path):
    rows = [{"positive": f"Row {i} is here", "negative": f"Row {i} was here"} for i in range(5)]
    ps = load_task_file(_jsonl(tmp_path / "five.jsonl", rows), gpt2_tok, n=3)
    assert ps.n_positive == 3 and ps.metadata["lines"] == [1, 2, 3] and ps.metadata["rows_in_file"] == 5


BAD_JSONL = [
    ('{"positive": "a b"}', r"bad\.jsonl:1: missing field 'negative'"),
    ('{"positive": "a", "negative": "b"}\n{"positive": "a", "negative": ', r"bad\.jsonl:2: not valid JSON"),
    ('["a", "b"]', r"bad\.jsonl:1: each line must be a JSON object"),
    ('{"positive": "a", "negative": "b", "answr": " c"}', r"bad\.jsonl:1: unknown field 'answr'; valid fields: positive"),
    ('{"positive": "", "negative": "b"}', r"bad\.jsonl:1: field 'positive' is empty"),
    ('{"positive": 3, "negative": "b"}', r"bad\.jsonl:1: field 'positive' must be text or a non-empty list of token ids"),
    ('{"positive": "a", "negative": "b", "answer": " Mary"}\n\n{"positive": "c", "negative": "d"}',
     r"bad\.jsonl:3: field 'answer' is missing, but line 1 gives one"),
    ('{"positive": "a", "negative": "b", "answer": {"x": 1}}', r"bad\.jsonl:1: field 'answer' must be a string"),
    ('{"positive": "a", "negative": "b", "wrong_answer": " c"}', r"bad\.jsonl:1: field 'wrong_answer' is given without 'answer'"),
    ("", r"bad\.jsonl: no prompts in the file"),
    ("\n  \n", r"bad\.jsonl: no prompts in the file"),
]


@pytest.mark.parametrize(("text", "error"), BAD_JSONL)
def test_malformed_jsonl(gpt2_tok, tmp_path, text, error):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(TaskError, match=error):
        load_task_file(path, gpt2_tok, n=10)


BAD_CSV = [
    ("positive,answer\na,b\n", r"bad\.csv:1: the header has no 'negative' column"),
    ("positive,negative,colour\na,b,c\n", r"bad\.csv:1: unknown column 'colour'"),
    ("positive,negative\na,b\nc\n", r"bad\.csv:3: 1 cells but the header has 2 columns"),
    ("positive,negative\n", r"bad\.csv: no prompts in the file"),
    ("", r"bad\.csv: no prompts in the file"),
    ('positive,negative,answer\na,b,"[ Mary"\n', r"bad\.csv:2: field 'answer': a cell starting with '\[' must be a JSON list"),
]


@pytest.mark.parametrize(("text", "error"), BAD_CSV)
def test_malformed_csv(gpt2_tok, tmp_path, text, error):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TaskError, match=error):
        load_task_file(path, gpt2_tok, n=10)


def test_errors_that_need_the_model(gpt2_tok, planted, tmp_path):
    multi = _jsonl(tmp_path / "multi.jsonl", [{"positive": "a", "negative": "b", "answer": " Mary Ann"}])
    with pytest.raises(TaskError, match=r"multi\.jsonl:1: field 'answer': ' Mary Ann' is 2 tokens"):
        load_task_file(multi, gpt2_tok, n=1)
    text = _jsonl(tmp_path / "text.jsonl", [{"positive": "a", "negative": "b"}])
    with pytest.raises(TaskError, match=r"text\.jsonl:1: field 'positive' is text, but model 'toy-planted' has no tokenizer"):
        load_task_file(text, planted, n=1)
    ids = _jsonl(tmp_path / "ids.jsonl", [{"positive": [0, 1, 2], "negative": [0, 1, 99]}])
    with pytest.raises(TaskError, match=r"ids\.jsonl:1: field 'negative': token id 99 is outside the vocabulary 0\.\.33"):
        load_task_file(ids, planted, n=1)
    with pytest.raises(TaskError, match="does not exist"):
        load_task_file(tmp_path / "missing.jsonl", planted, n=1)
    odd = tmp_path / "task.txt"
    odd.write_text("positive,negative\n")
    with pytest.raises(TaskError, match="cannot tell the file format"):
        read_task_file(odd)
    with pytest.raises(TaskError, match="unknown rule"):
        load_task_file(ids, planted, n=1, unequal="truncate")


def test_cli_reports_task_file_errors(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"positive": "a"}\n')
    code = main(["discover", "--model", "toy-planted", "--task-file", str(path), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "bad.jsonl:1: missing field 'negative'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_cli_lists_tasks_and_rejects_bad_requests(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("ioi", "ioi-acdc", "greater-than", "docstring", "induction", "planted"):
        assert f"\n  {name} " in out
    assert "negative=range, centuries=12-18" in out and "easy_negatives=K" in out
    assert main(["tasks", "list"]) == 0
    capsys.readouterr()
    assert main(["tasks", "show", "--model", "toy-planted"]) == 2
    assert "give a task name" in capsys.readouterr().err
    assert main(["tasks", "show", "planted:seq_len=99", "--model", "toy-planted"]) == 2
    assert "seq_len must be in 2..32" in capsys.readouterr().err
    assert main(["tasks", "show", "planted", "--model", "toy-planted", "-O", "colour=red"]) == 2
    assert "has no option 'colour'" in capsys.readouterr().err


def test_csv_from_a_spreadsheet(gpt2_tok, tmp_path):
    """A UTF-8 byte-order mark and quoted answers with leading spaces are read as meant."""
    path = tmp_path / "sheet.csv"
    path.write_bytes('\ufeffpositive,negative,answer\n"When Mary and John left, John thanked","When Mary and John left, Anna thanked"," Mary"\n'.encode())
    ps = load_task_file(path, gpt2_tok, n=5)
    assert ps.answers.tolist() == [[gpt2_tok.single_token_id(" Mary")]]


def test_cli_unequal_lengths_reject_exits_2_and_writes_nothing(planted, tmp_path, capsys):
    from circuitscan.commands.common import UNEQUAL_LENGTHS
    from circuitscan.tasks.custom import UNEQUAL

    assert UNEQUAL_LENGTHS == UNEQUAL  # the parser's choices are the library's
    rows = [
        {"positive": [0, 1, 2, 3, 4], "negative": [0, 1, 2, 3, 5]},
        {"positive": [0, 1, 2, 6], "negative": [0, 1, 2, 3, 7]},
    ]
    path = _jsonl(tmp_path / "unequal.jsonl", rows)
    out = tmp_path / "run"
    argv = ["discover", "--model", "toy-planted", "--task-file", str(path), "--out", str(out)]
    assert main([*argv, "--unequal-lengths", "reject"]) == 2
    err = capsys.readouterr().err
    assert "every prompt must tokenise to the same length" in err and "line 2 (positive: 4 tokens)" in err
    assert "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["unequal.jsonl"]  # no run, no partial directory
    show = ["tasks", "show", "--task-file", str(path), "--model", "toy-planted", "-n", "2"]
    assert main([*show, "--unequal-lengths", "reject"]) == 2
    assert "line 2 (positive: 4 tokens)" in capsys.readouterr().err
    assert main(show) == 0  # padded by default
