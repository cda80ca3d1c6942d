"""Validation by ablation: switch off graph nodes in a real forward pass and measure.

Zero-ablating feature ``i`` at a site replaces the site's output ``x`` by
``x - f_i(x) W_D[i]`` (the feature's contribution removed, everything else, the SAE's
error included, left as it is); ablating the error node replaces ``x`` by its SAE
reconstruction. With several nodes (a *thread*), every site applies its own ablations
to the activation it actually receives, so upstream ablations propagate downstream, as
in the model. The graph's first-order prediction of an ablation's effect on the
objective is ``-n`` for one node; for several nodes the sum of their scores is a naive
prediction that double counts nodes downstream of each other (reported as such).

Faithfulness (Marks et al. 2024) of the graph as a circuit: keep the graph's kept
features at every site, zero-ablate every other feature, and compare with the clean
model and with the empty circuit (every feature *and* error ablated: each site outputs
its decoder bias, roughly its mean)::

    faithfulness = (m(graph) - m(empty)) / (m(clean) - m(empty))

reported with the error nodes kept (as Marks et al. count them in the circuit) and
with them ablated too (what the kept *features* explain on their own).

With a counterfactual ``baseline`` (the site activations of paired corrupted prompts,
for graphs built with ``baseline="corrupt"``), "ablating" a node *patches* it to its value
on the corrupted prompt instead of zero: feature ``i`` adds ``(f_i(x_b) - f_i(x)) W_D[i]``,
the error node swaps ``eps(x)`` for ``eps(x_b)``. The empty circuit then runs every site on
the corrupted activations, and faithfulness is Marks et al.'s counterfactual one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import CircuitscanError
from ..sae.model import decode_with, detached_weights, encode_with
from .graph_types import OUTPUT, AttributionGraph
from .interpret import token_strings
from .objectives import Objective, _upcast
from .sites import Site, parse_site

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from .saes import SublayerSAEs


@dataclass(frozen=True)
class Ablation:
    """What to switch off at each site: feature indices, the error, or everything else."""

    features: dict[str, tuple[int, ...]]
    errors: frozenset[str] = frozenset()
    keep_only: dict[str, tuple[int, ...]] | None = None  # sites: ablate every feature NOT listed

    @property
    def sites(self) -> list[Site]:
        names = set(self.features) | set(self.errors) | set(self.keep_only or {})
        return sorted(parse_site(n) for n in names)


def parse_nodes(spec: str | Iterable[str]) -> Ablation:
    """Read node ids such as ``resid.3/f12, attn.4/f7, mlp.4/error``."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise CircuitscanError("no nodes to ablate; write them like resid.3/f12,attn.4/error")
    feats: dict[str, list[int]] = {}
    errors: set[str] = set()
    for item in items:
        site, _, what = item.partition("/")
        try:
            name = parse_site(site).name
        except CircuitscanError as exc:
            raise CircuitscanError(f"cannot read node {item!r}: {exc}") from exc
        if what == "error":
            errors.add(name)
        elif what.startswith("f") and what[1:].isdigit():
            feats.setdefault(name, []).append(int(what[1:]))
        else:
            raise CircuitscanError(f"cannot read node {item!r}: write SITE/f<index> (e.g. resid.3/f12) or SITE/error")
    return Ablation({k: tuple(sorted(set(v))) for k, v in feats.items()}, frozenset(errors))


def _hooks(saes: SublayerSAEs, ab: Ablation, dtype, baseline: dict[str, Tensor] | None = None) -> list[tuple[str, Any]]:
    hooks = []
    skip = saes.skip_positions  # positions the SAEs never saw (the attention sink) keep their value
    for site in ab.sites:
        sae = saes[site]
        w = detached_weights(sae, dtype)
        feats = list(ab.features.get(site.name, ()))
        bad = [f for f in feats if not 0 <= f < sae.n_features]
        if bad:
            raise CircuitscanError(f"site {site.name} has features 0..{sae.n_features - 1}; cannot ablate {bad}")
        keep = None if ab.keep_only is None or site.name not in ab.keep_only else list(ab.keep_only[site.name])
        err = site.name in ab.errors
        xb = None
        if baseline is not None:
            if site.name not in baseline:
                raise CircuitscanError(f"no baseline activations for site {site.name}")
            xb = baseline[site.name].to(dtype)

        def hook(x: Tensor, hook, w=w, feats=feats, keep=keep, err=err, xb=xb) -> Tensor:  # noqa: ARG001
            f = encode_with(w, x)
            fb = torch.zeros_like(f) if xb is None else encode_with(w, xb)
            change = f - fb  # what switching a feature to its baseline value removes
            off = torch.zeros_like(f)
            if keep is not None:
                off = change.clone()
                off[..., keep] = 0.0
            if feats:
                off[..., feats] = change[..., feats]
            y = x - off @ w["W_D"]
            if err:
                eps = x - decode_with(w, f)
                eps_b = 0.0 if xb is None else xb - decode_with(w, fb)
                y = y - (eps - eps_b)
            if skip:
                y = torch.cat([x[:, :skip], y[:, skip:]], 1)
            return y

        hooks.append((site.hook, hook))
    return hooks


@torch.no_grad()
def run_ablated(model: ModelHandle, saes: SublayerSAEs, tokens: Tensor, ablation: Ablation | None,
                attention_mask: Tensor | None = None, baseline: dict[str, Tensor] | None = None) -> Tensor:
    """Logits with ``ablation`` applied (None: the clean model); with ``baseline`` (site
    activations of counterfactual prompts), nodes are patched to their baseline values."""
    kw = {} if attention_mask is None else {"attention_mask": attention_mask}
    if ablation is None:
        return model.bridge(tokens, **kw)
    dtype = next(model.bridge.parameters()).dtype
    return model.bridge.run_with_hooks(tokens, fwd_hooks=_hooks(saes, ablation, dtype, baseline), **kw)


def _objective(obj: Objective, logits: Tensor) -> float:
    index = torch.arange(logits.shape[0])
    return float(obj.fn(logits, index).mean())


def ablation_effect(
    model: ModelHandle,
    saes: SublayerSAEs,
    tokens: Tensor,
    objective: Objective,
    ablation: Ablation,
    *,
    clean_logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    top: int = 8,
    baseline: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Objective and last-position logits with ``ablation`` against the clean model.

    Returns:
        ``objective_clean``, ``objective_ablated``, ``delta`` (ablated - clean), the mean
        change of the target tokens' logits and probabilities, and the tokens whose
        log-probabilities (mean over prompts, at the last position) fell and rose most:
        the first are what the ablated nodes promoted in this forward pass.
    """
    clean = clean_logits if clean_logits is not None else run_ablated(model, saes, tokens, None, attention_mask)
    abl = run_ablated(model, saes, tokens, ablation, attention_mask, baseline)
    # log-probabilities, not logits: an ablation upstream can shift every logit alike
    d = (_upcast(abl[:, -1]).log_softmax(-1) - _upcast(clean[:, -1]).log_softmax(-1)).mean(0)
    out: dict[str, Any] = {
        "objective_clean": _objective(objective, clean),
        "objective_ablated": _objective(objective, abl),
    }
    out["delta"] = out["objective_ablated"] - out["objective_clean"]
    if objective.targets:
        tg = torch.tensor(objective.targets[: tokens.shape[0]])
        rows = torch.arange(tg.numel())
        out["target_logit_delta"] = float(_upcast(abl[rows, -1, tg] - clean[rows, -1, tg]).mean())
        lp_c = _upcast(clean[rows, -1]).log_softmax(-1)[rows, tg]
        lp_a = _upcast(abl[rows, -1]).log_softmax(-1)[rows, tg]
        out["target_prob_clean"] = float(lp_c.exp().mean())
        out["target_prob_ablated"] = float(lp_a.exp().mean())
    k = min(top, d.numel())
    fell = (-d).topk(k)
    rose = d.topk(k)
    out["promoted_here"] = [[t, float(-v)] for t, v in zip(token_strings(model, fell.indices), fell.values.tolist(), strict=True)]
    out["suppressed_here"] = [[t, float(v)] for t, v in zip(token_strings(model, rose.indices), rose.values.tolist(), strict=True)]
    return out


def validate_nodes(
    model: ModelHandle,
    saes: SublayerSAEs,
    tokens: Tensor,
    objective: Objective,
    graph: AttributionGraph,
    *,
    top: int | None = 12,
    attention_mask: Tensor | None = None,
    baseline: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Ablate the graph's strongest feature nodes one at a time; compare with ``-score``.

    Returns:
        ``nodes``: per node, its score, the predicted and the measured change of the
        objective and the tokens it promoted in this forward pass; ``summary``: Pearson
        correlation of predicted vs measured, the fraction with the same sign, and the
        median ratio measured / predicted.
    """
    feats = sorted((n for n in graph.nodes.values() if n.kind == "feature"), key=lambda n: -abs(n.score))
    if top is not None:
        feats = feats[:top]
    clean = run_ablated(model, saes, tokens, None, attention_mask)
    rows = []
    for node in feats:
        ab = Ablation({node.site: (int(node.feature),)})
        eff = ablation_effect(model, saes, tokens, objective, ab, clean_logits=clean, attention_mask=attention_mask,
                              baseline=baseline)
        rows.append({"node": node.id, "score": node.score, "predicted_delta": -node.score, **eff})
    return {"nodes": rows, "summary": _agreement([r["predicted_delta"] for r in rows], [r["delta"] for r in rows])}


def _agreement(pred: list[float], meas: list[float]) -> dict[str, float]:
    n = len(pred)
    if n == 0:
        return {"n": 0}
    p = torch.tensor(pred, dtype=torch.float64)
    m = torch.tensor(meas, dtype=torch.float64)
    corr = float("nan")
    if n >= 3 and float(p.std()) > 0 and float(m.std()) > 0:
        corr = float(torch.corrcoef(torch.stack([p, m]))[0, 1])
    nz = p.abs() > 1e-12
    ratio = float((m[nz] / p[nz]).median()) if bool(nz.any()) else float("nan")
    return {"n": n, "pearson": corr, "same_sign": float(((p * m) > 0).double().mean()), "median_ratio": ratio}


def thread_ablation(
    model: ModelHandle,
    saes: SublayerSAEs,
    tokens: Tensor,
    objective: Objective,
    graph: AttributionGraph,
    thread: list[str] | None = None,
    *,
    attention_mask: Tensor | None = None,
    baseline: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Ablate a whole thread of nodes at once (default: :meth:`AttributionGraph.thread`)."""
    thread = thread if thread is not None else graph.thread()
    if not thread:
        return {"thread": [], "note": "the graph has no feature path into the output"}
    unknown = [t for t in thread if t not in graph.nodes or t == OUTPUT]
    if unknown:
        raise CircuitscanError(f"node(s) {', '.join(unknown)} are not in the graph")
    ab = parse_nodes(thread)
    eff = ablation_effect(model, saes, tokens, objective, ab, attention_mask=attention_mask, baseline=baseline)
    naive = -sum(graph.nodes[t].score for t in thread)
    edges = [graph.edges.get((a, b)) for a, b in zip(thread, thread[1:], strict=False)]
    return {"thread": thread, "edges": edges, "naive_predicted_delta": naive, **eff}


def graph_faithfulness(
    model: ModelHandle,
    saes: SublayerSAEs,
    tokens: Tensor,
    objective: Objective,
    graph: AttributionGraph,
    *,
    attention_mask: Tensor | None = None,
    baseline: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Faithfulness of the graph's kept features as a circuit (see the module docstring)."""
    keep = {s: tuple(int(n.feature) for n in graph.kept(s)) for s in graph.sites}
    all_sites = frozenset(graph.sites)
    runs = {
        "clean": None,
        "graph_with_errors": Ablation({}, frozenset(), keep),
        "graph_features_only": Ablation({}, all_sites, keep),
        "empty": Ablation({}, all_sites, {s: () for s in graph.sites}),
    }
    vals = {k: _objective(objective, run_ablated(model, saes, tokens, ab, attention_mask, baseline))
            for k, ab in runs.items()}
    span = vals["clean"] - vals["empty"]

    def faith(v: float) -> float:
        return (v - vals["empty"]) / span if abs(span) > 1e-12 else math.nan

    return {**{f"objective_{k}": v for k, v in vals.items()},
            "faithfulness_with_errors": faith(vals["graph_with_errors"]),
            "faithfulness_features_only": faith(vals["graph_features_only"])}
