"""Induction and previous-token scores of every head, for any model circuitscan loads.

Both scores read attention patterns (``blocks.{l}.attn.hook_pattern``, [batch, head,
query, key]) on sequences of random tokens repeated once, ``[BOS] A A`` with ``A``
``length`` distinct ids (the positives of the ``induction`` task):

* induction score: mean attention from each token of the second copy to the token
  that followed its earlier occurrence (query p, key p - length + 1), the definition
  of Olsson et al. (2022) as TransformerLens computes it;
* previous-token score: mean attention from every position p >= 1 to p - 1, over the
  same sequences.

Both lie in [0, 1]; a head that attends uniformly over a causal prefix scores about
1 / (p + 1). :func:`score_circuit` turns the scores into a reference circuit (top-k
heads, or heads above a threshold), which is what ``--ground-truth induction-scores``
uses when no hand-made circuit exists (GROUND_TRUTH.md, "Induction").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..tasks.induction import build_induction
from ..types import GroundTruth, HeadId, HeadLayout

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle

#: heads per reference circuit when ``induction-scores`` names no k (at most a quarter of all heads)
DEFAULT_TOP_K = 10


def default_k(n_total: int) -> int:
    """``min(DEFAULT_TOP_K, n_total // 4)``, at least 1: 10 heads of SmolLM2's 270, 2 of a 2 x 4 toy."""
    return min(DEFAULT_TOP_K, max(1, n_total // 4))


class _Stop(Exception):
    """Raised in the last layer's pattern hook: nothing after it is needed."""


@dataclass(frozen=True)
class HeadScores:
    """Per-head attention scores, indexed ``[layer, head]``.

    Attributes:
        induction: induction score of each head.
        previous_token: previous-token score of each head.
        layout: the model's heads.
        n_sequences, length, seed: the sequences the scores were measured on.
    """

    induction: Tensor
    previous_token: Tensor
    layout: HeadLayout
    n_sequences: int
    length: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        names = self.layout.names()
        return {
            "heads": names,
            "induction": [round(float(v), 6) for v in self.induction.reshape(-1)],
            "previous_token": [round(float(v), 6) for v in self.previous_token.reshape(-1)],
            "n_sequences": self.n_sequences,
            "length": self.length,
            "seed": self.seed,
        }

    def top(self, kind: str, k: int) -> list[HeadId]:
        """The ``k`` heads with the highest ``kind`` score (ties by head index)."""
        import torch

        flat = self._flat(kind)
        order = torch.sort(-flat, stable=True).indices[:k].tolist()
        return [self.layout.head(i) for i in order]

    def above(self, kind: str, threshold: float) -> list[HeadId]:
        flat = self._flat(kind)
        return [self.layout.head(i) for i in (flat >= threshold).nonzero().flatten().tolist()]

    def _flat(self, kind: str) -> Tensor:
        if kind == "induction":
            return self.induction.reshape(-1)
        if kind in ("previous_token", "previous-token", "prev"):
            return self.previous_token.reshape(-1)
        raise CircuitscanError(f"unknown head score {kind!r}; valid: induction, previous_token")


def _pattern_hooks(model: ModelHandle, tokens: Tensor, length: int) -> dict[str, int]:
    """The attention-pattern hook of each layer, checked to exist (and the sequences to fit the context)."""
    n_ctx = int(getattr(model.bridge.cfg, "n_ctx", 0) or 0)
    if n_ctx and tokens.shape[1] > n_ctx:
        raise CircuitscanError(
            f"head scores: sequences of 2 x {length} tokens do not fit model {model.spec!r}'s context of "
            f"{n_ctx} tokens; use a smaller length"
        )
    names = {f"blocks.{layer}.attn.hook_pattern": layer for layer in range(model.layout.n_layers)}
    missing = [k for k in names if k not in model.bridge.hook_dict]
    if missing:
        raise CircuitscanError(f"model {model.spec!r} has no attention-pattern hook {missing[0]!r}")
    return names


def head_scores(
    model: ModelHandle,
    *,
    n: int = 20,
    length: int = 25,
    seed: int = 0,
    batch_size: int = 10,
    vocab: tuple[int, int] | None = None,
) -> HeadScores:
    """Induction and previous-token scores of every head of ``model``.

    Args:
        model: any loaded model with ``hook_pattern`` hook points.
        n: number of repeated random sequences.
        length: tokens per copy (the sequence is ``[BOS] A A``).
        seed: seed of the token draws.
        batch_size: sequences per forward pass.
        vocab: token id range to draw from (default: the whole vocabulary).

    Returns:
        :class:`HeadScores` (the mean over sequences and positions).
    """
    import torch

    if n < 1 or length < 2 or batch_size < 1:
        raise CircuitscanError(
            f"head scores need n >= 1, length >= 2 and batch_size >= 1, got {n}, {length}, {batch_size}"
        )
    prompts = build_induction(model, n, seed=seed, length=length, vocab=vocab)
    tokens = prompts.positive
    names = _pattern_hooks(model, tokens, length)
    start = int(prompts.metadata["repeat_start"])  # first position of the second copy
    seq = tokens.shape[1]
    layout = model.layout

    q_ind = torch.arange(start, seq)
    k_ind = q_ind - length + 1
    q_prev = torch.arange(1, seq)
    ind_sum = torch.zeros(layout.n_layers, layout.n_heads, dtype=torch.float64)
    prev_sum = torch.zeros_like(ind_sum)
    last = layout.n_layers - 1

    def hook(pattern: Tensor, hook) -> Tensor:
        layer = names[hook.name]
        p = pattern.detach().double()  # [b, h, q, k]
        if p.shape[1] != layout.n_heads:
            raise CircuitscanError(
                f"model {model.spec!r}: the attention pattern has {p.shape[1]} heads, the layout {layout.n_heads}"
            )
        ind_sum[layer] += p[:, :, q_ind, k_ind].mean(-1).sum(0)
        prev_sum[layer] += p[:, :, q_prev, q_prev - 1].mean(-1).sum(0)
        if layer == last:
            raise _Stop
        return pattern

    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            try:
                model.bridge.run_with_hooks(
                    tokens[lo : lo + batch_size], fwd_hooks=list((k, hook) for k in names)
                )
            except _Stop:
                pass
    return HeadScores(
        induction=(ind_sum / n).float(),
        previous_token=(prev_sum / n).float(),
        layout=layout,
        n_sequences=n,
        length=length,
        seed=seed,
    )


def score_circuit(
    scores: HeadScores,
    *,
    k: int | None = None,
    threshold: float | None = None,
    previous_token: bool = False,
    name: str = "induction-scores",
    model: str = "",
) -> GroundTruth:
    """A reference circuit from head scores: the top ``k`` induction heads, or those >= ``threshold``.

    With ``previous_token``, the top ``k`` (or above-threshold) previous-token heads are
    added: the two halves of the classic induction circuit. Exactly one of ``k`` and
    ``threshold`` may be given; neither means ``k =`` :func:`default_k`.
    """
    if k is not None and threshold is not None:
        raise CircuitscanError("give a number of heads k or a score threshold, not both")
    n_total = scores.layout.n_total
    if threshold is None:
        k = default_k(n_total) if k is None else k
        if not 1 <= k < n_total:
            raise CircuitscanError(
                f"{name}: k must lie in 1..{n_total - 1} for a model with {n_total} heads, got {k}"
            )
        heads = scores.top("induction", k)
        prev = scores.top("previous_token", k) if previous_token else []
        rule = f"top {k} heads by induction score" + (
            f" and top {k} by previous-token score" if previous_token else ""
        )
    else:
        if not 0 <= threshold <= 1:
            raise CircuitscanError(f"{name}: a score threshold must lie in [0, 1], got {threshold}")
        heads = scores.above("induction", threshold)
        prev = scores.above("previous_token", threshold) if previous_token else []
        rule = f"heads with induction score >= {threshold}" + (
            f" or previous-token score >= {threshold}" if previous_token else ""
        )
    classes: dict[str, tuple[HeadId, ...]] = {"induction": tuple(heads)}
    if previous_token:
        classes["previous token"] = tuple(h for h in prev if h not in set(heads))
    all_heads = frozenset(h for hs in classes.values() for h in hs)
    if not all_heads:
        raise CircuitscanError(f"{name}: no head has a score >= {threshold}; lower the threshold")
    return GroundTruth(
        name=name,
        model=model,
        heads=all_heads,
        classes=classes,
        source=f"circuitscan.testbeds.head_scores on {scores.n_sequences} repeated random sequences "
        f"of 2 x {scores.length} tokens (seed {scores.seed})",
        notes=rule,
    )
