"""The data that flows between stages: plain frozen dataclasses, no behaviour of note.

Shapes are written as jaxtyping annotations. Heads are addressed three ways that all
mean the same thing: a :class:`HeadId` ``(layer, head)``, its name ``"L9H6"``, and its
flat index ``layer * n_heads + head`` (the order of every per-head tensor).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import CircuitscanError

if TYPE_CHECKING:  # torch is heavy; only the annotations need it here
    from jaxtyping import Bool, Float, Int
    from torch import Tensor

_HEAD_RE = re.compile(r"^\s*L(\d+)\s*H(\d+)\s*$", re.IGNORECASE)
_PAIR_RE = re.compile(r"^\s*\(?\s*(\d+)\s*[,.:]\s*(\d+)\s*\)?\s*$")


class HeadId(NamedTuple):
    """One attention head, 0-indexed."""

    layer: int
    head: int

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> HeadId:
        """Parse ``"L9H6"``, ``"9.6"``, ``"9,6"`` or ``"(9, 6)"``."""
        m = _HEAD_RE.match(text) or _PAIR_RE.match(text)
        if m is None:
            raise CircuitscanError(
                f"cannot read {text!r} as a head: write it as L<layer>H<head> (e.g. L9H6) "
                "or layer,head (e.g. 9,6)"
            )
        return cls(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class HeadLayout:
    """How many layers and heads a model has; everything else is derived."""

    n_layers: int
    n_heads: int

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"a head layout needs n_layers, n_heads >= 1, got {self}")

    @property
    def n_total(self) -> int:
        return self.n_layers * self.n_heads

    def index(self, head: HeadId | tuple[int, int] | str) -> int:
        h = HeadId.parse(head) if isinstance(head, str) else HeadId(*head)
        if not (0 <= h.layer < self.n_layers and 0 <= h.head < self.n_heads):
            raise CircuitscanError(
                f"head {h.name} does not exist in a model with {self.n_layers} layers x "
                f"{self.n_heads} heads (valid: L0H0 .. L{self.n_layers - 1}H{self.n_heads - 1})"
            )
        return h.layer * self.n_heads + h.head

    def head(self, index: int) -> HeadId:
        if not 0 <= index < self.n_total:
            raise IndexError(f"head index {index} out of range 0..{self.n_total - 1}")
        return HeadId(index // self.n_heads, index % self.n_heads)

    def heads(self) -> list[HeadId]:
        return [self.head(i) for i in range(self.n_total)]

    def names(self) -> list[str]:
        return [h.name for h in self.heads()]

    def to_dict(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads}


@dataclass(frozen=True)
class PromptSet:
    """Tokenised positive and negative prompts of one task, ready for a model.

    ``positive[i]`` and ``negative[i]`` are a pair (the negative is the corrupted
    version of the positive) when both have the same length; interventions rely on it.
    Every prompt has the same number of tokens, so they stack; where a task had to pad,
    ``*_mask`` marks real tokens (1) and padding (0), and padding is on the left.
    """

    task: str
    positive: Int[Tensor, "n_pos seq"]
    negative: Int[Tensor, "n_neg seq"]
    positive_text: tuple[str, ...] | None = None
    negative_text: tuple[str, ...] | None = None
    positive_mask: Int[Tensor, "n_pos seq"] | None = None
    negative_mask: Int[Tensor, "n_neg seq"] | None = None
    # answer / wrong-answer token ids per positive prompt (for logit-difference metrics)
    answers: Int[Tensor, "n_pos n_ans"] | None = None
    wrong_answers: Int[Tensor, "n_pos n_wrong"] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positive.ndim != 2 or self.negative.ndim != 2:
            raise CircuitscanError(
                f"task {self.task!r}: prompts must be 2-D token tensors [examples, seq], got "
                f"{tuple(self.positive.shape)} and {tuple(self.negative.shape)}"
            )
        if self.positive.shape[0] == 0 or self.negative.shape[0] == 0:
            raise CircuitscanError(
                f"task {self.task!r} has {self.positive.shape[0]} positive and "
                f"{self.negative.shape[0]} negative prompts; both must be at least 1"
            )
        if self.positive.shape[1] != self.negative.shape[1]:
            raise CircuitscanError(
                f"task {self.task!r}: positive prompts have {self.positive.shape[1]} tokens but "
                f"negative prompts have {self.negative.shape[1]}; all prompts must tokenise to "
                "the same length"
            )

    @property
    def n_positive(self) -> int:
        return int(self.positive.shape[0])

    @property
    def n_negative(self) -> int:
        return int(self.negative.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.positive.shape[1])

    @property
    def paired(self) -> bool:
        return self.n_positive == self.n_negative

    def all_tokens(self) -> tuple[Int[Tensor, "n seq"], Bool[Tensor, " n"]]:
        """Positives then negatives in one tensor, with the matching labels."""
        import torch

        tokens = torch.cat([self.positive, self.negative])
        labels = torch.cat(
            [torch.ones(self.n_positive, dtype=torch.bool), torch.zeros(self.n_negative, dtype=torch.bool)]
        )
        return tokens, labels

    def all_masks(self) -> Int[Tensor, "n seq"] | None:
        import torch

        if self.positive_mask is None and self.negative_mask is None:
            return None
        pm = self.positive_mask if self.positive_mask is not None else torch.ones_like(self.positive)
        nm = self.negative_mask if self.negative_mask is not None else torch.ones_like(self.negative)
        return torch.cat([pm, nm])


@dataclass(frozen=True)
class HeadActivations:
    """Per-example, per-head outputs into the residual stream, aggregated over positions.

    ``x[e, i]`` is head ``layout.head(i)``'s output (z_h . W_O^h, no bias) on example e;
    with ``aggregation`` ``"mean+last"`` or ``"all"`` a slot axis is kept: ``x[e, s, i]``
    (s = 0 the mean and 1 the last position; or s = the position).

    ``z`` and ``w_o``, where the producer has them (:func:`circuitscan.head_outputs`
    does), are the same outputs before the output projection: ``x[..., i, :]`` is
    ``z[..., i, :] @ w_o[i]``. A linear map of x (the SAE's encoder) can then run in
    d_head instead of d_model (:func:`circuitscan.codes.discretise.discretise`).
    """

    x: Float[Tensor, "n_examples n_heads_total d_model"] | Float[Tensor, "n_examples seq n_heads_total d_model"]
    labels: Bool[Tensor, " n_examples"]
    layout: HeadLayout
    aggregation: str = "mean"
    z: Float[Tensor, "n_examples ... n_heads_total d_head"] | None = None
    w_o: Float[Tensor, "n_heads_total d_head d_model"] | None = None

    @property
    def n_examples(self) -> int:
        return int(self.x.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.x.shape[-1])

    @property
    def n_slots(self) -> int:
        """Codes per head per example: 1, or the slot axis' length (``mean+last``, ``all``)."""
        return int(self.x.shape[1]) if self.x.ndim == 4 else 1


@dataclass(frozen=True)
class Codes:
    """One integer code per (example, head): the argmax SAE feature.

    Codes lie in ``0 .. n_codes - 1``; with the default ``silent="own-code"`` the code
    ``n_features`` means "no feature fired" (see :mod:`circuitscan.codes`).
    """

    codes: Int[Tensor, "n_examples n_heads_total"]
    labels: Bool[Tensor, " n_examples"]
    layout: HeadLayout
    n_codes: int


@dataclass(frozen=True)
class Scores:
    """What every method returns: per-head scores, higher = more in the circuit.

    ``node`` is indexed ``[layer, head]``. ``pairs`` (head x head, flat indices) and
    ``edges`` (named edges such as ``"L5H5->L9H9"``) are optional. ``stats`` holds
    method-specific extras (e.g. raw unique-code counts) that reports may show.
    """

    method: str
    node: Float[Tensor, "n_layers n_heads"]
    layout: HeadLayout
    pairs: Float[Tensor, "n_heads_total n_heads_total"] | None = None
    edges: dict[str, float] | None = None
    wall_time_s: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (self.layout.n_layers, self.layout.n_heads)
        if tuple(self.node.shape) != shape:
            raise ValueError(f"node scores must have shape {shape}, got {tuple(self.node.shape)}")

    @property
    def flat(self) -> Float[Tensor, " n_heads_total"]:
        return self.node.reshape(-1)

    def ranking(self) -> list[HeadId]:
        """Heads from highest to lowest score (ties by head index)."""
        import torch

        order = torch.sort(-self.flat, stable=True).indices.tolist()
        return [self.layout.head(i) for i in order]


@dataclass(frozen=True)
class Circuit:
    """A set of heads (and optionally edges) claimed to implement a behaviour."""

    heads: frozenset[HeadId]
    layout: HeadLayout
    edges: frozenset[tuple[str, str]] = frozenset()

    def mask(self) -> Bool[Tensor, " n_heads_total"]:
        import torch

        m = torch.zeros(self.layout.n_total, dtype=torch.bool)
        for h in self.heads:
            m[self.layout.index(h)] = True
        return m

    def names(self) -> list[str]:
        return [h.name for h in sorted(self.heads)]


@dataclass(frozen=True)
class GroundTruth:
    """A named reference circuit, tied to the model family it was found in."""

    name: str
    model: str
    heads: frozenset[HeadId]
    classes: dict[str, tuple[HeadId, ...]] = field(default_factory=dict)
    source: str = ""
    notes: str = ""

    def check_layout(self, layout: HeadLayout) -> None:
        for h in self.heads:
            layout.index(h)  # raises a clear error for heads the model lacks

    def mask(self, layout: HeadLayout) -> Bool[Tensor, " n_heads_total"]:
        return Circuit(self.heads, layout).mask()

    @classmethod
    def from_heads(cls, heads: Iterable[str | tuple[int, int]], name: str = "user", model: str = "") -> GroundTruth:
        parsed = frozenset(HeadId.parse(h) if isinstance(h, str) else HeadId(*h) for h in heads)
        if not parsed:
            raise CircuitscanError("a ground truth needs at least one head")
        return cls(name=name, model=model, heads=parsed)


def head_names(heads: Sequence[HeadId]) -> list[str]:
    return [h.name for h in heads]
