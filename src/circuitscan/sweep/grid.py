"""Sweep axes and grids: ``features=50,100 l1=0.01,0.02`` -> every combination, validated.

An axis is one knob of the pipeline. Where it acts decides how much work a change costs:

==========  =====================================================  ==========================
kind        axes                                                   what a new value costs
==========  =====================================================  ==========================
``prompt``  any option of the task (``negative``, ``easy_negatives``,  a forward pass per value
            ``seq_len``...), ``aggregation``                        (cached once per variant)
``subset``  ``examples`` (prompts per side, a prefix of one cache)  nothing: a slice
``sae``     ``features``, ``l1``, ``lr``, ``epochs``,               an SAE per value
            ``train_examples``, ``balanced``, ``loss``,
            ``decoder_norm``, ``precision``, ``contrastive``
``scoring`` ``softmax``, ``normalise``, ``silent``, ``count_on``,   scoring only: every value
            ``edge_k``, ``edge_k_frac``                             reuses the same SAE
==========  =====================================================  ==========================

Values are parsed and checked here (a malformed ``--grid`` fails before any work);
whether a combination can run (e.g. more training examples than prompts) is found out
when it runs, and a point that fails records its error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CircuitscanError
from ..tasks import canonical, task_options

PROMPT, SUBSET, SAE, SCORING = "prompt", "subset", "sae", "scoring"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(v):
        raise ValueError("expected a finite number")
    return v


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    parse.__doc__ = "|".join(allowed)
    return parse


def _at_least(parse: Callable[[str], Any], lo: float, *, strict: bool = False) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        v = parse(text)
        if v < lo or (strict and v == lo):
            raise ValueError(f"expected a value {'>' if strict else '>='} {lo:g}")
        return v

    return check


def _fraction(text: str) -> float:
    v = _float(text)
    if not 0 < v <= 1:
        raise ValueError("expected a fraction in (0, 1]")
    return v


@dataclass(frozen=True)
class Axis:
    """One sweepable knob: its kind, the config field it sets and its value parser."""

    name: str
    kind: str
    parse: Callable[[str], Any]
    field: str
    help: str
    type_name: str


AXES: dict[str, Axis] = {
    a.name: a
    for a in (
        Axis("features", SAE, _at_least(_int, 1), "n_features", "SAE dictionary size", "int >= 1"),
        Axis("l1", SAE, _at_least(_float, 0), "l1", "sparsity weight lambda", "number >= 0"),
        Axis("lr", SAE, _at_least(_float, 0, strict=True), "lr", "Adam learning rate", "number > 0"),
        Axis("epochs", SAE, _at_least(_int, 1), "epochs", "full-batch training steps", "int >= 1"),
        Axis("train_examples", SAE, _at_least(_int, 1), "train_examples", "examples the SAE trains on (Fig. 24)",
             "int >= 1"),
        Axis("balanced", SAE, _bool, "balanced", "draw training examples half positive, half negative", "bool"),
        Axis("loss", SAE, _choice("paper", "authors"), "loss", "loss normalisation", "paper|authors"),
        Axis("decoder_norm", SAE, _choice("atoms", "authors"), "decoder_norm", "axis the decoder is normalised on",
             "atoms|authors"),
        Axis("precision", SAE, _choice("fp32", "bf16"), "precision", "SAE training matmuls", "fp32|bf16"),
        Axis("contrastive", SAE, _at_least(_float, 0), "alpha",
             "weight alpha of the contrastive loss of Appendix J (0 = the paper's SAE)", "number >= 0"),
        Axis("softmax", SCORING, _choice("global", "layer"), "softmax", "softmax over all heads or per layer (Fig. 21)",
             "global|layer"),
        Axis("normalise", SCORING, _bool, "normalise", "divide unique codes by all codes at the head (Fig. 22)",
             "bool"),
        Axis("silent", SCORING, _choice("own-code", "zero"), "silent", "code of a head where no feature fires",
             "own-code|zero"),
        Axis("count_on", SCORING, _choice("held-out", "all"), "count_on", "examples codes are counted on",
             "held-out|all"),
        Axis("edge_k", SCORING, _at_least(_int, 1), "edge_k", "top-k head pairs for edge scores (Fig. 35)", "int >= 1"),
        Axis("edge_k_frac", SCORING, _fraction, "edge_k_frac", "top-k head pairs as a fraction of all pairs (Fig. 35)",
             "fraction in (0, 1]"),
        Axis("examples", SUBSET, _at_least(_int, 1), "examples",
             "positive (and negative) prompts used, a prefix of one cached set (Fig. 23)", "int >= 1"),
        Axis("aggregation", PROMPT, _choice("mean", "last"), "aggregation", "head outputs over positions",
             "mean|last"),
    )
}

ALIASES = {
    "n_features": "features", "lambda": "l1", "lam": "l1", "k": "edge_k", "k_frac": "edge_k_frac",
    "train": "train_examples", "n": "examples", "alpha": "contrastive", "normalize": "normalise",
    "negatives": "negative",
}


def canonical_axis(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    return ALIASES.get(key, key)


@dataclass(frozen=True)
class Grid:
    """Named axes with their values, in the order given; points are the full product."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    kinds: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.axes]

    def values(self, name: str) -> tuple[Any, ...]:
        for n, v in self.axes:
            if n == name:
                return v
        raise KeyError(name)

    def kind(self, name: str) -> str:
        return self.kinds[name]

    def points(self) -> list[dict[str, Any]]:
        """Every combination, first axis slowest (an empty grid has one point: the base)."""
        names = self.names
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in self.axes))]

    def __len__(self) -> int:
        return math.prod(len(v) for _, v in self.axes)

    def merged(self, other: Grid) -> Grid:
        """This grid with ``other``'s axes added, or replacing axes of the same name."""
        axes = dict(self.axes)
        axes.update(dict(other.axes))
        return Grid(tuple(axes.items()), {**self.kinds, **other.kinds})

    def to_dict(self) -> dict[str, list[Any]]:
        return {n: list(v) for n, v in self.axes}


def task_option_axes(task: str | None) -> dict[str, Any]:
    """The task's own options (``negative``, ``easy_negatives``...), sweepable as prompt axes."""
    if task is None:
        return {}

    name = task.partition(":")[0]
    return {o.name: o for o in task_options(canonical(name))}


def valid_axes_text(task: str | None) -> str:
    own = ", ".join(task_option_axes(task)) or "none"
    return f"{', '.join(AXES)}; and the task's options ({own})"


def parse_grid(items: Sequence[str] | Iterable[str], *, task: str | None = None) -> Grid:
    """Parse ``["features=50,100", "l1=0.01,0.02"]`` (a single string is split on spaces).

    Args:
        items: ``axis=v1,v2,...`` strings.
        task: the task, whose options are also valid axes.

    Raises:
        CircuitscanError: a malformed item, an unknown axis, a bad value, a repeated axis
            or value; the message names the item and what is valid.
    """
    if isinstance(items, str):
        items = items.split()
    opts = task_option_axes(task)
    axes: dict[str, tuple[Any, ...]] = {}
    kinds: dict[str, str] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip() or not raw.strip():
            raise CircuitscanError(
                f"--grid item {item!r} must look like axis=value1,value2,... (e.g. features=50,100,200 "
                "l1=0.005,0.01)"
            )
        key = canonical_axis(name)
        texts = [t.strip() for t in raw.split(",")]
        if any(not t for t in texts):
            raise CircuitscanError(f"--grid item {item!r} has an empty value; separate values by single commas")
        if key in AXES:
            axis = AXES[key]
            parse, kind, type_name = axis.parse, axis.kind, axis.type_name
        elif key in opts:
            opt = opts[key]
            parse = _task_option_parser(opt, task)
            kind, type_name = PROMPT, opt.annotation
        else:
            raise CircuitscanError(f"--grid: unknown axis {name.strip()!r}; valid axes: {valid_axes_text(task)}")
        if key in axes:
            raise CircuitscanError(f"--grid: axis {key!r} is given twice; list all its values in one item")
        values = []
        for t in texts:
            try:
                values.append(parse(t))
            except (ValueError, CircuitscanError) as exc:
                raise CircuitscanError(
                    f"--grid: axis {key!r} cannot take {t!r} ({exc}); expected {type_name}"
                ) from None
        if len(set(map(repr, values))) != len(values):
            raise CircuitscanError(f"--grid: axis {key!r} lists a value twice: {raw!r}")
        axes[key] = tuple(values)
        kinds[key] = kind
    if "edge_k" in axes and "edge_k_frac" in axes:
        raise CircuitscanError("--grid: give edge_k (a count) or edge_k_frac (a fraction of pairs), not both")
    return Grid(tuple(axes.items()), kinds)


def _task_option_parser(opt: Any, task: str | None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        v = opt.parse(text, task or "")
        if opt.name == "easy_negatives" and v < 0:
            raise ValueError("expected a number >= 0")
        return v

    return parse


def parse_value(axis: str, text: str, *, task: str | None = None) -> Any:
    """One value of one axis (used by the search space and tests)."""
    return parse_grid([f"{axis}={text}"], task=task).values(canonical_axis(axis))[0]
