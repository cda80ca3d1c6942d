"""Shared pieces of task builders: word lists, single-token filters, equal lengths."""

from __future__ import annotations

import importlib.resources
from collections import Counter
from collections.abc import Sequence

from ..errors import TaskError
from ..models.handle import ModelHandle


def word_list(name: str) -> list[str]:
    """A word list shipped in ``circuitscan/data`` (one entry a line)."""
    text = importlib.resources.files("circuitscan.data").joinpath(name).read_text()
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def single_token_words(model: ModelHandle, words: Sequence[str], *, prefix: str = " ") -> list[str]:
    """The words that are exactly one token (with ``prefix``) for the model's tokenizer."""
    return [w for w in dict.fromkeys(words) if model.single_token_id(prefix + w) is not None]


def require(words: Sequence[str], need: int, what: str, model: ModelHandle, task: str) -> None:
    if len(words) < need:
        raise TaskError(
            f"task {task!r} cannot be built for model {model.spec!r}: only {len(words)} {what} are "
            f"single tokens for its tokenizer (need at least {need})"
        )


def modal_length(lengths: Sequence[int]) -> int:
    """The most common length (ties: the shortest)."""
    counts = Counter(lengths)
    best = max(counts.values())
    return min(n for n, c in counts.items() if c == best)
