"""Checks at the public entry points: argument types, devices, memory bounds.

Each raises a :class:`~circuitscan.errors.CircuitscanError` naming the argument and what
is valid, before any work or allocation, so that bad input never surfaces as a raw
AttributeError, an allocation failure or a run killed by the kernel.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import CircuitscanError


def check_type(value: Any, types: type | tuple[type, ...], arg: str, valid: str) -> None:
    """Refuse ``value`` unless an instance of ``types`` (bools are never ints)."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise CircuitscanError(f"{arg} must be {valid}, got {value!r} ({type(value).__name__})")


def check_count(value: Any, arg: str, *, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (not a bool or a float)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise CircuitscanError(f"{arg} must be a whole number >= {minimum}, got {value!r} ({type(value).__name__})")
    return int(value)


def check_device(device: Any) -> str:
    """A torch device this machine has: ``cpu``, ``cuda[:N]`` (with a GPU), ``mps``..."""
    import torch

    check_type(device, str, "device", "a torch device name such as 'cpu' or 'cuda'")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise CircuitscanError(
            f"unknown device {device!r}; valid: cpu, cuda, cuda:N (with an NVIDIA GPU), mps (Apple)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CircuitscanError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CircuitscanError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CircuitscanError(f"device {device!r}: no Apple MPS device is available here; use --device cpu")
    elif dev.type != "cpu":
        raise CircuitscanError(f"device {device!r} is not supported; valid: cpu, cuda, cuda:N, mps")
    return device


# --------------------------------------------------------------------------- memory

GB = 1024**3


def memory_limit() -> int:
    """Bytes a run may use: ``CIRCUITSCAN_MAX_MEMORY_GB`` if set, else the memory available now."""
    env = os.environ.get("CIRCUITSCAN_MAX_MEMORY_GB")
    if env:
        try:
            return int(float(env) * GB)
        except ValueError:
            raise CircuitscanError(f"CIRCUITSCAN_MAX_MEMORY_GB must be a number of GiB, got {env!r}") from None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no bound


def check_memory(estimate: float, what: str, hint: str) -> None:
    limit = memory_limit()
    if estimate > limit:
        raise CircuitscanError(
            f"{what} needs about {estimate / GB:.3g} GiB of memory, more than the {limit / GB:.3g} GiB available "
            f"(limit: MemAvailable, or CIRCUITSCAN_MAX_MEMORY_GB); {hint}"
        )


def discover_memory(model: Any, n_examples: int, sae: Any, seq_len: int = 0) -> float:
    """Bytes :func:`circuitscan.discover` holds at its peak, roughly (an estimate, not a bound)."""
    heads = model.layout.n_total
    d = model.d_model
    f = int(sae.n_features)
    rows = n_examples * heads
    acts = rows * d * 4  # per-head outputs, float32
    encoded = rows * (f + 1) * 4  # SAE feature activations of every row
    params = f * d * 2 * 4 * 4  # encoder + decoder: weights, gradients, Adam's two moments
    train = int(sae.train_examples) * heads * (f + d) * 4 * 3
    tokens = n_examples * max(seq_len, 1) * 8 * 2
    return float(acts + encoded + params + train + tokens)


def check_discover_memory(model: Any, n_examples: int, sae: Any, seq_len: int = 0) -> None:
    est = discover_memory(model, n_examples, sae, seq_len)
    check_memory(est, f"discover with {n_examples} examples and {sae.n_features} SAE features",
                 "use fewer --examples or --features")


def check_task_memory(n: int, what: str) -> None:
    """Building ``n`` prompt pairs: at least ~1 KiB each (token ids, text, answers)."""
    check_memory(2.0 * n * 1024, f"building {n} prompt pairs for {what}", "use fewer --examples")
