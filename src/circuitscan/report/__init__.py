"""Figures and a self-contained HTML report, read only from a run directory.

``write_report(run_dir)`` draws every figure the run has data for into
``run_dir/figures/`` (PNG and SVG) and writes ``run_dir/report.html`` with the PNGs
embedded, so the page opens from disk with no network. matplotlib is imported only
when a report is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..rundir import atomic_path
from .figures import build_figures
from .html import render
from .rundata import load_run
from .sweep_figures import write_sweep_report

__all__ = ["write_report"]

FIGURES_DIR = "figures"
REPORT = "report.html"


def write_report(run_dir: str | Path, *, tsne: bool = False) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/figures/*.png|svg``; return the report's path.

    Args:
        run_dir: a run directory written by ``discover`` or ``compare``.
        tsne: also draw a t-SNE of the SAE features (slower; needs saved activations).

    Returns:
        The path of ``report.html``.
    """
    if (Path(run_dir) / "sweep.json").is_file():  # a sweep directory (circuitscan sweep): its own page

        return write_sweep_report(run_dir)

    run = load_run(run_dir)
    path = run.path
    staging = Path(tempfile.mkdtemp(prefix=f".{FIGURES_DIR}.partial-", dir=path))
    try:
        figures = build_figures(run, staging, tsne=tsne)
        page = render(run, figures)
        final = path / FIGURES_DIR
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{FIGURES_DIR}.old-", dir=path))
            os.replace(final, old / FIGURES_DIR)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        out = path / REPORT
        with atomic_path(out) as tmp:
            tmp.write_text(page, encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
