"""Head activation-norm difference (O'Neill & Bui 2024, Appendix C.6).

The paper's sanity check of whether the SAE is needed at all: for every head, the
norm of the difference between its mean output on positive prompts and its mean
output on negative prompts (outputs aggregated over positions as ``sae-codes`` does),

    norm_diff(h) = || mean_{positives} x_h - mean_{negatives} x_h ||_2 ,

then a softmax over all heads. The softmax is monotone, so ranks and ROC AUC do not
depend on it; the scores kept are the norms themselves (a softmax over large norms
underflows to ties in float32), the softmax is in ``stats["softmax"]``. One forward pass
per batch of prompts, no metric, no ablation. The paper used 10 examples (the SAE's
training set size) and noted that more examples help on IOI and greater-than.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..activations import head_outputs
from ..errors import CircuitscanError
from ._setup import PassCounter, finish_scores
from .base import MethodSpec

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class NormDiffConfig:
    """Attributes: n_examples: first n positive and first n negative prompts (None = all);
    aggregation: over positions (``mean`` or ``last``); batch_size: prompts per pass."""

    n_examples: int | None = None
    aggregation: str = "mean"
    batch_size: int = 64
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.n_examples is not None and self.n_examples < 1:
            raise CircuitscanError(f"n_examples must be >= 1, got {self.n_examples}")
        if self.aggregation not in ("mean", "last"):
            raise CircuitscanError(f"aggregation must be 'mean' or 'last', got {self.aggregation!r}")
        if self.batch_size < 1:
            raise CircuitscanError(f"batch_size must be >= 1, got {self.batch_size}")


def norm_diff_scores(model: ModelHandle, prompts: PromptSet, cfg: NormDiffConfig) -> Scores:
    from dataclasses import replace

    counter = PassCounter()
    if cfg.n_examples is not None:
        k = cfg.n_examples

        def cut(t):
            return None if t is None else t[:k]

        prompts = replace(prompts, positive=prompts.positive[:k], negative=prompts.negative[:k],
                          positive_mask=cut(prompts.positive_mask), negative_mask=cut(prompts.negative_mask),
                          answers=cut(prompts.answers), wrong_answers=cut(prompts.wrong_answers),
                          positive_text=None, negative_text=None)
    acts = head_outputs(model, prompts, aggregation=cfg.aggregation, batch_size=cfg.batch_size,
                        progress=cfg.progress)
    n_rows = prompts.n_positive + prompts.n_negative
    counter.fwd(n_rows, -(-n_rows // cfg.batch_size))
    x = acts.x.float()
    diff = x[acts.labels].mean(0) - x[~acts.labels].mean(0)  # [heads, d_model]
    norms = diff.norm(dim=-1)
    stats: dict[str, Any] = {"softmax": norms.double().softmax(0).reshape(model.layout.n_layers, -1),
                             "n_positive": prompts.n_positive, "n_negative": prompts.n_negative,
                             "aggregation": cfg.aggregation}
    return finish_scores("norm-diff", norms, None, counter, stats=stats, layout=model.layout)


class NormDiffScorer:
    """``norm-diff`` as a :class:`~circuitscan.methods.base.Scorer`."""

    name = "norm-diff"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return norm_diff_scores(model, prompts, cfg or NormDiffConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n_all = prompts.n_positive + prompts.n_negative
    return n_all, 0, f"one pass over {n_all} prompts"


SPEC = MethodSpec(
    name="norm-diff", scorer=NormDiffScorer, config=NormDiffConfig, cost=_cost, default=True,
    settings={"batch_size": "batch_size", "progress": "progress"},
    summary="activation-free reference: mean |head output| on positives minus negatives",
)
