"""What every faithfulness curve shares: the circuit sizes it is measured at (MIB's
fractions of all heads or edges), its summary areas CPR and CMD (trapezoids on the linear
fraction axis, see :mod:`circuitscan.evaluation.faithfulness`), and the mean and spread of
its random baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import CircuitscanError

MIB_FRACTIONS: tuple[float, ...] = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

CURVE_POINTS = 9
"""About how many circuit sizes a faithfulness curve visits by default (:func:`curve_sizes`).
CPR and CMD read only the MIB sizes; on SmolLM2-135M's 270 heads those are 9 distinct sizes
(0, 1, 2, 5, 13, 27, 54, 135, 270) and the curve is exactly them. Models with fewer distinct
MIB sizes get log-spaced sizes between them, models of up to 8 heads every size. The earlier
default, 20, gave the same CPR and CMD (and, each size having its own random draws, the same
random baselines) from 2.4x the circuits on SmolLM2; its extra points only drew the curve."""


def mib_sizes(n_total: int) -> list[int]:
    """Circuit sizes (heads) at :data:`MIB_FRACTIONS`: ``floor(x * n_total)``."""
    return [int(math.floor(x * n_total + 1e-9)) for x in MIB_FRACTIONS]


def curve_sizes(n_total: int, max_points: int = CURVE_POINTS) -> list[int]:
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


def random_band(rand: Any, n_sizes: int, samples: int) -> tuple[list[float], list[float]]:
    """Mean and std (Bessel's correction; 0 for one sample) over the random circuits of each size.

    Args:
        rand: faithfulness of the random circuits, ``[n_sizes * samples]`` (size-major), or
            None when there are none.
        n_sizes: circuit sizes on the curve.
        samples: random circuits per size.

    Returns:
        Two lists of ``n_sizes`` floats (NaN when there are no random circuits).
    """
    import torch

    if rand is None or not samples:
        return [float("nan")] * n_sizes, [float("nan")] * n_sizes
    rand = rand.reshape(n_sizes, samples)
    return rand.mean(-1).tolist(), (rand.std(-1) if samples > 1 else torch.zeros(n_sizes)).tolist()


RANDOM_EXAMPLES = 16
"""Default number of examples (the evaluator's first ones) random circuits are run on. A random
baseline is a mean and std over draws of heads, and its spread comes from which heads are
drawn, not from which prompts: on SmolLM2-135M IOI at 60 examples the table's 30 random
74-head circuits give -0.065 ± 0.387 on all 60 prompts and -0.101 ± 0.384 on the first 16
(the means differ by half the standard error 0.07), ``cpr_random`` 0.335 and 0.313 (its
standard error ≈ 0.06), from 2,816 rows instead of 7,200 (random circuits are ~100 of the
~117 an evaluation runs). Each random circuit is normalised by the clean and empty means over
the same examples. The method circuits and the baselines use every example (docs/METHODS.md,
"Speed (issue 14)")."""


RANDOM_PRECISION = "auto"
"""Default precision of the random circuits' passes: bf16 where the hardware multiplies it
natively, else fp32 (:mod:`circuitscan.precision`). A random baseline is a mean and std over
draws; bfloat16 products move its values by ~1e-3, against a spread over draws of ~0.4 and a
standard error of its mean of ~0.06 (docs/METHODS.md "Speed (issue 14)"). The method circuits,
the clean and the empty baselines keep the evaluator's ``precision`` (fp32 by default)."""


def random_example_count(n: int, random_examples: int) -> int:
    """How many of ``n`` examples random circuits use: ``random_examples``, or all ``n`` when it is 0 or >= n."""
    if random_examples < 0:
        raise CircuitscanError(f"random_examples must be >= 0 (0 = all examples), got {random_examples}")
    return n if random_examples == 0 else min(n, random_examples)


def evaluate_with_random(evaluator: Any, fixed: Any, rand: Any, random_examples: int) -> tuple[dict, dict]:
    """Per-example values of the ``fixed`` circuits on every example and of the ``rand`` ones on the
    first :func:`random_example_count` examples, at the evaluator's ``random_precision``
    (:data:`RANDOM_PRECISION`); one :meth:`evaluate` call when both are the fixed circuits' own."""
    import torch

    def run(block: Any, n: int, precision: str | None = None) -> dict:
        if not len(block):
            return {k: torch.empty(0, n) for k in evaluator.metrics}
        return evaluator.evaluate(block, n, precision)

    r = random_example_count(evaluator.n, random_examples)
    same_precision = evaluator.resolved(evaluator.random_precision) == evaluator.resolved(evaluator.precision)
    if r == evaluator.n and same_precision:  # as before random_examples existed: one call, bit for bit
        values = run(torch.cat([fixed, rand]), r)
        return {k: v[: len(fixed)] for k, v in values.items()}, {k: v[len(fixed) :] for k, v in values.items()}
    return run(fixed, evaluator.n), run(rand, r, evaluator.random_precision)
