"""Figures and a page for feature-level circuits (``circuitscan features``).

* :func:`graph_figure` — the attribution graph: one column per site in forward order
  (the output last), kept features by |score| with the site's error and "other features"
  nodes below, node area by |score|, colour by whether the node supports the objective;
  the strongest edges, width by |weight|, colour by whether the source supports the
  objective through the target;
* :func:`accounting_figure` — per site, the shares of the absolute attribution carried by
  kept features, other features and the SAE error;
* :func:`validation_figure` — predicted (-score) vs measured change of the objective when
  each node is ablated;
* :func:`promoted_tokens_figure` — each kept feature's promoted and suppressed tokens;
* :func:`training_figure` — SAE training curves (an SAE directory);
* :func:`write_feature_report` — all of it into ``feature_figures/`` and ``features.html``
  of a ``features graph`` run directory; :func:`feature_figure_specs` gives the same
  figures to the main report (``circuitscan report``).

Everything is read from files; matplotlib is used through ``Figure`` objects only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..rundir import atomic_path
from ._save import save_figure
from .feature_page import _num, _read, page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIG_DIR = "feature_figures"
PAGE = "features.html"
SUPPORT = "#2166ac"
OPPOSE = "#b2182b"
GREY = "#8c8c8c"
MAX_EDGES = 60


def _supports(score: float, higher_is_better: bool) -> bool:
    return (score > 0) == bool(higher_is_better)


def _short(text: str, n: int = 10) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 1] + "…"


def graph_figure(graph: dict[str, Any], cards: dict[str, Any] | None = None, *, max_edges: int = MAX_EDGES) -> Figure:
    """The attribution graph (see the module docstring)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cards = cards or {}
    sites = list(graph["sites"])
    nodes = {n["id"]: n for n in graph["nodes"]}
    hib = bool(graph["objective"].get("higher_is_better", False))
    cols = [*sites, "output"]
    pos: dict[str, tuple[float, float]] = {}
    depth = 1
    for ci, site in enumerate(sites):
        feats = sorted((n for n in nodes.values() if n["site"] == site and n["kind"] == "feature"),
                       key=lambda n: -abs(_num(n["score"])))
        column = [n["id"] for n in feats] + [f"{site}/error", f"{site}/rest"]
        depth = max(depth, len(column))
        for ri, nid in enumerate(column):
            pos[nid] = (float(ci), -float(ri))
    pos["output"] = (float(len(sites)), -(depth - 1) / 2.0)
    scores = [abs(_num(n["score"])) for n in nodes.values() if n["kind"] != "output"]
    top = max([s for s in scores if math.isfinite(s)] + [1e-12])
    fig = Figure(figsize=(min(24.0, 2.0 + 1.9 * len(cols)), min(16.0, 1.6 + 0.55 * depth)))
    ax = fig.add_subplot(1, 1, 1)
    edges = [(s, d, _num(w)) for s, d, w in graph["edges"] if s in pos and d in pos and math.isfinite(_num(w))]
    edges = sorted(edges, key=lambda e: -abs(e[2]))[:max_edges]
    wmax = max([abs(w) for _, _, w in edges] + [1e-12])
    for s, d, w in edges:
        (x0, y0), (x1, y1) = pos[s], pos[d]
        frac = abs(w) / wmax
        ax.plot([x0, x1], [y0, y1], color=SUPPORT if _supports(w, hib) else OPPOSE, lw=0.4 + 4.0 * frac,
                alpha=0.15 + 0.6 * frac, zorder=1, solid_capstyle="round")
    for nid, (x, y) in pos.items():
        n = nodes.get(nid)
        if n is None:
            continue
        score = _num(n["score"])
        if n["kind"] == "output":
            ax.scatter([x], [y], s=500, marker="*", color="#444444", zorder=3)
            name = graph["objective"].get("name", "objective")
            ax.text(x, y - 0.45, f"{name}\n{score:.3g}", ha="center", va="top", fontsize=8)
            continue
        color = GREY if n["kind"] == "rest" else (SUPPORT if _supports(score, hib) else OPPOSE)
        marker = {"feature": "o", "error": "s", "rest": "D"}[n["kind"]]
        size = 30 + 600 * (abs(score) / top if math.isfinite(score) else 0.0)
        ax.scatter([x], [y], s=size, marker=marker, color=color, edgecolor="black", linewidth=0.5, zorder=3,
                   alpha=0.9 if n["kind"] == "feature" else 0.6)
        label = f"f{n['feature']}" if n["kind"] == "feature" else ("error" if n["kind"] == "error" else "other")
        card = cards.get(nid)
        if card and card.get("promoted"):
            label += f" ↑{_short(str(card['promoted'][0][0]))!s}"
        ax.text(x + 0.09, y + 0.12, f"{label} ({score:+.2g})", fontsize=6.5, va="bottom", ha="left", zorder=4)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(-0.4, len(cols) - 0.3)
    ax.set_ylim(-depth + 0.2, 0.9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    obj = graph["objective"]
    desc = str(obj.get("description", obj.get("name")))
    ax.set_title(f"Attribution graph of {obj.get('name')} = {_num(obj.get('value')):.3g}: {_short(desc, 90)}\n"
                 f"{graph.get('n_prompts', 1)} prompt(s); edges {graph['config'].get('edges')}, the strongest "
                 f"{len(edges)} shown; node label: feature, first promoted token, (score)", fontsize=9)
    handles = [
        Line2D([], [], marker="o", ls="", color=SUPPORT, label="feature supporting the objective"),
        Line2D([], [], marker="o", ls="", color=OPPOSE, label="feature opposing it"),
        Line2D([], [], marker="s", ls="", color=GREY, label="SAE error"),
        Line2D([], [], marker="D", ls="", color=GREY, label="all other features"),
        Line2D([], [], color=SUPPORT, lw=2, label="edge: the source supports the objective through the target"),
        Line2D([], [], color=OPPOSE, lw=2, label="edge: opposes it"),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=7, frameon=False, ncol=3, bbox_to_anchor=(0.0, -0.17))
    fig.subplots_adjust(bottom=0.14)
    return fig


def accounting_figure(graph: dict[str, Any]) -> Figure:
    """Per site: shares of the absolute attribution held by kept features, other features
    and the SAE error (signed totals cancel; see ``explained_fractions``)."""
    from matplotlib.figure import Figure

    sites = list(graph["sites"])
    parts = [("abs_kept", "kept features", SUPPORT), ("abs_rest", "other features", "#92c5de"),
             ("error", "SAE error", "#f4a582")]
    fig = Figure(figsize=(9.0, 1.4 + 0.35 * len(sites)))
    ax = fig.add_subplot(1, 1, 1)
    left = [0.0] * len(sites)
    for key, label, color in parts:
        vals = []
        for s in sites:
            t = graph["site_totals"][s]
            denom = _num(t.get("abs_features")) + abs(_num(t.get("error")))
            v = abs(_num(t.get(key))) / denom if math.isfinite(denom) and denom > 0 else 0.0
            vals.append(v if math.isfinite(v) else 0.0)
        ax.barh(range(len(sites)), vals, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_yticks(range(len(sites)))
    ax.set_yticklabels(sites)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the site's absolute attribution (sum of |node score|)")
    ax.set_title("How much of each site the graph keeps: kept features, the other features, the SAE error",
                 fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncol=3, loc="lower center", bbox_to_anchor=(0.5, -0.55 if len(sites) < 4 else -0.3))
    fig.tight_layout()
    return fig


def validation_figure(ablations: dict[str, Any]) -> Figure | None:
    """Predicted vs measured change of the objective for single-node ablations."""
    from matplotlib.figure import Figure

    rows = (ablations.get("single_nodes") or {}).get("nodes") or []
    if not rows:
        return None
    pred = [_num(r["predicted_delta"]) for r in rows]
    meas = [_num(r["delta"]) for r in rows]
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(pred, meas, color=SUPPORT, zorder=3)
    for r, p, m in zip(rows, pred, meas, strict=True):
        ax.annotate(r["node"], (p, m), fontsize=6, xytext=(3, 3), textcoords="offset points")
    finite = [v for v in pred + meas if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(finite), max(finite)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color=GREY, lw=1, ls="--", label="measured = predicted")
    s = (ablations.get("single_nodes") or {}).get("summary") or {}
    ax.set_xlabel("predicted change of the objective (-node score)")
    ax.set_ylabel("measured change when the node is zero-ablated")
    ax.set_title(f"Ablation check: Pearson {_num(s.get('pearson')):.2f}, same sign {_num(s.get('same_sign')):.0%}",
                 fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return fig


def promoted_tokens_figure(graph: dict[str, Any], cards: dict[str, Any], *, max_rows: int = 60, k: int = 5) -> Figure | None:
    """A table: every kept feature with its score and the tokens it promotes / suppresses."""
    from matplotlib.figure import Figure

    sites = list(graph["sites"])
    feats = sorted((n for n in graph["nodes"] if n["kind"] == "feature" and n["id"] in cards),
                   key=lambda n: (sites.index(n["site"]), -abs(_num(n["score"]))))[:max_rows]
    if not feats:
        return None
    hib = bool(graph["objective"].get("higher_is_better", False))
    fig = Figure(figsize=(13.5, 0.9 + 0.24 * (len(feats) + 1)))
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")

    def toks(items: list[list[Any]]) -> str:
        return "  ".join(_short(repr(str(t))[1:-1], 12) for t, _ in items[:k])

    y = 1.0
    step = 1.0 / (len(feats) + 1)
    for x, head in ((0.0, "node"), (0.13, "score"), (0.21, "promoted through the unembedding"),
                    (0.61, "suppressed")):
        ax.text(x, y, head, fontsize=8, fontweight="bold", va="top", transform=ax.transAxes)
    for n in feats:
        y -= step
        c = cards[n["id"]]
        score = _num(n["score"])
        ax.text(0.0, y, n["id"], fontsize=7.5, va="top", family="monospace", transform=ax.transAxes)
        ax.text(0.13, y, f"{score:+.3g}", fontsize=7.5, va="top", transform=ax.transAxes,
                color=SUPPORT if _supports(score, hib) else OPPOSE)
        ax.text(0.21, y, toks(c.get("promoted", [])), fontsize=7.5, va="top", family="monospace", transform=ax.transAxes)
        ax.text(0.61, y, toks(c.get("suppressed", [])), fontsize=7.5, va="top", family="monospace",
                transform=ax.transAxes)
    ax.set_title("Kept features: the tokens their atoms promote and suppress through the unembedding "
                 "(score blue = supports the objective)", fontsize=9)
    return fig


def training_figure(curves: dict[str, dict[str, list[float]]]) -> Figure:
    """FVU, L0 and dead fraction against training tokens, one line per site."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8))
    keys = [("fvu", "fraction of variance unexplained"), ("l0", "L0 (active features per token)"),
            ("dead_fraction", "dead fraction")]
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for site, c in curves.items():
        for ax, (k, _) in zip(axes, keys, strict=True):
            ys = [_num(v) for v in c.get(k, [])]
            ax.plot(c.get("tokens", list(range(len(ys))))[: len(ys)], ys, label=site)
    for ax, (k, label) in zip(axes, keys, strict=True):
        ax.set_xlabel("training tokens")
        ax.set_title(label, fontsize=10)
        if k == "fvu":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- files


def _figures(run_dir: Path) -> list[tuple[str, Any, str]]:
    graph = _read(run_dir / "feature_graph.json")
    cards = _read(run_dir / "features.json") if (run_dir / "features.json").is_file() else {}
    abl = _read(run_dir / "ablations.json") if (run_dir / "ablations.json").is_file() else {}
    out = [
        ("feature-graph", lambda: graph_figure(graph, cards),
         "The attribution graph: sites in forward order, kept features by |score| (circles), each site's SAE "
         "error (square) and all its other features (diamond); blue nodes support the objective, red oppose it; "
         "the strongest edges, width by |weight|."),
        ("feature-accounting", lambda: accounting_figure(graph),
         "Each site's absolute attribution (sum of |node score|) split into the kept features, all other features "
         "and the SAE error."),
    ]
    if cards and any(n["kind"] == "feature" for n in graph["nodes"]):
        out.append(("feature-tokens", lambda: promoted_tokens_figure(graph, cards),
                    "Each kept feature's score and the tokens its atom promotes and suppresses through the unembedding "
                    "(weights only; the ablation tables give the effect in this forward pass)."))
    if (abl.get("single_nodes") or {}).get("nodes"):
        out.append(("feature-validation", lambda: validation_figure(abl),
                    "Each strong node zero-ablated on its own: the measured change of the objective against the "
                    "graph's first-order prediction (-score)."))
    return out


def feature_figure_specs(run: Any) -> list[tuple[str, str, Any, str]]:
    """Figure specs ``(section, name, build, caption)`` for the main report; empty unless the
    run directory holds a feature graph."""
    path = Path(run.path)
    if not (path / "feature_graph.json").is_file():
        return []
    return [("features", name, build, caption) for name, build, caption in _figures(path)]


def write_training_figure(sae_dir: str | Path) -> Path:
    """``figures/training.png`` (and .svg) in an SAE directory."""
    sae_dir = Path(sae_dir)
    curves = _read(sae_dir / "training.json")
    png, _ = save_figure(training_figure(curves), sae_dir / "figures", "training")
    return png


def write_feature_report(run_dir: str | Path) -> Path:
    """Write ``feature_figures/*.png|svg`` and ``features.html`` into a features graph run."""
    run_dir = Path(run_dir)
    figs = []
    for name, build, caption in _figures(run_dir):
        fig = build()
        if fig is None:
            continue
        png, _ = save_figure(fig, run_dir / FIG_DIR, name)
        figs.append((name, png, caption))
    text = page(run_dir, figs)
    out = run_dir / PAGE
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
