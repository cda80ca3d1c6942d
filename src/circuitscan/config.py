"""Frozen, validated configuration for each stage. Invalid values raise CircuitscanError."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import CircuitscanError
from .precision import PRECISIONS


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CircuitscanError(msg)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or (type(v).__module__ == "numpy" and type(v).__name__ in ("bool", "bool_"))


def _check_types(cfg: Any, *, ints: tuple[str, ...] = (), nums: tuple[str, ...] = (),
                 strs: tuple[str, ...] = (), bools: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> None:
    """Whole numbers are ints (not bools or floats), numbers not bools, flags bools."""
    name = type(cfg).__name__
    for kind, keys, ok in (
        ("a whole number (int)", ints, lambda v: isinstance(v, numbers.Integral) and not _is_bool(v)),
        ("a number", nums, lambda v: isinstance(v, numbers.Real) and not _is_bool(v)),
        ("a string", strs, lambda v: isinstance(v, str)),
        ("True or False", bools, _is_bool),
    ):
        for key in keys:
            v = getattr(cfg, key)
            if not (ok(v) or (v is None and key in optional)):
                raise CircuitscanError(f"{name}.{key} must be {kind}{' or None' if key in optional else ''}, "
                                       f"got {v!r} ({type(v).__name__})")


LR_SCHEDULES = ("constant", "cosine", "linear")
"""``SAEConfig.lr_schedule``: the SAE's step size over its training steps."""



NODE_SCORES = ("softmax", "count", "z", "rank-change")
FEATURE_CHANGES = ("absolute", "relative")

SAE_PRECISIONS = PRECISIONS  # circuitscan.precision

@dataclass(frozen=True)
class SAEConfig:
    """The sparse autoencoder of METHOD.md section 3 and its training.

    Attributes:
        n_features: dictionary size (the paper: 200, projecting down from d_model).
        l1: sparsity weight lambda (paper: 0.02; the authors use 0.05 for docstring).
        lr: Adam learning rate.
        epochs: optimiser steps (full batch unless ``batch_rows``).
        train_examples: examples the SAE is trained on (each gives n_heads rows).
        balanced: draw train examples half positive, half negative (False: at random
            from the shuffled pool, as the authors' code does).
        loss: ``"paper"`` = per row sum of squared errors + l1 * L1 norm, averaged over
            rows; ``"authors"`` = mean squared error over elements + l1 * mean L1 norm
            (the authors' code: the L1 term weighs d_model times more).
        decoder_norm: ``"atoms"`` = unit-norm dictionary atoms (the paper);
            ``"authors"`` = normalise the other axis, as the authors' code does.
        precision: ``"fp32"`` (default) or ``"bf16"``: the training matmuls in bfloat16
            (parameters, elementwise maths and Adam stay fp32; 2x faster on CPUs with bf16
            units, slightly different codes); ``"auto"``: bf16 where the hardware multiplies
            bf16 natively (AVX512-BF16 or AMX CPUs, CUDA GPUs with bf16), else fp32
            (:func:`circuitscan.precision.resolve_precision`; the run records which).
        seed: all randomness (initialisation, example selection).
        input_scale: ``"none"`` (the paper) or ``"d_model"``: multiply the training rows by
            one constant so their mean squared norm is d_model (as SAELens does), folded
            into the saved SAE so its encoder takes raw activations.
        head_norm: ``"none"`` (the paper), ``"center"``: subtract each head's mean output
            (over all examples, labels unused) before the SAE, so codes describe how an
            example differs rather than which head it is; ``"standardise"``: also divide
            each head's rows by their rms norm (every head weighs the same). Applied to
            the activations before training and encoding (the saved SAE expects them).
        target_l0: calibrate l1 so the mean number of active features per training row
            is about this (None: use ``l1`` as given).
        calibrate: how ``target_l0`` is met: ``"online"`` steers l1 multiplicatively
            during the one training run (no extra cost), ``"bisect"`` trains batches of
            SAEs over a grid of l1 first (:func:`circuitscan.sae.calibrate_l1`).
        n_seeds: SAEs in the ensemble (seeds ``seed``, ``seed + 1``, ...), trained as one
            batched model; each draws its own training examples.
        stop: ``"epochs"`` = exactly ``epochs`` steps (the paper); ``"codes"`` = stop once
            the argmax codes of the training rows stop changing (``epochs`` is the most).
        check_every: with ``stop="codes"``, epochs between two looks at the codes.
        stop_patience: with ``stop="codes"``, consecutive settled looks needed to stop.
        stop_tol: with ``stop="codes"``, a look is settled when at most this fraction of
            the training rows changed code since the previous look.
        lr_schedule: the step size over the ``epochs`` steps: ``"constant"`` (the paper),
            ``"cosine"`` (``lr * (1 + cos(pi * k / epochs)) / 2`` at step ``k``, ~0 at the
            last) or ``"linear"`` (``lr * (1 - k / epochs)``).
        batch_rows: None (the paper: every step sees every training row) or a step's
            minibatch size: each step trains on the next ``batch_rows`` rows of a shuffled
            pass over the rows (a new shuffle per pass, so each pass covers every row once);
            with fewer rows than this, full batch. The final codes encode every row.
    """

    n_features: int = 200
    l1: float = 0.02
    lr: float = 1e-3
    epochs: int = 500
    train_examples: int = 10
    balanced: bool = True
    loss: str = "paper"
    decoder_norm: str = "atoms"
    precision: str = "fp32"
    seed: int = 0
    input_scale: str = "none"
    head_norm: str = "none"
    target_l0: float | None = None
    calibrate: str = "online"
    n_seeds: int = 1
    stop: str = "epochs"
    check_every: int = 25
    stop_patience: int = 2
    stop_tol: float = 0.01
    lr_schedule: str = "constant"
    batch_rows: int | None = None

    def __post_init__(self) -> None:
        _check_types(self, ints=("n_features", "epochs", "train_examples", "seed", "batch_rows"), nums=("l1", "lr"),
                     strs=("loss", "decoder_norm", "precision", "lr_schedule"), bools=("balanced",),
                     optional=("batch_rows",))
        _check(self.n_features >= 1, f"n_features must be >= 1, got {self.n_features}")
        _check(self.l1 >= 0 and math.isfinite(self.l1), f"l1 must be a finite number >= 0, got {self.l1}")
        _check(0 < self.lr <= 1e10, f"lr must be > 0 and at most 1e10 (larger overflows Adam), got {self.lr}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.train_examples >= 1, f"train_examples must be >= 1, got {self.train_examples}")
        _check(self.loss in ("paper", "authors"), f"loss must be 'paper' or 'authors', got {self.loss!r}")
        _check(
            self.decoder_norm in ("atoms", "authors"),
            f"decoder_norm must be 'atoms' or 'authors', got {self.decoder_norm!r}",
        )
        _check(self.precision in SAE_PRECISIONS,
               f"precision must be one of {', '.join(SAE_PRECISIONS)}, got {self.precision!r}")
        _check(self.input_scale in ("none", "d_model"),
               f"input_scale must be 'none' or 'd_model', got {self.input_scale!r}")
        _check(self.target_l0 is None or (math.isfinite(self.target_l0) and 0 < self.target_l0 < self.n_features),
               f"target_l0 must be a number in (0, n_features={self.n_features}), got {self.target_l0}")
        _check(self.head_norm in ("none", "center", "standardise"),
               f"head_norm must be 'none', 'center' or 'standardise', got {self.head_norm!r}")
        _check(self.calibrate in ("online", "bisect"),
               f"calibrate must be 'online' or 'bisect', got {self.calibrate!r}")
        _check(self.n_seeds >= 1, f"n_seeds (SAEs in the ensemble) must be >= 1, got {self.n_seeds}")
        _check(self.stop in ("epochs", "codes"), f"stop must be 'epochs' or 'codes', got {self.stop!r}")
        _check(self.check_every >= 1, f"check_every must be >= 1, got {self.check_every}")
        _check(self.stop_patience >= 1, f"stop_patience must be >= 1, got {self.stop_patience}")
        _check(0 <= self.stop_tol < 1, f"stop_tol must be in [0, 1), got {self.stop_tol}")
        _check(self.lr_schedule in LR_SCHEDULES,
               f"lr_schedule must be one of {', '.join(map(repr, LR_SCHEDULES))}, got {self.lr_schedule!r}")
        _check(self.batch_rows is None or self.batch_rows >= 1,
               f"batch_rows (rows per SAE training step) must be >= 1 or None (full batch), got {self.batch_rows}")
        _check(self.batch_rows is None or self.stop == "epochs",
               f"stop={self.stop!r} compares the codes of all training rows between looks; with batch_rows="
               f"{self.batch_rows} a step sees only some rows: use stop='epochs' or batch_rows=None")


CIRCUIT_RULES = ("above-uniform", "fdr", "fdr-top")
"""``ScoringConfig.circuit``: how the printed circuit is chosen when no threshold is given."""
FDR_RULES = ("fdr", "fdr-top")
"""The circuit rules that read the permutation null's Benjamini-Hochberg decisions."""
EDGE_RULES = ("top-k", "fdr", "tv", "top-k-tv")
"""``ScoringConfig.edge_rule``: how the edge level turns head pairs into head scores (``--edge-rule``)."""


@dataclass(frozen=True)
class ScoringConfig:
    """How codes become per-head scores (METHOD.md sections 4-6).

    Attributes:
        silent: what code a head gets when no SAE feature fires on it:
            ``"own-code"`` (default) gives it the extra code ``n_features``, so silence is
            one shared, honest code; ``"zero"`` maps it to feature 0 (the authors' argmax).
        count_on: ``"held-out"`` counts codes only on examples the SAE did not train on;
            ``"all"`` counts on every example, the training ones included (authors' code).
        statistic: what is measured per head: ``"unique-positive"`` (the paper: codes seen
            on positives and never on negatives) or ``"tv"``: the total-variation distance
            between the head's code distributions on positives and on negatives, in [0, 1]
            (:func:`circuitscan.codes.node.code_distance`). With ``"tv"``, ``node_score``
            ``"count"`` is the distance itself.
        normalise: divide unique positive codes by all codes seen at the head
            (``statistic="unique-positive"`` only).
        softmax: ``"global"`` over all heads (paper default) or ``"layer"``.
        threshold: theta on softmaxed scores for the predicted circuit (None: the
            best-F1 threshold when a ground truth is known, else the paper's 1e-7 style
            rule is not assumed and the top heads by score are shown).
        edge_k: top-k head pairs for edge scores; None = half of all head pairs.
        permutations: label-swap permutations for a null distribution of every head's
            count (swap positive and negative inside pairs; :mod:`circuitscan.codes.null`);
            0 = none (the paper).
        null_seed: the permutations' randomness.
        circuit: the circuit when no ``threshold`` is given: ``"above-uniform"`` (best F1
            against a known ground truth, else softmaxed score above uniform; the paper's
            style), ``"fdr"``: heads significant under the permutation null at
            false-discovery rate ``fdr`` (Benjamini-Hochberg; needs ``permutations``), or
            ``"fdr-top"``: as many heads as ``"fdr"`` finds, taken from the top of the
            node score (the null says how many heads differ, the score which).
        fdr: the false-discovery rate of ``circuit="fdr"`` and ``edge_rule="fdr"``, in (0, 1).
        min_effect: with ``circuit="fdr"`` (or ``"fdr-top"``), a significant head counts only when
            its statistic exceeds its null mean by at least this much (the "effect": for
            ``"tv"`` a debiased total-variation distance in [0, 1]; for the count, codes).
            Significance grows with the number of prompts, the effect does not, so this
            keeps the circuit's size from growing with ``-n``. 0 = significance alone.
        node_score: the per-head score: ``"softmax"`` of the count (the paper), the
            ``"count"`` itself, its ``"z"``-score under the null (needs ``permutations``), or
            ``"rank-change"``: the mean of the head's rank by the statistic and its rank by
            the paired feature change (how far its SAE features move between a prompt and
            its paired corruption, :func:`circuitscan.codes.discretise.discretise_with_change`),
            in (0, 1]; without paired prompts the statistic's rank alone.
        feature_change: the units of ``rank-change``'s paired feature change: ``"relative"``
            divides each head's mean feature distance by the mean L1 norm of its features (every
            head on its own scale); ``"absolute"`` keeps the distance in the SAE's units, one
            input scale for all heads, so a head whose output moves more counts for more.
        combine: ``"mean"`` or ``"median"`` over the SAEs of an ensemble.
        edge_rule: ``"top-k"`` (``edge_k`` pairs, the paper) or ``"fdr"``: pairs whose
            count U is significant under ``edge_permutations`` label swaps (per-pair z,
            normal tail, Benjamini-Hochberg at ``fdr``); a head's score is then the sum of
            its positive pair z-scores, which does not saturate. ``"tv"``: every pair's
            total-variation distance between its joint codes on positives and negatives
            (:func:`circuitscan.codes.edge.joint_distance`); a head's score is its share of
            the summed distances over all heads (itself included), the circuit the top m
            heads, m = the size of the node level's circuit, and the pairs the top
            ``edge_k`` by distance (default m (m - 1) / 2). ``"top-k-tv"``: the paper's
            top-k counts with ties broken by the head's mean pair distance (same pairs and
            circuit as top-k).
        edge_permutations: label swaps for ``edge_rule="fdr"``.
    """

    silent: str = "own-code"
    count_on: str = "held-out"
    statistic: str = "unique-positive"
    normalise: bool = False
    softmax: str = "global"
    threshold: float | None = None
    edge_k: int | None = None
    permutations: int = 0
    null_seed: int = 0
    circuit: str = "above-uniform"
    fdr: float = 0.05
    min_effect: float = 0.0
    node_score: str = "softmax"
    feature_change: str = "relative"
    combine: str = "mean"
    edge_rule: str = "top-k"
    edge_permutations: int = 20

    def __post_init__(self) -> None:
        _check_types(self, ints=("edge_k",), nums=("threshold", "min_effect"), strs=("silent", "count_on", "statistic", "softmax"),
                     bools=("normalise",), optional=("threshold", "edge_k"))
        _check(self.silent in ("own-code", "zero"), f"silent must be 'own-code' or 'zero', got {self.silent!r}")
        _check(self.count_on in ("held-out", "all"), f"count_on must be 'held-out' or 'all', got {self.count_on!r}")
        _check(self.statistic in ("unique-positive", "tv"),
               f"statistic must be 'unique-positive' or 'tv', got {self.statistic!r}")
        _check(not (self.normalise and self.statistic == "tv"),
               "normalise divides the unique-positive count; it does not apply to statistic='tv'")
        _check(self.softmax in ("global", "layer"), f"softmax must be 'global' or 'layer', got {self.softmax!r}")
        _check(
            self.threshold is None or (0 <= self.threshold <= 1),
            f"threshold must be in [0, 1] (it applies to softmaxed scores), got {self.threshold}",
        )
        _check(self.edge_k is None or self.edge_k >= 1, f"edge_k must be >= 1, got {self.edge_k}")
        _check(self.permutations >= 0, f"permutations must be >= 0, got {self.permutations}")
        _check(self.circuit in CIRCUIT_RULES,
               f"circuit must be one of {', '.join(map(repr, CIRCUIT_RULES))}, got {self.circuit!r}")
        _check(0 < self.fdr < 1 and math.isfinite(self.fdr),
               f"fdr (the false-discovery rate) must be in (0, 1), got {self.fdr}")
        _check(math.isfinite(self.min_effect) and self.min_effect >= 0,
               f"min_effect must be a finite number >= 0, got {self.min_effect}")
        _check(self.min_effect == 0 or self.circuit in FDR_RULES,
               f"min_effect ({self.min_effect:g}) is a floor on the FDR circuit: it needs circuit='fdr' or "
               f"'fdr-top' (got circuit={self.circuit!r}); set min_effect=0 or circuit='fdr'")
        _check(self.node_score in NODE_SCORES,
               f"node_score must be one of {', '.join(map(repr, NODE_SCORES))}, got {self.node_score!r}")
        _check(self.feature_change in FEATURE_CHANGES,
               f"feature_change must be one of {', '.join(map(repr, FEATURE_CHANGES))}, got {self.feature_change!r}")
        _check(self.combine in ("mean", "median"), f"combine must be 'mean' or 'median', got {self.combine!r}")
        _check(not (self.node_score == "rank-change" and self.circuit == "above-uniform"),
               "circuit='above-uniform' compares softmaxed scores with 1 / n_heads; node_score='rank-change' gives "
               "ranks: use circuit='fdr-top' or 'fdr', or node_score='softmax'")
        _check(self.edge_rule in EDGE_RULES,
               f"edge_rule must be one of {', '.join(map(repr, EDGE_RULES))}, got {self.edge_rule!r}")
        _check(self.edge_permutations >= 2, f"edge_permutations must be >= 2, got {self.edge_permutations}")
        needs = [k for k, v in ((f"circuit={self.circuit!r}", self.circuit in FDR_RULES),
                                ("node_score='z'", self.node_score == "z")) if v]
        _check(not needs or self.permutations > 0,
               f"{' and '.join(needs)} need(s) a permutation null: set permutations > 0 (e.g. 1000)")


AUTHORS_COMPAT = {
    "sae": {"loss": "authors", "decoder_norm": "authors", "balanced": False},
    "scoring": {"silent": "zero", "count_on": "all"},
}


CIRCUITSCAN_COMPAT = {
    "sae": {"input_scale": "d_model", "head_norm": "center", "epochs": 100, "lr_schedule": "cosine",
            "batch_rows": 256, "n_seeds": 5, "precision": "auto"},
    "scoring": {"statistic": "tv", "permutations": 1000, "circuit": "fdr-top", "min_effect": 0.05, "edge_rule": "tv",
                "node_score": "rank-change", "feature_change": "absolute"},
}
"""``--compat circuitscan``, the default of ``discover``, ``compare`` and :class:`SAECodesConfig`:
rows scaled to mean squared norm d_model and each head's mean output removed before the
SAE; an ensemble of 5 SAEs (seeds ``seed`` .. ``seed + 4``) trained as one batched model,
100 steps of 256 shuffled rows each with a cosine step size, their matmuls in bfloat16 where
the hardware has it (``precision="auto"``: the same AUC, circuit size and recovery on every
testbed at half the SAE time, docs/CALIBRATION.md "bf16 SAE training"), their statistics averaged
(AUC std over seeds and SAE seconds both down against one full-batch SAE of 200 steps, and
100 steps as good as 200 on every testbed: docs/CALIBRATION.md "SAE ensemble (issues 13 and
14)"; the schedule: "SAE schedule (issue 14)"),
the total-variation distance between a head's codes on positives and negatives
instead of the count of positive-only codes, the node score the mean of a head's rank by
that distance and by its paired feature change (``node_score="rank-change"``: AUC up on
five testbeds, down on none, docs/CALIBRATION.md "Node score"), that change in the SAE's
units, one scale for every head (``feature_change="absolute"``: SmolLM2 AUC up on all five
rows, IOI 0.895 -> 0.932, docs/CALIBRATION.md "The paired change in absolute units"), and the circuit = the top k
heads by that score, k = the number of heads significant at FDR 0.05 under the label-swap null whose
distance exceeds its null mean by at least 0.05 (``circuit="fdr-top"``: the null's set itself
recovers far less of the task on SmolLM2, docs/CALIBRATION.md "Round 4"; ``min_effect``:
without it the circuit grows with the number of prompts; 0.05 is the largest floor that changes
no toy or tracr circuit, "Round 3"); the edge level scores a head by its share of the total-variation distances between the
joint codes of its head pairs on positives and negatives, its circuit as many heads as the
node circuit (``edge_rule="tv"``: the paper's top-k saturates, most head scores tied and the
circuit every head; docs/CALIBRATION.md "Edge rule (issue 13 item 4)"). Chosen over every known-answer testbed, 5 seeds
(docs/CALIBRATION.md); ``--compat paper`` (:class:`SAEConfig` and :class:`ScoringConfig`
as constructed) is the paper's method."""

COMPATS = ("paper", "authors", "circuitscan")


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    _check(not unknown, f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    return cls(**data)


def authors_compat(sae: SAEConfig, scoring: ScoringConfig) -> tuple[SAEConfig, ScoringConfig]:
    """Switch every deviation of the authors' code on (METHOD.md section 3)."""
    return replace(sae, **AUTHORS_COMPAT["sae"]), replace(scoring, **AUTHORS_COMPAT["scoring"])


def circuitscan_compat(sae: SAEConfig, scoring: ScoringConfig) -> tuple[SAEConfig, ScoringConfig]:
    """Switch on the variant beyond the paper (:data:`CIRCUITSCAN_COMPAT`)."""
    return replace(sae, **CIRCUITSCAN_COMPAT["sae"]), replace(scoring, **CIRCUITSCAN_COMPAT["scoring"])


def default_configs() -> tuple[SAEConfig, ScoringConfig]:
    """The default sae-codes configs: the ``circuitscan`` preset (:data:`CIRCUITSCAN_COMPAT`)."""
    return circuitscan_compat(SAEConfig(), ScoringConfig())


def default_sae() -> SAEConfig:
    return default_configs()[0]


def default_scoring() -> ScoringConfig:
    return default_configs()[1]


def apply_compat(name: str, sae: SAEConfig, scoring: ScoringConfig) -> tuple[SAEConfig, ScoringConfig]:
    """``"paper"`` (the configs as given), ``"authors"`` or ``"circuitscan"``."""
    _check(name in COMPATS, f"compat must be one of {', '.join(COMPATS)}, got {name!r}")
    if name == "authors":
        return authors_compat(sae, scoring)
    if name == "circuitscan":
        return circuitscan_compat(sae, scoring)
    return sae, scoring
