"""The edge level of sae-codes: head-pair counts U and their null, joint-code distances, the
head scores and circuit they give (``ScoringConfig.edge_rule``; docs/CALIBRATION.md "Edge rule")."""

from __future__ import annotations

from typing import Any

import torch

from ..codes import softmax_scores
from ..codes.edge import cooccurrence_both, joint_distance, top_pairs
from ..codes.null import benjamini_hochberg, combine, label_matrix
from ..config import ScoringConfig
from ..errors import CircuitscanError
from ..rundir import PAIR_COUNTS_MEANING
from ..types import Codes, HeadActivations, Scores


def _groups(acts: HeadActivations) -> torch.Tensor:
    V = acts.layout.n_total * acts.n_slots
    return torch.arange(V) % acts.layout.n_total


def _z(obs: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    mean, std = null.mean(0), null.std(0)
    diff = obs - mean
    z = torch.where(std > 0, diff / std.clamp_min(1e-12), torch.zeros_like(diff))
    return torch.where((std == 0) & (diff > 0), torch.full_like(z, 50.0), z).clamp(-50, 50)


def _fold(m: torch.Tensor, groups: torch.Tensor, n: int) -> torch.Tensor:
    """[..., V, V] over virtual heads (slot, head) -> [..., heads, heads]: the sum over slot pairs."""
    if m.shape[-1] == n:
        return m
    g = torch.nn.functional.one_hot(groups, n).to(m.dtype)
    return g.T @ m @ g


def _pair_counts(members, masks, labels, how: str, groups: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    per = [cooccurrence_both(Codes(c.codes, labels, c.layout, c.n_codes), mask=m)
           for c, m in zip(members, masks, strict=True)]
    return (combine(torch.stack([_fold(u, groups, n) for u, _ in per]), how),
            combine(torch.stack([_fold(j, groups, n) for _, j in per]), how))


def _pair_distance(members, masks, sc: ScoringConfig, groups, n: int) -> torch.Tensor:
    """Joint-code distance of every head pair [heads, heads] in [0, 1], combined over the
    ensemble (with two codes per head: the mean over the four slot pairs)."""
    L = members[0].labels[:, None]
    per = torch.stack([_fold(joint_distance(c.codes, m, L)[0], groups, n) for c, m in zip(members, masks, strict=True)])
    slots = groups.numel() // n
    return combine(per, sc.combine) / slots**2


def tie_fraction(x: torch.Tensor) -> float:
    """The fraction of values equal to some other value (0: all distinct; 1: no value alone);
    for a 2-d ``x``, of rows (lexicographic keys) equal to another row. Values within a
    millionth of the largest one count as equal, so float rounding neither makes nor
    breaks a tie (equal sums of distances added in a different order stay tied)."""
    x = x.reshape(-1, 1) if x.ndim < 2 else x
    x = x.double()
    scale = x.abs().amax(0).clamp_min(1e-300)
    x = torch.round(x / scale * 1e6)
    # one column: the flat unique (a sort), far cheaper than unique over rows
    _, counts = torch.unique(x[:, 0], return_counts=True) if x.shape[1] == 1 else torch.unique(
        x, dim=0, return_counts=True)
    return float(counts[counts > 1].sum()) / max(1, x.shape[0])


def _node_circuit_size(node: Scores, n: int) -> int:
    """Heads in the node level's circuit: its significant heads, else those above uniform."""
    sig = node.stats.get("significant")
    return int(sig.sum()) if sig is not None else int((node.flat > (1 + 1e-6) / n).sum())


def _fdr_pairs(members, masks, U, J, sc: ScoringConfig, groups, H: int, stats: dict[str, Any]) -> torch.Tensor:
    from scipy.stats import norm

    labels = members[0].labels
    union = torch.stack(masks).any(0)
    L, _ = label_matrix(labels, union, sc.edge_permutations, torch.Generator().manual_seed(sc.null_seed + 1))
    null = [_pair_counts(members, masks, L[:, b].clone(), sc.combine, groups, H) for b in range(L.shape[1])]
    zu = _z(U, torch.stack([u for u, _ in null])).fill_diagonal_(0)
    zj = _z(J, torch.stack([j for _, j in null]))
    iu = torch.triu_indices(H, H, offset=1)
    p = torch.from_numpy(norm.sf(zj[iu[0], iu[1]].double().numpy())).float()
    keep, _ = benjamini_hochberg(p, sc.fdr)
    stats.update({"head_score": zu.clamp_min(0).sum(1), "pair_ties": tie_fraction(zj[iu[0], iu[1]]),
                  "edge_rule": f"head score: sum of positive pair z-scores of U; pairs: joint-only count "
                  f"significant at FDR {sc.fdr:g} ({sc.edge_permutations} label swaps)"})
    return iu[:, keep].T.contiguous()


def _edge_level(acts, members, masks, sc: ScoringConfig, node: Scores) -> Scores:
    """Head-pair counts; head scores from the top-k pairs (paper), per-pair z-scores, or pair distances.

    ``edge_rule="fdr"``: every pair's U and joint-only U get z-scores under
    ``edge_permutations`` label swaps; a head's score is the sum of its positive U
    z-scores, and the listed pairs are those whose joint-only count is significant
    (normal tail, Benjamini-Hochberg at ``fdr``). ``"tv"``: a pair's statistic is the
    total-variation distance of its joint codes on positives and negatives; a head's
    score is its share of the summed distances over all partners and itself; the circuit
    is the top m heads, m = the node circuit's size, and the pairs the top ``edge_k``
    (default m (m - 1) / 2). ``"top-k-tv"``: top-k counts, ties broken by the mean pair
    distance (< 1, so it only orders heads of equal count).
    """
    layout = acts.layout
    if acts.aggregation == "all":
        raise CircuitscanError("the edge level needs at most two codes per head per example, aggregation 'all' "
                               f"gives {acts.n_slots}: use aggregation 'mean', 'last' or 'mean+last'")
    H, shape = layout.n_total, (layout.n_layers, layout.n_heads)
    labels, groups = members[0].labels, _groups(acts)
    stats: dict[str, Any] = {"level": "edge (head-level score from head pairs)"}
    if sc.edge_rule == "tv":  # the paper's counts U play no part: not computed
        U = J = None
        stats["pair_matrix"] = "D[h1,h2]: TV distance of the pair's joint codes on positives vs negatives"
    else:
        U, J = _pair_counts(members, masks, labels, sc.combine, groups, H)
        stats["pair_matrix"] = PAIR_COUNTS_MEANING
    iu = torch.triu_indices(H, H, offset=1)
    pair_stat = U  # what ranks the pairs
    if sc.edge_rule == "fdr":
        pairs = _fdr_pairs(members, masks, U, J, sc, groups, H, stats)
    elif sc.edge_rule == "tv":
        dist = _pair_distance(members, masks, sc, groups, H)
        pair_stat = dist.clone().fill_diagonal_(0)
        score = dist.sum(1)  # over every head, itself included (its own distance): a 2-head model still ranks
        # a pair of one separating head and any other is as distant as the head alone (and with few
        # prompts most pairs separate): ties are broken by the score of the pair's weaker head, then
        # of its stronger one (dense ranks: exact, and equal scores stay tied whatever the head order)
        rank = torch.unique(score, return_inverse=True)[1].double()
        weaker = torch.minimum(rank[:, None], rank[None, :]) * H + torch.maximum(rank[:, None], rank[None, :])
        m = _node_circuit_size(node, H)
        k = sc.edge_k if sc.edge_k is not None else m * (m - 1) // 2
        pairs = top_pairs(pair_stat, k, weaker) if k > 0 else torch.zeros(0, 2, dtype=torch.long)
        stats["pair_ties"] = tie_fraction(torch.stack([pair_stat[iu[0], iu[1]].double(), weaker[iu[0], iu[1]]], 1))
        stats.update({"head_score": score / score.sum().clamp_min(1e-12), "circuit_size": m,
                      "edge_rule": f"head score: the head's share of the summed joint-code distances (TV between "
                      f"the pair's codes on positives and negatives, over every partner and itself); circuit: the "
                      f"top {m} heads (as many as the node circuit); pairs: the top {k} by distance, then by the scores of the weaker and the stronger head"})
    elif sc.edge_rule == "top-k-tv":
        dist = _pair_distance(members, masks, sc, groups, H)
        step = 1.0 / len(members) if sc.combine == "mean" else 0.5  # the smallest step of a combined count
        pair_stat = U + 0.5 * step * dist  # dist <= 1: orders pairs of equal U only (the ranking shown)
        pairs = top_pairs(U, sc.edge_k)  # the paper's pairs, those tied with the k-th kept
        stats["edge_rule"] = "top-k pairs by U; heads by their count, ties broken by their mean joint-code distance"
    else:
        pairs = top_pairs(U, sc.edge_k)
    ue = torch.zeros(H)
    if pairs.numel():
        ue.index_add_(0, pairs[:, 0], torch.ones(pairs.shape[0]))
        ue.index_add_(0, pairs[:, 1], torch.ones(pairs.shape[0]))
    stats.setdefault("pair_ties", tie_fraction(pair_stat[iu[0], iu[1]]))
    stats.update({"pair_counts": ue.reshape(shape), "top_pairs": pairs, "significant": (ue > 0).reshape(shape)})
    if "head_score" in stats:
        score = stats.pop("head_score")
        stats["pair_z_sum" if sc.edge_rule == "fdr" else "pair_distance_share"] = score.reshape(shape)
    elif sc.edge_rule == "top-k-tv":  # + the mean pair distance (< 1): orders heads of equal count only
        score = softmax_scores(ue + (pair_stat - U).sum(1) / (0.5 * step * (H + 1)), layout.n_heads, sc.softmax)
    else:
        score = softmax_scores(ue, layout.n_heads, sc.softmax)
    if sc.edge_rule == "tv":  # the circuit: the top m heads by score
        top = torch.argsort(score, descending=True, stable=True)[: stats["circuit_size"]]
        stats["significant"] = torch.zeros(H, dtype=torch.bool).index_fill_(0, top, True).reshape(shape)
    matrix = dist if sc.edge_rule == "tv" else U  # what ranked the pairs (and their values in top_pairs)
    return Scores(method="sae-codes-pairs", node=score.reshape(shape), layout=layout, pairs=matrix, stats=stats)
