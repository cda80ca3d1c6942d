"""Task generators: each builds a :class:`~circuitscan.types.PromptSet` for a model.

Use :func:`build_task` with a registered name; :data:`TASKS` lists them, and
``circuitscan tasks`` prints them with their options. Options can be given as keyword
arguments or inside the name, ``"greater-than:negative=year,centuries=12-16"``, which is
how ``discover --task`` passes them. Every task also takes ``easy_negatives=K`` (the
paper's Appendix D.2: K windows of unrelated text added as extra negatives).

Every prompt set carries ``metadata["metric"]``, the name of its default metric
(``logit_diff``, ``prob_diff``, ``induction_loss`` or ``kl``); docs/TASKS.md describes
each task, its metadata and the custom-file format (:mod:`circuitscan.tasks.custom`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CircuitscanError, TaskError
from ..guards import check_count, check_task_memory, check_type
from ..models.handle import ModelHandle
from ..types import PromptSet
from .custom import load_task_file
from .docstring import build_docstring
from .easy import add_easy_negatives
from .greater_than import build_greater_than
from .induction import build_induction
from .ioi import build_ioi, build_ioi_acdc
from .planted import build_planted

TaskBuilder = Callable[..., PromptSet]

TASKS: dict[str, tuple[TaskBuilder, str]] = {
    "ioi": (build_ioi, "indirect object identification, the paper's: many templates; the negative "
            "replaces the repeated subject by a third name"),
    "ioi-acdc": (build_ioi_acdc, "indirect object identification, ACDC's: one template; the negative "
                 "replaces all three names by random ones"),
    "greater-than": (build_greater_than, "'The war lasted from the year 1732 to the year 17' -> a "
                     "year > 32; five negative types (default: range)"),
    "docstring": (build_docstring, "predict the next argument name after ':param' in a Python "
                  "docstring (ACDC's generator; default negative: random_random)"),
    "induction": (build_induction, "random tokens repeated once (positive) vs not repeated (negative)"),
    "planted": (build_planted, "signal-token task of the toy-planted model (known circuit)"),
}
ALIASES = {"greater_than": "greater-than", "greaterthan": "greater-than", "gt": "greater-than",
           "ioi_acdc": "ioi-acdc"}
COMMON_OPTIONS = {"easy_negatives": "add K windows of unrelated text as extra negatives (Appendix D.2)"}


def register(name: str, builder: TaskBuilder, description: str) -> None:
    """Add a task to the registry (used by task modules and by users)."""
    TASKS[name] = (builder, description)


@dataclass(frozen=True)
class TaskOption:
    """One keyword option of a task builder, for listings and for parsing text values."""

    name: str
    default: Any
    annotation: str

    def parse(self, text: str, task: str) -> Any:
        """Convert a command-line value (``negative=year``, ``centuries=12-16``)."""
        ann = self.annotation.replace(" ", "")
        t = text.strip()
        try:
            if t.lower() == "none" and "None" in ann:
                return None
            if ann.startswith("bool"):
                if t.lower() in ("1", "true", "yes", "on"):
                    return True
                if t.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError("expected true or false")
            if ann.startswith("tuple[int,int]"):
                parts = t.replace("..", "-").replace(":", "-").split("-")
                if len(parts) != 2:
                    raise ValueError("expected two numbers like 12-18")
                return (int(parts[0]), int(parts[1]))
            if ann.startswith("tuple[str,...]"):
                return tuple(p for p in t.split("|") if p)
            if ann.startswith("int"):
                return int(t)
            if ann.startswith("float"):
                return float(t)
            return t
        except ValueError as exc:
            raise TaskError(
                f"task {task!r}: cannot read option {self.name}={text!r} as {self.annotation} ({exc})"
            ) from None

    def describe(self) -> str:
        d = self.default
        shown = "-".join(map(str, d)) if isinstance(d, tuple) and d and len(d) == 2 and all(type(x) is int for x in d) else d
        return f"{self.name}={shown}"


def canonical(name: str) -> str:
    key = name.strip()
    key = ALIASES.get(key.lower(), key)
    if key not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return key


def task_options(name: str) -> list[TaskOption]:
    """The keyword options of task ``name`` (beyond ``n`` and ``seed``), then the common ones."""
    builder, _ = TASKS[canonical(name)]
    opts = []
    for p in inspect.signature(builder).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name != "seed":
            ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
            opts.append(TaskOption(p.name, p.default, ann))
    opts.append(TaskOption("easy_negatives", 0, "int"))
    return opts


def parse_task_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"greater-than:negative=year,centuries=12-16"`` -> (name, parsed options)."""
    name, _, rest = spec.partition(":")
    name = canonical(name)
    return name, parse_options(name, [p for p in rest.split(",") if p.strip()])


def parse_options(name: str, items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings against task ``name``'s options."""
    name = canonical(name)
    by_name = {o.name: o for o in task_options(name)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise TaskError(f"task {name!r}: option {item!r} must look like key=value")
        if key not in by_name:
            raise TaskError(f"task {name!r} has no option {key!r}; its options: {', '.join(by_name)}")
        out[key] = by_name[key].parse(value, name)
    return out


def build_task(
    name: str | None = None, model: ModelHandle | None = None, n: int | None = None, *, seed: int = 0,
    **options: Any,
) -> PromptSet:
    """Build ``n`` positive and ``n`` negative prompts of task ``name`` for ``model``.

    Args:
        name: a registered task, optionally with options: ``"greater-than:negative=year"``.
        model: the model whose tokenizer (and vocabulary) the prompts are built for.
        n: number of positive prompts (and of paired negatives).
        seed: seed for every random choice; the same seed gives the same prompts.
        **options: the task's own options (``circuitscan tasks``), and ``easy_negatives``.
    """
    check_type(name, str, "name", f"a task name; known: {', '.join(sorted(TASKS))}")
    check_type(model, ModelHandle, "model", "a ModelHandle (circuitscan.load_model('toy-planted'))")
    n = check_count(n, "n", minimum=-(2**63))
    if n < 1:
        raise TaskError(f"the number of examples must be >= 1, got {n}")
    check_type(seed, int, "seed", "a whole number")
    check_task_memory(n, f"task {name!r}")
    key, spec_options = parse_task_spec(name)
    options = {**spec_options, **options}
    valid = {o.name for o in task_options(key)}
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise TaskError(f"task {key!r} has no option {unknown[0]!r}; its options: {', '.join(sorted(valid))}")
    easy = int(options.pop("easy_negatives", 0) or 0)
    builder, _ = TASKS[key]
    prompts = builder(model, n, seed=seed, **options)
    prompts = add_easy_negatives(model, prompts, easy, seed=seed + 1) if easy else prompts
    prompts.metadata.setdefault("built_for", model.family)  # discover refuses them for another model
    return prompts


def build_prompts(
    model: ModelHandle, *, task: str | None, task_file: str | None, n: int, seed: int = 0, unequal: str = "pad"
) -> PromptSet:
    """The prompts a run asks for: task ``task`` by name (:func:`build_task`) or the custom
    task file ``task_file`` (:func:`circuitscan.tasks.custom.load_task_file`), never both.

    What ``--task`` / ``--task-file`` choose on the command line, and what ``evaluate``
    rebuilds from a run's config.json.
    """
    from pathlib import Path

    if task_file and task:
        raise CircuitscanError(
            f"give --task {task} or --task-file {task_file}, not both (a task file is a task of its own)"
        )
    if task_file:
        return load_task_file(Path(task_file), model, n=n, unequal=unequal)
    if not task:
        raise CircuitscanError("give a task: --task NAME (see `circuitscan tasks`) or --task-file FILE")
    return build_task(task, model, n, seed=seed)


__all__ = [
    "TASKS",
    "TaskOption",
    "build_docstring",
    "build_greater_than",
    "build_induction",
    "build_ioi",
    "build_ioi_acdc",
    "build_planted",
    "build_prompts",
    "build_task",
    "parse_options",
    "parse_task_spec",
    "register",
    "task_options",
]
