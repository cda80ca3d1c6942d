"""Precision of matrix products: ``fp32``, ``bf16`` (bfloat16 products, float32 accumulation
and state), or ``auto``: bf16 where the hardware multiplies bfloat16 natively, fp32 elsewhere
(emulated bfloat16 is slower than float32). One set of names for the SAE's training
(:class:`~circuitscan.config.SAEConfig`) and the evaluator's passes
(:func:`circuitscan.evaluation.forward.precision_context`)."""

from __future__ import annotations

from typing import Any

from .errors import CircuitscanError

PRECISIONS = ("fp32", "bf16", "auto")


def fast_bf16(device: Any = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CPU with AVX512-BF16 or AMX,
    a CUDA GPU with bf16."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(precision: str, device: Any = "cpu") -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`fast_bf16`, else ``"fp32"``; ``fp32`` / ``bf16`` as given."""
    if precision not in PRECISIONS:
        raise CircuitscanError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(device) else "fp32"
