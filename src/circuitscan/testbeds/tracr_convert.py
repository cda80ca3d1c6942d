"""A compiled tracr model converted into a TL-native bridge, its weights cached so later loads need no tracr."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError
from ..models.handle import ModelHandle
from ..progress import status
from ..types import HeadLayout
from ._native import boot, read_cached, save_files, set_weights, testbed_cache, write_cached
from .tracr_compile import (
    BOS,
    FAMILY_PREFIX,
    MAX_SEQ_LEN,
    PAD,
    PROGRAMS,
    compile_program,
    program_name,
    unembedding,
)
from .tracr_model import (
    weight_heads,
)

if TYPE_CHECKING:
    from torch import Tensor



FORMAT_VERSION = 1

def _np(x: Any) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float32))


def convert(
    assembled: Any, name: str, max_seq_len: int = MAX_SEQ_LEN
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A compiled tracr model as TL-native weights (plain names) and the config to boot and read them."""
    import numpy as np

    prog = PROGRAMS[program_name(name)]
    cfg = assembled.model_config
    params = assembled.params
    n_layers, n_heads, d_head = int(cfg.num_layers), int(cfg.num_heads), int(cfg.key_size)
    d_model = len(assembled.residual_labels)
    w_u = unembedding(assembled)  # [d_model, d_out]
    tok = np.asarray(params["token_embed"]["embeddings"])
    pos = np.asarray(params["pos_embed"]["embeddings"])
    weights: dict[str, Tensor] = {
        "tok_embed.weight": _np(tok),
        "pos.weight": _np(pos),
        "head.weight": _np(w_u.T),
    }
    for layer in range(n_layers):
        attn, mlp = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "linear")):
            weights[f"layers.{layer}.attn.{ours}.weight"] = _np(
                np.asarray(params[f"{attn}/{theirs}"]["w"]).T
            )
            weights[f"layers.{layer}.attn.{ours}.bias"] = _np(params[f"{attn}/{theirs}"]["b"])
        for ours, theirs in (("fc_in", "linear_1"), ("fc_out", "linear_2")):
            weights[f"layers.{layer}.mlp.{ours}.weight"] = _np(
                np.asarray(params[f"{mlp}/{theirs}"]["w"]).T
            )
            weights[f"layers.{layer}.mlp.{ours}.bias"] = _np(params[f"{mlp}/{theirs}"]["b"])
    tl_config = dict(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=int(cfg.mlp_hidden_size),
        d_vocab=int(tok.shape[0]),
        d_vocab_out=int(w_u.shape[1]),
        n_ctx=int(pos.shape[0]),
        attn_only=False,
        normalization_type=None,
        act_fn="relu",
        attention_dir="causal" if cfg.causal else "bidirectional",
        positional_embedding_type="standard",
        seed=0,
    )
    encoding = assembled.input_encoder.encoding_map
    categorical = hasattr(assembled.output_encoder, "encoding_map")
    outputs = (
        sorted(assembled.output_encoder.encoding_map.items(), key=lambda kv: kv[1])
        if categorical
        else []
    )
    try:
        from importlib.metadata import version

        tracr_version = version("tracr-pypi")
    except Exception:  # pragma: no cover - tracr installed another way
        tracr_version = "unknown"
    config = {
        "tl_config": tl_config,
        "testbed": FAMILY_PREFIX + prog.name,
        "program": prog.name,
        "description": prog.description,
        "max_seq_len": max_seq_len,
        "vocab": list(prog.vocab),
        "token_ids": [
            [value, int(i)] for value, i in sorted(encoding.items(), key=lambda kv: kv[1])
        ],
        "bos": BOS,
        "pad": PAD,
        "categorical_output": categorical,
        "output_values": [value for value, _ in outputs],
        "residual_labels": list(assembled.residual_labels),
        "format_version": FORMAT_VERSION,
        "tracr_version": tracr_version,
    }
    return weights, config


def cache_path(name: str, max_seq_len: int = MAX_SEQ_LEN) -> Path:
    return (
        testbed_cache() / f"{FAMILY_PREFIX}{program_name(name)}-len{max_seq_len}-v{FORMAT_VERSION}"
    )


def ensure_cached(name: str, max_seq_len: int = MAX_SEQ_LEN, *, assembled: Any = None) -> Path:
    """The cached conversion of a program, compiling it first if needed."""
    path = cache_path(name, max_seq_len)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path

    with status(f"compiling tracr program {program_name(name)!r} once (cached in {path})"):
        compiled = assembled if assembled is not None else compile_program(name, max_seq_len)
        weights, config = convert(compiled, name, max_seq_len)
    return write_cached(path, lambda tmp: save_files(tmp, weights, config))


def load_tracr(
    name: str, *, device: str = "cpu", max_seq_len: int = MAX_SEQ_LEN, assembled: Any = None
) -> ModelHandle:
    """A tracr program as a :class:`ModelHandle` (family ``tracr-<program>``, no tokenizer).

    Args:
        name: ``reverse``, ``frac_prev``, ``sort`` or ``sort_freq`` (``tracr-`` prefix allowed).
        device: torch device.
        max_seq_len: tokens after BOS the model is compiled for.
        assembled: an already compiled tracr model of this program (skips compiling when
            the cache is cold).
    """
    prog = program_name(name)
    path = ensure_cached(prog, max_seq_len, assembled=assembled)
    cached = read_cached(path)
    if cached is None:  # pragma: no cover - removed between the two calls
        raise ModelLoadError(
            f"the cached tracr model {path} disappeared while loading; load it again"
        )
    weights, config = cached
    bridge = boot(config["tl_config"])
    set_weights(bridge, weights, what=f"tracr model {path}")
    if str(device) != "cpu":
        bridge.to(device)
    layout = HeadLayout(int(config["tl_config"]["n_layers"]), int(config["tl_config"]["n_heads"]))
    handle = ModelHandle(
        bridge=bridge,
        spec=FAMILY_PREFIX + prog,
        family=FAMILY_PREFIX + prog,
        layout=layout,
        tokenizer=None,
        prepend_bos=False,  # inputs carry the compiler's BOS token themselves
        info={
            k: config[k]
            for k in (
                "program",
                "max_seq_len",
                "vocab",
                "token_ids",
                "bos",
                "pad",
                "categorical_output",
                "output_values",
                "tracr_version",
            )
        },
    )
    handle.info["path"] = str(path)
    handle.info["ground_truth"] = sorted(h.name for h in weight_heads(handle))
    return handle
