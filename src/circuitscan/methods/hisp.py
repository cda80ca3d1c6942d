"""Head importance scores for pruning (Michel, Levy & Neubig 2019), as generalised by ACDC.

Each head h gets a gate xi_h interpolating its ablated (xi = 0) and clean (xi = 1)
output; the importance is the expected size of the metric's sensitivity to the gate at
the clean model (Conmy et al. 2023, App. of O'Neill & Bui 2024, METHOD.md section 7):

    I_h = (1/n) sum_i | (z_h(x_i) - z_h(ablated)) . d goodness(x_i) / d z_h |

which is the absolute value, per example, of what EAP averages before taking it. As in
Michel et al., the scores are normalised within each layer by their L2 norm (switch off
with ``normalise=False``). Heads are ranked by I_h; the ROC comes from that ranking
(top-k for every k). One forward and one backward pass per batch on the clean prompts,
plus the pass that caches the ablated values; with KL the gradient is taken at the
ablated point (as for EAP; it vanishes at the clean model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ._setup import BaselineConfig, PassCounter, build_objective, finish_scores
from .base import MethodSpec, examples_used
from .eap import GRADIENT_POINTS, _needs_reference, attribute, resolve_gradient_point

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class HISPConfig(BaselineConfig):
    """Attributes: normalise: divide each layer's scores by their L2 norm; gradient_at: as EAP's."""

    normalise: bool = True
    gradient_at: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gradient_at is not None and self.gradient_at not in GRADIENT_POINTS:
            raise CircuitscanError(f"gradient_at must be one of {', '.join(GRADIENT_POINTS)}, got {self.gradient_at!r}")


def hisp_scores(model: ModelHandle, prompts: PromptSet, cfg: HISPConfig) -> Scores:
    counter = PassCounter()

    point = cfg.gradient_at or ("corrupted" if _needs_reference(prompts, cfg) else "clean")
    obj = build_objective(model, prompts, cfg, counter=counter, keep_clean_z=point == "corrupted")
    att = attribute(obj, edges=False, gradient_at=resolve_gradient_point(obj, point), progress=cfg.progress,
                    label="hisp")
    importance = att.node.abs().mean(0)  # [L, H]
    raw = importance.clone()
    if cfg.normalise:
        norms = importance.norm(dim=1, keepdim=True)
        importance = importance / norms.clamp_min(1e-30)
    stats: dict[str, Any] = {"gradient_at": point, "raw_importance": raw, "normalised_by_layer": cfg.normalise}
    return finish_scores("hisp", importance, obj, counter, stats=stats)


class HISPScorer:
    """``hisp`` as a :class:`~circuitscan.methods.base.Scorer`."""

    name = "hisp"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return hisp_scores(model, prompts, cfg or HISPConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n = examples_used(cfg, prompts)
    return 2 * n, n, "two forward passes and one backward pass"


SPEC = MethodSpec(
    name="hisp", scorer=HISPScorer, config=HISPConfig, cost=_cost, default=True,
    summary="head importance score for pruning: |gradient x activation| per head, layer-normalised",
    source="Michel, Levy & Neubig 2019, arXiv:1905.10650",
)
