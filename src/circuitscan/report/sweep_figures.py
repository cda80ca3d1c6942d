"""Figures and a one-page report for a sweep directory (``circuitscan sweep``).

Read only from the sweep's files (``sweep.json``, ``summary.parquet``, ``thresholds.parquet``,
``trials.parquet``); written to ``DIR/figures/`` (PNG and SVG) and ``DIR/report.html``.
What is drawn follows the grid, after the paper's robustness figures:

====================  ===============================================================
figure                drawn when
====================  ===============================================================
``heatmap-*``         the grid has ``features`` and ``l1``: mean AUC per cell (Fig. 3)
``line-<axis>``       a numeric axis (examples, train_examples, edge_k_frac,
                      easy_negatives, contrastive...): mean +- std over seeds (Figs. 20,
                      23, 24, 32, 35)
``bars-<axis>``       a categorical or yes/no axis (negative, softmax, normalise):
                      mean +- std (Figs. 19, 21, 22)
``f1-vs-theta``       a ground truth is known: F1 against theta, log scale (Fig. 4)
``search-*``          an Optuna search: AUC per trial and best so far; the sampled
                      points coloured by AUC (Table 7, Fig. 36)
====================  ===============================================================

Without a ground truth the y-axis is the rank correlation with the base run instead of
an AUC, and says so.
"""

from __future__ import annotations

import base64
import html
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import CircuitscanError
from ..rundir import atomic_path, read_json
from ._save import save_figure
from .html import CSS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURES_DIR = "figures"
REPORT = "report.html"
LABELS = {
    "node_auc": "node ROC AUC (over heads)",
    "head_auc_from_pairs": "head ROC AUC from head pairs (the paper's 'edge-level')",
    "node_rank_corr_vs_base": "rank correlation of node scores with the base run",
    "pairs_rank_corr_vs_base": "rank correlation of pair-based head scores with the base run",
}


def _read(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.is_file() else None


def load_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """The sweep's spec and tables (``None`` for tables it does not have)."""
    d = Path(sweep_dir)
    if not (d / "sweep.json").is_file():
        raise CircuitscanError(f"{str(d)!r} is not a sweep directory (no sweep.json)")
    data = {"dir": d, "spec": read_json(d / "sweep.json")}
    for name in ("results", "summary", "thresholds", "trials", "baselines"):
        data[name] = _read(d / f"{name}.parquet")
    if data["summary"] is None and data["trials"] is None:
        raise CircuitscanError(f"{str(d)!r} has no finished tables yet; finish the sweep with --resume first")
    return data


def _metrics(summary) -> list[str]:
    return [m for m in ("node_auc", "head_auc_from_pairs", "node_rank_corr_vs_base")
            if f"{m}_mean" in summary.columns and summary[f"{m}_mean"].notna().any()][:2]


def _new(w: float, h: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _is_numeric(values) -> bool:
    import pandas as pd

    s = pd.Series(values).dropna()
    return len(s) > 0 and pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _others(summary, axes: list[str], axis: str) -> list[str]:
    return [a for a in axes if a != axis and summary[a].nunique(dropna=False) > 1]


def heatmap(summary, metric: str, x: str = "l1", y: str = "features") -> Figure:
    """Mean ``metric`` over seeds (and over any other axes) on the ``y`` x ``x`` grid (Fig. 3)."""
    import numpy as np

    g = summary.groupby([y, x])[f"{metric}_mean"].mean().unstack(x)
    fig = _new(1.2 + 0.9 * g.shape[1], 1.2 + 0.6 * g.shape[0])
    ax = fig.add_subplot()
    vals = g.to_numpy(dtype=float)
    im = ax.imshow(vals, cmap="viridis", aspect="auto", origin="lower",
                   vmin=np.nanmin(vals) if np.isfinite(vals).any() else 0, vmax=np.nanmax(vals) if np.isfinite(vals).any() else 1)
    ax.set_xticks(range(g.shape[1]), [f"{v:g}" for v in g.columns])
    ax.set_yticks(range(g.shape[0]), [str(v) for v in g.index])
    ax.set_xlabel("lambda (l1)" if x == "l1" else x)
    ax.set_ylabel("SAE features" if y == "features" else y)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            v = vals[i, j]
            txt = "err" if not math.isfinite(v) else f"{v:.3f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if math.isfinite(v) and v < np.nanmean(vals) else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(f"{LABELS.get(metric, metric)}\nmean over seeds", fontsize=10)
    return fig


def _baseline_lines(ax, baselines, metric: str) -> None:
    """A dashed horizontal line per baseline method that has ``metric`` (sweep --baselines)."""
    if baselines is None or metric not in baselines.columns:
        return
    for _, r in baselines.iterrows():
        if r[metric] == r[metric]:
            ax.axhline(float(r[metric]), ls="--", lw=1, color="grey")
            ax.annotate(str(r["method"]), (1.0, float(r[metric])), xycoords=("axes fraction", "data"),
                        fontsize=7, color="grey", ha="right", va="bottom")


def line(summary, axis: str, metrics: list[str], axes: list[str], baselines=None) -> Figure:
    """Mean +- std against a numeric axis: one panel per metric, one line per combination of the
    others; baselines (if any) as dashed lines."""
    fig = _new(0.6 + 4.6 * len(metrics), 3.6)
    others = _others(summary, axes, axis)
    groups = list(summary.groupby(others, dropna=False)) if others else [((), summary)]
    note = ""
    if len(groups) > 6:  # too many to tell apart: average over the other axes
        groups = [((), summary.groupby(axis, as_index=False).mean(numeric_only=True))]
        note, others = f" (averaged over {', '.join(others)})", []
    xs_all = summary[axis].dropna().to_numpy(dtype=float)
    for k, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        for key, g in groups:
            g = g.sort_values(axis)
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{a}={v}" for a, v in zip(others, key, strict=False)) or None
            ax.errorbar(g[axis].to_numpy(dtype=float), g[f"{m}_mean"].to_numpy(dtype=float),
                        yerr=g[f"{m}_std"].fillna(0).to_numpy(dtype=float), marker="o", capsize=3, label=label)
        if len(xs_all) and xs_all.min() > 0 and xs_all.max() / xs_all.min() >= 20:
            ax.set_xscale("log")
        _baseline_lines(ax, baselines, m)
        ax.set_xlabel(axis)
        ax.set_ylabel(LABELS.get(m, m), fontsize=8)
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=7)
        ax.set_title(m + note, fontsize=9)
    fig.suptitle(f"against {axis}: mean +- std over seeds", fontsize=10)
    return fig


def bars(summary, axis: str, metrics: list[str]) -> Figure:
    """Mean +- std of each metric per value of a categorical axis."""
    import numpy as np

    g = summary.groupby(axis, dropna=False, sort=False)
    cats = [str(k) for k in g.groups]
    fig = _new(1.6 + 1.1 * len(cats) * max(1, len(metrics)) / 1.5, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        means = g[f"{m}_mean"].mean().to_numpy(dtype=float)
        stds = g[f"{m}_std"].mean().fillna(0).to_numpy(dtype=float)
        ax.bar(np.arange(len(cats)) + i * width - 0.4 + width / 2, means, width, yerr=stds, capsize=3,
               label=LABELS.get(m, m))
    ax.set_xticks(range(len(cats)), cats)
    ax.set_xlabel(axis)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"per {axis}: mean +- std over seeds", fontsize=10)
    return fig


def f1_vs_theta(thresholds, axes: list[str], max_lines: int = 8) -> Figure:
    """F1 against theta (log scale), mean over seeds, one line per point (Fig. 4)."""
    fig = _new(6.2, 3.8)
    ax = fig.add_subplot()
    t = thresholds[(thresholds["level"] == "node")]
    grid = t[t["role"] == "grid"]
    src = grid if len(grid) else t
    points = sorted(src["point"].dropna().unique().tolist()) if len(grid) else []
    if not points or len(points) > max_lines:
        mean = src.groupby("theta")["f1"].agg(["mean", "std"]).reset_index()
        ax.plot(mean["theta"], mean["mean"], marker=".", label="mean over all rows")
        ax.fill_between(mean["theta"], mean["mean"] - mean["std"].fillna(0), mean["mean"] + mean["std"].fillna(0),
                        alpha=0.2)
    else:
        for p in points:
            g = src[src["point"] == p].groupby("theta")["f1"].mean().reset_index()
            row = src[src["point"] == p].iloc[0]
            label = ", ".join(f"{a}={row[a]}" for a in axes) or "base"
            ax.plot(g["theta"], g["f1"], marker=".", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("threshold theta on softmaxed node scores")
    ax.set_ylabel("F1 (precision/recall)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("node-level F1 against theta (mean over seeds)", fontsize=10)
    return fig


def search_history(trials) -> Figure:
    fig = _new(6.0, 3.6)
    ax = fig.add_subplot()
    ok = trials[trials["state"] == "COMPLETE"]
    ax.scatter(ok["trial"], ok["node_auc"], s=14, label="trial")
    ax.step(trials["trial"], trials["best_so_far"], where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(LABELS["node_auc"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Optuna search: node AUC per trial", fontsize=10)
    return fig


def search_scatter(trials, x: str, y: str) -> Figure:
    fig = _new(5.4, 4.0)
    ax = fig.add_subplot()
    ok = trials[trials["state"] == "COMPLETE"]
    sc = ax.scatter(ok[x], ok[y], c=ok["node_auc"], cmap="viridis", s=24)
    best = ok.loc[ok["node_auc"].idxmax()] if len(ok) else None
    if best is not None:
        ax.scatter([best[x]], [best[y]], marker="*", s=180, color="C3", label=f"best: AUC {best['node_auc']:.3f}")
        ax.legend(fontsize=7)
    for a, setter in ((x, ax.set_xscale), (y, ax.set_yscale)):
        v = ok[a].to_numpy(dtype=float)
        if len(v) and v.min() > 0 and v.max() / v.min() >= 10:
            setter("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.colorbar(sc, ax=ax, shrink=0.8, label="node AUC")
    ax.set_title("Optuna search: sampled points", fontsize=10)
    return fig


def figure_specs(data: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(name, builder, caption) for every figure this sweep has data for."""
    spec = data["spec"]
    specs: list[tuple[str, Any, str]] = []
    summary, thresholds, trials = data["summary"], data["thresholds"], data["trials"]
    if summary is not None and len(summary):
        axes = list(spec.get("grid", {}))
        metrics = _metrics(summary)
        if metrics:
            if {"features", "l1"} <= set(axes):
                for m in metrics:
                    specs.append((f"heatmap-{m}", lambda m=m: heatmap(summary, m),
                                  f"{LABELS.get(m, m)} over SAE features x lambda, mean over seeds (paper Fig. 3)."))
            for a in axes:
                if a in ("features", "l1") and {"features", "l1"} <= set(axes):
                    continue
                if summary[a].nunique(dropna=False) < 2:
                    continue
                if _is_numeric(summary[a]):
                    specs.append((f"line-{a}", lambda a=a: line(summary, a, metrics, axes, data.get("baselines")),
                                  f"{', '.join(metrics)} against {a}; error bars: std over seeds."))
                else:
                    specs.append((f"bars-{a}", lambda a=a: bars(summary, a, metrics),
                                  f"{', '.join(metrics)} per {a}; error bars: std over seeds."))
    if thresholds is not None and len(thresholds):
        axes = list(spec.get("grid", {}))
        specs.append(("f1-vs-theta", lambda: f1_vs_theta(thresholds, axes),
                      "Node-level F1 against the threshold theta on softmaxed scores (paper Fig. 4); the paper's "
                      "best thresholds lie between 1e-7 and 1e-15 (Table 7)."))
    if trials is not None and len(trials):
        specs.append(("search-history", lambda: search_history(trials), "Node AUC of each trial and the best so far."))
        space = list((spec.get("search") or {}).get("space", {}))
        if len(space) >= 2:
            specs.append(("search-points", lambda: search_scatter(trials, space[0], space[1]),
                          f"Sampled {space[0]} and {space[1]}, coloured by node AUC (paper Table 7, Fig. 36)."))
    return specs


def write_sweep_figures(data: dict[str, Any], directory: Path) -> list[tuple[str, Path, str]]:
    out = []
    for name, build, caption in figure_specs(data):
        fig = build()
        png, _ = save_figure(fig, directory, name)
        out.append((name, png, caption))
    return out


def _table_html(df, cols: list[str], limit: int = 200) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for _, r in df.head(limit).iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                txt = "" if v != v else f"{v:.4g}"
            else:
                txt = "" if v is None else str(v)
            cells.append(f"<td>{html.escape(txt)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(data: dict[str, Any], figures: list[tuple[str, Path, str]]) -> str:
    spec = data["spec"]
    gt = spec.get("ground_truth")
    title = f"circuitscan sweep: {spec['model']} / {spec['task']}"
    parts = [f"<header><h1>{html.escape(title)}</h1><p>circuitscan {__version__}"
             + (f"; named sweep {html.escape(str(spec['named']))}" if spec.get("named") else "") + "</p></header><main>"]
    grid = ", ".join(f"{k} = {', '.join(map(str, v))}" for k, v in spec.get("grid", {}).items()) or "(base point only)"
    parts.append("<section><h2>Sweep</h2>"
                 f"<p>grid: {html.escape(grid)}; seeds: {html.escape(str(spec['seeds']))}; "
                 f"{spec['examples']} prompts per side; level {html.escape(spec['level'])}.</p>")
    if gt:
        parts.append(f"<p class='note'>Ground truth: {html.escape(str(gt['name']))} ({len(gt['heads'])} heads). Every "
                     "AUC is over heads; 'head AUC from pairs' is the paper's 'edge-level AUC'.</p>")
    else:
        parts.append("<p class='note'>No ground truth is known for this task on this model: AUC and F1 cannot be "
                     "computed. Shown instead: stability against the base configuration (rank correlation of head "
                     "scores, top-k overlap), circuit size (heads above uniform) and train time.</p>")
    if data.get("search_summary"):
        parts.append(f"<p><b>{html.escape(data['search_summary'])}</b></p>")
    parts.append("</section><section><h2>Figures</h2>")
    for name, png, caption in figures:
        b64 = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(caption)} <a href='{FIGURES_DIR}/{html.escape(name)}.svg'>SVG</a>"
                     "</figcaption></figure>")
    parts.append("</section>")
    summary, trials = data["summary"], data["trials"]
    if summary is not None and len(summary):
        axes = list(spec.get("grid", {}))
        cols = axes + [c for c in summary.columns if c.endswith("_mean") and any(
            c.startswith(m) for m in ("node_auc", "head_auc_from_pairs", "node_best_f1", "node_best_theta",
                                      "node_circuit_size", "node_rank_corr", "node_size_above", "train_s"))]
        cols += [c.replace("_mean", "_std") for c in cols if c.endswith("_mean") and c.replace("_mean", "_std")
                 in summary.columns][:2] + ["n_ok", "n_error"]
        parts.append("<section><h2>Summary (mean over seeds)</h2>" + _table_html(summary, cols) + "</section>")
    base = data.get("baselines")
    if base is not None and len(base):
        cols = [c for c in base.columns if c != "n_examples" and base[c].notna().any()]
        parts.append("<section><h2>Baselines (each method once, its defaults, the base prompts)</h2>"
                     + _table_html(base, cols) + "</section>")
    if trials is not None and len(trials):
        cols = [c for c in trials.columns if c in ("trial", "state", "node_auc", "best_so_far")
                or c in (spec.get("search") or {}).get("space", {})]
        parts.append("<section><h2>Trials</h2>" + _table_html(trials, cols) + "</section>")
    parts.append("<footer>Tables: results, summary and thresholds (or trials) as Parquet and CSV beside this page."
                 "</footer></main>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>" + html.escape(title)
            + f"</title><style>{CSS}</style></head><body>" + "".join(parts) + "</body></html>\n")


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """Draw the sweep's figures into ``DIR/figures/`` and write ``DIR/report.html``; return its path."""
    data = load_sweep(sweep_dir)
    d = data["dir"]
    if (d / "search.json").is_file():
        data["search_summary"] = read_json(d / "search.json").get("message")
    staging = Path(tempfile.mkdtemp(prefix=f".{FIGURES_DIR}.partial-", dir=d))
    try:
        figures = write_sweep_figures(data, staging)
        final = d / FIGURES_DIR
        page = render(data, figures)  # reads the PNGs from staging, before the move
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{FIGURES_DIR}.old-", dir=d))
            os.replace(final, old / FIGURES_DIR)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, final)
        out = d / REPORT
        with atomic_path(out) as tmp:
            tmp.write_text(page, encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
