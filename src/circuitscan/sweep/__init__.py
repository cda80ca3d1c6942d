"""Hyperparameter sweeps, named robustness studies and Optuna searches (docs/SWEEPS.md).

::

    from circuitscan.sweep import SweepSpec, parse_grid, run_sweep
    spec = SweepSpec(model="toy-planted", task="planted", examples=40, seeds=(0, 1),
                     grid=parse_grid("features=8,16 l1=0.01,0.02"))
    result = run_sweep(spec, "runs/sweep")        # results.parquet / .csv, summary, thresholds
    result.tables["summary"]

Activations are cached once per prompt variant and shared by every SAE; units run in a
local process pool (default), in this process (``workers=1``) or on Ray.
Names are re-exported lazily: importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Grid": "circuitscan.sweep.grid",
    "parse_grid": "circuitscan.sweep.grid",
    "AXES": "circuitscan.sweep.grid",
    "NAMED_SWEEPS": "circuitscan.sweep.presets",
    "get_named": "circuitscan.sweep.presets",
    "SweepSpec": "circuitscan.sweep.plan",
    "build_plan": "circuitscan.sweep.plan",
    "THETAS": "circuitscan.sweep.plan",
    "ContrastiveConfig": "circuitscan.sweep.contrastive",
    "fit_contrastive": "circuitscan.sweep.contrastive",
    "run_unit": "circuitscan.sweep.evaluate",
    "Execution": "circuitscan.sweep.runner",
    "SweepResult": "circuitscan.sweep.runner",
    "run_sweep": "circuitscan.sweep.runner",
    "SearchSpace": "circuitscan.sweep.search",
    "parse_space": "circuitscan.sweep.search",
    "run_search": "circuitscan.sweep.search",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'circuitscan.sweep' has no attribute {name!r}")
