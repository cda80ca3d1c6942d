"""EAP with integrated gradients on the inputs (EAP-IG; Hanna, Pezzelle & Belinkov 2024).

EAP's first-order estimate is taken at one point, where the gradient may say little
about a finite change (and vanishes for KL). EAP-IG averages the gradients over points
on the straight path between the ablated and the clean INPUT embedding:

    x_k = x(ablated) + (k / m) (x(clean) - x(ablated)),   k = 1 .. m   (m = ``steps``, default 5)

    node(A)      = | mean_i sum (z_A(ablated) - z_A(clean)) . (1/m) sum_k d goodness_i / d z_A |_{x_k} |
    edge(A -> R) = | mean_i sum (a_A(ablated) - a_A(clean)) . (1/m) sum_k d goodness_i / d in_R |_{x_k} |

The heads compute normally on each interpolated input; only the embedding is moved.
``x(ablated)`` is the corrupted prompt's embedding (corrupt), the mean embedding over
the task's prompts (mean) or zero (zero). Cost: m forward and m backward passes per
batch, plus the pass that caches the ablated values. The last step (k = m) is the clean
input, whose z give the clean values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .base import COMMON_SETTINGS, MethodSpec, examples_used
from .eap import EAPConfig, eap_scores

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class EAPIGConfig(EAPConfig):
    """Attributes: steps: points on the path (Riemann sum, right end points k/steps)."""

    steps: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise CircuitscanError(f"EAP-IG needs at least 1 step, got {self.steps}")

    @property
    def alphas(self) -> tuple[float, ...]:
        return tuple(k / self.steps for k in range(1, self.steps + 1))


def eap_ig_scores(model: ModelHandle, prompts: PromptSet, cfg: EAPIGConfig) -> Scores:
    return eap_scores(model, prompts, cfg, method="eap-ig", alphas=cfg.alphas, extra_stats={"steps": cfg.steps})


class EAPIGScorer:
    """``eap-ig`` as a :class:`~circuitscan.methods.base.Scorer`: node and edge scores."""

    name = "eap-ig"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return eap_ig_scores(model, prompts, cfg or EAPIGConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n = examples_used(cfg, prompts)
    return (2 + cfg.steps) * n, cfg.steps * n, f"{cfg.steps} forward and backward passes along the path"


SPEC = MethodSpec(
    name="eap-ig", scorer=EAPIGScorer, config=EAPIGConfig, cost=_cost, edges=True, default=True,
    settings={**COMMON_SETTINGS, "eap_ig_steps": "steps"},
    summary="EAP with integrated gradients along the corrupt -> clean input path",
    source="Hanna, Pezzelle & Belinkov 2024, arXiv:2403.17806",
)
