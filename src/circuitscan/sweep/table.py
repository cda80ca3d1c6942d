"""The sweep's tables, rebuilt from the plan and the journal (pandas; Parquet and CSV).

* ``results``: one row per (point, seed), plus the reference rows (the base
  configuration per seed) that the stability columns compare against;
* ``summary``: one row per point, mean and sample standard deviation over seeds;
* ``thresholds``: F1, precision, recall and circuit size at every theta of
  :data:`~circuitscan.sweep.plan.THETAS`, per row and level (when a ground truth is known);
* ``baselines`` (with ``--baselines``): one row per baseline method on the base prompts.

Every AUC is over heads: ``node_auc`` from node scores, ``head_auc_from_pairs`` from the
head-pair scores (the paper's "edge-level AUC").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..rundir import atomic_path
from .baselines import baselines_table
from .plan import Plan

GT_METRICS = ("auc", "best_f1", "best_theta", "circuit_size", "precision", "recall", "tpr_tnr_hmean")
RESULT_FILES = ("results", "summary", "thresholds", "baselines")


def metric_columns(level: str, has_truth: bool) -> list[str]:
    cols: list[str] = []
    prefixes = ["node"] + (["pairs"] if level in ("edge", "both") else [])
    for p in prefixes:
        if has_truth:
            cols += ["node_auc" if p == "node" else "head_auc_from_pairs"]
            cols += [f"{p}_{m}" for m in GT_METRICS[1:]]
        cols += [f"{p}_size_above_uniform", f"{p}_rank_corr_vs_base", f"{p}_topk_overlap_vs_base"]
    if level in ("edge", "both"):
        cols += ["edge_k", "pairs_kept"]
    cols += ["train_s", "score_s", "unit_s", "final_mse", "final_l0", "n_train", "n_examples", "n_count"]
    return cols


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant."""
    import numpy as np
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k(scores: list[float], k: int) -> set[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return set(order[:k])


def topk_overlap(a: list[float], b: list[float], k: int) -> float:
    k = min(k, len(a))
    return len(top_k(a, k) & top_k(b, k)) / k


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def build_tables(plan: Plan, rows: dict[str, dict[str, Any]], units: dict[str, dict[str, Any]],
                 baselines: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``{"results", "summary", "thresholds"}`` DataFrames for ``plan`` from journal rows, and
    ``baselines`` when the sweep has baseline methods (:mod:`circuitscan.sweep.baselines`)."""
    import pandas as pd

    spec = plan.spec
    axes = spec.grid.names
    has_truth = spec.truth is not None
    cols = metric_columns(spec.level, has_truth)
    k = spec.stability_k if spec.truth is None else len(spec.truth)
    records, curves = [], []
    for key, info in plan.rows.items():
        r = rows.get(key)
        rec: dict[str, Any] = {"point": info.point, "seed": info.seed, "role": info.role}
        rec.update({a: _cell(info.values.get(a)) for a in axes})
        rec["status"] = "missing" if r is None else r["status"]
        rec["error"] = None if r is None else r.get("error")
        unit = units.get(info.unit) or {}
        train = unit.get("train") or {}
        for c in cols:
            rec[c] = math.nan
        if r is not None and r["status"] == "ok":
            for c in cols:
                if c in r:
                    rec[c] = r[c]
                elif c in train:
                    rec[c] = train[c]
            ref = rows.get(plan.reference.get(info.seed, ""))
            if ref is not None and ref["status"] == "ok":
                for p in ("node", "pairs"):
                    if f"{p}_scores" in r and f"{p}_scores" in ref:
                        rec[f"{p}_rank_corr_vs_base"] = rank_correlation(r[f"{p}_scores"], ref[f"{p}_scores"])
                        rec[f"{p}_topk_overlap_vs_base"] = topk_overlap(r[f"{p}_scores"], ref[f"{p}_scores"], k)
            for p, level in (("node", "node"), ("pairs", "pairs")):
                curve = r.get(f"{p}_theta_curve")
                if curve:
                    for i, theta in enumerate(spec.to_dict()["thetas"]):
                        curves.append({"point": info.point, "seed": info.seed, "role": info.role,
                                       **{a: rec[a] for a in axes}, "level": level, "theta": theta,
                                       "f1": curve["f1"][i], "precision": curve["precision"][i],
                                       "recall": curve["recall"][i], "size": curve["size"][i]})
        rec["worker"] = unit.get("worker")
        rec["unit_key"], rec["row_key"] = info.unit, key
        records.append(rec)
    results = pd.DataFrame.from_records(records)
    results["point"] = results["point"].astype("Int64")  # reference rows have no point
    thresholds = pd.DataFrame.from_records(curves) if curves else pd.DataFrame(
        columns=["point", "seed", "role", *axes, "level", "theta", "f1", "precision", "recall", "size"])
    thresholds["point"] = thresholds["point"].astype("Int64")
    tables = {"results": results, "summary": summarise(results, axes, cols), "thresholds": thresholds}
    if baselines:
        tables["baselines"] = baselines_table(baselines)
    return tables


def summarise(results, axes: list[str], cols: list[str]):
    """Mean and sample std (NaN with one seed) of every metric over seeds, per grid point."""
    import pandas as pd

    grid = results[results["role"] == "grid"]
    out = []
    for point, g in grid.groupby("point", sort=True):
        rec: dict[str, Any] = {"point": int(point), **{a: g[a].iloc[0] for a in axes}}
        ok = g[g["status"] == "ok"]
        rec["n_seeds"], rec["n_ok"], rec["n_error"] = len(g), len(ok), int((g["status"] == "error").sum())
        for c in cols:
            vals = pd.to_numeric(ok[c], errors="coerce").dropna()
            rec[f"{c}_mean"] = float(vals.mean()) if len(vals) else math.nan
            rec[f"{c}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        errors = g["error"].dropna().unique().tolist()
        rec["errors"] = "; ".join(errors[:3]) if errors else None
        out.append(rec)
    return pd.DataFrame.from_records(out)


def write_tables(out: Path, tables: dict[str, Any]) -> list[Path]:
    """Each table as ``name.parquet`` and ``name.csv``, each file replaced atomically."""
    written = []
    for name, df in tables.items():
        for ext in ("parquet", "csv"):
            path = out / f"{name}.{ext}"
            with atomic_path(path) as tmp:
                if ext == "parquet":
                    df.to_parquet(tmp, index=False, engine="pyarrow")
                else:
                    df.to_csv(tmp, index=False)
            written.append(path)
    return written


def remove_tables(out: Path, names: tuple[str, ...] = RESULT_FILES) -> None:
    """Derived tables go before new work starts: no table ever describes a sweep half-done."""
    for name in names:
        for ext in ("parquet", "csv"):
            (out / f"{name}.{ext}").unlink(missing_ok=True)
