"""Attribution graphs over SAE features (Marks et al. 2024, "Sparse Feature Circuits",
as replicated by Udell et al. 2025), with the double-counting correction.

Definitions (what is computed, exactly)
---------------------------------------
Sites ``S`` (:mod:`.sites`) each carry an SAE; at site ``s`` the model's activation
splits exactly into ``x_s = sum_i f_i W_D[i] + b + eps_s`` (features, decoder bias, error).
``m`` is the objective: the next-token cross-entropy at the last position (for a target
token), or a task metric; over a prompt set, its mean over prompts. Everything below is
summed over positions and averaged over prompts.

* node score of feature ``i`` at ``s``: ``n_i = sum_t f_i(t) * dm/df_i(t)`` where the
  derivative moves ``x_s`` along ``W_D[i]`` and lets everything downstream respond. It
  is the first-order estimate of ``m(clean) - m(feature i zero-ablated)``. Error node:
  ``n_eps = sum_t eps_s(t) . dm/dx_s(t)``. Per site, ``sum_i n_i + n_eps + n_bias =
  sum_t x_s(t) . dm/dx_s(t)`` exactly (the site's total, reported).
* positions the SAEs were not trained on (``SublayerSAEs.skip_positions``, position 0 with
  its attention sink for trained SAEs) are neither features nor error: sums over ``t``
  above run over the covered positions, the rest of the site's total is reported as
  ``uncovered``, and ablations (:mod:`.ablate`) never change those positions. (Counting
  the sink as SAE error made every error ablation destroy the sink, and with it the
  model.)
* kept nodes: the ``top_k`` features of each site by ``|n_i|``, its error node, and a
  ``rest`` node aggregating every other feature, so that nothing is silently dropped.
* edge from upstream node ``u`` (site ``U``) to downstream node ``d`` (site ``V > U``):
  ``e(u -> d) = sum_t' a_u(t') * d/da_u(t') [ sum_t c_d(t) a_d(t) ]  |direct``
  with ``a`` a feature activation (the error vector for error nodes, a dot product),
  ``c_d(t) = dm/da_d(t)`` held constant, and *direct* meaning: holding fixed the output
  of every site strictly between ``U`` and ``V``. This is Marks et al.'s
  ``(dm/dd)(dd/du) u`` (the seed post writes it ``f_i * d n_{f_j} / d f_i`` with
  ``n_{f_j} = f_j * dm/df_j`` and the gradient held constant). Edges into the output:
  ``e(u -> m) = sum_t a_u(t) dm/da_u(t) |direct`` (holding every later site fixed).

The double-counting correction
------------------------------
Along the residual stream a node reaches a later one through intermediate sites too.
With ``T_VU`` the total Jacobian from site ``U``'s output to site ``V``'s computed
value and ``D_VU`` the direct one, the chain rule gives, for sites ``U < W < V``,
``T_VU = D_VU + sum_W D_VW T_WU``, hence

    D_VU = T_VU - sum_{U < W < V} D_VW T_WU.

For three sites A < B < C: ``D_CA = T_CA - D_CB T_BA`` (A->C minus the effect through
A->B->C). For Marks et al.'s four sublayers A = resid.L-1, B = attn.L, C = mlp.L,
D = resid.L, expanding ``T_CA``: ``D_DA = T_DA - D_DB D_BA - D_DC D_CA - D_DC D_CB D_BA``,
the paths A->B->D, A->C->D and A->B->C->D of the seed post's footnote. ``edges=
"corrected"`` computes exactly this subtraction with vector-Jacobian products (for each
downstream node: one backward pass for the total row, then one per intermediate site,
nearest first); ``edges="direct"`` obtains the same quantity by cutting the gradient at
every intermediate site (a second forward pass in which each site's output is a leaf:
one backward pass per node); ``edges="total"`` keeps the uncorrected, double-counted
``T_VU`` for comparison. The subtraction runs through every node of the intermediate
site (all its features, its error and its bias, i.e. the site's whole output vector), so
it is exact, not limited to the kept nodes. Sites before the latest residual site
(``resid.L``/``embed``) preceding ``V`` reach ``V`` only through it; their direct
edges are zero and are not computed.

A consequence used in the tests: for every node ``u``, ``n_u = e(u -> m) + sum over later
sites V of sum over V's nodes (kept, error, rest) of e(u -> d)`` -- every path leaves
``u`` through exactly one first site.

Counterfactual baseline
-----------------------
``GraphConfig(baseline="corrupt")`` with ``baseline_tokens`` (a task's paired negatives)
is Marks et al.'s attribution patching: every activation ``a`` multiplying a derivative
above (node scores, and the upstream factor of edges) becomes ``a - a_corrupt``, the
decoder bias drops out, derivatives stay at the clean prompt. The node score is then the
first-order estimate of ``m(clean) - m(node patched to its corrupted value)``, and every
identity above still holds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import CircuitscanError
from ..progress import bar
from ..sae.model import detached_weights
from .graph_edges import _edges_for_batch
from .graph_passes import (
    _attn_out_bias,
    _baseline_pass,
    _Counter,
    _forward,
    _grad,
    _head_shares,
    _Pass,
    _split,
)
from .graph_types import EDGE_MODES as EDGE_MODES
from .graph_types import OUTPUT, AttributionGraph, GraphConfig, GraphNode, node_id
from .objectives import Objective, task_objective
from .objectives import next_token_objective as next_token_objective
from .sites import Site

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet
    from .saes import SublayerSAEs


def attribution_graph(
    model: ModelHandle,
    saes: SublayerSAEs,
    tokens: Tensor,
    objective: Objective,
    cfg: GraphConfig | None = None,
    *,
    attention_mask: Tensor | None = None,
    sites: list[Site] | None = None,
    baseline_tokens: Tensor | None = None,
    baseline_mask: Tensor | None = None,
) -> AttributionGraph:
    """Build the attribution graph of ``objective`` on ``tokens`` (see the module docstring).

    Args:
        model: a loaded model (any dtype; the SAEs are cast to it).
        saes: SAEs for (at least) ``sites``.
        tokens: [n_prompts, seq] token ids, all of one length (left padding + mask allowed).
        objective: :func:`next_token_objective` or :func:`task_objective`.
        cfg: :class:`GraphConfig`.
        sites: which of the SAEs' sites to use (default: all).
        baseline_tokens: with ``cfg.baseline == "corrupt"``: one counterfactual prompt per
            prompt, of the same length (a task's paired negatives).
    """
    cfg = cfg or GraphConfig()
    _check_baseline(cfg, tokens, baseline_tokens)
    t0 = time.perf_counter()
    sites = sorted(sites) if sites is not None else saes.sites
    saes.subset(sites).check_model(model)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise CircuitscanError(f"tokens must be a non-empty [prompts, seq] tensor, got {tuple(tokens.shape)}")
    n, seq = tokens.shape
    dtype = next(model.bridge.parameters()).dtype
    W = {s.name: detached_weights(saes[s], dtype) for s in sites}
    counter = _Counter()
    # positions the SAEs were not trained on (the attention sink): neither features nor error
    cov = torch.ones(seq, dtype=dtype)
    cov[: saes.skip_positions] = 0.0
    cov3 = cov[None, :, None]
    attn_layers = tuple(s.layer for s in sites if s.kind == "attn") if cfg.head_shares else ()
    w_o = model.bridge.W_O.detach().to(dtype) if attn_layers else None
    w_o_bias = _attn_out_bias(model, dtype) if attn_layers else {}

    batches = [torch.arange(lo, min(n, lo + cfg.batch_size)) for lo in range(0, n, cfg.batch_size)]
    base_tokens = baseline_tokens if cfg.baseline == "corrupt" else None
    acc, head_acc, value_sum, base_runs = _node_scores(
        model, tokens, sites, W, objective, batches, cov3, counter, attention_mask=attention_mask,
        baseline_tokens=base_tokens, baseline_mask=baseline_mask, attn_layers=attn_layers, w_o=w_o,
        w_o_bias=w_o_bias)
    nodes, kept, site_totals = _select_nodes(sites, acc, head_acc, cfg.top_k, n)
    value = value_sum / n
    nodes[OUTPUT] = GraphNode(id=OUTPUT, site=OUTPUT, kind="output", score=value)
    head_scores = _head_scores(head_acc, kept) if head_acc else None

    # ---- pass 2: edges -----------------------------------------------------------------------
    edges: dict[tuple[str, str], float] = {}
    if cfg.compute_edges:
        n_targets = sum(len(kept[s.name]) + 2 for s in sites) + 1
        with bar("attribution graph edges", len(batches) * n_targets,
                 show=None if len(batches) * n_targets > 40 else False) as advance:
            for index, base in zip(batches, base_runs, strict=True):
                mask = None if attention_mask is None else attention_mask[index]
                _edges_for_batch(model, tokens[index], index, n, sites, W, kept, objective, cfg.edges, mask, edges,
                                 counter, advance, base, cov3)

    return AttributionGraph(
        sites=[s.name for s in sites], nodes=nodes, edges=edges, site_totals=site_totals,
        objective={"name": objective.name, "description": objective.description, "value": value,
                   "higher_is_better": objective.higher_is_better, "targets": objective.targets, **objective.info},
        config=asdict(cfg), n_prompts=n, seq_len=seq, forward_passes=counter.fwd, backward_passes=counter.bwd,
        seconds=time.perf_counter() - t0, head_scores=head_scores,
    )


def _check_baseline(cfg: GraphConfig, tokens: Tensor, baseline_tokens: Tensor | None) -> None:
    if cfg.baseline != "corrupt":
        return
    if baseline_tokens is None:
        raise CircuitscanError("baseline 'corrupt' needs counterfactual prompts (a task with paired negatives)")
    if tuple(baseline_tokens.shape) != tuple(tokens.shape):
        raise CircuitscanError(
            f"baseline prompts have shape {tuple(baseline_tokens.shape)}, the prompts {tuple(tokens.shape)}; "
            "they must pair one to one"
        )


def _node_scores(model: ModelHandle, tokens: Tensor, sites: list[Site], W: dict[str, dict[str, Tensor]],
                 objective: Objective, batches: list[Tensor], cov3: Tensor, counter: _Counter, *,
                 attention_mask: Tensor | None, baseline_tokens: Tensor | None, baseline_mask: Tensor | None,
                 attn_layers: tuple[int, ...], w_o: Tensor | None, w_o_bias: dict[int, Tensor | None],
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[Tensor, Tensor]], float, list[_Pass | None]]:
    """Pass 1 (one forward, one backward per batch): every site's node-score sums.

    Returns the per-site sums, the attention heads' (encoder, decoder) shares, the sum of
    the objective over prompts, and each batch's baseline pass (None without a baseline).
    """
    n = tokens.shape[0]
    acc = {s.name: {"feat": 0.0, "err": 0.0, "bias": 0.0, "uncovered": 0.0, "total": 0.0, "act": 0.0,
                    "err_norm": 0.0, "pos_feat": 0.0, "pos_err": 0.0} for s in sites}
    head_acc: dict[str, tuple[Tensor, Tensor]] = {}
    value_sum = 0.0
    base_runs: list[_Pass | None] = []
    for index in batches:
        mask = None if attention_mask is None else attention_mask[index]
        base = None
        if baseline_tokens is not None:
            bmask = None if baseline_mask is None else baseline_mask[index]
            base = _baseline_pass(model, baseline_tokens[index], sites, bmask, attn_layers)
            counter.fwd += 1
        base_runs.append(base)
        p = _forward(model, tokens[index], sites, mode="total", mask=mask, z_layers=attn_layers)
        counter.fwd += 1
        vals = objective.fn(p.logits, index)
        value_sum += float(vals.detach().sum())
        m = vals.sum() / n
        gs = _grad(m, [p.handles[s.name] for s in sites])
        counter.bwd += 1
        for s, g in zip(sites, gs, strict=True):
            shares = _accumulate_site(acc[s.name], s, W[s.name], p, g, base, cov3, w_o, w_o_bias)
            if shares is not None:
                prev = head_acc.get(s.name)
                head_acc[s.name] = shares if prev is None else (prev[0] + shares[0], prev[1] + shares[1])
        del p, gs
    return acc, head_acc, value_sum, base_runs


def _accumulate_site(a: dict[str, Any], s: Site, w: dict[str, Tensor], p: _Pass, g: Tensor, base: _Pass | None,
                     cov3: Tensor, w_o: Tensor | None, w_o_bias: dict[int, Tensor | None],
                     ) -> tuple[Tensor, Tensor] | None:
    """Add one batch's node scores of site ``s`` to ``a``; return its heads' shares (attention sites)."""
    x = p.x[s.name].detach()
    f, eps = _split(w, x, cov3)
    c = g @ w["W_D"].T  # dm/df per position
    df, deps, dx, z_h = f, eps, x, p.z.get(s.name)
    if base is not None:  # differences from the counterfactual run; the bias cancels
        xb = base.x[s.name]
        fb, eps_b = _split(w, xb, cov3)
        df, deps, dx = f - fb, eps - eps_b, x - xb
        z_h = None if z_h is None else z_h - base.z[s.name]
    contrib = df * c
    a["feat"] = a["feat"] + contrib.sum((0, 1))
    a["pos_feat"] = a["pos_feat"] + contrib.sum(0)
    e = (deps * g).sum(-1)
    a["err"] += float(e.sum())
    a["pos_err"] = a["pos_err"] + e.sum(0)
    a["bias"] += 0.0 if base is not None else float((w["b"] * g * cov3).sum())
    a["uncovered"] += float((dx * g * (1.0 - cov3)).sum())
    a["total"] += float((dx * g).sum())
    a["act"] = a["act"] + f.sum((0, 1))
    a["err_norm"] += float(eps.norm(dim=-1).sum())
    if s.kind == "attn" and z_h is not None:
        return _head_shares(z_h, w_o[s.layer], None if base is not None else w_o_bias.get(s.layer), w,
                            f, c, delta=df if base is not None else None)
    return None


def _select_nodes(sites: list[Site], acc: dict[str, dict[str, Any]], head_acc: dict[str, tuple[Tensor, Tensor]],
                  top_k: int, n: int) -> tuple[dict[str, GraphNode], dict[str, list[int]], dict[str, dict[str, float]]]:
    """Per site, the ``top_k`` features by absolute score as nodes, plus its error and rest nodes."""
    nodes: dict[str, GraphNode] = {}
    kept: dict[str, list[int]] = {}
    site_totals: dict[str, dict[str, float]] = {}
    for s in sites:
        a = acc[s.name]
        feat = a["feat"].detach().double()
        order = torch.argsort(-feat.abs(), stable=True)
        chosen = [int(i) for i in order[:top_k] if float(feat[i]) != 0.0]
        kept[s.name] = chosen
        for i in chosen:
            pos = int(a["pos_feat"][:, i].abs().argmax())
            heads = heads_enc = None
            if s.name in head_acc:
                enc, dec = head_acc[s.name]
                heads = {f"L{s.layer}H{h}": float(v) for h, v in enumerate(dec[:, i].tolist())}
                he = enc[:, i].tolist()
                heads_enc = {f"L{s.layer}H{h}": float(v) for h, v in enumerate(he[:-1])}
                heads_enc["const"] = float(he[-1])
            nodes[node_id(s.name, "feature", i)] = GraphNode(
                id=node_id(s.name, "feature", i), site=s.name, kind="feature", feature=i, score=float(feat[i]),
                activation=float(a["act"][i]) / n, position=pos, heads=heads, heads_encoder=heads_enc,
            )
        err_pos = int(a["pos_err"].abs().argmax()) if isinstance(a["pos_err"], Tensor) else None
        nodes[node_id(s.name, "error")] = GraphNode(
            id=node_id(s.name, "error"), site=s.name, kind="error", score=a["err"], activation=a["err_norm"] / n,
            position=err_pos,
        )
        rest = float(feat.sum()) - sum(float(feat[i]) for i in chosen)
        nodes[node_id(s.name, "rest")] = GraphNode(id=node_id(s.name, "rest"), site=s.name, kind="rest", score=rest)
        kept_abs = sum(abs(float(feat[i])) for i in chosen)
        site_totals[s.name] = {
            "total": a["total"], "features": float(feat.sum()), "kept": float(feat.sum()) - rest, "rest": rest,
            "error": a["err"], "bias": a["bias"], "uncovered": a["uncovered"],
            "n_active_features": int((a["act"] > 0).sum()),
            "abs_features": float(feat.abs().sum()), "abs_kept": kept_abs,
            "abs_rest": float(feat.abs().sum()) - kept_abs,
        }
    return nodes, kept, site_totals


def _head_scores(head_acc: dict[str, tuple[Tensor, Tensor]], kept: dict[str, list[int]]) -> dict[str, dict[str, list]]:
    """Per attention site, each head's summed shares of the kept features and of all features."""
    head_scores = {}
    for name, (enc, dec) in head_acc.items():
        cols = torch.tensor(kept[name], dtype=torch.long)
        head_scores[name] = {"kept": dec[:, cols].sum(1).tolist(), "all": dec.sum(1).tolist(),
                             "kept_encoder": enc[:-1, cols].abs().sum(1).tolist(),
                             "all_encoder": enc[:-1].abs().sum(1).tolist()}
    return head_scores


def graph_for_prompts(
    model: ModelHandle,
    saes: SublayerSAEs,
    prompts: PromptSet,
    cfg: GraphConfig | None = None,
    *,
    metric: str | None = None,
    n_prompts: int | None = None,
    sites: list[Site] | None = None,
) -> AttributionGraph:
    """The graph of a task's metric over (the first ``n_prompts`` of) its positive prompts
    (with ``cfg.baseline == "corrupt"``, against their paired negatives)."""
    cfg = cfg or GraphConfig()
    k = prompts.n_positive if n_prompts is None else min(n_prompts, prompts.n_positive)
    tokens = prompts.positive[:k]
    mask = None if prompts.positive_mask is None else prompts.positive_mask[:k]
    base = base_mask = None
    if cfg.baseline == "corrupt":
        if not prompts.paired:
            raise CircuitscanError(f"task {prompts.task!r} has no paired negatives; use baseline 'zero'")
        base = prompts.negative[:k]
        base_mask = None if prompts.negative_mask is None else prompts.negative_mask[:k]
    objective = task_objective(prompts, metric)
    return attribution_graph(model, saes, tokens, objective, cfg, attention_mask=mask, sites=sites,
                             baseline_tokens=base, baseline_mask=base_mask)


def explained_fractions(graph: AttributionGraph) -> dict[str, dict[str, float]]:
    """Per site, shares of the site's *absolute* attribution ``sum_i |n_i| + |n_eps|``
    carried by the kept features, the other features and the SAE error.

    Signed shares of the site's total are not used: node scores of one site cancel, and
    a residual site feeding a final RMSNorm/LayerNorm has a total near zero (the norm
    makes the output invariant to scaling it), so its signed shares are meaningless."""
    out = {}
    for site, t in graph.site_totals.items():
        denom = t.get("abs_features", math.nan) + abs(t["error"])
        ok = math.isfinite(denom) and denom > 1e-30
        out[site] = {
            "kept": t.get("abs_kept", math.nan) / denom if ok else math.nan,
            "rest": t.get("abs_rest", math.nan) / denom if ok else math.nan,
            "error": abs(t["error"]) / denom if ok else math.nan,
        }
    return out
