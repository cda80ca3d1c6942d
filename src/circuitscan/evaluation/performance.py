"""The ``evaluate`` step of a run directory: every method's circuit measured by intervention
(the circuit performance table of :mod:`.performance_table`, which this module re-exports)
and, optionally, faithfulness curves at node and edge level; written into metrics.json."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import circuits
from ..errors import CircuitscanError
from ..integrity import check_same_task
from ..models import load_model
from ..precision import resolve_precision
from ..rundir import METRICS, write_run_json
from ..runfiles import RunFiles, read_run
from ..tasks import build_prompts
from ..types import GroundTruth, Scores
from .circuit_rule import predicted_circuit
from .curve_stats import RANDOM_EXAMPLES, RANDOM_PRECISION, random_example_count
from .faithfulness import (
    CURVE_POINTS,
    curve_sizes,
    curves_summary,
    edge_faithfulness_curves,
    faithfulness_curves,
)
from .intervention import CircuitEvaluator
from .metrics import table_metrics
from .mib import imported_circuit, mib_blocks
from .performance_table import (
    RANDOM_SAMPLES,
    PerformanceRow,
    PerformanceTable,
    circuit_performance,
)

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet


# --------------------------------------------------------------------------- run directories


def scores_from_json(data: Mapping[str, Any], layout) -> list[Scores]:
    """Rebuild each method's per-head :class:`Scores` from a run's scores.json."""
    import torch

    methods = data.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise CircuitscanError("scores.json has no methods; is this a finished circuitscan run?")
    out = []
    for name, entry in methods.items():
        heads, values = entry.get("heads"), entry.get("scores")
        if heads != layout.names() or not isinstance(values, list) or len(values) != layout.n_total:
            raise CircuitscanError(
                f"scores.json: method {name!r} does not score the {layout.n_total} heads of this model in "
                "flat order (L0H0, L0H1, ...); was the run made with another model?"
            )
        vals = [float(v) for v in values]  # "nan"/"inf" strings come back as floats
        edges = entry.get("edges")
        edges = {str(k): float(v) for k, v in edges.items()} if isinstance(edges, Mapping) and edges else None
        out.append(Scores(method=name, node=torch.tensor(vals).reshape(layout.n_layers, layout.n_heads),
                          layout=layout, edges=edges, wall_time_s=float(entry.get("wall_time_s", 0.0)),
                          forward_passes=int(entry.get("forward_passes", 0)),
                          backward_passes=int(entry.get("backward_passes", 0))))
    return out


def _rebuild(config: Mapping[str, Any]) -> tuple[ModelHandle, PromptSet]:
    """Reload the model and rebuild the prompts a run was made with."""
    model_cfg, task_cfg = config.get("model") or {}, config.get("task") or {}
    if not all(isinstance(v, Mapping) for v in (model_cfg, task_cfg, config.get("argv") or {})):
        raise CircuitscanError("config.json: 'model', 'task' and 'argv' must be objects; is this a circuitscan run?")
    argv = dict(config.get("argv") or {})
    argv.setdefault("model", model_cfg.get("spec"))
    argv.setdefault("tokenizer", None)
    argv.setdefault("device", "cpu")
    file = task_cfg.get("file") if task_cfg.get("name") == "custom" else None
    argv.setdefault("task", None if file else task_cfg.get("name"))
    argv.setdefault("task_file", file)
    argv.setdefault("examples", task_cfg.get("n_positive"))
    argv.setdefault("seed", task_cfg.get("seed", 0))
    if not argv["model"] or not (argv["task"] or argv["task_file"]) or not argv["examples"]:
        raise CircuitscanError("config.json does not say which model, task and number of prompts the run used")
    model = load_model(argv["model"], device=argv["device"], tokenizer=argv["tokenizer"], seed=argv["seed"])
    prompts = build_prompts(model, task=argv["task"], task_file=argv["task_file"], n=argv["examples"],
                            seed=argv["seed"], unequal=argv["unequal_lengths"] if argv["task_file"] else "pad")
    return model, prompts


def _check_prompts(prompts: PromptSet, config: Mapping[str, Any]) -> None:
    task = config.get("task") or {}
    if not isinstance(task, Mapping):
        raise CircuitscanError(f"config.json: 'task' must be an object, got {type(task).__name__}")
    for key, have in (("n_positive", prompts.n_positive), ("n_negative", prompts.n_negative),
                      ("seq_len", prompts.seq_len), ("name", prompts.task)):
        want = task.get(key)
        if want is not None and want != have:
            raise CircuitscanError(
                f"the rebuilt prompts differ from the run's (task {key}: run {want!r}, rebuilt {have!r}); "
                "the task generator may have changed since the run was made"
            )
    check_same_task(prompts, task)


def _circuits_for(
    scores: Sequence[Scores], metrics: Mapping[str, Any], *, threshold: float | None, size: int | None
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    saved = metrics.get("circuits") or {}
    for s in scores:
        if size is not None:
            if not 0 <= size <= s.layout.n_total:
                raise CircuitscanError(f"--size must be in 0..{s.layout.n_total}, got {size}")
            out[s.method] = [h.name for h in s.ranking()[:size]]
        elif threshold is not None:
            out[s.method] = predicted_circuit(s, threshold, None)["heads"]
        elif s.method in saved and isinstance(saved[s.method].get("heads"), list):
            out[s.method] = list(saved[s.method]["heads"])
        else:
            out[s.method] = predicted_circuit(s, None, None)["heads"]
    return out


def _ground_truth(spec: str | None, config: Mapping[str, Any], model: ModelHandle) -> GroundTruth | None:
    if spec:
        return circuits.for_model(spec, model)
    saved = config.get("ground_truth")
    if isinstance(saved, Mapping) and saved.get("heads"):
        gt = GroundTruth.from_heads(saved["heads"], name=str(saved.get("name", "ground truth")),
                                    model=str(saved.get("model", "")))
        gt.check_layout(model.layout)
        return gt
    return None


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` added to metrics.json (and the objects behind it)."""

    performance: PerformanceTable
    faithfulness: dict[str, Any] | None
    curves: dict[str, Any]
    stats: dict[str, float]
    circuits: dict[str, list[str]]
    metrics_json: dict[str, Any]


def _read_run(run: Path, threshold: float | None, size: int | None) -> RunFiles:
    """The run directory through the one run reader, checked for ``evaluate`` (and the circuit rule)."""
    if threshold is not None and size is not None:
        raise CircuitscanError("give either a threshold or a circuit size, not both")
    if threshold is not None and not math.isfinite(threshold):
        raise CircuitscanError(f"threshold must be a finite number, got {threshold}")
    files = read_run(run)
    if not files.has_task:
        raise CircuitscanError(f"{str(run)!r} is a {files.kind} run of a single prompt, not of a task's prompt "
                               "pairs: evaluate needs positive and negative prompts (make the graph with "
                               "--task)")
    return files


def _faithfulness(ev: Any, model: ModelHandle, prompts: PromptSet, scores: list[Scores], *, ablation: str,
                  points: int, samples: int, seed: int, n_examples: int | None,
                  random_examples: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Node-level curves and the ``faithfulness`` block, with the edge-level curves under ``edge_level``."""
    sizes = curve_sizes(model.layout.n_total, points)
    curves = faithfulness_curves(ev, scores, sizes=sizes, random_samples=samples, seed=seed,
                                 random_examples=random_examples)
    faith_json = curves_summary(ev, curves)
    edge_curves = edge_faithfulness_curves(model, prompts, scores, ablation=ablation, metric=ev.metrics[0],
                                           random_samples=samples, seed=seed, n_examples=n_examples)
    if edge_curves:
        faith_json["edge_level"] = {
            "n_edges": next(iter(edge_curves.values())).n_edges,
            "rule": "top-k edges by score kept, every other edge patched (no pruning); sizes at the MIB "
            "fractions of the model's head-graph edges",
            "curves": {m: c.to_dict() for m, c in edge_curves.items()},
            "cpr": {m: c.cpr for m, c in edge_curves.items()},
            "cmd": {m: c.cmd for m, c in edge_curves.items()},
        }
    return curves, faith_json


def _updated(metrics_json: dict[str, Any], perf_json: dict[str, Any], faith_json: dict[str, Any] | None,
             imported_json: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """metrics.json with the evaluation's blocks and its time added."""
    updated = dict(metrics_json)
    updated["circuit_performance"] = perf_json
    if faith_json is not None:
        updated["faithfulness"] = faith_json
    if imported_json is not None:
        updated["imported_circuit"] = imported_json
    timings = dict(updated.get("timings_s") or {})
    timings["evaluate_interventions"] = seconds
    updated["timings_s"] = timings
    return updated


def _performance_json(table: PerformanceTable, ev: CircuitEvaluator, random_samples: int, random_examples: int,
                      rule: str, stats: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``circuit_performance`` block."""
    return {
        **table.to_dict(),
        "n_examples": ev.n,
        "random_samples": random_samples,
        "random_examples": random_example_count(ev.n, random_examples),
        "precision": ev.resolved(ev.precision),
        "random_precision": ev.resolved(ev.random_precision),
        "circuit_rule": rule,
        "cost": stats,
    }


def evaluate_run(
    run_dir: str | Path,
    *,
    ablation: str = "corrupt",
    faithfulness: bool = False,
    random_samples: int = RANDOM_SAMPLES,
    faithfulness_samples: int = 10,
    faithfulness_points: int = CURVE_POINTS,
    ground_truth: str | None = None,
    threshold: float | None = None,
    size: int | None = None,
    metric: str | None = None,
    n_examples: int | None = None,
    max_rows: int = 256,
    seed: int = 0,
    model: ModelHandle | None = None,
    prompts: PromptSet | None = None,
    circuit: str | None = None,
    precision: str = "fp32",
    random_examples: int = RANDOM_EXAMPLES,
    random_precision: str = RANDOM_PRECISION,
) -> RunEvaluation:
    """Evaluate every method of a run directory by intervention; rewrite its metrics.json.

    The model and prompts are rebuilt from config.json unless given (``discover
    --evaluate`` passes its own). metrics.json gains ``circuit_performance`` and, with
    ``faithfulness``, ``faithfulness`` (with MIB's own CPR/CMD under ``mib``); it is
    replaced atomically, so an interrupted evaluation leaves the previous file intact.
    ``circuit`` is an EAP-IG / MIB graph file: its heads become a row of the table and its
    edges are measured as an edge circuit (``imported_circuit``). ``precision``: the head-level
    evaluator's (table and node curves; :func:`~circuitscan.evaluation.forward.precision_context`).
    ``random_examples``: the random circuits of the table and the node curves run on the first
    this many examples (0: all; :data:`~circuitscan.evaluation.curve_stats.RANDOM_EXAMPLES`), their
    passes at ``random_precision`` (:data:`~circuitscan.evaluation.curve_stats.RANDOM_PRECISION`).
    """
    t0 = time.perf_counter()
    random_example_count(1, random_examples)  # refuse bad values before any work
    resolve_precision(precision)
    resolve_precision(random_precision)
    run = Path(run_dir)
    files = _read_run(run, threshold, size)
    config, scores_json, metrics_json = files.config, files.scores, files.metrics
    if model is None or prompts is None:
        model, prompts = _rebuild(config)
    _check_prompts(prompts, config)
    scores = scores_from_json(scores_json, model.layout)
    gt = _ground_truth(ground_truth, config, model)
    chosen = _circuits_for(scores, metrics_json, threshold=threshold, size=size)

    imported = imported_circuit(model, circuit) if circuit else None
    if imported is not None:
        chosen[imported[0]] = imported[1]

    names = table_metrics(prompts, metric)
    ev = CircuitEvaluator.build(model, prompts, ablation=ablation, metrics=names, n_examples=n_examples,
                                max_rows=max_rows, precision=precision, random_precision=random_precision)
    table = circuit_performance(ev, chosen, ground_truth=gt, random_samples=random_samples, seed=seed,
                                random_examples=random_examples)
    curves: dict[str, Any] = {}
    faith_json = None
    if faithfulness:
        curves, faith_json = _faithfulness(ev, model, prompts, scores, ablation=ablation, points=faithfulness_points,
                                           samples=faithfulness_samples, seed=seed, n_examples=n_examples,
                                           random_examples=random_examples)
    mib_json, imported_json = mib_blocks(model, prompts, scores if faithfulness else [], imported,
                                         ablation=ablation, metric=ev.metrics[0], n_examples=n_examples)
    if mib_json:
        faith_json["mib"] = mib_json
    stats = {**ev.stats.to_dict(), "total_seconds": time.perf_counter() - t0}
    rule = ("given size" if size is not None else "given threshold" if threshold is not None
            else "the run's circuits (metrics.json 'circuits')")
    perf_json = _performance_json(table, ev, random_samples, random_examples, rule, stats)
    updated = _updated(metrics_json, perf_json, faith_json, imported_json, stats["total_seconds"])
    write_run_json(run, METRICS, updated)
    return RunEvaluation(performance=table, faithfulness=faith_json, curves=curves, stats=stats,
                         circuits=chosen, metrics_json=updated)


__all__ = ["RANDOM_SAMPLES", "PerformanceRow", "PerformanceTable", "RunEvaluation", "circuit_performance", "evaluate_run",
           "scores_from_json"]
