"""The report's figures, each a function from a :class:`RunData` to a matplotlib ``Figure``.

This module holds the list the report shows (:func:`figure_specs`) and saves it
(:func:`build_figures`); the figures live by subject in ``score_figures``,
``circuit_figures`` and ``sae_figures`` (shared style in ``_figure_style``) and are
re-exported here.

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

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._figure_style import GT_COLOR as GT_COLOR
from ._figure_style import cell_inches as cell_inches
from ._save import figure_title, save_figure
from .circuit_figures import _pair_links as _pair_links
from .circuit_figures import circuit_diagram, pair_matrix
from .circuit_figures import gt_pair_matrix as gt_pair_matrix
from .feature_figures import feature_figure_specs  # feature-level circuits (a `features graph` run)
from .rundata import RunData
from .sae_figures import (
    MAX_TSNE_POINTS,
    feature_projection,
    head_projections,
    sae_loss,
    top_code_histograms,
)
from .sae_figures import pca_2d as pca_2d
from .sae_figures import top_code_of_head as top_code_of_head
from .score_figures import (
    faithfulness_curves,
    roc_curves,
    roc_methods,
    score_heatmap,
    unique_code_difference,
)
from .score_figures import unique_code_counts as unique_code_counts

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
