"""The page of a ``features graph`` run (``features.html``): the objective, how faithful the
graph is, the figures, and tables of sites, nodes and ablations, all read from the run's files."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from ..rundir import read_json


def _read(path: Path) -> Any:
    return read_json(path, "a features graph run")


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _e(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    x = _num(v)
    if not math.isfinite(x):
        return _e(v)
    return f"{x:.4g}"


def _tokens(items: list[list[Any]], n: int = 6) -> str:
    return ", ".join(f"<code>{_e(repr(t))}</code> {_num(v):+.2f}" for t, v in items[:n])


def page(run_dir: Path, figs: list[tuple[str, Path, str]]) -> str:
    """``features.html`` of a features graph run, with the figures ``(name, png, caption)`` embedded."""
    graph = _read(run_dir / "feature_graph.json")
    cards = _read(run_dir / "features.json") if (run_dir / "features.json").is_file() else {}
    abl = _read(run_dir / "ablations.json") if (run_dir / "ablations.json").is_file() else {}
    config = _read(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    metrics = _read(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    parts = [*_head(graph, config), *_faithfulness(abl), *_figure_blocks(figs), *_sites(graph), *_nodes(graph, cards),
             *_ablations(abl), *_head_view(metrics), "</body></html>"]
    return "".join(parts)


def _head(graph: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The page's head, title, prompt or task, and objective."""
    obj = graph["objective"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>circuitscan feature graph</title><style>",
             "body{font:14px/1.45 system-ui,sans-serif;margin:24px;max-width:1300px;color:#1d232a}"
             "table{border-collapse:collapse;margin:8px 0 18px;font-size:12.5px}"
             "td,th{border:1px solid #d9dee3;padding:3px 7px;vertical-align:top;text-align:left}"
             "th{background:#e9eef3}td.n{text-align:right;font-variant-numeric:tabular-nums}"
             "img{max-width:100%;border:1px solid #d9dee3}p.note{color:#5a6570;font-size:13px}"
             "code{background:#f3f5f7;padding:0 3px}",
             "</style></head><body>"]
    model = (config.get("model") or {}).get("spec", "?")
    parts.append(f"<h1>Feature attribution graph — {_e(model)}</h1>")
    if config.get("prompt"):
        p = config["prompt"]
        parts.append(f"<p>Prompt: <code>{_e(p.get('text'))}</code> → target <code>{_e(repr(p.get('target_text')))}</code></p>")
    if config.get("task"):
        t = config["task"]
        parts.append(f"<p>Task <b>{_e(t.get('name'))}</b>: graph over {_e(t.get('graph_prompts'))} positive prompts of "
                     f"{_e(t.get('seq_len'))} tokens.</p>")
    parts.append(f"<p>Objective: {_e(obj.get('description'))} = <b>{_fmt(obj.get('value'))}</b> "
                 f"({'higher' if obj.get('higher_is_better') else 'lower'} is better). Node score = f·∂m/∂f summed "
                 "over positions (≈ m(clean) − m(feature off)); edges with the double-counting correction "
                 f"(<code>{_e(graph['config'].get('edges'))}</code>). {graph.get('forward_passes')} forward and "
                 f"{graph.get('backward_passes')} backward passes, {_num(graph.get('seconds')):.1f} s.</p>")
    return parts


def _faithfulness(abl: dict[str, Any]) -> list[str]:
    """Does the graph explain the forward pass, and how well do single-node ablations agree."""
    parts: list[str] = []
    faith = abl.get("faithfulness") or {}
    if faith:
        parts.append("<h2>Does the graph explain the forward pass?</h2><table><tr><th>run</th><th>objective</th></tr>")
        for k in ("clean", "graph_with_errors", "graph_features_only", "empty"):
            parts.append(f"<tr><td>{_e(k.replace('_', ' '))}</td><td class='n'>{_fmt(faith.get('objective_' + k))}</td></tr>")
        parts.append(f"</table><p>Faithfulness (m(graph) − m(empty)) / (m(clean) − m(empty)): with SAE errors kept "
                     f"<b>{_fmt(faith.get('faithfulness_with_errors'))}</b>, kept features alone "
                     f"<b>{_fmt(faith.get('faithfulness_features_only'))}</b>. Empty = every feature and error "
                     "zero-ablated at every site (each site outputs its decoder bias at the positions its SAE covers).</p>")
    s = (abl.get("single_nodes") or {}).get("summary") or {}
    if s.get("n"):
        parts.append(f"<p>Single-node ablations ({s['n']} strongest nodes): Pearson correlation of predicted vs measured "
                     f"change {_fmt(s.get('pearson'))}, same sign {_fmt(s.get('same_sign'))}, median measured/predicted "
                     f"{_fmt(s.get('median_ratio'))}.</p>")
    return parts


def _figure_blocks(figs: list[tuple[str, Path, str]]) -> list[str]:
    """The figures, embedded as PNG data."""
    parts: list[str] = []
    for name, png, caption in figs:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{data}'><figcaption><p class='note'>"
                     f"{_e(caption)}</p></figcaption></figure>")
    return parts


def _sites(graph: dict[str, Any]) -> list[str]:
    """Per site, the signed and absolute sums of node scores."""
    parts: list[str] = []
    parts.append("<h2>Sites</h2><p class='note'>Signed sums of node scores (they cancel; a residual site feeding the "
                 "final norm totals about zero) and the sums of |score|.</p><table><tr><th>site</th><th>total</th>"
                 "<th>kept features</th><th>other features</th><th>SAE error</th><th>bias</th><th>uncovered</th><th>|kept|</th>"
                 "<th>|other|</th><th>active features</th></tr>")
    for site in graph["sites"]:
        t = graph["site_totals"][site]
        parts.append(f"<tr><td>{_e(site)}</td>" + "".join(f"<td class='n'>{_fmt(t.get(k))}</td>" for k in
                     ("total", "kept", "rest", "error", "bias", "uncovered", "abs_kept", "abs_rest", "n_active_features"))
                     + "</tr>")
    parts.append("</table>")
    return parts


def _nodes(graph: dict[str, Any], cards: dict[str, Any]) -> list[str]:
    """Every node with its score and what its feature does."""
    parts: list[str] = []
    parts.append("<h2>Nodes and what they do</h2><p class='note'>Promoted / suppressed: tokens whose logits the "
                 "feature's atom raises / lowers most through the unembedding (weights only). Contexts: where the "
                 "feature fires most in the training corpus (the token in brackets).</p><table><tr><th>node</th>"
                 "<th>score</th><th>activation</th><th>pos</th><th>promoted</th><th>suppressed</th><th>top contexts</th>"
                 "<th>heads</th></tr>")
    nodes = sorted((n for n in graph["nodes"] if n["kind"] != "output"), key=lambda n: (graph["sites"].index(n["site"]), -abs(_num(n["score"]))))
    for n in nodes:
        c = cards.get(n["id"], {})
        ctx = "<br>".join(f"{_num(a):.2f}: …{_e(left)}[<b>{_e(tok)}</b>]{_e(right)}" for a, left, tok, right in c.get("contexts", []))
        heads = ""
        if n.get("heads"):
            hs = sorted(((k, v) for k, v in n["heads"].items() if k != "const"), key=lambda kv: -abs(kv[1]))[:3]
            heads = ", ".join(f"{_e(k)} {_num(v):+.2g}" for k, v in hs)
        parts.append(f"<tr><td>{_e(n['id'])}</td><td class='n'>{_fmt(n['score'])}</td><td class='n'>{_fmt(n.get('activation'))}</td>"
                     f"<td class='n'>{_e(n.get('position'))}</td><td>{_tokens(c.get('promoted', []))}</td>"
                     f"<td>{_tokens(c.get('suppressed', []))}</td><td>{ctx}</td><td>{heads}</td></tr>")
    parts.append("</table>")
    return parts


def _ablations(abl: dict[str, Any]) -> list[str]:
    """The strongest thread, the single-node ablations and the user's ablation."""
    parts: list[str] = []
    th = abl.get("thread") or {}
    if th.get("thread"):
        parts.append(f"<h2>The strongest thread, ablated</h2><p>{' → '.join(_e(t) for t in th['thread'])} → output. "
                     f"Objective {_fmt(th.get('objective_clean'))} → {_fmt(th.get('objective_ablated'))} (change "
                     f"{_fmt(th.get('delta'))}; the sum of the nodes' scores predicts {_fmt(th.get('naive_predicted_delta'))}"
                     f", which double counts). Tokens whose log-probability fell most: {_tokens(th.get('promoted_here', []))}; "
                     f"rose most: {_tokens(th.get('suppressed_here', []))}.</p>")
    rows = (abl.get("single_nodes") or {}).get("nodes") or []
    if rows:
        parts.append("<h2>Single-node ablations</h2><table><tr><th>node</th><th>predicted change</th><th>measured</th>"
                     "<th>target logit change</th><th>log-probs that fell most (promoted here)</th></tr>")
        for r in rows:
            parts.append(f"<tr><td>{_e(r['node'])}</td><td class='n'>{_fmt(r['predicted_delta'])}</td><td class='n'>"
                         f"{_fmt(r['delta'])}</td><td class='n'>{_fmt(r.get('target_logit_delta'))}</td>"
                         f"<td>{_tokens(r.get('promoted_here', []), 5)}</td></tr>")
        parts.append("</table>")
    if abl.get("user"):
        u = abl["user"]
        parts.append(f"<h2>Your ablation</h2><p><code>{_e(u.get('nodes'))}</code>: objective {_fmt(u.get('objective_clean'))} → "
                     f"{_fmt(u.get('objective_ablated'))}; log-probs that fell most: {_tokens(u.get('promoted_here', []))}.</p>")
    return parts


def _head_view(metrics: dict[str, Any]) -> list[str]:
    """The head-level view against the ground truth, when there is one."""
    parts: list[str] = []
    gt = metrics.get("ground_truth") or {}
    if gt:
        parts.append("<h2>Head-level view against the ground truth</h2><table><tr><th>method</th><th>ROC AUC over heads</th>"
                     "<th>best F1</th></tr>")
        for m, v in gt.items():
            parts.append(f"<tr><td>{_e(m)}</td><td class='n'>{_fmt(v.get('auc'))}</td><td class='n'>{_fmt(v.get('best_f1'))}</td></tr>")
        parts.append("</table>")
    return parts
