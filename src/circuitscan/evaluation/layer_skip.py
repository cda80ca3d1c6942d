"""Circuit passes that start at the circuit's first kept layer.

A head outside a circuit is replaced by the same value in every circuit (its corrupted,
mean or zero output: :mod:`.ablation`). So in every layer below the first one that keeps a
head, a circuit's model is the empty circuit's model, and the residual stream entering that
layer is the empty circuit's, whatever the circuit keeps later. :class:`~.evaluator.CircuitEvaluator`
captures the empty circuit's residual stream entering every layer once (its ``m(∅)`` pass),
and each circuit pass starts at the first kept layer of its circuits, from those values: exact
up to floating-point summation order, and what it saves is the fraction of layers below each
pass's first kept head (on SmolLM2-135M IOI at 60 examples 11.5 % of the layer-rows an
evaluation runs, about 5 % of its seconds: the top-ranked heads of small circuits sit in late
layers, random circuits of more than a few heads keep one in an early layer).

Hugging Face models only (:func:`circuitscan.models.hf.run_hooked`); the evaluator checks once,
on a few prompts, that a pass started half-way gives the empty circuit's values, and runs every
layer when it does not (an architecture whose layers need more than the residual stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .forward import precision_context
from .head_masks import run_with_heads

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int
    from torch import Tensor

    from ..models.hf import Prefix
    from ..types import HeadLayout

SKIP_BUDGET = 2**28
"""Most bytes the captured residual streams may hold (256 MiB); beyond it a length is not kept
and its passes run every layer."""

CAPTURE_MIN = 8
"""Fewest circuits a block of prompts must run for a missing capture to be made for it (one pass
of the empty circuit); fewer run every layer."""


def first_layers(keep: Bool[Tensor, "C n_total"], layout: HeadLayout) -> Int[Tensor, " C"]:
    """Per circuit, the first layer that keeps a head; the last layer for the empty circuit
    (its passes then run only that layer)."""
    import torch

    per_layer = keep.reshape(keep.shape[0], layout.n_layers, layout.n_heads).any(-1)
    first = per_layer.int().argmax(-1)
    return torch.where(per_layer.any(-1), first, torch.full_like(first, layout.n_layers - 1))


def pass_order(starts: Int[Tensor, " C"]) -> Int[Tensor, " C"]:
    """Circuits ordered by first kept layer, latest first, so that the circuits of one pass
    (consecutive in this order) start at nearly the same layer; ties in index order."""
    import torch

    return torch.argsort(-starts, stable=True)


PASS_OVERHEAD = 600
"""What one more pass costs, in rows x layers of work: on SmolLM2-135M on 2 CPU cores a pass
costs about 0.1 s beyond its rows (halving ``max_rows`` from 256 to 128 took 13 more passes and
1.3 s more), and a row about 4.7 ms over 30 layers. It only decides how circuits are split into
passes (:func:`plan_passes`), never a value."""


def plan_passes(starts: list[int], rows: int, per_pass: int, n_layers: int,
                overhead: float | None = None) -> list[tuple[int, int]]:
    """Split circuits (``starts``: their first kept layers, descending) into passes ``[lo, hi)`` of
    at most ``per_pass`` circuits, each starting at its last circuit's layer, minimising
    ``overhead`` (default :data:`PASS_OVERHEAD`) per pass plus ``rows x circuits x layers run``
    (dynamic programming)."""
    overhead = PASS_OVERHEAD if overhead is None else overhead
    c = len(starts)
    best = [0.0] + [float("inf")] * c
    cut = [0] * (c + 1)
    for hi in range(1, c + 1):
        run = n_layers - starts[hi - 1]  # the segment's smallest start is its last
        for lo in range(max(0, hi - per_pass), hi):
            cost = best[lo] + overhead + rows * (hi - lo) * run
            if cost < best[hi]:
                best[hi], cut[hi] = cost, lo
    out: list[tuple[int, int]] = []
    hi = c
    while hi > 0:
        out.append((cut[hi], hi))
        hi = cut[hi]
    return out[::-1]


@dataclass
class SkipCache:
    """Per prefix length, the rows captured so far and the empty circuit's residual stream
    entering each layer at the positions after the prefix, ``[n_layers, rows, pos, d_model]``."""

    cached: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    nbytes: int = 0
    reference: tuple[int, Tensor, Tensor] | None = None  # (length, rows, logits of a full pass) for check_skip

    def get(self, length: int, rows: Int[Tensor, " r"]) -> Float[Tensor, "L r pos d"] | None:
        """The residual streams of ``rows`` (ascending) after ``length`` positions, or None if any is missing."""
        import torch

        have = self.cached.get(length)
        if have is None:
            return None
        at = torch.searchsorted(have[0], rows).clamp_max(len(have[0]) - 1)
        if not bool((have[0][at] == rows).all()):
            return None
        return have[1][:, at]

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more stay within :data:`SKIP_BUDGET` (a capture that would not is not run)."""
        return self.nbytes + nbytes <= SKIP_BUDGET

    def put(self, length: int, rows: Int[Tensor, " r"], hidden: Float[Tensor, "L r pos d"]) -> bool:
        """Keep ``hidden`` for ``rows`` (ascending), merged with the rows kept at ``length``; False
        when :data:`SKIP_BUDGET` is spent (nothing kept)."""
        import torch

        size = hidden.numel() * hidden.element_size()
        if not self.fits(size):
            return False
        self.nbytes += size
        have = self.cached.get(length)
        if have is None:
            self.cached[length] = (rows.clone(), hidden)
            return True
        every = torch.cat([have[0], rows])
        order = torch.argsort(every, stable=True)
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = every[order][1:] != every[order][:-1]
        keep = order[first]
        self.cached[length] = (every[keep], torch.cat([have[1], hidden], dim=1)[:, keep])
        return True


def capture_empty(ev: Any, length: int, tokens: Tensor, mask: Tensor | None, rows: Int[Tensor, " r"],
                  past: Prefix | None) -> tuple[Float[Tensor, "L r pos d"] | None, Float[Tensor, "1 r P V"]]:
    """Run the empty circuit on these rows of evaluator ``ev`` (every layer), keep its residual stream
    entering each layer in ``ev._skip``; return it (None when the budget is spent) and the pass's logits."""
    import torch

    layout = ev.model.layout
    grabbed: list[Tensor] = []
    empty = torch.zeros(1, layout.n_total, dtype=torch.bool)
    logits = run_with_heads(ev.model, tokens, empty, ev.source, rows=rows, positions=ev.positions,
                            attention_mask=mask, past=past, capture=grabbed)
    ev.stats.forward_passes += 1
    ev.stats.rows += len(rows)
    ev.stats.layer_rows += len(rows) * layout.n_layers
    if len(grabbed) != layout.n_layers:  # pragma: no cover - a model that calls its layers otherwise
        return None, logits
    hidden = torch.stack(grabbed)
    if ev._skip.reference is None:
        ev._skip.reference = (length, rows[: ev.group].clone(), logits[0, : ev.group].clone())
    return (hidden if ev._skip.put(length, rows, hidden) else None), logits


def check_skip(ev: Any) -> bool:
    """Whether a pass of the empty circuit started half-way, from the captured residual stream, gives
    the logits of the full pass that captured it (rtol 1e-3, atol 1e-4) on one example of ``ev``."""
    import torch

    if ev._skip is None or ev._skip.reference is None:
        return False
    length, rows, want = ev._skip.reference
    hidden = ev._skip.get(length, rows)
    s = ev.model.layout.n_layers // 2
    if hidden is None or s < 1:
        return False
    tokens = ev.tokens[rows]
    mask = None if ev.mask is None else ev.mask[rows]
    empty = torch.zeros(1, ev.model.layout.n_total, dtype=torch.bool)
    with torch.inference_mode(), precision_context(ev.model, ev.precision):
        past = ev._prefix(length, tokens, mask, rows)
        try:
            got = run_with_heads(ev.model, tokens, empty, ev.source, rows=rows, positions=ev.positions,
                                 attention_mask=mask, past=past, start=(s, hidden[s]))[0]
        except (TypeError, ValueError, RuntimeError, IndexError):  # a layer that needs more than its input
            return False
        finally:
            ev.stats.forward_passes += 1
            ev.stats.rows += len(rows)
    return bool(torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-4))


__all__ = ["CAPTURE_MIN", "PASS_OVERHEAD", "SKIP_BUDGET", "SkipCache", "capture_empty", "check_skip", "first_layers",
           "pass_order", "plan_passes"]
