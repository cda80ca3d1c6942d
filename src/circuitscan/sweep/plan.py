"""From a sweep's spec to its work: prompt variants, SAE units and result rows.

Three levels of sharing, each keyed by a hash of everything that determines it:

* a **variant** is one prompt set (task + options, prompts per side, aggregation): one
  forward pass, cached once in the sweep directory and shared by every SAE that uses it;
* a **unit** is one trained SAE (variant, subset of examples, SAE config, seed): the unit
  of work sent to a worker;
* a **row** is one (point, seed) of the results table: a unit plus a scoring config. All
  rows of a unit are scored from the same SAE and the same codes.

Keys depend on the resolved configuration only (not on the grid's order), so a sweep can
be resumed, or its grid extended, and every finished row is found again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..config import SAEConfig, ScoringConfig
from ..errors import CircuitscanError
from ..tasks import parse_task_spec, task_options
from .contrastive import ContrastiveConfig
from .grid import AXES, PROMPT, SAE, SCORING, SUBSET, Grid

LEVELS = ("node", "edge", "both")
# F1 is recorded at these thresholds theta on softmaxed scores (Fig. 4): 1 .. 1e-16, half decades
THETAS: tuple[float, ...] = tuple(10 ** (-k / 2) for k in range(0, 33))


def digest(obj: Any, n: int = 12) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs besides the model object.

    Attributes:
        model: model spec (``toy-planted``, ``smollm2-135m``...).
        task: task spec, options allowed (``greater-than:negative=year``).
        examples: prompts per side in the base prompt set.
        prompt_seed: seed of the prompts (and of random models' weights).
        seeds: SAE seeds; every point runs once per seed.
        grid: the axes swept.
        sae, scoring, contrastive: the base configuration every point starts from.
        level: ``node``, ``edge`` or ``both`` (``edge`` and ``both`` score head pairs too).
        aggregation: head outputs over positions (base; also an axis).
        batch_size: prompts per forward pass when caching activations.
        truth: flat indices of the ground-truth heads, or None.
        truth_name: its name (for tables and reports).
        stability_k: top-k used for the overlap with the base run.
        named: the named sweep this came from, if any.
        baselines: registered methods run once on the base prompts as reference rows
            (:mod:`circuitscan.sweep.baselines`).
    """

    model: str
    task: str
    examples: int = 250
    prompt_seed: int = 0
    seeds: tuple[int, ...] = (0,)
    grid: Grid = field(default_factory=Grid)
    sae: SAEConfig = field(default_factory=SAEConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    level: str = "both"
    aggregation: str = "mean"
    batch_size: int = 64
    truth: tuple[int, ...] | None = None
    truth_name: str | None = None
    stability_k: int = 10
    named: str | None = None
    baselines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise CircuitscanError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if not self.seeds:
            raise CircuitscanError("a sweep needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise CircuitscanError(f"seeds repeat: {list(self.seeds)}")
        if self.examples < 1:
            raise CircuitscanError(f"examples must be >= 1, got {self.examples}")
        if self.stability_k < 1:
            raise CircuitscanError(f"stability_k must be >= 1, got {self.stability_k}")
        edge_axes = {"edge_k", "edge_k_frac"} & set(self.grid.names)
        if edge_axes and self.level == "node":
            raise CircuitscanError(
                f"--grid sweeps {', '.join(sorted(edge_axes))}, which only edge scoring uses; "
                "use --level both (or edge)"
            )

    def to_dict(self) -> dict[str, Any]:
        d = {
            "model": self.model, "task": self.task, "examples": self.examples, "prompt_seed": self.prompt_seed,
            "seeds": list(self.seeds), "grid": self.grid.to_dict(), "axis_kinds": dict(self.grid.kinds),
            "sae": asdict(self.sae), "scoring": asdict(self.scoring), "contrastive": asdict(self.contrastive),
            "level": self.level, "aggregation": self.aggregation, "batch_size": self.batch_size,
            "ground_truth": None if self.truth is None else {"name": self.truth_name, "heads": list(self.truth)},
            "stability_k": self.stability_k, "named": self.named, "thetas": list(THETAS),
            "baselines": list(self.baselines),
        }
        return d


@dataclass(frozen=True)
class Variant:
    """One prompt set: built and run through the model once."""

    key: str
    task: str
    options: dict[str, Any]
    n: int
    aggregation: str

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "task": self.task, "options": self.options, "n": self.n,
                "aggregation": self.aggregation}


@dataclass(frozen=True)
class RowTask:
    """One row of the table: a scoring config applied to a unit's SAE."""

    key: str
    scoring: dict[str, Any]
    edge_k_frac: float | None = None


@dataclass(frozen=True)
class UnitTask:
    """One SAE to train and the rows to score from it: what a worker receives."""

    key: str
    variant: str
    examples: int | None
    sae: dict[str, Any]
    contrastive: dict[str, Any]
    level: str
    rows: tuple[RowTask, ...]
    truth: tuple[int, ...] | None
    thetas: tuple[float, ...] = THETAS

    @property
    def seed(self) -> int:
        return int(self.sae["seed"])

    def only(self, row_keys: set[str]) -> UnitTask:
        return replace(self, rows=tuple(r for r in self.rows if r.key in row_keys))


@dataclass(frozen=True)
class RowInfo:
    """Where a row sits in the table: its point, seed, role and axis values."""

    key: str
    unit: str
    point: int | None  # index into grid.points(); None for the reference row
    seed: int
    role: str  # "grid" | "reference"
    values: dict[str, Any]


@dataclass
class Plan:
    spec: SweepSpec
    variants: dict[str, Variant]
    units: dict[str, UnitTask]
    rows: dict[str, RowInfo]  # grid rows first (point-major, then seed), then reference rows
    reference: dict[int, str]  # seed -> row key of the base configuration

    def units_for(self, row_keys: set[str]) -> list[UnitTask]:
        """The units that still have rows in ``row_keys``, trimmed to those rows, in plan order."""
        out = []
        for u in self.units.values():
            if any(r.key in row_keys for r in u.rows):
                out.append(u.only(row_keys))
        return out


def task_defaults(task: str) -> tuple[str, dict[str, Any]]:
    name, given = parse_task_spec(task)
    options = {o.name: o.default for o in task_options(name)}
    options.update(given)
    return name, options


def base_values(spec: SweepSpec) -> dict[str, Any]:
    """What each axis of the grid is when not swept (the base configuration)."""
    _, options = task_defaults(spec.task)
    out: dict[str, Any] = {}
    for name in spec.grid.names:
        kind = spec.grid.kind(name)
        if kind == PROMPT:
            out[name] = spec.aggregation if name == "aggregation" else options.get(name)
        elif kind == SUBSET:
            out[name] = spec.examples
        elif name == "contrastive":
            out[name] = spec.contrastive.alpha
        elif kind == SAE:
            out[name] = getattr(spec.sae, _sae_field(name))
        elif name == "edge_k_frac":
            out[name] = None
        else:
            out[name] = getattr(spec.scoring, name)
    return out


def _sae_field(axis: str) -> str:
    return AXES[axis].field


def build_plan(spec: SweepSpec, points: list[dict[str, Any]] | None = None, *, reference: bool = True) -> Plan:
    """Variants, units and rows for every point of the grid (or ``points``) and seed.

    With ``reference``, the base configuration (no axis changed) runs too, once per seed,
    as the reference of the stability columns; when it is a point of the grid it is that
    point's row.
    """
    task_name, base_options = task_defaults(spec.task)
    points = spec.grid.points() if points is None else points
    kinds = dict(spec.grid.kinds)
    n_cache = max([spec.examples, *[p.get("examples", spec.examples) for p in points]])
    variants: dict[str, Variant] = {}
    units: dict[str, UnitTask] = {}
    rows: dict[str, RowInfo] = {}
    unit_rows: dict[str, list[RowTask]] = {}

    def resolve(values: dict[str, Any], seed: int) -> tuple[Variant, UnitTask, RowTask]:
        options = dict(base_options)
        aggregation = spec.aggregation
        examples = spec.examples
        sae = asdict(spec.sae)
        contrastive = asdict(spec.contrastive)
        scoring = asdict(spec.scoring)
        scoring["threshold"] = None  # a sweep reports F1 at every theta instead
        edge_k_frac = None
        for name, v in values.items():
            kind = kinds[name]
            if kind == PROMPT:
                if name == "aggregation":
                    aggregation = v
                else:
                    options[name] = v
            elif kind == SUBSET:
                examples = v
            elif name == "contrastive":
                contrastive["alpha"] = v
            elif kind == SAE:
                sae[_sae_field(name)] = v
            elif name == "edge_k_frac":
                edge_k_frac, scoring["edge_k"] = v, None
            elif kind == SCORING:
                scoring[name] = v
                if name == "edge_k":
                    edge_k_frac = None
        sae["seed"] = seed
        SAEConfig(**sae)  # validate the combination (CircuitscanError names the field)
        ScoringConfig(**scoring)
        ContrastiveConfig(**contrastive)
        vkey = digest(["variant", spec.model, task_name, options, n_cache, spec.prompt_seed, aggregation])
        variant = variants.get(vkey) or Variant(vkey, task_name, options, n_cache, aggregation)
        ukey = digest(["unit", vkey, None if examples == n_cache else examples, sae, contrastive])
        rkey = digest(["row", ukey, scoring, edge_k_frac, spec.level, spec.truth])
        unit = UnitTask(key=ukey, variant=vkey, examples=None if examples == n_cache else examples, sae=sae,
                        contrastive=contrastive, level=spec.level, rows=(), truth=spec.truth)
        return variant, unit, RowTask(rkey, scoring, edge_k_frac)

    def add(values: dict[str, Any], seed: int, point: int | None, role: str) -> str:
        variant, unit, row = resolve(values, seed)
        variants.setdefault(variant.key, variant)
        units.setdefault(unit.key, unit)
        bucket = unit_rows.setdefault(unit.key, [])
        if row.key not in rows:
            bucket.append(row)
            rows[row.key] = RowInfo(row.key, unit.key, point, seed, role, values)
        return row.key

    for i, p in enumerate(points):
        for seed in spec.seeds:
            add(p, seed, i, "grid")
    refs = {}
    if reference:
        base = base_values(spec)
        refs = {seed: add(base, seed, None, "reference") for seed in spec.seeds}
    units = {k: replace(u, rows=tuple(unit_rows[k])) for k, u in units.items()}
    return Plan(spec=spec, variants=variants, units=units, rows=rows, reference=refs)
