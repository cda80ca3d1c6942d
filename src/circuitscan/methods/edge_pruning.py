"""Edge pruning (Bhaskar et al. 2024, "Finding Transformer Circuits with Edge Pruning"): learn a
mask over the edges of the computational graph.

Every edge ``s -> r`` of our graph (:mod:`circuitscan.evaluation.edges`: input and heads
into each head's q/k/v and the logits) gets a gate ``g`` in [0, 1]; the receiver reads
``g * (sender's clean value) + (1 - g) * (its ablated value)`` -- the same edge patching
the edge-level evaluation uses, with a continuous weight. Gates are hard-concrete random
variables (Louizos et al. 2018) with one learned logit per edge. Adam minimises

    loss = D(gated model) / span + lambda * E[number of open gates] / n_edges

with D = -mean goodness of the task objective (KL for ``kl``) and span = |D(every edge
patched) - D(clean)|, as :mod:`.sp` does for heads. Scores: an edge's sigmoid(final gate
logit), in (0, 1), above 1/2 where the deterministic gate keeps it more than half open
(higher = kept more surely); a head's score is the largest score of its outgoing edges.

Departures from Bhaskar et al.: their loss is the KL divergence to the full model's
outputs and they hold a target sparsity with a Lagrangian (and also mask nodes); here the
loss is the task objective (choose ``--metric kl`` for theirs), one fixed lambda, no node
masks, MLPs are wiring (never masked), far fewer steps (``steps``), one batch per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..evaluation.edges import EdgeForward, EdgeGraph, removed_all, run_edges
from ..progress import bar
from ._setup import BaselineConfig, PassCounter, build_objective, finish_scores, frozen_params
from .base import COMMON_SETTINGS, MethodSpec, examples_used
from .sp import deterministic_gates, expected_open, sample_gates

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class EdgePruningConfig(BaselineConfig):
    """Edge-pruning settings.

    Attributes:
        lam: sparsity weight (relative, see the module docstring).
        steps: optimiser steps (each on one batch of prompts, cycling).
        lr: Adam's constant learning rate.
        init_logit: initial gate logit (2.0: every gate open, deterministic gate 0.9).
        max_seconds: stop training after this long.
        seed: seed of the gates' noise.
    """

    lam: float = 1.0
    steps: int = 100
    lr: float = 0.1
    init_logit: float = 2.0
    max_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise CircuitscanError(f"edge pruning needs lambda >= 0, got {self.lam}")
        if self.steps < 1:
            raise CircuitscanError(f"edge pruning needs at least 1 step, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CircuitscanError(f"edge pruning learning rate must be > 0, got {self.lr}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise CircuitscanError(f"max_seconds must be > 0, got {self.max_seconds}")


def edge_pruning_scores(model: ModelHandle, prompts: PromptSet, cfg: EdgePruningConfig, *,
                        per_layer: bool = True) -> Scores:
    """Edge-pruning scores (the module docstring).

    ``per_layer``: the gated passes keep each sender layer's differences apart
    (:meth:`~circuitscan.evaluation.edges.EdgeForward.hooks`); False runs them through the
    single in-place buffer instead (same algorithm, same scores to float rounding, about
    4x slower per step on SmolLM2), the path before issue 16.
    """
    import torch

    counter = PassCounter()
    obj = build_objective(model, prompts, cfg, counter=counter)
    graph = EdgeGraph.for_model(model)
    fwd = EdgeForward(model, graph)
    pairs = torch.tensor(graph.edge_index())
    n_edges = pairs.shape[0]
    ends = torch.cat([torch.zeros(1, graph.n_senders, graph.n_receivers, dtype=torch.bool), removed_all(graph)])
    both = -run_edges(obj, fwd, ends, verify=True).mean(-1)
    d_clean, d_empty = float(both[0]), float(both[1])
    span = abs(d_empty - d_clean) or 1.0

    def damage(gates: torch.Tensor, index: torch.Tensor, sl: slice) -> torch.Tensor:
        removed = torch.zeros(1, graph.n_senders, graph.n_receivers)
        removed = removed.index_put((torch.zeros(n_edges, dtype=torch.long), pairs[:, 0], pairs[:, 1]), 1.0 - gates)
        src = [obj.source_z(layer, sl) for layer in range(model.layout.n_layers)]
        hooks, _ = fwd.hooks(removed=removed, source_heads=src, source_input=obj.source_input(sl), n_configs=1,
                             per_layer=per_layer)
        logits = obj.logits(obj.tokens[sl], None if obj.mask is None else obj.mask[sl], hooks)
        counter.fwd(sl.stop - sl.start)
        return -obj.goodness(logits, index).mean()

    batches = list(obj.batches())
    logit = torch.full((n_edges,), float(cfg.init_logit), requires_grad=True)
    opt = torch.optim.Adam([logit], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0, done, stopped, losses = time.perf_counter(), 0, False, []
    with frozen_params(model), bar("edge-pruning", cfg.steps, show=cfg.progress) as advance:
        for step in range(cfg.steps):
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = True
                break
            index, sl = batches[step % len(batches)]
            with torch.enable_grad():
                d = damage(sample_gates(logit, gen), index, sl)
                loss = d / span + cfg.lam * expected_open(logit) / n_edges
                opt.zero_grad()
                loss.backward()
            opt.step()
            counter.bwd(sl.stop - sl.start)
            losses.append(round(float(loss.detach()), 6))
            done += 1
            advance()
    final = torch.sigmoid(logit.detach())
    gates = deterministic_gates(logit.detach())
    names = graph.edge_names()
    edges = {n: float(v) for n, v in zip(names, final.tolist(), strict=True)}
    node = torch.zeros(model.layout.n_total)
    for (s, _), v in zip(pairs.tolist(), final.tolist(), strict=True):
        if s > 0:
            node[s - 1] = max(float(node[s - 1]), v)
    stats: dict[str, Any] = {
        "level": "edge", "roc_source": "ranking (sigmoid of the final gate logits)", "lambda": cfg.lam, "steps_done": done,
        "stopped_early": stopped, "lr": cfg.lr, "damage_clean": d_clean, "damage_all_patched": d_empty,
        "edges_kept": int((gates > 0.5).sum()), "n_edges": n_edges, "final_loss": losses[-1] if losses else None,
        "graph": graph.describe(),
    }
    return finish_scores("edge-pruning", node, obj, counter, edges=edges, stats=stats)


class EdgePruningScorer:
    """``edge-pruning`` as a :class:`~circuitscan.methods.base.Scorer`."""

    name = "edge-pruning"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return edge_pruning_scores(model, prompts, cfg or EdgePruningConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n = examples_used(cfg, prompts)
    rows = min(n, cfg.batch_size)
    return 2 * n + cfg.steps * rows, cfg.steps * rows, f"{cfg.steps} mask steps over every edge"


SPEC = MethodSpec(
    name="edge-pruning", scorer=EdgePruningScorer, config=EdgePruningConfig, cost=_cost, edges=True,
    settings={**COMMON_SETTINGS, "sp_steps": "steps", "max_seconds": "max_seconds"},
    summary="edge pruning: learned hard-concrete masks over every head-level edge",
    source="Bhaskar et al. 2024, arXiv:2406.16778",
)
