"""Several SAEs trained as one batched model, an input scale, and a stopping rule.

Every parameter carries a leading member axis ``S`` (``W_E`` [S, d, F], ``b_E`` [S, F],
``W_D`` [S, F, d], ``b`` [S, d]); the hand-derived gradients of :mod:`.train` become
batched matmuls, and one Adam steps all members (Adam is elementwise, so each member
follows exactly the trajectory it would follow alone). Members may differ in their
training rows (``data`` [S, n, d]), their initialisation and their l1 weight.

Input scale: with ``input_scale="d_model"`` a member's rows are multiplied by one
constant ``s`` so that their mean squared norm is ``d_model`` before training. The
scale is folded into the returned SAE (``b / s``, ``s W_E``, ``W_D / s``), so the one
encoder of :class:`SparseAutoencoder` applied to raw activations gives the codes of
the scaled problem; the SAE's atoms then have norm ``1 / s``.

Stopping: ``stop="codes"`` checks the argmax codes of the training rows every
``check_every`` epochs and stops once, in every member, at most a fraction ``stop_tol``
of them changed since the last check, ``stop_patience`` checks in a row (``epochs`` is the maximum); ``stop="epochs"`` runs ``epochs`` steps.

Schedule: each step's size is :func:`.train.lr_at` and its rows :func:`.train.row_batches`
(one shuffle per member from its generator, so member ``s`` still equals a lone run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..config import SAEConfig
from ..errors import TrainingError
from .model import SparseAutoencoder
from .train import batched_loss_and_grads, init_sae, lr_at, row_batches, set_lr

L1_RATE = 0.05  # per-step log-change of l1 under target_l0 at a 100 % L0 error


@dataclass(frozen=True)
class EnsembleFit:
    """What :func:`train_ensemble` produced."""

    saes: list[SparseAutoencoder]  # scale folded in: encode raw activations
    losses: list[list[float]]  # per member, every `log_every` epochs and the last
    epochs_run: int
    scales: list[float]
    l0: list[float]  # mean active features per training row, per member
    dead: list[int]  # features that never fire on the member's training rows
    mse: list[float]  # per element, in the scaled units
    l1: list[float]  # the final l1 of each member (steered when target_l0 is set)


def _argmax_codes(z: Tensor, n_features: int) -> Tensor:
    best = z.max(-1)
    return torch.where(best.values > 0, best.indices, torch.full_like(best.indices, n_features))


def _scale_of(rows: Tensor, how: str) -> float:
    if how == "none":
        return 1.0
    ms = float(rows.double().square().sum(1).mean())
    return (rows.shape[1] / ms) ** 0.5 if ms > 0 else 1.0


def _check_loss(losses: list[float], first: float, epoch: int, cfg: SAEConfig, l1: Tensor) -> None:
    for v in losses:
        if not (v == v and abs(v) < float("inf")) or v > 1e6 * max(first, 1e-12):
            raise TrainingError(
                f"SAE training diverged at epoch {epoch} (loss {v:.3g}, started at {first:.3g}); "
                f"lower the learning rate (lr={cfg.lr}) or l1 (l1={float(l1.max()):.3g})"
            )


def train_ensemble(
    data: Float[Tensor, "S n d"],
    cfg: SAEConfig,
    generators: list[torch.Generator],
    *,
    l1: Float[Tensor, " S"] | None = None,
    log_every: int = 25,
    target_l0: float | None = None,
) -> EnsembleFit:
    """Train ``S`` SAEs at once on ``data[s]``, member ``s`` initialised from ``generators[s]``.

    Args:
        data: the training rows of each member (non-empty, finite).
        cfg: the shared configuration (``n_features``, ``lr``, ``epochs``, ``stop`` ...).
        generators: one per member, for its initialisation.
        l1: per-member sparsity weights (default: ``cfg.l1`` for all).
        log_every: record the losses every this many epochs (and at the last).
        target_l0: steer each member's l1 every step by ``exp(L1_RATE * (L0 - target) / target)``
            (clipped), so training ends near the target sparsity; the final l1 is reported.
    """
    if not torch.isfinite(data).all():
        raise TrainingError("SAE training data contains NaN or inf; the head activations are not finite")
    S, n, d = data.shape
    scales = [_scale_of(data[s].float(), cfg.input_scale) for s in range(S)]
    x = data.float() * torch.tensor(scales)[:, None, None] if cfg.input_scale != "none" else data.float()
    x = x.contiguous()
    l1 = torch.full((S,), float(cfg.l1)) if l1 is None else l1.float()
    inits = [init_sae(d, cfg, x[s], generators[s]) for s in range(S)]
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in inits]).requires_grad_(True)
              for k in ("W_E", "b_E", "W_D", "b")}
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    dim = 2 if cfg.decoder_norm == "atoms" else 1  # atoms are rows of W_D [S, F, d]
    losses: list[list[float]] = [[] for _ in range(S)]
    first: float | None = None
    last_codes, stable, epoch = None, 0, 0
    batches = row_batches(n, cfg.batch_rows, generators)  # after the inits: member s = a lone run of its seed
    for epoch in range(cfg.epochs):
        detached = {k: v.detach() for k, v in params.items()}
        rows = next(batches)
        xb = x if rows is None else torch.gather(x, 1, rows[:, :, None].expand(-1, -1, d))
        loss, _, z, grads = batched_loss_and_grads(detached, xb, l1, cfg)
        assert grads is not None
        if target_l0 is not None:  # steer l1 toward the target sparsity (multiplicative, per member)
            l0_now = (z > 0).float().sum(2).mean(1)
            l1 = l1 * torch.exp(L1_RATE * ((l0_now - target_l0) / target_l0).clamp(-1, 1))
        w_d = detached["W_D"]
        grads["W_D"].sub_((grads["W_D"] * w_d).sum(dim=dim, keepdim=True) * w_d)
        for k, v in params.items():
            v.grad = grads[k]
        set_lr(opt, lr_at(cfg, epoch))
        opt.step()
        with torch.no_grad():
            params["W_D"].div_(params["W_D"].norm(dim=dim, keepdim=True).clamp_min(1e-12))
        done = False
        if cfg.stop == "codes" and epoch % cfg.check_every == cfg.check_every - 1:
            codes = _argmax_codes(z, cfg.n_features)
            changed = 1.0 if last_codes is None else float((codes != last_codes).float().mean(1).max())
            stable = stable + 1 if changed <= cfg.stop_tol else 0
            last_codes = codes
            done = stable >= cfg.stop_patience
        if epoch % log_every == 0 or epoch == cfg.epochs - 1 or done:
            values = loss.tolist()
            first = max(values) if first is None else first
            _check_loss(values, first, epoch, cfg, l1)
            for s in range(S):
                losses[s].append(values[s])
        if done:
            break
    with torch.no_grad():
        final = {k: v.detach() for k, v in params.items()}
        _, mse, z, _ = batched_loss_and_grads(final, x, l1, cfg, with_grads=False)
        active = z > 0
        l0 = active.float().sum(2).mean(1).tolist()
        dead = (~active.any(1)).sum(1).tolist()
    saes = [_member(final, s, scales[s], cfg.n_features, d) for s in range(S)]
    return EnsembleFit(saes=saes, losses=losses, epochs_run=epoch + 1, scales=scales, l0=l0,
                       dead=[int(v) for v in dead], mse=mse.tolist(), l1=l1.tolist())


def _member(p: dict[str, Tensor], s: int, scale: float, n_features: int, d: int) -> SparseAutoencoder:
    """Member ``s`` as a plain SAE on raw activations (the input scale folded in)."""
    sae = SparseAutoencoder(d, n_features)
    with torch.no_grad():
        if scale == 1.0:
            for k in ("W_E", "b_E", "W_D", "b"):
                getattr(sae, k).copy_(p[k][s])
        else:
            sae.W_E.copy_(p["W_E"][s] * scale)
            sae.b_E.copy_(p["b_E"][s])
            sae.W_D.copy_(p["W_D"][s] / scale)
            sae.b.copy_(p["b"][s] / scale)
    return sae


__all__ = ["EnsembleFit", "batched_loss_and_grads", "train_ensemble"]
