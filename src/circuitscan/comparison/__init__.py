"""Run several circuit-finding methods on the same model and prompts, score them alike.

:func:`compare` runs each method through the one :class:`~circuitscan.methods.base.Scorer`
contract (``sae-codes`` gives two score sets: node level and the paper's head-level
score from head pairs, ``sae-codes-pairs``), then evaluates every method the same way:

* ROC AUC over heads against a ground truth (all methods). For ACDC and SP, which
  predict one circuit per threshold, the AUC is that of their threshold SWEEP (the
  ROC points of the circuits at each threshold); for every other method it comes from
  the RANKING of its scores (``roc_source`` says which).
* ROC AUC over real edges, for methods that score edges (``eap``, ``eap-ig``,
  ``acdc-edge``), against an edge ground truth where one exists, over every head-level
  edge of the model's graph (:func:`circuitscan.methods.edges.head_level_edges`).
* faithfulness curves with CPR and CMD (:mod:`circuitscan.evaluation.faithfulness`),
  every method's heads added in score order, under the same metric and ablation the
  baselines used.

Everything goes into a run directory (docs/RUN_DIRECTORY.md): ``config.json``,
``scores.json`` (every method), ``metrics.json`` (``ground_truth``,
``edge_ground_truth``, ``faithfulness``, ``circuits``, ``comparison``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..evaluation.curve_stats import (
    CURVE_POINTS,
    RANDOM_EXAMPLES,
    RANDOM_PRECISION,
    random_example_count,
)
from ..precision import resolve_precision
from ..run import scores_to_json
from ..rundir import CONFIG, METRICS, SCORES, open_run
from ..runfiles import config_header, ground_truth_block, task_block
from .evaluate import edge_truth_for, evaluate_methods, faithfulness_block, sweep_points
from .settings import CompareSettings, method_configs, method_registry, parse_methods
from .table import comparison_block, comparison_rows, format_table

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import GroundTruth, PromptSet, Scores

_evaluate = evaluate_methods  # the name benchmarks/bench_compare.py imports

# --------------------------------------------------------------------------- cost estimates


def estimate_passes(method: str, cfg: Any, model: ModelHandle, prompts: PromptSet) -> tuple[float, float, str]:
    """(forward prompt-rows, backward prompt-rows, what dominates) a method will spend, roughly
    (the method's :attr:`MethodSpec.cost`; upper bounds where it can stop early)."""
    return method_registry().spec(method).cost(cfg, model, prompts)


def seconds_per_row(model: ModelHandle, prompts: PromptSet, rows: int = 8) -> float:
    """Wall time of one prompt row through a plain forward pass (measured once, warm)."""
    import torch

    tok = prompts.positive[:rows]
    with torch.inference_mode():
        model.bridge(tok[:1])
        t = time.perf_counter()
        model.bridge(tok)
    return (time.perf_counter() - t) / tok.shape[0]


@dataclass
class CompareResult:
    """What :func:`compare` returns (and wrote, if ``out`` was given)."""

    scores: list[Scores]
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    config: dict[str, Any]
    out: Path | None = None
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)


def compare(
    model: ModelHandle,
    prompts: PromptSet,
    methods: Sequence[str],
    ground_truth: GroundTruth | None = None,
    out: str | Path | None = None,
    *,
    settings: CompareSettings | None = None,
    configs: dict[str, Any] | None = None,
    edge_ground_truth: str | None = None,
    faithfulness: bool = True,
    faithfulness_samples: int = 10,
    faithfulness_points: int = CURVE_POINTS,
    random_examples: int = RANDOM_EXAMPLES,
    random_precision: str = RANDOM_PRECISION,
    overwrite: bool = False,
    extra_config: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
    seed: int = 0,
) -> CompareResult:
    """Run ``methods`` on ``model`` and ``prompts`` and evaluate them side by side.

    Args:
        model, prompts: the model and the task's prompts, the same for every method.
        methods: registered method names (:func:`circuitscan.methods.names`).
        ground_truth: heads to compute ROC AUCs against (None: no AUCs).
        out: run directory to write (new or empty); None = nothing written.
        settings: metric, ablation, prompts and limits shared by the baselines.
        configs: per-method config overrides ({method: config}).
        edge_ground_truth: name of an edge ground truth (default: the head ground truth's
            name, when an edge version exists; ``planted`` for the toy model).
        faithfulness: compute faithfulness curves, CPR and CMD.
        random_examples: the curves' random circuits run on the first this many prompts (0 or
            >= their number: all; :data:`~circuitscan.evaluation.curve_stats.RANDOM_EXAMPLES`);
            each curve records the count it used (``random_examples``).
        random_precision: their passes' precision (``fp32``, ``bf16``, ``auto``;
            :data:`~circuitscan.evaluation.curve_stats.RANDOM_PRECISION`).
        log: where progress lines go (default: nowhere).

    Returns:
        :class:`CompareResult` with every method's scores and the comparison rows.
    """
    methods = parse_methods(list(methods))
    settings = settings or CompareSettings()
    random_example_count(1, random_examples)  # refuse a bad value before any method runs
    resolve_precision(random_precision)
    say = log or (lambda _msg: None)
    if ground_truth is not None:
        ground_truth.check_layout(model.layout)
    egt_name, egt_edges = edge_truth_for(edge_ground_truth, model, ground_truth)
    cfgs = _method_configs(settings, methods, configs)
    with open_run(out, overwrite=overwrite) as writer:
        estimates = _plan(model, prompts, methods, cfgs, say)
        all_scores, method_time = _run_methods(model, prompts, methods, cfgs, say)
        metrics = evaluate_methods(model, prompts, all_scores, ground_truth, egt_name, egt_edges)
        if faithfulness:
            say("faithfulness curves ...")
            metrics["faithfulness"] = faithfulness_block(model, prompts, all_scores, settings, faithfulness_samples,
                                                         faithfulness_points, seed, random_examples,
                                                         random_precision)
        rows = comparison_rows(all_scores, metrics)
        metrics["comparison"] = comparison_block(rows)
        metrics["timings_s"] = {**(timings or {}), **{f"method:{k}": v for k, v in method_time.items()}}
        metrics["estimates"] = estimates
        config = _config(model, prompts, methods, cfgs, settings, ground_truth, egt_name, extra_config)
        result = CompareResult(scores=all_scores, rows=rows, metrics=metrics, config=config, estimates=estimates)
        if writer is not None:
            _write(writer, result, model)
            result.out = writer.commit()
    return result


def _method_configs(settings: CompareSettings, methods: list[str], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Each method's config from the shared settings, with the caller's per-method overrides."""
    cfgs = method_configs(settings, methods)
    for k, v in (overrides or {}).items():
        if k not in cfgs:
            raise CircuitscanError(f"a config was given for {k!r}, which is not among the methods {methods}")
        cfgs[k] = v
    return cfgs


def _plan(model: ModelHandle, prompts: PromptSet, methods: list[str], cfgs: dict[str, Any],
          say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Each method's estimated cost, from one timed forward pass; says which will take long."""
    per_row = seconds_per_row(model, prompts)
    estimates = {}
    for m in methods:
        f_rows, b_rows, what = estimate_passes(m, cfgs[m], model, prompts)
        secs = (f_rows + 2 * b_rows) * per_row
        estimates[m] = {"forward_rows": f_rows, "backward_rows": b_rows, "seconds": secs, "what": what}
    slow = [m for m in methods if estimates[m]["seconds"] > 60]
    plan = ", ".join(f"{m} ~{_fmt_s(estimates[m]['seconds'])}" for m in methods)
    say(f"plan (rough, from one timed forward pass): {plan}")
    for m in slow:
        limit = getattr(cfgs[m], "max_seconds", None)
        say(f"note: {m} will take long: {estimates[m]['what']}, about {_fmt_s(estimates[m]['seconds'])} here"
            + (f"; it stops after {_fmt_s(limit)} (--max-seconds) and extrapolates" if limit else ""))
    return estimates


def _run_methods(model: ModelHandle, prompts: PromptSet, methods: list[str], cfgs: dict[str, Any],
                 say: Callable[[str], None]) -> tuple[list[Scores], dict[str, float]]:
    """Every method's scores (``sae-codes`` gives two) and each method's wall time."""
    run_method = method_registry().run_method
    all_scores: list[Scores] = []
    method_time: dict[str, float] = {}
    for m in methods:
        say(f"running {m} ...")
        t = time.perf_counter()
        got = run_method(m, model, prompts, cfgs[m])
        method_time[m] = time.perf_counter() - t
        all_scores.extend(got)
        for s in got:
            say(f"  {s.method}: {s.wall_time_s:.2f}s, {s.forward_passes} forward / {s.backward_passes} backward "
                "passes" + (" (stopped early at the time limit)" if s.stats.get("stopped_early") else ""))
    return all_scores, method_time


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _config(
    model: ModelHandle,
    prompts: PromptSet,
    methods: list[str],
    cfgs: dict[str, Any],
    settings: CompareSettings,
    gt: GroundTruth | None,
    egt_name: str | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    def plain(c: Any) -> Any:
        return asdict(c) if is_dataclass(c) else repr(c)

    return {
        **config_header("compare", model),
        "task": task_block(prompts),
        "methods": methods,
        "method_configs": {m: plain(c) for m, c in cfgs.items()},
        "settings": asdict(settings),
        "ground_truth": ground_truth_block(gt),
        "edge_ground_truth": egt_name,
        **(extra or {}),
    }


def _write(writer: Any, result: CompareResult, model: ModelHandle) -> None:
    methods = {}
    for s in result.scores:
        entry = scores_to_json(s)
        if s.edges is not None:
            entry["edges"] = s.edges
        methods[s.method] = entry
    writer.json(CONFIG, result.config)
    writer.json(SCORES, {"layout": model.layout.to_dict(), "methods": methods})
    writer.json(METRICS, result.metrics)


__all__ = ["CompareResult", "CompareSettings", "compare", "edge_truth_for", "estimate_passes", "format_table",
           "method_configs", "method_registry", "parse_methods", "seconds_per_row", "sweep_points"]
