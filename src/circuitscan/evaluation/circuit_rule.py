"""The circuit a run prints: the rule that turns a method's scores into a set of heads."""

from __future__ import annotations

from typing import Any

from ..config import FDR_RULES, ScoringConfig
from ..types import Scores
from .ground_truth import GroundTruthMetrics


def predicted_circuit(
    scores: Scores, threshold: float | None, gt_metrics: GroundTruthMetrics | None, scoring: ScoringConfig | None = None
) -> dict[str, Any]:
    """The circuit at a threshold: the given one, else the significant heads (``circuit="fdr"``;
    ``"fdr-top"``: as many heads from the top of the ranking), else best-F1, else above uniform.

    Without a ground truth or a threshold, the rule is "softmaxed score above the uniform
    level 1 / n_heads": heads with more positive-only evidence than average. With
    ``scoring.circuit == "fdr"`` it is the heads the permutation null finds significant
    (node level: Benjamini-Hochberg on the heads' p-values; edge level: heads in a
    significant pair, the heads in the top-k pairs when ``edge_rule`` is top-k or top-k-tv, and
    as many heads as the node circuit from the top of the edge score when it is tv).
    """
    if threshold is None and scoring is not None and scoring.circuit in FDR_RULES and "significant" in scores.stats:
        sig = scores.stats["significant"].reshape(-1)
        chosen = [scores.layout.head(i).name for i in sig.nonzero().flatten().tolist()]
        what = "heads" if scores.method == "sae-codes" else "heads in significant pairs"
        rule = f"{what} significant at FDR {scoring.fdr:g} (label-swap permutation null, Benjamini-Hochberg)"
        if scoring.min_effect > 0 and scores.method == "sae-codes":
            rule += f" with an effect (statistic - null mean) >= {scoring.min_effect:g}"
        if scoring.circuit == "fdr-top" and scores.method == "sae-codes":
            chosen = [h.name for h in scores.ranking()[:len(chosen)]]
            rule = f"the top {len(chosen)} heads by score, as many as there are {rule}"
        if scores.method != "sae-codes" and scoring.edge_rule in ("top-k", "top-k-tv"):
            rule = f"heads in the top-k pairs (edge_rule {scoring.edge_rule}; FDR {scoring.fdr:g} applies to the node level)"
        elif scores.method != "sae-codes" and scoring.edge_rule == "tv":
            rule = f"the top {len(chosen)} heads by the edge score (edge_rule tv), as many as the node level's circuit"
        return {"threshold": float(scoring.fdr), "rule": rule, "heads": chosen, "size": len(chosen)}
    if threshold is not None:
        thr, rule = threshold, "given threshold"
    elif gt_metrics is not None:
        thr, rule = gt_metrics.best_threshold, "best-F1 threshold against the ground truth"
    else:
        thr, rule = 1.0 / scores.layout.n_total, "score above uniform (1 / n_heads)"
    flat = scores.flat
    # "above uniform" is strict: heads tied at the uniform level (no evidence) are not in it
    above = flat > thr * (1 + 1e-6) if rule.startswith("score above uniform") else flat >= thr
    chosen = [scores.layout.head(i).name for i in above.nonzero().flatten().tolist()]
    return {"threshold": float(thr), "rule": rule, "heads": chosen, "size": len(chosen)}
