"""``features graph`` as a library call: graph -> interpretation -> ablations -> head view
-> a run directory that ``evaluate`` and ``report`` can also read.

Files written (besides the usual ``config.json``, ``scores.json``, ``metrics.json``):

=======================  =================================================================
``feature_graph.json``   the attribution graph (:meth:`AttributionGraph.to_json`)
``features.json``        per kept feature: promoted / suppressed tokens, top contexts
``ablations.json``       single-node ablations vs the graph's predictions, the strongest
                         thread ablated, any user ablations, the graph's faithfulness
``feature_figures/``     the graph, the accounting per site, the validation scatter (PNG+SVG)
``features.html``        one self-contained page with all of it
=======================  =================================================================
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CircuitscanError
from ..evaluation.circuit_rule import predicted_circuit
from ..evaluation.faithfulness import curve_sizes, curves_summary, faithfulness_curves
from ..evaluation.ground_truth import evaluate_against
from ..evaluation.intervention import CircuitEvaluator
from ..methods.sae_codes import SAECodesConfig, run_sae_codes
from ..models.handle import ModelHandle
from ..report.feature_figures import write_feature_report
from ..run import scores_to_json
from ..rundir import CONFIG, METRICS, SCORES, open_run
from ..runfiles import config_header, ground_truth_block, task_block
from ..types import GroundTruth, PromptSet, Scores
from .ablate import ablation_effect as _ablation_effect
from .ablate import graph_faithfulness, parse_nodes, thread_ablation, validate_nodes
from .graph import (
    AttributionGraph,
    GraphConfig,
    Objective,
    attribution_graph,
    explained_fractions,
    next_token_objective,
    task_objective,
)
from .heads import scores_from_graph
from .interpret import feature_cards, token_text
from .saes import SublayerSAEs
from .sites import Site, capture_sites, parse_sites

GRAPH = "feature_graph.json"
CARDS = "features.json"
ABLATIONS = "ablations.json"


@dataclass
class FeatureRun:
    """What :func:`feature_graph_run` computed (and wrote, if ``out`` was given)."""

    graph: AttributionGraph
    objective: Objective
    tokens: torch.Tensor
    cards: dict[str, Any]
    ablations: dict[str, Any]
    scores: list[Scores] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    out: Path | None = None


def prompt_tokens(model: ModelHandle, prompt: str | None = None, prompt_ids: list[int] | None = None) -> torch.Tensor:
    """[1, seq] tokens of a text prompt (or of given ids)."""
    if (prompt is None) == (prompt_ids is None):
        raise CircuitscanError("give exactly one of a text prompt or prompt token ids")
    if prompt_ids is not None:
        vocab = int(model.bridge.cfg.d_vocab)
        if not prompt_ids or any(not 0 <= t < vocab for t in prompt_ids):
            raise CircuitscanError(f"prompt token ids must be a non-empty list in 0..{vocab - 1}")
        return torch.tensor([prompt_ids])
    if not prompt.strip():
        raise CircuitscanError("the prompt is empty")
    ids = model.to_tokens([prompt])[0]
    if not ids:
        raise CircuitscanError(f"the prompt {prompt!r} has no tokens")
    return torch.tensor([ids])


def target_token(model: ModelHandle, target: str | None) -> int | None:
    """The id of a one-token target text (None: the model's own top prediction)."""
    if target is None:
        return None
    if model.tokenizer is None:
        try:
            return int(target)
        except ValueError:
            raise CircuitscanError(f"model {model.spec!r} has no tokenizer: give the target as a token id") from None
    tid = model.single_token_id(target)
    if tid is None:
        pieces = model.tokenizer.encode(target, add_special_tokens=False)
        raise CircuitscanError(
            f"the target {target!r} is {len(pieces)} tokens for this tokenizer; give one token "
            "(mind the leading space, e.g. ' Paris')"
        )
    return tid


def feature_graph_run(
    model: ModelHandle,
    saes: SublayerSAEs,
    *,
    tokens: torch.Tensor | None = None,
    target: int | None = None,
    prompts: PromptSet | None = None,
    metric: str | None = None,
    n_prompts: int | None = None,
    cfg: GraphConfig | None = None,
    sites: list[Site] | None = None,
    validate: int = 12,
    ablate: str | None = None,
    sae_codes: bool = True,
    faithfulness: bool = False,
    ground_truth: GroundTruth | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    extra_config: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> FeatureRun:
    """Build a feature graph for a prompt (``tokens``) or a task (``prompts``), check it by
    ablation, map it to heads, and optionally write a run directory (see the module docstring)."""
    if (tokens is None) == (prompts is None):
        raise CircuitscanError("give either a prompt or a task's prompts, not both")
    cfg = cfg or GraphConfig()
    ablation = parse_nodes(ablate) if ablate else None  # fail before any work
    if ground_truth is not None:
        ground_truth.check_layout(model.layout)
    with open_run(out, overwrite=overwrite) as writer:
        timings = dict(timings or {})
        tokens, objective, mask, base_tokens, base_mask = _inputs(model, tokens, target, prompts, metric, n_prompts, cfg)
        t = time.perf_counter()
        graph = attribution_graph(model, saes, tokens, objective, cfg, attention_mask=mask, sites=sites,
                                  baseline_tokens=base_tokens, baseline_mask=base_mask)
        timings["graph"] = time.perf_counter() - t
        baseline = None
        if base_tokens is not None:
            with torch.no_grad():
                baseline = capture_sites(model, base_tokens, parse_sites(graph.sites), attention_mask=base_mask,
                                         keep_dtype=True)

        t = time.perf_counter()
        kept = [(n.site, int(n.feature)) for n in graph.nodes.values() if n.kind == "feature"]
        cards = feature_cards(model, saes, kept)
        timings["interpret"] = time.perf_counter() - t

        t = time.perf_counter()
        abl = _ablations(model, saes, tokens, objective, graph, validate, ablate, ablation,
                         {"attention_mask": mask, "baseline": baseline})
        timings["ablations"] = time.perf_counter() - t

        result = FeatureRun(graph=graph, objective=objective, tokens=tokens, cards=cards, ablations=abl,
                            timings=timings)
        _head_scores(result, model, prompts, sae_codes)
        _evaluate(result, model, prompts, ground_truth, faithfulness)
        if writer is not None:
            _write(writer, result, model, saes, cfg, prompts, ground_truth, extra_config)
            result.out = writer.commit()
    return result


def _inputs(model: ModelHandle, tokens: torch.Tensor | None, target: int | None, prompts: PromptSet | None,
            metric: str | None, n_prompts: int | None, cfg: GraphConfig) -> tuple[Any, ...]:
    """(tokens, objective, attention mask, baseline tokens, baseline mask) of a prompt or a task."""
    mask = base_tokens = base_mask = None
    if prompts is not None:
        tokens = prompts.positive if n_prompts is None else prompts.positive[:n_prompts]
        if prompts.positive_mask is not None:
            mask = prompts.positive_mask[: tokens.shape[0]]
        objective = task_objective(prompts, metric)
        if cfg.baseline == "corrupt":
            if not prompts.paired:
                raise CircuitscanError(f"task {prompts.task!r} has no paired negatives; use baseline 'zero'")
            base_tokens = prompts.negative[: tokens.shape[0]]
            base_mask = None if prompts.negative_mask is None else prompts.negative_mask[: tokens.shape[0]]
    else:
        if cfg.baseline == "corrupt":
            raise CircuitscanError("baseline 'corrupt' needs a task with paired counterfactual prompts, not --prompt")
        objective = next_token_objective(model, tokens, target)
    return tokens, objective, mask, base_tokens, base_mask


def _ablations(model: ModelHandle, saes: SublayerSAEs, tokens: torch.Tensor, objective: Objective,
               graph: AttributionGraph, validate: int, ablate: str | None, ablation: Any,
               kw: dict[str, Any]) -> dict[str, Any]:
    """``ablations.json``: single nodes against the graph's predictions, the strongest thread, the
    graph's faithfulness and the user's ablation."""
    abl: dict[str, Any] = {
        "mode": "patched to the counterfactual prompt's value" if kw["baseline"] is not None else "zero-ablated",
        "single_nodes": validate_nodes(model, saes, tokens, objective, graph, top=validate, **kw)
        if validate > 0 else {"nodes": [], "summary": {"n": 0}},
        "thread": thread_ablation(model, saes, tokens, objective, graph, **kw),
        "faithfulness": graph_faithfulness(model, saes, tokens, objective, graph, **kw),
    }
    if ablation is not None:
        abl["user"] = {"nodes": ablate, **_ablation_effect(model, saes, tokens, objective, ablation, **kw)}
        abl["user"]["naive_predicted_delta"] = -sum(
            graph.nodes[n].score for n in _ids(ablation) if n in graph.nodes)
    return abl


def _head_scores(result: FeatureRun, model: ModelHandle, prompts: PromptSet | None, sae_codes: bool) -> None:
    """The graph's head view and, for a task, sae-codes' node scores, as Scores."""
    if result.graph.head_scores:
        result.scores.append(scores_from_graph(result.graph, model.layout))
    if prompts is not None and sae_codes:
        t = time.perf_counter()
        result.scores.append(run_sae_codes(model, prompts, SAECodesConfig()).node)
        result.timings["sae_codes"] = time.perf_counter() - t


def _write(writer: Any, result: FeatureRun, model: ModelHandle, saes: SublayerSAEs, cfg: GraphConfig,
           prompts: PromptSet | None, ground_truth: GroundTruth | None, extra_config: dict[str, Any] | None) -> None:
    """The run directory's files (see the module docstring), the page included."""
    graph, tokens, objective = result.graph, result.tokens, result.objective
    config = {
        **config_header("features graph", model),
        "graph": asdict(cfg),
        "saes": {"sites": graph.sites, **{k: v for k, v in saes.info.items() if k in ("corpus", "config")}},
        "ground_truth": ground_truth_block(ground_truth),
        **(extra_config or {}),
    }
    if prompts is not None:
        config["task"] = task_block(prompts, graph_prompts=int(tokens.shape[0]))
    else:
        config["prompt"] = {"text": token_text(model, tokens[0]), "token_ids": tokens[0].tolist(),
                            "target": objective.targets[0] if objective.targets else None,
                            "target_text": token_text(model, objective.targets[:1]) if objective.targets else None}
    writer.json(CONFIG, config)
    if result.scores:
        writer.json(SCORES, {"layout": model.layout.to_dict(),
                             "methods": {s.method: scores_to_json(s) for s in result.scores}})
    writer.json(METRICS, {"timings_s": result.timings, **result.metrics, "feature_graph": summary(result)})
    writer.json(GRAPH, graph.to_json())
    writer.json(CARDS, result.cards)
    writer.json(ABLATIONS, result.ablations)
    write_feature_report(writer.tmp)


def _ids(ab) -> list[str]:
    out = [f"{s}/f{f}" for s, fs in ab.features.items() for f in fs]
    return out + [f"{s}/error" for s in ab.errors]


def _evaluate(result: FeatureRun, model, prompts, gt, faithfulness: bool) -> None:
    metrics: dict[str, Any] = {"circuits": {}, "ground_truth": {}}
    if gt is not None:
        for s in result.scores:
            m = evaluate_against(s, gt)
            metrics["ground_truth"][s.method] = m.to_dict()
            metrics["circuits"][s.method] = predicted_circuit(s, None, m)
    else:
        for s in result.scores:
            metrics["circuits"][s.method] = predicted_circuit(s, None, None)
    if faithfulness and prompts is not None and result.scores:
        t = time.perf_counter()
        ev = CircuitEvaluator.build(model, prompts, ablation="corrupt")
        curves = faithfulness_curves(ev, result.scores, sizes=curve_sizes(model.layout.n_total))
        metrics["faithfulness"] = curves_summary(ev, curves)
        result.timings["faithfulness"] = time.perf_counter() - t
    result.metrics = metrics


def summary(result: FeatureRun) -> dict[str, Any]:
    """The headline numbers of a feature graph run (also printed by the CLI)."""
    g = result.graph
    proximal = sorted(g.incoming("output").items(), key=lambda kv: -abs(kv[1]))[:5]
    return {
        "objective": g.objective,
        "sites": g.sites,
        "nodes": sum(1 for n in g.nodes.values() if n.kind == "feature"),
        "edges": len(g.edges),
        "explained_fractions": explained_fractions(g),
        "proximal_nodes": proximal,
        "thread": result.ablations.get("thread", {}).get("thread", []),
        "validation": result.ablations.get("single_nodes", {}).get("summary", {}),
        "faithfulness": result.ablations.get("faithfulness", {}),
        "forward_passes": g.forward_passes,
        "backward_passes": g.backward_passes,
        "graph_seconds": g.seconds,
    }
