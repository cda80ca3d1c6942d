"""Every method ranks the planted heads of toy-planted above the rest.

The planted circuit (L0H1, L1H2, L2H0) alone moves logit(answer) - logit(wrong); every
other head computes the same on a prompt and its corrupted partner. Each method's ROC
AUC over heads against that circuit, as measured here:

==============  =====  ==========================================================
method          AUC    why
==============  =====  ==========================================================
sae-codes       1.0    other heads' outputs are identical on both prompts: no code
                       is seen on positives only
eap, eap-ig     1.0    the other heads' ablated and clean values coincide: score 0
patching        1.0    exact: ablating another head changes nothing
acdc, sp        1.0    (threshold sweep) every threshold keeps exactly the circuit
acdc-edge       1.0    (threshold sweep) the circuit's edges only
hisp            1.0    as EAP, per example
norm-diff       1.0    mean positive and negative outputs coincide for other heads
==============  =====  ==========================================================
"""

from __future__ import annotations

import pytest
import torch

from circuitscan.circuits import get as get_circuit
from circuitscan.evaluation.ground_truth import evaluate_against
from circuitscan.methods import get

CONFIGS = {
    "eap": lambda m: m.EAPConfig(),
    "eap-ig": lambda m: m.EAPIGConfig(steps=3),
    "patching": lambda m: m.PatchingConfig(),
    "acdc": lambda m: m.ACDCConfig(level="node"),
    "acdc-edge": lambda m: m.ACDCConfig(level="edge", thresholds=(0.01, 1.0)),
    "hisp": lambda m: m.HISPConfig(),
    "sp": lambda m: m.SPConfig(steps=60, lambdas=(0.3,), batch_size=40),
    "norm-diff": lambda m: m.NormDiffConfig(),
}


@pytest.fixture(scope="module")
def planted_gt():
    return get_circuit("planted")


@pytest.mark.parametrize("name", ["sae-codes", *CONFIGS])
def test_every_method_ranks_the_planted_heads_first(planted, planted_prompts, planted_gt, name):
    import circuitscan.methods as methods

    cfg = CONFIGS[name](methods) if name in CONFIGS else None
    scores = get(name).score(planted, planted_prompts, cfg)
    assert scores.method == name
    assert scores.node.shape == (3, 4) and torch.isfinite(scores.node).all()
    gm = evaluate_against(scores, planted_gt)
    assert gm.auc == pytest.approx(1.0), (name, scores.node)
    assert gm.best_f1 == pytest.approx(1.0)
    # strictly above: no non-planted head ties with a planted one
    flat = scores.flat
    mask = planted_gt.mask(planted.layout)
    assert flat[mask].min() > flat[~mask].max()
    # cost is reported
    assert scores.wall_time_s > 0 and scores.forward_passes >= 1
    needs_grad = name in ("eap", "eap-ig", "hisp", "sp")
    assert (scores.backward_passes > 0) == needs_grad
    if scores.edges is not None:
        from circuitscan.methods.edges import (
            EdgeGraph,
            contract,
            edge_auc,
            head_level_edges,
            planted_true_edges,
        )

        head_edges = contract(EdgeGraph.for_model(planted), scores.edges)
        e = edge_auc(head_edges, planted_true_edges(), head_level_edges(planted.layout))
        assert e["auc"] == pytest.approx(1.0) and e["n_true"] == 9


def test_edge_pruning_keeps_the_planted_edges(planted, planted_prompts, planted_gt):
    """Edge pruning (mask optimisation over edges): the planted heads rank first, their edges too."""
    from circuitscan.evaluation.edges import (
        EdgeGraph,
        contract,
        edge_auc,
        head_level_edges,
        planted_true_edges,
    )
    from circuitscan.methods.edge_pruning import EdgePruningConfig

    scores = get("edge-pruning").score(planted, planted_prompts, EdgePruningConfig(steps=60, batch_size=40))
    assert evaluate_against(scores, planted_gt).auc == pytest.approx(1.0)
    graph = EdgeGraph.for_model(planted)
    assert set(scores.edges) == set(graph.edge_names())
    assert all(0 < v < 1 for v in scores.edges.values())
    auc = edge_auc(contract(graph, scores.edges), planted_true_edges(), head_level_edges(planted.layout))
    assert auc["auc"] == pytest.approx(1.0)
    assert 0 < scores.stats["edges_kept"] < graph.n_edges // 4
    assert scores.backward_passes == 60  # one backward pass per step


def test_edge_pruning_per_layer_differences_match_the_single_buffer(planted, planted_prompts):
    """The per-layer path edge pruning trains on (issue 16) gives the single in-place buffer's
    damage, gradients and scores, to float rounding."""
    from circuitscan.evaluation.edges import EdgeForward, EdgeGraph
    from circuitscan.methods._setup import PassCounter, build_objective, frozen_params
    from circuitscan.methods.edge_pruning import EdgePruningConfig, edge_pruning_scores

    cfg = EdgePruningConfig(steps=20, batch_size=40)
    obj = build_objective(planted, planted_prompts, cfg, counter=PassCounter())
    graph = EdgeGraph.for_model(planted)
    fwd = EdgeForward(planted, graph)
    index, sl = next(obj.batches())
    # gates between 0 and 1 with some exactly 0 or 1, as hard-concrete samples are
    gates = torch.rand(1, graph.n_senders, graph.n_receivers, generator=torch.Generator().manual_seed(3))
    gates = torch.where(gates < 0.2, 0.0, torch.where(gates > 0.9, 1.0, gates)) * graph.valid
    got = {}
    for per_layer in (False, True):
        removed = gates.clone().requires_grad_(True)
        with frozen_params(planted), torch.enable_grad():
            hooks, _ = fwd.hooks(removed=removed, source_heads=[obj.source_z(i, sl) for i in range(3)],
                                 source_input=obj.source_input(sl), per_layer=per_layer)
            damage = obj.goodness(obj.logits(obj.tokens[sl], None, hooks), index).mean()
            damage.backward()
        got[per_layer] = (float(damage.detach()), removed.grad.clone())
    assert got[True][0] == pytest.approx(got[False][0], rel=1e-5, abs=1e-6)
    assert got[False][1].abs().max() > 1e-3  # the gates matter
    torch.testing.assert_close(got[True][1], got[False][1], rtol=1e-4, atol=1e-6)
    old = edge_pruning_scores(planted, planted_prompts, cfg, per_layer=False)
    new = edge_pruning_scores(planted, planted_prompts, cfg)
    assert sorted(new.edges) == sorted(old.edges)
    torch.testing.assert_close(torch.tensor([new.edges[k] for k in sorted(old.edges)]),
                               torch.tensor([old.edges[k] for k in sorted(old.edges)]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(new.flat, old.flat, rtol=1e-4, atol=1e-6)
