"""The wall-clock keys of a run's JSON files, split out and merged back (pure functions;
:mod:`circuitscan.rundir` writes them to ``timings.json``)."""

from __future__ import annotations

from typing import Any

WALL_CLOCK_KEYS = frozenset({"wall_time_s", "timings_s", "seconds", "total_seconds", "graph_seconds"})


def split_wall_clock(data: Any) -> tuple[Any, Any]:
    """``(data without its wall-clock keys, the subtree of those keys)``; the subtree is None
    when there are none. Keys in :data:`WALL_CLOCK_KEYS` are moved wherever they are."""
    if not isinstance(data, dict):
        return data, None
    kept, timed = {}, {}
    for k, v in data.items():
        if k in WALL_CLOCK_KEYS:
            timed[k] = v
            continue
        kept[k], t = split_wall_clock(v)
        if t is not None:
            timed[k] = t
    return kept, (timed or None)


def merge_wall_clock(into: Any, timed: Any) -> Any:
    """Put a subtree from :func:`split_wall_clock` back into ``into`` (in place; returned)."""
    if not isinstance(into, dict) or not isinstance(timed, dict):
        return into
    for k, v in timed.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict) and k not in WALL_CLOCK_KEYS:
            merge_wall_clock(into[k], v)
        elif k in WALL_CLOCK_KEYS or k not in into:
            into[k] = v
    return into
