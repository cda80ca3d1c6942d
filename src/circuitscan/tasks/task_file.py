"""Reading a task file: the JSONL / CSV format of :mod:`circuitscan.tasks.custom`, parsed and
checked row by row, with no tokenizer (errors name the file, the line and the field)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TaskError

FIELDS = ("positive", "negative", "answer", "wrong_answer")
REQUIRED = ("positive", "negative")
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
