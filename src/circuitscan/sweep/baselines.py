"""Registered methods as reference rows of a sweep (``sweep --baselines eap,norm-diff``).

A sweep varies the SAE method's settings; a baseline runs once, with its defaults, on the
sweep's base prompt set (the same prompts the base configuration sees), so the tables can
say where every grid point stands against, say, EAP. Any method of the registry
(:func:`circuitscan.comparison.settings.method_registry`) can be a baseline, a method
registered by a user included.

Results live in ``DIR/baselines.json`` ({method: row}); a resumed sweep computes only the
baselines it does not have yet for the same prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..comparison.settings import CompareSettings, method_configs, method_registry, parse_methods
from ..errors import CircuitscanError
from ..evaluation.ground_truth import evaluate_scores
from ..rundir import read_json, write_json
from ..tasks import build_task
from .plan import task_defaults

BASELINES_JSON = "baselines.json"
#: the grid itself is sae-codes: as a baseline it would only repeat the base configuration
NOT_BASELINES = ("sae-codes", "sae-codes-pairs")
#: the columns of the baselines table, in order
COLUMNS = ("method", "node_auc", "node_best_f1", "node_best_theta", "node_circuit_size", "node_precision",
           "node_recall", "wall_time_s", "forward_passes", "backward_passes", "n_examples")


def check_baselines(names: Sequence[str]) -> tuple[str, ...]:
    """The baselines a sweep may run, checked against the registry."""
    if not names:
        return ()
    given = parse_methods(list(names))
    bad = [m for m in given if m in NOT_BASELINES]
    if bad:
        raise CircuitscanError(f"--baselines: {', '.join(bad)} is the method the sweep's grid varies; name other "
                               "methods (e.g. eap,norm-diff)")
    return tuple(given)


def _identity(spec: Any) -> dict[str, Any]:
    return {"model": spec.model, "task": spec.task, "examples": spec.examples, "prompt_seed": spec.prompt_seed}


def run_baselines(out: Path, spec: Any, model_fn: Callable[[], Any], *,
                  log: Callable[[str], None] = lambda s: None) -> dict[str, dict[str, Any]]:
    """Every baseline of ``spec`` on the base prompts, reusing ``out/baselines.json``; returns its rows."""
    path = out / BASELINES_JSON
    stored = read_json(path) if path.is_file() else {}
    rows = stored.get("rows", {}) if isinstance(stored, dict) and stored.get("prompts") == _identity(spec) else {}
    rows = {m: r for m, r in rows.items() if m in spec.baselines}
    todo = [m for m in spec.baselines if m not in rows]
    if todo:
        model = model_fn()
        name, options = task_defaults(spec.task)
        prompts = build_task(name, model, spec.examples, seed=spec.prompt_seed, **options)
        cfgs = method_configs(CompareSettings(), todo)
        for m in todo:
            t = time.perf_counter()
            scores = method_registry().run_method(m, model, prompts, cfgs[m])[0]
            rows[m] = _row(m, scores, spec.truth, prompts.n_positive)
            log(f"baseline {m}: {time.perf_counter() - t:.1f}s"
                + (f", node AUC {rows[m]['node_auc']:.3f}" if spec.truth is not None else ""))
        write_json(path, {"prompts": _identity(spec), "rows": {m: rows[m] for m in spec.baselines}})
    return {m: rows[m] for m in spec.baselines}


def _row(method: str, scores: Any, truth: tuple[int, ...] | None, n_examples: int) -> dict[str, Any]:
    """One baseline's row: its head scores, and their ground-truth metrics when a truth is known."""
    import torch

    flat = scores.node.detach().double().flatten()
    row: dict[str, Any] = {"method": method, "node_scores": flat.tolist(), "wall_time_s": scores.wall_time_s,
                           "forward_passes": scores.forward_passes, "backward_passes": scores.backward_passes,
                           "n_examples": n_examples}
    if truth is not None:
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[list(truth)] = True
        m = evaluate_scores(flat, mask)
        row.update(node_auc=m.auc, node_best_f1=m.best_f1, node_best_theta=m.best_threshold,
                   node_circuit_size=m.circuit_size, node_precision=m.precision, node_recall=m.recall)
    return row


def baselines_table(rows: dict[str, dict[str, Any]]):
    """The baselines as a DataFrame (:data:`COLUMNS`; metrics NaN without a ground truth)."""
    import pandas as pd

    records = [{c: r.get(c, float("nan")) for c in COLUMNS} for r in rows.values()]
    return pd.DataFrame.from_records(records, columns=list(COLUMNS))
