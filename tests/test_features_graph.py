"""The attribution graph: node scores and edges against closed forms, finite differences and
brute-force patching; the double-counting correction on a toy with known paths."""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.features.graph import (
    OUTPUT,
    AttributionGraph,
    GraphConfig,
    attribution_graph,
    next_token_objective,
    node_id,
)
from circuitscan.features.sites import parse_sites
from test_features_toys import (
    FOUR_SITES,
    analytic,
    analytic_edges,
    identity_features,
    identity_saes,
    known_paths_model,
    random_model,
    random_saes,
)

TOKENS = torch.tensor([3, 1, 7, 2, 9])
TARGET = 4


@pytest.fixture(scope="module")
def known():
    model, w = known_paths_model()
    an = analytic(w, TOKENS, TARGET)
    saes = identity_saes(6, FOUR_SITES)
    obj = next_token_objective(model, TOKENS[None], TARGET)
    graphs = {mode: attribution_graph(model, saes, TOKENS[None], obj, GraphConfig(top_k=12, edges=mode))
              for mode in ("corrected", "direct", "total")}
    return model, an, saes, graphs


def _edge_matrix(graph: AttributionGraph, up: str, down: str, n: int = 12) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(n):
            m[i, k] = graph.edges.get((node_id(up, "feature", i), node_id(down, "feature", k)), 0.0)
    return m


def test_node_scores_equal_the_closed_form(known):
    _, an, _, graphs = known
    g = graphs["corrected"]
    assert g.objective["value"] == pytest.approx(an["ce"], rel=1e-10)
    S = torch.cat([torch.eye(6), -torch.eye(6)], 0).double()
    for site in parse_sites(FOUR_SITES):
        expected = (identity_features(an["acts"][site.name]) * (an["grads"][site.name] @ S.T)).sum(0)
        for node in g.kept(site.name):
            assert node.score == pytest.approx(float(expected[node.feature]), abs=1e-9), node.id
        # exact SAEs: no error, and the site's total splits into its features
        tot = g.site_totals[site.name]
        assert abs(tot["error"]) < 1e-9
        assert tot["features"] == pytest.approx(tot["total"], abs=1e-9)


@pytest.mark.parametrize("mode", ["corrected", "direct"])
@pytest.mark.parametrize("pair", [("embed", "attn.0"), ("embed", "mlp.0"), ("attn.0", "mlp.0"),
                                  ("embed", "resid.0"), ("attn.0", "resid.0"), ("mlp.0", "resid.0")])
def test_corrected_edges_recover_the_direct_effects(known, mode, pair):
    """The four-sublayer case: A = embed, B = attn.0, C = mlp.0, D = resid.0. The direct
    effect A -> D is the residual skip alone (identity), A -> C the MLP read of A alone, etc."""
    _, an, _, graphs = known
    expected = analytic_edges(an, *pair, "direct")
    got = _edge_matrix(graphs[mode], *pair)
    kept_up = {n.feature for n in graphs[mode].kept(pair[0])}
    kept_down = {n.feature for n in graphs[mode].kept(pair[1])}
    mask = torch.zeros(12, 12, dtype=torch.bool)
    for i in kept_up:
        for k in kept_down:
            mask[i, k] = True
    assert mask.sum() > 0
    assert torch.allclose(got[mask], expected[mask], atol=1e-9, rtol=1e-7)


def test_uncorrected_edges_double_count_the_paths_through_intermediate_sites(known):
    _, an, _, graphs = known
    g = graphs["total"]
    for pair in [("embed", "mlp.0"), ("embed", "resid.0"), ("attn.0", "resid.0")]:
        got = _edge_matrix(g, *pair)
        total = analytic_edges(an, *pair, "total")
        direct = analytic_edges(an, *pair, "direct")
        kept = [n.feature for n in g.kept(pair[0])]
        kd = [n.feature for n in g.kept(pair[1])]
        got_k, tot_k, dir_k = (m[kept][:, kd] for m in (got, total, direct))
        assert torch.allclose(got_k, tot_k, atol=1e-9, rtol=1e-7), pair
        assert (tot_k - dir_k).abs().max() > 1e-3, pair  # the paths through B and C are really there
    # the skip A -> D is the identity: direct edges only between features of the same coordinate
    direct = _edge_matrix(graphs["corrected"], "embed", "resid.0")
    off = direct.clone()
    for k in range(6):
        off[k, k] = off[k + 6, k + 6] = off[k, k + 6] = off[k + 6, k] = 0.0
    assert off.abs().max() < 1e-9 and direct.abs().max() > 1e-3


def test_every_node_score_leaves_through_exactly_one_first_site(known):
    """n_u = e(u -> output) + sum over later sites of e(u -> their kept, error and rest nodes)."""
    _, _, _, graphs = known
    for mode in ("corrected", "direct"):
        g = graphs[mode]
        for node in g.nodes.values():
            if node.kind == "output":
                continue
            out = sum(g.outgoing(node.id).values())
            assert out == pytest.approx(node.score, abs=1e-8), (mode, node.id)
    g = graphs["total"]
    sums = [abs(sum(g.outgoing(n.id).values()) - n.score) for n in g.nodes.values() if n.site == "embed"]
    assert max(sums) > 1e-3  # without the correction the outgoing edges double count


# --------------------------------------------------------------------------- a nonlinear model


@pytest.fixture(scope="module")
def nonlinear():
    model = random_model(seed=3, n_layers=2)
    sites = "embed,attn.0,mlp.0,resid.0,attn.1,mlp.1,resid.1"
    saes = random_saes(12, 16, sites, seed=1)
    for sae in saes.saes.values():
        sae.double()
    tokens = torch.tensor([[5, 1, 9, 12, 3, 7], [2, 8, 8, 14, 0, 11]])
    obj = next_token_objective(model, tokens, None)
    graph = attribution_graph(model, saes, tokens, obj, GraphConfig(top_k=4, edges="corrected", batch_size=1))
    return model, saes, tokens, obj, graph


def _run(model, saes, tokens, edits: dict, clamp: dict | None = None) -> dict:
    """Forward pass with ``edits[site](x) -> x'`` and ``clamp[site]`` replacing a site's output."""
    store: dict = {}
    hooks = []
    for site in saes.sites:
        def hook(x, hook, name=site.name):
            store[name] = x.detach().clone()
            if clamp and name in clamp:
                return clamp[name]
            return edits[name](x) if name in edits else x

        hooks.append((site.hook, hook))
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return {"logits": logits, "x": store}


def _objective(obj, logits):
    return float(obj.fn(logits, torch.arange(logits.shape[0])).mean())


def _site_grads(model, saes, tokens, obj) -> dict:
    deltas = {}
    hooks = []
    for site in saes.sites:
        def hook(x, hook, name=site.name):
            deltas[name] = torch.zeros_like(x, requires_grad=True)
            return x + deltas[name]

        hooks.append((site.hook, hook))
    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        m = obj.fn(logits, torch.arange(tokens.shape[0])).mean()
        names = list(deltas)
        return dict(zip(names, torch.autograd.grad(m, [deltas[k] for k in names]), strict=True))


def test_node_scores_match_finite_differences(nonlinear):
    model, saes, tokens, obj, graph = nonlinear
    h = 1e-5
    checked = 0
    for node in graph.nodes.values():
        if node.kind not in ("feature", "error"):
            continue
        sae = saes[node.site]

        def scaled(alpha, sae=sae, node=node):
            def edit(x):
                f = sae.encode(x)
                if node.kind == "feature":
                    return x + (alpha - 1.0) * f[..., node.feature, None] * sae.W_D[node.feature]
                return x + (alpha - 1.0) * (x - sae.decode(f))
            return _objective(obj, _run(model, saes, tokens, {node.site: edit})["logits"])

        fd = (scaled(1 + h) - scaled(1 - h)) / (2 * h)
        assert node.score == pytest.approx(fd, rel=1e-4, abs=1e-7), node.id
        checked += 1
    assert checked >= 20


def _downstream_value(saes, grads, site, kind, feature, x):
    sae = saes[site]
    g = grads[site]
    f = sae.encode(x)
    if kind == "feature":
        return float((f[..., feature] * (g @ sae.W_D[feature])).sum())
    if kind == "error":
        return float(((x - sae.decode(f)) * g).sum())
    raise AssertionError(kind)


def test_edges_match_brute_force_patching(nonlinear):
    """Perturb an upstream node, clamp every site in between to its clean output, and
    difference the downstream node's value (its activation times its fixed gradient)."""
    model, saes, tokens, obj, graph = nonlinear
    clean = _run(model, saes, tokens, {})
    grads = _site_grads(model, saes, tokens, obj)
    n = tokens.shape[0]
    grads = {k: v * n / n for k, v in grads.items()}  # mean objective over prompts, as the graph
    order = [s.name for s in saes.sites]
    h = 1e-5
    pairs = [(s, d) for (s, d) in graph.edges if graph.nodes[s].kind != "rest" and graph.nodes[d].kind in ("feature", "error")]
    by_sites: dict = {}
    for e in sorted(pairs, key=lambda e: -abs(graph.edges[e])):
        by_sites.setdefault((graph.nodes[e[0]].site, graph.nodes[e[1]].site), []).append(e)
    # every pair of sites with a direct connection, the four-sublayer block of both layers
    assert {("resid.0", "resid.1"), ("resid.0", "mlp.1"), ("embed", "resid.0"), ("attn.1", "mlp.1")} <= set(by_sites)
    strongest = [e for group in by_sites.values() for e in group[:2]]
    for src, dst in strongest:
        u, v = graph.nodes[src], graph.nodes[dst]
        between = {s: clean["x"][s] for s in order[order.index(u.site) + 1 : order.index(v.site)]}
        sae_u = saes[u.site]

        def value(eps, u=u, v=v, sae_u=sae_u, between=between):
            def edit(x):
                f = sae_u.encode(x)
                part = f[..., u.feature, None] * sae_u.W_D[u.feature] if u.kind == "feature" else x - sae_u.decode(f)
                return x + eps * part
            r = _run(model, saes, tokens, {u.site: edit}, clamp=between)
            return _downstream_value(saes, grads, v.site, v.kind, v.feature, r["x"][v.site])

        fd = (value(h) - value(-h)) / (2 * h)
        assert graph.edges[(src, dst)] == pytest.approx(fd, rel=1e-4, abs=1e-8), (src, dst)


def test_output_edges_match_patching_with_every_later_site_clamped(nonlinear):
    model, saes, tokens, obj, graph = nonlinear
    clean = _run(model, saes, tokens, {})
    order = [s.name for s in saes.sites]
    h = 1e-5
    into = graph.incoming(OUTPUT)
    assert {graph.nodes[s].site for s in into} == {"resid.1"}  # everything else reaches the output through it
    for src in sorted(into, key=lambda s: -abs(into[s]))[:6]:
        u = graph.nodes[src]
        if u.kind == "rest":
            continue
        later = {s: clean["x"][s] for s in order[order.index(u.site) + 1 :]}
        sae_u = saes[u.site]

        def value(eps, u=u, sae_u=sae_u, later=later):
            def edit(x):
                f = sae_u.encode(x)
                part = f[..., u.feature, None] * sae_u.W_D[u.feature] if u.kind == "feature" else x - sae_u.decode(f)
                return x + eps * part
            return _objective(obj, _run(model, saes, tokens, {u.site: edit}, clamp=later)["logits"])

        assert into[src] == pytest.approx((value(h) - value(-h)) / (2 * h), rel=1e-4, abs=1e-8), src


def test_corrected_and_stop_gradient_edges_agree_on_a_nonlinear_model(nonlinear):
    model, saes, tokens, obj, graph = nonlinear
    direct = attribution_graph(model, saes, tokens, obj, GraphConfig(top_k=4, edges="direct", batch_size=2))
    assert set(direct.edges) == set(graph.edges)
    for key, w in graph.edges.items():
        assert direct.edges[key] == pytest.approx(w, rel=1e-6, abs=1e-10), key
    # batching does not change anything
    for nid, node in graph.nodes.items():
        assert direct.nodes[nid].score == pytest.approx(node.score, rel=1e-9, abs=1e-12)
    assert direct.backward_passes < graph.backward_passes  # the stop-gradient route is cheaper


def test_conservation_holds_with_error_terms_and_dropped_features(nonlinear):
    _, _, _, _, graph = nonlinear
    for node in graph.nodes.values():
        if node.kind == "output":
            continue
        assert sum(graph.outgoing(node.id).values()) == pytest.approx(node.score, rel=1e-6, abs=1e-9), node.id
    for site, t in graph.site_totals.items():
        assert t["kept"] + t["rest"] + t["error"] + t["bias"] + t["uncovered"] == pytest.approx(t["total"], rel=1e-9, abs=1e-12), site
        assert abs(t["error"]) > 1e-6  # random SAEs do not reconstruct: the error node matters


def test_graph_round_trips_through_json(nonlinear):
    graph = nonlinear[-1]
    again = AttributionGraph.from_json(graph.to_json())
    assert again.edges == graph.edges and again.nodes == graph.nodes
    assert again.thread() == graph.thread() and again.thread()
    with pytest.raises(CircuitscanError, match="not a feature graph"):
        AttributionGraph.from_json({"nodes": []})


def test_bad_graph_input_is_a_clear_error():
    with pytest.raises(CircuitscanError, match="edges must be one of"):
        GraphConfig(edges="both")
    with pytest.raises(CircuitscanError, match="top_k"):
        GraphConfig(top_k=0)
    model = random_model(seed=0, n_layers=1, dtype=torch.float32)
    saes = random_saes(12, 8, "resid.0")
    with pytest.raises(CircuitscanError, match="no SAE for site"):
        attribution_graph(model, saes, torch.tensor([[1, 2]]), next_token_objective(model, torch.tensor([[1, 2]]), 3),
                          sites=parse_sites("attn.0"))
    with pytest.raises(CircuitscanError, match="target token ids"):
        next_token_objective(model, torch.tensor([[1, 2]]), 99)


def test_attribution_patching_keeps_the_identities(nonlinear):
    """With a counterfactual baseline every identity holds with activations replaced by
    their differences: outgoing edges sum to the node; corrected = direct."""
    model, saes, tokens, obj, _ = nonlinear
    other = torch.tensor([[4, 1, 3, 12, 6, 7], [2, 9, 8, 1, 0, 5]])
    graphs = {mode: attribution_graph(model, saes, tokens, obj, GraphConfig(top_k=4, edges=mode, baseline="corrupt"),
                                      baseline_tokens=other) for mode in ("corrected", "direct")}
    g = graphs["corrected"]
    for node in g.nodes.values():
        if node.kind != "output":
            assert sum(g.outgoing(node.id).values()) == pytest.approx(node.score, rel=1e-6, abs=1e-9), node.id
    for key, w in g.edges.items():
        assert graphs["direct"].edges[key] == pytest.approx(w, rel=1e-6, abs=1e-10), key
    for site, t in g.site_totals.items():
        assert t["kept"] + t["rest"] + t["error"] + t["uncovered"] == pytest.approx(t["total"], rel=1e-9, abs=1e-12), site


def test_positions_the_saes_never_saw_are_neither_features_nor_error(nonlinear):
    """SAEs trained without position 0 (the attention sink): the graph and the ablations
    leave the site's value there alone; node scores are finite differences of edits at
    positions 1.. only, the identities hold with an explicit "uncovered" term."""
    from dataclasses import replace

    from circuitscan.features.ablate import Ablation, _hooks, run_ablated

    model, saes, tokens, obj, full = nonlinear
    skipping = replace(saes, info={**saes.info, "skip_positions": 1})
    graph = attribution_graph(model, skipping, tokens, obj, GraphConfig(top_k=4, batch_size=1))
    h = 1e-5
    for node in [n for n in graph.nodes.values() if n.kind in ("feature", "error")][:12]:
        sae = saes[node.site]

        def scaled(alpha, sae=sae, node=node):
            def edit(x):
                f = sae.encode(x)
                part = f[..., node.feature, None] * sae.W_D[node.feature] if node.kind == "feature" else x - sae.decode(f)
                part = part.clone()
                part[:, 0] = 0.0
                return x + (alpha - 1.0) * part
            return _objective(obj, _run(model, saes, tokens, {node.site: edit})["logits"])

        assert node.score == pytest.approx((scaled(1 + h) - scaled(1 - h)) / (2 * h), rel=1e-4, abs=1e-7), node.id
    for node in graph.nodes.values():
        if node.kind != "output":
            assert sum(graph.outgoing(node.id).values()) == pytest.approx(node.score, rel=1e-6, abs=1e-9), node.id
    for site, t in graph.site_totals.items():
        assert t["kept"] + t["rest"] + t["error"] + t["bias"] + t["uncovered"] == pytest.approx(t["total"], rel=1e-9, abs=1e-12)
        assert t["total"] == pytest.approx(full.site_totals[site]["total"], rel=1e-9, abs=1e-12)
    assert any(abs(t["uncovered"]) > 1e-6 for t in graph.site_totals.values())
    # ablating every error and every feature: position 0 keeps its value, the rest is the decoder bias
    everything = Ablation({}, frozenset(skipping.saes), {s: () for s in skipping.saes})
    clean = _run(model, saes, tokens, {})["x"]
    for site, (_, hook) in zip(everything.sites, _hooks(skipping, everything, torch.float64), strict=True):
        x = clean[site.name].double()
        y = hook(x, None)
        assert torch.equal(y[:, 0], x[:, 0])
        assert torch.allclose(y[:, 1:], saes[site].b.double().expand_as(y[:, 1:]))
    assert torch.isfinite(run_ablated(model, skipping, tokens, everything)).all()
