"""Evaluation of Scores: against a ground truth (ROC, AUC, F1) and, later, by intervention."""

from __future__ import annotations

from .ground_truth import GroundTruthMetrics, evaluate_against, evaluate_scores, roc_points

__all__ = ["GroundTruthMetrics", "evaluate_against", "evaluate_scores", "roc_points"]
