"""``--ground-truth`` means the same in every command that takes it, including ground truths
measured on the loaded model (``induction-scores``); toy-planted, in process."""

from __future__ import annotations

import json

import pytest

from circuitscan.cli import main

GT = "induction-scores:k=3"  # the top 3 heads of toy-planted by induction score
MODEL = ["--model", "toy-planted"]


def _ok(command: str, *more: str, capsys) -> None:
    rc = main([*command.split(), *MODEL, *more, "--ground-truth", GT])
    assert rc == 0, capsys.readouterr().err


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_discover_and_evaluate_measure_the_model(tmp_path, capsys):
    run = tmp_path / "run"
    _ok("discover --task planted -n 20 --epochs 50", "--out", str(run), capsys=capsys)
    assert _metrics(run)["ground_truth"]["sae-codes"]["ground_truth"] == GT
    # evaluate takes no --model: it reloads the run's
    assert main(["evaluate", str(run), "--random-samples", "0", "--ground-truth", GT]) == 0
    names = [r["name"] for r in _metrics(run)["circuit_performance"]["rows"]]
    assert f"ground truth ({GT})" in names


def test_sweep_measures_the_model(tmp_path, capsys):
    out = tmp_path / "sweep"
    sweep = "sweep --task planted -n 20 --epochs 20 --workers 1 --threads-per-worker 1 --grid features=4"
    _ok(f"{sweep} --seeds 1 --no-figures", "--out", str(out), capsys=capsys)
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["ground_truth"]["name"] == GT and len(spec["ground_truth"]["heads"]) == 3


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    out = tmp_path_factory.mktemp("saes") / "saes"
    train = (
        "features train --model toy-planted --sites attn.0-2 --corpus generated --generated-tokens 500 "
        "--seq-len 16 --features 16 --tokens 1024 --batch-rows 128 --l1 1"
    )
    assert main([*train.split(), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("source", ["--task planted -n 8", "--prompt-ids 0,17,3,4,5 --target 32"])
def test_features_graph_measures_the_model(saes, source, tmp_path, capsys):
    run = tmp_path / "run"
    graph = f"features graph {source} --validate 0 --no-edges --no-sae-codes"
    _ok(graph, "--saes", str(saes), "--out", str(run), capsys=capsys)
    assert _metrics(run)["ground_truth"]["feature-attribution"]["ground_truth"] == GT
