"""Optuna search over SAE hyperparameters maximising node AUC (the paper's Table 7).

The paper ran 100 Optuna trials over the number of features (128..2048) and lambda
(0.01..0.1); those are the default ranges here (``--space`` changes them). A trial's
value is its node AUC, the mean over ``--seeds`` SAEs. Trials run through the same
backends as a grid sweep (a batch of ``workers`` trials at a time, TPE's constant liar
keeping them apart) and their rows go to the same journal.

Resuming: the study lives in ``--storage`` (default ``sqlite:///DIR/study.db``); a search
started again with the same storage and study name continues until ``trials`` trials
have finished. Trials left running by an interruption are marked failed and their
parameters queued again, so no point is lost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import CircuitscanError
from ..models import load_model
from ..rundir import write_json
from .backends import available_cores
from .grid import AXES, SAE, Grid, canonical_axis
from .plan import SweepSpec, build_plan
from .runner import Execution, cache_variants, check_identity, open_backend, sweep_dir, write_spec
from .store import JOURNAL, Journal
from .table import write_tables

DEFAULT_SPACE = ("features=128:2048", "l1=0.01:0.1")  # the paper's ranges (Table 7)
SEARCHABLE = ("features", "l1", "lr", "epochs", "train_examples", "contrastive")
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Range:
    axis: str
    low: float
    high: float
    integer: bool
    log: bool


@dataclass(frozen=True)
class SearchSpace:
    ranges: tuple[Range, ...]

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution, IntDistribution

        return {
            r.axis: IntDistribution(int(r.low), int(r.high), log=r.log) if r.integer
            else FloatDistribution(r.low, r.high, log=r.log)
            for r in self.ranges
        }

    def grid(self) -> Grid:
        return Grid(tuple((r.axis, ()) for r in self.ranges), {r.axis: SAE for r in self.ranges})

    def to_dict(self) -> dict[str, Any]:
        return {r.axis: {"low": r.low, "high": r.high, "log": r.log, "integer": r.integer} for r in self.ranges}


def parse_space(items: Sequence[str] | str | None = None) -> SearchSpace:
    """``["features=128:2048", "l1=0.01:0.1"]`` -> a search space (log scale when low > 0).

    Raises:
        CircuitscanError: a malformed item, an axis that cannot be searched, bad bounds.
    """
    if items is None:
        items = DEFAULT_SPACE
    if isinstance(items, str):
        items = items.split()
    ranges: list[Range] = []
    for item in items:
        name, sep, raw = item.partition("=")
        lo_t, sep2, hi_t = raw.partition(":")
        if not sep or not sep2 or not name.strip() or not lo_t.strip() or not hi_t.strip():
            raise CircuitscanError(
                f"--space item {item!r} must look like axis=low:high (e.g. features=128:2048 l1=0.01:0.1)"
            )
        key = canonical_axis(name)
        if key not in SEARCHABLE:
            raise CircuitscanError(f"--space: cannot search axis {name.strip()!r}; searchable: {', '.join(SEARCHABLE)}")
        if any(r.axis == key for r in ranges):
            raise CircuitscanError(f"--space: axis {key!r} is given twice")
        axis = AXES[key]
        try:
            lo, hi = axis.parse(lo_t.strip()), axis.parse(hi_t.strip())
        except ValueError as exc:
            raise CircuitscanError(f"--space: bounds of {key!r} ({raw!r}): {exc}; expected {axis.type_name}") from None
        if not lo < hi:
            raise CircuitscanError(f"--space: {key!r} needs low < high, got {raw!r}")
        ranges.append(Range(key, lo, hi, integer=isinstance(lo, int), log=lo > 0))
    if not ranges:
        raise CircuitscanError("--space needs at least one axis=low:high")
    return SearchSpace(tuple(ranges))


@dataclass
class SearchResult:
    out: Path
    study_name: str
    storage: str
    trials: Any  # DataFrame, one row per trial
    summary: dict[str, Any] = field(default_factory=dict)
    computed_units: int = 0
    seconds: float = 0.0


def _check_storage(storage: str) -> None:
    if storage.startswith("sqlite:///"):
        parent = Path(storage[len("sqlite:///"):]).expanduser().parent
        if not parent.is_dir():
            raise CircuitscanError(f"--storage {storage!r}: directory {str(parent)!r} does not exist")
    elif "://" not in storage:
        raise CircuitscanError(
            f"--storage {storage!r} is not a database URL; e.g. sqlite:///runs/search/study.db"
        )


def _done(trial) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def improvement(trials: list[Any]) -> dict[str, Any]:
    """Did the best trial beat the first finished one? With a sentence saying so either way."""
    from optuna.trial import TrialState

    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    if not complete:
        return {"improved": False, "first": None, "best": None,
                "message": "no trial finished; nothing to compare (see the errors in trials.csv)"}
    first = complete[0]
    best = max(complete, key=lambda t: (t.value, -t.number))
    improved = best.value > first.value
    fmt = ", ".join
    if improved:
        msg = (f"the search improved on its first trial: best trial #{best.number} "
               f"({fmt(f'{k}={_short(v)}' for k, v in best.params.items())}) reached node AUC {best.value:.4f}, "
               f"up from {first.value:.4f} in trial #{first.number}")
    else:
        why = "; the first trial already reached the maximum, 1.0" if first.value >= 1.0 else ""
        msg = (f"the search did not improve on its first trial (#{first.number}, node AUC {first.value:.4f}) "
               f"in {len(complete)} finished trial(s){why}")
    info = lambda t: {"trial": t.number, "value": t.value, "params": t.params}  # noqa: E731
    return {"improved": improved, "first": info(first), "best": info(best), "message": msg}


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trials_table(trials: list[Any], space: SearchSpace):
    import pandas as pd

    recs = []
    for t in sorted(trials, key=lambda t: t.number):
        rec = {"trial": t.number, "state": t.state.name, "node_auc": t.value if t.value is not None else math.nan}
        rec.update({r.axis: t.params.get(r.axis) for r in space.ranges})
        rec.update({k: v for k, v in t.user_attrs.items() if k != INTERRUPTED})
        recs.append(rec)
    df = pd.DataFrame.from_records(recs)
    if len(df):
        df["best_so_far"] = df["node_auc"].where(df["state"] == "COMPLETE").cummax()
    return df


def _trial_attrs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    ok = [r for r in rows if r["status"] == "ok"]
    attrs: dict[str, Any] = {"n_seeds": len(rows), "n_ok": len(ok)}
    for c in ("node_auc", "node_best_f1", "node_best_theta", "node_circuit_size", "head_auc_from_pairs"):
        vals = [r[c] for r in ok if c in r]
        if vals:
            attrs[f"{c}_mean"] = float(np.mean(vals))
            attrs[f"{c}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
    errors = sorted({r["error"] for r in rows if r["status"] != "ok"})
    if errors:
        attrs["error"] = "; ".join(errors)[:500]
    return attrs


def run_search(
    spec: SweepSpec,
    out: str | Path,
    *,
    trials: int = 100,
    space: SearchSpace | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    model: Any = None,
    execution: Execution | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> SearchResult:
    """Run (or resume) an Optuna search; writes ``trials.parquet|csv`` and ``search.json`` to ``out``.

    Raises:
        CircuitscanError: no ground truth (node AUC needs one), a grid was given, a bad
            storage URL, or ``trials < 1``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if trials < 1:
        raise CircuitscanError(f"--trials must be >= 1, got {trials}")
    if spec.truth is None:
        raise CircuitscanError(
            "an Optuna search maximises node AUC and needs a ground truth; give --ground-truth HEADS "
            "(no canonical circuit is known for this task on this model)"
        )
    if len(spec.grid.names):
        raise CircuitscanError("--search explores --space; it cannot be combined with --grid or --sweep")
    space = space or parse_space()
    spec = replace(spec, grid=space.grid())
    if storage is not None:
        _check_storage(storage)
    with sweep_dir(out, resume=resume, overwrite=overwrite) as resuming:
        return _search(spec, out, trials, space, storage, study_name, model, execution, resuming, on_trial, log, t0)


def _search(spec, out, trials, space, storage, study_name, model, execution, resuming, on_trial, log, t0):
    import optuna

    if resuming:
        check_identity(out, spec)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = study_name or f"circuitscan-{spec.task}-{spec.model}".replace("/", "_")
    write_spec(out, spec, {"search": {"engine": "optuna", "trials": trials, "space": space.to_dict(),
                                      "storage": storage, "study_name": study_name}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.trial import TrialState

    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    load_if_exists=True)
    except Exception as exc:  # noqa: BLE001 - storage errors come in many types
        raise CircuitscanError(f"--storage {storage!r}: cannot open the study: {type(exc).__name__}: {exc}") from exc
    # the sampler's seed moves on with the study's history: a resumed search draws new points
    # instead of replaying the first ones, and is still the same search for the same history
    study.sampler = optuna.samplers.TPESampler(seed=spec.seeds[0] + len(study.get_trials(deepcopy=False)))

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if t.state == TrialState.RUNNING:  # left running by an interruption: fail it, ask again
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={INTERRUPTED: t.number})
    journal = Journal(out / JOURNAL)
    dists = space.distributions()
    base_plan = build_plan(spec, points=[{}], reference=False)
    computed = 0
    backend = None
    execution = execution or Execution()
    try:
        while True:
            finished = sum(_done(t) for t in study.get_trials(deepcopy=False))
            if finished >= trials:
                break
            if backend is None:
                cache_variants(out, base_plan, set(base_plan.variants), lambda: model or _load(spec), log=log)
                backend = open_backend(out, set(base_plan.variants), execution, available_cores() * len(spec.seeds))
                log(f"search on {backend.name} ({backend.workers} worker(s) x {backend.threads} thread(s))")
            batch = [study.ask(dists) for _ in range(min(backend.workers, trials - finished))]
            points = [{k: t.params[k] for k in dists} for t in batch]
            plan = build_plan(spec, points=points, reference=False)
            done_rows, _ = journal.read()
            todo = {k for k in plan.rows if done_rows.get(k, {}).get("status") != "ok"}
            units = plan.units_for(todo)
            for result in backend.run(units):
                journal.append(result)
                computed += 1
            done_rows, _ = journal.read()
            for i, trial in enumerate(batch):
                rows = [{**done_rows[k], "key": k} for k, info in plan.rows.items() if info.point == i]
                attrs = _trial_attrs(rows)
                for k, v in attrs.items():
                    trial.set_user_attr(k, v)
                if "node_auc_mean" in attrs:
                    study.tell(trial, attrs["node_auc_mean"])
                else:
                    study.tell(trial, state=TrialState.FAIL)
                if on_trial is not None:
                    on_trial({"trial": trial.number, "params": trial.params, **attrs})
    finally:
        if backend is not None:
            backend.close()
    all_trials = study.get_trials(deepcopy=False)
    table = trials_table(all_trials, space)
    write_tables(out, {"trials": table})
    summary = {"study_name": study_name, "storage": storage, "n_trials": len(all_trials),
               "n_complete": int(sum(t.state == TrialState.COMPLETE for t in all_trials)),
               "space": space.to_dict(), "objective": "node_auc (mean over seeds)", "seeds": list(spec.seeds),
               **improvement(all_trials)}
    write_json(out / "search.json", summary)
    return SearchResult(out=out, study_name=study_name, storage=storage, trials=table, summary=summary,
                        computed_units=computed, seconds=time.perf_counter() - t0)


def _load(spec: SweepSpec):
    return load_model(spec.model, seed=spec.prompt_seed)
