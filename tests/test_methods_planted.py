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
