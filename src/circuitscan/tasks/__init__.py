"""Task generators: each builds a :class:`~circuitscan.types.PromptSet` for a model.

Use :func:`build_task` with a registered name; :data:`TASKS` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..types import PromptSet
from .ioi import build_ioi
from .planted import build_planted

TaskBuilder = Callable[..., PromptSet]

TASKS: dict[str, tuple[TaskBuilder, str]] = {
    "ioi": (build_ioi, "indirect object identification; negatives replace the repeated subject (paper)"),
    "planted": (build_planted, "signal-token task of the toy-planted model (known circuit)"),
}


def register(name: str, builder: TaskBuilder, description: str) -> None:
    """Add a task to the registry (used by task modules and by users)."""
    TASKS[name] = (builder, description)


def build_task(name: str, model: ModelHandle, n: int, *, seed: int = 0, **options: Any) -> PromptSet:
    """Build ``n`` positive and ``n`` negative prompts of task ``name`` for ``model``."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    if n < 1:
        raise TaskError(f"the number of examples must be >= 1, got {n}")
    builder, _ = TASKS[name]
    return builder(model, n, seed=seed, **options)


__all__ = ["TASKS", "build_ioi", "build_planted", "build_task", "register"]
