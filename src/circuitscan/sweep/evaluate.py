"""One unit of a sweep: train one SAE on cached activations and score every row from it.

This is what a worker runs. It is :func:`circuitscan.methods.sae_codes.discover_from_activations`
taken apart so that rows that differ only in scoring (softmax, normalisation, silent
code, counting set, k) share one SAE, one set of codes and one head-pair matrix; the
tests check that a row equals ``discover_from_activations`` with the same configs.

A failure is data, not an exception: a unit whose SAE cannot be trained returns every
row with its error; a row whose scoring fails returns that row's error.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ..codes import discretise, node_scores, softmax_scores
from ..codes.edge import cooccurrence_unique, top_pairs
from ..config import SAEConfig, ScoringConfig
from ..errors import CircuitscanError
from ..evaluation.ground_truth import evaluate_scores
from ..sae import fit
from ..types import HeadActivations
from .contrastive import ContrastiveConfig, fit_contrastive
from .plan import RowTask, UnitTask


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def error_result(unit: UnitTask, exc: BaseException | str, *, stage: str = "train") -> dict[str, Any]:
    msg = exc if isinstance(exc, str) else _error_text(exc)
    return {
        "unit": unit.key,
        "worker": worker_name(),
        "train": None,
        "rows": [{"key": r.key, "status": "error", "error": f"{stage}: {msg}"} for r in unit.rows],
    }


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def subset(acts, examples: int | None, easy: int):
    """The first ``examples`` positives and their paired negatives, plus every easy negative."""
    import torch

    if examples is None:
        return acts
    labels = acts.labels
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    n_paired = n_neg - easy
    if examples > n_pos:
        raise CircuitscanError(f"examples={examples} but the cached prompt set has {n_pos} per side")
    idx = torch.cat([
        torch.arange(examples),
        n_pos + torch.arange(min(examples, n_paired)),
        n_pos + torch.arange(n_paired, n_neg),
    ])
    return HeadActivations(x=acts.x[idx], labels=labels[idx], layout=acts.layout, aggregation=acts.aggregation,
                           z=None if acts.z is None else acts.z[idx], w_o=acts.w_o)


def _threshold_curve(scores, truth, thetas) -> dict[str, list[float]]:
    import torch

    pred = scores[None, :] >= torch.tensor(thetas, dtype=scores.dtype)[:, None]  # [T, H]
    tp = (pred & truth).sum(1).double()
    size = pred.sum(1).double()
    n_true = float(truth.sum())
    precision = torch.where(size > 0, tp / size.clamp_min(1), torch.zeros_like(tp))
    recall = tp / n_true
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300),
                     torch.zeros_like(tp))
    return {"f1": f1.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
            "size": size.long().tolist()}


def _metrics(prefix: str, auc_name: str, soft, truth, thetas, n_total: int) -> dict[str, Any]:
    """Ground-truth metrics of one flat score vector (if a truth is known) and its circuit sizes."""
    out: dict[str, Any] = {f"{prefix}_size_above_uniform": int((soft >= 1.0 / n_total).sum())}
    if truth is not None:
        m = evaluate_scores(soft, truth)
        out.update({
            auc_name: m.auc,
            f"{prefix}_best_f1": m.best_f1,
            f"{prefix}_best_theta": m.best_threshold,
            f"{prefix}_precision": m.precision,
            f"{prefix}_recall": m.recall,
            f"{prefix}_circuit_size": m.circuit_size,
            f"{prefix}_tpr_tnr_hmean": m.tpr_tnr_hmean,
        })
        out[f"{prefix}_theta_curve"] = _threshold_curve(soft, truth, thetas)
    return out


def run_unit(acts, unit: UnitTask, *, easy: int = 0) -> dict[str, Any]:
    """Train the unit's SAE on ``acts`` and score its rows.

    Args:
        acts: the variant's cached :class:`~circuitscan.types.HeadActivations`.
        unit: what to train and score.
        easy: how many of the last negatives are easy negatives (kept by ``examples`` subsets).

    Returns:
        ``{"unit", "worker", "train": {...} | None, "rows": [{"key", "status", ...metrics}]}``.
    """
    import torch

    t_unit = time.perf_counter()
    try:
        data = subset(acts, unit.examples, easy)
        sae_cfg = SAEConfig(**unit.sae)
        ccfg = ContrastiveConfig(**unit.contrastive)
        paired = int(data.labels.sum()) * 2 == data.labels.numel()
        t = time.perf_counter()
        if ccfg.alpha > 0:
            train = fit_contrastive(data.x, data.labels, sae_cfg, ccfg, paired=paired)
        else:
            train = fit(data.x, data.labels, sae_cfg, paired=paired)
        train_s = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        return error_result(unit, exc)

    layout = data.layout
    n_total = layout.n_total
    truth = None
    if unit.truth is not None:
        truth = torch.zeros(n_total, dtype=torch.bool)
        truth[list(unit.truth)] = True
    codes_by_silent: dict[str, Any] = {}
    pair_matrix: dict[tuple[str, str], Any] = {}
    rows = []
    for row in unit.rows:
        t = time.perf_counter()
        try:
            rows.append(_score_row(row, unit, data, train, truth, codes_by_silent, pair_matrix))
            rows[-1]["score_s"] = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            rows.append({"key": row.key, "status": "error", "error": f"scoring: {_error_text(exc)}"})
    return {
        "unit": unit.key,
        "worker": worker_name(),
        "train": {
            "train_s": train_s,
            "final_mse": train.final_mse,
            "final_l0": train.final_l0,
            "n_train": int(train.train_indices.numel()),
            "n_examples": data.n_examples,
            "unit_s": time.perf_counter() - t_unit,
        },
        "rows": rows,
    }


def _score_row(row: RowTask, unit: UnitTask, data, train, truth, codes_by_silent, pair_matrix) -> dict[str, Any]:
    """One row: codes (shared per silent-code rule), node scores, optional head-pair scores."""
    import torch

    n_total = data.layout.n_total

    sc = ScoringConfig(**row.scoring)
    if sc.silent not in codes_by_silent:
        codes_by_silent[sc.silent] = discretise(train.sae, data.x, data.labels, data.layout, silent=sc.silent,
                                                z=data.z, w_o=data.w_o)
    codes = codes_by_silent[sc.silent]
    mask = torch.ones(data.n_examples, dtype=torch.bool)
    if sc.count_on == "held-out":
        mask[train.train_indices] = False
    u, soft = node_scores(codes, normalise=sc.normalise, softmax=sc.softmax, mask=mask)
    out: dict[str, Any] = {
        "key": row.key,
        "status": "ok",
        "error": None,
        "n_count": int(mask.sum()),
        "node_scores": soft.tolist(),
        **_metrics("node", "node_auc", soft, truth, unit.thetas, n_total),
    }
    if unit.level in ("edge", "both"):
        pm_key = (sc.silent, sc.count_on)
        if pm_key not in pair_matrix:
            pair_matrix[pm_key] = cooccurrence_unique(codes, mask=mask)
        U = pair_matrix[pm_key]
        n_pairs = n_total * (n_total - 1) // 2
        k = sc.edge_k if row.edge_k_frac is None else max(1, round(row.edge_k_frac * n_pairs))
        pairs = top_pairs(U, k)
        ue = torch.zeros(n_total)
        if pairs.numel():
            ue.index_add_(0, pairs[:, 0], torch.ones(pairs.shape[0]))
            ue.index_add_(0, pairs[:, 1], torch.ones(pairs.shape[0]))
        soft_e = softmax_scores(ue, data.layout.n_heads, sc.softmax)
        out["edge_k"] = n_pairs // 2 if k is None else min(k, n_pairs)
        out["pairs_kept"] = int(pairs.shape[0])
        out["pairs_scores"] = soft_e.tolist()
        out.update(_metrics("pairs", "head_auc_from_pairs", soft_e, truth, unit.thetas, n_total))
    return out
