"""Figures of the SAE: projections of its feature activations (Fig. 12, 14), top-code histograms (Fig. 31), training loss."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CircuitscanError
from ._figure_style import (
    NEG_COLOR,
    POS_COLOR,
    _new_figure,
    _require,
    _tick_step,
    _titles,
)
from .rundata import CodesData, RunData, to_float

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


MAX_SCATTER_POINTS = 20_000
MAX_TSNE_POINTS = 2_000

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
