"""Faithfulness curves and the MIB summary numbers (CPR, CMD) for any :class:`Scores`.

Faithfulness of a circuit C (Marks et al. 2024; the paper's Figure 5):

    f(C) = (m(C) - m(∅)) / (m(M) - m(∅))

with m the task metric averaged over examples, M the unablated model and ∅ the model
with every head ablated. A curve adds heads in score order (``Scores.ranking()``:
highest score first, ties broken by head index) and is compared with random circuits
of the same sizes (10 samples by default, as in the paper), drawn uniformly and shared
by every method evaluated in the same call; each size's draws come from their own seed
(:func:`~circuitscan.evaluation.head_masks.random_circuits`), so they do not depend on
which other sizes the curve visits, and the performance table's random circuits of a
size begin with the same ones.

CPR and CMD (Mueller et al. 2025, MIB) summarise a curve over circuit sizes given as
fractions of all heads, :data:`MIB_FRACTIONS` = 0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50
and 100 %; the circuit at fraction x has ``floor(x * n_heads)`` heads. The integration
rule here is the trapezoidal rule on the linear fraction axis over [0, 1]:

    CPR = ∫ f(x) dx          (higher is better; 1 = the circuit recovers the model at every size)
    CMD = ∫ |1 - f(x)| dx    (lower is better; 0 = indistinguishable from the model)

At x = 0 the circuit is empty (f = 0) and at x = 1 it is the whole model (f = 1) by
definition.

Edge level (:func:`edge_faithfulness_curves`): for methods whose :class:`Scores` carry
per-edge scores (``Scores.edges``, port-level names such as ``"L1H0->L3H2.q"``), the
same numbers over EDGES: the circuit at fraction x keeps the ``floor(x * n_edges)``
highest-scoring edges of the model's head graph (edges a method did not score rank
last) and every other edge carries its sender's ablated value into its receiver (edge
patching, :mod:`circuitscan.evaluation.edges`); no pruning of dangling edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .curve_stats import (
    CURVE_POINTS,
    MIB_FRACTIONS,
    RANDOM_EXAMPLES,
    cmd,
    cpr,
    curve_sizes,
    evaluate_with_random,
    mib_sizes,
    random_band,
    random_example_count,
)
from .edge_faithfulness import EdgeFaithfulnessCurve, edge_faithfulness_curves
from .intervention import CircuitEvaluator, random_circuits, top_k_masks
from .metrics import table_metrics

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class FaithfulnessCurve:
    """One method's curve and its random baseline.

    Attributes:
        sizes: circuit sizes in heads; ``fractions`` = sizes / n_heads.
        values: faithfulness of the top-k circuit at each size.
        metric_values: the metric's mean m(C) at each size.
        random_mean, random_std: faithfulness of random circuits of each size
            (over ``random_samples`` draws; std with Bessel's correction), each run on
            the first ``random_examples`` examples and normalised over those.
        cpr, cmd: MIB summaries of ``values`` at :data:`MIB_FRACTIONS`; ``cpr_random``
            and ``cmd_random`` the same for ``random_mean``.
        order: the heads in the order they were added.
    """

    method: str
    metric: str
    ablation: str
    n_heads: int
    sizes: list[int]
    fractions: list[float]
    values: list[float]
    metric_values: list[float]
    random_mean: list[float]
    random_std: list[float]
    random_samples: int
    random_examples: int
    cpr: float
    cmd: float
    cpr_random: float
    cmd_random: float
    mib_fractions: list[float]
    mib_sizes: list[int]
    order: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def faithfulness_curves(
    evaluator: CircuitEvaluator,
    scores: Scores | Sequence[Scores],
    *,
    metric: str | None = None,
    sizes: Sequence[int] | None = None,
    random_samples: int = 10,
    seed: int = 0,
    random_examples: int = RANDOM_EXAMPLES,
) -> dict[str, FaithfulnessCurve]:
    """Faithfulness curves of several methods, all circuits batched together.

    Args:
        evaluator: a :class:`~circuitscan.evaluation.intervention.CircuitEvaluator`
            (it fixes the model, prompts and ablation).
        scores: one or more methods' :class:`Scores` (any method: only the per-head
            ranking is used).
        metric: the metric (default: the evaluator's first, the task's own metric).
        sizes: circuit sizes in heads (default: :func:`curve_sizes`); the MIB sizes
            are always added.
        random_samples: random circuits per size (0: none).
        seed: seed of the random circuits.
        random_examples: the random circuits run on the evaluator's first this many
            examples (0 or >= its n: all; :data:`~.curve_stats.RANDOM_EXAMPLES`).

    Returns:
        ``{method: FaithfulnessCurve}``.
    """
    import torch

    scores_list, metric = _checked(evaluator, scores, metric, random_samples)
    layout = evaluator.model.layout
    n_total = layout.n_total
    mib = mib_sizes(n_total)
    chosen = sorted(set(curve_sizes(n_total) if sizes is None else sizes) | set(mib))
    if any(not 0 <= k <= n_total for k in chosen):
        raise CircuitscanError(f"circuit sizes must lie in 0..{n_total}, got {[k for k in chosen if not 0 <= k <= n_total]}")

    orders = [[layout.index(h) for h in s.ranking()] for s in scores_list]
    blocks = [top_k_masks(order, chosen, n_total) for order in orders]
    random_block = random_circuits(n_total, chosen, random_samples, seed)
    fixed, rand = evaluate_with_random(evaluator, torch.cat(blocks), random_block, random_examples)
    faith = evaluator.faithfulness(fixed[metric], metric)
    means = fixed[metric].mean(-1)

    n_sizes = len(chosen)
    rand_faith = evaluator.faithfulness(rand[metric], metric) if random_samples else None
    r_mean, r_std = random_band(rand_faith, n_sizes, random_samples)
    at = {k: i for i, k in enumerate(chosen)}
    fractions = [k / n_total for k in chosen]
    out: dict[str, FaithfulnessCurve] = {}
    for b, (s, order) in enumerate(zip(scores_list, orders, strict=True)):
        f = faith[b * n_sizes : (b + 1) * n_sizes].tolist()
        mv = means[b * n_sizes : (b + 1) * n_sizes].tolist()
        f_mib = [f[at[k]] for k in mib]
        r_mib = [r_mean[at[k]] for k in mib]
        out[s.method] = FaithfulnessCurve(
            method=s.method,
            metric=metric,
            ablation=evaluator.ablation,
            n_heads=n_total,
            sizes=list(chosen),
            fractions=fractions,
            values=f,
            metric_values=mv,
            random_mean=r_mean,
            random_std=r_std,
            random_samples=random_samples,
            random_examples=random_example_count(evaluator.n, random_examples),
            cpr=cpr(f_mib),
            cmd=cmd(f_mib),
            cpr_random=cpr(r_mib) if random_samples else float("nan"),
            cmd_random=cmd(r_mib) if random_samples else float("nan"),
            mib_fractions=list(MIB_FRACTIONS),
            mib_sizes=mib,
            order=[layout.head(i).name for i in order],
        )
    return out


def _checked(
    evaluator: CircuitEvaluator, scores: Scores | Sequence[Scores], metric: str | None, random_samples: int
) -> tuple[list[Scores], str]:
    """The scores as a list and the metric, every argument of :func:`faithfulness_curves` checked."""
    scores_list = [scores] if not isinstance(scores, Sequence) else list(scores)
    if not scores_list:
        raise CircuitscanError("give at least one method's scores")
    layout = evaluator.model.layout
    metric = metric or evaluator.metrics[0]
    if metric not in evaluator.metrics:
        raise CircuitscanError(f"metric {metric!r} was not computed; the evaluator has {', '.join(evaluator.metrics)}")
    if random_samples < 0:
        raise CircuitscanError(f"random_samples must be >= 0, got {random_samples}")
    for s in scores_list:
        if s.layout != layout:
            raise CircuitscanError(
                f"scores of {s.method!r} are for {s.layout.n_layers}x{s.layout.n_heads} heads, the model has "
                f"{layout.n_layers}x{layout.n_heads}"
            )
    names = [s.method for s in scores_list]
    if len(set(names)) != len(names):
        raise CircuitscanError(f"method names must be distinct, got {names}")
    return scores_list, metric


def curves_summary(ev, curves: dict[str, FaithfulnessCurve]) -> dict[str, Any]:
    """The ``faithfulness`` block of ``metrics.json`` for curves measured with evaluator ``ev``."""
    return {
        "ablation": ev.ablation,
        "metric": ev.metrics[0],
        "n_examples": ev.n,
        "integration": "trapezoidal rule over the fraction of heads, linear axis, [0, 1]",
        "mib_fractions": next(iter(curves.values())).mib_fractions if curves else list(MIB_FRACTIONS),
        "curves": {m: {k: v for k, v in c.to_dict().items() if k not in ("method", "metric", "ablation", "cpr", "cmd")}
                   for m, c in curves.items()},
        "cpr": {m: c.cpr for m, c in curves.items()},
        "cmd": {m: c.cmd for m, c in curves.items()},
        "cpr_random": {m: c.cpr_random for m, c in curves.items()},
        "cmd_random": {m: c.cmd_random for m, c in curves.items()},
    }


def faithfulness_curve(
    model: ModelHandle,
    prompts: PromptSet,
    scores: Scores,
    *,
    ablation: str = "corrupt",
    metric: str | None = None,
    sizes: Sequence[int] | None = None,
    random_samples: int = 10,
    seed: int = 0,
    n_examples: int | None = None,
    max_rows: int = 256,
    random_examples: int = RANDOM_EXAMPLES,
) -> FaithfulnessCurve:
    """One method's faithfulness curve, building the evaluator on the way."""
    metrics = table_metrics(prompts, metric) if metric else None
    ev = CircuitEvaluator.build(model, prompts, ablation=ablation, metrics=metrics, n_examples=n_examples,
                                max_rows=max_rows)
    return faithfulness_curves(ev, scores, metric=metric, sizes=sizes, random_samples=random_samples,
                               seed=seed, random_examples=random_examples)[scores.method]


__all__ = ["CURVE_POINTS", "MIB_FRACTIONS", "EdgeFaithfulnessCurve", "FaithfulnessCurve", "cmd", "cpr", "curve_sizes", "curves_summary",
           "edge_faithfulness_curves", "faithfulness_curve", "faithfulness_curves", "mib_sizes"]
