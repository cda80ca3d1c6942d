"""The paper's method: SAE on head outputs -> discrete codes -> node and head-pair scores."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..activations import head_outputs
from ..codes import discretise, edge_scores, node_scores, softmax_scores
from ..config import SAEConfig, ScoringConfig
from ..models.handle import ModelHandle
from ..sae import TrainResult, fit
from ..types import Codes, HeadActivations, PromptSet, Scores


@dataclass(frozen=True)
class SAECodesConfig:
    sae: SAEConfig = field(default_factory=SAEConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    level: str = "node"  # node | edge | both
    aggregation: str = "mean"
    batch_size: int = 64


@dataclass(frozen=True)
class Discovery:
    """Everything one sae-codes run produced."""

    node: Scores
    edge: Scores | None
    codes: Codes
    train: TrainResult
    count_mask: torch.Tensor
    timings: dict[str, float]
    activations: HeadActivations | None = None


def discover_from_activations(
    acts: HeadActivations, cfg: SAECodesConfig, *, timings: dict[str, float] | None = None, paired: bool = True
) -> Discovery:
    """Train the SAE, discretise, and score heads from cached activations."""
    timings = dict(timings or {})
    t = time.perf_counter()
    train = fit(acts.x, acts.labels, cfg.sae, paired=paired)
    timings["sae_train"] = time.perf_counter() - t

    t = time.perf_counter()
    codes = discretise(train.sae, acts.x, acts.labels, acts.layout, silent=cfg.scoring.silent)
    timings["discretise"] = time.perf_counter() - t

    count_mask = torch.ones(acts.n_examples, dtype=torch.bool)
    if cfg.scoring.count_on == "held-out":
        count_mask[train.train_indices] = False

    t = time.perf_counter()
    u, soft = node_scores(codes, normalise=cfg.scoring.normalise, softmax=cfg.scoring.softmax, mask=count_mask)
    layout = acts.layout
    node = Scores(
        method="sae-codes",
        node=soft.reshape(layout.n_layers, layout.n_heads),
        layout=layout,
        stats={"unique_positive_codes": u.reshape(layout.n_layers, layout.n_heads), "level": "node"},
    )
    timings["node_scores"] = time.perf_counter() - t

    edge = None
    if cfg.level in ("edge", "both"):
        t = time.perf_counter()
        ue, U, pairs = edge_scores(codes, k=cfg.scoring.edge_k, mask=count_mask)
        soft_e = softmax_scores(ue, layout.n_heads, cfg.scoring.softmax)
        edge = Scores(
            method="sae-codes-pairs",
            node=soft_e.reshape(layout.n_layers, layout.n_heads),
            layout=layout,
            pairs=U,
            stats={
                "pair_counts": ue.reshape(layout.n_layers, layout.n_heads),
                "top_pairs": pairs,
                "level": "edge (head-level score from head pairs)",
            },
        )
        timings["edge_scores"] = time.perf_counter() - t
    return Discovery(node=node, edge=edge, codes=codes, train=train, count_mask=count_mask, timings=timings)


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
        node=node, edge=edge, codes=d.codes, train=d.train, count_mask=d.count_mask, timings=d.timings, activations=acts
    )


class SAECodesScorer:
    """``sae-codes`` as a :class:`~circuitscan.methods.base.Scorer` (node level)."""

    name = "sae-codes"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return run_sae_codes(model, prompts, cfg or SAECodesConfig()).node
