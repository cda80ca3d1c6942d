"""``--ground-truth`` means the same in every command that takes it, including ground truths
measured on the loaded model (``induction-scores``); toy-planted, in process."""

from __future__ import annotations

import json

import pytest

from circuitscan.cli import main

GT = "induction-scores:k=3"  # the top 3 heads of toy-planted by induction score


def _ok(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def test_discover_and_evaluate_measure_the_model(tmp_path, capsys):
    run = tmp_path / "run"
    _ok(
        [
            "discover",
            "--model",
            "toy-planted",
            "--task",
            "planted",
            "-n",
            "20",
            "--epochs",
            "50",
            "--ground-truth",
            GT,
            "--out",
            str(run),
        ],
        capsys,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ground_truth"]["sae-codes"]["ground_truth"] == GT
    _ok(["evaluate", str(run), "--random-samples", "0", "--ground-truth", GT], capsys)
    rows = json.loads((run / "metrics.json").read_text())["circuit_performance"]["rows"]
    assert f"ground truth ({GT})" in [r["name"] for r in rows]


def test_sweep_measures_the_model(tmp_path, capsys):
    out = tmp_path / "sweep"
    _ok(
        [
            "sweep",
            "--model",
            "toy-planted",
            "--task",
            "planted",
            "-n",
            "20",
            "--epochs",
            "20",
            "--workers",
            "1",
            "--threads-per-worker",
            "1",
            "--grid",
            "features=4",
            "--seeds",
            "1",
            "--no-figures",
            "--ground-truth",
            GT,
            "--out",
            str(out),
        ],
        capsys,
    )
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["ground_truth"]["name"] == GT and len(spec["ground_truth"]["heads"]) == 3


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    out = tmp_path_factory.mktemp("saes") / "saes"
    assert (
        main(
            [
                "features",
                "train",
                "--model",
                "toy-planted",
                "--sites",
                "attn.0-2",
                "--out",
                str(out),
                "--corpus",
                "generated",
                "--generated-tokens",
                "500",
                "--seq-len",
                "16",
                "--features",
                "16",
                "--tokens",
                "1024",
                "--batch-rows",
                "128",
                "--l1",
                "1",
            ]
        )
        == 0
    )
    return out


@pytest.mark.parametrize(
    "source", [["--task", "planted", "-n", "8"], ["--prompt-ids", "0,17,3,4,5", "--target", "32"]]
)
def test_features_graph_measures_the_model(saes, source, tmp_path, capsys):
    run = tmp_path / "run"
    _ok(
        [
            "features",
            "graph",
            "--model",
            "toy-planted",
            *source,
            "--saes",
            str(saes),
            "--validate",
            "0",
            "--no-edges",
            "--no-sae-codes",
            "--ground-truth",
            GT,
            "--out",
            str(run),
        ],
        capsys,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ground_truth"]["feature-attribution"]["ground_truth"] == GT
