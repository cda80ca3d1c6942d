"""Full-batch Adam training of the SAE, with the gradient written out by hand.

The loss (per row, averaged over rows; see :class:`SAEConfig` for the authors' variant):

    L = ||h - h_hat||^2 + lambda * ||z||_1

Each step: forward, hand-derived gradients (five matmuls, no autograd graph), remove
from each atom's gradient its component parallel to the atom, Adam, renormalise the
atoms. :func:`loss_and_grads` is checked against autograd in the tests.

The step size follows ``cfg.lr_schedule`` (:func:`lr_at`) and a step sees every row or,
with ``cfg.batch_rows``, the next minibatch of a shuffled pass (:func:`row_batches`);
both are shared with the batched loop of :mod:`.ensemble`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..config import SAEConfig
from ..errors import CircuitscanError, TrainingError
from .model import SparseAutoencoder

ExtraTerm = Callable[[SparseAutoencoder, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]
"""An extra loss term: ``extra(sae, x, z) -> (loss, grads)``, called every step with the
training rows ``x`` [n, d] and their codes ``z`` [n, F]; ``grads`` maps some of the
parameter names (``W_E``, ``b_E``, ``W_D``, ``b``) to gradients added to the hand-derived
ones, and ``loss`` is added to the logged loss."""


@dataclass(frozen=True)
class TrainResult:
    """What training produced: the SAE, which examples it saw, and its loss curve."""

    sae: SparseAutoencoder
    train_indices: Int[Tensor, " n_train"]
    losses: list[float] = field(default_factory=list)  # every `log_every` epochs, and the last
    final_mse: float = 0.0
    final_l0: float = 0.0
    seconds: float = 0.0
    l1: float = 0.0  # the l1 used (calibrated when cfg.target_l0 is set)
    dead_features: int = 0  # features that never fire on the training rows
    input_scale: float = 1.0  # the constant the rows were multiplied by (folded into the SAE)
    epochs_run: int = 0
    seed: int = 0
    members: tuple[TrainResult, ...] = ()  # an ensemble: every member (this result is members[0])
    calibration: tuple[tuple[float, float], ...] = ()  # (l1, L0) pairs tried by the calibration
    precision: str = "fp32"  # of the training matmuls, as run ("auto" resolved)


def select_train_examples(
    labels: Bool[Tensor, " n"], cfg: SAEConfig, generator: torch.Generator, *, paired: bool = True
) -> Int[Tensor, " n_train"]:
    """Pick ``cfg.train_examples`` example indices (balanced or from the shuffled pool).

    With ``paired`` (positives then negatives, the i-th negative the corruption of the
    i-th positive) and an even balanced count, whole pairs are drawn.
    """
    n = labels.numel()
    k = cfg.train_examples
    if k > n:
        raise CircuitscanError(f"train_examples={k} but the task has only {n} examples")
    if not cfg.balanced:
        return torch.randperm(n, generator=generator)[:k].sort().values
    pos = labels.nonzero().flatten()
    neg = (~labels).nonzero().flatten()
    k_pos = (k + 1) // 2
    k_neg = k - k_pos
    if paired and k_pos == k_neg and k_pos <= pos.numel() == neg.numel():
        # take whole pairs, so the examples left for counting stay paired: otherwise a
        # counted positive whose negative twin was used for training shows codes that
        # look "positive-only" at heads that do not care about the task at all
        chosen = torch.randperm(pos.numel(), generator=generator)[:k_pos]
        return torch.cat([pos[chosen], neg[chosen]]).sort().values
    if k_pos > pos.numel() or k_neg > neg.numel():
        raise CircuitscanError(
            f"a balanced training set of {k} examples needs {k_pos} positives and {k_neg} "
            f"negatives; the task has {pos.numel()} and {neg.numel()}"
        )
    p = pos[torch.randperm(pos.numel(), generator=generator)[:k_pos]]
    q = neg[torch.randperm(neg.numel(), generator=generator)[:k_neg]]
    return torch.cat([p, q]).sort().values


def init_sae(d_in: int, cfg: SAEConfig, data: Float[Tensor, "n d"], generator: torch.Generator) -> SparseAutoencoder:
    """Random unit atoms, encoder = transposed dictionary, tied bias = data mean."""
    sae = SparseAutoencoder(d_in, cfg.n_features)
    with torch.no_grad():
        w = torch.randn(cfg.n_features, d_in, generator=generator)
        sae.W_D.copy_(w / w.norm(dim=1, keepdim=True))
        _normalise(sae.W_D, cfg.decoder_norm)
        sae.W_E.copy_(sae.W_D.T)
        sae.b.copy_(data.mean(0))
    return sae


def _norm_dim(mode: str) -> int:
    # atoms are the rows of W_D [F, d]; the authors' code normalises the other axis
    return 1 if mode == "atoms" else 0


def _normalise(w_d: Tensor, mode: str) -> None:
    dim = _norm_dim(mode)
    w_d.div_(w_d.norm(dim=dim, keepdim=True).clamp_min(1e-12))


def _project_out_parallel(grad: Tensor, w_d: Tensor, mode: str) -> None:
    dim = _norm_dim(mode)
    grad.sub_((grad * w_d).sum(dim=dim, keepdim=True) * w_d)


def lr_at(cfg: SAEConfig, step: int) -> float:
    """The step size of optimiser step ``step`` (0-based) of ``cfg.epochs`` under ``cfg.lr_schedule``."""
    t = step / cfg.epochs
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - t)
    return cfg.lr


def row_batches(n: int, batch_rows: int | None, generators: list[torch.Generator]) -> Iterator[Tensor | None]:
    """Endless: for each step, the row indices [S, b] each member trains on, or None = all rows.

    Each member shuffles its ``n`` rows with its own generator and steps through them
    ``batch_rows`` at a time (the last batch of a pass may be smaller), then reshuffles:
    every pass covers every row exactly once. ``batch_rows`` None or >= ``n``: full batch.
    """
    if batch_rows is None or batch_rows >= n:
        while True:
            yield None
    while True:
        perms = torch.stack([torch.randperm(n, generator=g) for g in generators])
        for start in range(0, n, batch_rows):
            yield perms[:, start:start + batch_rows]


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _mm(low: torch.dtype | None, a: Tensor, m: Tensor, bias: Tensor | None = None) -> Tensor:
    if low is None:
        return torch.bmm(a, m) if bias is None else torch.baddbmm(bias, a, m)
    out = torch.bmm(a.to(low), m.to(low)).float()  # bf16 products, fp32 accumulation and results
    return out if bias is None else out.add_(bias)


def batched_loss_and_grads(
    p: dict[str, Tensor], x: Float[Tensor, "S n d"], l1: Float[Tensor, " S"], cfg: SAEConfig, *, with_grads: bool = True
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor] | None]:
    """Per-SAE loss [S], mse [S], z [S, n, F] and hand-derived gradients of ``S`` SAEs at once
    (parameters stacked on a first axis): the one loss every SAE of circuitscan trains on."""
    S, n, d = x.shape
    low = torch.bfloat16 if cfg.precision == "bf16" else None
    W_E, b_E, W_D, b = p["W_E"], p["b_E"], p["W_D"], p["b"]
    xc = x - b[:, None, :]
    pre = _mm(low, xc, W_E, b_E[:, None, :])
    z = torch.relu(pre)
    r = _mm(low, z, W_D, (b[:, None, :] - x))  # h_hat - h
    sq = r.square().sum((1, 2))
    a = 1.0 / n if cfg.loss == "paper" else 1.0 / (n * d)
    c = (l1 / n)[:, None, None]
    loss = a * sq + c.flatten() * z.sum((1, 2))
    mse = sq / (n * d)
    if not with_grads:
        return loss, mse, z, None
    g = r.mul_(2 * a)  # dL/dh_hat, reuses r's storage
    grad_W_D = _mm(low, z.transpose(1, 2), g)
    dz = _mm(low, g, W_D.transpose(1, 2), (z > 0).to(z.dtype) * c)  # = g W_D^T + c * 1[z > 0]
    dpre = dz.mul_(pre > 0)
    grad_W_E = _mm(low, xc.transpose(1, 2), dpre)
    sum_dpre = dpre.sum(1)
    grad_b = g.sum(1) - torch.bmm(W_E, sum_dpre[:, :, None])[:, :, 0]
    return loss, mse, z, {"W_E": grad_W_E, "b_E": sum_dpre, "W_D": grad_W_D, "b": grad_b}


def loss_and_grads(
    sae: SparseAutoencoder, x: Float[Tensor, "n d"], cfg: SAEConfig, *, with_grads: bool = True
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor] | None]:
    """Loss, its reconstruction part, z, and (optionally) hand-derived gradients of one SAE:
    :func:`batched_loss_and_grads` for a batch of one (the same kernels as an ensemble's, so an
    ensemble of one trains bit for bit as this SAE does).

    Returns:
        (loss, mse_per_element, z, grads) where grads maps parameter names to tensors.
    """
    p = {k: getattr(sae, k).detach()[None] for k in ("W_E", "b_E", "W_D", "b")}
    l1 = torch.full((1,), float(cfg.l1), dtype=x.dtype)
    loss, mse, z, grads = batched_loss_and_grads(p, x[None], l1, cfg, with_grads=with_grads)
    return loss[0], mse[0], z[0], None if grads is None else {k: v[0] for k, v in grads.items()}


def train_sae(
    data: Float[Tensor, "n d"],
    cfg: SAEConfig,
    *,
    generator: torch.Generator | None = None,
    log_every: int = 25,
    extra: ExtraTerm | None = None,
) -> tuple[SparseAutoencoder, list[float]]:
    """Train an SAE on the rows of ``data`` (full batch). Returns the SAE and its loss curve.

    Args:
        data: the training rows.
        cfg: the SAE's configuration.
        generator: randomness for the initialisation (default: seeded with ``cfg.seed``).
        log_every: record the loss every this many epochs (and at the last).
        extra: an optional extra loss term and its gradients (see :data:`ExtraTerm`).

    Returns:
        (the SAE, its loss curve).

    Raises:
        TrainingError: the data is not finite or the loss diverges.
        CircuitscanError: ``cfg.batch_rows`` with an extra term (it sees every row).
    """
    if extra is not None and cfg.batch_rows is not None and cfg.batch_rows < data.shape[0]:
        raise CircuitscanError(f"an extra loss term is computed on every training row; batch_rows={cfg.batch_rows} "
                               f"trains on {cfg.batch_rows} of {data.shape[0]}: use batch_rows=None")
    if data.ndim != 2 or data.shape[0] == 0:
        raise CircuitscanError(f"SAE training data must be a non-empty [rows, d] matrix, got {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        raise TrainingError("SAE training data contains NaN or inf; the head activations are not finite")
    data = data.float().contiguous()
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    sae = init_sae(data.shape[1], cfg, data, gen)
    params = dict(sae.named_parameters())
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    losses: list[float] = []
    first = None
    batches = row_batches(data.shape[0], cfg.batch_rows, [gen])
    for epoch in range(cfg.epochs):
        rows = next(batches)
        x = data if rows is None else data[rows[0]]
        loss, _, z, grads = loss_and_grads(sae, x, cfg)
        assert grads is not None
        if extra is not None:
            extra_loss, extra_grads = extra(sae, x, z)
            loss = loss + extra_loss
            for name, g in extra_grads.items():
                grads[name] = grads[name] + g
        _project_out_parallel(grads["W_D"], params["W_D"].detach(), cfg.decoder_norm)
        for name, p in params.items():
            p.grad = grads[name]
        set_lr(opt, lr_at(cfg, epoch))
        opt.step()
        with torch.no_grad():
            _normalise(params["W_D"], cfg.decoder_norm)
        if epoch % log_every == 0 or epoch == cfg.epochs - 1:
            value = float(loss)
            if first is None:
                first = value
            if not (value == value and abs(value) < float("inf")) or value > 1e6 * max(first, 1e-12):
                raise TrainingError(
                    f"SAE training diverged at epoch {epoch} (loss {value:.3g}, started at {first:.3g}); "
                    f"lower the learning rate (lr={cfg.lr}) or l1 (l1={cfg.l1})"
                )
            losses.append(value)
    for p in params.values():
        p.grad = None
    return sae, losses
