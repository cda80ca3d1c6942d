"""The task of the planted-circuit toy model (:mod:`circuitscan.models.toy`).

Positive: BOS, a signal token A, then context tokens; negative: the same with a B token.
The signal comes early so that every later position attends to it.
"""

from __future__ import annotations

from ..errors import TaskError
from ..models import toy
from ..models.handle import ModelHandle
from ..types import PromptSet


def build_planted(model: ModelHandle, n: int = 50, *, seed: int = 0, seq_len: int = 8) -> PromptSet:
    import torch

    if model.family != "toy-planted":
        raise TaskError(f"task 'planted' runs only on model 'toy-planted', not {model.spec!r}")
    if not 2 <= seq_len <= 32:
        raise TaskError(f"planted: seq_len must be in 2..32, got {seq_len}")
    g = torch.Generator().manual_seed(seed)
    ctx = torch.tensor(list(toy.CONTEXT_TOKENS))
    a = torch.tensor(list(toy.SIGNAL_A))
    b = torch.tensor(list(toy.SIGNAL_B))
    body = ctx[torch.randint(len(ctx), (n, seq_len - 2), generator=g)]
    bos = torch.zeros(n, 1, dtype=torch.long)
    pos = torch.cat([bos, a[torch.randint(len(a), (n, 1), generator=g)], body], 1)
    neg = torch.cat([bos, b[torch.randint(len(b), (n, 1), generator=g)], body], 1)
    return PromptSet(
        task="planted",
        positive=pos,
        negative=neg,
        answers=torch.full((n, 1), toy.PLANTED_ANSWER),
        wrong_answers=torch.full((n, 1), toy.PLANTED_WRONG),
        metadata={"metric": "logit_diff", "seed": seed, "seq_len": seq_len},
    )
