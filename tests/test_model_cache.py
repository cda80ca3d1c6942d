"""GGUF models are de-quantised once and cached; the cache is used afterwards."""

from __future__ import annotations

import pytest
import torch

from circuitscan.models import load_model
from circuitscan.models.loading import cache_dir, dequantise_gguf, smollm2_gguf_path


@pytest.mark.slow
def test_smollm2_second_load_uses_the_cache_not_the_gguf(smollm2, monkeypatch):
    target = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    assert (target / "model.safetensors").is_file() and (target / "config.json").is_file()
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained

    def refuse_gguf(*args, **kwargs):
        if "gguf_file" in kwargs:
            raise AssertionError("the GGUF was de-quantised again")
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse_gguf)
    again = load_model("smollm2-135m")
    assert again.layout.n_total == 270
    assert torch.equal(again.bridge.W_O[3], smollm2.bridge.W_O[3])


@pytest.mark.slow
def test_a_gguf_file_path_loads_like_the_named_model(tmp_path, monkeypatch, smollm2):
    monkeypatch.setenv("CIRCUITSCAN_CACHE", str(tmp_path / "cache"))
    gguf = smollm2_gguf_path()
    model = load_model(str(gguf))
    assert model.layout.n_total == 270
    assert torch.equal(model.bridge.W_O[0], smollm2.bridge.W_O[0])
    converted = list((tmp_path / "cache" / "models" / "gguf").iterdir())
    assert len(converted) == 1 and not converted[0].name.startswith(".partial")
    # a second conversion call is a no-op returning the same directory
    assert dequantise_gguf(gguf, converted[0]) == converted[0]
