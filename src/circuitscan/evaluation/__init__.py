"""Evaluation of Scores: against a ground truth (ROC, AUC, F1) and by intervention
(task metrics, circuit performance, faithfulness curves, CPR/CMD)."""

from __future__ import annotations

from .faithfulness import (
    MIB_FRACTIONS,
    EdgeFaithfulnessCurve,
    FaithfulnessCurve,
    cmd,
    cpr,
    curve_sizes,
    edge_faithfulness_curves,
    faithfulness_curve,
    faithfulness_curves,
    mib_sizes,
)
from .ground_truth import GroundTruthMetrics, evaluate_against, evaluate_scores, roc_points
from .intervention import (
    ABLATIONS,
    AblationSource,
    CircuitEvaluator,
    HeadCache,
    ablation_source,
    cache_heads,
    circuit_mask,
    head_mask_hooks,
    heads_ablated,
    random_masks,
    run_with_heads,
    top_k_masks,
)
from .metrics import (
    METRICS,
    Metric,
    MetricBatch,
    default_metric,
    get_metric,
    register_metric,
    table_metrics,
)
from .performance import (
    PerformanceRow,
    PerformanceTable,
    RunEvaluation,
    circuit_performance,
    evaluate_run,
)

__all__ = [
    "ABLATIONS",
    "METRICS",
    "MIB_FRACTIONS",
    "AblationSource",
    "CircuitEvaluator",
    "EdgeFaithfulnessCurve",
    "FaithfulnessCurve",
    "GroundTruthMetrics",
    "HeadCache",
    "Metric",
    "MetricBatch",
    "PerformanceRow",
    "PerformanceTable",
    "RunEvaluation",
    "ablation_source",
    "cache_heads",
    "circuit_mask",
    "circuit_performance",
    "cmd",
    "cpr",
    "curve_sizes",
    "default_metric",
    "edge_faithfulness_curves",
    "evaluate_against",
    "evaluate_run",
    "evaluate_scores",
    "faithfulness_curve",
    "faithfulness_curves",
    "get_metric",
    "head_mask_hooks",
    "heads_ablated",
    "mib_sizes",
    "random_masks",
    "register_metric",
    "roc_points",
    "run_with_heads",
    "table_metrics",
    "top_k_masks",
]
