"""Prompts checked against the model they are run on: integer tokens, the model's family,
its vocabulary and its context length (a :class:`~circuitscan.errors.CircuitscanError` each).

Lives in ``tasks`` rather than :mod:`circuitscan.guards` because it needs the model handle
and the task vocabulary, and ``models`` itself uses the guards.
"""

from __future__ import annotations

from typing import Any

from ..errors import CircuitscanError
from ..guards import check_type
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import vocab_size


def context_length(model: Any) -> int | None:
    cfg = getattr(getattr(model, "bridge", None), "cfg", None)
    n = getattr(cfg, "n_ctx", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_model_and_prompts(model: Any, prompts: Any) -> None:
    """``model`` a ModelHandle, ``prompts`` a PromptSet of integer tokens built for it."""
    import torch

    check_type(model, ModelHandle, "model", "a ModelHandle (circuitscan.load_model('toy-planted'))")
    check_type(prompts, PromptSet, "prompts", "a PromptSet (circuitscan.build_task('planted', model, n=40))")
    for side in ("positive", "negative"):
        t = getattr(prompts, side)
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise CircuitscanError(f"prompts.{side} must be an integer tensor of token ids, got "
                                   f"{getattr(t, 'dtype', type(t).__name__)}")
    built_for = prompts.metadata.get("built_for")
    if built_for is not None and built_for != model.family:
        raise CircuitscanError(
            f"the prompts were built for a model of family {built_for!r}, but model {model.spec!r} is of family "
            f"{model.family!r}; build them again with this model (build_task(name, model, n))"
        )

    vocab = vocab_size(model)
    top = int(max(int(prompts.positive.max()), int(prompts.negative.max())))
    low = int(min(int(prompts.positive.min()), int(prompts.negative.min())))
    if low < 0 or (vocab and top >= vocab):
        raise CircuitscanError(
            f"the prompts hold token id {top if top >= vocab else low}, outside model {model.spec!r}'s vocabulary "
            f"0..{vocab - 1}; were they built for another model?"
        )
    n_ctx = context_length(model)
    if n_ctx is not None and prompts.seq_len > n_ctx:
        raise CircuitscanError(
            f"the prompts are {prompts.seq_len} tokens long, but model {model.spec!r} reads at most {n_ctx}; "
            "use shorter prompts"
        )
