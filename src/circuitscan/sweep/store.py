"""What a sweep keeps on disk: its spec, cached activations and the journal of finished rows.

::

    DIR/sweep.json                      the spec (model, task, grid, seeds, base configs)
    DIR/activations/<variant>/x.npy     per-head outputs [examples, heads, d_model] float32
    DIR/activations/<variant>/labels.npy, meta.json
    DIR/journal.jsonl                   one line per finished unit (append-only, fsynced)

The journal is the sweep's memory: a unit's line is appended (and flushed to disk) as
soon as its result arrives, so an interrupted sweep loses at most the units in flight.
A line cut short by a crash is ignored on reading. Later lines win, so a row that failed
and was computed again reads as its last result. Activation caches are written to a
temporary directory and renamed into place; workers memory-map them (copy-on-write), so
every process shares one copy in the page cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CircuitscanError
from ..rundir import MARKER, check_not_protected, check_replaceable, write_marker
from ..types import HeadActivations, HeadLayout

SWEEP_JSON = "sweep.json"
JOURNAL = "journal.jsonl"
ACTIVATIONS_DIR = "activations"


def activations_path(out: Path, key: str) -> Path:
    return out / ACTIVATIONS_DIR / key


def has_activations(out: Path, key: str) -> bool:
    return (activations_path(out, key) / "meta.json").is_file()


def save_activations(out: Path, key: str, acts, meta: dict[str, Any]) -> Path:
    """Write ``acts`` (x, labels) and ``meta`` under ``DIR/activations/<key>/`` atomically."""
    import numpy as np

    final = activations_path(out, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=final.parent))
    try:
        np.save(tmp / "x.npy", acts.x.detach().to("cpu").float().contiguous().numpy())
        np.save(tmp / "labels.npy", acts.labels.to("cpu").numpy().astype(bool))
        full = {**meta, **acts.layout.to_dict(), "aggregation": acts.aggregation}
        (tmp / "meta.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_activations(path: Path):
    """(HeadActivations memory-mapped copy-on-write, meta) from a cache directory."""
    import numpy as np
    import torch

    meta = json.loads((path / "meta.json").read_text())
    x = torch.from_numpy(np.load(path / "x.npy", mmap_mode="c"))
    labels = torch.from_numpy(np.load(path / "labels.npy"))
    layout = HeadLayout(int(meta["n_layers"]), int(meta["n_heads"]))
    return HeadActivations(x=x, labels=labels, layout=layout, aggregation=meta["aggregation"]), meta


class Journal:
    """Append-only record of finished units; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(rows by row key, unit info by unit key); later lines win, a cut-off line is skipped."""
        rows: dict[str, dict[str, Any]] = {}
        units: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows, units
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption
                if not isinstance(rec, dict) or "unit" not in rec:
                    continue
                units[rec["unit"]] = {k: v for k, v in rec.items() if k != "rows"}
                for r in rec.get("rows", []):
                    rows[r["key"]] = {**r, "unit": rec["unit"]}
        return rows, units

    def append(self, record: dict[str, Any]) -> None:
        text = json.dumps(record, separators=(",", ":"))  # NaN/inf round-trip through Python's json
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # the last write was cut off: end that line first
                    f.write(b"\n")
            f.write(text.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())


def check_dir(out: Path, *, resume: bool, overwrite: bool) -> str:
    """What ``out`` is for a sweep, without touching it: ``"new"``, ``"resume"`` or ``"replace"``.

    Raises:
        CircuitscanError: ``out`` is a file, is a non-empty directory that is not a sweep,
            or holds a sweep and neither ``resume`` nor ``overwrite`` was given.
    """
    if resume and overwrite:
        raise CircuitscanError("give --resume (continue the sweep in --out) or --overwrite (start over), not both")

    check_not_protected(out)
    if out.exists() and not out.is_dir():
        raise CircuitscanError(f"--out {str(out)!r} exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return "new"
    is_sweep = (out / SWEEP_JSON).is_file()
    if overwrite:
        check_replaceable(out)
        return "replace"
    if resume and is_sweep:
        return "resume"
    if resume:
        raise CircuitscanError(f"--resume: {str(out)!r} is not empty and holds no sweep ({SWEEP_JSON} missing)")
    if is_sweep:
        raise CircuitscanError(
            f"--out {str(out)!r} holds a sweep already; pass --resume to continue it (finished points are "
            "kept), or --overwrite to start over"
        )
    raise CircuitscanError(f"--out {str(out)!r} is not empty; choose a new directory (or pass --overwrite)")


def prepare_dir(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """:func:`check_dir`, then make ``out`` ready; returns True when resuming."""
    what = check_dir(out, resume=resume, overwrite=overwrite)
    if what == "replace":
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).is_file():
            write_marker(out, "sweep")
    except OSError as exc:
        raise CircuitscanError(f"cannot create the sweep directory {str(out)!r}: {exc.strerror or exc}") from exc
    return what == "resume"
