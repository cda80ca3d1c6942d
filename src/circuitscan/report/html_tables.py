"""The tables of the HTML report, each read from the run directory (:class:`RunData`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .html_cells import _e, _is_number, cell, fmt, num_cell, table
from .rundata import RunData, to_float


def summary_cards(run: RunData) -> str:
    cfg = run.config
    model = cfg.get("model") or {}
    task = cfg.get("task") or {}
    cards = [
        ("model", f"{model.get('spec', '?')}"),
        ("heads", f"{run.layout.n_layers} layers × {run.layout.n_heads} = {run.layout.n_total}"),
        ("task", f"{task.get('name', '?')} ({task.get('n_positive', '?')} + {task.get('n_negative', '?')} prompts)"),
        ("ground truth", run.ground_truth_name or "none"),
    ]
    gt = run.metrics.get("ground_truth") or {}
    if len(gt) <= 3:  # more methods: the table below says it better
        for name, m in gt.items():
            cards.append((f"{name}: AUC over heads", fmt((m or {}).get("auc"))))
    timings = run.metrics.get("timings_s") or {}
    if timings:
        total = sum(to_float(v) for v in timings.values() if math.isfinite(to_float(v)))
        cards.append(("total time", f"{total:.2f} s"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in cards
    ) + "</div>"


def ground_truth_table(run: RunData) -> str:
    gt = run.metrics.get("ground_truth") or {}
    if not gt:
        return ""
    headers = ["method", "ground truth", "heads", "in truth", "AUC over heads", "best F1", "precision",
               "recall", "circuit size", "best threshold", "TPR/TNR harmonic mean"]
    rows = []
    for name, m in gt.items():
        m = m or {}
        k = f"metrics.ground_truth.{name}"
        rows.append([
            cell(name), cell(m.get("ground_truth")), cell(m.get("n_heads"), f"{k}.n_heads"),
            cell(m.get("n_true"), f"{k}.n_true"), cell(m.get("auc"), f"{k}.auc"),
            cell(m.get("best_f1"), f"{k}.best_f1"), cell(m.get("precision"), f"{k}.precision"),
            cell(m.get("recall"), f"{k}.recall"), cell(m.get("circuit_size"), f"{k}.circuit_size"),
            cell(m.get("best_threshold"), f"{k}.best_threshold"),
            cell(m.get("tpr_tnr_hmean"), f"{k}.tpr_tnr_hmean"),
        ])
    out = table(headers, rows, cls="metrics")
    at = [(n, m["at_threshold"]) for n, m in gt.items() if isinstance((m or {}).get("at_threshold"), dict)]
    if at:
        keys = sorted({k for _, a in at for k in a})
        out += table(["method", *keys], [[cell(n), *[cell(a.get(k), f"metrics.ground_truth.{n}.at_threshold.{k}")
                                                     for k in keys]] for n, a in at],
                     caption="at the given threshold")
    return out


def edge_ground_truth_table(run: RunData) -> str:
    egt = run.metrics.get("edge_ground_truth") or {}
    if not egt:
        return ""
    rows = [[cell(n), cell((m or {}).get("auc"), f"metrics.edge_ground_truth.{n}.auc"),
             cell((m or {}).get("n_edges"), f"metrics.edge_ground_truth.{n}.n_edges"),
             cell((m or {}).get("n_true"), f"metrics.edge_ground_truth.{n}.n_true")] for n, m in egt.items()]
    return "<h3>Edges against the ground truth</h3>" + table(["method", "AUC over edges", "edges", "in truth"], rows)


def circuits_table(run: RunData) -> str:
    circuits = run.metrics.get("circuits") or {}
    if not circuits:
        return ""
    gt = run.gt_mask
    gt_names = set(run.ground_truth["heads"]) if run.ground_truth else set()
    rows = []
    for name, c in circuits.items():
        c = c or {}
        heads = [str(h) for h in c.get("heads") or []]
        shown = ", ".join(heads)
        rows.append([
            cell(name), cell(c.get("rule")), cell(c.get("threshold"), f"metrics.circuits.{name}.threshold"),
            cell(c.get("size"), f"metrics.circuits.{name}.size"),
            cell(sum(h in gt_names for h in heads), f"circuits.{name}.in_ground_truth") if gt is not None else cell("—"),
            f'<td class="heads">{_e(shown) if shown else "—"}</td>',
        ])
    return table(["method", "rule", "threshold θ", "heads", "of them in truth", "circuit"], rows)


def top_heads_table(run: RunData, k: int = 10) -> str:
    gt = run.gt_mask
    blocks = []
    for name, ms in run.methods.items():
        values, label = ms.display_values()
        counts = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
        order = ms.ranking()[: min(k, run.layout.n_total)]
        rows = []
        for r, i in enumerate(order, 1):
            hname = run.layout.head(int(i)).name
            in_gt = bool(gt[i]) if gt is not None else None
            rows.append([
                cell(r, f"scores.{name}.rank.{hname}"),
                f'<td class="{"gt" if in_gt else ""}">{_e(hname)}</td>',
                cell(float(ms.scores[i]), f"scores.{name}.scores.{hname}"),
                *([cell(int(values[i]) if counts else float(values[i]), f"scores.{name}.{label}.{hname}")]
                  if label != "score" else []),
                cell("yes" if in_gt else "no") if gt is not None else cell("—"),
            ])
        headers = ["rank", "head", "score", *([label] if label != "score" else []), "in ground truth"]
        blocks.append(f"<h3>{_e(name)}: top {len(order)} heads</h3>" + table(headers, rows))
    return "".join(blocks)


def circuit_performance_table(run: RunData) -> str:
    cp = run.metrics.get("circuit_performance") or {}
    rows_in = cp.get("rows") or []
    if not rows_in:
        return ""
    metric_names: list[str] = []
    for r in rows_in:
        for part in ("metrics", "normalised"):
            for k in (r.get(part) or {}):
                label = k if part == "metrics" else f"{k} (normalised)"
                if label not in metric_names:
                    metric_names.append(label)
    rows = []
    for j, r in enumerate(rows_in):
        line = [cell(r.get("name")), cell(r.get("n_heads"), f"metrics.circuit_performance.rows.{j}.n_heads")]
        for label in metric_names:
            if label.endswith(" (normalised)"):
                k, part = label[: -len(" (normalised)")], "normalised"
            else:
                k, part = label, "metrics"
            v = (r.get(part) or {}).get(k)
            std = (r.get("std") or {}).get(k) if part == "metrics" else None
            key = f"metrics.circuit_performance.rows.{j}.{part}.{k}"
            if v is None:
                line.append(cell(None))
            elif std is not None and _is_number(std):
                line.append(f'<td class="num" data-key="{_e(key)}" data-value="{_e(v)}">{_e(fmt(v))} '
                            f"± {_e(fmt(std))}</td>")
            else:
                line.append(cell(v, key))
        rows.append(line)
    note = f"ablation: {cp.get('ablation', '?')}; rows of random circuits show mean ± std."
    return (f"<h3>Circuit performance</h3><p class=\"note\">{_e(note)}</p>"
            + table(["circuit", "heads", *metric_names], rows))


def faithfulness_table(run: RunData) -> str:
    f = run.metrics.get("faithfulness") or {}
    cpr, cmd = f.get("cpr") or {}, f.get("cmd") or {}
    names = list(dict.fromkeys([*cpr, *cmd]))
    if not names:
        return ""
    rows = [[cell(n), cell(cpr.get(n), f"metrics.faithfulness.cpr.{n}"), cell(cmd.get(n), f"metrics.faithfulness.cmd.{n}")]
            for n in names]
    return ("<h3>Area under the faithfulness curve</h3><p class=\"note\">CPR: circuit performance ratio "
            "(higher is better); CMD: circuit-model distance (lower is better).</p>"
            + table(["method", "CPR", "CMD"], rows))


COMPARISON_COLUMNS = ("method", "node_auc", "edge_auc", "head_auc_from_pairs", "cpr", "cmd", "best_f1_size",
                      "wall_time_s", "forward_passes", "backward_passes", "roc_source")
COMPARISON_LABELS = {
    "node_auc": "AUC over heads", "edge_auc": "AUC over edges", "head_auc_from_pairs": "AUC over heads from pairs",
    "best_f1_size": "best-F1 circuit size", "wall_time_s": "wall time (s)", "forward_passes": "forward passes",
    "backward_passes": "backward passes", "roc_source": "ROC from", "cpr": "CPR", "cmd": "CMD",
    "stopped_early": "stopped early",
}


def comparison_table(run: RunData) -> str:
    comp = run.metrics.get("comparison") or {}
    rows_in = comp.get("rows") or []
    if not rows_in:
        return ""
    cols = [c for c in COMPARISON_COLUMNS if any(c in r for r in rows_in)]
    cols += [c for r in rows_in for c in r if c not in cols]
    cols = list(dict.fromkeys(cols))
    rows = [[cell(r.get(c), f"metrics.comparison.rows.{j}.{c}") for c in cols] for j, r in enumerate(rows_in)]
    return table([COMPARISON_LABELS.get(c, c) for c in cols], rows)


def cost_table(run: RunData) -> str:
    rows = []
    for name, ms in run.methods.items():
        rows.append([cell(name), cell(ms.wall_time_s, f"scores.{name}.wall_time_s"),
                     cell(ms.forward_passes, f"scores.{name}.forward_passes"),
                     cell(ms.backward_passes, f"scores.{name}.backward_passes")])
    return "<h3>Cost per method</h3>" + table(["method", "wall time (s)", "forward passes", "backward passes"], rows)


def timings_table(run: RunData) -> str:
    t = run.metrics.get("timings_s") or {}
    if not t:
        return ""
    vals = {k: to_float(v) for k, v in t.items()}
    total = sum(v for v in vals.values() if math.isfinite(v))
    rows = [[cell(k), cell(t[k], f"metrics.timings_s.{k}"),
             cell(f"{100 * vals[k] / total:.1f}%" if total > 0 and math.isfinite(vals[k]) else "")]
            for k in t]
    rows.append(['<td>total</td>', num_cell(total, "metrics.timings_s.total"), "<td>100%</td>"])
    body = table(["stage", "seconds", "share"], rows).replace("<tr><td>total</td>", '<tr class="total"><td>total</td>')
    return body


def sae_table(run: RunData) -> str:
    s = run.metrics.get("sae") or {}
    cfg = run.config.get("sae") or {}
    rows = []
    for k in ("final_mse", "final_l0", "seconds"):
        if k in s:
            rows.append([cell(k), cell(s[k], f"metrics.sae.{k}")])
    if isinstance(s.get("train_indices"), list):
        rows.append([cell("training examples"), cell(len(s["train_indices"]), "metrics.sae.n_train")])
    for k, v in cfg.items():
        rows.append([cell(f"config: {k}"), cell(v, f"config.sae.{k}")])
    return table(["quantity", "value"], rows) if rows else ""


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        out.append((prefix, d))
    return out


def config_table(run: RunData) -> str:
    skip = {"argv"}
    items = []
    for k, v in run.config.items():
        if k in skip:
            continue
        if k == "ground_truth" and isinstance(v, dict):
            items += [(f"ground_truth.{kk}", vv) for kk, vv in v.items() if kk != "classes"]
            for cls, heads in (v.get("classes") or {}).items():
                items.append((f"ground_truth.classes.{cls}", heads))
            continue
        items += _flatten(v, k)
    rows = [[cell(k), cell(v, f"config.{k}")] for k, v in items]
    return table(["setting", "value"], rows)
