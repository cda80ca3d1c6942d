"""Every method's scores evaluated alike: ROC AUC over heads (from the threshold sweep for
ACDC and SP, else from the ranking), ROC AUC over head-level edges, the circuit each method
predicts, and faithfulness curves with CPR and CMD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import circuits
from ..errors import CircuitscanError
from ..evaluation.circuit_rule import predicted_circuit
from ..evaluation.faithfulness import curve_sizes, curves_summary, faithfulness_curves
from ..evaluation.ground_truth import evaluate_against
from ..evaluation.intervention import CircuitEvaluator
from ..evaluation.metrics import table_metrics
from ..methods._setup import sweep_auc
from ..methods.edges import (
    EdgeGraph,
    contract,
    edge_auc,
    head_level_edges,
    normalise_edge,
    planted_true_edges,
)

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import GroundTruth, PromptSet, Scores
    from .settings import CompareSettings


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


def evaluate_methods(
    model: ModelHandle,
    prompts: PromptSet,
    scores: list[Scores],
    gt: GroundTruth | None,
    egt_name: str | None,
    egt_edges: frozenset[str] | None,
) -> dict[str, Any]:
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


def faithfulness_block(
    model: ModelHandle,
    prompts: PromptSet,
    scores: list[Scores],
    settings: CompareSettings,
    samples: int,
    points: int,
    seed: int,
    random_examples: int,
    random_precision: str = "auto",
) -> dict[str, Any]:
    names = table_metrics(prompts, settings.metric)
    ev = CircuitEvaluator.build(model, prompts, ablation=settings.ablation, metrics=names,
                                n_examples=settings.n_examples, batch_size=settings.batch_size,
                                progress=settings.progress, random_precision=random_precision)
    sizes = curve_sizes(model.layout.n_total, points)
    curves = faithfulness_curves(ev, scores, sizes=sizes, random_samples=samples, seed=seed,
                                 random_examples=random_examples)
    return {**curves_summary(ev, curves), "cost": ev.stats.to_dict()}
