"""Saving a matplotlib figure as PNG + SVG, shared by every figure module of the report.

It lives apart from :mod:`.figures` so that :mod:`.feature_figures` and
:mod:`.sweep_figures` can save their figures without importing :mod:`.figures`, which
itself pulls in :mod:`.feature_figures` (that import circle was issue 15).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..rundir import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_DPI = 110


def figure_title(fig: Figure) -> str:
    """The figure's title (its suptitle, else the first axes title)."""
    sup = fig.get_suptitle()
    if sup:
        return " ".join(sup.split("\n"))  # undo figures._wrap
    for ax in fig.axes:
        if ax.get_title():
            return ax.get_title()
    return ""


def save_figure(fig: Figure, directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.png`` and ``name.svg`` into ``directory`` atomically.

    The layout (constrained) is solved once, while drawing the PNG, and then frozen for
    the SVG: solving it measures every text, which is most of a figure's cost.
    """
    import matplotlib

    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{name}.png", directory / f"{name}.svg"
    title = figure_title(fig)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=PNG_DPI, metadata={"Title": title, "Software": None})
    fig.set_layout_engine("none")
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}), atomic_path(svg) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Title": title, "Date": None})
    return png, svg
