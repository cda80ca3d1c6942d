"""``circuitscan evaluate`` and ``discover --evaluate`` on the planted model, in process."""

from __future__ import annotations

import json

import pytest

from circuitscan.cli import main
from circuitscan.evaluation.curve_stats import curve_sizes
from circuitscan.rundir import read_run_json


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "planted"
    argv = ["discover", "--model", "toy-planted", "--task", "planted", "-n", "24", "--out", str(out),
            "--epochs", "200"]
    assert main(argv) == 0
    return out


def _metrics(run):
    return read_run_json(run, "metrics.json")


def test_evaluate_adds_performance_and_faithfulness(run_dir, capsys):
    before = _metrics(run_dir)
    assert main(["evaluate", str(run_dir), "--faithfulness", "--random-samples", "6",
                 "--faithfulness-samples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "circuit performance (corrupt ablation, 24 prompts)" in printed and "CPR" in printed
    after = _metrics(run_dir)
    for key in before:  # what discover wrote is kept
        if key != "timings_s":
            assert after[key] == before[key]
    perf = after["circuit_performance"]
    assert perf["ablation"] == "corrupt" and perf["metric"] == "logit_diff"
    rows = {r["name"]: r for r in perf["rows"]}
    assert rows["sae-codes"]["heads"] == ["L0H1", "L1H2", "L2H0"]
    assert rows["sae-codes"]["normalised"]["logit_diff"] == pytest.approx(1.0, abs=1e-4)
    assert rows["ground truth (planted)"]["normalised"]["logit_diff"] == pytest.approx(1.0, abs=1e-4)
    assert rows["random 3 heads"]["samples"] == 6 and "logit_diff" in rows["random 3 heads"]["std"]
    faith = after["faithfulness"]
    assert set(faith["curves"]) == {"sae-codes", "sae-codes-pairs"}
    curve = faith["curves"]["sae-codes"]
    assert curve["sizes"] == curve_sizes(12) and curve["values"][curve["sizes"].index(3)] == pytest.approx(1.0, abs=1e-4)
    assert len(curve["random_mean"]) == len(curve["sizes"]) and curve["random_samples"] == 3
    assert faith["cpr"]["sae-codes"] > faith["cpr_random"]["sae-codes"]
    assert 0 <= faith["cmd"]["sae-codes"] < faith["cmd_random"]["sae-codes"]
    assert after["timings_s"]["evaluate_interventions"] > 0
    assert perf["cost"]["forward_passes"] >= 3


def test_evaluate_with_other_ablation_size_and_ground_truth(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--ablation", "zero", "--size", "2", "--random-samples", "0",
                 "--ground-truth", "L0H1,L1H2", "--examples", "8", "--eval-precision", "bf16"]) == 0
    perf = _metrics(run_dir)["circuit_performance"]
    assert perf["ablation"] == "zero" and perf["n_examples"] == 8 and perf["precision"] == "bf16"
    names = [r["name"] for r in perf["rows"]]
    assert "ground truth (user)" in names and not any(n.startswith("random") for n in names)
    assert "corrupted input" not in names  # only for corrupt ablation
    assert {r["name"]: r for r in perf["rows"]}["sae-codes"]["n_heads"] == 2


def _fails(argv, capsys, match):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err, err


def test_bad_input_exits_2_and_leaves_metrics_untouched(run_dir, tmp_path, capsys):
    before = (run_dir / "metrics.json").read_bytes()
    _fails(["evaluate", str(tmp_path / "nope")], capsys, "does not exist")
    _fails(["evaluate", str(tmp_path)], capsys, "config.json")
    _fails(["evaluate", str(run_dir), "--ground-truth", "L9H9"], capsys, "L9H9 does not exist")
    _fails(["evaluate", str(run_dir), "--metric", "prob_diff"], capsys, "metric 'prob_diff' needs")
    _fails(["evaluate", str(run_dir), "--size", "13"], capsys, "--size must be in 0..12")
    _fails(["evaluate", str(run_dir), "--examples", "25"], capsys, "n_examples must be in 1..24")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(run_dir), "--ablation", "resample"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(run_dir), "--eval-precision", "half"])
    assert exc.value.code == 2 and "invalid choice: 'half'" in capsys.readouterr().err
    assert (run_dir / "metrics.json").read_bytes() == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_discover_evaluate_in_one_go(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--model", "toy-planted", "--task", "planted", "-n", "16", "--out", str(out),
                 "--epochs", "100", "--level", "node", "--evaluate", "--ablation", "mean",
                 "--random-samples", "3"]) == 0
    assert "circuit performance (mean ablation" in capsys.readouterr().out
    metrics = _metrics(out)
    assert metrics["circuit_performance"]["ablation"] == "mean"
    assert set(metrics["faithfulness"]["curves"]) == {"sae-codes"}
    assert json.loads((out / "config.json").read_text())["argv"]["evaluate"] is True


def test_edge_scores_in_scores_json_get_edge_level_cpr(run_dir, tmp_path, capsys):
    import shutil

    from circuitscan.methods.edges import planted_true_edges

    run = tmp_path / "with-edges"
    shutil.copytree(run_dir, run)
    scores = json.loads((run / "scores.json").read_text())
    # a method that scores edges (as compare writes them): the planted value edges and read-outs
    ports = {e if e.endswith("logits") else f"{e}.v" for e in planted_true_edges()}
    scores["methods"]["sae-codes"]["edges"] = dict.fromkeys(sorted(ports), 1.0)
    (run / "scores.json").write_text(json.dumps(scores))
    assert main(["evaluate", str(run), "--faithfulness", "--random-samples", "0", "--faithfulness-samples", "0",
                 "--examples", "6"]) == 0
    assert "edge level (193 edges)" in capsys.readouterr().out
    edge = _metrics(run)["faithfulness"]["edge_level"]
    assert set(edge["curves"]) == {"sae-codes"}  # the pairs method has no edge scores
    assert edge["cpr"]["sae-codes"] > 0.9 and edge["cmd"]["sae-codes"] < 0.1


def test_cli_and_library_share_the_random_samples_default():
    import inspect

    from circuitscan.commands import evaluate as cmd
    from circuitscan.comparison import compare
    from circuitscan.evaluation import curve_stats, performance

    assert cmd.RANDOM_SAMPLES == performance.RANDOM_SAMPLES
    assert inspect.signature(performance.evaluate_run).parameters["random_samples"].default == cmd.RANDOM_SAMPLES
    assert cmd.CURVE_POINTS == curve_stats.CURVE_POINTS
    for fn, name in ((performance.evaluate_run, "faithfulness_points"), (compare, "faithfulness_points"),
                     (curve_stats.curve_sizes, "max_points")):
        assert inspect.signature(fn).parameters[name].default == cmd.CURVE_POINTS
