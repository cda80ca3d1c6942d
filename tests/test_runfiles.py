"""The one run-directory reader: every run kind reads through it, and so do evaluate and report."""

from __future__ import annotations

import json
import shutil

import pytest

from circuitscan.cli import main
from circuitscan.errors import CircuitscanError
from circuitscan.report.rundata import load_run
from circuitscan.rundir import read_run_json
from circuitscan.runfiles import OlderRunError, read_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A discover, a compare and two features-graph runs (task, single prompt) on toy-planted."""
    root = tmp_path_factory.mktemp("kinds")
    base = ["--model", "toy-planted"]
    assert main(["discover", *base, "--task", "planted", "-n", "16", "--epochs", "100",
                 "--out", str(root / "discover")]) == 0
    assert main(["compare", *base, "--task", "planted", "-n", "16", "--methods", "eap,norm-diff",
                 "--out", str(root / "compare")]) == 0
    assert main(["features", "train", *base, "--sites", "attn.0-2", "--corpus", "generated",
                 "--generated-tokens", "500", "--seq-len", "16", "--features", "16", "--tokens", "1024",
                 "--batch-rows", "128", "--l1", "1", "--out", str(root / "saes")]) == 0
    graph = ["features", "graph", *base, "--saes", str(root / "saes"), "--validate", "0", "--no-edges"]
    assert main([*graph, "--task", "planted", "-n", "8", "--out", str(root / "graph")]) == 0
    assert main([*graph, "--prompt-ids", "1,2,3,4,5", "--no-sae-codes", "--out", str(root / "graph1")]) == 0
    return root


def _copy(runs, name, tmp_path):
    out = tmp_path / name
    shutil.copytree(runs / name, out)
    return out


def test_every_run_kind_reads_through_the_one_reader(runs):
    for name, kind in (("discover", "discover"), ("compare", "compare"), ("graph", "features graph"),
                       ("graph1", "features graph")):
        files = read_run(runs / name)
        assert files.kind == kind and files.layout.n_total == 12
        assert files.version is not None
        for entry in files.methods.values():
            assert entry["heads"] == files.layout.names() and len(entry["scores"]) == 12
        report = load_run(runs / name)  # the report's view is built from the same files
        assert report.kind == kind and set(report.methods) == set(files.methods)
    assert files.has_task is False and read_run(runs / "graph").has_task is True
    # the blocks every kind writes the same way (runfiles.task_block / ground_truth_block)
    blocks = [read_run(runs / name).config for name in ("discover", "compare", "graph")]
    assert len({c["task"]["prompts_sha256"] for c in blocks[:2]}) == 1  # same 16 planted prompts
    for c in blocks:
        assert set(c["task"]) >= {"name", "n_positive", "n_negative", "seq_len", "prompts_sha256"}
        assert c["ground_truth"]["heads"] == ["L0H1", "L1H2", "L2H0"] and "classes" in c["ground_truth"]
    assert {"eap", "norm-diff"} <= set(read_run(runs / "compare").methods)


def test_heads_in_another_order_are_put_in_flat_order_for_every_reader(runs, tmp_path):
    run = _copy(runs, "discover", tmp_path)
    data = read_run_json(run, "scores.json")
    entry = data["methods"]["sae-codes"]
    flat_scores = list(entry["scores"])
    entry["heads"], entry["scores"] = entry["heads"][::-1], entry["scores"][::-1]
    entry["rank"] = entry["rank"][::-1]
    pairs = data["methods"]["sae-codes-pairs"]
    flat_matrix = pairs["pairs"]["matrix"]
    pairs["heads"] = pairs["heads"][::-1]
    pairs["scores"] = pairs["scores"][::-1]
    pairs["pairs"]["matrix"] = [row[::-1] for row in flat_matrix[::-1]]
    (run / "scores.json").write_text(json.dumps(data))
    files = read_run(run)
    assert files.methods["sae-codes"]["scores"] == flat_scores
    assert files.methods["sae-codes-pairs"]["pairs"]["matrix"] == flat_matrix
    assert load_run(run).methods["sae-codes"].scores.tolist() == pytest.approx(flat_scores)
    # evaluate reads the same files: its circuit is the planted one, as from the unreordered run
    assert main(["evaluate", str(run), "--random-samples", "0"]) == 0
    rows = {r["name"]: r for r in read_run_json(run, "metrics.json")["circuit_performance"]["rows"]}
    assert rows["sae-codes"]["heads"] == ["L0H1", "L1H2", "L2H0"]


@pytest.mark.parametrize("damage, message", [
    (lambda c, s: s.pop("layout"), "has no 'layout': written by circuitscan"),
    (lambda c, s: c.pop("command"), "does not say which command wrote it: written by circuitscan"),
    (lambda c, s: c.update(command="sweep"), "a run of 'sweep' is not one this version reads"),
    (lambda c, s: s["methods"]["sae-codes"].update(heads=["L0H0"] * 12), "must name each of the 12 heads"),
    (lambda c, s: s["methods"]["sae-codes"]["scores"].pop(), "has 11 scores but the layout has 12 heads"),
])
def test_unreadable_runs_are_refused_with_exit_2_and_nothing_written(runs, tmp_path, capsys, damage, message):
    run = _copy(runs, "discover", tmp_path)
    config = json.loads((run / "config.json").read_text())
    scores = read_run_json(run, "scores.json")
    damage(config, scores)
    (run / "config.json").write_text(json.dumps(config))
    (run / "scores.json").write_text(json.dumps(scores))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(CircuitscanError, match=message):
        read_run(run)
    for command in (["evaluate", str(run)], ["report", str(run)]):
        capsys.readouterr()
        assert main(command) == 2
        assert message.split(":")[0] in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / "report.html").exists() and not (run / "figures").exists()


def test_an_older_run_names_the_version_that_wrote_it(runs, tmp_path):
    run = _copy(runs, "discover", tmp_path)
    scores = read_run_json(run, "scores.json")
    del scores["layout"]
    (run / "scores.json").write_text(json.dumps(scores))
    config = json.loads((run / "config.json").read_text())
    config["circuitscan_version"] = "0.0.1"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(OlderRunError, match=r"written by circuitscan 0\.0\.1.*re-run it"):
        read_run(run)


def test_evaluate_refuses_a_single_prompt_graph_and_reads_a_task_graph(runs, tmp_path, capsys):
    one = _copy(runs, "graph1", tmp_path)
    assert main(["evaluate", str(one)]) == 2
    assert "single prompt" in capsys.readouterr().err
    task = _copy(runs, "graph", tmp_path)
    assert main(["evaluate", str(task), "--random-samples", "0"]) == 0
    assert "circuit_performance" in read_run_json(task, "metrics.json")
    assert main(["report", str(one)]) == 0 and (one / "report.html").is_file()


def test_a_sweep_directory_is_named_as_such(tmp_path):
    (tmp_path / "sweep.json").write_text("{}")
    with pytest.raises(CircuitscanError, match="is a sweep directory"):
        read_run(tmp_path)
