"""Figures of the predicted circuit: the layer diagram (Fig. 10) and the head-pair matrix (Fig. 28)."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CircuitscanError
from ._figure_style import (
    GT_COLOR,
    PAIR_COLOR,
    _flat_head_ticks,
    _layer_head_ticks,
    _new_figure,
    _require,
    _titles,
    cell_inches,
)
from .rundata import RunData, to_float

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


# ---------------------------------------------------------------------------------------
# Fig. 10: circuit diagram
# ---------------------------------------------------------------------------------------
def _pair_links(run: RunData, method: str, limit: int = 20) -> tuple[list[tuple[int, int, float]], bool, str]:
    """(links as (from, to, weight), directed?, what they are) for the diagram."""
    ms = run.methods[method]
    lay = run.layout
    links: list[tuple[int, int, float]] = []
    if ms.edges:
        best: dict[tuple[int, int], float] = {}
        for key, w in ms.edges.items():
            parts = re.split(r"\s*->\s*", key)
            if len(parts) != 2 or not math.isfinite(w):
                continue
            try:  # "L0H1->L1H2.q": the q / k / v input of the receiving head is dropped
                a, b = (lay.index(re.sub(r"[.:]?[qkv]$", "", part.strip())) for part in parts)
            except CircuitscanError:
                continue  # edges to embeddings / MLPs / output: not heads
            if abs(w) > abs(best.get((a, b), 0.0)) or (a, b) not in best:
                best[(a, b)] = w
        links = sorted(((a, b, w) for (a, b), w in best.items()), key=lambda t: -abs(t[2]))
        links = [t for t in links if t[2] != 0]
        return links[:limit], True, f"top {min(limit, len(links))} head-to-head edges by |score|"
    if ms.top_pairs:
        for h1, h2, u in ms.top_pairs:
            try:
                a, b = lay.index(h1), lay.index(h2)
            except CircuitscanError:
                continue
            links.append((a, b, u if math.isfinite(u) else 1.0))
        links.sort(key=lambda t: -t[2])
        return links[:limit], False, f"top {min(limit, len(links))} head pairs by {ms.pairs_symbol}"
    return [], False, ""


def _draw_links(ax: Axes, run: RunData, method: str, xs: np.ndarray, ys: np.ndarray, selected: np.ndarray,
                node_pt: float) -> str:
    """Draw the circuit's links under the nodes; return what the lines show."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import FancyArrowPatch

    L = run.layout.n_layers
    links, directed, link_what = _pair_links(run, method)
    if links:
        wmax = max(abs(w) for _, _, w in links) or 1.0
        for a, b, w in links:
            if ys[a] > ys[b] or (ys[a] == ys[b] and xs[a] > xs[b]):
                a, b = b, a
            same_layer = ys[a] == ys[b]
            rad = (0.3 if ys[a] < L - 1 else -0.3) if same_layer else 0.08
            ax.add_patch(FancyArrowPatch(
                (xs[a], ys[a]), (xs[b], ys[b]), arrowstyle="-|>" if directed else "-",
                connectionstyle=f"arc3,rad={rad}", mutation_scale=8,
                lw=0.6 + 2.4 * abs(w) / wmax, color=PAIR_COLOR, alpha=0.55, zorder=1,
                shrinkA=node_pt / 2, shrinkB=node_pt / 2,
            ))
    else:  # the paper's default: every circuit head to every circuit head of the next circuit layer
        layers = sorted({int(ys[i]) for i in np.flatnonzero(selected)})
        segs = []
        for la, lb in zip(layers, layers[1:], strict=False):
            for a in np.flatnonzero(selected & (ys == la)):
                for b in np.flatnonzero(selected & (ys == lb)):
                    segs.append([(xs[a], ys[a]), (xs[b], ys[b])])
        if segs:
            ax.add_collection(LineCollection(segs[:2000], colors="#666666", linewidths=0.9, alpha=0.6, zorder=1))
            link_what = "circuit heads to the next circuit layer (paper's default)"
    return link_what


def _circuit_legend(fig: Figure, run: RunData, cmap: Any) -> None:
    from matplotlib.lines import Line2D

    gt = run.gt_mask
    handles = [
        Line2D([], [], marker="o", ls="", mfc=cmap(0.8), mec="#111111", mew=1.6, ms=8, label="in predicted circuit"),
        Line2D([], [], marker="o", ls="", mfc=(*cmap(0.3)[:3], 0.45), mec="#aaaaaa", ms=8, label="not selected"),
    ]
    if gt is not None:
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec=GT_COLOR, ms=10,
                              label=f"ground truth {run.ground_truth_name}"))
    fig.legend(handles=handles, fontsize=7.5, loc="outside lower center", ncol=len(handles), frameon=False)


def circuit_diagram(run: RunData, method: str) -> Figure:
    """Layers as rows (layer 0 on top), heads as nodes shaded by score, the circuit emphasised."""
    from matplotlib.colors import Normalize

    _require(method in run.methods, f"no method {method!r} in the run (it has {', '.join(run.methods)})")
    import matplotlib

    lay = run.layout
    ms = run.methods[method]
    values, label = ms.display_values()
    cell = cell_inches(lay.n_layers, lay.n_heads, max_w=8.0, max_h=10.0, hi=0.6)
    fig = _new_figure(max(5.6, lay.n_heads * cell + 2.8), max(3.6, lay.n_layers * cell * 0.8 + 1.6))
    ax = fig.add_subplot()
    L, H = lay.n_layers, lay.n_heads
    idx = np.arange(lay.n_total)
    xs, ys = idx % H, idx // H
    finite = values[np.isfinite(values)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1.0
    norm = Normalize(vmin, vmax)
    cmap = matplotlib.colormaps["Blues"]
    selected = run.circuit_mask(method)
    if selected is None:
        selected = np.zeros(lay.n_total, dtype=bool)
    face = cmap(norm(np.nan_to_num(values, nan=vmin)))
    face[~selected, 3] = 0.45
    node_pt = cell * 72 * 0.62
    size = node_pt**2

    link_what = _draw_links(ax, run, method, xs, ys, selected, node_pt)

    ax.scatter(xs, ys, s=size, c=face, edgecolors=np.where(selected, "#111111", "#aaaaaa"),
               linewidths=np.where(selected, 1.6, 0.5), zorder=2)
    gt = run.gt_mask
    if gt is not None and gt.any():
        ax.scatter(xs[gt], ys[gt], s=size * 1.9, facecolors="none", edgecolors=GT_COLOR, linewidths=1.2, zorder=3)
    sel = np.flatnonzero(selected)
    if 0 < sel.size <= 60:
        fs = float(np.clip(cell * 72 * 0.28, 5, 8))
        for i in sel:
            ax.annotate(lay.head(int(i)).name, (xs[i], ys[i]), xytext=(0, node_pt * 0.62 + 1),
                        textcoords="offset points", ha="center", va="bottom", fontsize=fs, zorder=4,
                        fontweight="bold")
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label,
                 shrink=min(1.0, max(0.4, 3.5 / max(L * cell * 0.8, 1e-6))))
    ax.set_xlim(-0.7, H - 0.3)
    ax.set_ylim(L - 0.4, -0.8)  # layer 0 on top: information flows down
    _layer_head_ticks(ax, L, H, cell * 0.8, cell)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    c = run.circuit(method) or {}
    size_txt = f"{int(selected.sum())} heads"
    thr = to_float(c.get("threshold"))
    sub = [f"rule: {c['rule']}, θ = {thr:.3g}" if c.get("rule") else "no circuit recorded in metrics.json"]
    if link_what:
        sub.append(f"lines: {link_what}")
    _titles(fig, ax, f"{method}: predicted circuit, {size_txt}", "; ".join(sub))
    _circuit_legend(fig, run, cmap)
    return fig


# ---------------------------------------------------------------------------------------
# Fig. 28: head-pair matrix
# ---------------------------------------------------------------------------------------
def gt_pair_matrix(gt: np.ndarray) -> np.ndarray:
    """2 where both heads are in the ground truth, 1 where one is, 0 where neither."""
    g = gt.astype(np.int64)
    return g[:, None] + g[None, :]


def pair_matrix(run: RunData, method: str) -> Figure:
    """The method's head x head matrix (U, or the joint-code distance D) beside the ground-truth pair matrix."""
    from matplotlib.colors import ListedColormap, PowerNorm
    from matplotlib.patches import Patch

    ms = run.methods.get(method)
    _require(ms is not None and ms.pairs is not None, f"method {method!r} has no head-pair matrix in scores.json")
    U = ms.pairs
    lay = run.layout
    n = lay.n_total
    side = float(np.clip(n * 0.05, 3.6, 6.4))
    gt = run.gt_mask
    panels = 2 if gt is not None else 1
    fig = _new_figure(side * panels + 1.6 * panels, side + 1.3)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    finite = U[np.isfinite(U)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = axes[0].imshow(U, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=vmax), interpolation="nearest")
    sym = ms.pairs_symbol
    fig.colorbar(im, ax=axes[0], label=f"{ms.pairs_label} ({sym})", shrink=0.8)
    axes[0].set_title(f"{method}: {sym}[h1, h2]", fontsize=9)
    if gt is not None:
        cmap = ListedColormap(["#ffffff", "#9ecae1", "#08519c"])
        axes[1].imshow(gt_pair_matrix(gt), cmap=cmap, vmin=-0.5, vmax=2.5, interpolation="nearest")
        axes[1].set_title(f"ground truth {run.ground_truth_name}: heads of each pair in the circuit", fontsize=9)
        from matplotlib.lines import Line2D

        axes[1].legend(handles=[Patch(color="#08519c", label="both heads in circuit"),
                                Patch(color="#9ecae1", label="one head in circuit"),
                                Patch(facecolor="#ffffff", edgecolor="#999999", label="neither"),
                                Line2D([], [], ls="", marker="v", color=GT_COLOR, label="ground-truth head")],
                       fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, frameon=False)
    for ax in axes:
        _flat_head_ticks(ax, run, "x", side)
        _flat_head_ticks(ax, run, "y", side)
        ax.set_xlabel("head h2")
        ax.set_ylabel("head h1")
        if lay.n_heads > 1 and lay.n_layers <= 24:
            for b in range(1, lay.n_layers):
                ax.axhline(b * lay.n_heads - 0.5, color="#bbbbbb", lw=0.3)
                ax.axvline(b * lay.n_heads - 0.5, color="#bbbbbb", lw=0.3)
        if gt is not None and gt.any():  # ground-truth heads marked on the edges: visible at any size
            idx = np.flatnonzero(gt)
            ms = float(np.clip(side * 72 / n * 1.2, 5.0, 8.0))
            ax.plot(idx, np.full(idx.size, -0.5), ls="", marker="v", ms=ms, color=GT_COLOR, clip_on=False, zorder=5)
            ax.plot(np.full(idx.size, -0.5), idx, ls="", marker=">", ms=ms, color=GT_COLOR, clip_on=False, zorder=5)
            ax.set_xlim(-0.5, n - 0.5)
            ax.set_ylim(n - 0.5, -0.5)
    _titles(fig, None, f"Head-pair matrix of {method} ({n} × {n} heads)"
            + (" beside the ground truth" if gt is not None else ""))
    return fig
