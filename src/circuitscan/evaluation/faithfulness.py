"""Faithfulness curves and the MIB summary numbers (CPR, CMD) for any :class:`Scores`.

Faithfulness of a circuit C (Marks et al. 2024; the paper's Figure 5):

    f(C) = (m(C) - m(∅)) / (m(M) - m(∅))

with m the task metric averaged over examples, M the unablated model and ∅ the model
with every head ablated. A curve adds heads in score order (``Scores.ranking()``:
highest score first, ties broken by head index) and is compared with random circuits
of the same sizes (10 samples by default, as in the paper), drawn uniformly and shared
by every method evaluated in the same call.

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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores
    from .intervention import CircuitEvaluator

MIB_FRACTIONS: tuple[float, ...] = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def mib_sizes(n_total: int) -> list[int]:
    """Circuit sizes (heads) at :data:`MIB_FRACTIONS`: ``floor(x * n_total)``."""
    return [int(math.floor(x * n_total + 1e-9)) for x in MIB_FRACTIONS]


def curve_sizes(n_total: int, max_points: int = 20) -> list[int]:
    """Circuit sizes for a curve: every size when there are few heads, else a grid.

    The grid holds 0, the MIB sizes and sizes spaced evenly on a log scale from 1 to
    ``n_total``, about ``max_points`` in all (more only when the MIB sizes alone exceed it).
    """
    if n_total < 1:
        raise CircuitscanError(f"a model needs at least one head, got {n_total}")
    if max_points < 2:
        raise CircuitscanError(f"a curve needs at least 2 points, got {max_points}")
    if n_total + 1 <= max_points:
        return list(range(n_total + 1))
    base = set(mib_sizes(n_total)) | {0, n_total}
    sizes = set(base)
    for m in range(2, n_total + 1):
        grid = {round(math.exp(math.log(n_total) * i / (m - 1))) for i in range(m)}
        if len(base | grid) > max_points:
            break
        sizes = base | grid
    return sorted(sizes)


def _trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


def cpr(values: Sequence[float], fractions: Sequence[float] = MIB_FRACTIONS) -> float:
    """Circuit performance ratio: area under the faithfulness curve (trapezoids, linear x)."""
    _check_curve(values, fractions)
    return _trapezoid(fractions, values)


def cmd(values: Sequence[float], fractions: Sequence[float] = MIB_FRACTIONS) -> float:
    """Circuit-model difference: area between the faithfulness curve and 1."""
    _check_curve(values, fractions)
    return _trapezoid(fractions, [abs(1.0 - v) for v in values])


def _check_curve(values: Sequence[float], fractions: Sequence[float]) -> None:
    if len(values) != len(fractions) or len(values) < 2:
        raise ValueError(f"need one value per fraction (>= 2), got {len(values)} values, {len(fractions)} fractions")
    if any(b < a for a, b in zip(fractions, fractions[1:], strict=False)):
        raise ValueError("fractions must be ascending")


@dataclass(frozen=True)
class FaithfulnessCurve:
    """One method's curve and its random baseline.

    Attributes:
        sizes: circuit sizes in heads; ``fractions`` = sizes / n_heads.
        values: faithfulness of the top-k circuit at each size.
        metric_values: the metric's mean m(C) at each size.
        random_mean, random_std: faithfulness of random circuits of each size
            (over ``random_samples`` draws; std with Bessel's correction).
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

    Returns:
        ``{method: FaithfulnessCurve}``.
    """
    import torch

    from .intervention import random_masks, top_k_masks

    scores_list = [scores] if not isinstance(scores, Sequence) else list(scores)
    if not scores_list:
        raise CircuitscanError("give at least one method's scores")
    layout = evaluator.model.layout
    n_total = layout.n_total
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
    mib = mib_sizes(n_total)
    chosen = sorted(set(curve_sizes(n_total) if sizes is None else sizes) | set(mib))
    if any(not 0 <= k <= n_total for k in chosen):
        raise CircuitscanError(f"circuit sizes must lie in 0..{n_total}, got {[k for k in chosen if not 0 <= k <= n_total]}")

    orders = [[layout.index(h) for h in s.ranking()] for s in scores_list]
    blocks = [top_k_masks(order, chosen, n_total) for order in orders]
    g = torch.Generator().manual_seed(seed)
    random_block = (
        torch.cat([random_masks(n_total, k, random_samples, generator=g) for k in chosen])
        if random_samples
        else torch.zeros(0, n_total, dtype=torch.bool)
    )
    values = evaluator.evaluate(torch.cat([*blocks, random_block]))[metric]
    faith = evaluator.faithfulness(values, metric)
    means = values.mean(-1)

    n_sizes = len(chosen)
    rand = faith[len(blocks) * n_sizes :].reshape(n_sizes, random_samples) if random_samples else None
    r_mean = rand.mean(-1).tolist() if rand is not None else [float("nan")] * n_sizes
    r_std = (rand.std(-1) if random_samples > 1 else torch.zeros(n_sizes)).tolist() if rand is not None else [
        float("nan")
    ] * n_sizes
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
            cpr=cpr(f_mib),
            cmd=cmd(f_mib),
            cpr_random=cpr(r_mib) if random_samples else float("nan"),
            cmd_random=cmd(r_mib) if random_samples else float("nan"),
            mib_fractions=list(MIB_FRACTIONS),
            mib_sizes=mib,
            order=[layout.head(i).name for i in order],
        )
    return out


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
) -> FaithfulnessCurve:
    """One method's faithfulness curve, building the evaluator on the way."""
    from .intervention import CircuitEvaluator
    from .metrics import table_metrics

    metrics = table_metrics(prompts, metric) if metric else None
    ev = CircuitEvaluator.build(model, prompts, ablation=ablation, metrics=metrics, n_examples=n_examples,
                                max_rows=max_rows)
    return faithfulness_curves(ev, scores, metric=metric, sizes=sizes, random_samples=random_samples,
                               seed=seed)[scores.method]


@dataclass(frozen=True)
class EdgeFaithfulnessCurve:
    """One method's faithfulness over edge counts (MIB's edge-level CPR/CMD)."""

    method: str
    metric: str
    ablation: str
    n_edges: int
    fractions: list[float]
    sizes: list[int]
    values: list[float]
    random_mean: list[float]
    random_std: list[float]
    random_samples: int
    cpr: float
    cmd: float
    cpr_random: float
    cmd_random: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def edge_faithfulness_curves(
    model: ModelHandle,
    prompts: PromptSet,
    scores: Scores | Sequence[Scores],
    *,
    ablation: str = "corrupt",
    metric: str | None = None,
    random_samples: int = 10,
    seed: int = 0,
    n_examples: int | None = None,
    max_rows: int = 32,
) -> dict[str, EdgeFaithfulnessCurve]:
    """Faithfulness at the MIB fractions of EDGES, for every method with edge scores.

    Args:
        model, prompts: the model and the task.
        scores: methods' :class:`Scores`; those without ``edges`` are skipped.
        ablation, metric: as for node level (default metric: the task's own).
        random_samples: random edge sets per size (uniform over the graph's edges).
        n_examples: the first n positive prompts (default: all).
        max_rows: token rows per edge-patched pass; each row holds every sender's
            difference (senders x seq x d_model floats), so this bounds memory.

    Returns:
        ``{method: EdgeFaithfulnessCurve}`` (empty when no method has edge scores).
    """
    import torch

    from .edges import EdgeForward, EdgeGraph, run_edges
    from .objective import ObjectiveConfig, build_objective

    scores_list = [scores] if not isinstance(scores, Sequence) else list(scores)
    with_edges = [s for s in scores_list if s.edges]
    if not with_edges:
        return {}
    if random_samples < 0:
        raise CircuitscanError(f"random_samples must be >= 0, got {random_samples}")
    graph = EdgeGraph.for_model(model)
    pairs = graph.edge_index()
    index = {graph.edge_name(s, r): i for i, (s, r) in enumerate(pairs)}
    n_edges = len(pairs)
    for sc in with_edges:
        unknown = [e for e in sc.edges if e not in index]
        if unknown:
            raise CircuitscanError(
                f"method {sc.method!r} scores {len(unknown)} edges this model's graph does not have "
                f"(e.g. {unknown[0]!r}); edge names look like 'L1H0->L3H2.q', 'input->L0H1.v', 'L2H0->logits'"
            )
    sizes = [int(math.floor(x * n_edges + 1e-9)) for x in MIB_FRACTIONS]
    src = torch.tensor([p[0] for p in pairs])
    dst = torch.tensor([p[1] for p in pairs])

    def removed_for(kept: torch.Tensor) -> torch.Tensor:
        """[n_edges] kept flags -> [n_senders, n_receivers] removed flags."""
        removed = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
        removed[src[~kept], dst[~kept]] = True
        return removed

    configs = [removed_for(torch.ones(n_edges, dtype=torch.bool)), removed_for(torch.zeros(n_edges, dtype=torch.bool))]
    for sc in with_edges:
        score = torch.full((n_edges,), float("-inf"))
        for name, v in sc.edges.items():
            score[index[name]] = float(v)
        order = torch.sort(-score, stable=True).indices
        for k in sizes:
            kept = torch.zeros(n_edges, dtype=torch.bool)
            kept[order[:k]] = True
            configs.append(removed_for(kept))
    g = torch.Generator().manual_seed(seed)
    for k in sizes:
        for _ in range(random_samples):
            kept = torch.zeros(n_edges, dtype=torch.bool)
            kept[torch.randperm(n_edges, generator=g)[:k]] = True
            configs.append(removed_for(kept))
    obj = build_objective(model, prompts, ObjectiveConfig(metric=metric, ablation=ablation, n_examples=n_examples))
    removed = torch.stack(configs)
    unique, inverse = torch.unique(removed.reshape(removed.shape[0], -1), dim=0, return_inverse=True)
    good = run_edges(obj, EdgeForward(model, graph), unique.reshape(-1, *removed.shape[1:]), max_rows=max_rows)
    means = good.mean(-1)[inverse]
    clean, empty = float(means[0]), float(means[1])
    from .metrics import normalise

    faith = [normalise(float(v), clean, empty) for v in means]
    n_s = len(sizes)
    offset = 2 + n_s * len(with_edges)
    if random_samples:
        rand = torch.tensor(faith[offset:]).reshape(n_s, random_samples)
        r_mean = rand.mean(-1).tolist()
        r_std = (rand.std(-1) if random_samples > 1 else torch.zeros(n_s)).tolist()
    else:
        r_mean = r_std = [float("nan")] * n_s
    out = {}
    for b, sc in enumerate(with_edges):
        values = faith[2 + b * n_s : 2 + (b + 1) * n_s]
        out[sc.method] = EdgeFaithfulnessCurve(
            method=sc.method, metric=obj.metric_name, ablation=ablation, n_edges=n_edges,
            fractions=list(MIB_FRACTIONS), sizes=sizes, values=values, random_mean=r_mean, random_std=r_std,
            random_samples=random_samples, cpr=cpr(values), cmd=cmd(values),
            cpr_random=cpr(r_mean) if random_samples else float("nan"),
            cmd_random=cmd(r_mean) if random_samples else float("nan"),
        )
    return out
