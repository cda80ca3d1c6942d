"""The token rows a :class:`~.evaluator.CircuitEvaluator` runs, its checked inputs, and how its
prompts split into passes (blocks of one shared-prefix length, at most ``max_rows`` rows each)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .ablation import check_ablation, paired_negatives
from .baselines import expand_with_suffixes
from .metrics import get_metric, table_metrics
from .prefix_blocks import example_lengths, prefix_blocks

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet

LOGITS_BUDGET = 2**27  # most logits one evaluation pass may hold (512 MiB in float32)


def shared_prefix_lengths(
    a: Int[Tensor, "n seq"], b: Int[Tensor, "n seq"], mask_a: Tensor | None, mask_b: Tensor | None
) -> Int[Tensor, " n"]:
    """Per row, the number of first positions where ``a`` and ``b`` (tokens and masks) agree."""
    import torch

    diff = a != b
    if mask_a is not None or mask_b is not None:
        ones = torch.ones_like(a)
        diff |= (ones if mask_a is None else mask_a) != (ones if mask_b is None else mask_b)
    first = diff.int().argmax(1)
    return torch.where(diff.any(1), first, torch.full_like(first, a.shape[1]))


def _checked_metrics(model: ModelHandle, prompts: PromptSet, ablation: str, metrics: Sequence[str] | None,
                     n_examples: int | None, max_rows: int) -> tuple[list[str], list[Any], int]:
    """The evaluator's inputs checked: metric names, their objects, and the number of examples."""
    check_ablation(ablation)
    if max_rows < 1:
        raise CircuitscanError(f"max_rows must be >= 1, got {max_rows}")
    names = list(metrics) if metrics is not None else table_metrics(prompts)
    if not names:
        raise CircuitscanError("give at least one metric")
    metric_objs = [get_metric(name) for name in names]
    for m in metric_objs:
        m.check(prompts)
    n = prompts.n_positive if n_examples is None else int(n_examples)
    if not 1 <= n <= prompts.n_positive:
        raise CircuitscanError(
            f"n_examples must be in 1..{prompts.n_positive} (the task's positive prompts), got {n}"
        )
    vocab = int(model.bridge.cfg.d_vocab)
    all_tokens, _ = prompts.all_tokens()
    if int(all_tokens.min()) < 0 or int(all_tokens.max()) >= vocab:
        raise CircuitscanError(f"task {prompts.task!r} has token ids outside the model's vocabulary 0..{vocab - 1}")
    return names, metric_objs, n


@dataclass
class _EvalRows:
    """The token rows an evaluator runs: one per example, or one per (example, suffix)."""

    pos_tok: Tensor
    pos_mask: Tensor | None
    neg: Tensor
    neg_mask: Tensor | None
    suffix: tuple[int, ...] | None
    group: int
    prefix: int | None
    positions: Tensor
    last: int

    @classmethod
    def of(cls, prompts: PromptSet, metric_objs: list[Any], names: list[str], n: int, ablation: str) -> _EvalRows:
        import torch

        neg, neg_mask = paired_negatives(prompts) if ablation == "corrupt" else (prompts.negative, prompts.negative_mask)
        # rows: one per example, or one per (example, suffix) when a metric reads suffixes
        suffixes = {tuple(s) for m in metric_objs if (s := m.suffixes(prompts)) is not None}
        if len(suffixes) > 1:
            raise CircuitscanError(f"metrics {names} need different prompt suffixes; evaluate them separately")
        seq = prompts.seq_len
        pos_tok, pos_mask = prompts.positive[:n], None if prompts.positive_mask is None else prompts.positive_mask[:n]
        if ablation == "corrupt":
            neg, neg_mask = neg[:n], None if neg_mask is None else neg_mask[:n]
        group, prefix, suffix = 1, None, None
        if suffixes:
            suffix = next(iter(suffixes))
            group, prefix = len(suffix), seq
            pos_tok, pos_mask = expand_with_suffixes(pos_tok, pos_mask, suffix)
            neg, neg_mask = expand_with_suffixes(neg, neg_mask, suffix)
        run_seq = pos_tok.shape[1]
        if any(m.positions == "all" for m in metric_objs):
            positions = torch.arange(run_seq)
        else:
            positions = torch.arange(seq - 1, run_seq)  # the prompt's last position (+ suffix positions)
        last = int((positions == seq - 1).nonzero()[0, 0])
        return cls(pos_tok, pos_mask, neg, neg_mask, suffix, group, prefix, positions, last)


def _budget(max_rows: int, n_positions: int, vocab: int, group: int) -> int:
    """Token rows per circuit pass: ``max_rows``, and at most :data:`LOGITS_BUDGET` logits (all-position metrics)."""
    return max(group, min(max_rows, LOGITS_BUDGET // (n_positions * vocab)))


def _blocks(model: ModelHandle, shared: Tensor | None, n: int, group: int, positions: Tensor,
            max_rows: int) -> list[tuple[int, list[int]]]:
    """The first ``n`` examples in blocks of one shared-prefix length (:func:`.prefix_blocks.prefix_blocks`),
    each at most one pass of rows; one length 0 without sharing (``shared`` None)."""
    budget = _budget(max_rows, len(positions), int(model.bridge.cfg.d_vocab), group)
    return prefix_blocks(example_lengths(shared, n, group, int(positions.min())), max(1, min(n, budget // group)))
