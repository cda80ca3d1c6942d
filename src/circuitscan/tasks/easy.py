"""Easy negatives (the paper's Appendix D.2): unrelated text added as extra negatives.

The paper sampled them from the Pile; circuitscan ships a small corpus of its own
(``circuitscan/data/easy_corpus.txt``, about 1,500 words of varied everyday prose written
for the package), so nothing is downloaded. Each easy negative is a window of the
corpus's token stream exactly as long as the task's prompts (after the model's BOS
token where it uses one), so no padding is needed. Easy negatives have no positive
partner: a prompt set with them has more negatives than positives (``paired`` is False),
and ``metadata["easy_negatives"]`` says how many of the last negatives are easy ones.
"""

from __future__ import annotations

import random
from dataclasses import replace

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import data_text

CORPUS = "easy_corpus.txt"


def corpus_tokens(model: ModelHandle) -> list[int]:
    """The shipped corpus as one token stream for the model's tokenizer."""
    if model.tokenizer is None:
        raise TaskError(
            f"easy negatives are text and need a tokenizer, but model {model.spec!r} has none"
        )
    out: list[int] = []
    for line in data_text(CORPUS).splitlines(keepends=True):  # short pieces: no length warnings
        out.extend(model.tokenizer.encode(line, add_special_tokens=False))
    return out


def add_easy_negatives(model: ModelHandle, prompts: PromptSet, k: int, *, seed: int = 0) -> PromptSet:
    """``prompts`` with ``k`` windows of unrelated text appended to its negatives.

    Args:
        model: the model the prompts were built for (its tokenizer cuts the corpus).
        prompts: any prompt set with text tokens.
        k: how many easy negatives to add (0 returns ``prompts`` unchanged).
        seed: seed for the window positions.
    """
    import torch

    if k < 0:
        raise TaskError(f"easy_negatives must be >= 0, got {k}")
    if k == 0:
        return prompts
    stream = corpus_tokens(model)
    tok = model.tokenizer
    bos = model.prepend_bos and tok.bos_token_id is not None
    width = prompts.seq_len - (1 if bos else 0)
    if width < 1 or len(stream) < width + 1:
        raise TaskError(
            f"easy negatives: the shipped corpus ({len(stream)} tokens) cannot give windows of "
            f"{width} tokens for prompts of {prompts.seq_len}"
        )
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(stream) - width + 1) for _ in range(k)]
    rows = [([tok.bos_token_id] if bos else []) + stream[s : s + width] for s in starts]
    extra = torch.tensor(rows, dtype=prompts.negative.dtype)
    negative_mask = prompts.negative_mask
    if negative_mask is not None:
        negative_mask = torch.cat([negative_mask, torch.ones_like(extra)])
    negative_text = None
    if prompts.negative_text is not None:
        negative_text = (*prompts.negative_text, *(tok.decode(stream[s : s + width]) for s in starts))
    meta = dict(prompts.metadata)
    meta["easy_negatives"] = k
    return replace(
        prompts,
        negative=torch.cat([prompts.negative, extra]),
        negative_text=negative_text,
        negative_mask=negative_mask,
        metadata=meta,
    )
