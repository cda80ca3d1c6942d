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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CircuitscanError

if TYPE_CHECKING:
    from .models.handle import ModelHandle
    from .types import GroundTruth, PromptSet, Scores

def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"sae-codes,eap"`` or a list -> checked method names (``all`` = every method in ``--methods all``).

    Valid names are the registry's (:func:`circuitscan.methods.names`).
    """
    from . import methods as registry

    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if items == ["all"]:
        return registry.all_names()
    known = registry.names()
    unknown = [m for m in items if m not in known]
    if unknown or not items:
        raise CircuitscanError(
            f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid: {', '.join(known)} (or 'all')"
        )
    if len(set(items)) != len(items):
        raise CircuitscanError(f"methods are listed twice: {items}")
    return items


@dataclass(frozen=True)
class CompareSettings:
    """What every baseline shares in one comparison (matched metric, ablation, prompts).

    Attributes:
        metric: None = the task's own metric.
        ablation: corrupt | mean | zero.
        n_examples: positive prompts (with their corrupted partners) the intervention
            and gradient methods use; None = all. ``sae-codes`` and ``norm-diff`` always
            see every prompt of the set (that is their input).
        batch_size: prompts per forward pass.
        max_seconds: time limit of each slow method (acdc, acdc-edge, sp); None = none.
        acdc_thresholds: absolute thresholds for ACDC (None = its relative default grid).
        sp_steps: SP's and edge pruning's optimiser steps.
        eap_ig_steps: EAP-IG path points.
    """

    metric: str | None = None
    ablation: str = "corrupt"
    n_examples: int | None = None
    batch_size: int = 32
    max_seconds: float | None = None
    acdc_thresholds: tuple[float, ...] | None = None
    sp_steps: int = 200
    eap_ig_steps: int = 5
    progress: bool | None = None


def method_configs(settings: CompareSettings, methods: Sequence[str]) -> dict[str, Any]:
    """Each method's config built from the shared settings (:meth:`MethodSpec.config_from`)."""
    from .methods import spec

    return {m: spec(m).config_from(settings) for m in methods}


# --------------------------------------------------------------------------- cost estimates


def estimate_passes(method: str, cfg: Any, model: ModelHandle, prompts: PromptSet) -> tuple[float, float, str]:
    """(forward prompt-rows, backward prompt-rows, what dominates) a method will spend, roughly
    (the method's :attr:`MethodSpec.cost`; upper bounds where it can stop early)."""
    from .methods import spec

    return spec(method).cost(cfg, model, prompts)


def seconds_per_row(model: ModelHandle, prompts: PromptSet, rows: int = 8) -> float:
    """Wall time of one prompt row through a plain forward pass (measured once, warm)."""
    import torch

    tok = prompts.positive[:rows]
    with torch.inference_mode():
        model.bridge(tok[:1])
        t = time.perf_counter()
        model.bridge(tok)
    return (time.perf_counter() - t) / tok.shape[0]


# --------------------------------------------------------------------------- evaluation


def sweep_points(sweep: list[dict[str, Any]], truth: set[str], universe: Sequence[str], key: str) -> list[list[float]]:
    """(fpr, tpr) of each threshold's predicted set ``entry[key]`` over ``universe``."""
    n_pos = len(truth)
    n_neg = len(universe) - n_pos
    pts = []
    for entry in sweep:
        chosen = set(entry.get(key) or [])
        tp = len(chosen & truth)
        fp = len(chosen) - tp
        pts.append([fp / n_neg if n_neg else 0.0, tp / n_pos if n_pos else 0.0])
    return pts


def edge_truth_for(name: str | None, model: ModelHandle, gt: GroundTruth | None) -> tuple[str | None, frozenset[str] | None]:
    """The head-level true edges to score edge methods against, and their name (or None, None)."""
    from . import circuits
    from .methods.edges import normalise_edge, planted_true_edges

    if name is None:
        if gt is None:
            return None, None
        name = gt.name
    if name == "planted":
        if model.family != "toy-planted":
            raise CircuitscanError(f"edge ground truth 'planted' belongs to toy-planted, not {model.spec!r}")
        return name, planted_true_edges()
    if name not in circuits.edge_names():
        return None, None
    edges = circuits.true_edges(name, model.layout, model.family)
    return name, frozenset(normalise_edge(e) for e in edges)


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
    faithfulness_points: int = 20,
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
        log: where progress lines go (default: nowhere).

    Returns:
        :class:`CompareResult` with every method's scores and the comparison rows.
    """
    from .methods import run_method
    from .rundir import open_run

    methods = parse_methods(list(methods))
    settings = settings or CompareSettings()
    say = log or (lambda _msg: None)
    if ground_truth is not None:
        ground_truth.check_layout(model.layout)
    egt_name, egt_edges = edge_truth_for(edge_ground_truth, model, ground_truth)
    cfgs = method_configs(settings, methods)
    for k, v in (configs or {}).items():
        if k not in cfgs:
            raise CircuitscanError(f"a config was given for {k!r}, which is not among the methods {methods}")
        cfgs[k] = v
    with open_run(out, overwrite=overwrite) as writer:
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

        metrics = _evaluate(model, prompts, all_scores, ground_truth, egt_name, egt_edges)
        if faithfulness:
            say("faithfulness curves ...")
            metrics["faithfulness"] = _faithfulness(model, prompts, all_scores, settings, faithfulness_samples,
                                                    faithfulness_points, seed)
        rows = _rows(all_scores, metrics)
        metrics["comparison"] = {
            "rows": rows,
            "columns": list(rows[0]) if rows else [],
            "notes": {
                "node_auc": "ROC AUC over heads; ACDC/SP: from the sweep of their threshold, others: from the ranking",
                "edge_auc": "ROC AUC over head-level edges (input/heads -> heads/logits), where the method scores edges",
                "head_auc_from_pairs": "the paper's 'edge-level AUC' of sae-codes: an AUC over HEADS",
                "passes": "forward/backward passes are batched model calls",
            },
        }
        metrics["timings_s"] = {**(timings or {}), **{f"method:{k}": v for k, v in method_time.items()}}
        metrics["estimates"] = estimates
        config = _config(model, prompts, methods, cfgs, settings, ground_truth, egt_name, extra_config)
        result = CompareResult(scores=all_scores, rows=rows, metrics=metrics, config=config, estimates=estimates)
        if writer is not None:
            _write(writer, result, model)
            result.out = writer.commit()
    return result


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _evaluate(
    model: ModelHandle,
    prompts: PromptSet,
    scores: list[Scores],
    gt: GroundTruth | None,
    egt_name: str | None,
    egt_edges: frozenset[str] | None,
) -> dict[str, Any]:
    from .evaluation.ground_truth import evaluate_against
    from .methods._setup import sweep_auc
    from .methods.edges import EdgeGraph, contract, edge_auc, head_level_edges
    from .run import predicted_circuit

    layout = model.layout
    out: dict[str, Any] = {"ground_truth": {}, "edge_ground_truth": {}, "circuits": {}}
    names = layout.names()
    candidates = head_level_edges(layout)
    graph = EdgeGraph.for_model(model) if any(s.edges for s in scores) else None
    for s in scores:
        gm = evaluate_against(s, gt) if gt is not None else None
        if gm is not None:
            entry = gm.to_dict()
            sweep = s.stats.get("sweep")
            if sweep:
                pts = sweep_points(sweep, {h.name for h in gt.heads}, names, "heads")
                entry["sweep"] = {"points": pts, "auc": sweep_auc([tuple(p) for p in pts]),
                                  "thresholds": [e["threshold"] for e in sweep]}
            out["ground_truth"][s.method] = entry
            out["circuits"][s.method] = predicted_circuit(s, None, gm)
        else:
            k = max(1, round(0.1 * layout.n_total))
            heads = [h.name for h in s.ranking()[:k]]
            out["circuits"][s.method] = {"threshold": float(s.flat.sort(descending=True).values[k - 1]),
                                         "rule": "top 10% of heads by score (no ground truth)", "heads": heads,
                                         "size": len(heads)}
        if s.edges and egt_edges is not None:
            head_edges = contract(graph, s.edges)
            e = edge_auc(head_edges, egt_edges, candidates)
            e["ground_truth"] = egt_name
            e["roc_source"] = "ranking"
            sweep = s.stats.get("sweep")
            if sweep and all(x.get("edges") is not None for x in sweep):
                sets = [{"edges": sorted({k for k in contract(graph, dict.fromkeys(x["edges"], 1.0))})}
                        for x in sweep]
                pts = sweep_points(sets, set(egt_edges), candidates, "edges")
                e["ranking_auc"] = e["auc"]
                e["auc"] = sweep_auc([tuple(p) for p in pts])
                e["sweep_points"] = pts
                e["roc_source"] = "threshold sweep"
            out["edge_ground_truth"][s.method] = e
    return out


def _faithfulness(
    model: ModelHandle,
    prompts: PromptSet,
    scores: list[Scores],
    settings: CompareSettings,
    samples: int,
    points: int,
    seed: int,
) -> dict[str, Any]:
    from .evaluation.faithfulness import curve_sizes, curves_summary, faithfulness_curves
    from .evaluation.intervention import CircuitEvaluator
    from .evaluation.metrics import table_metrics

    names = table_metrics(prompts, settings.metric)
    ev = CircuitEvaluator.build(model, prompts, ablation=settings.ablation, metrics=names,
                                n_examples=settings.n_examples, batch_size=settings.batch_size,
                                progress=settings.progress)
    sizes = curve_sizes(model.layout.n_total, points)
    curves = faithfulness_curves(ev, scores, sizes=sizes, random_samples=samples, seed=seed)
    return {**curves_summary(ev, curves), "cost": ev.stats.to_dict()}


def _rows(scores: list[Scores], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    faith = metrics.get("faithfulness") or {}
    for s in scores:
        gm = metrics["ground_truth"].get(s.method)
        em = metrics["edge_ground_truth"].get(s.method)
        sweep = (gm or {}).get("sweep")
        pairs = s.method == "sae-codes-pairs"
        node_auc = None
        if gm is not None and not pairs:
            node_auc = sweep["auc"] if sweep else gm["auc"]
        n_thr = len(s.stats.get("sweep") or [])
        rows.append({
            "method": s.method,
            "node_auc": node_auc,
            "edge_auc": None if em is None else em["auc"],
            "head_auc_from_pairs": gm["auc"] if pairs and gm is not None else None,
            "cpr": (faith.get("cpr") or {}).get(s.method),
            "cmd": (faith.get("cmd") or {}).get(s.method),
            "best_f1_size": None if gm is None else gm["circuit_size"],
            "wall_time_s": s.wall_time_s,
            "forward_passes": s.forward_passes,
            "backward_passes": s.backward_passes,
            "roc_source": f"threshold sweep ({n_thr} values)" if n_thr else "ranking",
            "stopped_early": bool(s.stats.get("stopped_early", False)),
        })
    return rows


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
    from ._version import __version__
    from .integrity import prompts_sha256

    def plain(c: Any) -> Any:
        return asdict(c) if is_dataclass(c) else repr(c)

    return {
        "circuitscan_version": __version__,
        "command": "compare",
        "model": model.describe(),
        "task": {"name": prompts.task, "n_positive": prompts.n_positive, "n_negative": prompts.n_negative,
                 "seq_len": prompts.seq_len,
                 **{k: v for k, v in prompts.metadata.items() if isinstance(v, int | float | str | bool)},
                 "prompts_sha256": prompts_sha256(prompts)},
        "methods": methods,
        "method_configs": {m: plain(c) for m, c in cfgs.items()},
        "settings": asdict(settings),
        "ground_truth": None if gt is None else {
            "name": gt.name, "model": gt.model, "heads": sorted(h.name for h in gt.heads),
            "classes": {k: [h.name for h in v] for k, v in gt.classes.items()},
        },
        "edge_ground_truth": egt_name,
        **(extra or {}),
    }


def _write(writer: Any, result: CompareResult, model: ModelHandle) -> None:
    from .run import scores_to_json
    from .rundir import CONFIG, METRICS, SCORES

    methods = {}
    for s in result.scores:
        entry = scores_to_json(s)
        if s.edges is not None:
            entry["edges"] = s.edges
        methods[s.method] = entry
    writer.json(CONFIG, result.config)
    writer.json(SCORES, {"layout": model.layout.to_dict(), "methods": methods})
    writer.json(METRICS, result.metrics)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a plain-text table."""
    cols = [("method", "method", 16), ("node_auc", "node AUC", 8), ("edge_auc", "edge AUC", 8),
            ("head_auc_from_pairs", "AUC pairs", 9), ("cpr", "CPR", 7), ("cmd", "CMD", 7),
            ("best_f1_size", "F1 size", 7), ("wall_time_s", "time (s)", 9), ("forward_passes", "fwd", 6),
            ("backward_passes", "bwd", 5), ("roc_source", "ROC from", 22)]

    def cell(v: Any, w: int) -> str:
        if v is None:
            text = "-"
        elif isinstance(v, bool):
            text = "yes" if v else "no"
        elif isinstance(v, float):
            text = "nan" if not math.isfinite(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        else:
            text = str(v)
        return text.rjust(w) if not isinstance(v, str) else text.ljust(w)

    lines = ["  ".join(label.ljust(w) if key in ("method", "roc_source") else label.rjust(w) for key, label, w in cols)]
    for r in rows:
        line = "  ".join(cell(r.get(key), w) for key, _, w in cols)
        if r.get("stopped_early"):
            line += "  (stopped at the time limit)"
        lines.append(line)
    return "\n".join(lines)


__all__ = ["CompareResult", "CompareSettings", "compare", "format_table", "parse_methods"]
