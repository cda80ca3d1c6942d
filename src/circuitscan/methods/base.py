"""The one contract between circuit-finding methods and everything that evaluates them.

A method is a :class:`Scorer` (model + prompts -> per-head :class:`~circuitscan.types.Scores`)
described by a :class:`MethodSpec`: its config class, which of the shared comparison
settings it takes, what it costs, whether it scores edges or predicts one circuit per
threshold. ``compare``, its table, the report and sweeps' reference rows read only the
spec, so adding a method is one new module that defines ``SPEC`` plus one
:func:`register` line in :mod:`circuitscan.methods`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import CircuitscanError

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@runtime_checkable
class Scorer(Protocol):
    """A method: given a model and a task's prompts, score every head.

    A scorer that produces more than one score set from one run (``sae-codes``: node
    level and the paper's head scores from head pairs) also defines
    ``score_all(model, prompts, cfg) -> list[Scores]``; :func:`run_method` prefers it.
    """

    name: str

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores: ...


#: what a cost function returns: (forward prompt-rows, backward prompt-rows, what dominates)
Cost = tuple[float, float, str]

#: the comparison settings most baselines take, under the same field name
COMMON_SETTINGS: Mapping[str, str] = MappingProxyType(
    {"metric": "metric", "ablation": "ablation", "n_examples": "n_examples", "batch_size": "batch_size",
     "progress": "progress"})


def _no_cost(cfg: Any, model: ModelHandle, prompts: PromptSet) -> Cost:
    return 0.0, 0.0, "unknown"


@dataclass(frozen=True)
class MethodSpec:
    """Everything the rest of circuitscan knows about a method.

    Attributes:
        name: the name users type (``compare --methods NAME``).
        scorer: builds the :class:`Scorer`.
        config: the method's config class (a frozen dataclass, built with no arguments
            for the defaults).
        summary: one line for ``--help``, ``compare --list`` and the docs.
        settings: which fields of :class:`~circuitscan.comparison.CompareSettings` the method
            takes, as {settings field: config field}.
        fixed: config fields this method always sets in a comparison (``acdc-edge``:
            ``level="edge"``).
        cost: (config, model, prompts) -> (forward rows, backward rows, what dominates),
            for ``compare``'s time plan; upper bounds where the method can stop early.
        edges: the method scores edges (an edge-level AUC is computed for it).
        threshold_sweep: the method predicts one circuit per threshold
            (``Scores.stats["sweep"]``), so its ROC comes from that sweep.
        default: in ``compare``'s default method list.
        in_all: in ``--methods all`` (off for methods that need extra inputs).
        source: the paper or code it follows, for the docs.
    """

    name: str
    scorer: Callable[[], Scorer]
    config: type
    summary: str = ""
    settings: Mapping[str, str] = field(default_factory=lambda: COMMON_SETTINGS)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    cost: Callable[[Any, Any, Any], Cost] = _no_cost
    edges: bool = False
    threshold_sweep: bool = False
    default: bool = False
    in_all: bool = True
    source: str = ""

    def config_from(self, settings: Any) -> Any:
        """This method's config from shared comparison settings (a dataclass instance).

        Every mapped settings field the config has is copied as it is (None included:
        None means "the method's own default rule", as in the settings), then ``fixed``.
        """
        have = {f.name for f in fields(self.config)}
        kwargs = {dst: getattr(settings, src) for src, dst in self.settings.items()
                  if dst in have and hasattr(settings, src)}
        return replace(self.config(), **{**kwargs, **dict(self.fixed)})


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec | str, factory: Callable[[], Scorer] | None = None, **kw: Any) -> MethodSpec:
    """Add a method to the registry (a :class:`MethodSpec`, or a name, scorer factory and spec fields).

    Registering a name again replaces the earlier spec (tests register dummies).
    """
    if isinstance(spec, str):
        if factory is None:
            raise CircuitscanError(f"register({spec!r}): give a scorer factory or a MethodSpec")
        kw.setdefault("config", getattr(factory, "config", object))
        spec = MethodSpec(name=spec, scorer=factory, **kw)
    if not isinstance(spec, MethodSpec):
        raise CircuitscanError(f"register() takes a MethodSpec, not {type(spec).__name__}")
    if not spec.name or "," in spec.name or spec.name != spec.name.strip():
        raise CircuitscanError(f"method name {spec.name!r}: give a non-empty name without commas or spaces")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that registered a dummy clean up with this)."""
    _REGISTRY.pop(name, None)


def spec(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` of ``name`` (CircuitscanError listing the valid names if unknown)."""
    if name not in _REGISTRY:
        raise CircuitscanError(f"unknown method {name!r}; known methods: {', '.join(names())}")
    return _REGISTRY[name]


def specs() -> list[MethodSpec]:
    """Every registered method, in registration order."""
    return list(_REGISTRY.values())


def get(name: str) -> Scorer:
    """A fresh :class:`Scorer` of the method ``name``."""
    return spec(name).scorer()


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def default_names() -> list[str]:
    """The methods ``compare`` runs when none are named."""
    return [s.name for s in _REGISTRY.values() if s.default]


def all_names() -> list[str]:
    """What ``--methods all`` means."""
    return [s.name for s in _REGISTRY.values() if s.in_all]


def run_method(name: str, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> list[Scores]:
    """Every score set one run of the method produces (``score_all`` if the scorer has it)."""
    scorer = get(name)
    many = getattr(scorer, "score_all", None)
    got = many(model, prompts, cfg) if many is not None else [scorer.score(model, prompts, cfg)]
    return list(got)


def examples_used(cfg: Any, prompts: PromptSet) -> int:
    """Positive prompts a method with ``cfg.n_examples`` (None = all) runs on."""
    n = getattr(cfg, "n_examples", None)
    return prompts.n_positive if n is None else min(n, prompts.n_positive)


def plural(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"
