"""Exact activation patching, one head at a time: what EAP and HISP approximate.

For every head h, the model runs on the clean prompts with h alone carrying its ablated
value (corrupted, mean or zero), and the score is the size of the change of the task
metric:

    patching(h) = | mean_i goodness_i(model with h ablated) - mean_i goodness_i(clean model) |

(``goodness`` is the metric with higher = better; with KL it is -KL, so the score is
the mean KL the ablation causes). Circuits are batched: every forward pass carries as
many one-head-ablated copies of the prompts as ``max_rows`` allows, through
:class:`~circuitscan.evaluation.intervention.CircuitEvaluator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..evaluation.intervention import CircuitEvaluator
from ..evaluation.metrics import default_metric, get_metric
from ._setup import BaselineConfig, PassCounter, finish_scores
from .base import MethodSpec, examples_used

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class PatchingConfig(BaselineConfig):
    """Attributes: max_rows: prompt rows per forward pass (circuits x prompts)."""

    max_rows: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_rows < 1:
            raise CircuitscanError(f"max_rows must be >= 1, got {self.max_rows}")


def build_evaluator(model: ModelHandle, prompts: PromptSet, cfg: BaselineConfig, max_rows: int) -> CircuitEvaluator:
    """A circuit evaluator for the config's metric and ablation (it costs the clean, corrupted
    and all-ablated passes)."""
    metric = cfg.metric or default_metric(prompts)
    return CircuitEvaluator.build(model, prompts, ablation=cfg.ablation, metrics=[metric], n_examples=cfg.n_examples,
                                  max_rows=max_rows, batch_size=cfg.batch_size, progress=cfg.progress)


def goodness_sign(ev: CircuitEvaluator) -> float:
    return 1.0 if get_metric(ev.metrics[0]).higher_is_better else -1.0


def patching_scores(model: ModelHandle, prompts: PromptSet, cfg: PatchingConfig) -> Scores:
    import torch

    counter = PassCounter()
    ev = build_evaluator(model, prompts, cfg, cfg.max_rows)
    n_total = model.layout.n_total
    keep = ~torch.eye(n_total, dtype=torch.bool)  # circuit h: every head but h
    values = ev.evaluate(keep)[ev.metrics[0]]  # [n_total, n]
    sign = goodness_sign(ev)
    clean = sign * ev.clean[ev.metrics[0]].mean()
    effect = sign * values.mean(-1) - clean  # change of goodness when h is ablated
    counter.forward = ev.stats.forward_passes
    counter.rows_forward = ev.stats.rows
    stats: dict[str, Any] = {"signed": effect.reshape(model.layout.n_layers, model.layout.n_heads),
                             "metric": ev.metrics[0], "ablation": ev.ablation, "n_examples": ev.n,
                             "clean_metric": float(ev.clean[ev.metrics[0]].mean())}
    return finish_scores("patching", effect.abs(), None, counter, stats=stats, layout=model.layout)


class PatchingScorer:
    """``patching`` as a :class:`~circuitscan.methods.base.Scorer`."""

    name = "patching"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return patching_scores(model, prompts, cfg or PatchingConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n, n_total = examples_used(cfg, prompts), model.layout.n_total
    return (3 + n_total) * n, 0, f"{n_total} one-head ablations"


SPEC = MethodSpec(
    name="patching", scorer=PatchingScorer, config=PatchingConfig, cost=_cost, default=True,
    summary="activation patching: the metric's change when one head at a time is ablated",
    source="Meng et al. 2022; Wang et al. 2023",
)
