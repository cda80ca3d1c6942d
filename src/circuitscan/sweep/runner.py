"""Run a sweep: cache each prompt variant once, train every SAE on a backend, keep a journal.

:func:`run_sweep` is resumable by construction: rows already in ``DIR/journal.jsonl``
with status ``ok`` are never recomputed (rows that failed are tried again), and prompt
variants already cached under ``DIR/activations/`` are not run through the model again,
so a resumed sweep whose caches exist does not even need the model.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..activations import head_outputs
from ..errors import CircuitscanError
from ..models import load_model
from ..rundir import lock_run, read_json, write_json
from ..tasks import build_task
from .backends import Backend, available_cores, make_backend
from .baselines import run_baselines
from .evaluate import error_result
from .plan import Plan, SweepSpec, UnitTask, Variant, build_plan
from .store import (
    JOURNAL,
    SWEEP_JSON,
    Journal,
    activations_path,
    has_activations,
    load_activations,
    prepare_dir,
    save_activations,
)
from .table import build_tables, remove_tables, write_tables
from .worker import to_bundle

ProgressFn = Callable[[dict[str, Any], int, int], None]


@dataclass
class SweepResult:
    """What a sweep did and where its tables are."""

    out: Path
    plan: Plan
    tables: dict[str, Any]
    computed_units: int = 0
    reused_rows: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    files: list[Path] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        return int((self.tables["results"]["status"] == "ok").sum())

    @property
    def n_error(self) -> int:
        return int((self.tables["results"]["status"] == "error").sum())


@dataclass(frozen=True)
class Execution:
    """How units run: ``workers`` processes with ``threads`` torch threads each, or Ray."""

    workers: int | None = None
    threads: int | None = None
    ray_address: str | None = None

    def resolved(self, n_units: int) -> tuple[int, int]:
        cores = available_cores()
        workers = self.workers if self.workers is not None else max(1, min(cores, n_units))
        if workers < 1:
            raise CircuitscanError(f"--workers must be >= 1, got {workers}")
        threads = self.threads if self.threads is not None else max(1, cores // workers)
        if threads < 1:
            raise CircuitscanError(f"--threads-per-worker must be >= 1, got {threads}")
        return workers, threads


def check_identity(out: Path, spec: SweepSpec) -> None:
    """A resumed sweep must be of the same model and task (the grid and configs may change)."""
    old = read_json(out / SWEEP_JSON)
    for key in ("model", "task"):
        if old.get(key) != getattr(spec, key):
            raise CircuitscanError(
                f"--resume: {str(out)!r} holds a sweep of {key} {old.get(key)!r}, not {getattr(spec, key)!r}; "
                "use a new --out for a different model or task"
            )


def write_spec(out: Path, spec: SweepSpec, extra: dict[str, Any] | None = None) -> None:
    write_json(out / SWEEP_JSON, {"circuitscan_version": __version__, "command": "sweep", **spec.to_dict(),
                                  **(extra or {})})


def cache_variants(
    out: Path,
    plan: Plan,
    needed: set[str],
    model_fn: Callable[[], Any],
    *,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, str]:
    """Run the model once per prompt variant that has no cache yet; returns errors by variant."""
    errors: dict[str, str] = {}
    model = None
    spec = plan.spec
    for key in needed:
        if has_activations(out, key):
            continue
        v: Variant = plan.variants[key]
        if model is None:
            model = model_fn()
        t = time.perf_counter()
        try:
            prompts = build_task(v.task, model, v.n, seed=spec.prompt_seed, **v.options)
            acts = head_outputs(model, prompts, aggregation=v.aggregation, batch_size=spec.batch_size)
        except CircuitscanError as exc:
            errors[key] = f"{type(exc).__name__}: {exc}"
            log(f"variant {_describe_options(v)}: {exc}")
            continue
        meta = {**v.describe(), "model": spec.model, "prompt_seed": spec.prompt_seed,
                "n_positive": prompts.n_positive, "n_negative": prompts.n_negative, "seq_len": prompts.seq_len,
                "easy_negatives": int(prompts.metadata.get("easy_negatives", 0) or 0),
                "seconds": time.perf_counter() - t}
        save_activations(out, key, acts, meta)
        log(f"cached activations of {_describe_options(v)}: {acts.n_examples} prompts, "
            f"{time.perf_counter() - t:.1f}s")
    return errors


def _describe_options(v: Variant) -> str:
    return f"{v.task} ({v.n} per side, {v.aggregation}; " + ", ".join(f"{k}={o}" for k, o in v.options.items()) + ")"


def open_backend(out: Path, variants: set[str], execution: Execution, n_units: int) -> Backend:
    workers, threads = execution.resolved(n_units)
    paths = {k: activations_path(out, k) for k in variants}
    bundles = None
    if execution.ray_address is not None:
        bundles = {}
        for k, p in paths.items():
            acts, meta = load_activations(p)
            bundles[k] = to_bundle(acts, int(meta.get("easy_negatives", 0) or 0))
    return make_backend(paths, workers=workers, threads=threads, ray_address=execution.ray_address,
                        bundles=bundles)


def execute(
    units: list[UnitTask],
    backend: Backend,
    journal: Journal,
    *,
    on_result: ProgressFn | None = None,
) -> int:
    """Run ``units``, appending each result to the journal as it arrives. Returns the count."""
    done = 0
    for result in backend.run(units):
        journal.append(result)
        done += 1
        if on_result is not None:
            on_result(result, done, len(units))
    return done


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    model: Any = None,
    model_fn: Callable[[], Any] | None = None,
    execution: Execution | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_result: ProgressFn | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> SweepResult:
    """Run (or resume) the sweep ``spec`` into the directory ``out``.

    Args:
        spec: model, task, grid, seeds and base configs.
        out: the sweep directory (new, or an existing sweep with ``resume``).
        model: a loaded model (else ``model_fn`` or ``load_model(spec.model)`` when needed).
        execution: workers, threads per worker, or a Ray address.
        resume: continue the sweep in ``out``; finished rows are kept.
        overwrite: delete ``out`` first.
        on_result: called after each finished unit with (result, done, total).

    Returns:
        A :class:`SweepResult` with the tables (also written to ``out``).
    """
    t0 = time.perf_counter()
    out = Path(out)
    execution = execution or Execution()
    plan = build_plan(spec)  # validates every combination before anything is written
    with sweep_dir(out, resume=resume, overwrite=overwrite) as resuming:
        if resuming:
            check_identity(out, spec)
        write_spec(out, spec)
        return _run(spec, out, plan, model, model_fn, execution, on_result, log, t0)


SWEEP_DIR = "sweep directory"


@contextmanager
def sweep_dir(out: Path, *, resume: bool, overwrite: bool) -> Iterator[bool]:
    """:func:`prepare_dir` ``out`` and hold its lock throughout; yields True when resuming.

    An existing directory is locked before anything in it changes, a new (or replaced) one as
    soon as it exists, so a second sweep into ``out`` stops at once and touches nothing.
    """
    with lock_run(out, what=SWEEP_DIR, reenter=True):  # an existing sweep: resumed or replaced
        resuming = prepare_dir(out, resume=resume, overwrite=overwrite)
        with lock_run(out, what=SWEEP_DIR, reenter=True), discard_if_new(out, resuming):  # new or replaced: its own inode
            yield resuming


@contextmanager
def discard_if_new(out: Path, resuming: bool) -> Iterator[None]:
    """A new sweep that fails on bad input before any unit finished leaves no directory behind."""
    try:
        yield
    except CircuitscanError:
        if not resuming and not (out / JOURNAL).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _loaded_once(spec: SweepSpec, model: Any, model_fn: Callable[[], Any] | None) -> Callable[[], Any]:
    """``model_fn`` (or loading ``spec.model``), called at most once however often it is asked."""
    held: list[Any] = [] if model is None else [model]

    def get() -> Any:
        if not held:
            if model_fn is not None:
                held.append(model_fn())
            else:
                held.append(load_model(spec.model, seed=spec.prompt_seed))
        return held[0]

    return get


def _run(spec, out, plan, model, model_fn, execution, on_result, log, t0) -> SweepResult:
    journal = Journal(out / JOURNAL)
    rows, _ = journal.read()
    todo = {k for k in plan.rows if rows.get(k, {}).get("status") != "ok"}
    reused = len(plan.rows) - len(todo)
    units = plan.units_for(todo)
    timings: dict[str, float] = {}
    backend_name = "none"
    model_fn = _loaded_once(spec, model, model_fn)
    if units:
        remove_tables(out)
        needed = {u.variant for u in units}
        t = time.perf_counter()
        bad = cache_variants(out, plan, needed, model_fn, log=log)
        timings["activations"] = time.perf_counter() - t
        if bad and len(bad) == len(needed):
            raise CircuitscanError(next(iter(bad.values())))
        for u in units:
            if u.variant in bad:
                journal.append(error_result(u, bad[u.variant], stage="prompts"))
        units = [u for u in units if u.variant not in bad]
        t = time.perf_counter()
        backend = open_backend(out, needed - set(bad), execution, len(units))
        backend_name = f"{backend.name} ({backend.workers} worker(s) x {backend.threads} thread(s))"
        log(f"running {len(units)} SAE unit(s) on {backend_name}")
        try:
            execute(units, backend, journal, on_result=on_result)
        finally:
            backend.close()
        timings["units"] = time.perf_counter() - t
    baselines: dict[str, dict[str, Any]] = {}
    if not spec.baselines:
        remove_tables(out, ("baselines",))  # a resumed sweep that dropped its baselines
    else:
        t = time.perf_counter()
        baselines = run_baselines(out, spec, model_fn, log=log)
        timings["baselines"] = time.perf_counter() - t
    rows, unit_info = journal.read()
    tables = build_tables(plan, rows, unit_info, baselines)
    files = write_tables(out, tables)
    return SweepResult(out=out, plan=plan, tables=tables, computed_units=len(units), reused_rows=reused,
                       seconds=time.perf_counter() - t0, timings=timings, backend=backend_name, files=files)
