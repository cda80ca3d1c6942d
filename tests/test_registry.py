"""The method registry: a method is one module with a ``SPEC`` plus one ``register`` line.

A dummy method registered here (and nowhere else) must appear in ``compare --methods``,
its table, the run directory, ``evaluate`` and the report without any other edit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from circuitscan import methods
from circuitscan.cli import main
from circuitscan.errors import CircuitscanError
from circuitscan.methods import MethodSpec
from circuitscan.models.toy import PLANTED_HEADS


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
    from circuitscan.compare import CompareSettings

    s = CompareSettings(metric="kl", ablation="mean", n_examples=7, batch_size=5, sp_steps=11, eap_ig_steps=3)
    assert methods.spec("eap-ig").config_from(s).steps == 3
    assert methods.spec("sp").config_from(s).steps == 11
    nd = methods.spec("norm-diff").config_from(s)
    assert nd.batch_size == 5 and nd.n_examples is None  # norm-diff sees every prompt
    assert methods.spec("acdc-edge").config_from(s).level == "edge"
    assert methods.spec("sae-codes").config_from(s).level == "both"


def test_unknown_method_names_list_the_registry():
    from circuitscan.compare import parse_methods

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


def test_methods_command_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == methods.names()
