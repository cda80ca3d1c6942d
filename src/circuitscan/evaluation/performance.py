"""Circuit performance (the paper's Table 2) and the ``evaluate`` step of a run directory.

The table measures each circuit with every head outside it ablated:

=====================  ==================================================================
``clean model``        every head kept (the model itself, M)
``all heads ablated``  no head kept (∅); the paper's "corrupted" row
``corrupted input``    the model run on the corrupted prompts (corrupt ablation only),
                       scored against the clean prompts' answers
``ground truth``       the reference circuit, where one exists
``<method>``           a method's predicted circuit (best-F1 threshold, a given θ or size)
``<method> complement`` every head except that circuit
``random k heads``     k heads drawn uniformly, mean and std over ``random_samples`` draws
=====================  ==================================================================

``normalised`` values are (m - m(∅)) / (m(M) - m(∅)): 0 = all heads ablated, 1 = the
clean model (the paper's normalised logit difference). Where the task metric is a
logit difference, ``prob_multiplier`` = exp(mean logit difference) is added (for the
random row: the mean and std over draws of each draw's multiplier).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError

RANDOM_SAMPLES = 30
"""Default random circuits per circuit size in the table. The row reports their mean and
std; with 30 draws the mean's standard error is std / 5.5 and the std itself is known
to about 13%, which on SmolLM2 IOI (std 0.27 in normalised logit difference at 48
heads) separates any circuit more than ~0.15 from random; 100 (the earlier default)
cost 3.3x the passes for a standard error of std / 10."""

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import GroundTruth, HeadId, PromptSet, Scores
    from .intervention import CircuitEvaluator


@dataclass(frozen=True)
class PerformanceRow:
    """One row of the table: a circuit and its metric means."""

    name: str
    kind: str  # clean | ablated | corrupted_input | ground_truth | circuit | complement | random
    n_heads: int | None
    metrics: dict[str, float]
    normalised: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    samples: int | None = None
    heads: list[str] | None = None


@dataclass(frozen=True)
class PerformanceTable:
    ablation: str
    metric: str
    metrics: list[str]
    n_examples: int
    rows: list[PerformanceRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, name: str) -> PerformanceRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")


def _with_multiplier(means: dict[str, float]) -> dict[str, float]:
    from .metrics import probability_multiplier

    if "logit_diff" in means:
        means = {**means, "prob_multiplier": probability_multiplier(means["logit_diff"])}
    return means


def circuit_performance(
    evaluator: CircuitEvaluator,
    circuits: Mapping[str, Sequence[HeadId | str]],
    *,
    ground_truth: GroundTruth | None = None,
    random_samples: int = RANDOM_SAMPLES,
    complements: bool = True,
    seed: int = 0,
) -> PerformanceTable:
    """The performance table for ``circuits`` ({name: heads}), all circuits in one batch.

    Random rows are drawn for each distinct circuit size (uniformly over all heads).
    """
    import torch

    from .intervention import circuit_mask, random_masks
    from .metrics import normalise, probability_multiplier

    layout = evaluator.model.layout
    if random_samples < 0:
        raise CircuitscanError(f"random_samples must be >= 0, got {random_samples}")
    named: list[tuple[str, str, torch.Tensor, list[str]]] = []  # (row name, kind, mask, heads)
    if ground_truth is not None:
        gt_mask = ground_truth.mask(layout)
        named.append((f"ground truth ({ground_truth.name})", "ground_truth", gt_mask,
                      sorted(h.name for h in ground_truth.heads)))
    for name, heads in circuits.items():
        m = circuit_mask(layout, heads)
        names = [layout.head(i).name for i in m.nonzero().flatten().tolist()]
        named.append((name, "circuit", m, names))
        if complements:
            named.append((f"{name} complement", "complement", ~m, None))
    sizes = sorted({int(m.sum()) for _, kind, m, _ in named if kind == "circuit"}) if random_samples else []
    g = torch.Generator().manual_seed(seed)
    rand = [random_masks(layout.n_total, k, random_samples, generator=g) for k in sizes]
    fixed = torch.stack([m for _, _, m, _ in named]) if named else torch.zeros(0, layout.n_total, dtype=torch.bool)
    values = evaluator.evaluate(torch.cat([fixed, *rand])) if (named or rand) else {}

    metric_names = list(evaluator.metrics)
    clean = {k: evaluator.mean_clean(k) for k in metric_names}
    empty = {k: evaluator.mean_empty(k) for k in metric_names}

    def norm(means: dict[str, float]) -> dict[str, float]:
        return {k: normalise(means[k], clean[k], empty[k]) for k in metric_names}

    rows = [
        PerformanceRow("clean model", "clean", layout.n_total, _with_multiplier(clean), norm(clean)),
        PerformanceRow("all heads ablated", "ablated", 0, _with_multiplier(empty), norm(empty)),
    ]
    if evaluator.corrupted_input is not None:
        ci = {k: float(v.mean()) for k, v in evaluator.corrupted_input.items()}
        rows.append(PerformanceRow("corrupted input", "corrupted_input", None, _with_multiplier(ci), norm(ci)))
    for i, (name, kind, m, heads) in enumerate(named):
        means = {k: float(values[k][i].mean()) for k in metric_names}
        rows.append(PerformanceRow(name, kind, int(m.sum()), _with_multiplier(means), norm(means), heads=heads))
    offset = len(named)
    for k, block in zip(sizes, rand, strict=True):
        per = {name: values[name][offset : offset + block.shape[0]].mean(-1) for name in metric_names}
        offset += block.shape[0]
        means = {name: float(v.mean()) for name, v in per.items()}
        std = {name: float(v.std()) if v.numel() > 1 else 0.0 for name, v in per.items()}
        normed = norm(means)
        for name in metric_names:
            span = clean[name] - empty[name]
            normed_std = std[name] / abs(span) if span else float("nan")
            std[f"normalised_{name}"] = normed_std
        if "logit_diff" in per:
            mult = torch.tensor([probability_multiplier(float(v)) for v in per["logit_diff"]])
            means["prob_multiplier"] = float(mult.mean())
            std["prob_multiplier"] = float(mult.std()) if mult.numel() > 1 else 0.0
        rows.append(PerformanceRow(f"random {k} heads", "random", k, means, normed, std=std, samples=block.shape[0]))
    return PerformanceTable(
        ablation=evaluator.ablation,
        metric=metric_names[0],
        metrics=metric_names + (["prob_multiplier"] if "logit_diff" in metric_names else []),
        n_examples=evaluator.n,
        rows=rows,
    )


# --------------------------------------------------------------------------- run directories


def scores_from_json(data: Mapping[str, Any], layout) -> list[Scores]:
    """Rebuild each method's per-head :class:`Scores` from a run's scores.json."""
    import torch

    from ..types import Scores

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
    import argparse

    from ..commands.common import build_prompts_from_args, load_model_from_args

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
    args = argparse.Namespace(**argv)
    model = load_model_from_args(args)
    prompts = build_prompts_from_args(args, model)
    return model, prompts


def _check_prompts(prompts: PromptSet, config: Mapping[str, Any]) -> None:
    from ..integrity import check_same_task

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
    from ..run import predicted_circuit

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
    from .. import circuits
    from ..types import GroundTruth

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


def evaluate_run(
    run_dir: str | Path,
    *,
    ablation: str = "corrupt",
    faithfulness: bool = False,
    random_samples: int = RANDOM_SAMPLES,
    faithfulness_samples: int = 10,
    faithfulness_points: int = 20,
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
) -> RunEvaluation:
    """Evaluate every method of a run directory by intervention; rewrite its metrics.json.

    The model and prompts are rebuilt from config.json unless given (``discover
    --evaluate`` passes its own). metrics.json gains ``circuit_performance`` and, with
    ``faithfulness``, ``faithfulness`` (with MIB's own CPR/CMD under ``mib``); it is
    replaced atomically, so an interrupted evaluation leaves the previous file intact.
    ``circuit`` is an EAP-IG / MIB graph file: its heads become a row of the table and its
    edges are measured as an edge circuit (``imported_circuit``).
    """
    from ..rundir import CONFIG, METRICS, SCORES, read_json, read_run_json, write_run_json
    from .faithfulness import (
        curve_sizes,
        curves_summary,
        edge_faithfulness_curves,
        faithfulness_curves,
    )
    from .intervention import CircuitEvaluator
    from .metrics import table_metrics

    t0 = time.perf_counter()
    run = Path(run_dir)
    if not run.is_dir():
        raise CircuitscanError(f"run directory {str(run)!r} does not exist")
    if threshold is not None and size is not None:
        raise CircuitscanError("give either a threshold or a circuit size, not both")
    if threshold is not None and not math.isfinite(threshold):
        raise CircuitscanError(f"threshold must be a finite number, got {threshold}")
    config = read_json(run / CONFIG)
    scores_json = read_run_json(run, SCORES)
    metrics_json = read_run_json(run, METRICS)
    for name, data in ((CONFIG, config), (SCORES, scores_json), (METRICS, metrics_json)):
        if not isinstance(data, dict):
            raise CircuitscanError(f"{str(run / name)!r} must hold a JSON object, not {type(data).__name__}; "
                                   "is this a circuitscan run directory?")
    if model is None or prompts is None:
        model, prompts = _rebuild(config)
    _check_prompts(prompts, config)
    scores = scores_from_json(scores_json, model.layout)
    gt = _ground_truth(ground_truth, config, model)
    chosen = _circuits_for(scores, metrics_json, threshold=threshold, size=size)
    from .mib import imported_circuit, mib_blocks

    imported = imported_circuit(model, circuit) if circuit else None
    if imported is not None:
        chosen[imported[0]] = imported[1]

    names = table_metrics(prompts, metric)
    ev = CircuitEvaluator.build(model, prompts, ablation=ablation, metrics=names, n_examples=n_examples,
                                max_rows=max_rows)
    table = circuit_performance(ev, chosen, ground_truth=gt, random_samples=random_samples, seed=seed)
    curves: dict[str, Any] = {}
    faith_json = None
    if faithfulness:
        sizes = curve_sizes(model.layout.n_total, faithfulness_points)
        curves = faithfulness_curves(ev, scores, sizes=sizes, random_samples=faithfulness_samples, seed=seed)
        faith_json = curves_summary(ev, curves)
        edge_curves = edge_faithfulness_curves(model, prompts, scores, ablation=ablation, metric=ev.metrics[0],
                                               random_samples=faithfulness_samples, seed=seed,
                                               n_examples=n_examples)
        if edge_curves:
            faith_json["edge_level"] = {
                "n_edges": next(iter(edge_curves.values())).n_edges,
                "rule": "top-k edges by score kept, every other edge patched (no pruning); sizes at the MIB "
                "fractions of the model's head-graph edges",
                "curves": {m: c.to_dict() for m, c in edge_curves.items()},
                "cpr": {m: c.cpr for m, c in edge_curves.items()},
                "cmd": {m: c.cmd for m, c in edge_curves.items()},
            }
    mib_json, imported_json = mib_blocks(model, prompts, scores if faithfulness else [], imported,
                                         ablation=ablation, metric=ev.metrics[0], n_examples=n_examples)
    if mib_json:
        faith_json["mib"] = mib_json
    stats = {**ev.stats.to_dict(), "total_seconds": time.perf_counter() - t0}
    perf_json = {
        **table.to_dict(),
        "n_examples": ev.n,
        "random_samples": random_samples,
        "circuit_rule": "given size" if size is not None else "given threshold" if threshold is not None
        else "the run's circuits (metrics.json 'circuits')",
        "cost": stats,
    }
    updated = dict(metrics_json)
    updated["circuit_performance"] = perf_json
    if faith_json is not None:
        updated["faithfulness"] = faith_json
    if imported_json is not None:
        updated["imported_circuit"] = imported_json
    timings = dict(updated.get("timings_s") or {})
    timings["evaluate_interventions"] = stats["total_seconds"]
    updated["timings_s"] = timings
    write_run_json(run, METRICS, updated)
    return RunEvaluation(performance=table, faithfulness=faith_json, curves=curves, stats=stats,
                         circuits=chosen, metrics_json=updated)
