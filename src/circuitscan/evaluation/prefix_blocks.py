"""Which prompts a circuit pass runs together, and the cached first positions they share.

Under corrupt ablation a prompt's first ``shared`` positions equal its corrupted partner's,
so no circuit can change the model there: :class:`~.evaluator.CircuitEvaluator` runs them
once per block of prompts, unhooked (:func:`~circuitscan.models.hf.prefix_keys_values`), and
each circuit only on the positions after them. A block can skip only the positions EVERY
prompt in it shares, so the prompts are split by their shared length (on IOI 10 or 11 of 15
positions: one block of each, the 11s run 4 positions per circuit instead of 5), a length
held by fewer than :data:`MIN_BLOCK` prompts joining the next shorter one (a small block
costs a pass more than it saves in positions).

:class:`PrefixCache` computes each block's prefix once and keeps, per length, every row
computed so far; a later block of the same length whose rows are all among them takes them
from there (the random circuits' first prompts reuse the method circuits' prefix, and the
circuit passes the baseline passes', :mod:`.baselines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..models.hf import Prefix, hf_view, prefix_keys_values

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle

MIN_BLOCK = 8  # fewest prompts a shared length keeps to itself (fewer join the next shorter length)


def example_lengths(shared: Tensor | None, n: int, group: int, first_position: int) -> list[int]:
    """Per example of the first ``n``, the positions a pass may skip: the fewest its ``group`` rows
    share with their partners, at most ``first_position`` (the first position whose logits are read);
    all 0 without sharing."""
    if shared is None:
        return [0] * n
    per = shared[: n * group].reshape(n, group).min(1).values.clamp_max(first_position)
    return [int(v) for v in per]


def prefix_blocks(lengths: list[int], chunk: int, min_block: int = MIN_BLOCK) -> list[tuple[int, list[int]]]:
    """``(prefix length, examples)`` blocks covering every example once, each at most ``chunk``
    examples, in ascending example order within a block. A length held by fewer than ``min_block``
    examples joins the next shorter one (runs its positions too); the shortest stays on its own,
    however small (joining a longer block would make all of that block's prompts run longer)."""
    buckets: dict[int, list[int]] = {}
    for e, length in enumerate(lengths):
        buckets.setdefault(length, []).append(e)
    merged: list[tuple[int, list[int]]] = []
    for length in sorted(buckets):
        if merged and len(buckets[length]) < min_block:
            merged[-1] = (merged[-1][0], sorted(merged[-1][1] + buckets[length]))
        else:
            merged.append((length, buckets[length]))
    return [(length, ex[lo : lo + chunk]) for length, ex in merged for lo in range(0, len(ex), chunk)]


@dataclass
class PrefixCache:
    """Per prefix length, the unhooked model's keys and values over the first positions of every
    row any block of that length asked for (rows ascending)."""

    model: ModelHandle
    cached: dict[int, tuple[Tensor, Prefix | None]] = field(default_factory=dict)

    def has_view(self) -> bool:
        """Whether prefixes can be cached at all (the Hugging Face path; toy models have none)."""
        return hf_view(self.model) is not None

    def get(self, length: int, rows: Tensor, tokens: Tensor, mask: Tensor | None) -> tuple[Prefix | None, bool]:
        """The prefix of ``rows`` (ascending; ``tokens``/``mask`` are theirs), and whether a pass ran for it."""
        import torch

        if length < 1:
            return None, False
        have = self.cached.get(length)
        if have is not None:
            at = torch.searchsorted(have[0], rows).clamp_max(len(have[0]) - 1)
            if bool((have[0][at] == rows).all()):
                return _rows_of(have[1], at), False
        past = self.compute(length, rows, tokens, mask)
        return past, past is not None

    def compute(self, length: int, rows: Tensor, tokens: Tensor, mask: Tensor | None) -> Prefix | None:
        """Run the prefix of ``rows`` and :meth:`put` it; None without a Hugging Face view or for length 0."""
        if length < 1:
            return None
        past = prefix_keys_values(self.model, tokens[:, :length], None if mask is None else mask[:, :length])
        self.put(length, rows, past)
        return past

    def put(self, length: int, rows: Tensor, past: Prefix | None) -> None:
        """Keep ``past`` (the prefix of ``rows``, ascending) with the rows already cached at this length."""
        import torch

        have = self.cached.get(length)
        if have is None or have[1] is None or past is None:
            self.cached[length] = (rows, past)
            return
        every = torch.cat([have[0], rows])
        order = torch.argsort(every, stable=True)
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = every[order][1:] != every[order][:-1]
        keep = order[first]
        kv = tuple((torch.cat([k0, k1])[keep], torch.cat([v0, v1])[keep])
                   for (k0, v0), (k1, v1) in zip(have[1].keys_values, past.keys_values, strict=True))
        self.cached[length] = (every[keep], Prefix(length, kv))


def _rows_of(past: Prefix | None, at: Tensor) -> Prefix | None:
    if past is None:
        return None
    kv: tuple[tuple[Any, Any], ...] = tuple((k[at], v[at]) for k, v in past.keys_values)
    return Prefix(past.length, kv)
