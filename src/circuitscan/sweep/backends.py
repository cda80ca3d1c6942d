"""Where units run: in this process, in a local process pool, or on a Ray cluster.

Every backend takes the same units and yields the same result dicts, in completion
order; results never depend on the backend (each unit is seeded and workers use a
fixed number of torch threads).

* :class:`InlineBackend` (``workers=1``): in the calling process.
* :class:`LocalPoolBackend` (default): worker processes (``forkserver``: forked from a
  server process that imported torch once; ``spawn`` where there is none), ``threads``
  torch threads each. Activations are not sent with the units: each worker memory-maps the
  cache files once (copy-on-write), so the OS keeps one copy for all of them. At most
  ``workers`` units are in flight; if a worker process dies (killed, out of memory), the
  units it may have been running are retried one at a time in a fresh pool, and the one
  that kills its worker again is recorded as an error.
* :class:`RayBackend` (``--ray ADDRESS``): each variant's activations are put once in
  Ray's object store; tasks receive the reference and read the arrays zero-copy.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import CircuitscanError
from .evaluate import error_result, run_unit
from .plan import UnitTask
from .store import load_activations
from .worker import init_worker, ray_run_unit, run_cached

PRELOAD = ("torch", "sklearn.metrics", "circuitscan.sweep.evaluate", "circuitscan.sae", "circuitscan.codes",
           "circuitscan.evaluation.ground_truth")
DIED = "the worker process running it died (killed, out of memory or crashed)"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Backend(Protocol):
    name: str
    workers: int
    threads: int

    def run(self, units: Sequence[UnitTask]) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class InlineBackend:
    """Runs units one after another in this process, with ``threads`` torch threads."""

    name = "inline"

    def __init__(self, paths: dict[str, Path], *, threads: int = 1) -> None:
        self.paths = {k: Path(v) for k, v in paths.items()}
        self.workers = 1
        self.threads = threads
        self._acts: dict[str, Any] = {}

    def run(self, units: Sequence[UnitTask]) -> Iterator[dict[str, Any]]:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for u in units:
                if u.variant not in self._acts:
                    acts, meta = load_activations(self.paths[u.variant])
                    self._acts[u.variant] = (acts, int(meta.get("easy_negatives", 0) or 0))
                acts, easy = self._acts[u.variant]
                yield run_unit(acts, u, easy=easy)
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        self._acts.clear()


class LocalPoolBackend:
    """A pool of spawned processes; see the module docstring."""

    name = "local"

    def __init__(self, paths: dict[str, Path], *, workers: int, threads: int = 1, fn: Any = None) -> None:
        if workers < 1:
            raise CircuitscanError(f"workers must be >= 1, got {workers}")
        self.paths = {k: str(v) for k, v in paths.items()}
        self.workers = workers
        self.threads = threads
        self.fn = fn or run_cached
        self._pool = None

    def _ensure_pool(self):
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            if "forkserver" in mp.get_all_start_methods():
                # workers are forked from a server that imported torch once: fast starts, and
                # no fork of this (threaded) process
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload(list(PRELOAD))
            else:  # pragma: no cover - Windows
                ctx = mp.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx,
                initializer=init_worker, initargs=(self.paths, self.threads, os.getpid()),
            )
        return self._pool

    def _discard_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:  # do not wait for units in flight when stopping early
            if p.is_alive():
                p.terminate()

    def run(self, units: Sequence[UnitTask]) -> Iterator[dict[str, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        pending = deque(units)
        solo: deque[UnitTask] = deque()  # suspects of a worker death, run one at a time
        try:
            while pending or solo:
                pool = self._ensure_pool()
                inflight: dict[Any, tuple[UnitTask, bool]] = {}
                broke = False
                while (pending or solo or inflight) and not broke:
                    try:
                        if solo:
                            if not inflight:
                                u = solo.popleft()
                                inflight[pool.submit(self.fn, u)] = (u, True)
                        else:
                            while pending and len(inflight) < self.workers:
                                u = pending[0]
                                inflight[pool.submit(self.fn, u)] = (u, False)
                                pending.popleft()
                    except BrokenProcessPool:
                        broke = True
                        break
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        u, alone = inflight.pop(fut)
                        try:
                            result = fut.result()
                        except BrokenProcessPool:
                            broke = True
                            if alone:
                                yield error_result(u, DIED)
                            else:
                                solo.append(u)
                            continue
                        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
                            result = error_result(u, exc, stage="worker")
                        yield result
                if broke:
                    for u, alone in inflight.values():
                        if alone:  # pragma: no cover - a solo unit runs alone
                            yield error_result(u, DIED)
                        else:
                            solo.append(u)
                    self._discard_pool()
        except BaseException:
            self._discard_pool()
            raise

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Units as Ray tasks; each variant's activations put once in the object store."""

    name = "ray"

    def __init__(self, bundles: dict[str, Any], *, address: str | None, workers: int, threads: int = 1) -> None:
        try:
            import ray
        except ModuleNotFoundError as exc:
            raise CircuitscanError(
                "--ray needs the 'ray' package: pip install 'circuitscan[scale]' (or pip install ray)"
            ) from exc
        import logging

        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": False}
            if address in (None, "", "local"):
                kwargs["num_cpus"] = workers * threads
            else:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise CircuitscanError(f"--ray {address!r}: cannot connect to a Ray cluster: {exc}") from exc
            self.started = True
        self._ray = ray
        self.workers = workers
        self.threads = threads
        self.refs = {k: ray.put(b) for k, b in bundles.items()}  # once per variant, not per task
        self._remote = ray.remote(num_cpus=threads, max_retries=1)(ray_run_unit)
        self.address = address

    @property
    def cluster_cpus(self) -> float:
        return float(self._ray.cluster_resources().get("CPU", 0))

    def run(self, units: Sequence[UnitTask]) -> Iterator[dict[str, Any]]:
        ray = self._ray
        pending = {self._remote.remote(self.refs[u.variant], u, self.threads): u for u in units}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    u = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a worker died, a node left...
                        result = error_result(u, exc, stage="ray")
                    yield result
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        self.refs.clear()
        if self.started:
            self._ray.shutdown()
            self.started = False


def make_backend(
    paths: dict[str, Path],
    *,
    workers: int,
    threads: int,
    ray_address: str | None = None,
    bundles: dict[str, Any] | None = None,
) -> Backend:
    """The backend for these settings: Ray when an address is given, else local."""
    if ray_address is not None:
        return RayBackend(bundles or {}, address=ray_address, workers=workers, threads=threads)
    if workers == 1:
        return InlineBackend(paths, threads=threads)
    return LocalPoolBackend(paths, workers=workers, threads=threads)
