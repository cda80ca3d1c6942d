"""The contrastive-loss SAE of the paper's Appendix J: an option, and a documented negative result.

The paper adds to the SAE loss a term that pushes the feature vectors of positive and
negative examples apart at each head and pulls those with the same label together:

    CS(A, B)     = 1/S sum_s ( 1/N sum_n sim_sn + 1/M sum_m sim_sm )
    L_cont(P, N) = CS(P, N) + max(0, eps - CS(P, P)/2 - CS(N, N)/2)
    L            = reconstruction + lambda * L1 + alpha * L_cont

where ``s`` runs over the S heads (the paper's "sequence positions"), ``sim_sn`` is the
mean cosine similarity of example n's feature vector at head s with every vector at
head s in the other tensor, and P, N are the SAE features z of the positive and negative
training examples. Both directions of the mean are equal, so CS(A, B) is twice the mean
cosine similarity over all pairs (self-pairs included when A is B). The paper does not
give eps; it is ``ContrastiveConfig.epsilon`` here (default 1: the hinge stops pulling
once the mean within-label similarities add up to 1). The paper found the term lowers
node AUC at every alpha it tried (Fig. 32).

Training is the default trainer's loop (same initialisation, example selection, Adam,
atom normalisation and hand-derived reconstruction/L1 gradients from
:func:`circuitscan.sae.train.loss_and_grads`); only the contrastive term's gradient with
respect to z is taken by autograd and pushed through the encoder by hand. With
``alpha = 0`` it trains exactly the SAE that :func:`circuitscan.sae.fit` trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CircuitscanError, TrainingError
from ..sae import fit

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ContrastiveConfig:
    """Weight ``alpha`` of the contrastive term and its hinge margin ``epsilon``."""

    alpha: float = 0.0
    epsilon: float = 1.0

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise CircuitscanError(f"contrastive alpha must be >= 0, got {self.alpha}")
        if not -2 <= self.epsilon <= 4:
            raise CircuitscanError(f"contrastive epsilon must be in [-2, 4] (CS/2 lies in [-1, 1]), got {self.epsilon}")


def _cs(a_hat: torch.Tensor, b_hat: torch.Tensor) -> torch.Tensor:
    """CS(A, B) for unit vectors a_hat [N, S, F], b_hat [M, S, F]: twice the mean cosine."""
    # mean over pairs at head s = (sum_n a_ns) . (sum_m b_ms) / (N M)
    sa = a_hat.sum(0)
    sb = b_hat.sum(0)
    per_head = (sa * sb).sum(-1) / (a_hat.shape[0] * b_hat.shape[0])
    return 2 * per_head.mean()


def contrastive_loss(
    z: torch.Tensor, row_labels: torch.Tensor, n_heads_total: int, epsilon: float = 1.0
) -> torch.Tensor:
    """L_cont of the features z [examples * heads, F] (rows example-major), as in the paper.

    Raises:
        CircuitscanError: the training examples are all positive or all negative.
    """
    import torch

    n_rows, n_feat = z.shape
    zz = z.reshape(n_rows // n_heads_total, n_heads_total, n_feat)
    lab = row_labels.reshape(-1, n_heads_total)[:, 0]
    if bool(lab.all()) or not bool(lab.any()):
        raise CircuitscanError(
            "the contrastive loss needs positive and negative examples among the SAE's training examples; "
            "train on more examples or with balanced=True"
        )
    unit = zz / zz.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # all-zero rows: similarity 0
    p, n = unit[lab], unit[~lab]
    return _cs(p, n) + torch.relu(epsilon - _cs(p, p) / 2 - _cs(n, n) / 2)


def contrastive_grads(sae, x: torch.Tensor, z: torch.Tensor, row_labels: torch.Tensor, n_heads_total: int,
                      cfg: ContrastiveConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha * L_cont and its gradients with respect to W_E, b_E and b (W_D does not enter)."""
    import torch

    zl = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = contrastive_loss(zl, row_labels, n_heads_total, cfg.epsilon)
        (dz,) = torch.autograd.grad(loss, zl)
    dpre = dz.mul_(cfg.alpha).mul_(z > 0)  # through the ReLU (z > 0 exactly where pre > 0)
    xc = x - sae.b.detach()
    sum_dpre = dpre.sum(0)
    return cfg.alpha * loss.detach(), {
        "W_E": xc.T @ dpre,
        "b_E": sum_dpre,
        "b": -(sae.W_E.detach() @ sum_dpre),
    }


def fit_contrastive(x, labels, cfg, contrastive: ContrastiveConfig, *, paired: bool = True, log_every: int = 25):
    """:func:`circuitscan.sae.fit` with the contrastive term added to the loss.

    Args:
        x: head activations [examples, heads, d].
        labels: True for positive examples.
        cfg: the SAE's :class:`~circuitscan.config.SAEConfig`.
        contrastive: alpha and epsilon.
        paired: positives then their paired negatives (see ``select_train_examples``).
        log_every: record the loss every this many epochs (and at the last).

    Returns:
        A :class:`~circuitscan.sae.TrainResult`.

    Raises:
        TrainingError: the data is not finite or the loss diverges.
    """
    n_heads_total = x.shape[1]

    def extra_for(idx):
        row_labels = labels[idx].repeat_interleave(n_heads_total)

        def extra(sae, data, z):
            return contrastive_grads(sae, data, z, row_labels, n_heads_total, contrastive)

        return extra

    make_extra = extra_for if contrastive.alpha > 0 else None
    try:
        return fit(x, labels, cfg, paired=paired, log_every=log_every, extra_for=make_extra)
    except TrainingError as exc:
        if "diverged" not in str(exc):
            raise
        raise TrainingError(f"contrastive {exc}, or alpha ({contrastive.alpha})") from exc
