"""Shared plumbing of the testbeds: TL-native bridges with weights set by name, cached on disk.

A TL-native model (``TransformerBridge.boot_native``) names its parameters like
``layers.0._original_component.attn._original_component.q._original_component.weight``;
without the ``._original_component`` wrappers that is the plain module path
``layers.0.attn.q.weight``, the name used in the saved files here. A cached testbed is
a directory holding ``model.safetensors`` (those names) and ``config.json`` (the
TL-native config under ``"tl_config"`` plus whatever the testbed records), written
under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError
from ..models.loading import cache_dir

if TYPE_CHECKING:
    from torch import Tensor

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_WRAP = "._original_component"


def testbed_cache() -> Path:
    """``<circuitscan cache>/testbeds``."""
    return cache_dir() / "testbeds"


def boot(tl_config: dict[str, Any]) -> Any:
    """A TL-native bridge from a config dict (weights still at their random init)."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_native(dict(tl_config))


def native_params(bridge: Any) -> dict[str, Any]:
    """The bridge's parameters under their plain module paths (``layers.0.attn.q.weight``)."""
    return {name.replace(_WRAP, ""): p for name, p in bridge.named_parameters()}


def native_state(bridge: Any) -> dict[str, Tensor]:
    """A detached, contiguous copy of every parameter, by plain name (for saving)."""
    return {k: v.detach().clone().contiguous() for k, v in native_params(bridge).items()}


def set_weights(bridge: Any, weights: dict[str, Tensor], *, what: str) -> None:
    """Copy ``weights`` into the bridge; every parameter must be given with its exact shape."""
    import torch

    params = native_params(bridge)
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ModelLoadError(
            f"{what}: the weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "delete the cached directory to rebuild it"
        )
    with torch.no_grad():
        for name, p in params.items():
            w = weights[name]
            if tuple(w.shape) != tuple(p.shape):
                raise ModelLoadError(
                    f"{what}: weight {name} has shape {tuple(w.shape)}, the model expects {tuple(p.shape)}"
                )
            p.copy_(w.to(p.dtype))


def read_cached(directory: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """(weights, config) of a cached testbed, or None when it is not (completely) there."""
    from safetensors.torch import load_file

    if not ((directory / WEIGHTS).is_file() and (directory / CONFIG).is_file()):
        return None
    return load_file(str(directory / WEIGHTS)), json.loads((directory / CONFIG).read_text())


def write_cached(directory: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``directory`` (kept if another process won)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=directory.parent))
    try:
        build(tmp)
        if (directory / CONFIG).is_file():  # someone else finished first; theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            if directory.exists():  # an empty or broken leftover
                shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_files(tmp: Path, weights: dict[str, Tensor], config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in weights.items()},
        str(tmp / WEIGHTS),
        metadata={"format": "pt"},
    )
    (tmp / CONFIG).write_text(json.dumps(config, indent=1, default=str))
