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
from ..codes import code_statistic, softmax_scores
from ..codes.discretise import discretise_with_change
from ..codes.null import NullResult, benjamini_hochberg, combine, label_swap_null
from ..config import SAEConfig, ScoringConfig, default_sae, default_scoring
from ..models.handle import ModelHandle
from ..sae import TrainResult, fit
from ..types import Codes, HeadActivations, PromptSet, Scores
from .base import MethodSpec
from .sae_codes_edge import _edge_level, _groups


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


def _codes_of(sae, acts: HeadActivations, silent: str, keep: torch.Tensor | None = None, change: str = "relative"
              ) -> tuple[Codes, torch.Tensor | None]:
    """Codes, and with ``keep`` every virtual head's paired feature change (in ``change`` units)."""
    x, z = acts.x, acts.z
    if acts.n_slots > 1:  # [n, slots, heads, d] -> virtual heads (slot, head), column slot * H + h
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        z = None if z is None else z.reshape(z.shape[0], -1, z.shape[-1])
    return discretise_with_change(sae, x, acts.labels, acts.layout, keep=keep, silent=silent, z=z, w_o=acts.w_o,
                                  change=change)


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


def _node_level(acts, members, masks, sc: ScoringConfig, timings,
                changes: list[torch.Tensor] | None = None) -> tuple[Scores, NullResult | None]:
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
    elif sc.node_score == "rank-change":
        score = _rank_change(u, changes, acts, stats)
    else:
        score = softmax_scores(u, layout.n_heads, sc.softmax)
    return Scores(method="sae-codes", node=score.reshape(shape), layout=layout, stats=stats), null


def _rank_change(u: torch.Tensor, changes: list[torch.Tensor] | None, acts: HeadActivations,
                 stats: dict[str, Any]) -> torch.Tensor:
    """``node_score="rank-change"``: the mean of a head's rank by the statistic ``u`` and by its paired
    feature change (mean over the ensemble; per-position changes summed per head)."""
    if not changes:  # prompts without pairs: the statistic's rank alone
        stats["node_score"] = "rank of the statistic (the prompts are not paired: no paired feature change)"
        return (_ranks(u) / u.numel()).float()
    groups, H = _groups(acts), acts.layout.n_total
    ch = torch.stack([torch.zeros(H).index_add_(0, groups, c) for c in changes]).mean(0)
    stats["paired_feature_change"] = ch.reshape(acts.layout.n_layers, acts.layout.n_heads)
    stats["node_score"] = ("mean of the ranks (in (0, 1]) by the statistic and by the paired feature change "
                           "(mean L1 distance of the head's SAE features between a prompt and its paired corruption, "
                           "over its mean L1 norm)")
    return (0.5 * (_ranks(u) + _ranks(ch)) / u.numel()).float()  # tie-aware ranks, in (0, 1]


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
    masks = []
    for m in fits:
        mask = torch.ones(acts.n_examples, dtype=torch.bool)
        if cfg.scoring.count_on == "held-out":
            mask[m.train_indices] = False
        masks.append(mask)
    want_change = cfg.scoring.node_score == "rank-change" and paired
    coded = [_codes_of(m.sae, acts, cfg.scoring.silent, mask if want_change else None, cfg.scoring.feature_change)
             for m, mask in zip(fits, masks, strict=True)]
    members = [c for c, _ in coded]
    changes = [ch for _, ch in coded] if want_change else None
    timings["discretise"] = time.perf_counter() - t

    t = time.perf_counter()
    node, null = _node_level(acts, members, masks, cfg.scoring, timings, changes)
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
