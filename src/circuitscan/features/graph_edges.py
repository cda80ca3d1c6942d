"""The attribution graph's edges: per batch, every kept node's row of direct effects from upstream sites."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..sae.model import decode_with, encode_with
from .graph_passes import _Counter, _forward, _grad, _Pass, _split
from .graph_types import OUTPUT, node_id
from .sites import Site, upstream_of


@dataclass
class _EdgeBatch:
    """One batch's passes and the upstream data every edge row is contracted with.

    ``p`` is the ``total`` pass; ``q`` the ``leaf`` pass (``direct`` edges only);
    ``up_data[site]`` the site's (detached) feature activations and SAE error, as
    differences from the baseline run when there is one.
    """

    p: _Pass
    q: _Pass | None
    mode: str
    W: dict[str, dict[str, Tensor]]
    kept: dict[str, list[int]]
    up_data: dict[str, tuple[Tensor, Tensor]]
    edges: dict[tuple[str, str], float]
    counter: _Counter
    advance: Callable[..., Any]

    def rows(self, target_fn: Callable[[_Pass], Tensor], ups: list[Site]) -> dict[str, Tensor]:
        """The direct (or total) row d s / d y_U for every upstream site U."""
        p, q, counter = self.p, self.q, self.counter
        if self.mode == "direct":
            s_val = target_fn(q)
            r = _grad(s_val, [q.handles[u.name] for u in ups])
            counter.bwd += 1
            return {u.name: v for u, v in zip(ups, r, strict=True)}
        s_val = target_fn(p)
        total = _grad(s_val, [p.handles[u.name] for u in ups])
        counter.bwd += 1
        r = {u.name: v for u, v in zip(ups, total, strict=True)}
        if self.mode == "total":
            return r
        # the correction: D_VU = T_VU - sum_{U<W<V} D_VW T_WU, nearest U first
        for j in range(len(ups) - 2, -1, -1):
            u = ups[j]
            later = ups[j + 1 :]
            through = sum((r[w.name] * p.x[w.name]).sum() for w in later)
            (corr,) = _grad(through, [p.handles[u.name]])
            counter.bwd += 1
            r[u.name] = r[u.name] - corr
        return r

    def contract(self, r: dict[str, Tensor], ups: list[Site]) -> dict[str, float]:
        """Edge weights from every upstream node: the row contracted with the node's activation."""
        out: dict[str, float] = {}
        for u in ups:
            f, eps = self.up_data[u.name]
            ru = r[u.name]
            per_feat = (f * (ru @ self.W[u.name]["W_D"].T)).sum((0, 1))
            ks = self.kept[u.name]
            for i in ks:
                out[node_id(u.name, "feature", i)] = float(per_feat[i])
            out[node_id(u.name, "rest")] = float(per_feat.sum()) - sum(float(per_feat[i]) for i in ks)
            out[node_id(u.name, "error")] = float((eps * ru).sum())
        return out

    def edge_values(self, target_fn: Callable[[_Pass], Tensor], ups: list[Site]) -> dict[str, float]:
        return self.contract(self.rows(target_fn, ups), ups)

    def add(self, src_vals: dict[str, float], dst: str) -> None:
        for src, v in src_vals.items():
            self.edges[(src, dst)] = self.edges.get((src, dst), 0.0) + v
        self.advance()


def _edges_for_batch(model, tokens, index, n, sites, W, kept, objective, mode, mask, edges, counter,
                     advance=lambda n=1: None, base: _Pass | None = None, cov3: Tensor | None = None) -> None:
    """Add one batch's edges into ``edges`` (``{(source node, target node): weight}``)."""
    if cov3 is None:
        cov3 = torch.ones(1, tokens.shape[1], 1, dtype=next(iter(W.values()))["W_D"].dtype)
    p = _forward(model, tokens, sites, mode="total", mask=mask)
    counter.fwd += 1
    vals = objective.fn(p.logits, index)
    m = vals.sum() / n
    deltas = [p.handles[s.name] for s in sites]
    g = dict(zip([s.name for s in sites], _grad(m, deltas), strict=True))
    counter.bwd += 1
    q = m_leaf = None
    if mode == "direct":
        clean = {k: v.detach() for k, v in p.x.items()}
        q = _forward(model, tokens, sites, mode="leaf", mask=mask, clean=clean)
        counter.fwd += 1
        m_leaf = objective.fn(q.logits, index).sum() / n
    # upstream contraction data (detached): activations and errors of every site
    up_data = {}
    for s in sites:
        f, eps = _split(W[s.name], p.x[s.name].detach(), cov3)
        if base is not None:  # attribution patching: upstream activations as differences from the baseline
            fb, eps_b = _split(W[s.name], base.x[s.name], cov3)
            f, eps = f - fb, eps - eps_b
        up_data[s.name] = (f, eps)
    eb = _EdgeBatch(p=p, q=q, mode=mode, W=W, kept=kept, up_data=up_data, edges=edges, counter=counter,
                    advance=advance)

    for v in sites:
        ups = upstream_of(v, sites)
        if ups:
            _site_edges(eb, v, ups, g[v.name].detach(), cov3)

    ups = upstream_of(None, sites)
    if ups:
        def out_target(pp: _Pass) -> Tensor:
            return m_leaf if pp is not p else m

        eb.add(eb.edge_values(out_target, ups), OUTPUT)


def _site_edges(eb: _EdgeBatch, v: Site, ups: list[Site], g_all: Tensor, cov3: Tensor) -> None:
    """Edges into site ``v``'s kept features, its error and its rest node, from the sites ``ups``."""
    wv = eb.W[v.name]
    gv = g_all * cov3  # feature and error nodes live at covered positions only
    site_rows: dict[str, dict[str, float]] = {}
    for i in eb.kept[v.name]:
        c = gv @ wv["W_D"][i]

        def feat_target(pp: _Pass, i=i, c=c, wv=wv, name=v.name) -> Tensor:
            return (encode_with(wv, pp.x[name])[..., i] * c).sum()

        site_rows[node_id(v.name, "feature", i)] = eb.edge_values(feat_target, ups)

    def err_target(pp: _Pass, wv=wv, gv=gv, name=v.name) -> Tensor:
        x = pp.x[name]
        return ((x - decode_with(wv, encode_with(wv, x))) * gv).sum()

    def total_target(pp: _Pass, gv=g_all, name=v.name) -> Tensor:  # the whole site: "rest" keeps the remainder
        return (pp.x[name] * gv).sum()

    site_rows[node_id(v.name, "error")] = eb.edge_values(err_target, ups)
    whole = eb.edge_values(total_target, ups)
    rest = {k: whole[k] - sum(site_rows[d][k] for d in site_rows) for k in whole}
    site_rows[node_id(v.name, "rest")] = rest
    for dst, vals in site_rows.items():
        eb.add(vals, dst)
