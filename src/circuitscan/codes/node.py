"""Node-level statistics of a head's codes: how differently they fall on positives and negatives.

``unique-positive`` (the paper): the number of codes seen at the head on positives but
never on negatives. ``tv``: the total-variation distance between the head's code
distribution on positives and on negatives, ``0.5 * sum_c |P(c | pos) - P(c | neg)|``,
in [0, 1]: 0 when every code is as frequent on both sides, 1 when no code is shared. The
count rewards a code seen once on one positive as much as one seen on every positive, and
it collapses when the SAE is sparse (few codes per head); the distance weighs each code
by how often it occurs, so it does neither.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int

from ..errors import CircuitscanError
from ..types import Codes


def _presence(codes: Int[torch.Tensor, "n heads"], n_codes: int) -> Bool[torch.Tensor, "heads codes"]:
    heads = codes.shape[1]
    present = torch.zeros(heads, n_codes, dtype=torch.bool)
    if codes.shape[0]:
        cols = torch.arange(heads).expand_as(codes)
        present[cols.reshape(-1), codes.reshape(-1)] = True
    return present


def unique_positive_codes(
    codes: Codes, *, normalise: bool = False, mask: Bool[torch.Tensor, " n"] | None = None
) -> Float[torch.Tensor, " heads"]:
    """u_i = |P_i minus N_i| per head (optionally divided by |P_i union N_i|).

    Args:
        codes: per-example, per-head codes.
        normalise: divide by the number of distinct codes seen at the head.
        mask: which examples to count (default: all).
    """
    pos, neg = _split(codes, mask)
    p = _presence(pos, codes.n_codes)
    q = _presence(neg, codes.n_codes)
    u = (p & ~q).sum(1).float()
    if normalise:
        u = u / (p | q).sum(1).clamp_min(1).float()
    return u


STATISTICS = ("unique-positive", "tv")


def _split(codes: Codes, mask: Bool[torch.Tensor, " n"] | None) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.ones_like(codes.labels) if mask is None else mask
    pos = codes.codes[keep & codes.labels]
    neg = codes.codes[keep & ~codes.labels]
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise CircuitscanError(
            f"counting codes needs positive and negative examples; got {pos.shape[0]} positive and "
            f"{neg.shape[0]} negative (use more examples than the SAE trains on, or count_on='all')"
        )
    return pos, neg


def _frequencies(codes: Int[torch.Tensor, "n heads"], n_codes: int) -> Float[torch.Tensor, "heads codes"]:
    heads = codes.shape[1]
    freq = torch.zeros(heads, n_codes, dtype=torch.float64)
    cols = torch.arange(heads).expand_as(codes)
    freq.index_put_((cols.reshape(-1), codes.reshape(-1)), torch.ones(codes.numel(), dtype=torch.float64),
                    accumulate=True)
    return freq / codes.shape[0]


def code_distance(codes: Codes, *, mask: Bool[torch.Tensor, " n"] | None = None) -> Float[torch.Tensor, " heads"]:
    """Total-variation distance per head between its codes on positives and on negatives.

    Args:
        codes: per-example, per-head codes.
        mask: which examples to count (default: all).
    """
    pos, neg = _split(codes, mask)
    diff = _frequencies(pos, codes.n_codes) - _frequencies(neg, codes.n_codes)
    return (0.5 * diff.abs().sum(1)).float()


def code_statistic(
    codes: Codes, statistic: str = "unique-positive", *, normalise: bool = False,
    mask: Bool[torch.Tensor, " n"] | None = None,
) -> Float[torch.Tensor, " heads"]:
    """The per-head statistic ``statistic`` (one of :data:`STATISTICS`)."""
    if statistic == "unique-positive":
        return unique_positive_codes(codes, normalise=normalise, mask=mask)
    if statistic == "tv":
        return code_distance(codes, mask=mask)
    raise CircuitscanError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")


def softmax_scores(
    u: Float[torch.Tensor, " heads"], n_heads: int, how: str = "global"
) -> Float[torch.Tensor, " heads"]:
    """Softmax over all heads (``"global"``) or within each layer (``"layer"``)."""
    u = u.double()  # best thresholds after softmax reach 1e-15: keep the precision
    if how == "global":
        return torch.softmax(u, 0)
    if how == "layer":
        return torch.softmax(u.reshape(-1, n_heads), 1).reshape(-1)
    raise CircuitscanError(f"softmax must be 'global' or 'layer', got {how!r}")


def node_scores(
    codes: Codes,
    *,
    normalise: bool = False,
    softmax: str = "global",
    mask: Bool[torch.Tensor, " n"] | None = None,
) -> tuple[Float[torch.Tensor, " heads"], Float[torch.Tensor, " heads"]]:
    """(raw unique-positive counts, softmaxed scores) per head, flat index order."""
    u = unique_positive_codes(codes, normalise=normalise, mask=mask)
    return u, softmax_scores(u, codes.layout.n_heads, softmax)
