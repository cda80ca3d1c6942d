"""Progress display on stderr: rich bars on a terminal, quiet otherwise.

``CIRCUITSCAN_PROGRESS=0`` switches bars off, ``=1`` forces them on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def enabled() -> bool:
    env = os.environ.get("CIRCUITSCAN_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


@contextmanager
def status(message: str) -> Iterator[None]:
    """Show ``message`` with a spinner while the block runs (a plain line if not a tty)."""
    if not enabled():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


@contextmanager
def bar(description: str, total: int, *, show: bool | None = None) -> Iterator[callable]:
    """A progress bar; yields ``advance(n=1)``. Shown only when it is worth showing."""
    if not (enabled() if show is None else show):
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
