"""A permutation null for a head's code statistic: how large would it be by chance?

The prompts come in pairs (the i-th negative corrupts the i-th positive). Under the
null hypothesis that a head's codes do not depend on the label, swapping the labels
inside any pair leaves the distribution of the counts unchanged. So each permutation
swaps every counted pair with probability 1/2 and recounts; when the counted examples
are not all paired, the labels are shuffled among them instead (keeping their number).

Recounting is vectorised: with ``X`` the one-hot [distinct (head, code), counted
examples] matrix and ``L`` the [examples, permutations] positive-label matrix, the
number of positives showing each (head, code) in every permutation is ``X @ L`` (exact
in bfloat16, :mod:`circuitscan.codes.exact`) and of negatives the rest of its examples; a head's count is the number of its rows with positives and
no negatives; its total-variation distance (``statistic="tv"``) is half the sum over its
rows of ``|pos / n_pos - neg / n_neg|``. An ensemble's statistic (mean or median over members) is recomputed in
every permutation from the same label swaps.

The counts are small integers, so many permutations tie with the observed count. The
p-value decisions use is the usual ``(1 + #{null >= obs}) / (1 + B)``: valid
(P(p <= a) <= a under the null) but piled up at 1 for heads whose count never varies.
``p_randomised`` breaks the ties at random (``(#{null > obs} + U (1 + #{null = obs})) /
(1 + B)``, U uniform on (0, 1), seeded) and is exactly uniform under the null: it is
reported for calibration checks, never used to decide, so no head is called
significant by a coin flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import CircuitscanError
from ..types import Codes
from .exact import count_matmul


@dataclass(frozen=True)
class NullResult:
    """Observed statistic per head and its permutation null."""

    observed: Float[Tensor, " heads"]
    mean: Float[Tensor, " heads"]
    std: Float[Tensor, " heads"]
    z: Float[Tensor, " heads"]
    p: Float[Tensor, " heads"]  # (1 + #{null >= obs}) / (1 + permutations): valid, conservative
    p_randomised: Float[Tensor, " heads"]  # ties broken at random: exactly uniform under the null
    permutations: int
    scheme: str  # "pair-swap" or "label-shuffle"


def label_matrix(
    labels: Bool[Tensor, " n"], mask: Bool[Tensor, " n"], permutations: int, generator: torch.Generator
) -> tuple[Bool[Tensor, "n B"], str]:
    """Positive labels of ``permutations`` label-swapped copies of the counted examples."""
    n = labels.numel()
    half = n // 2
    paired = (
        n % 2 == 0
        and bool(labels[:half].all())
        and not bool(labels[half:].any())
        and torch.equal(mask[:half], mask[half:])
    )
    if paired:
        swap = torch.rand(half, permutations, generator=generator) < 0.5
        return torch.cat([~swap, swap]), "pair-swap"
    idx = mask.nonzero().flatten()
    lab = labels[idx]
    out = labels[:, None].expand(n, permutations).clone()
    for b in range(permutations):
        out[idx, b] = lab[torch.randperm(idx.numel(), generator=generator)]
    return out, "label-shuffle"


def _counts(
    codes: Int[Tensor, "n V"], keep: Bool[Tensor, " n"], L: Bool[Tensor, "n B"], n_codes: int, groups: Int[Tensor, " V"],
    n_groups: int, chunk: int = 256, statistic: str = "unique-positive",
) -> Float[Tensor, "B groups"]:
    """The statistic per group (positive-only (virtual head, code) rows, or the summed
    total-variation distance of its virtual heads), for each column of ``L``."""
    c = codes[keep]
    n_c, V = c.shape
    ids = (torch.arange(V)[None, :] * n_codes + c).reshape(-1)
    uniq, inv = torch.unique(ids, return_inverse=True)
    X = torch.zeros(uniq.numel(), n_c, dtype=torch.bfloat16)
    X[inv, torch.arange(n_c).repeat_interleave(V)] = 1.0
    shown = X.float().sum(1, keepdim=True)  # examples showing each (head, code)
    owner = groups[uniq // n_codes]
    Lk = L[keep].float()
    out = torch.zeros(n_groups, L.shape[1])  # transposed: ids add along dim 0, no copy of [ids, b]
    for lo in range(0, L.shape[1], chunk):
        block = Lk[:, lo : lo + chunk]
        pos = count_matmul(X, block)  # exact counts, in bfloat16 blocks
        neg = shown - pos
        if statistic == "tv":  # |p - q| in place; the 1/2 after the sum (exact: a power of two)
            only = pos.div_(block.sum(0).clamp_min(1)).sub_(neg.div_((1.0 - block).sum(0).clamp_min(1))).abs_()
        else:
            only = ((pos > 0) & (neg == 0)).float()  # [ids, b]
        out[:, lo : lo + chunk].index_add_(0, owner, only)
    return (0.5 * out if statistic == "tv" else out).T


def combine(stats: Float[Tensor, "S ..."], how: str) -> Tensor:
    if how == "mean":
        return stats.mean(0)
    if how == "median":
        return stats.median(0).values
    raise CircuitscanError(f"combine must be 'mean' or 'median', got {how!r}")


def label_swap_null(
    members: list[Codes],
    masks: list[Bool[Tensor, " n"]],
    *,
    permutations: int,
    seed: int = 0,
    how: str = "mean",
    groups: Int[Tensor, " V"] | None = None,
    n_groups: int | None = None,
    statistic: str = "unique-positive",
) -> NullResult:
    """The combined statistic per head and its label-swap permutation null.

    Args:
        members: one :class:`Codes` per SAE of the ensemble (same examples and labels).
        masks: which examples each member counts on.
        permutations: label-swapped recounts.
        seed: the permutations' randomness.
        how: ``"mean"`` or ``"median"`` over members.
        groups: for per-position codes, the head each code column belongs to (the
            count of a head is the sum over its columns); default: column = head.
        n_groups: number of heads (default: the number of columns).
        statistic: ``"unique-positive"`` (the paper's count) or ``"tv"``
            (:func:`circuitscan.codes.node.code_distance`).
    """
    if permutations < 1:
        raise CircuitscanError(f"permutations must be >= 1, got {permutations}")
    labels = members[0].labels
    V = members[0].codes.shape[1]
    groups = torch.arange(V) if groups is None else groups
    n_groups = V if n_groups is None else n_groups
    union = torch.zeros_like(labels)
    for m in masks:
        union |= m
    L, scheme = label_matrix(labels, union, permutations, torch.Generator().manual_seed(seed))
    L = torch.cat([labels[:, None], L], 1)  # column 0: the observed labels
    per = torch.stack([
        _counts(c.codes, m, L, c.n_codes, groups, n_groups, statistic=statistic) for c, m in zip(members, masks, strict=True)
    ])  # [S, 1 + B, heads]
    stat = combine(per, how)
    obs, null = stat[0], stat[1:]
    mean, std = null.mean(0), null.std(0, unbiased=False)
    diff = obs - mean
    z = torch.where(std > 0, diff / std.clamp_min(1e-12), torch.zeros_like(diff))
    z = torch.where((std == 0) & (diff != 0), diff.sign() * 1e6, z)
    tol = 1e-6  # counts step by >= 1/members; distances are float32 sums of the same terms
    above = (null > obs + tol).sum(0).float()
    ties = (1 + ((null - obs).abs() <= tol).sum(0)).float()  # the observed value ties with itself
    jitter = torch.rand(obs.shape, generator=torch.Generator().manual_seed(seed + 1))
    return NullResult(observed=obs, mean=mean, std=std, z=z, p=(above + ties) / (1 + permutations),
                      p_randomised=(above + jitter * ties) / (1 + permutations), permutations=permutations,
                      scheme=scheme)


def benjamini_hochberg(p: Float[Tensor, " m"], q: float) -> tuple[Bool[Tensor, " m"], Float[Tensor, " m"]]:
    """Which hypotheses BH rejects at false-discovery rate ``q``, and the BH-adjusted p-values."""
    if not 0 < q < 1:
        raise CircuitscanError(f"the false-discovery rate must be in (0, 1), got {q}")
    m = p.numel()
    order = torch.argsort(p.double(), stable=True)
    ranked = p.double()[order] * m / torch.arange(1, m + 1, dtype=torch.float64)
    adj_sorted = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    adj = torch.empty(m, dtype=torch.float64)
    adj[order] = adj_sorted
    return adj <= q, adj.float()
