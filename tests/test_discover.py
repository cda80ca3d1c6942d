"""discover end to end: the planted circuit is found; bad input exits 2 and writes nothing."""

from __future__ import annotations

import json
import os

import pytest
import torch

from circuitscan import circuits
from circuitscan.cli import main
from circuitscan.config import SAEConfig, ScoringConfig
from circuitscan.errors import CircuitscanError
from circuitscan.run import discover


def test_default_discover_finds_the_planted_circuit(planted, planted_prompts):
    """The default (--compat circuitscan): TV ranking, the FDR circuit is the planted heads."""
    gt = circuits.get("planted")
    result = discover(planted, planted_prompts, level="both", ground_truth=gt)
    assert result.discovery.node.stats["statistic"] == "tv"
    for method in ("sae-codes", "sae-codes-pairs"):
        assert result.metrics[method].auc == 1.0, method
    assert set(result.circuits["sae-codes"]["heads"]) == {"L0H1", "L1H2", "L2H0"}
    assert result.circuits["sae-codes"]["rule"].startswith("the top 3 heads by score")
    assert "significant at FDR" in result.circuits["sae-codes"]["rule"]
    assert "effect (statistic - null mean) >= 0.05" in result.circuits["sae-codes"]["rule"]
    tv = result.discovery.node.stats["code_distance"].reshape(-1)
    planted_idx = [planted.layout.index(h) for h in gt.heads]
    others = [i for i in range(12) if i not in planted_idx]
    assert float(tv[planted_idx].min()) > float(tv[others].max())


def test_paper_discover_ranks_the_planted_heads_first(planted, planted_prompts):
    gt = circuits.get("planted")
    result = discover(planted, planted_prompts, level="both", ground_truth=gt, sae=SAEConfig(),
                      scoring=ScoringConfig())
    for method in ("sae-codes", "sae-codes-pairs"):
        m = result.metrics[method]
        # exact ground truth by construction: every planted head outranks every other head
        assert m.auc == 1.0, method
        assert m.best_f1 == 1.0
        assert set(result.circuits[method]["heads"]) == {"L0H1", "L1H2", "L2H0"}
    top3 = {h.name for h in result.discovery.node.ranking()[:3]}
    assert top3 == {"L0H1", "L1H2", "L2H0"}
    # non-planted heads compute the same thing on both prompts of a pair: no unique codes
    u = result.discovery.node.stats["unique_positive_codes"].reshape(-1)
    planted_idx = [planted.layout.index(h) for h in gt.heads]
    others = [i for i in range(12) if i not in planted_idx]
    assert torch.all(u[others] == 0) and torch.all(u[planted_idx] > 0)


def test_authors_compat_switches_change_the_run(planted, planted_prompts):
    a = discover(planted, planted_prompts, sae=SAEConfig(epochs=50), scoring=ScoringConfig(count_on="all"))
    b = discover(planted, planted_prompts, sae=SAEConfig(epochs=50))
    assert int(a.discovery.count_mask.sum()) == 80 and int(b.discovery.count_mask.sum()) == 70


def test_cli_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["discover", "--model", "toy-planted", "--task", "planted", "-n", "30", "--out", str(out),
               "--epochs", "200"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ROC AUC over heads 1.000" in printed and "L0H1" in printed
    assert "SAE    5 SAEs (seeds 0..4) of 200 features, mean final MSE" in printed  # the preset's ensemble
    assert "codes  distinct codes per head" in printed and "rank agreement over seeds" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sae"]["n_seeds"] == 5 and [m["seed"] for m in metrics["sae"]["members"]] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == [
        "circuitscan.json", "codes.safetensors", "config.json", "metrics.json", "sae.safetensors", "scores.json",
            "timings.json"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sae"]["epochs"] == 200 and cfg["model"]["spec"] == "toy-planted"
    scores = json.loads((out / "scores.json").read_text())
    node = scores["methods"]["sae-codes"]
    assert len(node["scores"]) == 12 and sorted(node["rank"]) == list(range(1, 13))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ground_truth"]["sae-codes"]["auc"] == 1.0
    timings = json.loads((out / "timings.json").read_text())["metrics.json"]["timings_s"]
    assert {"activations", "sae_train", "node_scores", "edge_scores"} <= set(timings)
    assert "timings_s" not in metrics
    # nothing temporary left next to the run
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def _run_fails(argv, capsys, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert match in err, err
    assert "Traceback" not in err


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["discover", "--model", "toy-planted", "--task", "planted", "-n", "20", "--out", str(out)]
    _run_fails(["discover", "--model", "toy-nope", "--task", "planted", "--out", str(out)], capsys, "Offline options")
    _run_fails(["discover", "--model", "toy-planted", "--task", "nope", "--out", str(out)], capsys, "unknown task 'nope'")
    _run_fails([*base, "--ground-truth", "L7H7"], capsys, "does not exist in a model with 3 layers")
    _run_fails([*base, "--ground-truth", "ioi/acdc"], capsys, "belongs to model family 'gpt2'")
    _run_fails([*base, "--train-examples", "40"], capsys, "leaving none to count codes on")
    _run_fails([*base, "--lr", "1e4", "--l1", "0", "--epochs", "300"], capsys, "diverged")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial directories either


def test_non_empty_or_unwritable_out_is_refused_before_work(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    _run_fails(["discover", "--model", "toy-planted", "--task", "planted", "--out", str(full)], capsys, "is not empty")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    if os.geteuid() != 0:  # root can write anywhere; the check is meaningful for users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _run_fails(["discover", "--model", "toy-planted", "--task", "planted", "--out", str(locked / "run")],
                   capsys, "cannot write")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _run_fails(["discover", "--model", "toy-planted", "--task", "planted", "--out", str(afile)], capsys,
               "is not a directory")


def test_argparse_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--model", "toy-planted", "--task", "planted", "--out", "x", "--features", "0"])
    assert exc.value.code == 2
    assert "expected a number >= 1" in capsys.readouterr().err


def test_discover_rejects_bad_level(planted, planted_prompts):
    with pytest.raises(CircuitscanError, match="level must be one of"):
        discover(planted, planted_prompts, level="edges")


@pytest.mark.slow
def test_smollm2_ioi_end_to_end_through_the_cli(tmp_path, capsys, cli_shares_smollm2):
    out = tmp_path / "ioi"
    rc = main(["discover", "--model", "smollm2-135m", "--task", "ioi", "-n", "40", "--out", str(out),
               "--epochs", "100", "--level", "both"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "270" in printed  # 30 layers x 9 heads
    scores = json.loads((out / "scores.json").read_text())
    node = scores["methods"]["sae-codes"]
    assert len(node["heads"]) == 270 and node["heads"][-1] == "L29H8"
    u = node["unique_positive_codes"]
    assert max(u) > 0  # some head tells IOI positives from negatives
    assert scores["methods"]["sae-codes-pairs"]["top_pairs"]
