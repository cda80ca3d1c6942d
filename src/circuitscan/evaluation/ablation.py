"""Ablation sources: what an ablated head's z is replaced with (``corrupt``, ``mean`` or ``zero``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CircuitscanError
from .forward import HeadCache, cache_heads

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet


ABLATIONS = ("corrupt", "mean", "zero")

def check_ablation(kind: str) -> str:
    if kind not in ABLATIONS:
        raise CircuitscanError(f"ablation {kind!r} is not one of {', '.join(ABLATIONS)}")
    return kind


# --------------------------------------------------------------------------- ablation sources


@dataclass(frozen=True)
class AblationSource:
    """What an ablated head's z becomes.

    Attributes:
        kind: ``"corrupt"``, ``"mean"`` or ``"zero"``.
        cache: corrupt only: the corrupted prompts' :class:`HeadCache` (row i = the
            partner of clean row i).
        z: mean only: ``[n_layers, seq, n_heads, d_head]``.
    """

    kind: str
    cache: HeadCache | None = None
    z: Float[Tensor, "layers seq heads d_head"] | None = None

    def __post_init__(self) -> None:
        check_ablation(self.kind)
        if self.kind == "corrupt" and (self.cache is None or self.cache.z is None):
            raise ValueError("corrupt ablation needs the corrupted prompts' z cache")
        if self.kind == "mean" and (self.z is None or self.z.ndim != 4):
            raise ValueError("mean ablation needs z of shape [layers, seq, heads, d_head]")

    @property
    def n_rows(self) -> int | None:
        if self.cache is None:
            return None
        return self.cache.z.shape[0] * self.cache.group

    def layer(self, layer: int, rows: Int[Tensor, " r"] | None) -> Tensor | None:
        """Replacement z for one layer: ``[r, seq, H, d]`` (corrupt), ``[1, seq, H, d]`` (mean), None (zero)."""
        if self.kind == "zero":
            return None
        if self.kind == "mean":
            return self.z[layer][None]
        return self.cache.full_z(rows, layer)


def masked_position_mean(z: Float[Tensor, "n layers seq heads d"], mask: Int[Tensor, "n seq"] | None) -> Tensor:
    """Mean over examples at each position, over real tokens only (0 where none is real)."""
    if mask is None:
        return z.mean(0)
    m = mask.to(z.dtype)[:, None, :, None, None]
    return (z * m).sum(0) / m.sum(0).clamp_min(1)


def _mean_of_caches(caches: Sequence[tuple[HeadCache, Tensor | None]]) -> Tensor:
    """Per-position mean z over the rows of several caches (masks over real tokens).

    Grouped caches are averaged over groups for the shared prefix (every row of a group
    has the same values there) and over rows for the suffix.
    """
    import torch

    num = den = None
    for cache, mask in caches:
        g = cache.group
        pm = mask[::g] if mask is not None else None
        prefix_len = cache.z.shape[2]
        m = torch.ones(cache.z.shape[0], prefix_len) if pm is None else pm[:, :prefix_len].float()
        s_num = (cache.z * m[:, None, :, None, None]).sum(0)
        s_den = m.sum(0)
        if cache.z_suffix is not None:
            k = cache.z_suffix.shape[2]
            ms = torch.ones(cache.z_suffix.shape[0], k) if mask is None else mask[:, prefix_len:].float()
            # the prefix is counted once per group: weigh the suffix by 1/g to match
            s_num = torch.cat([s_num, (cache.z_suffix * ms[:, None, :, None, None]).sum(0) / g], dim=1)
            s_den = torch.cat([s_den, ms.sum(0) / g])
        num = s_num if num is None else num + s_num
        den = s_den if den is None else den + s_den
    return num / den.clamp_min(1e-12)[None, :, None, None]


def paired_negatives(prompts: PromptSet) -> tuple[Tensor, Tensor | None]:
    """The corrupted partner of each positive prompt (and its mask).

    Negatives pair with positives index by index; easy negatives (unrelated text, which
    ``metadata["easy_negatives"]`` counts at the end) have no partner and are left out.
    """
    n_pos, n_neg = prompts.n_positive, prompts.n_negative
    easy = int(prompts.metadata.get("easy_negatives", 0) or 0)
    if n_neg == n_pos or n_neg - easy == n_pos:
        mask = None if prompts.negative_mask is None else prompts.negative_mask[:n_pos]
        return prompts.negative[:n_pos], mask
    raise CircuitscanError(
        f"corrupt ablation needs a corrupted partner for every positive prompt, but task "
        f"{prompts.task!r} has {n_pos} positive and {n_neg} negative prompts; use --ablation mean or zero"
    )


def ablation_source(
    model: ModelHandle,
    prompts: PromptSet,
    kind: str,
    *,
    clean: HeadCache | None = None,
    corrupted: HeadCache | None = None,
    batch_size: int = 64,
) -> AblationSource:
    """Build the replacement values of ``kind`` for ``prompts`` (reusing caches if given).

    ``corrupted`` is the cache of the paired negatives (:func:`paired_negatives`) for
    corrupt ablation, of all negatives for mean ablation.
    """
    check_ablation(kind)
    if kind == "zero":
        return AblationSource("zero")
    if kind == "corrupt":
        if corrupted is None:
            neg, neg_mask = paired_negatives(prompts)
            corrupted = cache_heads(model, neg, attention_mask=neg_mask, with_logits=False, batch_size=batch_size)
        return AblationSource("corrupt", cache=corrupted)
    if corrupted is None:
        corrupted = cache_heads(model, prompts.negative, attention_mask=prompts.negative_mask, with_logits=False,
                                batch_size=batch_size)
    if clean is None:
        clean = cache_heads(model, prompts.positive, attention_mask=prompts.positive_mask, with_logits=False,
                            batch_size=batch_size)
    mean = _mean_of_caches([(clean, prompts.positive_mask), (corrupted, prompts.negative_mask)])
    return AblationSource("mean", z=mean)
