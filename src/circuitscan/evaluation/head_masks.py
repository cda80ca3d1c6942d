"""Head masks: hooks that ablate the heads outside a circuit, batched over many circuits, and circuits as masks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .ablation import (
    AblationSource,
)
from .forward import logits_at, resolve_positions, split_heads

if TYPE_CHECKING:
    import torch
    from jaxtyping import Bool, Float, Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..models.hf import Prefix
    from ..types import HeadId, HeadLayout


# --------------------------------------------------------------------------- hooks


def _as_keep(keep: Tensor, layout: HeadLayout) -> Tensor:
    import torch

    keep = torch.as_tensor(keep)
    if keep.ndim == 1:
        keep = keep[None]
    if keep.ndim == 3:  # [C, layers, heads]
        keep = keep.reshape(keep.shape[0], -1)
    if keep.ndim != 2 or keep.shape[1] != layout.n_total:
        raise CircuitscanError(
            f"a head mask must have {layout.n_total} entries per circuit ({layout.n_layers} layers x "
            f"{layout.n_heads} heads), got shape {tuple(keep.shape)}"
        )
    return keep


def head_mask_hooks(
    model: ModelHandle,
    keep: Bool[Tensor, "C n_heads_total"] | Float[Tensor, "C n_heads_total"],
    source: AblationSource,
    rows: Int[Tensor, " r"] | None = None,
) -> list[tuple[str, Any]]:
    """Forward hooks that ablate, per circuit, the heads ``keep`` leaves out.

    Args:
        model: the model the hooks are for.
        keep: one row per circuit, True (1.0) = the head runs clean. Float values in
            [0, 1] interpolate between ablated (0) and clean (1) and keep gradients.
        source: replacement values (:func:`ablation_source`).
        rows: for corrupt ablation, which prompt (index into the source) each of the r
            prompts of the batch is; default ``0 .. r-1``.

    Returns:
        ``[(hook name, fn)]`` for ``bridge.run_with_hooks`` / ``bridge.hooks``; the batch
        they see must hold ``C * r`` rows, circuit-major.
    """
    import torch

    layout = model.layout
    keep = _as_keep(keep, layout)
    n_circuits = keep.shape[0]
    is_bool = keep.dtype == torch.bool
    keep_l = keep.reshape(n_circuits, layout.n_layers, layout.n_heads)

    def make_hook(layer: int):
        def hook(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            shape = z.shape
            zz = split_heads(z, layout.n_heads)
            b, p, h, d = zz.shape
            if b % n_circuits:
                raise ValueError(f"batch of {b} rows is not a multiple of {n_circuits} circuits")
            r = b // n_circuits
            zc = zz.reshape(n_circuits, r, p, h, d)
            src = source.layer(layer, rows)
            if src is None:
                src = torch.zeros((), dtype=zz.dtype, device=zz.device)
            else:
                if src.shape[0] not in (1, r):
                    raise ValueError(f"ablation source has {src.shape[0]} rows, batch has {r} per circuit")
                if src.shape[1] > p:  # a pass over the positions after a cached prefix
                    src = src[:, src.shape[1] - p :]
                src = src.to(device=zz.device, dtype=zz.dtype)[None]
            k = keep_l[:, layer].to(zz.device)[:, None, None, :, None]
            out = torch.where(k, zc, src) if is_bool else src + k.to(zz.dtype) * (zc - src)
            return out.reshape(shape)

        return hook

    return [(model.hook_z(layer), make_hook(layer)) for layer in range(layout.n_layers)]


@contextmanager
def heads_ablated(
    model: ModelHandle,
    keep: Tensor,
    source: AblationSource,
    rows: Int[Tensor, " r"] | None = None,
) -> Iterator[Any]:
    """Context manager: inside it, ``model.bridge(tokens)`` runs with heads ablated.

    ``tokens`` must be the r prompts repeated once per circuit (``tokens.repeat(C, 1)``).
    Yields the bridge. Gradients flow through float masks.
    """
    with model.bridge.hooks(fwd_hooks=head_mask_hooks(model, keep, source, rows)):
        yield model.bridge


def run_with_heads(
    model: ModelHandle,
    tokens: Int[Tensor, "r seq"],
    keep: Tensor,
    source: AblationSource,
    *,
    rows: Int[Tensor, " r"] | None = None,
    positions: str | Sequence[int] | Tensor | None = "last",
    attention_mask: Int[Tensor, "r seq"] | None = None,
    past: Prefix | None = None,
    start: tuple[int, Tensor] | None = None,
    capture: list[Tensor] | None = None,
) -> Float[Tensor, "C r P vocab"]:
    """Logits of every circuit in ``keep`` on the r prompts ``tokens``: one forward pass.

    ``rows`` maps the prompts to the source's rows (corrupt ablation); by default prompt
    i is paired with source row i. ``past``: the r prompts' cached first positions,
    which no circuit may change (:meth:`CircuitEvaluator.evaluate` decides). ``start``:
    ``(s, hidden)``, the r prompts' residual stream entering layer ``s`` (``[r, pos, d]``,
    tiled here over the circuits), which every circuit shares (:mod:`.layer_skip`);
    ``capture``: a list that gets the residual stream entering each layer.
    """
    import torch

    keep = _as_keep(keep, model.layout)
    n_circuits, (r, seq) = keep.shape[0], tokens.shape
    if rows is None and source.kind == "corrupt" and source.n_rows != r:
        raise CircuitscanError(
            f"{r} prompts but the corrupted cache has {source.n_rows} rows; pass rows= to pair them"
        )
    pos = resolve_positions(positions, seq)
    batch = tokens.repeat(n_circuits, 1)
    mask = None if attention_mask is None else attention_mask.repeat(n_circuits, 1)
    hooks = head_mask_hooks(model, keep, source, None if rows is None else torch.as_tensor(rows))
    if start is not None:
        start = (start[0], start[1].repeat(n_circuits, 1, 1))
    out = logits_at(model, batch, pos, hooks=hooks, attention_mask=mask, past=past, start=start, capture=capture)
    return out.reshape(n_circuits, r, *out.shape[1:])


# --------------------------------------------------------------------------- circuits as masks


def circuit_mask(layout: HeadLayout, heads: Sequence[HeadId | str | tuple[int, int]]) -> Bool[Tensor, " n_total"]:
    """A flat boolean mask with True at the given heads (names, HeadIds or pairs)."""
    import torch

    m = torch.zeros(layout.n_total, dtype=torch.bool)
    for h in heads:
        m[layout.index(h)] = True
    return m


def random_masks(
    n_total: int, size: int, samples: int, *, generator: torch.Generator | None = None
) -> Bool[Tensor, "samples n_total"]:
    """``samples`` circuits of ``size`` heads drawn uniformly without replacement."""
    import torch

    if not 0 <= size <= n_total:
        raise CircuitscanError(f"a random circuit of {size} heads cannot be drawn from {n_total} heads")
    masks = torch.zeros(samples, n_total, dtype=torch.bool)
    for s in range(samples):
        masks[s, torch.randperm(n_total, generator=generator)[:size]] = True
    return masks


def random_circuits(n_total: int, sizes: Sequence[int], samples: int, seed: int = 0) -> Bool[Tensor, "k n_total"]:
    """``samples`` uniform circuits of each size in ``sizes``, size-major (``len(sizes) * samples`` rows).

    Each size is drawn from its own generator, seeded by ``seed`` and the size, so the
    circuits of a size do not depend on which other sizes are asked for, and the first s
    draws of a size are the same whatever ``samples`` is: the performance table and the
    faithfulness curves share their random circuits where their sizes meet (the
    evaluator runs each once).
    """
    import torch

    blocks = [random_masks(n_total, k, samples, generator=torch.Generator().manual_seed(seed * (n_total + 1) + k))
              for k in sizes]
    return torch.cat(blocks) if blocks else torch.zeros(0, n_total, dtype=torch.bool)


def top_k_masks(order: Sequence[int], sizes: Sequence[int], n_total: int) -> Bool[Tensor, "n_sizes n_total"]:
    """Circuits made of the first k heads of ``order`` (flat indices, best first), one per k."""
    import torch

    idx = torch.as_tensor(list(order), dtype=torch.long)
    masks = torch.zeros(len(sizes), n_total, dtype=torch.bool)
    for i, k in enumerate(sizes):
        if not 0 <= k <= n_total:
            raise CircuitscanError(f"circuit size {k} is outside 0..{n_total}")
        masks[i, idx[:k]] = True
    return masks
