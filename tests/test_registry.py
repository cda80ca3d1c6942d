"""The method registry: a method is one module with a ``SPEC`` plus one ``register`` line.

A dummy method registered here (and nowhere else) must appear in ``compare --methods``,
its table, the run directory, ``evaluate``, the report and a sweep (``--baselines``)
without any other edit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from circuitscan.cli import main
from circuitscan.comparison import method_registry
from circuitscan.errors import CircuitscanError
from circuitscan.methods import MethodSpec
from circuitscan.models.toy import PLANTED_HEADS

methods = method_registry()  # every method, feature-attribution (registered by circuitscan.features) included


@dataclass(frozen=True)
class DummyConfig:
    """A config with one shared setting and one of its own."""

    batch_size: int = 8
    boost: float = 1.0


class DummyScorer:
    """Scores every planted head 1 and every other head by its layer index / 100 (a known answer)."""

    name = "dummy-method"

    def score(self, model, prompts, cfg=None):
        from circuitscan.methods._setup import PassCounter, finish_scores

        cfg = cfg or DummyConfig()
        layout = model.layout
        node = torch.arange(layout.n_layers, dtype=torch.float32)[:, None].expand(-1, layout.n_heads) / 100
        node = node.clone()
        for h in PLANTED_HEADS:
            node[h.layer, h.head] = cfg.boost
        return finish_scores(self.name, node, None, PassCounter(), layout=layout, stats={"boost": cfg.boost})


def _cost(cfg, model, prompts):
    return 0, 0, "nothing at all"


@pytest.fixture
def dummy():
    spec = methods.register(MethodSpec(name="dummy-method", scorer=DummyScorer, config=DummyConfig, cost=_cost,
                                       settings={"batch_size": "batch_size"}, summary="a test's dummy"))
    yield spec
    methods.unregister("dummy-method")
    assert "dummy-method" not in methods.names()


def test_every_registered_spec_is_complete():
    for spec in methods.specs():
        cfg = spec.config()  # defaults build
        assert spec.scorer().name == spec.name or spec.name == "acdc-edge" and spec.scorer().name == "acdc-edge"
        assert spec.summary, spec.name
        for dst in spec.settings.values():
            assert hasattr(cfg, dst), f"{spec.name}: setting maps to unknown config field {dst}"


def test_config_from_copies_only_mapped_settings():
    from circuitscan.comparison import CompareSettings

    s = CompareSettings(metric="kl", ablation="mean", n_examples=7, batch_size=5, sp_steps=11, eap_ig_steps=3)
    assert methods.spec("eap-ig").config_from(s).steps == 3
    assert methods.spec("sp").config_from(s).steps == 11
    nd = methods.spec("norm-diff").config_from(s)
    assert nd.batch_size == 5 and nd.n_examples is None  # norm-diff sees every prompt
    assert methods.spec("acdc-edge").config_from(s).level == "edge"
    assert methods.spec("sae-codes").config_from(s).level == "both"


def test_unknown_method_names_list_the_registry():
    from circuitscan.comparison import parse_methods

    with pytest.raises(CircuitscanError, match="valid: sae-codes, eap"):
        parse_methods("eap,nosuch")
    with pytest.raises(CircuitscanError, match="MethodSpec"):
        methods.register(object())


def test_a_registered_dummy_runs_everywhere(dummy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "12", "--methods",
                 "dummy-method,norm-diff", "--faithfulness-samples", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "dummy-method" in table
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["methods"]) == {"dummy-method", "norm-diff"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ground_truth"]["dummy-method"]["auc"] == pytest.approx(1.0)
    assert "dummy-method" in metrics["faithfulness"]["cpr"]
    assert main(["methods"]) == 0
    assert "dummy-method" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--random-samples", "2"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "dummy-method" in (out / "report.html").read_text()


def test_a_registered_dummy_is_a_sweep_baseline(dummy, tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", "--model", "toy-planted", "--task", "planted", "-n", "12", "--epochs", "30", "--workers", "1",
            "--threads-per-worker", "1", "--grid", "features=4,8", "--seeds", "1", "--out", str(out)]
    assert main([*base, "--baselines", "dummy-method,norm-diff"]) == 0
    printed = capsys.readouterr().out
    assert "dummy-method" in printed and "norm-diff" in printed
    import pandas as pd

    table = pd.read_csv(out / "baselines.csv")
    assert table["method"].tolist() == ["dummy-method", "norm-diff"]
    dummy_row = table.set_index("method").loc["dummy-method"]
    assert dummy_row["node_auc"] == pytest.approx(1.0) and dummy_row["node_circuit_size"] == len(PLANTED_HEADS)
    stored = json.loads((out / "baselines.json").read_text())["rows"]["dummy-method"]["node_scores"]
    assert sorted(stored)[-len(PLANTED_HEADS):] == [1.0] * len(PLANTED_HEADS)
    assert main(["report", str(out)]) == 0
    assert "dummy-method" in (out / "report.html").read_text()
    # a resumed sweep without baselines drops their table; with them again it reuses baselines.json
    capsys.readouterr()
    assert main([*base[:-2], "--out", str(out), "--resume"]) == 0 and not (out / "baselines.csv").exists()
    assert main([*base[:-2], "--out", str(out), "--resume", "--baselines", "dummy-method"]) == 0
    assert pd.read_csv(out / "baselines.csv")["method"].tolist() == ["dummy-method"]


def test_methods_command_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == methods.names()


class DummyEdgeScorer:
    """Scores edges too and predicts one circuit per threshold: every edge between planted nodes
    (and the planted heads) scores 1, everything else a little (a known answer: AUCs of 1)."""

    name = "dummy-edges"

    def score(self, model, prompts, cfg=None):
        from circuitscan.methods._setup import PassCounter, finish_scores
        from circuitscan.methods.edges import EdgeGraph, contract, planted_true_edges

        layout = model.layout
        node = torch.full((layout.n_layers, layout.n_heads), 0.01)
        for h in PLANTED_HEADS:
            node[h.layer, h.head] = 1.0
        graph = EdgeGraph.for_model(model)
        truth = planted_true_edges()
        edges = {e: 1.0 if set(contract(graph, {e: 1.0})) <= truth else 0.01 for e in graph.edge_names()}
        planted = sorted(h.name for h in PLANTED_HEADS)
        sweep = [{"threshold": 0.5, "heads": planted, "edges": [e for e, v in edges.items() if v == 1.0]},
                 {"threshold": 0.0, "heads": layout.names(), "edges": list(edges)}]
        return finish_scores(self.name, node, None, PassCounter(), edges=edges, layout=layout, stats={"sweep": sweep})


@pytest.fixture
def dummy_edges():
    spec = methods.register(MethodSpec(name="dummy-edges", scorer=DummyEdgeScorer, config=DummyConfig, cost=_cost,
                                       settings={"batch_size": "batch_size"}, edges=True, threshold_sweep=True,
                                       default=True, summary="a test's edge-scoring dummy"))
    yield spec
    methods.unregister("dummy-edges")


def test_a_registered_edge_method_is_listed_scored_on_edges_and_read_back(dummy_edges, tmp_path, capsys):
    """One MethodSpec and one register call: the method is in every list, its edges and its
    threshold sweep are evaluated, the run directory keeps them and evaluate / report read them."""
    from circuitscan.comparison import parse_methods
    from circuitscan.report.rundata import load_run

    assert "dummy-edges" in parse_methods("all") and "dummy-edges" in methods.default_names()
    out = tmp_path / "run"
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "12", "--methods", "dummy-edges",
                 "--faithfulness-samples", "1", "--out", str(out)]) == 0
    assert "dummy-edges" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    edge = metrics["edge_ground_truth"]["dummy-edges"]
    assert edge["ground_truth"] == "planted" and edge["roc_source"] == "threshold sweep"
    assert edge["auc"] == pytest.approx(1.0) and edge["ranking_auc"] == pytest.approx(1.0)
    assert metrics["ground_truth"]["dummy-edges"]["sweep"]["auc"] == pytest.approx(1.0)
    (row,) = metrics["comparison"]["rows"]
    assert row["roc_source"] == "threshold sweep (2 values)" and row["edge_auc"] == pytest.approx(1.0)
    assert metrics["estimates"]["dummy-edges"]["what"] == "nothing at all"
    written = json.loads((out / "scores.json").read_text())["methods"]["dummy-edges"]
    assert sum(v == 1.0 for v in written["edges"].values()) > 0
    assert main(["evaluate", str(out), "--random-samples", "1", "--faithfulness", "--faithfulness-samples", "1"]) == 0
    capsys.readouterr()
    faith = json.loads((out / "metrics.json").read_text())["faithfulness"]
    assert "dummy-edges" in faith["cpr"] and "dummy-edges" in faith["edge_level"]["curves"]
    assert load_run(out).methods["dummy-edges"].edges == written["edges"]
    assert main(["report", str(out)]) == 0
    assert "dummy-edges" in (out / "report.html").read_text()
