"""Code that runs inside worker processes (local pool and Ray).

Kept small and free of heavy imports at module level: a spawned worker imports this
module, and torch only once its initializer runs.

Per-process state: a local-pool worker is started with the paths of the variants'
activation caches (:func:`init_worker`) and memory-maps each the first time a unit needs
it; the mapping lives in ``_WORKER`` for the life of that worker process only. The main
process never fills it.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from ..types import HeadActivations, HeadLayout
from .evaluate import run_unit
from .plan import UnitTask
from .store import load_activations

_WORKER: dict[str, Any] = {"paths": {}, "acts": {}}


def set_threads(n: int) -> None:
    """Torch intra-op threads for this process (and inter-op, where still allowed)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only allowed before any parallel work started
        pass


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc: the kill test above is all there is


def watch_parent(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """Exit this worker as soon as ``parent_pid`` is gone (SIGKILL leaves no one to stop us)."""

    def loop() -> None:
        while process_alive(parent_pid):
            time.sleep(interval)
        os._exit(1)

    t = threading.Thread(target=loop, name="circuitscan-parent-watch", daemon=True)
    t.start()
    return t


def init_worker(paths: dict[str, str], threads: int, parent_pid: int | None = None) -> None:
    """Local-pool initializer: thread count, activation cache paths, Ctrl-C left to the parent.

    With ``parent_pid`` the worker also dies with the sweep's main process (see
    :func:`watch_parent`), so a killed sweep leaves no pool behind.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops the pool on Ctrl-C
    if parent_pid is not None:
        watch_parent(parent_pid)
    set_threads(threads)
    _WORKER["paths"] = dict(paths)
    _WORKER["acts"] = {}


def _cached(variant: str):
    if variant not in _WORKER["acts"]:
        acts, meta = load_activations(Path(_WORKER["paths"][variant]))
        _WORKER["acts"][variant] = (acts, int(meta.get("easy_negatives", 0) or 0))
    return _WORKER["acts"][variant]


def run_cached(unit: UnitTask) -> dict[str, Any]:
    """Local-pool task: run ``unit`` on its variant's memory-mapped activations."""
    acts, easy = _cached(unit.variant)
    return run_unit(acts, unit, easy=easy)


def to_bundle(acts, easy: int) -> tuple[Any, ...]:
    """What is put once in Ray's object store per variant: numpy arrays (read zero-copy)."""
    return (acts.x.detach().cpu().float().contiguous().numpy(), acts.labels.cpu().numpy().astype(bool),
            acts.layout.to_dict(), acts.aggregation, int(easy))


def from_bundle(bundle: tuple[Any, ...]):
    import torch

    x, labels, layout, aggregation, easy = bundle
    with warnings.catch_warnings():
        # Ray hands out read-only views of its shared memory; nothing here writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        xt = torch.from_numpy(x)
        lt = torch.from_numpy(labels)
    return HeadActivations(x=xt, labels=lt, layout=HeadLayout(**layout), aggregation=aggregation), easy


def ray_run_unit(bundle: tuple[Any, ...], unit: UnitTask, threads: int) -> dict[str, Any]:
    """Ray task: ``bundle`` arrives from the object store (Ray resolves the reference)."""
    set_threads(threads)
    acts, easy = from_bundle(bundle)
    return run_unit(acts, unit, easy=easy)
