"""Save and load an SAE as safetensors with its config as JSON metadata."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import SAEConfig, from_dict, to_dict
from ..errors import CircuitscanError
from ..rundir import atomic_path
from .model import SparseAutoencoder

CONFIG_KEY = "circuitscan_sae_config"


def save_sae(sae: SparseAutoencoder, cfg: SAEConfig, path: str | Path) -> None:
    """Write ``sae`` to ``path`` atomically (temp file + rename)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    meta = {CONFIG_KEY: json.dumps(to_dict(cfg)), "d_in": str(sae.d_in)}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_sae(path: str | Path) -> tuple[SparseAutoencoder, SAEConfig]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CircuitscanError(f"SAE file {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if CONFIG_KEY not in meta:
            raise CircuitscanError(f"{str(path)!r} is not a circuitscan SAE (no {CONFIG_KEY} metadata)")
        cfg = from_dict(SAEConfig, json.loads(meta[CONFIG_KEY]))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    sae = SparseAutoencoder(int(meta["d_in"]), cfg.n_features)
    sae.load_state_dict(state)
    return sae, cfg
