"""Argmax discretisation of SAE features."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from ..errors import CircuitscanError
from ..sae.model import SparseAutoencoder
from ..types import Codes, HeadLayout

ROWS_PER_BLOCK = 4096


def discretise(
    sae: SparseAutoencoder,
    x: Float[torch.Tensor, "n heads d"],
    labels: Bool[torch.Tensor, " n"],
    layout: HeadLayout,
    *,
    silent: str = "own-code",
    chunk: int | None = None,
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
    """
    if silent not in ("own-code", "zero"):
        raise CircuitscanError(f"silent must be 'own-code' or 'zero', got {silent!r}")
    n, heads, _ = x.shape
    chunk = chunk or max(1, ROWS_PER_BLOCK // max(1, heads))
    out = torch.empty(n, heads, dtype=torch.long)
    with torch.no_grad():
        for lo in range(0, n, chunk):
            z = sae.encode(x[lo : lo + chunk].float())
            best = z.max(-1)
            code = best.indices
            if silent == "own-code":
                code = torch.where(best.values > 0, code, torch.full_like(code, sae.n_features))
            out[lo : lo + chunk] = code
    n_codes = sae.n_features + (1 if silent == "own-code" else 0)
    return Codes(codes=out, labels=labels.clone(), layout=layout, n_codes=n_codes)
