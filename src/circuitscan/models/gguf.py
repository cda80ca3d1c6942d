"""De-quantise GGUF files to Hugging Face directories (cached), for :mod:`.loading`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import ModelLoadError
from ..progress import status


def quiet_transformers() -> None:
    """Silence transformers' logging and progress bars."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def dequantise_gguf(gguf: Path, target: Path) -> Path:
    """De-quantise a GGUF file to a Hugging Face directory (safetensors), once.

    The directory is written under a temporary name and renamed into place, so a
    half-finished conversion is never mistaken for a cached model.
    """
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it for gguf_file=)
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError("loading GGUF files needs the 'gguf' package: pip install gguf") from exc
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        with status(f"de-quantising {gguf.name} once (cached in {target})"):
            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            if getattr(model.config, "tie_word_embeddings", False):
                state.pop("lm_head.weight", None)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            cfg = model.config.to_dict()
            cfg.pop("quantization_config", None)
            if not cfg.get("architectures"):
                cfg["architectures"] = [type(model).__name__]
            cfg["_circuitscan_source"] = str(gguf)
            (tmp / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
            tok.save_pretrained(str(tmp))
            (tmp / "circuitscan.json").write_text(
                json.dumps({"source": str(gguf), "dequantise_seconds": time.perf_counter() - t0})
            )
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
