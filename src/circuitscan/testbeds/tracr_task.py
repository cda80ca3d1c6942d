"""The input-level task ``tracr``: positives drawn from a program's vocabulary, ``constant`` or ``random`` negatives."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import TaskError
from ..evaluation.metrics import METRICS, Metric
from ..evaluation.metrics import register_metric as _register
from ..types import PromptSet
from .tracr_model import (
    _require,
    encode,
)

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle


NEGATIVES = ("constant", "random")

# --------------------------------------------------------------------------- the input-level task


def _draw(rng: random.Random, vocab: Sequence[Any], length: int) -> list[Any]:
    return [rng.choice(list(vocab)) for _ in range(length)]


def build_tracr_task(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    negative: str = "constant",
    length: int | None = None,
) -> PromptSet:
    """Inputs of a tracr program (positives) and input-level negatives.

    Args:
        model: a tracr model (``tracr-reverse``, ...).
        n: positives (and as many negatives); each is BOS plus ``length`` tokens drawn
            uniformly with replacement from the program's vocabulary (the paper's
            "permutations with replacement").
        seed: seed of the draws.
        negative: ``constant`` (BOS plus one random token repeated) or ``random``
            (fresh random inputs from the positives' distribution: a null control).
        length: tokens after BOS (default: the compiled ``max_seq_len``).

    Returns:
        A :class:`PromptSet` whose metric is ``tracr_error`` (the distance of the outputs
        from the clean model's, see :func:`register_metric`).
    """
    import torch

    _require(model, "task 'tracr'")
    if negative not in NEGATIVES:
        raise TaskError(f"tracr: negative must be one of {', '.join(NEGATIVES)}, got {negative!r}")
    max_len = int(model.info["max_seq_len"])
    length = max_len if length is None else int(length)
    if not 1 <= length <= max_len:
        raise TaskError(f"tracr: length must lie in 1..{max_len} for {model.spec}, got {length}")
    vocab = list(model.info["vocab"])
    rng = random.Random(seed)
    pos_in = [_draw(rng, vocab, length) for _ in range(n)]
    if negative == "constant":
        neg_in = [[rng.choice(vocab)] * length for _ in range(n)]
    else:
        neg_in = [_draw(rng, vocab, length) for _ in range(n)]
    pos, neg = encode(model, pos_in), encode(model, neg_in)
    with torch.inference_mode():
        clean = model.bridge(pos)
    targets = clean.argmax(-1) if model.info["categorical_output"] else clean[..., 0].float()
    return PromptSet(
        task="tracr",
        positive=pos,
        negative=neg,
        positive_text=tuple(" ".join(map(str, s)) for s in pos_in),
        negative_text=tuple(" ".join(map(str, s)) for s in neg_in),
        metadata={
            "metric": "tracr_error",
            "program": model.info["program"],
            "negative": negative,
            "seed": seed,
            "length": length,
            "seq_len": length + 1,
            "targets": targets,
            "categorical_output": bool(model.info["categorical_output"]),
        },
    )


def _tracr_error(logits: Tensor, batch: Any) -> Tensor:
    """Per example: cross-entropy of the clean output class (categorical) or squared error (numerical).

    Averaged over positions 1.. (position 0 is BOS, whose output tracr ignores).
    """
    meta = batch.prompts.metadata
    targets = meta["targets"][batch.index.cpu()][:, batch.positions.cpu()].to(logits.device)
    keep = batch.positions.to(logits.device) > 0
    if meta["categorical_output"]:
        logp = logits.float().log_softmax(-1)
        err = -logp.gather(-1, targets[..., None].long())[..., 0]
    else:
        err = (logits[..., 0].float() - targets.float()) ** 2
    return err[:, keep].mean(-1)


def register_metric() -> None:
    """Register ``tracr_error`` with :mod:`circuitscan.evaluation.metrics` (idempotent)."""
    if "tracr_error" in METRICS:
        return
    _register(
        Metric(
            "tracr_error",
            "tracr outputs vs the clean model's: cross-entropy of its output class (categorical) or squared "
            "error (numerical), mean over positions after BOS",
            _tracr_error,
            positions="all",
            higher_is_better=False,
            # a distance from the clean model's outputs: like KL, it is minimal (its gradient
            # vanishes) at the clean model, which tells gradient methods (EAP, HISP) to take
            # their gradient at the ablated point; the clean log-probs it makes the evaluator
            # keep are not read
            needs_reference=True,
            requires=("metadata.targets",),
        ),
        table=("tracr_error",),
    )
