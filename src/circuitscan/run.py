"""The ``discover`` pipeline as a library call: task -> activations -> SAE -> codes -> scores -> run dir."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import SAEConfig, ScoringConfig, default_sae, default_scoring
from .errors import CircuitscanError, CircuitscanWarning
from .evaluation.circuit_rule import predicted_circuit  # noqa: F401  (re-export: its old home)
from .evaluation.ground_truth import GroundTruthMetrics, evaluate_against
from .guards import check_discover_memory, check_type
from .methods.sae_codes import Discovery, SAECodesConfig, run_sae_codes
from .models.handle import ModelHandle
from .rundir import (
    ACTIVATIONS,
    CODES,
    CONFIG,
    METRICS,
    PAIR_COUNTS_MEANING,
    SAE,
    SCORES,
    RunWriter,
    canonical_safetensors,
    open_run,
)
from .runfiles import config_header, ground_truth_block, task_block
from .sae import save_sae
from .tasks.checks import check_model_and_prompts
from .types import GroundTruth, PromptSet, Scores

LEVELS = ("node", "edge", "both")


@dataclass
class RunResult:
    """What :func:`discover` returns (and wrote, if ``out`` was given)."""

    discovery: Discovery
    prompts: PromptSet
    model: ModelHandle
    ground_truth: GroundTruth | None
    metrics: dict[str, GroundTruthMetrics] = field(default_factory=dict)
    circuits: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    out: Path | None = None

    @property
    def scores(self) -> list[Scores]:
        d = self.discovery
        return [s for s in (d.node, d.edge) if s is not None]


def discover(
    model: ModelHandle | None = None,
    prompts: PromptSet | None = None,
    *,
    sae: SAEConfig | None = None,
    scoring: ScoringConfig | None = None,
    level: str = "node",
    ground_truth: GroundTruth | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    aggregation: str = "mean",
    batch_size: int = 64,
    extra_config: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    save_activations: bool = False,
) -> RunResult:
    """Find the heads of the circuit behind ``prompts`` in ``model``; optionally write a run dir.

    Args:
        model: a loaded model (:func:`circuitscan.load_model`).
        prompts: the task's positives and negatives (:func:`circuitscan.build_task`).
        sae, scoring: stage configs (default: both of ``--compat circuitscan``,
            :func:`circuitscan.config.default_configs`; ``SAEConfig()`` and
            ``ScoringConfig()`` are the paper's). A config given alone is used as given.
        level: ``"node"``, ``"edge"`` or ``"both"``.
        ground_truth: heads to evaluate against (ROC AUC, F1).
        out: run directory to write (must not exist or be empty).
        save_activations: also write the per-head activations (``activations.safetensors``).
    """
    check_model_and_prompts(model, prompts)
    if level not in LEVELS:
        raise CircuitscanError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    sae = sae or default_sae()
    scoring = scoring or default_scoring()
    check_type(sae, SAEConfig, "sae", "an SAEConfig")
    check_type(scoring, ScoringConfig, "scoring", "a ScoringConfig")
    check_type(out, (str, Path, type(None)), "out", "a directory path or None")
    if ground_truth is not None:
        check_type(ground_truth, GroundTruth, "ground_truth", "a GroundTruth (circuitscan.circuits.get(name))")
    check_discover_memory(model, prompts.n_positive + prompts.n_negative, sae, prompts.seq_len)
    warn_if_indistinct(prompts)
    n_examples = prompts.n_positive + prompts.n_negative
    if scoring.count_on == "held-out" and sae.train_examples >= n_examples:
        raise CircuitscanError(
            f"the SAE trains on {sae.train_examples} of {n_examples} examples, leaving none to count codes "
            "on; use more examples or --count-on all"
        )
    if ground_truth is not None:
        ground_truth.check_layout(model.layout)
    with open_run(out, overwrite=overwrite) as writer:
        cfg = SAECodesConfig(sae=sae, scoring=scoring, level=level, aggregation=aggregation, batch_size=batch_size)
        d = run_sae_codes(model, prompts, cfg)
        all_timings = {**(timings or {}), **d.timings}
        result = RunResult(discovery=d, prompts=prompts, model=model, ground_truth=ground_truth, timings=all_timings)
        t = time.perf_counter()
        for s in result.scores:
            m = evaluate_against(s, ground_truth, threshold=scoring.threshold) if ground_truth else None
            if m is not None:
                result.metrics[s.method] = m
            result.circuits[s.method] = predicted_circuit(s, scoring.threshold, m, scoring)
        result.timings["evaluate"] = time.perf_counter() - t
        if writer is not None:
            _write_run(writer, result, cfg, extra_config or {})
            if save_activations:
                _write_activations(writer, result)
            result.out = writer.commit()
    return result


def warn_if_indistinct(prompts: PromptSet) -> None:
    """Warn when every positive equals its negative: no head can tell them apart."""
    import warnings

    import torch

    same = prompts.paired and torch.equal(prompts.positive, prompts.negative) and (
        (prompts.positive_mask is None) == (prompts.negative_mask is None)
        and (prompts.positive_mask is None or torch.equal(prompts.positive_mask, prompts.negative_mask))
    )
    if same:
        warnings.warn(
            f"task {prompts.task!r}: every positive prompt equals its negative, so positives and negatives do "
            "not differ; no head can separate them and any circuit found is noise",
            CircuitscanWarning, stacklevel=3,
        )


def scores_to_json(s: Scores) -> dict[str, Any]:
    names = s.layout.names()
    flat = s.flat.tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    rank = [0] * len(flat)
    for r, i in enumerate(order):
        rank[i] = r + 1
    out: dict[str, Any] = {
        "heads": names,
        "scores": flat,
        "rank": rank,
        "wall_time_s": s.wall_time_s,
        "forward_passes": s.forward_passes,
        "backward_passes": s.backward_passes,
    }
    for key, value in s.stats.items():
        if key == "pair_matrix":
            continue  # written with the matrix
        if key == "top_pairs":
            pairs = value.tolist()
            U = s.pairs
            out["top_pairs"] = [
                [names[a], names[b], float(U[a, b]) if U is not None else None] for a, b in pairs
            ]
        elif hasattr(value, "reshape") and value.numel() == len(flat):
            out[key] = value.reshape(-1).tolist()
        else:
            out[key] = value
    if s.pairs is not None:
        meaning = s.stats.get("pair_matrix", PAIR_COUNTS_MEANING)
        out["pairs"] = {"matrix": s.pairs.tolist(), "meaning": meaning}
    return out


def _write_run(writer: RunWriter, result: RunResult, cfg: SAECodesConfig, extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    d = result.discovery
    config = {
        **config_header("discover", result.model),
        "task": task_block(result.prompts),
        "sae": asdict(cfg.sae),
        "scoring": asdict(cfg.scoring),
        "level": cfg.level,
        "aggregation": cfg.aggregation,
        "batch_size": cfg.batch_size,
        "ground_truth": ground_truth_block(result.ground_truth),
        **extra,
    }
    writer.json(CONFIG, config)
    writer.json(SCORES, {"layout": result.model.layout.to_dict(), "methods": {s.method: scores_to_json(s) for s in result.scores}})
    metrics = {
        "timings_s": result.timings,
        "sae": sae_summary(d),
        "circuits": result.circuits,
        "ground_truth": {k: v.to_dict() for k, v in result.metrics.items()},
        "notes": {
            "sae-codes-pairs": "the paper's 'edge-level' result: a score per HEAD from top head pairs; "
            "its AUC is over heads, not over edges",
        },
    }
    writer.json(METRICS, metrics)
    if d.codes.codes.shape[1] != result.model.layout.n_total:  # codes per (slot, head), not [examples, heads]
        save_sae(d.train.sae, cfg.sae, writer.path(SAE))
        return
    save_file(
        {"codes": d.codes.codes.contiguous(), "labels": d.codes.labels.to("cpu").to(dtype=d.codes.codes.dtype),
         "count_mask": d.count_mask.long()},
        str(writer.path(CODES)),
        metadata={"n_codes": str(d.codes.n_codes), **{k: str(v) for k, v in result.model.layout.to_dict().items()}},
    )
    save_sae(d.train.sae, cfg.sae, writer.path(SAE))
    for name in (CODES, SAE):
        canonical_safetensors(writer.path(name))


def sae_summary(d: Discovery) -> dict[str, Any]:
    """metrics.json's ``sae`` block: the first SAE's numbers, and every member's."""
    t = d.train
    members = list(t.members or (t,))
    codes = d.node.stats.get("distinct_codes")
    out: dict[str, Any] = {
        "final_mse": t.final_mse, "final_l0": t.final_l0, "losses": t.losses,
        "train_indices": t.train_indices.tolist(), "seconds": t.seconds,
        "l1": t.l1, "dead_features": t.dead_features, "input_scale": t.input_scale, "epochs_run": t.epochs_run,
        "precision": t.precision, "n_seeds": len(members),
        "mean_l0": sum(m.final_l0 for m in members) / len(members),
        "mean_dead_features": sum(m.dead_features for m in members) / len(members),
        "mean_distinct_codes_per_head": None if codes is None else float(codes.float().mean()),
        "members": [{"seed": m.seed, "final_l0": m.final_l0, "dead_features": m.dead_features,
                     "final_mse": m.final_mse, "input_scale": m.input_scale} for m in members],
    }
    if t.calibration:
        out["calibration"] = [{"l1": a, "l0": b} for a, b in t.calibration]
    if "rank_agreement" in d.node.stats:
        out["rank_agreement"] = d.node.stats["rank_agreement"]
    return out


def _write_activations(writer: RunWriter, result: RunResult) -> None:
    """``activations.safetensors``: x [examples, heads, d_model] float32 and labels (1 = positive)."""
    import torch
    from safetensors.torch import save_file

    acts = result.discovery.activations
    if acts is None or acts.x.ndim != 3:
        raise CircuitscanError("activations can be saved only when aggregated over positions (mean or last)")
    save_file(
        {"x": acts.x.detach().to("cpu", dtype=torch.float32).contiguous(), "labels": acts.labels.to("cpu").long()},
        str(writer.path(ACTIVATIONS)),
        metadata={"aggregation": acts.aggregation, **{k: str(v) for k, v in acts.layout.to_dict().items()}},
    )
    canonical_safetensors(writer.path(ACTIVATIONS))
