"""Custom tasks from a file: JSONL or CSV, one positive/negative pair per row.

Fields (docs/TASKS.md has the full description):

``positive`` (required)
    the prompt on which the model should use the behaviour: text, or (JSONL only) a list
    of token ids used as they are (no BOS is added to ids).
``negative`` (required)
    its corrupted partner, in the same form.
``answer`` (optional)
    the correct next token: one string (``" Mary"``, usually with its leading space), or
    several correct answers as a list (JSONL: ``[" Mary", " Anna"]``; CSV: the same JSON
    list in the cell). Token ids (ints) are accepted in place of strings. Every answer
    must be one token for the model.
``wrong_answer`` (optional, needs ``answer``)
    the wrong next token(s) for logit differences, in the same form.

Either every row gives an answer or none does (likewise ``wrong_answer``). The first
``n`` rows are used (all of them if the file has fewer); every row is checked.

Prompts of unequal token length (``unequal=``):

``"pad"`` (default)
    every prompt is left-padded to the longest one with the tokenizer's pad token (else
    BOS, else EOS; id 0 for models without a tokenizer) and ``positive_mask`` /
    ``negative_mask`` mark real tokens (1) and padding (0). Per-head activations average
    over real tokens only and the model sees the mask, so a padded prompt gives the same
    head outputs as the prompt alone. The last position is always a real token.
``"reject"``
    a :class:`TaskError` naming the lines whose prompts are not of the most common length.

Errors name the file, the line and the field. :func:`write_task_file` writes this format
(``circuitscan tasks export``), so a built task can be edited and read back.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import TaskError
from ..integrity import file_sha256
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import left_pad, pad_id, vocab_size
from .task_export import task_rows, write_task_file
from .task_file import (
    FIELDS,
    FORMATS,
    REQUIRED,
    Answer,
    Prompt,
    Row,
    _where,
    file_format,
    read_task_file,
)

UNEQUAL = ("pad", "reject")



def _tokens(model: ModelHandle, prompt: Prompt, path: Path, line: int, field: str, vocab: int) -> list[int]:
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise TaskError(
                f"{_where(path, line, field)} is text, but model {model.spec!r} has no tokenizer; "
                "give token ids instead (a JSON list of ints)"
            )
        return model.to_tokens([prompt])[0]
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise TaskError(f"{_where(path, line, field)}: token id {bad[0]} is outside the vocabulary 0..{vocab - 1}")
    return list(prompt)


def _answer_ids(model: ModelHandle, answers: Answer, path: Path, line: int, field: str, vocab: int) -> list[int]:
    out = []
    for a in answers:
        if isinstance(a, int):
            if not 0 <= a < vocab:
                raise TaskError(f"{_where(path, line, field)}: token id {a} is outside the vocabulary 0..{vocab - 1}")
            out.append(a)
            continue
        if model.tokenizer is None:
            raise TaskError(
                f"{_where(path, line, field)}: {a!r} is text, but model {model.spec!r} has no tokenizer; "
                "give token ids"
            )
        tid = model.single_token_id(a)
        if tid is None:
            pieces = model.tokenizer.encode(a, add_special_tokens=False)
            raise TaskError(
                f"{_where(path, line, field)}: {a!r} is {len(pieces)} tokens for model {model.spec!r}; "
                "every answer must be one token (answers usually start with a space, e.g. \" Mary\")"
            )
        out.append(tid)
    return out


def _check_rest(model: ModelHandle, rows: list[Row], path: Path, vocab: int) -> None:
    """Rows beyond ``n`` are not used, but are checked as the used ones are (docs/TASKS.md)."""
    for r in rows:
        for field in ("positive", "negative"):
            prompt = getattr(r, field)
            if not isinstance(prompt, str) or model.tokenizer is None:
                _tokens(model, prompt, path, r.line, field, vocab)
        for field in ("answer", "wrong_answer"):
            if getattr(r, field) is not None:
                _answer_ids(model, getattr(r, field), path, r.line, field, vocab)


def _reject_unequal(path: Path, model: ModelHandle, rows: list[Row], pos: list[list[int]],
                    neg: list[list[int]]) -> None:
    """``unequal="reject"``: the error naming the prompts not of the most common length."""
    lengths = [len(t) for t in pos + neg]
    common = Counter(lengths).most_common(1)[0][0]
    bad = [
        f"line {r.line} ({field}: {len(t)} tokens)"
        for r, p, q in zip(rows, pos, neg, strict=True)
        for field, t in (("positive", p), ("negative", q))
        if len(t) != common
    ]
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise TaskError(
        f"{path}: every prompt must tokenise to the same length for model {model.spec!r}; most "
        f"have {common} tokens, but {', '.join(bad[:10])}{more} differ"
    )


def _pad(model: ModelHandle, pos: list[list[int]], neg: list[list[int]], meta: dict[str, Any]) -> tuple[Any, ...]:
    """Left-pad both sides to the longest prompt: (positive, negative, positive mask, negative mask)."""
    length = max(len(t) for t in pos + neg)
    pad = pad_id(model)
    positive, pos_mask = left_pad(pos, length, pad)
    negative, neg_mask = left_pad(neg, length, pad)
    # a side with no padding needs no mask
    pos_mask = None if bool(pos_mask.all()) else pos_mask
    neg_mask = None if bool(neg_mask.all()) else neg_mask
    meta["pad_id"] = pad
    return positive, negative, pos_mask, neg_mask


def _answer_tensor(sets: list[list[int]] | None, key: str, meta: dict[str, Any]) -> Any:
    """The answers as one tensor when every row has as many, else None (the lists go in ``meta[key]``)."""
    import torch

    if sets is None:
        return None
    if len({len(s) for s in sets}) == 1:
        return torch.tensor(sets)
    meta[key] = sets
    return None


def load_task_file(path: Path, model: ModelHandle, n: int, *, unequal: str = "pad") -> PromptSet:
    """Read a task file and tokenise its first ``n`` rows for ``model``.

    Args:
        path: a ``.jsonl`` or ``.csv`` file in the format of the module docstring.
        model: the model whose tokenizer (and vocabulary) the prompts are checked against.
        n: the most rows to use (the file's first ``n``; fewer if the file is shorter).
        unequal: ``"pad"`` (left-pad and mask) or ``"reject"`` prompts of unequal length.

    Returns:
        A :class:`PromptSet` named ``custom``; ``answers`` / ``wrong_answers`` when every row
        has the same number of them, else per-row id lists in ``metadata["answer_sets"]`` /
        ``metadata["wrong_answer_sets"]``.
    """
    import torch

    path = Path(path)
    if unequal not in UNEQUAL:
        raise TaskError(f"unknown rule for prompts of unequal length {unequal!r}; valid: {', '.join(UNEQUAL)}")
    if n < 1:
        raise TaskError(f"the number of examples must be >= 1, got {n}")
    fmt, all_rows = read_task_file(path)
    vocab = vocab_size(model)
    rows = all_rows[:n]
    _check_rest(model, all_rows[n:], path, vocab)
    pos = [_tokens(model, r.positive, path, r.line, "positive", vocab) for r in rows]
    neg = [_tokens(model, r.negative, path, r.line, "negative", vocab) for r in rows]
    answers = wrong = None
    if rows[0].answer is not None:
        answers = [_answer_ids(model, r.answer, path, r.line, "answer", vocab) for r in rows]
    if rows[0].wrong_answer is not None:
        wrong = [_answer_ids(model, r.wrong_answer, path, r.line, "wrong_answer", vocab) for r in rows]
    padded = len({len(t) for t in pos + neg}) > 1
    meta: dict[str, Any] = {
        "metric": "logit_diff" if answers is not None else "kl",
        "file": str(path.resolve()),
        "file_sha256": file_sha256(path),
        "built_for": model.family,
        "format": fmt,
        "rows_in_file": len(all_rows),
        "lines": [r.line for r in rows],
        "padded": padded,
    }
    pos_mask = neg_mask = None
    if padded:
        if unequal == "reject":
            _reject_unequal(path, model, rows, pos, neg)
        positive, negative, pos_mask, neg_mask = _pad(model, pos, neg, meta)
    else:
        positive, negative = torch.tensor(pos), torch.tensor(neg)
    meta["seq_len"] = int(positive.shape[1])
    return PromptSet(
        task="custom",
        positive=positive,
        negative=negative,
        positive_text=tuple(r.positive for r in rows) if all(isinstance(r.positive, str) for r in rows) else None,
        negative_text=tuple(r.negative for r in rows) if all(isinstance(r.negative, str) for r in rows) else None,
        positive_mask=pos_mask,
        negative_mask=neg_mask,
        answers=_answer_tensor(answers, "answer_sets", meta),
        wrong_answers=_answer_tensor(wrong, "wrong_answer_sets", meta),
        metadata=meta,
    )


__all__ = ["FIELDS", "FORMATS", "REQUIRED", "UNEQUAL", "Answer", "Prompt", "Row", "file_format", "load_task_file",
           "read_task_file", "task_rows", "write_task_file"]
