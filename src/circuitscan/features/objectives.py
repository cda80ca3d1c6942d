"""What an attribution graph explains: an :class:`Objective`, the next-token loss or a task's metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import CircuitscanError
from ..evaluation.metrics import MetricBatch, default_metric, get_metric

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """What the graph explains: ``fn(logits [b, T, V], index [b]) -> [b]`` per prompt.

    ``index`` says which prompts (rows of ``tokens``) a batch holds.
    """

    name: str
    description: str
    fn: Callable[[Tensor, Tensor], Tensor]
    higher_is_better: bool
    targets: list[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _upcast(t: Tensor) -> Tensor:
    """At least float32 (float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


def next_token_objective(model: ModelHandle, tokens: Tensor, target: int | list[int] | None = None,
                         attention_mask: Tensor | None = None) -> Objective:
    """Cross-entropy of the next token at the last position.

    Args:
        target: token id(s) to predict (one, or one per prompt); None: the model's own
            top prediction on each prompt (what it actually says next).
    """
    n = tokens.shape[0]
    if target is None:
        with torch.no_grad():
            kw = {} if attention_mask is None else {"attention_mask": attention_mask}
            logits = model.bridge(tokens, **kw)
        targets = logits[:, -1].argmax(-1).tolist()
        how = "the model's top next-token prediction"
    else:
        targets = [int(target)] * n if isinstance(target, int) else [int(t) for t in target]
        how = "the given next token"
    if len(targets) != n:
        raise CircuitscanError(f"need one target per prompt ({n}), got {len(targets)}")
    vocab = int(model.bridge.cfg.d_vocab)
    if any(not 0 <= t < vocab for t in targets):
        raise CircuitscanError(f"target token ids must lie in 0..{vocab - 1}")
    tgt = torch.tensor(targets)

    def fn(logits: Tensor, index: Tensor) -> Tensor:
        lp = _upcast(logits[:, -1]).log_softmax(-1)
        return -lp.gather(-1, tgt[index][:, None].to(lp.device))[:, 0]

    return Objective("ce", f"next-token cross-entropy at the last position ({how})", fn,
                     higher_is_better=False, targets=targets)


def task_objective(prompts: PromptSet, metric: str | None = None) -> Objective:
    """A task metric of :mod:`circuitscan.evaluation.metrics` on the positive prompts.

    Metrics that need the clean model's reference (``kl``: its gradient at the clean
    model is zero) or extra suffix rows (two-digit years) cannot be differentiated here;
    for those, and for tasks with no answer tokens, the cross-entropy of the answer is used.
    """
    name = metric or default_metric(prompts)
    m = get_metric(name)
    m.check(prompts)
    if m.needs_reference or m.suffixes(prompts) is not None:
        if prompts.answers is None or metric is not None:
            raise CircuitscanError(
                f"metric {name!r} cannot be attributed by gradients here (it needs "
                f"{'the clean reference' if m.needs_reference else 'extra suffix rows'}); choose "
                "logit_diff, logit_diff_max_wrong or induction_loss, or give --prompt with a target"
            )
        answers = prompts.answers[:, 0]

        def ce(logits: Tensor, index: Tensor) -> Tensor:
            lp = _upcast(logits[:, -1]).log_softmax(-1)
            return -lp.gather(-1, answers[index][:, None].to(lp.device))[:, 0]

        return Objective("answer_ce", f"cross-entropy of the first answer token ({name} is not differentiable "
                         "here)", ce, higher_is_better=False, targets=answers.tolist())
    seq = prompts.seq_len
    positions = torch.arange(seq) if m.positions == "all" else torch.tensor([seq - 1])
    last = seq - 1 if m.positions == "all" else 0

    def fn(logits: Tensor, index: Tensor) -> Tensor:
        batch = MetricBatch(prompts=prompts, index=index, positions=positions, last=last)
        return _upcast(m(logits[:, positions], batch))

    return Objective(name, m.description, fn, higher_is_better=m.higher_is_better,
                     info={"task": prompts.task})
