"""Shared pieces of task builders: word lists, single-token filters, equal lengths, padding.

Every builder follows the same recipe: draw a pool of candidate prompt pairs with a
``random.Random(seed)``, tokenise them, keep only pairs whose positive and negative
have the task's token length, and take the first ``n``. That makes every task
deterministic by seed and guarantees equal lengths on any tokenizer; when too few
candidates survive, the error names the tokenizer and what was missing.
"""

from __future__ import annotations

import importlib.resources
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import TaskError
from ..models.handle import ModelHandle

if TYPE_CHECKING:
    import torch


def word_list(name: str) -> list[str]:
    """A word list shipped in ``circuitscan/data`` (one entry a line, ``#`` comments)."""
    text = importlib.resources.files("circuitscan.data").joinpath(name).read_text(encoding="utf-8")
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def data_text(name: str) -> str:
    """A text file shipped in ``circuitscan/data``."""
    return importlib.resources.files("circuitscan.data").joinpath(name).read_text(encoding="utf-8")


def single_token_words(model: ModelHandle, words: Sequence[str], *, prefix: str = " ") -> list[str]:
    """The words that are exactly one token (with ``prefix``) for the model's tokenizer."""
    return [w for w in dict.fromkeys(words) if model.single_token_id(prefix + w) is not None]


def require(words: Sequence[Any], need: int, what: str, model: ModelHandle, task: str) -> None:
    if len(words) < need:
        raise TaskError(
            f"task {task!r} cannot be built for model {model.spec!r}: only {len(words)} {what} are "
            f"single tokens for its tokenizer (need at least {need})"
        )


def require_tokenizer(model: ModelHandle, task: str) -> Any:
    if model.tokenizer is None:
        raise TaskError(
            f"task {task!r} is built from text and needs a tokenizer, but model {model.spec!r} has "
            "none; use a task made of token ids (planted, induction) or a task file of token ids"
        )
    return model.tokenizer


def token_id(model: ModelHandle, text: str, task: str) -> int:
    """The id of ``text`` if it is a single token, else a :class:`TaskError` saying so."""
    tid = model.single_token_id(text)
    if tid is None:
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        raise TaskError(
            f"task {task!r} cannot be built for model {model.spec!r}: {text!r} is {len(ids)} tokens "
            "for its tokenizer, but the task needs it to be one"
        )
    return tid


def modal_length(lengths: Sequence[int]) -> int:
    """The most common length (ties: the shortest)."""
    counts = Counter(lengths)
    best = max(counts.values())
    return min(n for n, c in counts.items() if c == best)


def keep_equal_length(
    model: ModelHandle,
    positives: Sequence[str],
    negatives: Sequence[str],
    n: int,
    task: str,
    *,
    length: int | None = None,
    negatives_may_differ: bool = False,
) -> tuple[list[int], list[list[int]], list[list[int]], int]:
    """Tokenise candidate pairs and keep the first ``n`` whose lengths all agree.

    Args:
        positives, negatives: candidate texts, pair i = (positives[i], negatives[i]).
        n: how many pairs to keep.
        length: the token length to keep (default: the most common positive length).
        negatives_may_differ: keep pairs whatever the negative's length (the caller pads).

    Returns:
        (kept indices, positive token lists, negative token lists, the length).
    """
    toks_pos = model.to_tokens(list(positives))
    toks_neg = model.to_tokens(list(negatives))
    if length is None:
        length = modal_length([len(t) for t in toks_pos])
    keep = [
        i
        for i in range(len(toks_pos))
        if len(toks_pos[i]) == length and (negatives_may_differ or len(toks_neg[i]) == length)
    ][:n]
    if len(keep) < n:
        raise TaskError(
            f"task {task!r}: only {len(keep)} of {len(toks_pos)} candidate prompt pairs tokenise to "
            f"the common length ({length} tokens) for model {model.spec!r}; ask for fewer than n={n}"
        )
    return keep, [toks_pos[i] for i in keep], [toks_neg[i] for i in keep], length


def pad_id(model: ModelHandle) -> int:
    """The token used for left padding: the tokenizer's pad token, else BOS, else EOS."""
    tok = model.tokenizer
    if tok is not None:
        for tid in (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        raise TaskError(
            f"model {model.spec!r}: prompts of unequal length must be left-padded, but its tokenizer "
            "has no pad, BOS or EOS token"
        )
    return 0


def left_pad(
    seqs: Sequence[Sequence[int]], length: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to ``length``: (tokens [n, length], mask [n, length], 1 = real)."""
    import torch

    tokens = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than {length}")
        if s:
            tokens[i, length - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, length - len(s) :] = 1
    return tokens, mask


def vocab_size(model: ModelHandle) -> int:
    """Token ids valid for the model (the smaller of its embedding and its tokenizer)."""
    sizes = []
    if model.bridge is not None:
        sizes.append(int(model.bridge.cfg.d_vocab))
    if model.tokenizer is not None:
        sizes.append(len(model.tokenizer))
    if not sizes:
        raise TaskError(f"model {model.spec!r} has neither weights nor a tokenizer to size its vocabulary")
    return min(sizes)
