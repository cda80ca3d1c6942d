"""Circuit performance (the paper's Table 2): each circuit measured with every head outside it ablated.

Rows:

=====================  ==================================================================
``clean model``        every head kept (the model itself, M)
``all heads ablated``  no head kept (∅); the paper's "corrupted" row
``corrupted input``    the model run on the corrupted prompts (corrupt ablation only),
                       scored against the clean prompts' answers
``ground truth``       the reference circuit, where one exists
``<method>``           a method's predicted circuit (best-F1 threshold, a given θ or size)
``<method> complement`` every head except that circuit
``random k heads``     k heads drawn uniformly, mean and std over ``random_samples`` draws,
                       each on the first ``random_examples`` prompts (``samples``, ``examples``)
=====================  ==================================================================

``normalised`` values are (m - m(∅)) / (m(M) - m(∅)): 0 = all heads ablated, 1 = the
clean model (the paper's normalised logit difference); a random row's m(M) and m(∅) are
means over the same prompts as its circuits. Where the task metric is a
logit difference, ``prob_multiplier`` = exp(mean logit difference) is added (for the
random row: the mean and std over draws of each draw's multiplier).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .curve_stats import RANDOM_EXAMPLES, evaluate_with_random, random_example_count
from .intervention import circuit_mask, random_circuits
from .metrics import normalise, probability_multiplier

RANDOM_SAMPLES = 30
"""Default random circuits per circuit size in the table. The row reports their mean and
std; with 30 draws the mean's standard error is std / 5.5 and the std itself is known
to about 13%, which on SmolLM2 IOI (std 0.27 in normalised logit difference at 48
heads) separates any circuit more than ~0.15 from random; 100 (the earlier default)
cost 3.3x the passes for a standard error of std / 10."""

if TYPE_CHECKING:
    from ..types import GroundTruth, HeadId
    from .intervention import CircuitEvaluator


@dataclass(frozen=True)
class PerformanceRow:
    """One row of the table: a circuit and its metric means."""

    name: str
    kind: str  # clean | ablated | corrupted_input | ground_truth | circuit | complement | random
    n_heads: int | None
    metrics: dict[str, float]
    normalised: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    samples: int | None = None
    heads: list[str] | None = None
    examples: int | None = None  # random rows: the prompts each draw ran on (the table's n otherwise)


@dataclass(frozen=True)
class PerformanceTable:
    ablation: str
    metric: str
    metrics: list[str]
    n_examples: int
    rows: list[PerformanceRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, name: str) -> PerformanceRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")


def _with_multiplier(means: dict[str, float]) -> dict[str, float]:
    if "logit_diff" in means:
        means = {**means, "prob_multiplier": probability_multiplier(means["logit_diff"])}
    return means


def _random_row(k: int, per: dict[str, Any], clean: dict[str, float], empty: dict[str, float],
                examples: int) -> PerformanceRow:
    """The row of the random circuits of ``k`` heads from each draw's metric means ``per``, normalised
    by the clean and empty means over the same ``examples`` prompts."""
    import torch

    means = {name: float(v.mean()) for name, v in per.items()}
    std = {name: float(v.std()) if v.numel() > 1 else 0.0 for name, v in per.items()}
    normed = {name: normalise(means[name], clean[name], empty[name]) for name in per}
    for name in list(per):
        span = clean[name] - empty[name]
        std[f"normalised_{name}"] = std[name] / abs(span) if span else float("nan")
    if "logit_diff" in per:
        mult = torch.tensor([probability_multiplier(float(v)) for v in per["logit_diff"]])
        means["prob_multiplier"] = float(mult.mean())
        std["prob_multiplier"] = float(mult.std()) if mult.numel() > 1 else 0.0
    samples = len(next(iter(per.values())))
    return PerformanceRow(f"random {k} heads", "random", k, means, normed, std=std, samples=samples,
                          examples=examples)


def circuit_performance(
    evaluator: CircuitEvaluator,
    circuits: Mapping[str, Sequence[HeadId | str]],
    *,
    ground_truth: GroundTruth | None = None,
    random_samples: int = RANDOM_SAMPLES,
    complements: bool = True,
    seed: int = 0,
    random_examples: int = RANDOM_EXAMPLES,
) -> PerformanceTable:
    """The performance table for ``circuits`` ({name: heads}), all circuits in one batch.

    Random rows are drawn for each distinct circuit size (uniformly over all heads) and
    run on the evaluator's first ``random_examples`` prompts (0 or >= its n: all;
    :data:`~.curve_stats.RANDOM_EXAMPLES`).
    """
    import torch

    layout = evaluator.model.layout
    if random_samples < 0:
        raise CircuitscanError(f"random_samples must be >= 0, got {random_samples}")
    named: list[tuple[str, str, torch.Tensor, list[str]]] = []  # (row name, kind, mask, heads)
    if ground_truth is not None:
        gt_mask = ground_truth.mask(layout)
        named.append((f"ground truth ({ground_truth.name})", "ground_truth", gt_mask,
                      sorted(h.name for h in ground_truth.heads)))
    for name, heads in circuits.items():
        m = circuit_mask(layout, heads)
        names = [layout.head(i).name for i in m.nonzero().flatten().tolist()]
        named.append((name, "circuit", m, names))
        if complements:
            named.append((f"{name} complement", "complement", ~m, None))
    sizes = sorted({int(m.sum()) for _, kind, m, _ in named if kind == "circuit"}) if random_samples else []
    rand = [random_circuits(layout.n_total, [k], random_samples, seed) for k in sizes]
    none = torch.zeros(0, layout.n_total, dtype=torch.bool)
    fixed = torch.stack([m for _, _, m, _ in named]) if named else none
    values, rand_values = evaluate_with_random(evaluator, fixed, torch.cat([none, *rand]), random_examples)

    metric_names = list(evaluator.metrics)
    clean = {k: evaluator.mean_clean(k) for k in metric_names}
    empty = {k: evaluator.mean_empty(k) for k in metric_names}

    def norm(means: dict[str, float]) -> dict[str, float]:
        return {k: normalise(means[k], clean[k], empty[k]) for k in metric_names}

    rows = [
        PerformanceRow("clean model", "clean", layout.n_total, _with_multiplier(clean), norm(clean)),
        PerformanceRow("all heads ablated", "ablated", 0, _with_multiplier(empty), norm(empty)),
    ]
    if evaluator.corrupted_input is not None:
        ci = {k: float(v.mean()) for k, v in evaluator.corrupted_input.items()}
        rows.append(PerformanceRow("corrupted input", "corrupted_input", None, _with_multiplier(ci), norm(ci)))
    for i, (name, kind, m, heads) in enumerate(named):
        means = {k: float(values[k][i].mean()) for k in metric_names}
        rows.append(PerformanceRow(name, kind, int(m.sum()), _with_multiplier(means), norm(means), heads=heads))
    r = random_example_count(evaluator.n, random_examples)
    clean_r = {k: evaluator.mean_clean(k, r) for k in metric_names}  # over the random circuits' prompts
    empty_r = {k: evaluator.mean_empty(k, r) for k in metric_names}
    offset = 0
    for k, block in zip(sizes, rand, strict=True):
        per = {name: rand_values[name][offset : offset + block.shape[0]].mean(-1) for name in metric_names}
        offset += block.shape[0]
        rows.append(_random_row(k, per, clean_r, empty_r, r))
    return PerformanceTable(
        ablation=evaluator.ablation,
        metric=metric_names[0],
        metrics=metric_names + (["prob_multiplier"] if "logit_diff" in metric_names else []),
        n_examples=evaluator.n,
        rows=rows,
    )
