"""Argmax discretisation of SAE features (and, from the same encoding, how much a head's
features change between a prompt and its paired corruption)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import CircuitscanError
from ..sae.model import SparseAutoencoder
from ..types import Codes, HeadLayout

ROWS_PER_BLOCK = 4096
FOLDED_ROWS_PER_BLOCK = 16384


def _argmax_code(z: Tensor, n_features: int, silent: str) -> Tensor:
    """The code of each row of feature activations ``z`` (after the ReLU)."""
    best = z.max(-1)
    if silent == "own-code":
        return torch.where(best.values > 0, best.indices, torch.full_like(best.indices, n_features))
    return best.indices


def _folded_blocks(sae: SparseAutoencoder, z: Tensor, w_o: Tensor) -> Iterator[tuple[slice, Tensor]]:
    """(columns, features [n, v, F]) over blocks of virtual heads, virtual head v being head ``v % H``
    of ``w_o`` [H, d_head, d_model]: the encoder ``(x - b) W_E + b_E`` with x = z w_o is
    ``z (w_o W_E) + (b_E - b W_E)``, d_head-sized products instead of d_model-sized ones."""
    n, V, d_head = z.shape
    H = w_o.shape[0]
    W_E = sae.W_E.detach().float()
    fold = (w_o.reshape(H * d_head, -1) @ W_E).reshape(H, d_head, -1)  # [H, d_head, F]
    shift = sae.b_E.detach().float() - sae.b.detach().float() @ W_E
    step = max(1, FOLDED_ROWS_PER_BLOCK // max(1, n))
    zt = z.float().transpose(0, 1)  # [V, n, d_head]
    for lo in range(0, V, step):
        heads = torch.arange(lo, min(V, lo + step)) % H
        yield slice(lo, lo + len(heads)), torch.baddbmm(shift, zt[lo : lo + step], fold[heads]).relu_().transpose(0, 1)


def _direct_blocks(sae: SparseAutoencoder, x: Tensor, chunk: int, paired: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """(example rows, features [rows, heads, F]) over blocks of examples; ``paired``: each block is
    pairs ``lo..hi`` of the first half followed by the same pairs of the second half."""
    n = x.shape[0]
    half = n // 2
    for lo in range(0, half if paired else n, chunk):
        hi = min(half if paired else n, lo + chunk)
        rows = torch.cat([torch.arange(lo, hi), torch.arange(half + lo, half + hi)]) if paired else torch.arange(lo, hi)
        yield rows, sae.encode(x[rows].float())


def _check(x: Tensor, z: Tensor | None, w_o: Tensor | None, silent: str) -> bool:
    if silent not in ("own-code", "zero"):
        raise CircuitscanError(f"silent must be 'own-code' or 'zero', got {silent!r}")
    if z is None or w_o is None:
        return False
    if z.shape[:2] != x.shape[:2] or w_o.shape[-2] != z.shape[-1] or w_o.shape[-1] != x.shape[-1]:
        raise CircuitscanError(f"z {tuple(z.shape)} and w_o {tuple(w_o.shape)} do not factor x {tuple(x.shape)}")
    return True


def discretise(
    sae: SparseAutoencoder,
    x: Float[torch.Tensor, "n heads d"],
    labels: Bool[torch.Tensor, " n"],
    layout: HeadLayout,
    *,
    silent: str = "own-code",
    chunk: int | None = None,
    z: Float[torch.Tensor, "n heads d_head"] | None = None,
    w_o: Float[torch.Tensor, "real_heads d_head d"] | None = None,
) -> Codes:
    """Encode every (example, head) row and keep the index of its largest feature.

    Args:
        sae: a trained SAE.
        x: head activations [examples, heads, d_model].
        labels: True for positive examples.
        layout: the model's head layout.
        silent: ``"own-code"`` or ``"zero"`` (see the package docstring).
        chunk: examples encoded at once (default: about 4,096 rows of (example, head), which
            keep the block in cache: on SmolLM2, 500 x 270 rows through 5 SAEs took 1.7 s in
            blocks of 256 examples and 1.0 s in blocks of 16, with the same codes).
        z, w_o: the same activations before the output projection, ``x[:, v] = z[:, v] @
            w_o[v % len(w_o)]`` (:class:`~circuitscan.types.HeadActivations`). Given both, the
            encoder is folded into each head's ``w_o`` and runs on z: on SmolLM2 (d_head 64,
            d_model 576) about a quarter of the products. The codes are those of x, up to
            rounding between features within about 1e-6 of each other (float32 models; a
            half-precision model's x carries its own rounding, so nearer ties may differ).
    """
    return discretise_with_change(sae, x, labels, layout, silent=silent, chunk=chunk, z=z, w_o=w_o)[0]


def discretise_with_change(
    sae: SparseAutoencoder,
    x: Float[torch.Tensor, "n heads d"],
    labels: Bool[torch.Tensor, " n"],
    layout: HeadLayout,
    *,
    keep: Bool[torch.Tensor, " n"] | None = None,
    silent: str = "own-code",
    chunk: int | None = None,
    z: Float[torch.Tensor, "n heads d_head"] | None = None,
    w_o: Float[torch.Tensor, "real_heads d_head d"] | None = None,
    change: str = "relative",
) -> tuple[Codes, Float[torch.Tensor, " heads"] | None]:
    """:func:`discretise`, and with ``keep`` (examples to count on) the **paired feature change**
    of every head from the same encoding: over the pairs (i, i + n/2) with both examples kept
    (positives first, the i-th negative the corruption of the i-th positive), the mean L1
    distance between the head's SAE features on the two (how far corrupting the input moves
    the head). ``change="relative"`` divides it by the mean L1 norm of the head's features on
    the kept examples (in units of its typical activation); ``"absolute"`` keeps the SAE's
    units, the same for every head. None without ``keep``."""
    folded = _check(x, z, w_o, silent)
    if change not in ("relative", "absolute"):
        raise CircuitscanError(f"change must be 'relative' or 'absolute', got {change!r}")
    n, heads, _ = x.shape
    if keep is not None and (n % 2 or not bool(labels[: n // 2].all()) or bool(labels[n // 2 :].any())):
        raise CircuitscanError("the paired feature change needs positives then their paired negatives (n even)")
    out = torch.empty(n, heads, dtype=torch.long)
    diff, mass = torch.zeros(heads), torch.zeros(heads)
    half = n // 2
    pair_keep = None if keep is None else keep[:half] & keep[half:]
    pair_w = None if keep is None else pair_keep.float()
    keep_w = None if keep is None else keep.float()
    with torch.no_grad():
        if folded:
            for cols, f in _folded_blocks(sae, z, w_o):
                out[:, cols] = _argmax_code(f, sae.n_features, silent)
                if keep is not None:  # weighted sums, no copies of the kept rows
                    diff[cols] = pair_w @ (f[:half] - f[half:]).abs_().sum(2)
                    mass[cols] = keep_w @ f.sum(2)
        else:
            chunk = chunk or max(1, ROWS_PER_BLOCK // max(1, heads))
            for rows, f in _direct_blocks(sae, x, chunk, keep is not None):
                out[rows] = _argmax_code(f, sae.n_features, silent)
                if keep is not None:
                    b = len(rows) // 2
                    pk = pair_keep[rows[:b]]
                    diff += (f[:b][pk] - f[b:][pk]).abs().sum((0, 2))
                    mass += f[keep[rows]].sum((0, 2))
    n_codes = sae.n_features + (1 if silent == "own-code" else 0)
    codes = Codes(codes=out, labels=labels.clone(), layout=layout, n_codes=n_codes)
    if keep is None:
        return codes, None
    n_pairs, n_kept = max(1, int(pair_keep.sum())), max(1, int(keep.sum()))
    if change == "absolute":
        return codes, diff / n_pairs
    return codes, (diff / n_pairs) / (mass / n_kept).clamp_min(1e-12)
