"""Shared fixtures. Models are loaded once per session; tiers:

* unit: toy models only, no files outside the repo, seconds;
* integration (``@pytest.mark.slow``): the real smollm2-135m (and gpt2-random), or another
  program: a Ray cluster, a headless browser, process trees killed by signals, tracr's
  own JAX forward. ``make test`` (and CI) runs both tiers.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("CIRCUITSCAN_PROGRESS", "0")


@pytest.fixture(scope="session")
def planted():
    from circuitscan.models import load_model

    return load_model("toy-planted")


@pytest.fixture(scope="session")
def planted_prompts(planted):
    from circuitscan.tasks import build_task

    return build_task("planted", planted, 40, seed=0)


@pytest.fixture(scope="session")
def gpt2_random():
    from circuitscan.models import load_model

    return load_model("gpt2-random")


@pytest.fixture(scope="session")
def smollm2():
    from circuitscan.models import load_model

    return load_model("smollm2-135m")


def tiny_llama_model(directory, n_layers: int = 2):
    """A Llama of ``n_layers`` layers, 4 heads each, at random init (seed 0) with a word-level
    tokenizer of 64 words: a Hugging Face model (the shared-prefix and layer-skip paths run)
    built offline in a second."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from circuitscan.models import load_model

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token="t1", bos_token="t2").save_pretrained(
        directory)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(directory)
    return load_model(str(directory))


def build_sae_cfg(**overrides):
    """An SAEConfig from defaults with keyword overrides (tests state only what matters)."""
    from circuitscan.config import SAEConfig

    return SAEConfig(**overrides)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny matrices: one thread is faster, and on a busy 2-core machine much faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cli_shares_smollm2(monkeypatch, smollm2):
    """CLI commands in this test get the session's smollm2 instead of loading it again."""
    import circuitscan.models as models

    real = models.load_model

    def load(spec, **kwargs):
        if spec.strip().lower() in ("smollm2-135m", "smollm2") and kwargs.get("device", "cpu") == "cpu":
            return smollm2
        return real(spec, **kwargs)

    monkeypatch.setattr(models, "load_model", load)
    return smollm2
