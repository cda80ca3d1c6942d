"""Validation by ablation and the graph's head-level view, on toys with known answers."""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.features.ablate import (
    Ablation,
    ablation_effect,
    graph_faithfulness,
    parse_nodes,
    run_ablated,
    thread_ablation,
    validate_nodes,
)
from circuitscan.features.graph import (
    GraphConfig,
    Objective,
    attribution_graph,
    next_token_objective,
)
from circuitscan.features.heads import (
    FeatureAttributionConfig,
    FeatureAttributionScorer,
    head_scores,
)
from test_features_toys import (
    FOUR_SITES,
    identity_saes,
    known_paths_model,
    random_model,
    random_saes,
)

TOKENS = torch.tensor([[3, 1, 7, 2, 9]])
TARGET = 4


def _logit_objective() -> Objective:
    """The target's logit: linear in the last site, so first-order predictions are exact there."""
    def fn(logits, index):  # noqa: ARG001
        return logits[:, -1, TARGET]

    return Objective("logit", "target logit", fn, higher_is_better=True, targets=[TARGET])


@pytest.fixture(scope="module")
def known():
    model, w = known_paths_model()
    saes = identity_saes(6, FOUR_SITES)
    obj = _logit_objective()
    graph = attribution_graph(model, saes, TOKENS, obj, GraphConfig(top_k=12))
    return model, w, saes, obj, graph


def test_feature_ablation_removes_exactly_the_feature(known):
    model, w, saes, _, _ = known
    logits = run_ablated(model, saes, TOKENS, Ablation({"embed": (2,)}))

    def hook(x, hook):  # noqa: ARG001
        y = x.clone()
        y[..., 2] = torch.where(x[..., 2] > 0, 0.0, x[..., 2])  # feature 2 = relu(x_2), atom +e_2
        return y

    with torch.no_grad():
        ref = model.bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
    assert torch.allclose(logits, ref, atol=1e-12)
    # ablating an exact SAE's error changes nothing; ablating every feature leaves the bias (zero here)
    clean = run_ablated(model, saes, TOKENS, None)
    assert torch.allclose(run_ablated(model, saes, TOKENS, Ablation({}, frozenset({"mlp.0"}))), clean, atol=1e-12)
    empty = run_ablated(model, saes, TOKENS, Ablation({}, frozenset(), {"resid.0": ()}))
    assert torch.allclose(empty, torch.zeros_like(empty), atol=1e-12)


def test_single_node_ablations_match_the_graph_where_the_model_is_linear(known):
    model, _, saes, obj, graph = known
    check = validate_nodes(model, saes, TOKENS, obj, graph, top=None)
    rows = {r["node"]: r for r in check["nodes"]}
    last = [r for n, r in rows.items() if n.startswith("resid.0/")]
    assert last
    for r in last:  # the logit is linear in resid.0: ablation = first-order prediction
        assert r["delta"] == pytest.approx(r["predicted_delta"], abs=1e-9), r["node"]
        assert r["target_logit_delta"] == pytest.approx(r["delta"], abs=1e-9)
    # upstream nodes pass through the ReLU MLP: measured and predicted differ somewhere
    assert any(abs(r["delta"] - r["predicted_delta"]) > 1e-6 for n, r in rows.items() if n.startswith("embed/"))
    assert check["summary"]["n"] == len(rows) and -1 <= check["summary"]["pearson"] <= 1


def test_faithfulness_of_a_complete_exact_graph_is_one(known):
    model, _, saes, obj, graph = known
    f = graph_faithfulness(model, saes, TOKENS, obj, graph)
    assert f["faithfulness_with_errors"] == pytest.approx(1.0, abs=1e-9)
    assert f["faithfulness_features_only"] == pytest.approx(1.0, abs=1e-9)
    small = attribution_graph(model, saes, TOKENS, obj, GraphConfig(top_k=1, compute_edges=False))
    g = graph_faithfulness(model, saes, TOKENS, obj, small)
    assert abs(g["faithfulness_with_errors"] - 1.0) > 1e-3  # dropping features is visible


def test_thread_ablation_and_user_ablation(known):
    model, _, saes, obj, graph = known
    th = thread_ablation(model, saes, TOKENS, obj, graph)
    assert th["thread"] == graph.thread() and th["thread"][-1].startswith("resid.0/")
    assert len(th["edges"]) == len(th["thread"]) - 1 and all(e is not None for e in th["edges"])
    eff = ablation_effect(model, saes, TOKENS, obj, parse_nodes(th["thread"]))
    assert eff["delta"] == pytest.approx(th["delta"]) and len(eff["promoted_here"]) == 8
    with pytest.raises(CircuitscanError, match="not in the graph"):
        thread_ablation(model, saes, TOKENS, obj, graph, ["resid.0/f99"])


def test_parse_nodes_reads_ids_and_rejects_bad_ones():
    ab = parse_nodes("resid.3/f12, attn.4/f7,attn.4/f2, mlp.4/error")
    assert ab.features == {"resid.3": (12,), "attn.4": (2, 7)} and ab.errors == frozenset({"mlp.4"})
    for bad in ("resid.3", "resid.3/x", "foo.3/f1", ""):
        with pytest.raises(CircuitscanError):
            parse_nodes(bad)


# --------------------------------------------------------------------------- heads


def test_encoder_head_shares_split_each_attention_feature_exactly():
    model = random_model(seed=5, n_layers=2)
    saes = random_saes(12, 16, "attn.0,resid.0,attn.1,resid.1", seed=2)
    tokens = torch.tensor([[5, 1, 9, 12, 3, 7]])
    g = attribution_graph(model, saes, tokens, next_token_objective(model, tokens), GraphConfig(top_k=6,
                          compute_edges=False))
    attn = [n for n in g.nodes.values() if n.kind == "feature" and n.site.startswith("attn")]
    assert attn
    for n in attn:
        assert sum(n.heads_encoder.values()) == pytest.approx(n.score, rel=1e-6, abs=1e-9), n.id
        assert all(v >= 0 for v in n.heads.values())
    scores = head_scores(g, model.layout)
    assert scores.shape == (2, 2) and bool((scores > 0).all())


def test_feature_attribution_finds_the_planted_heads_with_exact_saes(planted, planted_prompts):
    from circuitscan import circuits, methods
    from circuitscan.evaluation import evaluate_against

    saes = identity_saes(32, "attn.0-2")
    scorer = methods.get("feature-attribution")
    for head_map in ("decoder", "encoder"):
        s = scorer.score(planted, planted_prompts, FeatureAttributionConfig(saes=saes, top_k=64, n_prompts=8,
                                                                            head_map=head_map))
        assert s.method == "feature-attribution" and s.backward_passes == 1
        flat = s.flat
        planted_idx = [planted.layout.index(h) for h in ("L0H1", "L1H2", "L2H0")]
        others = [i for i in range(12) if i not in planted_idx]
        assert bool((flat[planted_idx] > 0).all()) and float(flat[others].abs().max()) < 1e-5, head_map
        assert evaluate_against(s, circuits.get("planted")).auc == 1.0
    with pytest.raises(CircuitscanError, match="needs sublayer SAEs"):
        scorer.score(planted, planted_prompts)
    with pytest.raises(CircuitscanError, match="no attention output"):
        scorer.score(planted, planted_prompts, FeatureAttributionConfig(saes=identity_saes(32, "resid.1")))


# --------------------------------------------------------------------------- counterfactual baseline

OTHER = torch.tensor([[6, 1, 0, 8, 2]])  # a "corrupted" prompt of the same length


def test_patching_to_a_counterfactual_matches_the_graph_where_the_model_is_linear(known):
    from circuitscan.features.sites import capture_sites

    model, _, saes, obj, _ = known
    graph = attribution_graph(model, saes, TOKENS, obj, GraphConfig(top_k=12, baseline="corrupt"),
                              baseline_tokens=OTHER)
    base = capture_sites(model, OTHER, saes.sites, keep_dtype=True)
    check = validate_nodes(model, saes, TOKENS, obj, graph, top=None, baseline=base)
    last = [r for r in check["nodes"] if r["node"].startswith("resid.0/")]
    assert last
    for r in last:
        assert r["delta"] == pytest.approx(r["predicted_delta"], abs=1e-9), r["node"]
    f = graph_faithfulness(model, saes, TOKENS, obj, graph, baseline=base)
    with torch.no_grad():
        corrupt_logit = float(model.bridge(OTHER)[0, -1, TARGET])
        logit = float(model.bridge(TOKENS)[0, -1, TARGET])
    assert f["objective_empty"] == pytest.approx(corrupt_logit, abs=1e-9)  # every site on the counterfactual
    assert f["faithfulness_with_errors"] == pytest.approx(1.0, abs=1e-9)
    # the site total is the first-order estimate of patching the whole site: exact for the last one
    assert graph.site_totals["resid.0"]["total"] == pytest.approx(logit - corrupt_logit, abs=1e-9)


def test_a_counterfactual_equal_to_the_prompt_attributes_nothing(known):
    model, _, saes, obj, _ = known
    g = attribution_graph(model, saes, TOKENS, obj, GraphConfig(top_k=12, baseline="corrupt"), baseline_tokens=TOKENS)
    assert all(n.kind == "output" or n.score == 0.0 for n in g.nodes.values())
    assert all(w == 0.0 for w in g.edges.values())
    with pytest.raises(CircuitscanError, match="counterfactual prompts"):
        attribution_graph(model, saes, TOKENS, obj, GraphConfig(baseline="corrupt"))
    with pytest.raises(CircuitscanError, match="pair one to one"):
        attribution_graph(model, saes, TOKENS, obj, GraphConfig(baseline="corrupt"), baseline_tokens=OTHER[:, :3])


def test_feature_attribution_with_the_corrupt_baseline_finds_the_planted_heads(planted, planted_prompts):
    from circuitscan import circuits
    from circuitscan.evaluation import evaluate_against

    s = FeatureAttributionScorer().score(planted, planted_prompts, FeatureAttributionConfig(
        saes=identity_saes(32, "attn.0-2"), top_k=64, n_prompts=8, baseline="corrupt"))
    assert evaluate_against(s, circuits.get("planted")).auc == 1.0
    with pytest.raises(CircuitscanError, match="encoder head map"):
        FeatureAttributionConfig(baseline="corrupt", head_map="encoder")
