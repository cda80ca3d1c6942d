"""ACDC and SP on the planted-circuit model, where the answer is known exactly.

Every non-planted head computes the same thing on a positive prompt and its corrupted
partner, so removing it (or any edge out of it) changes nothing; removing a planted
head or edge changes the logit difference by several logits. Any threshold between the
two must give exactly the planted circuit.
"""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.methods._setup import BaselineConfig, build_objective, sweep_auc
from circuitscan.methods.acdc import ACDCConfig, _edge_order, acdc_scores
from circuitscan.methods.edges import (
    EdgeForward,
    EdgeGraph,
    contract,
    planted_true_edges,
    run_edges,
)
from circuitscan.methods.sp import SPConfig, sp_scores
from circuitscan.models.toy import PLANTED_HEADS

PLANTED = {h.name for h in PLANTED_HEADS}


def _check_decisions(scores, abs_value=False):
    """Every logged decision obeys the rule: removed iff result < tau."""
    decisions = scores.stats["decisions"]
    assert decisions is not None
    for tau, log in zip(scores.stats["thresholds"], decisions, strict=True):
        assert log, "nothing was tried"
        for _name, result, removed in log:
            value = abs(result) if abs_value else result
            assert removed == (value < tau), (tau, _name, result, removed)


def test_acdc_node_recovers_the_planted_heads(planted, planted_prompts):
    scores = acdc_scores(planted, planted_prompts, ACDCConfig(level="node"))
    for entry in scores.stats["sweep"]:
        assert set(entry["heads"]) == PLANTED, entry
    _check_decisions(scores)
    assert scores.stats["tries"] == planted.layout.n_total and not scores.stats["stopped_early"]
    assert {h.name for h in scores.ranking()[:3]} == PLANTED
    # the recorded damage of each threshold's final circuit is what evaluating it gives
    from circuitscan.evaluation.intervention import CircuitEvaluator, circuit_mask

    ev = CircuitEvaluator.build(planted, planted_prompts, metrics=["logit_diff"])
    for entry in scores.stats["sweep"]:
        got = -float(ev.evaluate(circuit_mask(planted.layout, entry["heads"])[None])["logit_diff"].mean())
        assert got == pytest.approx(entry["damage"], rel=1e-5, abs=1e-5)


def test_acdc_pruning_respects_the_threshold(planted, planted_prompts):
    # thresholds below, between and above the planted heads' effects
    effects = acdc_scores(planted, planted_prompts, ACDCConfig(level="node", thresholds=(0.0,)))
    tried = {name: result for name, result, _ in effects.stats["decisions"][0]}
    planted_effects = [tried[h] for h in PLANTED]
    assert min(planted_effects) > 1.0
    assert all(abs(v) < 1e-4 for h, v in tried.items() if h not in PLANTED)
    big = max(planted_effects) * 100
    scores = acdc_scores(planted, planted_prompts, ACDCConfig(level="node", thresholds=(1e-3, big)))
    small_run, big_run = scores.stats["sweep"]
    assert set(small_run["heads"]) == PLANTED
    assert big_run["heads"] == []  # above every effect: everything goes
    _check_decisions(scores)
    # |result| < tau also removes heads whose removal HELPS the metric a lot; none here
    absv = acdc_scores(planted, planted_prompts, ACDCConfig(level="node", thresholds=(1e-3,), abs_value=True))
    _check_decisions(absv, abs_value=True)
    assert set(absv.stats["sweep"][0]["heads"]) == PLANTED


def test_acdc_edge_recovers_the_planted_edges(planted):
    from circuitscan.tasks import build_task

    prompts = build_task("planted", planted, 12, seed=1)
    scores = acdc_scores(planted, prompts, ACDCConfig(level="edge", thresholds=(1e-3, 0.1), batch_size=12))
    graph = EdgeGraph.for_model(planted)
    for entry in scores.stats["sweep"]:
        kept = set(contract(graph, dict.fromkeys(entry["edges"], 1.0)))
        assert kept == planted_true_edges(), entry["threshold"]
        assert set(entry["heads"]) == PLANTED
        # only value inputs matter in this model (its queries and keys are zero)
        assert all(e.endswith((".v", "logits")) for e in entry["edges"])
    _check_decisions(scores)
    # disconnected receivers (every non-planted head, once its outputs are gone) are not tried
    assert scores.stats["skipped_disconnected"] > 0
    assert scores.stats["tries"] < graph.n_edges
    # the final graph's damage is what running it gives
    obj = build_objective(planted, prompts, BaselineConfig(batch_size=12))
    fwd = EdgeForward(planted, graph)
    kept = torch.zeros(1, graph.n_senders, graph.n_receivers, dtype=torch.bool)
    names = {graph.edge_name(s, r): (s, r) for s, r in graph.edge_index()}
    for e in scores.stats["sweep"][0]["edges"]:
        kept[0][names[e]] = True
    removed = graph.valid[None] & ~kept
    damage = -float(run_edges(obj, fwd, removed).mean())
    assert damage == pytest.approx(scores.stats["sweep"][0]["damage"], rel=1e-4, abs=1e-4)


def test_acdc_edge_order_is_reverse_topological(planted):
    graph = EdgeGraph.for_model(planted)
    order = _edge_order(graph)
    assert len(order) == graph.n_edges == len(set(order))
    layers = [graph.receivers[r].layer for _, r in order]
    assert layers == sorted(layers, reverse=True)  # logits first, layer 0 last
    assert graph.receivers[order[0][1]].name == "logits"
    assert graph.senders[order[0][0]] == "L2H3"  # latest sender first


def test_acdc_stops_at_its_time_limit_and_extrapolates(planted, planted_prompts):
    scores = acdc_scores(planted, planted_prompts, ACDCConfig(level="edge", thresholds=(0.01,), max_seconds=1e-9))
    s = scores.stats
    assert s["stopped_early"] and s["visited"] < s["to_visit"]
    assert s["extrapolated_seconds_if_every_remaining_edge_is_tried"] >= s["loop_seconds"]


def test_sp_recovers_the_planted_heads(planted, planted_prompts):
    scores = sp_scores(planted, planted_prompts, SPConfig(steps=80, lambdas=(0.1, 1.0), batch_size=20))
    for entry in scores.stats["sweep"]:
        assert set(entry["heads"]) == PLANTED, entry
    assert scores.forward_passes >= 80 and scores.backward_passes == 80


def test_sweep_auc():
    assert sweep_auc([]) == pytest.approx(0.5)
    assert sweep_auc([(0.0, 1.0)]) == pytest.approx(1.0)
    assert sweep_auc([(0.5, 0.5)]) == pytest.approx(0.5)
    assert sweep_auc([(0.25, 0.75)]) == pytest.approx(0.75)


def test_bad_acdc_and_sp_settings_are_user_errors():
    with pytest.raises(CircuitscanError, match="level"):
        ACDCConfig(level="path")
    with pytest.raises(CircuitscanError, match="thresholds"):
        ACDCConfig(thresholds=(-1.0,))
    with pytest.raises(CircuitscanError, match="max_seconds"):
        ACDCConfig(max_seconds=0)
    with pytest.raises(CircuitscanError, match="lambdas"):
        SPConfig(lambdas=())
