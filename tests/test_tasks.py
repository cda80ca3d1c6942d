"""Every task on the GPT-2 tokenizer and on SmolLM2's: lengths, answers, intended differences, seeds.

These tests need only the tokenizers (no weights): a :class:`ModelHandle` without a bridge
is enough for building prompts.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from circuitscan.errors import TaskError
from circuitscan.models.handle import ModelHandle
from circuitscan.tasks import TASKS, build_task, parse_task_spec, task_options
from circuitscan.tasks.base import data_text, word_list
from circuitscan.tasks.greater_than import NEGATIVES as GT_NEGATIVES
from circuitscan.types import HeadLayout

N = 40


def _gpt2_tokenizer():
    from transformers import AutoTokenizer

    from circuitscan.models.loading import find_gpt2_tokenizer

    return AutoTokenizer.from_pretrained(str(find_gpt2_tokenizer()))


def _smollm2_tokenizer():
    """From the converted model's cache if present, else straight from the GGUF file."""
    from transformers import AutoTokenizer

    from circuitscan.errors import ModelLoadError
    from circuitscan.models.loading import cache_dir, smollm2_gguf_path

    cached = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    try:
        gguf = smollm2_gguf_path()
    except ModelLoadError as exc:  # pragma: no cover - the set-up script installs it
        pytest.skip(f"SmolLM2's tokenizer is not installed: {exc}")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module", params=["gpt2", "smollm2"])
def tok_model(request) -> ModelHandle:
    """A tokenizer-only handle: GPT-2 (BOS prepended, two-digit year tokens) or SmolLM2 (digits split)."""
    if request.param == "gpt2":
        return ModelHandle(None, "gpt2-tokenizer", "gpt2", HeadLayout(12, 12), _gpt2_tokenizer(), True)
    return ModelHandle(None, "smollm2-tokenizer", "smollm2-135m", HeadLayout(30, 9), _smollm2_tokenizer(), False)


def _single(model: ModelHandle, tid: int) -> bool:
    return model.single_token_id(model.tokenizer.decode([tid])) == tid


def _diff(p: torch.Tensor, q: torch.Tensor) -> list[int]:
    return (p != q).nonzero().flatten().tolist()


TEXT_TASKS = ["ioi", "ioi-acdc", "docstring", "induction", *(f"greater-than:negative={x}" for x in GT_NEGATIVES)]


@pytest.mark.parametrize("spec", TEXT_TASKS)
def test_equal_lengths_single_token_answers_and_seeds(tok_model, spec):
    p = build_task(spec, tok_model, N, seed=3)
    assert p.positive.shape == p.negative.shape == (N, p.seq_len)
    assert p.metadata["metric"] in ("logit_diff", "prob_diff", "induction_loss")
    for t in (p.answers, p.wrong_answers):
        if t is not None:
            assert t.shape[0] == N
            assert all(_single(tok_model, int(i)) for i in t.flatten())
    vocab = len(tok_model.tokenizer)
    assert int(p.positive.min()) >= 0 and int(p.positive.max()) < vocab
    # deterministic by seed; another seed gives other prompts
    again = build_task(spec, tok_model, N, seed=3)
    assert torch.equal(p.positive, again.positive) and torch.equal(p.negative, again.negative)
    assert p.positive_text == again.positive_text
    assert not torch.equal(p.positive, build_task(spec, tok_model, N, seed=4).positive)
    if p.positive_text is not None:  # the tokens are the text's tokens
        assert tok_model.to_tokens([p.positive_text[0]])[0] == p.positive[0].tolist()


def test_ioi_paper_negative_changes_only_the_repeated_subject(tok_model):
    p = build_task("ioi", tok_model, N, seed=0)
    names = {tok_model.single_token_id(" " + n) for n in word_list("names.txt")} - {None}
    for i in range(N):
        pos, neg = p.positive[i], p.negative[i]
        io, s = int(p.answers[i, 0]), int(p.wrong_answers[i, 0])
        where_s = (pos == s).nonzero().flatten().tolist()
        assert len(where_s) == 2 and int((pos == io).sum()) == 1
        assert _diff(pos, neg) == [where_s[1]]  # exactly the second subject
        assert int(neg[where_s[1]]) in names - {io, s}
    assert p.metadata["flavour"] == "oneill-bui" and p.task == "ioi"


def test_ioi_acdc_template_and_three_random_names(tok_model):
    p = build_task("ioi-acdc", tok_model, N, seed=0)
    assert p.task == "ioi-acdc"
    for i in range(N):
        text = p.positive_text[i]
        m = re.fullmatch(r"Then, (\w+) and (\w+) went to the (\w+)\. (\w+) gave a (\w+) to", text)
        assert m and m.group(2) == m.group(4)
        pos, neg = p.positive[i], p.negative[i]
        io, s = int(p.answers[i, 0]), int(p.wrong_answers[i, 0])
        name_pos = (pos == io).nonzero().flatten().tolist() + (pos == s).nonzero().flatten().tolist()
        assert _diff(pos, neg) == sorted(name_pos)  # IO, S1, S2 and nothing else
        fresh = {int(neg[j]) for j in name_pos}
        assert len(fresh) == 3 and not fresh & {io, s}


def test_greater_than_range_negative_and_balanced_years(tok_model):
    n = 2 * 97
    p = build_task("greater-than", tok_model, n, seed=0)
    yy, xx = p.metadata["yy"], p.metadata["century"]
    assert set(yy) <= set(range(2, 99)) and set(xx) <= set(range(12, 19))
    counts = Counter(yy)
    assert max(counts.values()) - min(counts.values()) <= 2 and len(counts) >= 90
    two_digit = p.metadata["year_reading"] == "two-digit"
    assert p.metadata["year_reading"] == ("two-digit" if tok_model.family == "smollm2-135m" else "single-token")
    for i in range(n):
        assert p.positive_text[i].endswith(f"from the year {xx[i]}{yy[i]:02d} to the year {xx[i]}")
        assert p.negative_text[i] == p.positive_text[i][: -2] + str(xx[i] - 1)
        assert _diff(p.positive[i], p.negative[i]) == [p.seq_len - 1]  # the century (or its last digit)
    tok = tok_model.tokenizer
    if two_digit:
        assert [tok.decode([d]) for d in p.metadata["eval_suffix_ids"]] == [str(d) for d in range(10)]
    else:
        ids = p.metadata["yy_token_ids"]
        assert [tok.decode([d]) for d in ids] == [f"{y:02d}" for y in range(100)]
        # the start year splits as " XX" + "YY": its second token is YY's token
        for i in range(n):
            assert int(p.positive[i, p.seq_len - 5]) == ids[yy[i]]


def test_greater_than_other_negatives(tok_model):
    year = build_task("greater-than:negative=year", tok_model, N, seed=1)
    rand = build_task("greater-than:negative=random", tok_model, N, seed=1)
    copy = build_task("greater-than:negative=copy", tok_model, N, seed=1)
    unrel = build_task("greater-than:negative=unrelated", tok_model, N, seed=1)
    for i in range(N):
        xx, yy = year.metadata["century"][i], year.metadata["yy"][i]
        assert year.negative_text[i] == year.positive_text[i].replace(f"{xx}{yy:02d}", f"{xx}01")
        xx = rand.metadata["century"][i]
        assert re.search(rf"from the year {xx}[A-Z]{{2}} to the year {xx}$", rand.negative_text[i])
        pos_m = re.search(r"The (\w+) lasted from the year (\d\d)(\d\d) to the year (\d\d)$", copy.positive_text[i])
        neg_m = re.search(r"The (\w+) lasted from the year (\d\d)(\d\d) to the year (\d\d)$", copy.negative_text[i])
        assert pos_m.group(1) == neg_m.group(1)  # same noun
        assert neg_m.group(2) == neg_m.group(4) != pos_m.group(2) and neg_m.group(3) != pos_m.group(3)
        assert unrel.negative_text[i].startswith("I've got a lovely bunch of ")
    # unrelated negatives are shorter: left-padded, the mask marks the real tokens
    assert unrel.positive_mask is None and unrel.negative_mask is not None
    for i in range(N):
        real = unrel.negative[i][unrel.negative_mask[i].bool()].tolist()
        assert real == tok_model.to_tokens([unrel.negative_text[i]])[0]
        assert unrel.negative_mask[i, -1] == 1 and unrel.negative_mask[i, 0] == 0


def test_docstring_prompts_and_corruptions(tok_model):
    p = build_task("docstring", tok_model, N, seed=0)
    assert p.answers.shape == (N, 1) and p.wrong_answers.shape == (N, 13)
    for i in range(N):
        text = p.positive_text[i]
        m = re.match(r"\ndef (\w+)\(self, ([\w, ]+)\):\n    \"\"\"(\w+) (\w+) (\w+)\n\n", text)
        assert m, text
        def_args = m.group(2).split(", ")
        assert len(def_args) == 6  # 2 prefix + 3 matching + 1 suffix
        doc = re.findall(r"    :param (\w+): (\w+) (\w+)\n", text)
        assert [d[0] for d in doc] == def_args[2:4] and text.endswith("\n    :param")
        answer = tok_model.tokenizer.decode([int(p.answers[i, 0])])
        assert answer == " " + def_args[4]
        wrong = {tok_model.tokenizer.decode([int(w)]) for w in p.wrong_answers[i]}
        assert answer not in wrong and {" " + a for a in def_args if a != def_args[4]} <= wrong
        # random_random: the three matching def names and the two documented names change
        d = _diff(p.positive[i], p.negative[i])
        assert len(d) == 5
        assert all(tok_model.tokenizer.decode([int(p.positive[i, j])]).strip() in def_args for j in d)
    assert p.metadata["n_matching_args"] == 3 and p.metadata["met_desc_len"] == 3


@pytest.mark.parametrize(
    ("negative", "n_diff"),
    [("random_doc", 2), ("random_def", 2), ("random_answer", 1), ("random_def_doc", 4), ("random_answer_doc", 3)],
)
def test_docstring_other_corruptions_differ_where_intended(tok_model, negative, n_diff):
    p = build_task("docstring", tok_model, 10, seed=0, negative=negative)
    for i in range(10):
        assert len(_diff(p.positive[i], p.negative[i])) == n_diff


def test_docstring_vary_length_keeps_the_tokens(tok_model):
    p = build_task("docstring:negative=vary_length_doc_desc", tok_model, 10, seed=0)
    for i in range(10):
        assert sorted(p.positive[i].tolist()) == sorted(p.negative[i].tolist())


def test_induction_halves(tok_model):
    p = build_task("induction", tok_model, N, seed=0, length=10)
    special = set(tok_model.tokenizer.all_special_ids)
    start = p.metadata["repeat_start"]
    assert start == (11 if tok_model.prepend_bos else 10) and p.seq_len == start + 10
    if tok_model.prepend_bos:
        assert (p.positive[:, 0] == tok_model.tokenizer.bos_token_id).all()
    assert p.metadata["loss_positions"] == list(range(start, start + 9))
    for i in range(N):
        a = p.positive[i, start - 10 : start].tolist()
        assert p.positive[i, start:].tolist() == a and len(set(a)) == 10
        assert p.negative[i, :start].tolist() == p.positive[i, :start].tolist()
        b = p.negative[i, start:].tolist()
        assert len(set(b)) == 10 and not set(a) & set(b) and not (set(a) | set(b)) & special
    q = build_task("induction", tok_model, 5, seed=0, length=4, vocab=(1000, 1100))
    body = q.positive[:, 1:] if tok_model.prepend_bos else q.positive
    assert q.seq_len == body.shape[1] + (1 if tok_model.prepend_bos else 0) and body.shape[1] == 8
    assert int(body.min()) >= 1000 and int(body.max()) < 1100


def test_induction_on_a_model_without_tokenizer(planted):
    p = build_task("induction", planted, 8, seed=0, length=5)
    assert p.positive.shape == (8, 10) and int(p.positive.max()) < 34
    with pytest.raises(TaskError, match="usable ids"):
        build_task("induction", planted, 8, seed=0, length=20)


def test_easy_negatives(tok_model):
    p = build_task("ioi", tok_model, 20, seed=0, easy_negatives=7)
    assert p.n_positive == 20 and p.n_negative == 27 and not p.paired
    assert p.metadata["easy_negatives"] == 7
    base = build_task("ioi", tok_model, 20, seed=0)
    assert torch.equal(p.negative[:20], base.negative)
    corpus = data_text("easy_corpus.txt")
    for j in range(20, 27):
        text = p.negative_text[j]
        assert text.strip() and text.strip() in corpus
        if tok_model.prepend_bos:
            assert int(p.negative[j, 0]) == tok_model.tokenizer.bos_token_id
    # through the spec syntax, on a task with padding (the masks grow with the negatives)
    q = build_task("greater-than:negative=unrelated,easy_negatives=3", tok_model, 10, seed=0)
    assert q.negative.shape[0] == q.negative_mask.shape[0] == 13 and bool(q.negative_mask[10:].all())


def test_text_tasks_say_why_they_cannot_be_built(planted):
    for name in ("ioi", "ioi-acdc", "greater-than", "docstring"):
        with pytest.raises(TaskError, match="needs a tokenizer"):
            build_task(name, planted, 5)
    with pytest.raises(TaskError, match="need a tokenizer"):
        build_task("induction", planted, 5, easy_negatives=2)


def test_greater_than_on_a_tokenizer_without_year_structure(tmp_path: Path):
    """A word-level tokenizer keeps " 1732" whole: greater-than must refuse and say why."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "The", "war", "lasted", "from", "the", "year", "to", "1732", "17", "32"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    model = ModelHandle(None, "word-level", "word-level", HeadLayout(1, 1), tok, False)
    with pytest.raises(TaskError, match="neither"):
        build_task("greater-than", model, 5)


def test_names_are_filtered_to_single_tokens(tok_model):
    from circuitscan.tasks.base import single_token_words

    kept = single_token_words(tok_model, ["Mary", "Xyzzyplugh"])
    assert kept == ["Mary"]


def test_registry_options_and_errors(tok_model):
    assert {"ioi", "ioi-acdc", "greater-than", "docstring", "induction", "planted"} <= set(TASKS)
    name, opts = parse_task_spec("greater_than:negative=year,centuries=12-14")
    assert name == "greater-than" and opts == {"negative": "year", "centuries": (12, 14)}
    p = build_task("greater-than:centuries=13-14", tok_model, 20, seed=0)
    assert set(p.metadata["century"]) <= {13, 14}
    assert {o.name for o in task_options("docstring")} >= {"negative", "n_matching_args", "easy_negatives"}
    assert parse_task_spec("induction:bos=false,length=4")[1] == {"bos": False, "length": 4}
    with pytest.raises(TaskError, match="unknown task 'nope'; known tasks:"):
        build_task("nope", tok_model, 5)
    with pytest.raises(TaskError, match="has no option 'colour'; its options:"):
        build_task("ioi:colour=red", tok_model, 5)
    with pytest.raises(TaskError, match="has no option"):
        build_task("ioi", tok_model, 5, colour="red")
    with pytest.raises(TaskError, match="cannot read option length='ten'"):
        build_task("induction:length=ten", tok_model, 5)
    with pytest.raises(TaskError, match="unknown negative type 'sideways'; valid: range, year"):
        build_task("greater-than:negative=sideways", tok_model, 5)
    with pytest.raises(TaskError, match="unknown negative 'x'; valid: random_random"):
        build_task("docstring:negative=x", tok_model, 5)
    with pytest.raises(TaskError, match="unknown flavour"):
        build_task("ioi:flavour=wang", tok_model, 5)
    with pytest.raises(TaskError, match=">= 1"):
        build_task("ioi", tok_model, 0)
    with pytest.raises(TaskError, match="two different ones for negative='copy'"):
        build_task("greater-than:centuries=12-12,negative=copy", tok_model, 5)
    with pytest.raises(TaskError, match=r"must contain \[A\]"):
        build_task("ioi", tok_model, 5, templates=("[A] and [B] left. He gave it to",))
