"""What every baseline shares: its config fields, the task objective, pass counting.

The baselines score heads by what happens to the task metric when heads (or edges
between them) are moved from their clean values towards an ablated value. They share:

* :class:`BaselineConfig` -- the objective's fields (metric, ablation, how many prompts,
  batch size; :class:`~circuitscan.evaluation.objective.ObjectiveConfig`) and progress;
* :class:`~circuitscan.evaluation.objective.Objective` and
  :class:`~circuitscan.evaluation.objective.PassCounter`, which live in
  :mod:`circuitscan.evaluation.objective` (edge-level faithfulness uses them too) and
  are re-exported here;
* wrapping scores with their time and passes, and the area under a threshold sweep.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..evaluation.objective import (
    Objective,
    ObjectiveConfig,
    PassCounter,
    build_objective,
    capture,
    split_heads,
)
from ..types import Scores

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle

__all__ = [
    "BaselineConfig",
    "Objective",
    "PassCounter",
    "build_objective",
    "capture",
    "finish_scores",
    "frozen_params",
    "split_heads",
    "sweep_auc",
]


@dataclass(frozen=True)
class BaselineConfig(ObjectiveConfig):
    """Fields every baseline takes: those of
    :class:`~circuitscan.evaluation.objective.ObjectiveConfig` (metric, ablation,
    n_examples, batch_size), and

    Attributes:
        progress: progress bars (None: on a terminal).
    """

    progress: bool | None = None


@contextmanager
def frozen_params(model: ModelHandle) -> Iterator[None]:
    """Within the block, no weight of the model collects gradients (activations still do)."""
    params = [p for p in model.bridge.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def finish_scores(
    method: str,
    node: Tensor,
    obj: Objective | None,
    counter: PassCounter,
    *,
    edges: dict[str, float] | None = None,
    stats: dict[str, Any] | None = None,
    layout=None,
) -> Any:
    """Wrap per-head scores into :class:`~circuitscan.types.Scores` with time and passes."""
    layout = layout or obj.model.layout
    extra = {} if obj is None else obj.describe()
    return Scores(
        method=method,
        node=node.detach().float().reshape(layout.n_layers, layout.n_heads).cpu(),
        layout=layout,
        edges=edges,
        wall_time_s=counter.seconds,
        forward_passes=counter.forward,
        backward_passes=counter.backward,
        stats={**extra, **counter.stats(), **(stats or {})},
    )


def sweep_auc(points: list[tuple[float, float]]) -> float:
    """Area under ROC points (fpr, tpr) from a threshold sweep, with (0,0) and (1,1) added.

    Points are sorted by fpr (then tpr); the curve between them is linear (trapezoids),
    as in Conmy et al.'s ROC plots of ACDC, SP and HISP.
    """
    pts = sorted({(0.0, 0.0), (1.0, 1.0), *points})
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        area += (x1 - x0) * (y0 + y1) / 2
    return float(area)
