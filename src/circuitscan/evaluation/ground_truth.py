"""Scores against a ground-truth set of heads: ROC over heads, AUC, precision/recall/F1.

Every number here is over HEADS. The paper's "edge-level AUC" for its own method is
also an AUC over heads (each head scored by how often it appears in top head pairs);
it is reported as ``head_auc_from_pairs``, never as an edge AUC.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float

from ..errors import CircuitscanError
from ..types import GroundTruth, Scores


@dataclass(frozen=True)
class GroundTruthMetrics:
    """Head-level agreement of one score vector with a ground truth.

    Attributes:
        auc: ROC AUC over heads (ties count half).
        best_f1: precision/recall F1 at the best threshold (the paper's F1).
        best_threshold: the score threshold (predict score >= threshold) reaching it.
        precision, recall, circuit_size: at that threshold.
        tpr_tnr_hmean: the authors' code's "F1": max over thresholds of
            2 TPR (1 - FPR) / (TPR + 1 - FPR), a harmonic mean of TPR and TNR.
        at_threshold: precision/recall/F1/size at a user-given threshold, if any.
        roc: false- and true-positive rates and thresholds of the ROC curve.
    """

    ground_truth: str
    n_heads: int
    n_true: int
    auc: float
    best_f1: float
    best_threshold: float
    precision: float
    recall: float
    circuit_size: int
    tpr_tnr_hmean: float
    at_threshold: dict[str, float] | None = None
    roc: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roc_points(scores: Float[torch.Tensor, " n"], truth: Bool[torch.Tensor, " n"]) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(truth.numpy().astype(int), scores.double().numpy())
    thr = [float(t) if t != float("inf") else float("inf") for t in thr]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr}


def _prf(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    tn = int((~pred & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    tpr = recall
    tnr = tn / (tn + fp) if tn + fp else 0.0
    hmean = 2 * tpr * tnr / (tpr + tnr) if tpr + tnr else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "size": tp + fp, "tpr_tnr_hmean": hmean}


def evaluate_scores(
    scores: Float[torch.Tensor, " n"],
    truth: Bool[torch.Tensor, " n"],
    *,
    name: str = "ground truth",
    threshold: float | None = None,
) -> GroundTruthMetrics:
    """ROC AUC, best F1 and friends for one flat score vector."""
    from sklearn.metrics import roc_auc_score

    scores = scores.detach().double().flatten()
    truth = truth.flatten().bool()
    if scores.shape != truth.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and ground truth {tuple(truth.shape)} differ in shape")
    n_true = int(truth.sum())
    if n_true == 0 or n_true == truth.numel():
        raise CircuitscanError(
            f"ground truth {name!r} marks {n_true} of {truth.numel()} heads; an ROC needs some heads in "
            "and some out of the circuit"
        )
    auc = float(roc_auc_score(truth.numpy().astype(int), scores.numpy()))
    best = {"f1": -1.0}
    best_thr = float("inf")
    best_hmean = 0.0
    for thr in torch.unique(scores).tolist():  # every distinct predicted circuit
        m = _prf(scores >= thr, truth)
        best_hmean = max(best_hmean, m["tpr_tnr_hmean"])
        # ties in F1: prefer the smaller circuit (higher threshold)
        if m["f1"] > best["f1"] or (m["f1"] == best["f1"] and thr > best_thr):
            best, best_thr = m, thr
    at = None
    if threshold is not None:
        at = _prf(scores >= threshold, truth)
        at["threshold"] = threshold
    return GroundTruthMetrics(
        ground_truth=name,
        n_heads=truth.numel(),
        n_true=n_true,
        auc=auc,
        best_f1=best["f1"],
        best_threshold=best_thr,
        precision=best["precision"],
        recall=best["recall"],
        circuit_size=int(best["size"]),
        tpr_tnr_hmean=best_hmean,
        at_threshold=at,
        roc=roc_points(scores, truth),
    )


def evaluate_against(scores: Scores, gt: GroundTruth, *, threshold: float | None = None) -> GroundTruthMetrics:
    """Evaluate a method's per-head scores against a ground truth."""
    gt.check_layout(scores.layout)
    return evaluate_scores(scores.flat, gt.mask(scores.layout), name=gt.name, threshold=threshold)
