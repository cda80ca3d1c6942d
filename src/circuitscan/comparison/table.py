"""The comparison table: one row per method (AUCs, CPR/CMD, cost), as ``metrics.json``
stores it and as plain text."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..types import Scores


def comparison_rows(scores: list[Scores], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    faith = metrics.get("faithfulness") or {}
    for s in scores:
        gm = metrics["ground_truth"].get(s.method)
        em = metrics["edge_ground_truth"].get(s.method)
        sweep = (gm or {}).get("sweep")
        pairs = s.method == "sae-codes-pairs"
        node_auc = None
        if gm is not None and not pairs:
            node_auc = sweep["auc"] if sweep else gm["auc"]
        n_thr = len(s.stats.get("sweep") or [])
        rows.append({
            "method": s.method,
            "node_auc": node_auc,
            "edge_auc": None if em is None else em["auc"],
            "head_auc_from_pairs": gm["auc"] if pairs and gm is not None else None,
            "cpr": (faith.get("cpr") or {}).get(s.method),
            "cmd": (faith.get("cmd") or {}).get(s.method),
            "best_f1_size": None if gm is None else gm["circuit_size"],
            "wall_time_s": s.wall_time_s,
            "forward_passes": s.forward_passes,
            "backward_passes": s.backward_passes,
            "roc_source": f"threshold sweep ({n_thr} values)" if n_thr else "ranking",
            "stopped_early": bool(s.stats.get("stopped_early", False)),
        })
    return rows


def comparison_block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``comparison`` block of ``metrics.json``: the rows, their columns and what they mean."""
    return {
        "rows": rows,
        "columns": list(rows[0]) if rows else [],
        "notes": {
            "node_auc": "ROC AUC over heads; ACDC/SP: from the sweep of their threshold, others: from the ranking",
            "edge_auc": "ROC AUC over head-level edges (input/heads -> heads/logits), where the method scores edges",
            "head_auc_from_pairs": "the paper's 'edge-level AUC' of sae-codes: an AUC over HEADS",
            "passes": "forward/backward passes are batched model calls",
        },
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a plain-text table."""
    cols = [("method", "method", 16), ("node_auc", "node AUC", 8), ("edge_auc", "edge AUC", 8),
            ("head_auc_from_pairs", "AUC pairs", 9), ("cpr", "CPR", 7), ("cmd", "CMD", 7),
            ("best_f1_size", "F1 size", 7), ("wall_time_s", "time (s)", 9), ("forward_passes", "fwd", 6),
            ("backward_passes", "bwd", 5), ("roc_source", "ROC from", 22)]

    def cell(v: Any, w: int) -> str:
        if v is None:
            text = "-"
        elif isinstance(v, bool):
            text = "yes" if v else "no"
        elif isinstance(v, float):
            text = "nan" if not math.isfinite(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        else:
            text = str(v)
        return text.rjust(w) if not isinstance(v, str) else text.ljust(w)

    lines = ["  ".join(label.ljust(w) if key in ("method", "roc_source") else label.rjust(w) for key, label, w in cols)]
    for r in rows:
        line = "  ".join(cell(r.get(key), w) for key, _, w in cols)
        if r.get("stopped_early"):
            line += "  (stopped at the time limit)"
        lines.append(line)
    return "\n".join(lines)
