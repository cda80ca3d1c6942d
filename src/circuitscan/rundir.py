"""Run directories: created atomically, read back by ``evaluate`` and ``report``.

A run is built in a hidden sibling directory and renamed into place when complete, so
an interrupted run leaves no directory that looks finished. Single files are written
to a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CircuitscanError

CONFIG = "config.json"
SCORES = "scores.json"
METRICS = "metrics.json"
CODES = "codes.safetensors"
SAE = "sae.safetensors"
ACTIVATIONS = "activations.safetensors"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(obj: Any) -> Any:
    """JSON-safe: tensors to lists, non-finite floats to strings."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")


def read_json(path: Path, what: str = "a circuitscan run directory") -> Any:
    """A JSON file of a run (or SAE) directory; ``what`` names the directory in errors."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CircuitscanError(f"{str(path)!r} does not exist; is {str(path.parent)!r} {what}?") from exc
    except json.JSONDecodeError as exc:
        raise CircuitscanError(f"{str(path)!r} is not valid JSON: {exc}") from exc


def check_out_dir(out: Path, *, overwrite: bool = False) -> None:
    """Fail early, before any work, if ``out`` cannot become a fresh run directory."""
    if out.exists() and not out.is_dir():
        raise CircuitscanError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CircuitscanError(
            f"--out {str(out)!r} is not empty; choose a new directory (or pass --overwrite to replace it)"
        )
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".circuitscan-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise CircuitscanError(f"cannot write the run directory {str(out)!r}: {exc.strerror or exc}") from exc


class RunWriter:
    """Collects a run's files in a temporary directory; :meth:`commit` moves it into place."""

    def __init__(self, out: Path, *, overwrite: bool = False) -> None:
        check_out_dir(out, overwrite=overwrite)
        self.out = out
        self.overwrite = overwrite
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def json(self, name: str, data: Any) -> None:
        write_json(self.path(name), data)

    def commit(self) -> Path:
        if self.out.exists():
            if any(self.out.iterdir()) and not self.overwrite:
                raise CircuitscanError(f"--out {str(self.out)!r} was filled by someone else meanwhile")
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


@contextmanager
def open_run(out: str | Path | None, *, overwrite: bool = False) -> Iterator[RunWriter | None]:
    """A :class:`RunWriter` for ``out`` (``None`` when ``out`` is), checked before any work.

    The block calls :meth:`RunWriter.commit` itself when it is done; if the block raises,
    the partial directory is removed and nothing appears at ``out``.
    """
    if out is None:
        yield None
        return
    with RunWriter(Path(out), overwrite=overwrite) as writer:
        yield writer
