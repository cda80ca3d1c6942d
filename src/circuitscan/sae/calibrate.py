"""Choose the sparsity weight l1 for a target L0 (mean active features per row).

L0 falls as l1 grows. Each round trains a handful of SAEs (at most
``CALIBRATION_EPOCHS`` epochs each) that differ only in l1 as
one batched model (:func:`.ensemble.train_ensemble`) on a sample of the training rows,
keeps the two neighbouring l1 values whose L0 brackets the target, and the next round
searches between them (log scale). The answer interpolates log(l1) linearly in L0
between the last bracket's ends.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from jaxtyping import Float
from torch import Tensor

from ..config import SAEConfig
from ..errors import CircuitscanError
from .ensemble import _scale_of, train_ensemble

CALIBRATION_ROWS = 1024
CALIBRATION_EPOCHS = 150  # L0 settles long before the codes do
GRID = (6, 4)  # l1 values tried in each round


def _l1_scale(rows: Tensor, cfg: SAEConfig) -> float:
    """The l1 at which the reconstruction gradient on a row is matched: ~2 x rms residual."""
    x = rows.double() * _scale_of(rows.float(), cfg.input_scale)
    rms = float((x - x.mean(0)).square().sum(1).mean().sqrt())
    rms = rms if rms > 0 else 1.0
    return 2 * rms if cfg.loss == "paper" else 2 * rms / rows.shape[1]


def _l0s(rows: Tensor, cfg: SAEConfig, l1s: list[float]) -> list[float]:
    k = len(l1s)
    gens = [torch.Generator().manual_seed(cfg.seed) for _ in range(k)]
    fit = train_ensemble(rows[None].expand(k, -1, -1), cfg, gens, l1=torch.tensor(l1s))
    return fit.l0


def calibrate_l1(rows: Float[Tensor, "n d"], cfg: SAEConfig) -> tuple[float, list[tuple[float, float]]]:
    """The l1 giving mean L0 ~ ``cfg.target_l0`` on ``rows``, and every (l1, L0) tried.

    Raises:
        CircuitscanError: the target cannot be reached (L0 stays below it even at l1 = 0,
            or above it at the largest l1 tried).
    """
    target = cfg.target_l0
    if target is None:
        raise CircuitscanError("calibrate_l1 needs cfg.target_l0")
    gen = torch.Generator().manual_seed(cfg.seed + 104729)
    if rows.shape[0] > CALIBRATION_ROWS:
        rows = rows[torch.randperm(rows.shape[0], generator=gen)[:CALIBRATION_ROWS].sort().values]
    rows = rows.float().contiguous()
    cfg = replace(cfg, n_seeds=1, target_l0=None, epochs=min(cfg.epochs, CALIBRATION_EPOCHS))
    top = _l1_scale(rows, cfg) * 3.0
    l1s = [0.0] + [top * 10.0 ** (-4.5 * i / (GRID[0] - 2)) for i in range(GRID[0] - 2, -1, -1)]
    tried: list[tuple[float, float]] = []
    lo = hi = None
    for r in range(len(GRID)):
        new = list(zip(l1s, _l0s(rows, cfg, l1s), strict=True))
        tried.extend(new)
        pts = sorted(new + ([lo, hi] if lo is not None and hi is not None else []))
        if lo is None and pts[0][1] < target:
            raise CircuitscanError(
                f"target_l0={target:g} cannot be reached: even l1=0 gives L0 {pts[0][1]:.1f} "
                f"(n_features={cfg.n_features}); ask for a smaller target_l0"
            )
        if lo is None and pts[-1][1] > target:
            raise CircuitscanError(
                f"target_l0={target:g} cannot be reached: the largest l1 tried ({pts[-1][0]:.3g}) still gives "
                f"L0 {pts[-1][1]:.1f}; ask for a larger target_l0"
            )
        bracket = next(((a, b) for a, b in zip(pts, pts[1:], strict=False) if a[1] >= target >= b[1]), None)
        if bracket is None:  # L0 not monotone over the grid: take the closest
            best = min(pts, key=lambda p: abs(p[1] - target))
            return best[0], tried
        lo, hi = bracket
        a_l1 = max(lo[0], hi[0] * 1e-3)
        if r + 1 == len(GRID):
            break
        k = GRID[r + 1]
        l1s = [math.exp(math.log(a_l1) + (math.log(hi[0]) - math.log(a_l1)) * (i + 1) / (k + 1)) for i in range(k)]
    assert lo is not None and hi is not None
    if lo[1] == hi[1] or lo[0] <= 0:
        return (hi[0] if lo[0] <= 0 else lo[0]), tried
    t = (lo[1] - target) / (lo[1] - hi[1])
    return math.exp(math.log(lo[0]) + t * (math.log(hi[0]) - math.log(lo[0]))), tried
