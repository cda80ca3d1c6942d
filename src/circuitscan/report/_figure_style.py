"""What every report figure shares: the colours, cell sizes, tick thinning, titles."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CircuitscanError
from .rundata import RunData

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
