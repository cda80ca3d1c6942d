"""Edge-level scores (METHOD.md section 6) without the heads^2 x codes^2 tensor.

U[h1, h2] counts the distinct code pairs (c1, c2) that heads h1 and h2 show together
on some positive example and never on a negative one. Instead of building C+ and C-
([heads, heads, codes, codes], ~6.6 GB each for GPT-2 in the authors' code), we ask,
for every positive example p and head pair, two yes/no questions with matrix products:

* seen in negatives?  S[p, h1, h2] = sum_m [c_p,h1 == c_m,h1] [c_p,h2 == c_m,h2]
  (one batched matmul of the positive-vs-negative equality matrices);
* first time among positives?  D[p, h1, h2] = sum_{p' < p} [c_p,h1 == c_p',h1] [c_p,h2 == c_p',h2].

Then U = sum_p [S == 0][D == 0]. Memory is O(chunk x heads^2); time is two batched
matmuls of size n_pos x heads x n x heads.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int

from ..errors import CircuitscanError
from ..types import Codes
from .exact import count_gram


def cooccurrence_unique(
    codes: Codes, *, mask: Bool[torch.Tensor, " n"] | None = None, chunk: int = 32, joint_only: bool = False
) -> Float[torch.Tensor, "heads heads"]:
    """The head-pair matrix U (symmetric; the diagonal is the node-level count).

    With ``joint_only`` a code pair counts only when each of its two codes also occurs
    on some negative at its own head: the pair, not one of its heads alone, separates
    positives from negatives (a head with a positive-only code would otherwise make all
    its pairs look informative).
    """
    full, joint = cooccurrence_both(codes, mask=mask, chunk=chunk)
    return joint if joint_only else full


def cooccurrence_both(
    codes: Codes, *, mask: Bool[torch.Tensor, " n"] | None = None, chunk: int = 32
) -> tuple[Float[torch.Tensor, "heads heads"], Float[torch.Tensor, "heads heads"]]:
    """U and its joint-only part (see :func:`cooccurrence_unique`) in one pass."""
    keep = torch.ones_like(codes.labels) if mask is None else mask
    pos = codes.codes[keep & codes.labels]
    neg = codes.codes[keep & ~codes.labels]
    n_pos, heads = pos.shape
    if n_pos == 0 or neg.shape[0] == 0:
        raise CircuitscanError("edge scores need both positive and negative examples to count on")
    dtype = torch.float32  # counts up to n <= 2^24 are exact
    U = torch.zeros(heads, heads, dtype=dtype)
    J = torch.zeros(heads, heads, dtype=dtype)
    for lo in range(0, n_pos, chunk):
        hi = min(n_pos, lo + chunk)
        block = pos[lo:hi]  # [b, heads]
        # equality with every negative: [b, n_neg, heads] -> batched [b, heads, n_neg] @ [b, n_neg, heads]
        eq_neg = block[:, None, :] == neg[None, :, :]
        seen_neg = count_gram(eq_neg)  # exact counts (codes/exact.py)
        # equality with earlier positives (strictly before p)
        earlier = torch.arange(hi)[None, :] < torch.arange(lo, hi)[:, None]  # [b, hi]
        seen_before = count_gram((block[:, None, :] == pos[None, :hi, :]) & earlier[:, :, None])
        hit = (seen_neg == 0) & (seen_before == 0)
        U += hit.to(dtype).sum(0)
        marginal = eq_neg.any(1)  # [b, heads]: the code at this head also occurs on a negative
        J += (hit & marginal[:, :, None] & marginal[:, None, :]).to(dtype).sum(0)
    return U, J


def _rows_by_label(codes: Codes, mask: Bool[torch.Tensor, " n"] | None) -> tuple[list[list[int]], list[list[int]]]:
    """The counted positive and negative code rows as Python lists (for the slow references)."""
    keep = torch.ones_like(codes.labels) if mask is None else mask
    return codes.codes[keep & codes.labels].tolist(), codes.codes[keep & ~codes.labels].tolist()


def cooccurrence_unique_reference(
    codes: Codes, *, mask: Bool[torch.Tensor, " n"] | None = None
) -> Float[torch.Tensor, "heads heads"]:
    """The obvious, slow definition of U with Python sets (for tests)."""
    pos, neg = _rows_by_label(codes, mask)
    heads = codes.codes.shape[1]
    U = torch.zeros(heads, heads)
    for h1 in range(heads):
        for h2 in range(heads):
            p = {(row[h1], row[h2]) for row in pos}
            q = {(row[h1], row[h2]) for row in neg}
            U[h1, h2] = len(p - q)
    return U


def top_pairs(
    U: Float[torch.Tensor, "heads heads"], k: int | None, tiebreak: Float[torch.Tensor, "heads heads"] | None = None
) -> Int[torch.Tensor, "k 2"]:
    """The top-k unordered head pairs (h1 < h2) by U (then by ``tiebreak``, when given).

    Only pairs with U > 0 are eligible: a pair with no positive-only code pair carries
    no evidence, and letting index order pick among the zero-U ties would inject noise.
    ``k=None`` means half of all unordered pairs (the paper's heuristic). Pairs tied
    with the k-th are all kept, so the result never depends on head order.
    """
    heads = U.shape[0]
    iu = torch.triu_indices(heads, heads, offset=1)
    vals = U[iu[0], iu[1]]
    second = torch.zeros_like(vals) if tiebreak is None else tiebreak[iu[0], iu[1]]
    n_pairs = vals.numel()
    k = n_pairs // 2 if k is None else min(k, n_pairs)
    positive = vals > 0
    if k == 0 or not positive.any():
        return torch.zeros(0, 2, dtype=torch.long)
    order = torch.argsort(second, descending=True, stable=True)
    order = order[torch.argsort(vals[order], descending=True, stable=True)]
    kth = order[k - 1]
    chosen = positive & ((vals > vals[kth]) | ((vals == vals[kth]) & (second >= second[kth])))
    return iu[:, chosen].T.contiguous()


def edge_scores(
    codes: Codes,
    *,
    k: int | None = None,
    mask: Bool[torch.Tensor, " n"] | None = None,
) -> tuple[Float[torch.Tensor, " heads"], Float[torch.Tensor, "heads heads"], Int[torch.Tensor, "k 2"]]:
    """Per-head edge-level counts u (how often each head is in a top-k pair), U, the pairs."""
    U = cooccurrence_unique(codes, mask=mask)
    pairs = top_pairs(U, k)
    u = torch.zeros(U.shape[0])
    if pairs.numel():
        u.index_add_(0, pairs[:, 0], torch.ones(pairs.shape[0]))
        u.index_add_(0, pairs[:, 1], torch.ones(pairs.shape[0]))
    return u, U, pairs


def exact_counts(block: Int[torch.Tensor, "b 1 heads"], other: Int[torch.Tensor, "m heads"]) -> Float[torch.Tensor, "b heads heads"]:
    """For every example of ``block`` and head pair (h1, h2): how many rows of ``other``
    share its codes at both heads (exact; :mod:`circuitscan.codes.exact`)."""
    return count_gram(block == other[None])


def joint_distance(
    codes: Int[torch.Tensor, "n heads"], keep: Bool[torch.Tensor, " n"], L: Bool[torch.Tensor, "n B"], chunk: int = 8
) -> Float[torch.Tensor, "B heads heads"]:
    """Total-variation distance between the joint codes (c_h1, c_h2) of every head pair on
    positives and on negatives, for every column of the positive-label matrix ``L``.

    The diagonal is the node-level distance. No [codes, codes] table is built: an example
    in a cell (its code pair) of ``a`` positives and ``b`` negatives adds
    ``|a / n_pos - b / n_neg| / (a + b)``, so each cell adds its ``|p - q|`` once; ``a``
    and ``b`` come from :func:`exact_counts` against the positives and the negatives.
    """
    c, Y = codes[keep], L[keep]
    if Y.shape[0] == 0:
        raise CircuitscanError("edge scores need examples to count on")
    heads = c.shape[1]
    out = torch.zeros(Y.shape[1], heads, heads)
    for j in range(Y.shape[1]):
        pos, neg = c[Y[:, j]], c[~Y[:, j]]
        n_pos, n_neg = max(1, pos.shape[0]), max(1, neg.shape[0])
        for lo in range(0, c.shape[0], chunk):
            block = c[lo : lo + chunk, None, :]
            a, b = exact_counts(block, pos), exact_counts(block, neg)
            out[j] += ((a / n_pos - b / n_neg).abs() / (a + b)).sum(0)
    return 0.5 * out


def joint_distance_reference(codes: Codes, *, mask: Bool[torch.Tensor, " n"] | None = None) -> Float[torch.Tensor, "heads heads"]:
    """The obvious, slow definition of :func:`joint_distance` with dictionaries (for tests)."""
    from collections import Counter

    pos, neg = _rows_by_label(codes, mask)
    heads = codes.codes.shape[1]
    out = torch.zeros(heads, heads)
    for h1 in range(heads):
        for h2 in range(heads):
            p, q = Counter((r[h1], r[h2]) for r in pos), Counter((r[h1], r[h2]) for r in neg)
            out[h1, h2] = 0.5 * sum(abs(p[k] / len(pos) - q[k] / len(neg)) for k in set(p) | set(q))
    return out
