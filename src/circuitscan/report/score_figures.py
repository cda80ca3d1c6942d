"""Figures of per-head scores: the heat map (Fig. 8), unique-code difference (Fig. 29), ROC (Fig. 9), faithfulness (Fig. 5)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._figure_style import (
    BAR_OTHER,
    GT_COLOR,
    _layer_head_ticks,
    _method_color,
    _new_figure,
    _nice_method,
    _require,
    _short,
    _titles,
    cell_inches,
)
from .rundata import CodesData, RunData, head_names, to_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    sae = run.metrics.get("sae") if isinstance(run.metrics.get("sae"), dict) else {}
    members = sae.get("members") if isinstance(sae.get("members"), list) else []
    whose = ""
    if len(members) > 1 and isinstance(members[0], dict):  # codes.safetensors holds the first SAE's codes
        whose = f"the codes of the first of {len(members)} SAEs (seed {members[0].get('seed')}), "
    _titles(fig, ax, "Codes unique to positives minus codes unique to negatives, per head",
            f"{n} heads; {whose}counted on {n_counted} examples")
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
