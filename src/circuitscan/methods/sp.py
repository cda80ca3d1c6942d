"""Subnetwork probing (Cao, Sanh & Rush 2021) as modified by ACDC (Conmy et al. 2023).

Every head gets a gate g_h in [0, 1] that interpolates its output between the ablated
value (g = 0) and the clean value (g = 1): ``z = z_ablated + g (z_clean - z_ablated)``
(as O'Neill & Bui App. C.4 describe ACDC's version: activations are edited, not
weights). Gates are hard-concrete random variables (Louizos et al. 2018) with one
learned logit per head; training minimises, with Adam at a constant learning rate,

    loss = D(gated model) / span + lambda * E[number of open gates] / n_heads

where D = -mean goodness (KL for ``kl``) and span = |D(all ablated) - D(clean)|
normalises the metric so that one lambda grid suits every task. After training a head
is in the circuit when its deterministic gate exceeds 0.5.

ROC: SP predicts one circuit per lambda, so its ROC comes from a SWEEP of lambda. All
lambdas train in lockstep (each lambda's gates are a separate circuit of the same
batched forward pass and do not interact). A head's score is the largest lambda at
which it survives (0 if at none); ``stats["sweep"]`` lists every lambda's circuit.
Differences from ACDC's runs: far fewer steps by default (``steps``), one batch of
prompts per step, no final linear probe (ACDC dropped it too).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..evaluation.intervention import head_mask_hooks
from ..progress import bar
from ._setup import BaselineConfig, PassCounter, build_objective, finish_scores, frozen_params
from .acdc import _max_tau
from .base import COMMON_SETTINGS, MethodSpec, examples_used, plural

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores

# hard-concrete constants (Louizos et al. 2018)
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
DEFAULT_LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class SPConfig(BaselineConfig):
    """SP settings.

    Attributes:
        lambdas: sparsity weights to sweep (relative, see the module docstring).
        steps: optimiser steps (each on one batch of prompts, cycling).
        lr: Adam's constant learning rate.
        init_logit: initial gate logit (1.0: deterministic gate 0.78, open).
        max_seconds: stop training after this long (the circuits are read off as they are).
        seed: seed of the gates' noise.
    """

    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    steps: int = 200
    lr: float = 0.1
    init_logit: float = 1.0
    max_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lambdas or any(not (x >= 0) for x in self.lambdas):
            raise CircuitscanError(f"SP needs lambdas >= 0, got {list(self.lambdas)}")
        if self.steps < 1:
            raise CircuitscanError(f"SP needs at least 1 step, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CircuitscanError(f"SP learning rate must be > 0, got {self.lr}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise CircuitscanError(f"max_seconds must be > 0, got {self.max_seconds}")


def sample_gates(logits: Tensor, generator: Any) -> Tensor:
    """A hard-concrete sample in [0, 1] per logit (differentiable in the logits)."""
    import torch

    u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((u.log() - (1 - u).log() + logits) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def deterministic_gates(logits: Tensor) -> Tensor:
    import torch

    return (torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def expected_open(logits: Tensor) -> Tensor:
    """E[number of non-zero gates] per row: sum of P(g > 0)."""
    import torch

    return torch.sigmoid(logits - BETA * math.log(-GAMMA / ZETA)).sum(-1)


def sp_scores(model: ModelHandle, prompts: PromptSet, cfg: SPConfig) -> Scores:
    import torch

    counter = PassCounter()
    obj = build_objective(model, prompts, cfg, counter=counter)
    layout = model.layout
    n_total = layout.n_total
    lambdas = sorted(float(x) for x in cfg.lambdas)
    T = len(lambdas)
    lam = torch.tensor(lambdas)

    def damage(keep: Tensor, index: Tensor, sl: slice) -> Tensor:
        """-mean goodness of each of the C gated models ``keep`` [C, heads] on one batch: [C]."""
        C = keep.shape[0]
        hooks = head_mask_hooks(model, keep, obj.source, rows=torch.arange(sl.start, sl.stop))
        tok = obj.tokens[sl].repeat(C, 1)
        mask = None if obj.mask is None else obj.mask[sl].repeat(C, 1)
        logits = obj.logits(tok, mask, hooks)
        logits = logits.reshape(C, sl.stop - sl.start, *logits.shape[1:])
        counter.fwd(C * (sl.stop - sl.start))
        return -torch.stack([obj.goodness(logits[c], index).mean() for c in range(C)])

    batches = list(obj.batches())
    with torch.inference_mode():
        ends = torch.stack([torch.ones(n_total), torch.zeros(n_total)])
        both = sum(damage(ends, i, s) * len(i) for i, s in batches) / obj.n
    d_clean, d_empty = float(both[0]), float(both[1])
    span = abs(d_empty - d_clean) or 1.0

    gate_logits = torch.full((T, n_total), float(cfg.init_logit), requires_grad=True)
    opt = torch.optim.Adam([gate_logits], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[list[float]] = []
    t0 = time.perf_counter()
    stopped = False
    done = 0
    with frozen_params(model), bar(f"sp ({T} lambdas)", cfg.steps, show=cfg.progress) as advance:
        for step in range(cfg.steps):
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = True
                break
            index, sl = batches[step % len(batches)]
            with torch.enable_grad():
                gates = sample_gates(gate_logits, gen)
            with torch.enable_grad():
                d = damage(gates, index, sl)
                reg = expected_open(gate_logits) / n_total
                loss_t = d / span + lam * reg
                opt.zero_grad()
                loss_t.sum().backward()
            opt.step()
            counter.bwd(T * (sl.stop - sl.start))
            losses.append([round(float(v), 6) for v in loss_t.detach()])
            done += 1
            advance()
    final = deterministic_gates(gate_logits.detach())
    kept = final > 0.5
    node = _max_tau(kept, lam)
    sweep = [{"lambda": lambdas[t], "threshold": lambdas[t],
              "heads": [layout.head(i).name for i in kept[t].nonzero().flatten().tolist()]} for t in range(T)]
    stats: dict[str, Any] = {
        "roc_source": "threshold sweep (lambda)", "sweep": sweep, "lambdas": lambdas, "steps_done": done,
        "stopped_early": stopped, "lr": cfg.lr, "damage_clean": d_clean, "damage_all_ablated": d_empty,
        "final_gates": final.reshape(T, layout.n_layers, layout.n_heads),
        "final_loss": losses[-1] if losses else None,
    }
    return finish_scores("sp", node, obj, counter, stats=stats)


class SPScorer:
    """``sp`` as a :class:`~circuitscan.methods.base.Scorer`."""

    name = "sp"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return sp_scores(model, prompts, cfg or SPConfig())


SP_SETTINGS = {**COMMON_SETTINGS, "sp_steps": "steps", "max_seconds": "max_seconds"}


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    T = len(cfg.lambdas)
    rows = min(examples_used(cfg, prompts), cfg.batch_size)
    return cfg.steps * T * rows, cfg.steps * T * rows, f"{cfg.steps} steps x {plural(T, 'lambda')}"


SPEC = MethodSpec(
    name="sp", scorer=SPScorer, config=SPConfig, cost=_cost, threshold_sweep=True, default=True,
    settings=SP_SETTINGS,
    summary="subnetwork probing: learned hard-concrete head masks, one circuit per sparsity penalty",
    source="Cao, Sanh & Rush 2021, arXiv:2104.03514 (as adapted by Conmy et al. 2023)",
)
