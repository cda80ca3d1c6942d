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

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TaskError
from ..integrity import file_sha256
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import left_pad, pad_id, vocab_size

FIELDS = ("positive", "negative", "answer", "wrong_answer")
REQUIRED = ("positive", "negative")
UNEQUAL = ("pad", "reject")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

Prompt = str | list[int]
Answer = list[str | int]


@dataclass(frozen=True)
class Row:
    """One validated row of a task file (answers normalised to lists)."""

    line: int
    positive: Prompt
    negative: Prompt
    answer: Answer | None = None
    wrong_answer: Answer | None = None


def _where(path: Path, line: int, field: str | None = None) -> str:
    return f"{path}:{line}" + (f": field {field!r}" if field else "")


def file_format(path: Path) -> str:
    """``"jsonl"`` or ``"csv"``, from the suffix (or, for others, the first character)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is not None:
        return fmt
    try:
        head = path.read_text(encoding="utf-8").lstrip()[:1]
    except OSError:
        head = ""
    if head == "{":
        return "jsonl"
    raise TaskError(
        f"{path}: cannot tell the file format from the name; use a .jsonl file (one JSON object a "
        "line) or a .csv file with a header row (positive,negative[,answer,wrong_answer])"
    )


def _prompt(value: Any, path: Path, line: int, field: str, *, ids_allowed: bool) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise TaskError(f"{_where(path, line, field)} is empty")
        return value
    if ids_allowed and isinstance(value, list) and value and all(type(v) is int for v in value):
        return list(value)
    kind = "text or a non-empty list of token ids (ints)" if ids_allowed else "text"
    raise TaskError(f"{_where(path, line, field)} must be {kind}, got {json.dumps(value)[:60]}")


def _answers(value: Any, path: Path, line: int, field: str) -> Answer | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v != "" or type(v) is int for v in items):
        raise TaskError(
            f"{_where(path, line, field)} must be a string, a token id, or a non-empty list of them "
            f'(several correct answers), e.g. " Mary" or [" Mary", " Anna"]; got {json.dumps(value)[:60]}'
        )
    return list(items)


def _row(obj: dict[str, Any], path: Path, line: int, *, ids_allowed: bool) -> Row:
    unknown = [k for k in obj if k not in FIELDS]
    if unknown:
        raise TaskError(
            f"{_where(path, line)}: unknown field {unknown[0]!r}; valid fields: {', '.join(FIELDS)}"
        )
    for f in REQUIRED:
        if f not in obj or obj[f] is None:
            raise TaskError(f"{_where(path, line)}: missing field {f!r} (every row needs positive and negative)")
    return Row(
        line=line,
        positive=_prompt(obj["positive"], path, line, "positive", ids_allowed=ids_allowed),
        negative=_prompt(obj["negative"], path, line, "negative", ids_allowed=ids_allowed),
        answer=_answers(obj.get("answer"), path, line, "answer"),
        wrong_answer=_answers(obj.get("wrong_answer"), path, line, "wrong_answer"),
    )


def _read_jsonl(path: Path, text: str) -> list[Row]:
    rows = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{_where(path, line)}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise TaskError(
                f'{_where(path, line)}: each line must be a JSON object like {{"positive": "...", '
                f'"negative": "..."}}, got {type(obj).__name__}'
            )
        rows.append(_row(obj, path, line, ids_allowed=True))
    return rows


def _csv_answer(cell: str | None, path: Path, line: int, field: str) -> Any:
    if cell is None or cell == "":
        return None
    if cell.lstrip().startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as exc:
            raise TaskError(
                f"{_where(path, line, field)}: a cell starting with '[' must be a JSON list of "
                f'answers, e.g. [" Mary", " Anna"] ({exc.msg})'
            ) from None
    return cell


def _read_csv(path: Path, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise TaskError(f"{_where(path, 1)}: not valid CSV ({exc})") from None
    header = [h.strip() for h in header]
    for f in REQUIRED:
        if f not in header:
            raise TaskError(
                f"{_where(path, 1)}: the header has no {f!r} column; it must name the columns "
                f"positive,negative and optionally answer,wrong_answer (got {','.join(header)})"
            )
    unknown = [h for h in header if h not in FIELDS]
    if unknown:
        raise TaskError(f"{_where(path, 1)}: unknown column {unknown[0]!r}; valid columns: {', '.join(FIELDS)}")
    rows = []
    while True:
        line = reader.line_num + 1  # where the next record starts (a quoted cell may span lines)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise TaskError(f"{_where(path, line)}: not valid CSV ({exc})") from None
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise TaskError(
                f"{_where(path, line)}: {len(cells)} cells but the header has {len(header)} columns "
                "(quote cells that contain commas)"
            )
        obj: dict[str, Any] = dict(zip(header, cells, strict=True))
        for f in ("answer", "wrong_answer"):
            if f in obj:
                obj[f] = _csv_answer(obj[f], path, line, f)
        rows.append(_row(obj, path, line, ids_allowed=False))
    return rows


def read_task_file(path: Path) -> tuple[str, list[Row]]:
    """Parse and check the format of a task file: (format, rows). No tokenizer needed."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    fmt = file_format(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate the BOM spreadsheets write
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows = _read_jsonl(path, text) if fmt == "jsonl" else _read_csv(path, text)
    if not rows:
        raise TaskError(f"{path}: no prompts in the file (it is empty or has only a header)")
    for field in ("answer", "wrong_answer"):
        given = [r for r in rows if getattr(r, field) is not None]
        if given and len(given) != len(rows):
            missing = next(r for r in rows if getattr(r, field) is None)
            raise TaskError(
                f"{_where(path, missing.line, field)} is missing, but line {given[0].line} gives one; "
                f"give {field} on every row or on none"
            )
    if rows[0].wrong_answer is not None and rows[0].answer is None:
        raise TaskError(f"{_where(path, rows[0].line, 'wrong_answer')} is given without 'answer'")
    return fmt, rows


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
    lengths = [len(t) for t in pos + neg]
    padded = len(set(lengths)) > 1
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
        length = max(lengths)
        pad = pad_id(model)
        positive, pos_mask = left_pad(pos, length, pad)
        negative, neg_mask = left_pad(neg, length, pad)
        # a side with no padding needs no mask
        pos_mask = None if bool(pos_mask.all()) else pos_mask
        neg_mask = None if bool(neg_mask.all()) else neg_mask
        meta["pad_id"] = pad
    else:
        positive, negative = torch.tensor(pos), torch.tensor(neg)
    meta["seq_len"] = int(positive.shape[1])

    def as_tensor(sets: list[list[int]] | None, key: str) -> torch.Tensor | None:
        if sets is None:
            return None
        if len({len(s) for s in sets}) == 1:
            return torch.tensor(sets)
        meta[key] = sets
        return None

    return PromptSet(
        task="custom",
        positive=positive,
        negative=negative,
        positive_text=tuple(r.positive for r in rows) if all(isinstance(r.positive, str) for r in rows) else None,
        negative_text=tuple(r.negative for r in rows) if all(isinstance(r.negative, str) for r in rows) else None,
        positive_mask=pos_mask,
        negative_mask=neg_mask,
        answers=as_tensor(answers, "answer_sets"),
        wrong_answers=as_tensor(wrong, "wrong_answer_sets"),
        metadata=meta,
    )


# --------------------------------------------------------------------------- export


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
    from ..rundir import atomic_path

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
