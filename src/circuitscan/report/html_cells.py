"""How a value of the run directory becomes an HTML table cell: numbers as
``<td class="num">`` with ``data-key`` (where the value came from) and ``data-value`` (the
value as written), everything else escaped text."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from .rundata import to_float


def fmt(value: Any) -> str:
    """How a number shows in a table: integers as they are, else 3 decimals (3 significant digits below 0.01)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return str(value)
    v = to_float(value)
    if math.isnan(v):
        return "nan" if value is not None else ""
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    if 1e-2 <= abs(v) < 1e5:
        return f"{v:.3f}"
    return f"{v:.3g}"  # small thresholds (1e-7 after softmax) keep their digits


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float):
        return True
    return isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity")


def num_cell(value: Any, key: str) -> str:
    return f'<td class="num" data-key="{_e(key)}" data-value="{_e(value)}">{_e(fmt(value))}</td>'


def cell(value: Any, key: str | None = None, cls: str | None = None) -> str:
    if _is_number(value) and key is not None:
        return num_cell(value, key)
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{k}: {v}" for k, v in value.items())
    else:
        text = str(value)
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}>{_e(text)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, caption: str = "", cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}>{cap}<thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"
