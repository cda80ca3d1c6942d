"""Model loading and per-head activations, checked against brute force."""

from __future__ import annotations

import pytest
import torch

from circuitscan import circuits
from circuitscan.activations import head_outputs
from circuitscan.errors import CircuitscanError, ModelLoadError
from circuitscan.models import load_model
from circuitscan.tasks import build_task
from circuitscan.types import HeadId, PromptSet


def _brute_force(model, tokens):
    """Per-head outputs from a full cache: z of every layer through W_O, kept per position."""
    _, cache = model.bridge.run_with_cache(tokens)
    outs = []
    for layer in range(model.layout.n_layers):
        z = cache[model.hook_z(layer)]
        if z.ndim == 3:
            z = z.reshape(*z.shape[:2], model.layout.n_heads, -1)
        outs.append(torch.einsum("bphd,hdm->bphm", z, model.bridge.W_O[layer]))
    return torch.cat(outs, dim=2), cache  # [b, p, L*H, d]


def test_planted_layout_and_per_head_outputs_sum_to_attention_output(planted, planted_prompts):
    assert planted.layout.n_total == 12
    tokens = planted_prompts.positive[:5]
    per_head, cache = _brute_force(planted, tokens)
    for layer in range(3):
        heads = per_head[:, :, layer * 4 : (layer + 1) * 4].sum(2) + planted.bridge.b_O[layer]
        assert torch.allclose(heads, cache[f"blocks.{layer}.hook_attn_out"], atol=1e-5)


@pytest.mark.parametrize("aggregation", ["mean", "last", "mean+last", "all"])
def test_head_outputs_equal_brute_force(planted, planted_prompts, aggregation):
    acts = head_outputs(planted, planted_prompts, aggregation=aggregation, batch_size=7)
    tokens, labels = planted_prompts.all_tokens()
    with torch.no_grad():
        full, _ = _brute_force(planted, tokens)
    expected = {"mean": full.mean(1), "last": full[:, -1], "all": full,
                "mean+last": torch.stack([full.mean(1), full[:, -1]], 1)}[aggregation]
    assert torch.allclose(acts.x, expected, atol=1e-5)
    assert acts.n_slots == {"mean+last": 2, "all": full.shape[1]}.get(aggregation, 1)
    assert torch.equal(acts.labels, labels)
    # the same outputs before W_O: x = z @ w_o, head by head
    assert acts.z.shape == (*acts.x.shape[:-1], planted.bridge.cfg.d_head)
    assert torch.allclose(torch.einsum("...he,hed->...hd", acts.z, acts.w_o), acts.x, atol=1e-6)


@pytest.mark.parametrize("how", ["center", "standardise"])
@pytest.mark.parametrize("aggregation", ["mean", "mean+last"])
def test_head_normalised_keeps_x_the_product_of_z_and_w_o(planted, planted_prompts, how, aggregation):
    from circuitscan.methods.sae_codes import head_normalised

    acts = head_normalised(head_outputs(planted, planted_prompts, aggregation=aggregation), how)
    assert torch.allclose(torch.einsum("...he,hed->...hd", acts.z, acts.w_o), acts.x, atol=1e-5)
    assert float(acts.x.mean(0).abs().max()) < 1e-5  # centred


def test_early_stop_leaves_no_hooks_behind(planted, planted_prompts):
    tokens = planted_prompts.positive[:3]
    before = planted.bridge(tokens)
    head_outputs(planted, planted_prompts)
    after = planted.bridge(tokens)
    assert torch.equal(before, after)
    assert all(len(hp.fwd_hooks) == 0 for hp in planted.bridge.hook_dict.values() if hasattr(hp, "fwd_hooks"))


def test_left_padding_with_mask_matches_unpadded(planted, planted_prompts):
    # the planted model has no positional signal, so a left-padded prompt whose padding
    # is masked must give exactly the unpadded prompt's per-head means
    pos, neg = planted_prompts.positive[:4], planted_prompts.negative[:4]
    pad = torch.zeros(4, 3, dtype=torch.long)
    padded = PromptSet(
        task="planted",
        positive=torch.cat([pad, pos], 1),
        negative=torch.cat([pad, neg], 1),
        positive_mask=torch.cat([pad, torch.ones_like(pos)], 1),
        negative_mask=torch.cat([pad, torch.ones_like(neg)], 1),
    )
    plain = PromptSet(task="planted", positive=pos, negative=neg)
    a = head_outputs(planted, padded)
    b = head_outputs(planted, plain)
    assert torch.allclose(a.x, b.x, atol=1e-5)


def test_tokens_outside_vocab_and_bad_options_are_errors(planted):
    bad = PromptSet(task="x", positive=torch.tensor([[1, 99]]), negative=torch.tensor([[1, 2]]))
    with pytest.raises(CircuitscanError, match="outside the model's vocabulary"):
        head_outputs(planted, bad)
    ok = PromptSet(task="x", positive=torch.tensor([[1, 2]]), negative=torch.tensor([[1, 2]]))
    with pytest.raises(CircuitscanError, match="aggregation"):
        head_outputs(planted, ok, aggregation="max")


def test_non_finite_activations_are_an_error(planted_prompts):
    model = load_model("toy-planted")
    with torch.no_grad():
        model.bridge.W_O[0]  # property access works before corruption
        for name, p in model.bridge.named_parameters():
            if name.endswith("layers.1._original_component.attn._original_component.v._original_component.weight"):
                p.fill_(float("nan"))
    with pytest.raises(CircuitscanError, match="non-finite head outputs"):
        head_outputs(model, planted_prompts)


def test_prompt_sets_validate_their_shape():
    with pytest.raises(CircuitscanError, match="same length"):
        PromptSet(task="t", positive=torch.zeros(2, 3, dtype=torch.long), negative=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(CircuitscanError, match="0 negative"):
        PromptSet(task="t", positive=torch.zeros(2, 3, dtype=torch.long), negative=torch.zeros(0, 3, dtype=torch.long))


def test_unknown_model_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Offline options: smollm2-135m"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("/nonexistent/model.gguf")


def test_gpt2_tokenizer_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITSCAN_GPT2_TOKENIZER", str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="GPT-2 tokenizer.*CIRCUITSCAN_GPT2_TOKENIZER"):
        load_model("gpt2-random")
    with pytest.raises(ModelLoadError, match="the given path"):
        load_model(f"gpt2-random:{tmp_path}")


def test_gpt2_tokenizer_ships_with_the_package(tmp_path, monkeypatch):
    """gpt2-random works from any working directory: the tokenizer is package data."""
    from circuitscan.models.loading import find_gpt2_tokenizer

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIRCUITSCAN_GPT2_TOKENIZER", raising=False)
    found = find_gpt2_tokenizer()
    assert (found / "tokenizer.json").is_file()
    assert "circuitscan" in found.parts and tmp_path not in found.parents


# --------------------------------------------------------------------------- GPT-2 code paths


@pytest.mark.slow
def test_gpt2_random_layout_ioi_and_ground_truth(gpt2_random):
    assert (gpt2_random.layout.n_layers, gpt2_random.layout.n_heads) == (12, 12)
    assert gpt2_random.layout.n_total == 144
    assert gpt2_random.family == "gpt2"
    prompts = build_task("ioi", gpt2_random, 30, seed=1)
    assert prompts.positive.shape == prompts.negative.shape
    tok = gpt2_random.tokenizer
    for i in range(5):
        text = prompts.positive_text[i]
        assert prompts.positive[i].tolist() == [tok.bos_token_id, *tok.encode(text)]
        # each negative differs from its positive in exactly one token (the second subject)
        assert int((prompts.positive[i] != prompts.negative[i]).sum()) == 1
        assert tok.decode(prompts.answers[i]).strip() in text
    gt = circuits.resolve("ioi/acdc", gpt2_random.layout, gpt2_random.family)
    mask = gt.mask(gpt2_random.layout)
    assert int(mask.sum()) == 26
    assert mask[9 * 12 + 9] and mask[10 * 12 + 7] and not mask[9 * 12 + 8]
    assert circuits.get("ioi/oneill-bui").heads - gt.heads == {HeadId(11, 3)}


@pytest.mark.slow
def test_gpt2_random_per_head_outputs_equal_hook_result(gpt2_random):
    prompts = build_task("ioi", gpt2_random, 4, seed=0)
    acts = head_outputs(gpt2_random, prompts)
    bridge = gpt2_random.bridge
    bridge.set_use_attn_result(True)
    try:
        tokens, _ = prompts.all_tokens()
        _, cache = bridge.run_with_cache(tokens)
        ref = torch.cat([cache[f"blocks.{layer}.attn.hook_result"].mean(1) for layer in range(12)], dim=1)
    finally:
        bridge.set_use_attn_result(False)
    assert torch.allclose(acts.x, ref, atol=1e-4)


def test_registry_ground_truth_refuses_other_families(planted):
    with pytest.raises(CircuitscanError, match="belongs to model family 'gpt2'"):
        circuits.resolve("ioi/acdc", planted.layout, planted.family)
    gt = circuits.resolve("L0H1,L2H3", planted.layout, planted.family)
    assert gt.heads == {HeadId(0, 1), HeadId(2, 3)}
    with pytest.raises(CircuitscanError, match="does not exist in a model with 3 layers"):
        circuits.resolve("L9H9", planted.layout, planted.family)


def _hf_vs_bridge(model, prompts, aggregation):
    from circuitscan.models.hf import bridge_only, hf_view

    assert hf_view(model) is not None
    fast = head_outputs(model, prompts, aggregation=aggregation, batch_size=5)
    with bridge_only(model):
        slow = head_outputs(model, prompts, aggregation=aggregation, batch_size=5)
    assert torch.allclose(fast.x, slow.x, atol=1e-5, rtol=1e-4)
    assert torch.equal(fast.labels, slow.labels)


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["mean", "last", "mean+last", "all"])
def test_gpt2_random_hf_path_equals_bridge_path(gpt2_random, aggregation):
    prompts = build_task("ioi", gpt2_random, 6, seed=0)
    _hf_vs_bridge(gpt2_random, prompts, aggregation)


@pytest.mark.slow
def test_hf_view_shares_weights_and_leaves_no_hooks(gpt2_random):
    from circuitscan.models.hf import hf_view, run_hooked

    view = hf_view(gpt2_random)
    assert view.lm_head.weight.data_ptr() == gpt2_random.bridge.original_model.lm_head.weight.data_ptr()
    tokens = build_task("ioi", gpt2_random, 2, seed=0).positive
    with torch.inference_mode():
        logits = run_hooked(gpt2_random, tokens, [])
        assert torch.allclose(logits, gpt2_random.bridge(tokens), atol=1e-4)
    assert not any(m._forward_pre_hooks for m in view.out_proj)


def test_toy_models_have_no_hf_view(planted):
    from circuitscan.models.hf import hf_view

    assert hf_view(planted) is None


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["mean", "last", "all"])
def test_smollm2_hf_path_equals_bridge_path(smollm2, aggregation):
    prompts = build_task("ioi", smollm2, 6, seed=0)
    _hf_vs_bridge(smollm2, prompts, aggregation)


def test_offline_mode_set_after_import_reaches_the_hub_library(monkeypatch):
    """HF_HUB_OFFLINE=1 set after huggingface_hub was imported (a notebook, a test) still means
    offline: the hub library reads it once at import, so the loader puts it in its constants
    for the load (without it the hub retries a network that is not there for ~20 s)."""
    import huggingface_hub.constants as hub_constants
    from transformer_lens.model_bridge import TransformerBridge

    from circuitscan.models import loading

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: True)  # as if there were a network
    seen = []

    def boot(name, device=None, **kw):
        seen.append(hub_constants.HF_HUB_OFFLINE)
        raise OSError("stop here")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boot))
    with pytest.raises(OSError, match="stop here"):
        loading._load_hf_dir_like_hub("no-such-org/model", "cpu")
    assert seen == [True] and hub_constants.HF_HUB_OFFLINE is False  # offline for the load, restored after
