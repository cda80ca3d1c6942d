"""Induction (the paper's Appendix H): random tokens repeated once vs not repeated.

Positive: [BOS] A A, where A is ``length`` distinct random token ids; negative: [BOS] A B,
where B is ``length`` further distinct ids, none of them in A. Positive and negative
share their first half, so they differ only where the repetition is.

Token ids are drawn uniformly from ``vocab`` = (lo, hi) (default: the whole vocabulary),
leaving out the tokenizer's special tokens. The prompts are token ids, so the task runs
on models without a tokenizer too (the toy models).

The default metric is ``induction_loss``: the mean cross-entropy of the tokens of the
second copy that induction can predict. ``metadata["loss_positions"]`` lists the logit
positions p whose next token ``tokens[:, p + 1]`` is such a token (every second-half
token but the first, which no earlier context predicts).
"""

from __future__ import annotations

import random

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import vocab_size


def build_induction(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    length: int = 10,
    vocab: tuple[int, int] | None = None,
    bos: bool | None = None,
) -> PromptSet:
    """``n`` repeated and ``n`` non-repeated random token sequences.

    Args:
        model: the model (its vocabulary size bounds the token ids).
        n: number of positive (and of negative) prompts.
        seed: seed for the token draws.
        length: tokens per half (the paper: 10).
        vocab: half-open id range ``(lo, hi)`` to draw from (default: the whole vocabulary).
        bos: prepend the tokenizer's BOS token (default: the model's own convention).

    Returns:
        A :class:`PromptSet` of token ids, [n, (1 +) 2 * length] each.
    """
    import torch

    if length < 2:
        raise TaskError(f"induction: length must be >= 2, got {length}")
    size = vocab_size(model)
    lo, hi = (0, size) if vocab is None else (int(vocab[0]), int(vocab[1]))
    if not 0 <= lo < hi <= size:
        raise TaskError(f"induction: vocab must be a range lo..hi within 0..{size} for model {model.spec!r}, got {vocab}")
    tok = model.tokenizer
    special = set(tok.all_special_ids) if tok is not None else set()
    allowed = torch.tensor([i for i in range(lo, hi) if i not in special])
    if len(allowed) < 2 * length:
        raise TaskError(
            f"induction: the vocabulary range {lo}..{hi} has {len(allowed)} usable ids, fewer than "
            f"2 * length = {2 * length} distinct tokens per prompt"
        )
    use_bos = model.prepend_bos if bos is None else bos
    bos_id = tok.bos_token_id if tok is not None else None
    if use_bos and bos_id is None:
        if bos:
            raise TaskError(f"induction: bos=True but model {model.spec!r} has no BOS token")
        use_bos = False
    rng = random.Random(seed)
    # 2 * length distinct ids per prompt: the first half is A, the rest is B
    draws = allowed[torch.tensor([rng.sample(range(len(allowed)), 2 * length) for _ in range(n)])]
    first, other = draws[:, :length], draws[:, length:]
    pos = torch.cat([first, first], 1)
    neg = torch.cat([first, other], 1)
    if use_bos:
        col = torch.full((n, 1), int(bos_id), dtype=torch.long)
        pos, neg = torch.cat([col, pos], 1), torch.cat([col, neg], 1)
    start = (1 if use_bos else 0) + length  # first position of the second half
    return PromptSet(
        task="induction",
        positive=pos.long(),
        negative=neg.long(),
        metadata={
            "metric": "induction_loss",
            "seed": seed,
            "length": length,
            "vocab": [lo, hi],
            "bos": bool(use_bos),
            "repeat_start": start,
            "loss_positions": list(range(start, start + length - 1)),
            "seq_len": int(pos.shape[1]),
        },
    )
