"""Read a run directory into plain numpy arrays for the figures and tables.

The report reads only the run directory (docs/RUN_DIRECTORY.md): ``config.json``,
``scores.json``, ``metrics.json`` and, where present, ``codes.safetensors``,
``sae.safetensors`` and ``activations.safetensors``. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CircuitscanError
from ..rundir import ACTIVATIONS, CODES, PAIR_COUNTS_MEANING, SAE, SCORES
from ..runfiles import read_run
from ..types import HeadId, HeadLayout

# per-head extras that scores.json may carry, shown instead of a softmaxed score
# (monotone in it, so the picture ranks heads the same way) and how to call them
RAW_VALUES = {
    "code_distance": "code distance (TV, positives vs negatives)",
    "unique_positive_codes": "unique positive codes",
    "pair_counts": "appearances in top head pairs",
}


def to_float(value: Any) -> float:
    """A JSON number, or one of the strings ``"nan"``, ``"inf"``, ``"-inf"`` the run writer uses."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class MethodScores:
    """One method's entry of ``scores.json``, as flat arrays in head-index order."""

    name: str
    scores: np.ndarray  # [n_total], higher = more in circuit
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-head arrays
    top_pairs: list[tuple[str, str, float]] = field(default_factory=list)
    pairs: np.ndarray | None = None  # [n_total, n_total]
    pairs_meaning: str = PAIR_COUNTS_MEANING  # scores.json's pairs.meaning
    edges: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = math.nan
    forward_passes: int | None = None
    backward_passes: int | None = None

    @property
    def pairs_symbol(self) -> str:
        """The pair matrix's symbol (``U`` for the paper's counts, ``D`` for joint-code distances)."""
        head = self.pairs_meaning.split("[", 1)[0].strip()
        return head if 0 < len(head) <= 3 else "U"

    @property
    def pairs_label(self) -> str:
        """What a pair-matrix cell holds, in words (the meaning after its symbol)."""
        return self.pairs_meaning.split(":", 1)[-1].strip() or self.pairs_meaning

    def display_values(self) -> tuple[np.ndarray, str]:
        """What a picture of this method should shade heads by, and its label."""
        if "paired_feature_change" in self.extras:  # node_score rank-change: no raw value is monotone in it
            return self.scores, "score (mean rank by code distance and paired feature change)"
        for key, label in RAW_VALUES.items():
            if key in self.extras:
                return self.extras[key], label
        return self.scores, "score"

    def ranking(self) -> np.ndarray:
        """Flat head indices from best to worst (ties by index, like ``Scores.ranking``)."""
        s = np.nan_to_num(self.scores, nan=-np.inf)
        return np.lexsort((np.arange(s.size), -s))


@dataclass(frozen=True)
class CodesData:
    codes: np.ndarray  # [examples, heads] int
    labels: np.ndarray  # [examples] bool, True = positive
    count_mask: np.ndarray  # [examples] bool, True = counted
    n_codes: int


@dataclass(frozen=True)
class RunData:
    """Everything the report shows, read from one run directory."""

    path: Path
    config: dict[str, Any]
    layout: HeadLayout
    methods: dict[str, MethodScores]
    metrics: dict[str, Any]
    kind: str = "discover"  # the command that wrote the run (circuitscan.runfiles.RUN_KINDS)

    # ---- ground truth ---------------------------------------------------------------
    @cached_property
    def ground_truth(self) -> dict[str, Any] | None:
        gt = self.config.get("ground_truth")
        if not isinstance(gt, dict) or not gt.get("heads"):
            return None
        return gt

    @property
    def ground_truth_name(self) -> str:
        return str(self.ground_truth.get("name", "ground truth")) if self.ground_truth else ""

    @cached_property
    def gt_mask(self) -> np.ndarray | None:
        """[n_total] bool: heads of the ground-truth circuit (None without one)."""
        if self.ground_truth is None:
            return None
        mask = np.zeros(self.layout.n_total, dtype=bool)
        for name in self.ground_truth["heads"]:
            try:
                mask[self.layout.index(str(name))] = True
            except CircuitscanError:
                continue  # a head this layout lacks: nothing to outline
        return mask

    # ---- convenience ----------------------------------------------------------------
    @property
    def primary_method(self) -> str:
        """The method the single-method figures show: the paper's if present."""
        for name in ("sae-codes", "sae-codes-pairs"):
            if name in self.methods:
                return name
        return next(iter(self.methods))

    def circuit(self, method: str) -> dict[str, Any] | None:
        c = (self.metrics.get("circuits") or {}).get(method)
        return c if isinstance(c, dict) else None

    def circuit_mask(self, method: str) -> np.ndarray | None:
        c = self.circuit(method)
        if c is None:
            return None
        mask = np.zeros(self.layout.n_total, dtype=bool)
        for name in c.get("heads", []):
            try:
                mask[self.layout.index(str(name))] = True
            except CircuitscanError:
                continue
        return mask

    @property
    def title(self) -> str:
        model = (self.config.get("model") or {}).get("spec", "?")
        task = (self.config.get("task") or {}).get("name", "?")
        return f"{task} on {model}"

    # ---- optional binary files ----------------------------------------------------------
    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    @cached_property
    def codes(self) -> CodesData | None:
        if not self.has(CODES):
            return None
        from safetensors import safe_open

        with _readable(self.path / CODES), safe_open(str(self.path / CODES), framework="numpy") as f:
            meta = f.metadata() or {}
            codes = f.get_tensor("codes").astype(np.int64)
            labels = f.get_tensor("labels").astype(bool)
            keys = set(f.keys())
            count = f.get_tensor("count_mask").astype(bool) if "count_mask" in keys else np.ones_like(labels)
        if codes.ndim != 2 or codes.shape[1] != self.layout.n_total or labels.shape != (codes.shape[0],):
            raise CircuitscanError(
                f"{str(self.path / CODES)!r} holds codes of shape {codes.shape} with {labels.shape} labels; "
                f"expected [examples, {self.layout.n_total}] for {self.layout.n_layers} layers x "
                f"{self.layout.n_heads} heads"
            )
        n_codes = int(meta.get("n_codes", int(codes.max()) + 1 if codes.size else 1))
        return CodesData(codes=codes, labels=labels, count_mask=count, n_codes=n_codes)

    @cached_property
    def activations(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(x [examples, heads, d_model] float32, labels [examples] bool), if saved."""
        if not self.has(ACTIVATIONS):
            return None
        from safetensors.numpy import load_file

        with _readable(self.path / ACTIVATIONS):
            data = load_file(str(self.path / ACTIVATIONS))
        if "x" not in data or "labels" not in data:
            raise CircuitscanError(f"{str(self.path / ACTIVATIONS)!r} lacks the tensors 'x' and 'labels'")
        x = data["x"].astype(np.float32)
        labels = data["labels"].astype(bool)
        if x.ndim != 3 or x.shape[1] != self.layout.n_total or labels.shape != (x.shape[0],):
            raise CircuitscanError(
                f"{str(self.path / ACTIVATIONS)!r} holds x of shape {x.shape}; expected "
                f"[examples, {self.layout.n_total}, d_model] with one label per example"
            )
        return x, labels

    @cached_property
    def sae_weights(self) -> dict[str, np.ndarray] | None:
        if not self.has(SAE):
            return None
        from safetensors.numpy import load_file

        with _readable(self.path / SAE):
            w = load_file(str(self.path / SAE))
        missing = {"W_E", "b_E", "b"} - set(w)
        if missing:
            raise CircuitscanError(f"{str(self.path / SAE)!r} lacks SAE tensors {sorted(missing)}")
        return {k: v.astype(np.float64) for k, v in w.items()}

    @cached_property
    def features(self) -> np.ndarray | None:
        """SAE feature activations z [examples, heads, n_features] (needs activations + SAE)."""
        if self.activations is None or self.sae_weights is None:
            return None
        x, _ = self.activations
        return encode(self.sae_weights, x)


def encode(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """z = ReLU((h - b) W_E + b_E): the SAE encoder of :class:`circuitscan.sae.SparseAutoencoder`."""
    W_E, b_E, b = weights["W_E"], weights["b_E"], weights["b"]
    if x.shape[-1] != W_E.shape[0]:
        raise CircuitscanError(
            f"the saved activations have d_model {x.shape[-1]} but the SAE expects {W_E.shape[0]}"
        )
    z = (x.astype(np.float64) - b) @ W_E + b_E
    return np.maximum(z, 0.0).astype(np.float32)


def _per_head(value: Any, n_total: int) -> np.ndarray | None:
    if isinstance(value, list) and len(value) == n_total and all(
        isinstance(v, int | float | str) and not isinstance(v, bool) for v in value
    ):
        arr = np.array([to_float(v) for v in value], dtype=np.float64)
        return arr
    return None


def _method(name: str, entry: dict[str, Any], n: int, where: Path) -> MethodScores:
    """One method of the run, from its entry as :func:`circuitscan.runfiles.read_run` left it
    (every per-head list already in flat head order)."""
    scores = np.array([to_float(v) for v in entry["scores"]], dtype=np.float64)
    extras: dict[str, np.ndarray] = {}
    for key, value in entry.items():
        if key in ("scores", "rank", "heads"):
            continue
        arr = _per_head(value, n)
        if arr is not None:
            extras[key] = arr
    top_pairs = []
    for item in entry.get("top_pairs") or []:
        if isinstance(item, list | tuple) and len(item) >= 2:
            top_pairs.append((str(item[0]), str(item[1]), to_float(item[2]) if len(item) > 2 else math.nan))
    pairs = None
    matrix = (entry.get("pairs") or {}).get("matrix") if isinstance(entry.get("pairs"), dict) else None
    if matrix is not None:
        pairs = np.array([[to_float(v) for v in row] for row in matrix], dtype=np.float64)
        if pairs.shape != (n, n):
            raise CircuitscanError(
                f"{str(where)!r}: method {name!r} has a pair matrix of shape {pairs.shape}, expected ({n}, {n})"
            )
    edges = {str(k): to_float(v) for k, v in (entry.get("edges") or {}).items()}
    meaning = (entry.get("pairs") or {}).get("meaning") if isinstance(entry.get("pairs"), dict) else None

    def _int(v: Any) -> int | None:
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None

    return MethodScores(
        name=name, scores=scores, extras=extras, top_pairs=top_pairs, pairs=pairs, edges=edges,
        **({"pairs_meaning": meaning} if isinstance(meaning, str) and meaning else {}),
        wall_time_s=to_float(entry.get("wall_time_s")),
        forward_passes=_int(entry.get("forward_passes")), backward_passes=_int(entry.get("backward_passes")),
    )


def load_run(run_dir: str | Path) -> RunData:
    """Read ``run_dir`` through the one run reader (:func:`circuitscan.runfiles.read_run`);
    raises :class:`CircuitscanError` if it is not a circuitscan run."""
    files = read_run(run_dir)
    n = files.layout.n_total
    methods = {k: _method(k, v, n, files.path / SCORES) for k, v in files.methods.items()}
    return RunData(path=files.path, config=files.config, layout=files.layout, methods=methods,
                   metrics=files.metrics, kind=files.kind)


def head_names(layout: HeadLayout, indices: Any) -> list[str]:
    return [HeadId(*divmod(int(i), layout.n_heads)).name for i in indices]


def dumps_compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str)


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A truncated or corrupt safetensors file becomes a CircuitscanError naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, KeyError) as exc:
        raise CircuitscanError(f"{str(path)!r} cannot be read (truncated or corrupt?): {exc}; run discover "
                               "again to rewrite it") from exc
