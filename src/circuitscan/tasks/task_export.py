"""Writing a prompt set in the task-file format of :mod:`circuitscan.tasks.custom`
(``circuitscan tasks export``), so that a built task can be edited and read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..rundir import atomic_path
from ..types import PromptSet
from .task_file import FIELDS, REQUIRED


def _real(tokens: Any, mask: Any) -> list[int]:
    ids = tokens.tolist()
    if mask is None:
        return ids
    return [t for t, m in zip(ids, mask.tolist(), strict=True) if m]


def _answer_out(model: ModelHandle, ids: list[int]) -> str | int | list[str | int]:
    out: list[str | int] = []
    for tid in ids:
        text = model.tokenizer.decode([tid]) if model.tokenizer is not None else None
        # keep the text only if it reads back as the same single token
        out.append(text if text and model.single_token_id(text) == tid else int(tid))
    return out[0] if len(out) == 1 else out


def _sets(prompts: PromptSet, attr: str, key: str) -> list[list[int]] | None:
    t = getattr(prompts, attr)
    if t is not None:
        return t.tolist()
    return prompts.metadata.get(key)


def task_rows(prompts: PromptSet, model: ModelHandle) -> list[dict[str, Any]]:
    """The rows of the task-file format for a paired prompt set."""
    if not prompts.paired:
        raise TaskError(
            f"task {prompts.task!r} has {prompts.n_positive} positives but {prompts.n_negative} negatives "
            "(easy negatives?); a task file holds pairs, so export it without them"
        )
    answers = _sets(prompts, "answers", "answer_sets")
    wrong = _sets(prompts, "wrong_answers", "wrong_answer_sets")
    rows = []
    for i in range(prompts.n_positive):
        row: dict[str, Any] = {}
        for field, text, tokens, mask in (
            ("positive", prompts.positive_text, prompts.positive, prompts.positive_mask),
            ("negative", prompts.negative_text, prompts.negative, prompts.negative_mask),
        ):
            ok = text is not None and model.tokenizer is not None
            row[field] = text[i] if ok else _real(tokens[i], None if mask is None else mask[i])
        if answers is not None:
            row["answer"] = _answer_out(model, answers[i])
        if wrong is not None:
            row["wrong_answer"] = _answer_out(model, wrong[i])
        rows.append(row)
    return rows


def _csv_cell(value: Any) -> str:
    """A CSV cell: plain text, or a JSON list (several answers, ids, text starting with '[')."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return value
    return json.dumps(value if isinstance(value, list) else [value], ensure_ascii=False)


def write_task_file(prompts: PromptSet, path: Path, model: ModelHandle) -> int:
    """Write ``prompts`` in the task-file format (CSV for ``.csv``, else JSONL); returns the row count.

    Texts are written where the prompt set has them, token ids otherwise (JSONL only);
    answers are written as text when the text reads back as the same token, else as ids.
    Task-specific metadata (greater-than's years, induction's positions) is not part of
    the format. The file is written atomically.
    """
    path = Path(path)
    rows = task_rows(prompts, model)
    csv_out = path.suffix.lower() == ".csv"
    if csv_out and any(not isinstance(r[f], str) for r in rows for f in ("positive", "negative")):
        raise TaskError(
            f"task {prompts.task!r} is made of token ids, which only the JSONL format holds; "
            f"write to a .jsonl file instead of {str(path)!r}"
        )
    if path.is_dir():
        raise TaskError(f"{str(path)!r} is a directory; give a file name ending in .jsonl or .csv")
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        if csv_out:
            fields = [k for k in FIELDS if k in rows[0]]
            w = csv.writer(f)
            w.writerow(fields)
            for r in rows:
                w.writerow([r[k] if k in REQUIRED else _csv_cell(r[k]) for k in fields])
        else:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(rows)
