"""Fitting an SAE (or an ensemble) to head activations: pick examples, calibrate, train, report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..config import SAEConfig
from ..errors import CircuitscanError
from ..precision import resolve_precision
from .calibrate import calibrate_l1
from .ensemble import train_ensemble
from .train import (
    ExtraTerm,
    TrainResult,
    loss_and_grads,
    select_train_examples,
    train_sae,
)


def fit(
    x: Float[Tensor, "n_examples n_heads d"],
    labels: Bool[Tensor, " n_examples"],
    cfg: SAEConfig,
    *,
    paired: bool = True,
    log_every: int = 25,
    extra_for: Callable[[Int[Tensor, " n_train"]], ExtraTerm] | None = None,
) -> TrainResult:
    """Select training examples, train on all their head rows, report final stats.

    With ``cfg.n_seeds > 1`` an ensemble is trained as one batched model: member ``s``
    uses seed ``cfg.seed + s`` for its training examples and its initialisation, so
    member ``s`` is the SAE a single run with that seed gives. The result is member 0,
    with every member in ``members``.

    Args:
        x: head activations [examples, heads, d] (or [examples, positions, heads, d]:
            every position of a training example is a row).
        labels: True for positive examples.
        cfg: the SAE's configuration.
        paired: positives then their paired negatives (see :func:`select_train_examples`).
        log_every: record the loss every this many epochs (and at the last).
        extra_for: given the chosen training example indices, an extra loss term for
            :func:`train_sae` (rows are example-major: example ``i``'s heads are rows
            ``i * heads`` to ``(i + 1) * heads - 1``); single SAEs with the paper's
            training only.

    Returns:
        A :class:`TrainResult`.
    """
    t0 = time.perf_counter()
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, x.device))
    if extra_for is not None:
        return _fit_single_with_extra(x, labels, cfg, paired=paired, log_every=log_every, extra_for=extra_for)
    gens = [torch.Generator().manual_seed(cfg.seed + s) for s in range(cfg.n_seeds)]
    idx = [select_train_examples(labels, cfg, g, paired=paired) for g in gens]
    data = torch.stack([x[i].reshape(-1, x.shape[-1]) for i in idx])
    if data.shape[1] == 0:
        raise CircuitscanError(f"SAE training data must be non-empty, got {tuple(data.shape[1:])}")
    l1, tried, steer = cfg.l1, (), None
    if cfg.target_l0 is not None and cfg.calibrate == "bisect":
        l1, points = calibrate_l1(data[0], cfg)
        tried = tuple(points)
    elif cfg.target_l0 is not None:  # from cfg.l1 upward: too large a start kills features for good
        steer = cfg.target_l0
    ens = train_ensemble(data, replace(cfg, l1=l1), gens, log_every=log_every, target_l0=steer)
    if steer is not None:
        _check_reached(ens.l0, steer, ens.l1)
    seconds = time.perf_counter() - t0
    members = tuple(
        TrainResult(sae=ens.saes[s], train_indices=idx[s], losses=ens.losses[s], final_mse=ens.mse[s],
                    final_l0=ens.l0[s], seconds=seconds, l1=ens.l1[s], dead_features=ens.dead[s],
                    input_scale=ens.scales[s], epochs_run=ens.epochs_run, seed=cfg.seed + s, calibration=tried,
                    precision=cfg.precision)
        for s in range(cfg.n_seeds)
    )
    return replace(members[0], members=members)


REACH_TOLERANCE = 0.35  # target_l0 counts as reached within 35 %


def _check_reached(l0: list[float], target: float, l1: list[float]) -> None:
    worst = max(range(len(l0)), key=lambda s: abs(l0[s] - target))
    if abs(l0[worst] - target) > REACH_TOLERANCE * target:
        raise CircuitscanError(
            f"target_l0={target:g} cannot be reached: steering l1 (to {l1[worst]:.3g}) ended at L0 "
            f"{l0[worst]:.1f}; ask for a target nearer what the data allows, or more epochs"
        )


def _fit_single_with_extra(x, labels, cfg: SAEConfig, *, paired, log_every, extra_for) -> TrainResult:
    if cfg.n_seeds != 1 or cfg.target_l0 is not None or cfg.input_scale != "none" or cfg.stop != "epochs":
        raise CircuitscanError(
            "an extra loss term (the contrastive SAE) trains one SAE with the paper's schedule: "
            "use n_seeds=1, target_l0=None, input_scale='none', stop='epochs'"
        )
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = select_train_examples(labels, cfg, gen, paired=paired)
    rows = x[idx].reshape(-1, x.shape[-1])
    extra = extra_for(idx)
    sae, losses = train_sae(rows, cfg, generator=gen, log_every=log_every, extra=extra)
    with torch.no_grad():
        _, mse, z, _ = loss_and_grads(sae, rows.float(), cfg, with_grads=False)
    active = z > 0
    result = TrainResult(
        sae=sae,
        train_indices=idx,
        losses=losses,
        final_mse=float(mse),
        final_l0=float(active.float().sum(1).mean()),
        seconds=time.perf_counter() - t0,
        l1=cfg.l1,
        dead_features=int((~active.any(0)).sum()),
        epochs_run=cfg.epochs,
        seed=cfg.seed,
        precision=cfg.precision,
    )
    return replace(result, members=(result,))
