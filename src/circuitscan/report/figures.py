"""The report's figures, each a function from a :class:`RunData` to a matplotlib ``Figure``.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no global
state) and sized from the head layout, so that they stay readable from 4 to 40+
layers. Each mirrors a figure of O'Neill & Bui (2024):

=========================  ==============================================================
function                   shows (paper figure)
=========================  ==============================================================
``score_heatmap``          per-head value, layers x heads, ground truth outlined (Fig. 8)
``unique_code_difference`` unique positive minus unique negative codes per head (Fig. 29)
``roc_curves``             ROC over heads of every method, AUC in the legend (Fig. 9)
``faithfulness_curves``    faithfulness vs circuit size with random-circuit bands (Fig. 5)
``circuit_diagram``        layers as rows, heads shaded by score, circuit + top pairs (Fig. 10)
``pair_matrix``            head-pair matrix U beside the ground-truth pair matrix (Fig. 28)
``feature_projection``     PCA / t-SNE of SAE feature activations (Fig. 12)
``head_projections``       PCA of the top heads' SAE features (Fig. 14)
``top_code_histograms``    activations of the top code of the top heads (Fig. 31)
``sae_loss``               the SAE's training loss
=========================  ==============================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CircuitscanError
from ._save import figure_title, save_figure
from .feature_figures import feature_figure_specs  # feature-level circuits (a `features graph` run)
from .rundata import CodesData, RunData, head_names, to_float

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GT_COLOR = "#e41a1c"  # ground-truth outline (the paper's red)
POS_COLOR = "#d95f02"  # positive examples
NEG_COLOR = "#7570b3"  # negative examples
BAR_OTHER = "#9ecae1"
PAIR_COLOR = "#e6550d"
METHOD_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"]
MAX_SCATTER_POINTS = 20_000
MAX_TSNE_POINTS = 2_000


# ---------------------------------------------------------------------------------------
# layout helpers
# ---------------------------------------------------------------------------------------
def cell_inches(n_rows: int, n_cols: int, *, max_w: float = 9.0, max_h: float = 11.0,
                lo: float = 0.14, hi: float = 0.5) -> float:
    """Side of one head's cell: as large as fits ``max_w`` x ``max_h``, within [lo, hi]."""
    return float(min(hi, max(lo, min(max_w / n_cols, max_h / n_rows))))


def _tick_step(n: int, cell_in: float, font_pt: float = 7.0) -> int:
    """Label every k-th row/column so that labels (about ``font_pt`` high) never overlap."""
    need = font_pt * 1.5 / 72.0
    return max(1, math.ceil(need / max(cell_in, 1e-6)))


def _layer_head_ticks(ax: Axes, n_layers: int, n_heads: int, row_in: float, col_in: float | None = None) -> None:
    """Rows labelled L0, L1, ... and columns H0, H1, ..., thinned where they would overlap."""
    col_in = row_in if col_in is None else col_in
    fs = float(np.clip(min(row_in, col_in) * 72 * 0.45, 6, 9))
    ys = _tick_step(n_layers, row_in, fs)
    xs = _tick_step(n_heads, col_in, fs * 1.6)
    ax.set_yticks(range(0, n_layers, ys), [f"L{i}" for i in range(0, n_layers, ys)], fontsize=fs)
    ax.set_xticks(range(0, n_heads, xs), [f"H{i}" for i in range(0, n_heads, xs)], fontsize=fs)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")


def _flat_head_ticks(ax: Axes, run: RunData, axis: str, size_in: float) -> None:
    """Ticks for an axis of all heads in flat order: every name when few, else layer starts."""
    lay = run.layout
    n = lay.n_total
    fs = 6.5
    if n * fs * 1.4 / 72 <= size_in:  # every head name fits
        pos = list(range(n))
        labels = lay.names()
    else:
        step = _tick_step(lay.n_layers, size_in / lay.n_layers, fs)
        pos = [layer * lay.n_heads for layer in range(0, lay.n_layers, step)]
        labels = [f"L{layer}H0" for layer in range(0, lay.n_layers, step)]
    if axis == "x":
        ax.set_xticks(pos, labels, fontsize=fs, rotation=90)
    else:
        ax.set_yticks(pos, labels, fontsize=fs)


def _new_figure(w: float, h: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _short(v: float) -> str:
    if not math.isfinite(v):
        return ""
    if float(v).is_integer() and abs(v) < 1e5:
        return str(int(v))
    return f"{v:.2g}"


def _method_color(i: int) -> str:
    return METHOD_COLORS[i % len(METHOD_COLORS)]


def _nice_method(name: str) -> str:
    if name == "sae-codes-pairs":
        return "sae-codes-pairs (head scores from head pairs)"
    return name


def _wrap(text: str, width_in: float, font_pt: float) -> str:
    """Break ``text`` into lines that fit ``width_in`` inches at ``font_pt`` points."""
    import textwrap

    chars = max(20, int(width_in * 72 / (font_pt * 0.58)))
    return "\n".join(textwrap.wrap(text, chars)) if len(text) > chars else text


def _titles(fig: Figure, ax: Axes | None, title: str, sub: str = "") -> None:
    """The figure's title on top and, under it, a smaller grey line of context."""
    w = fig.get_figwidth()
    fig.suptitle(_wrap(title, w - 0.3, 11), fontsize=11, fontweight="bold")
    if ax is not None and sub:
        width = ax.get_position().width * w
        ax.set_title(_wrap(sub, max(width, 0.6 * w), 8), fontsize=8, color="#555555")


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise CircuitscanError(what)


# ---------------------------------------------------------------------------------------
# Fig. 8: per-head heat map
# ---------------------------------------------------------------------------------------
def score_heatmap(run: RunData, method: str) -> Figure:
    """Layers x heads, shaded by the method's per-head value; ground-truth heads outlined."""
    from matplotlib.patches import Rectangle

    _require(method in run.methods, f"no method {method!r} in the run (it has {', '.join(run.methods)})")
    lay = run.layout
    ms = run.methods[method]
    values, label = ms.display_values()
    grid = values.reshape(lay.n_layers, lay.n_heads)
    cell = cell_inches(lay.n_layers, lay.n_heads)
    fig = _new_figure(max(5.0, lay.n_heads * cell + 2.2), max(3.4, lay.n_layers * cell + 1.5))
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    finite = grid[np.isfinite(grid)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1.0
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal",
                   interpolation="nearest")
    _layer_head_ticks(ax, lay.n_layers, lay.n_heads, cell)
    if cell * 72 >= 15 and lay.n_total <= 1200:
        fs = float(np.clip(cell * 72 * 0.32, 5, 8))
        for (layer, head), v in np.ndenumerate(grid):
            if math.isfinite(v):
                dark = (v - vmin) / (vmax - vmin) > 0.6
                ax.text(head, layer, _short(float(v)), ha="center", va="center", fontsize=fs,
                        color="white" if dark else "#222222")
    gt = run.gt_mask
    n_gt = 0
    if gt is not None:
        lw = float(np.clip(cell * 5, 1.0, 2.5))
        for i in np.flatnonzero(gt):
            layer, head = divmod(int(i), lay.n_heads)
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=GT_COLOR, lw=lw))
            n_gt += 1
    fig.colorbar(im, ax=ax, label=label, shrink=min(1.0, max(0.4, 4.0 / max(lay.n_layers * cell, 1e-6))))
    sub = f"{lay.n_layers} layers × {lay.n_heads} heads"
    if gt is not None:
        sub += f"; red outline: ground truth {run.ground_truth_name} ({n_gt} heads)"
    _titles(fig, ax, f"{method}: {label} per head", sub)
    return fig


# ---------------------------------------------------------------------------------------
# Fig. 29: unique positive - unique negative codes
# ---------------------------------------------------------------------------------------
def unique_code_counts(codes: CodesData) -> tuple[np.ndarray, np.ndarray]:
    """Per head: codes seen only on positives, codes seen only on negatives (counted examples)."""
    keep = codes.count_mask
    pos = codes.codes[keep & codes.labels]
    neg = codes.codes[keep & ~codes.labels]
    n_heads = codes.codes.shape[1]
    n_codes = max(codes.n_codes, int(codes.codes.max()) + 1 if codes.codes.size else 1)

    def presence(c: np.ndarray) -> np.ndarray:
        p = np.zeros((n_heads, n_codes), dtype=bool)
        if c.size:
            p[np.broadcast_to(np.arange(n_heads), c.shape).ravel(), c.ravel()] = True
        return p

    p, q = presence(pos), presence(neg)
    return (p & ~q).sum(1), (q & ~p).sum(1)


def unique_code_difference(run: RunData, *, zoom: int = 30) -> Figure:
    """Bars of |P_i minus N_i| - |N_i minus P_i| per head, sorted, coloured by ground truth.

    When the names of all heads do not fit under the bars, a second panel zooms in on
    the ``zoom`` heads with the largest difference and names them.
    """
    from matplotlib.patches import Patch

    codes = run.codes
    _require(codes is not None, f"{str(run.path)!r} has no codes.safetensors")
    up, un = unique_code_counts(codes)
    diff = up.astype(np.int64) - un.astype(np.int64)
    n = diff.size
    order = np.lexsort((np.arange(n), -diff))
    gt = run.gt_mask
    colors = np.array([GT_COLOR if gt is not None and gt[i] else BAR_OTHER for i in order])
    names = head_names(run.layout, order)
    fits = n * 6.5 * 1.5 / 72 <= 14.0  # every name fits under its bar in a figure <= ~16 in wide
    if fits:
        fig = _new_figure(float(np.clip(n * 6.5 * 1.5 / 72 + 2.0, 6.0, 16.0)), 4.2)
        ax = fig.add_subplot()
        axes = [ax]
    else:
        fig = _new_figure(15.0, 4.4)
        ax, zax = fig.subplots(1, 2, width_ratios=[2.2, 1])
        axes = [ax, zax]
    ax.bar(np.arange(n), diff[order], color=colors, width=0.85 if fits else 1.0, edgecolor="none")
    ax.set_xlim(-0.7, n - 0.3)
    if fits:
        ax.set_xticks(range(n), names, rotation=90, fontsize=6.5)
        ax.set_xlabel("head, sorted by difference")
    else:
        step = max(1, n // 10)
        ax.set_xticks(range(0, n, step), [str(i + 1) for i in range(0, n, step)], fontsize=7)
        ax.set_xlabel(f"rank of the head by difference (all {n} heads)")
        k = min(zoom, n)
        zax.bar(np.arange(k), diff[order[:k]], color=colors[:k], width=0.8, edgecolor="none")
        zax.set_xticks(range(k), names[:k], rotation=90, fontsize=6.5)
        zax.set_xlim(-0.7, k - 0.3)
        zax.set_xlabel(f"the {k} heads with the largest difference")
        zax.set_title(f"top {k}, named", fontsize=8, color="#555555")
    for a in axes:
        a.axhline(0, color="#444444", lw=0.6)
        a.set_ylabel("unique positive − unique negative codes")
    if gt is not None:
        ax.legend(handles=[Patch(color=GT_COLOR, label=f"in ground truth {run.ground_truth_name}"),
                           Patch(color=BAR_OTHER, label="not in ground truth")], fontsize=8, loc="upper right")
    n_counted = int(codes.count_mask.sum())
    _titles(fig, ax, "Codes unique to positives minus codes unique to negatives, per head",
            f"{n} heads; codes counted on {n_counted} examples")
    return fig


# ---------------------------------------------------------------------------------------
# Fig. 9: ROC curves
# ---------------------------------------------------------------------------------------
def roc_methods(run: RunData) -> dict[str, dict[str, Any]]:
    gt = run.metrics.get("ground_truth") or {}
    out = {}
    for name, m in gt.items():
        roc = (m or {}).get("roc") or {}
        if isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list) and roc["fpr"]:
            out[name] = m
    return out


def roc_curves(run: RunData) -> Figure:
    """ROC over heads of every method with a ground-truth evaluation; AUCs in the legend."""
    methods = roc_methods(run)
    _require(bool(methods), f"{str(run.path)!r} has no ROC points in metrics.json 'ground_truth'")
    fig = _new_figure(6.4, 5.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8, label="chance (AUC 0.500)")
    gt_names = set()
    styles = ["-", "--", "-.", ":"]
    n = len(methods)
    for i, (name, m) in enumerate(methods.items()):
        fpr = [to_float(v) for v in m["roc"]["fpr"]]
        tpr = [to_float(v) for v in m["roc"]["tpr"]]
        auc = to_float(m.get("auc"))
        # earlier curves wider and in varied dash styles, so coinciding curves all stay visible
        ax.plot(fpr, tpr, color=_method_color(i), lw=1.4 + 1.6 * (n - 1 - i) / max(n - 1, 1),
                ls=styles[i % len(styles)], label=f"{_nice_method(name)}  AUC {auc:.3f}")
        gt_names.add(str(m.get("ground_truth", "")))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (heads outside the ground truth)")
    ax.set_ylabel("true-positive rate (ground-truth heads)")
    _titles(fig, ax, f"ROC over heads vs {', '.join(sorted(gt_names))}", f"{n} method{'s' if n != 1 else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    return fig


# ---------------------------------------------------------------------------------------
# Fig. 5: faithfulness
# ---------------------------------------------------------------------------------------
def _as_list(v: Any, n: int) -> np.ndarray | None:
    if isinstance(v, list) and len(v) == n:
        return np.array([to_float(x) for x in v])
    if isinstance(v, int | float) and not isinstance(v, bool):
        return np.full(n, float(v))
    return None


def faithfulness_curves(run: RunData) -> Figure:
    """Faithfulness vs circuit size per method, with mean +- std of random circuits as bands.

    Random baselines that several methods share (same sizes, same values) are drawn once,
    in grey; a baseline of one method alone is drawn in that method's colour.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    faith = run.metrics.get("faithfulness") or {}
    curves = faith.get("curves") or {}
    _require(bool(curves), f"{str(run.path)!r} has no faithfulness curves (run `circuitscan evaluate`)")
    fig = _new_figure(7.2 if len(curves) <= 4 else 9.0, 4.8)
    ax = fig.add_subplot()
    n = len(curves)
    baselines: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, list[int]]] = []
    for i, (name, c) in enumerate(curves.items()):
        xs = c.get("sizes") or []
        ys = c.get("values") or []
        if not xs or len(xs) != len(ys):
            continue
        x = np.array([to_float(v) for v in xs])
        y = np.array([to_float(v) for v in ys])
        # earlier curves wider and dashed differently, so coinciding curves all stay visible
        ax.plot(x, y, color=_method_color(i), lw=1.4 + 1.6 * (n - 1 - i) / max(n - 1, 1),
                ls=["-", "--", "-.", ":"][i % 4], marker="o", ms=3, label=_nice_method(name), zorder=3)
        mean = _as_list(c.get("random_mean"), len(x))
        std = _as_list(c.get("random_std"), len(x))
        if mean is None:
            continue
        for bx, bm, bs, owners in baselines:
            same_std = (bs is None and std is None) or (
                bs is not None and std is not None and np.allclose(bs, std, equal_nan=True))
            if bx.shape == x.shape and np.allclose(bx, x) and np.allclose(bm, mean, equal_nan=True) and same_std:
                owners.append(i)
                break
        else:
            baselines.append((x, mean, std, [i]))
    handles, _ = ax.get_legend_handles_labels()
    for bx, bm, bs, owners in baselines:
        color = "#777777" if len(owners) > 1 else _method_color(owners[0])
        ax.plot(bx, bm, color=color, lw=1.0, ls="--", zorder=2)
        if bs is not None:
            ax.fill_between(bx, bm - bs, bm + bs, color=color, alpha=0.18, lw=0, zorder=1)
    if baselines:
        shared = len(baselines) == 1 and len(baselines[0][3]) > 1
        what = "random circuits (shared)" if shared else "random circuits"
        color = "#777777" if shared else "#555555"
        handles += [Line2D([], [], color=color, ls="--", lw=1.0, label=f"{what}, mean"),
                    Patch(color=color, alpha=0.25, label=f"{what}, ±1 std")]
    ax.axhline(1.0, color="#333333", lw=0.8, ls=":")
    ax.axhline(0.0, color="#999999", lw=0.8, ls=":")
    ax.annotate("full model", xy=(0.01, 1.0), xycoords=("axes fraction", "data"), ha="left", va="bottom",
                fontsize=7, color="#333333")
    metric = faith.get("metric", "metric")
    ablation = faith.get("ablation", "")
    ax.set_xlabel("circuit size (heads, added in score order)")
    ax.set_ylabel(f"faithfulness of {metric}: (m(C) − m(∅)) / (m(M) − m(∅))", fontsize=8)
    _titles(fig, ax, f"Faithfulness of {metric}", f"{ablation} ablation" if ablation else "")
    ax.grid(alpha=0.3)
    if len(handles) > 6:
        fig.legend(handles=handles, fontsize=7.5, loc="outside right upper")
    else:
        ax.legend(handles=handles, fontsize=7.5, loc="lower right")
    return fig


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
        return links[:limit], False, f"top {min(limit, len(links))} head pairs by U"
    return [], False, ""


def circuit_diagram(run: RunData, method: str) -> Figure:
    """Layers as rows (layer 0 on top), heads as nodes shaded by score, the circuit emphasised."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

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

    # links under the nodes
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
    handles = [
        Line2D([], [], marker="o", ls="", mfc=cmap(0.8), mec="#111111", mew=1.6, ms=8, label="in predicted circuit"),
        Line2D([], [], marker="o", ls="", mfc=(*cmap(0.3)[:3], 0.45), mec="#aaaaaa", ms=8, label="not selected"),
    ]
    if gt is not None:
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec=GT_COLOR, ms=10,
                              label=f"ground truth {run.ground_truth_name}"))
    fig.legend(handles=handles, fontsize=7.5, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig


# ---------------------------------------------------------------------------------------
# Fig. 28: head-pair matrix
# ---------------------------------------------------------------------------------------
def gt_pair_matrix(gt: np.ndarray) -> np.ndarray:
    """2 where both heads are in the ground truth, 1 where one is, 0 where neither."""
    g = gt.astype(np.int64)
    return g[:, None] + g[None, :]


def pair_matrix(run: RunData, method: str) -> Figure:
    """The method's head x head matrix U beside the ground-truth pair matrix."""
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
    fig.colorbar(im, ax=axes[0], label="distinct code pairs seen only on positives (U)", shrink=0.8)
    axes[0].set_title(f"{method}: U[h1, h2]", fontsize=9)
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


# ---------------------------------------------------------------------------------------
# Fig. 12-14, 31: SAE features (need activations.safetensors)
# ---------------------------------------------------------------------------------------
def pca_2d(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points projected on the top two principal components, their explained-variance ratios)."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(0)
    cov = Xc.T @ Xc
    evals, evecs = np.linalg.eigh(cov)
    top = np.argsort(evals)[::-1][:2]
    total = float(evals.clip(min=0).sum())
    ratio = evals[top].clip(min=0) / total if total > 0 else np.zeros(len(top))
    proj = Xc @ evecs[:, top]
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
        ratio = np.pad(ratio, (0, 2 - ratio.size))
    return proj, ratio


def _require_features(run: RunData) -> np.ndarray:
    z = run.features
    _require(z is not None, f"{str(run.path)!r} has no activations.safetensors (run discover with "
             "--save-activations) or no sae.safetensors")
    return z


def _scatter_by_label(ax: Axes, pts: np.ndarray, labels: np.ndarray, s: float, *, seed: int = 0) -> None:
    """Positives and negatives in one scatter, drawn in random order so neither hides the other."""
    from matplotlib.lines import Line2D

    order = np.random.default_rng(seed).permutation(len(labels))
    colors = np.where(labels[order], POS_COLOR, NEG_COLOR)
    ax.scatter(pts[order, 0], pts[order, 1], s=s, c=colors, alpha=0.55, lw=0, rasterized=True)
    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=POS_COLOR, label=f"positive ({int(labels.sum())})"),
                       Line2D([], [], marker="o", ls="", color=NEG_COLOR, label=f"negative ({int((~labels).sum())})")],
              fontsize=7.5, loc="best")


def feature_projection(run: RunData, how: str = "pca", *, seed: int = 0) -> Figure:
    """SAE feature activations of every (example, head), projected to 2-D; by label and by head."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if how not in ("pca", "tsne"):
        raise CircuitscanError(f"projection must be 'pca' or 'tsne', got {how!r}")
    z = _require_features(run)
    _, labels = run.activations
    E, Hn, F = z.shape
    X = z.reshape(E * Hn, F)
    lab = np.repeat(labels, Hn)
    head = np.tile(np.arange(Hn), E)
    rng = np.random.default_rng(seed)
    limit = MAX_TSNE_POINTS if how == "tsne" else MAX_SCATTER_POINTS
    take = np.sort(rng.choice(X.shape[0], size=limit, replace=False)) if X.shape[0] > limit else np.arange(X.shape[0])
    if how == "pca":
        pts, ratio = pca_2d(X)
        pts = pts[take]
        xl, yl = f"PC1 ({ratio[0]:.0%} of variance)", f"PC2 ({ratio[1]:.0%} of variance)"
        name = "PCA"
    else:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        n = take.size
        Xs = X[take].astype(np.float64)
        if Xs.shape[1] > 50:  # the usual first step: PCA to 50 dimensions
            Xs = Xs - Xs.mean(0)
            _, _, vt = np.linalg.svd(Xs, full_matrices=False)
            Xs = Xs @ vt[:50].T
        # one OpenMP thread: on a shared machine, more threads make t-SNE many times slower
        with threadpool_limits(limits=1, user_api="openmp"):
            pts = TSNE(n_components=2, init="pca", random_state=seed,
                       perplexity=float(min(30.0, max(2.0, (n - 1) / 3)))).fit_transform(Xs)
        xl, yl, name = "t-SNE 1", "t-SNE 2", "t-SNE"
    lab, head = lab[take], head[take]
    fig = _new_figure(11.0, 4.9)
    a1, a2 = fig.subplots(1, 2)
    s = float(np.clip(6000 / max(take.size, 1), 2.0, 20.0))
    _scatter_by_label(a1, pts, lab, s)
    a1.set_title("coloured by example: positive / negative", fontsize=9)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    norm = Normalize(0, max(Hn - 1, 1))
    a2.scatter(pts[:, 0], pts[:, 1], s=s, c=head, cmap=cmap, norm=norm, alpha=0.6, lw=0, rasterized=True)
    a2.set_title("coloured by head", fontsize=9)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=a2, label="head (flat index, layer by layer)")
    lay = run.layout
    step = _tick_step(lay.n_layers, 4.0 / lay.n_layers, 7)
    ticks = [layer * lay.n_heads for layer in range(0, lay.n_layers, step)]
    cb.set_ticks(ticks, labels=[f"L{t // lay.n_heads}H0" for t in ticks])
    cb.ax.tick_params(labelsize=7)
    for ax in (a1, a2):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    shown = f"{take.size} of {X.shape[0]}" if take.size < X.shape[0] else f"all {X.shape[0]}"
    _titles(fig, None, f"SAE feature activations ({F} features), {name}: {shown} (example, head) points")
    return fig


def head_projections(run: RunData, method: str, k: int = 4) -> Figure:
    """PCA of each top head's SAE features across examples, coloured positive / negative."""
    z = _require_features(run)
    _require(method in run.methods, f"no method {method!r} in the run")
    _, labels = run.activations
    top = run.methods[method].ranking()[: max(1, min(k, run.layout.n_total))]
    cols = min(4, top.size)
    rows = math.ceil(top.size / cols)
    fig = _new_figure(3.0 * cols + 0.6, 2.9 * rows + 0.7)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for r, (ax, h) in enumerate(zip(axes, top, strict=False), 1):
        X = z[:, int(h), :]
        name = run.layout.head(int(h)).name
        if not np.any(X.std(0) > 0):
            ax.text(0.5, 0.5, "no variation across examples", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8)
            pts, ratio = np.zeros((X.shape[0], 2)), np.zeros(2)
        else:
            pts, ratio = pca_2d(X)
        _scatter_by_label(ax, pts, labels, 12)
        ax.set_title(f"{name} (rank {r})", fontsize=9)
        ax.set_xlabel(f"PC1 ({ratio[0]:.0%})", fontsize=8)
        ax.set_ylabel(f"PC2 ({ratio[1]:.0%})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[top.size:]:
        ax.set_visible(False)
    _titles(fig, None, f"PCA of SAE features at the top {top.size} heads of {method}")
    return fig


def top_code_of_head(codes: CodesData, head: int, n_features: int) -> int | None:
    """The most common code on counted positives at ``head`` that is a real feature (ties: lowest)."""
    m = codes.count_mask & codes.labels
    c = codes.codes[m, head]
    c = c[(c >= 0) & (c < n_features)]
    if c.size == 0:
        return None
    counts = np.bincount(c, minlength=n_features)
    return int(np.argmax(counts))


def top_code_histograms(run: RunData, method: str, k: int = 3) -> Figure:
    """For each top head, histograms of its most common positive code's activation (pos vs neg)."""
    z = _require_features(run)
    codes = run.codes
    _require(codes is not None, f"{str(run.path)!r} has no codes.safetensors")
    _require(method in run.methods, f"no method {method!r} in the run")
    _, labels = run.activations
    n_features = z.shape[2]
    top = run.methods[method].ranking()[: max(1, min(k, run.layout.n_total))]
    fig = _new_figure(3.4 * top.size + 0.4, 3.3)
    axes = np.atleast_1d(fig.subplots(1, top.size, squeeze=False)).ravel()
    for r, (ax, h) in enumerate(zip(axes, top, strict=False), 1):
        name = run.layout.head(int(h)).name
        c = top_code_of_head(codes, int(h), n_features)
        if c is None:
            ax.text(0.5, 0.5, "no feature fires\non positives", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{name} (rank {r})", fontsize=9)
            ax.set_xlabel("activation")
            ax.set_ylabel("examples")
            continue
        a = z[:, int(h), c]
        edges = np.histogram_bin_edges(a, bins=20)
        if edges[0] == edges[-1]:
            edges = np.linspace(edges[0] - 0.5, edges[0] + 0.5, 21)
        ax.hist(a[~labels], bins=edges, color=NEG_COLOR, alpha=0.6, label=f"negative ({int((~labels).sum())})")
        ax.hist(a[labels], bins=edges, color=POS_COLOR, alpha=0.6, label=f"positive ({int(labels.sum())})")
        ax.set_title(f"{name} (rank {r}): feature {c}", fontsize=9)
        ax.set_xlabel(f"activation of feature {c}", fontsize=8)
        ax.set_ylabel("examples", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    _titles(fig, None, f"Activations of the most common positive code at the top {top.size} heads of {method}")
    return fig


def sae_loss(run: RunData) -> Figure:
    losses = (run.metrics.get("sae") or {}).get("losses")
    _require(isinstance(losses, list) and len(losses) > 0, f"{str(run.path)!r} has no SAE losses in metrics.json")
    y = np.array([to_float(v) for v in losses])
    fig = _new_figure(6.4, 3.0)
    ax = fig.add_subplot()
    ax.plot(np.arange(1, y.size + 1), y, color="#1f77b4", lw=1.4)
    if np.all(y[np.isfinite(y)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("epoch (one full-batch step)")
    ax.set_ylabel("loss (reconstruction + λ·L1)")
    _titles(fig, ax, "SAE training loss", f"{y.size} full-batch steps; final {y[-1]:.4g}")
    ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------
# saving and the list the report shows
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureFile:
    """One saved figure: its slug, report section, title, caption and files."""

    name: str
    section: str
    title: str
    caption: str
    png: Path
    svg: Path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "figure"


# (section, slug, builder, caption) for every figure the run supports
FigureSpec = tuple[str, str, Callable[[], "Figure"], str]


def figure_specs(run: RunData, *, tsne: bool = False) -> list[FigureSpec]:
    """The figures this run directory has data for, in report order."""
    specs: list[FigureSpec] = []
    gt = run.ground_truth_name
    for m in run.methods:
        specs.append(("scores", f"heatmap-{slug(m)}", lambda m=m: score_heatmap(run, m),
                      f"{m}: per-head values, layers as rows" + (f"; ground truth {gt} outlined in red (paper Fig. 8)."
                                                               if gt else " (paper Fig. 8).")))
    if run.codes is not None:
        specs.append(("scores", "unique-code-difference", lambda: unique_code_difference(run),
                      "Per head, codes seen only on positives minus codes seen only on negatives (counted "
                      "examples), sorted; ground-truth heads in red (paper Fig. 29)."))
    if roc_methods(run):
        specs.append(("roc", "roc", lambda: roc_curves(run),
                      "ROC curves over heads for every method evaluated against the ground truth; every AUC "
                      "here is over heads (paper Fig. 9)."))
    if (run.metrics.get("faithfulness") or {}).get("curves"):
        specs.append(("faithfulness", "faithfulness", lambda: faithfulness_curves(run),
                      "Faithfulness as heads are added in score order, with the mean ± 1 std of random "
                      "circuits of the same size as bands (paper Fig. 5)."))
    for m in run.methods:
        if run.circuit(m) is not None:
            specs.append(("circuit", f"circuit-{slug(m)}", lambda m=m: circuit_diagram(run, m),
                          f"{m}: the predicted circuit; layers as rows (layer 0 on top), nodes shaded by value, "
                          "circuit heads outlined in black, ground truth ringed in red (paper Fig. 10)."))
    for m, ms in run.methods.items():
        if ms.pairs is not None:
            specs.append(("pairs", f"pairs-{slug(m)}", lambda m=m: pair_matrix(run, m),
                          f"{m}: head-pair matrix U beside the ground-truth pair matrix (paper Fig. 28)."))
    if run.features is not None:
        primary = run.primary_method
        specs.append(("features", "features-pca", lambda: feature_projection(run, "pca"),
                      "PCA of the SAE feature activations of every head on every example (paper Fig. 12)."))
        if tsne:
            specs.append(("features", "features-tsne", lambda: feature_projection(run, "tsne"),
                          f"t-SNE of the SAE feature activations (a random subset of at most {MAX_TSNE_POINTS} "
                          "points; paper Fig. 12)."))
        specs.append(("features", "head-pca", lambda: head_projections(run, primary),
                      f"PCA of the SAE features at the top heads of {primary} (paper Fig. 14)."))
        if run.codes is not None:
            specs.append(("features", "top-code-histograms", lambda: top_code_histograms(run, primary),
                          f"Activation of the most common positive code at the top heads of {primary}, "
                          "positives vs negatives (paper Fig. 31)."))
    if (run.metrics.get("sae") or {}).get("losses"):
        specs.append(("sae", "sae-loss", lambda: sae_loss(run), "The SAE's training loss per full-batch step."))
    specs.extend(feature_figure_specs(run))
    return specs


def build_figures(run: RunData, directory: Path, *, tsne: bool = False) -> list[FigureFile]:
    """Draw and save every figure the run supports into ``directory``."""
    out = []
    for section, name, build, caption in figure_specs(run, tsne=tsne):
        fig = build()
        png, svg = save_figure(fig, directory, name)
        out.append(FigureFile(name=name, section=section, title=figure_title(fig), caption=caption, png=png, svg=svg))
    return out
