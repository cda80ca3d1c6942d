"""``compare``: every method on the same prompts, evaluated alike, written as a run directory."""

from __future__ import annotations

import json

import pytest

from circuitscan.cli import main
from circuitscan.comparison import CompareSettings, compare, format_table, parse_methods
from circuitscan.errors import CircuitscanError
from circuitscan.methods import all_names


@pytest.fixture(scope="module")
def planted_run(planted, planted_prompts, tmp_path_factory):
    from circuitscan.circuits import get

    out = tmp_path_factory.mktemp("cmp") / "run"
    settings = CompareSettings(sp_steps=40, acdc_thresholds=(0.01, 1.0), batch_size=40)
    result = compare(planted, planted_prompts, all_names(), get("planted"), out, settings=settings,
                     faithfulness_samples=2)
    return result, out


def test_compare_writes_a_complete_run_directory(planted_run):
    result, out = planted_run
    assert sorted(p.name for p in out.iterdir()) == ["circuitscan.json", "config.json", "metrics.json", "scores.json", "timings.json"]
    config = json.loads((out / "config.json").read_text())
    scores = json.loads((out / "scores.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["command"] == "compare" and config["methods"] == all_names()
    assert config["edge_ground_truth"] == "planted"
    expected = [*all_names()[:1], "sae-codes-pairs", *all_names()[1:]]
    assert list(scores["methods"]) == expected
    for name, entry in scores["methods"].items():
        assert len(entry["scores"]) == 12 and entry["forward_passes"] >= 1, name
    assert set(scores["methods"]["eap"]["edges"]) >= {"input->L0H1.v", "L2H0->logits"}
    assert set(metrics["ground_truth"]) == set(expected)
    assert set(metrics["edge_ground_truth"]) == {"eap", "eap-ig", "acdc-edge", "edge-pruning", "relp"}
    assert set(metrics["faithfulness"]["cpr"]) == set(expected)
    rows = {r["method"]: r for r in metrics["comparison"]["rows"]}
    assert list(rows) == expected
    for name, row in rows.items():
        if name == "sae-codes-pairs":
            assert row["node_auc"] is None and row["head_auc_from_pairs"] == pytest.approx(1.0)
        else:
            assert row["node_auc"] == pytest.approx(1.0), name
        assert row["best_f1_size"] == 3
        assert 0.0 <= row["cpr"] <= 1.5 and row["cmd"] >= 0.0
        sweep = name in ("acdc", "acdc-edge", "sp")
        assert row["roc_source"].startswith("threshold sweep") == sweep, name
        assert (row["edge_auc"] is not None) == (name in ("eap", "eap-ig", "acdc-edge", "edge-pruning", "relp")), name
    assert rows["eap"]["edge_auc"] == pytest.approx(1.0)
    assert rows["edge-pruning"]["edge_auc"] == pytest.approx(1.0)
    assert rows["acdc-edge"]["edge_auc"] == pytest.approx(1.0)
    assert metrics["edge_ground_truth"]["acdc-edge"]["roc_source"] == "threshold sweep"
    assert metrics["ground_truth"]["acdc"]["sweep"]["auc"] == pytest.approx(1.0)
    assert rows["eap"]["backward_passes"] == 1 and rows["patching"]["backward_passes"] == 0
    table = format_table(result.rows)
    assert table.count("\n") == len(expected) and "threshold sweep" in table


def test_the_run_can_be_evaluated(planted_run, tmp_path):
    import shutil

    from circuitscan.evaluation.performance import evaluate_run

    _, out = planted_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    ev = evaluate_run(copy, random_samples=2)
    assert "eap" in ev.circuits and set(ev.circuits["eap"]) == {"L0H1", "L1H2", "L2H0"}


def test_cli_compare_prints_the_table(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "12", "--methods",
                 "eap,norm-diff,acdc", "--out", str(out), "--no-faithfulness"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "node AUC" in captured.out and "eap" in captured.out and "threshold sweep" in captured.out
    assert "running acdc" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in metrics["comparison"]["rows"]] == ["eap", "norm-diff", "acdc"]
    assert "faithfulness" not in metrics


def test_cli_rejects_bad_input_before_any_work(tmp_path, capsys):
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "--methods", "eap,magic",
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "'magic'" in err and "valid: sae-codes" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "--methods", "eap", "--out",
                 str(full)]) == 2
    assert "not empty" in capsys.readouterr().err
    # a failure mid-way (a metric the task cannot give) leaves nothing behind
    out = tmp_path / "b"
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "12", "--methods",
                 "norm-diff,eap", "--metric", "prob_diff", "--out", str(out)]) == 2
    assert "prob_diff" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".b*"))


def test_parse_methods():
    assert parse_methods("all") == all_names()
    assert parse_methods(" eap , sp ") == ["eap", "sp"]
    with pytest.raises(CircuitscanError, match="twice"):
        parse_methods("eap,eap")
    with pytest.raises(CircuitscanError, match="none given"):
        parse_methods(",")


@pytest.mark.slow
def test_compare_end_to_end_on_smollm2(smollm2, tmp_path):
    from circuitscan.config import SAEConfig
    from circuitscan.methods import SAECodesConfig
    from circuitscan.tasks import build_task

    prompts = build_task("ioi", smollm2, 6, seed=0)
    out = tmp_path / "run"
    settings = CompareSettings(batch_size=6)
    result = compare(smollm2, prompts, ["sae-codes", "eap", "hisp", "norm-diff"], None, out, settings=settings,
                     configs={"sae-codes": SAECodesConfig(sae=SAEConfig(epochs=100), level="both")},
                     faithfulness_samples=1, faithfulness_points=6)
    rows = {r["method"]: r for r in result.rows}
    assert list(rows) == ["sae-codes", "sae-codes-pairs", "eap", "hisp", "norm-diff"]
    for name, row in rows.items():
        assert row["node_auc"] is None  # no ground truth for SmolLM2
        assert row["cpr"] is not None and row["wall_time_s"] > 0, name
    # Syed et al.'s cost: two forward passes (corrupted, clean) and one backward pass
    assert rows["eap"]["forward_passes"] == 2 and rows["eap"]["backward_passes"] == 1
    scores = json.loads((out / "scores.json").read_text())
    edges = scores["methods"]["eap"]["edges"]
    # grouped-query attention: key/value receivers are SmolLM2's 3 key/value heads per layer
    assert "L0H0->L5KV1.k" in edges and "L29H8->logits" in edges and "L3H0->L5H8.q" in edges
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["circuits"]["eap"]["rule"].startswith("top 10%")


_WARNS_INSIDE_COMPARE = """
import sys, warnings
import circuitscan.comparison as c
from circuitscan.cli import main

real = c.compare

def compare_that_warns(*args, **kwargs):
    warnings.warn("a library warning raised inside compare", UserWarning)
    return real(*args, **kwargs)

c.compare = compare_that_warns
sys.exit(main(sys.argv[1:]))
"""


def test_cli_compare_exits_after_a_library_warning(tmp_path):
    """A warning that is not circuitscan's, raised during the command, is shown once after it
    and the process exits (issue 16: re-shown inside the recording block, each warning was
    recorded again and ``compare`` spun at 100 % CPU after printing "wrote DIR")."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "CIRCUITSCAN_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _WARNS_INSIDE_COMPARE, "compare", "--model", "toy-planted", "--task", "planted",
         "-n", "12", "--methods", "eap", "--out", str(out), "--no-faithfulness"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote  {out}/" in proc.stdout
    assert proc.stderr.count("a library warning raised inside compare") == 1, proc.stderr


def _faith(planted, prompts, **kw):
    result = compare(planted, prompts, ["eap", "norm-diff"], None, settings=CompareSettings(batch_size=40),
                     faithfulness_samples=3, **kw)
    block = result.metrics["faithfulness"]
    block["cost"].pop("seconds")
    return block


def test_random_examples_reach_the_faithfulness_curves(planted, planted_prompts):
    """``random_examples`` reaches the curves: 0 and >= n give the same block, a small N runs the
    random circuits on N prompts (fewer rows, the count recorded) and leaves the methods' curves alone."""
    n = planted_prompts.n_positive
    every = _faith(planted, planted_prompts, random_examples=0)
    assert _faith(planted, planted_prompts, random_examples=n + 5) == every
    assert all(c["random_examples"] == n for c in every["curves"].values())
    few = _faith(planted, planted_prompts, random_examples=4)
    assert all(c["random_examples"] == 4 for c in few["curves"].values())
    assert few["cost"]["rows"] < every["cost"]["rows"]
    for m, c in few["curves"].items():
        assert c["values"] == every["curves"][m]["values"] and c["sizes"] == every["curves"][m]["sizes"], m
        assert c["random_mean"] != every["curves"][m]["random_mean"], m
    default = _faith(planted, planted_prompts)
    assert all(c["random_examples"] == min(n, 16) for c in default["curves"].values())


def test_compare_refuses_negative_random_examples_before_any_work(planted, planted_prompts, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CircuitscanError, match="random_examples must be >= 0"):
        compare(planted, planted_prompts, ["eap"], None, out, random_examples=-1)
    assert not out.exists()


def test_cli_compare_random_examples(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "12", "--methods", "eap",
                 "--out", str(out), "--faithfulness-samples", "2", "--random-examples", "5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["random_examples"] for c in metrics["faithfulness"]["curves"].values()] == [5]
    assert json.loads((out / "config.json").read_text())["argv"]["random_examples"] == 5
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit) as exit_:
            main(["compare", "--model", "toy-planted", "--task", "planted", "--methods", "eap",
                  "--out", str(tmp_path / "bad"), "--random-examples", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--random-examples" in err and bad in err
    assert not (tmp_path / "bad").exists()
