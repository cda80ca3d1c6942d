"""Reading a converted tracr model: its token encoding, decoded outputs, non-zero heads (the ground truth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError, TaskError
from ..types import GroundTruth, HeadId
from .tracr_compile import (
    FAMILY_PREFIX,
)

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle


# --------------------------------------------------------------------------- reading a converted model


def is_tracr(model: ModelHandle) -> bool:
    return model.family.startswith(FAMILY_PREFIX) and "token_ids" in model.info


def _require(model: ModelHandle, what: str) -> None:
    if not is_tracr(model):
        raise TaskError(
            f"{what} runs only on tracr models (tracr-reverse, ...), not {model.spec!r}"
        )


def token_ids(model: ModelHandle) -> dict[Any, int]:
    _require(model, "tracr token encoding")
    return {value: int(i) for value, i in model.info["token_ids"]}


def encode(model: ModelHandle, inputs: Sequence[Sequence[Any]]) -> Tensor:
    """Input sequences (values, without BOS) as token ids ``[n, 1 + len]`` with BOS in front."""
    import torch

    ids = token_ids(model)
    bos = ids[model.info["bos"]]
    rows = []
    for seq in inputs:
        unknown = [v for v in seq if v not in ids or v in (model.info["bos"], model.info["pad"])]
        if unknown:
            raise CircuitscanError(
                f"{model.spec}: input value {unknown[0]!r} is not in the vocabulary {model.info['vocab']}"
            )
        rows.append([bos, *(ids[v] for v in seq)])
    if len({len(r) for r in rows}) > 1:
        raise CircuitscanError(f"{model.spec}: inputs of one batch must have the same length")
    return torch.tensor(rows, dtype=torch.long)


def decode(model: ModelHandle, logits: Tensor) -> list[list[Any]]:
    """Outputs per position from logits ``[n, seq, d_out]`` (argmax for categorical, the value otherwise).

    Position 0 (BOS) is included, as in tracr's ``decoded`` (which overwrites it with BOS).
    """
    _require(model, "decoding tracr outputs")
    if model.info["categorical_output"]:
        values = model.info["output_values"]
        return [[values[i] for i in row] for row in logits.argmax(-1).tolist()]
    return logits[..., 0].tolist()


def weight_heads(model: ModelHandle, tol: float = 0.0) -> list[HeadId]:
    """Heads with any non-zero weight or bias (W_Q, W_K, W_V, W_O), in layer order."""
    return [h for h, parts in component_weights(model, tol).items() if any(parts.values())]


def component_weights(model: ModelHandle, tol: float = 0.0) -> dict[HeadId, dict[str, bool]]:
    """Per head: does its q, k, v, o weight (or bias) have an entry with ``|w| > tol``?"""
    b = model.bridge
    layout = model.layout
    out: dict[HeadId, dict[str, bool]] = {}
    mats = {"q": (b.W_Q, b.b_Q), "k": (b.W_K, b.b_K), "v": (b.W_V, b.b_V), "o": (b.W_O, None)}
    for layer in range(layout.n_layers):
        for h in range(layout.n_heads):
            parts = {}
            for kind, (w, bias) in mats.items():
                nz = bool((w[layer, h].detach().abs() > tol).any())
                if bias is not None:
                    nz = nz or bool((bias[layer, h].detach().abs() > tol).any())
                parts[kind] = nz
            out[HeadId(layer, h)] = parts
    return out


def ground_truth(model: ModelHandle) -> GroundTruth:
    """The heads with non-zero weights of a tracr model (GROUND_TRUTH.md)."""
    _require(model, "the tracr ground truth")
    heads = weight_heads(model)
    if not heads or len(heads) == model.layout.n_total:
        raise CircuitscanError(
            f"{model.spec}: {len(heads)} of {model.layout.n_total} heads have weights; no ROC possible"
        )
    return GroundTruth(
        name=model.family,
        model=model.family,
        heads=frozenset(heads),
        classes={"non-zero weights": tuple(heads)},
        source="tracr-compiled weights (circuitscan.testbeds.tracr): heads with a non-zero W_Q, W_K, W_V or W_O",
    )
