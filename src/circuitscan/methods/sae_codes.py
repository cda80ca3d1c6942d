"""The paper's method: SAE on head outputs -> discrete codes -> node and head-pair scores.

Beyond the paper (all off by default, see docs/METHODS.md): an ensemble of SAEs whose
per-seed counts are combined, a label-swap permutation null giving every head a z-score,
a p-value and a Benjamini-Hochberg decision, an edge rule that keeps the head pairs
significant under the same null, and several codes per head (``aggregation="mean+last"``:
one of the mean over positions and one of the last position; ``"all"``: one per position).
With several, a head's statistic is the sum over its slots (for the count: the number of
(slot, code) pairs seen only on positives; for TV: the sum of the slots' distances), and
the label-swap null is computed on that sum, so a head gets one p-value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..activations import head_outputs
from ..codes import code_statistic, discretise, softmax_scores
from ..codes.edge import cooccurrence_both, joint_distance, top_pairs
from ..codes.null import NullResult, benjamini_hochberg, combine, label_matrix, label_swap_null
from ..config import SAEConfig, ScoringConfig, default_sae, default_scoring
from ..errors import CircuitscanError
from ..models.handle import ModelHandle
from ..rundir import PAIR_COUNTS_MEANING
from ..sae import TrainResult, fit
from ..types import Codes, HeadActivations, PromptSet, Scores
from .base import MethodSpec


@dataclass(frozen=True)
class SAECodesConfig:
    """sae-codes' settings. The default is ``--compat circuitscan`` (:data:`circuitscan.config.CIRCUITSCAN_COMPAT`);
    ``SAECodesConfig(sae=SAEConfig(), scoring=ScoringConfig())`` is the paper's method."""

    sae: SAEConfig = field(default_factory=default_sae)
    scoring: ScoringConfig = field(default_factory=default_scoring)
    level: str = "node"  # node | edge | both
    aggregation: str = "mean"  # mean | last | mean+last (two codes per head) | all (per-position codes)
    batch_size: int = 64


@dataclass(frozen=True)
class Discovery:
    """Everything one sae-codes run produced (``codes``/``train``: the first SAE of the ensemble)."""

    node: Scores
    edge: Scores | None
    codes: Codes
    train: TrainResult
    count_mask: torch.Tensor
    timings: dict[str, float]
    activations: HeadActivations | None = None
    member_codes: tuple[Codes, ...] = ()
    count_masks: tuple[torch.Tensor, ...] = ()
    null: NullResult | None = None


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(x.double().numpy())).double()


def rank_agreement(per_seed: torch.Tensor) -> float | None:
    """Mean pairwise Spearman correlation of per-seed head statistics [S, heads] (None if S < 2)."""
    S = per_seed.shape[0]
    if S < 2:
        return None
    r = torch.stack([_ranks(row) for row in per_seed])
    r = r - r.mean(1, keepdim=True)
    norm = r.norm(dim=1)
    vals = [float((r[a] @ r[b]) / (norm[a] * norm[b])) if norm[a] > 0 and norm[b] > 0 else float(torch.equal(r[a], r[b]))
            for a in range(S) for b in range(a + 1, S)]
    return sum(vals) / len(vals)


def _codes_of(sae, acts: HeadActivations, silent: str) -> Codes:
    x, z = acts.x, acts.z
    if acts.n_slots > 1:  # [n, slots, heads, d] -> virtual heads (slot, head), column slot * H + h
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        z = None if z is None else z.reshape(z.shape[0], -1, z.shape[-1])
    return discretise(sae, x, acts.labels, acts.layout, silent=silent, z=z, w_o=acts.w_o)


def _groups(acts: HeadActivations) -> torch.Tensor:
    V = acts.layout.n_total * acts.n_slots
    return torch.arange(V) % acts.layout.n_total


def _per_seed_stats(members: list[Codes], masks: list[torch.Tensor], acts: HeadActivations, sc: ScoringConfig,
                    statistic: str | None = None):
    """The per-head statistic of every SAE of the ensemble [S, heads] (per-position codes summed per head)."""
    groups, H = _groups(acts), acts.layout.n_total
    out = []
    for c, m in zip(members, masks, strict=True):
        u = code_statistic(c, statistic or sc.statistic, normalise=sc.normalise, mask=m)
        out.append(torch.zeros(H).index_add_(0, groups, u))
    return torch.stack(out)


def _distinct_codes(members: list[Codes], acts: HeadActivations) -> torch.Tensor:
    groups, H = _groups(acts), acts.layout.n_total
    per = []
    for c in members:
        V = c.codes.shape[1]
        ids = torch.unique(torch.arange(V)[None, :] * c.n_codes + c.codes)
        per.append(torch.zeros(H).index_add_(0, groups[ids // c.n_codes], torch.ones(ids.numel())))
    return torch.stack(per).mean(0)


def _node_level(acts, members, masks, sc: ScoringConfig, timings) -> tuple[Scores, NullResult | None]:
    layout = acts.layout
    shape = (layout.n_layers, layout.n_heads)
    per = _per_seed_stats(members, masks, acts, sc)
    u = combine(per, sc.combine)
    stats: dict[str, Any] = {"statistic": sc.statistic, "level": "node",
                             "distinct_codes": _distinct_codes(members, acts).reshape(shape)}
    if sc.statistic == "unique-positive":
        stats["unique_positive_codes"] = u.reshape(shape)
    else:  # the paper's count stays in the stats, for comparison
        stats["code_distance"] = u.reshape(shape)
        stats["unique_positive_codes"] = combine(_per_seed_stats(members, masks, acts, sc, "unique-positive"),
                                                 sc.combine).reshape(shape)
    if per.shape[0] > 1:
        stats["seed_std"] = per.std(0, unbiased=False).reshape(shape)
        stats["rank_agreement"] = rank_agreement(per)
        stats["n_seeds"] = per.shape[0]
    null = None
    if sc.permutations > 0:
        t = time.perf_counter()
        null = label_swap_null(members, masks, permutations=sc.permutations, seed=sc.null_seed, how=sc.combine,
                               groups=_groups(acts), n_groups=layout.n_total, statistic=sc.statistic)
        significant, q = benjamini_hochberg(null.p, sc.fdr)
        effect = null.observed - null.mean
        significant = significant & (effect >= sc.min_effect)
        stats.update({"z": null.z.reshape(shape), "p_value": null.p.reshape(shape), "effect": effect.reshape(shape),
                      "p_value_randomised": null.p_randomised.reshape(shape), "q_value": q.reshape(shape),
                      "significant": significant.reshape(shape), "null_mean": null.mean.reshape(shape),
                      "null": f"{null.scheme}, {null.permutations} permutations, BH at {sc.fdr:g}"})
        timings["null"] = time.perf_counter() - t
    if sc.node_score == "z":
        assert null is not None  # the config insists on permutations
        score = null.z
    elif sc.node_score == "count":
        score = u
    else:
        score = softmax_scores(u, layout.n_heads, sc.softmax)
    return Scores(method="sae-codes", node=score.reshape(shape), layout=layout, stats=stats), null


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


def head_normalised(acts: HeadActivations, how: str) -> HeadActivations:
    """Per-head centring (and scaling) of the activations (``SAEConfig.head_norm``)."""
    if how == "none":
        return acts
    x, z = acts.x.float(), acts.z
    # over examples (and positions, for "all"); "mean+last" centres each slot on its own mean
    dims = (0,) if acts.aggregation == "mean+last" else tuple(range(x.ndim - 2))
    x = x - x.mean(dims, keepdim=True)
    if z is not None:  # the same centring before W_O (a linear map): x stays z @ w_o
        z = z.float() - z.float().mean(dims, keepdim=True)
    if how == "standardise":
        rms = x.square().sum(-1, keepdim=True).mean(dims, keepdim=True).sqrt().clamp_min(1e-12)
        x = x / rms
        z = None if z is None else z / rms
    return HeadActivations(x=x, labels=acts.labels, layout=acts.layout, aggregation=acts.aggregation, z=z,
                           w_o=acts.w_o)


def discover_from_activations(
    acts: HeadActivations, cfg: SAECodesConfig, *, timings: dict[str, float] | None = None, paired: bool = True
) -> Discovery:
    """Train the SAE(s), discretise, and score heads from cached activations."""
    timings = dict(timings or {})
    t = time.perf_counter()
    acts = head_normalised(acts, cfg.sae.head_norm)
    train = fit(acts.x, acts.labels, cfg.sae, paired=paired)
    timings["sae_train"] = time.perf_counter() - t

    t = time.perf_counter()
    fits = list(train.members or (train,))
    members = [_codes_of(m.sae, acts, cfg.scoring.silent) for m in fits]
    timings["discretise"] = time.perf_counter() - t
    masks = []
    for m in fits:
        mask = torch.ones(acts.n_examples, dtype=torch.bool)
        if cfg.scoring.count_on == "held-out":
            mask[m.train_indices] = False
        masks.append(mask)

    t = time.perf_counter()
    node, null = _node_level(acts, members, masks, cfg.scoring, timings)
    timings["node_scores"] = time.perf_counter() - t - timings.get("null", 0.0)

    edge = None
    if cfg.level in ("edge", "both"):
        t = time.perf_counter()
        edge = _edge_level(acts, members, masks, cfg.scoring, node)
        timings["edge_scores"] = time.perf_counter() - t
    return Discovery(node=node, edge=edge, codes=members[0], train=train, count_mask=masks[0], timings=timings,
                     member_codes=tuple(members), count_masks=tuple(masks), null=null)


def run_sae_codes(model: ModelHandle, prompts: PromptSet, cfg: SAECodesConfig) -> Discovery:
    """Cache activations, then :func:`discover_from_activations`."""
    t = time.perf_counter()
    acts = head_outputs(model, prompts, aggregation=cfg.aggregation, batch_size=cfg.batch_size)
    timings = {"activations": time.perf_counter() - t}
    d = discover_from_activations(acts, cfg, timings=timings, paired=prompts.paired)
    total = sum(d.timings.values())
    passes = -(-(prompts.n_positive + prompts.n_negative) // cfg.batch_size)
    node = Scores(**{**d.node.__dict__, "wall_time_s": total, "forward_passes": passes})
    edge = None if d.edge is None else Scores(**{**d.edge.__dict__, "wall_time_s": total, "forward_passes": passes})
    return Discovery(
        node=node, edge=edge, codes=d.codes, train=d.train, count_mask=d.count_mask, timings=d.timings, activations=acts,
        member_codes=d.member_codes, count_masks=d.count_masks, null=d.null,
    )


class SAECodesScorer:
    """``sae-codes`` as a :class:`~circuitscan.methods.base.Scorer` (node level)."""

    name = "sae-codes"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return run_sae_codes(model, prompts, cfg or SAECodesConfig()).node

    def score_all(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> list[Scores]:
        """Node scores and, at ``level`` edge or both, the head scores from head pairs
        (``sae-codes-pairs``), each with the run's stage timings in ``stats``."""
        d = run_sae_codes(model, prompts, cfg or SAECodesConfig())
        stage = {"stage_seconds": dict(d.timings)}
        return [replace(x, stats={**x.stats, **stage}) for x in (d.node, d.edge) if x is not None]


def _cost(cfg: Any, model: ModelHandle, prompts: PromptSet) -> tuple[float, float, str]:
    n_all = prompts.n_positive + prompts.n_negative
    return n_all, 0, f"one pass over {n_all} prompts"


SPEC = MethodSpec(
    name="sae-codes", scorer=SAECodesScorer, config=SAECodesConfig, cost=_cost, default=True,
    settings={"batch_size": "batch_size"}, fixed={"level": "both"},
    summary="the paper's method: SAE codes of head outputs that occur only on positive prompts",
    source="O'Neill & Bui 2024, arXiv:2405.12522",
)
