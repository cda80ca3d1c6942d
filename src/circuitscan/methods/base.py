"""The one contract between circuit-finding methods and everything that evaluates them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..errors import CircuitscanError
from ..models.handle import ModelHandle
from ..types import PromptSet, Scores


@runtime_checkable
class Scorer(Protocol):
    """A method: given a model and a task's prompts, score every head."""

    name: str

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores: ...


_REGISTRY: dict[str, Callable[[], Scorer]] = {}


def register(name: str, factory: Callable[[], Scorer]) -> None:
    _REGISTRY[name] = factory


def get(name: str) -> Scorer:
    if name not in _REGISTRY:
        raise CircuitscanError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def names() -> list[str]:
    return sorted(_REGISTRY)
