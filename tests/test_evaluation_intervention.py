"""Head interventions: exact identities, a slow reference implementation, the z = output claim."""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.evaluation import metrics as M
from circuitscan.evaluation.intervention import (
    ABLATIONS,
    CircuitEvaluator,
    ablation_source,
    cache_heads,
    circuit_mask,
    heads_ablated,
    random_masks,
    run_with_heads,
)
from circuitscan.types import PromptSet


@pytest.fixture(scope="module")
def toy():
    from circuitscan.models import load_model

    return load_model("toy-random", seed=3)  # 2 x 4 heads, layer norm: not linear


def _toy_prompts(n=6, seq=7, vocab=64, seed=0, **meta) -> PromptSet:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(1, vocab, (n, seq), generator=g)
    neg = pos.clone()
    neg[:, 2] = torch.randint(1, vocab, (n,), generator=g)  # corrupt two positions
    neg[:, -2] = torch.randint(1, vocab, (n,), generator=g)
    return PromptSet(
        task="toy",
        positive=pos,
        negative=neg,
        answers=torch.randint(0, vocab, (n, 1), generator=g),
        wrong_answers=torch.randint(0, vocab, (n, 1), generator=g),
        metadata=meta,
    )


# --------------------------------------------------------------------------- a slow reference


def _z_alone(model, tokens):
    """z of every layer for ONE prompt, run alone: [L, seq, H, d]."""
    zs = {}

    def grab(layer):
        def hook(z, hook):
            zs[layer] = z[0].detach().clone()
            return z

        return hook

    hooks = [(model.hook_z(layer), grab(layer)) for layer in range(model.layout.n_layers)]
    with torch.no_grad():
        model.bridge.run_with_hooks(tokens[None], fwd_hooks=hooks)
    return torch.stack([zs[layer] for layer in range(model.layout.n_layers)])


def _logits_alone(model, tokens, keep, replacement):
    """Full logits of ONE prompt with the heads outside ``keep`` set to ``replacement`` [L, seq, H, d]."""
    keep = keep.reshape(model.layout.n_layers, model.layout.n_heads)

    def patch(layer):
        def hook(z, hook):
            z = z.clone()
            for h in range(model.layout.n_heads):
                if not keep[layer, h]:
                    z[0, :, h] = replacement[layer, :, h]
            return z

        return hook

    hooks = [(model.hook_z(layer), patch(layer)) for layer in range(model.layout.n_layers)]
    with torch.no_grad():
        return model.bridge.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]


def _replacements(model, pos_rows, neg_rows, kind):
    """Per clean row, the z its ablated heads get, computed prompt by prompt."""
    if kind == "corrupt":
        return [_z_alone(model, t) for t in neg_rows]
    zs = torch.stack([_z_alone(model, t) for t in torch.cat([pos_rows, neg_rows])])
    value = zs.mean(0) if kind == "mean" else torch.zeros_like(zs[0])
    return [value] * len(pos_rows)


@pytest.mark.parametrize("kind", ABLATIONS)
def test_batched_evaluator_matches_prompt_by_prompt_reference(toy, kind):
    prompts = _toy_prompts()
    n_total = toy.layout.n_total
    g = torch.Generator().manual_seed(1)
    masks = torch.cat([random_masks(n_total, k, 2, generator=g) for k in (1, 3, 6)])
    masks = torch.cat([masks, torch.zeros(1, n_total, dtype=torch.bool), torch.ones(1, n_total, dtype=torch.bool)])
    ev = CircuitEvaluator.build(toy, prompts, ablation=kind, metrics=["logit_diff", "kl"], max_rows=16)
    fast = ev.evaluate(masks)
    repl = _replacements(toy, prompts.positive, prompts.negative, kind)
    clean = [toy.bridge(t[None])[0, -1].detach() for t in prompts.positive]
    for c, keep in enumerate(masks):
        for i, tokens in enumerate(prompts.positive):
            logits = _logits_alone(toy, tokens, keep, repl[i])[-1]
            ld = logits[prompts.answers[i]] - logits[prompts.wrong_answers[i]]
            kl = M.kl_divergence(logits[None], clean[i].log_softmax(-1)[None])
            assert fast["logit_diff"][c, i].item() == pytest.approx(ld.item(), abs=1e-4)
            assert fast["kl"][c, i].item() == pytest.approx(kl.item(), abs=1e-4)


@pytest.mark.parametrize("kind", ABLATIONS)
def test_two_digit_year_rows_match_reference(toy, kind):
    """Greater-than on a digit tokenizer: each prompt + each digit, ablated with the same suffix."""
    digits = list(range(40, 50))
    prompts = _toy_prompts(n=3, metric="prob_diff", yy=[12, 50, 97], eval_suffix_ids=digits,
                           year_reading="two-digit")
    ev = CircuitEvaluator.build(toy, prompts, ablation=kind, max_rows=40)
    assert ev.group == 10 and ev.metrics == ["prob_diff", "cutoff_sharpness", "kl"]
    keep = circuit_mask(toy.layout, ["L0H1", "L1H3", "L1H0"])[None]
    fast = ev.evaluate(keep)
    ext = lambda t: torch.stack([torch.cat([t, torch.tensor([d])]) for d in digits])  # noqa: E731
    pos_ext = torch.cat([ext(t) for t in prompts.positive])
    neg_ext = torch.cat([ext(t) for t in prompts.negative])
    repl = _replacements(toy, pos_ext, neg_ext, kind)
    for i in range(3):
        rows = [_logits_alone(toy, pos_ext[10 * i + d], keep[0], repl[10 * i + d]) for d in range(10)]
        first = rows[0][-2][None]  # P(d1 | prompt): the prompt's last position
        second = torch.stack([r[-1] for r in rows])[None]  # P(d2 | prompt, d1)
        probs = M.two_digit_year_probs(first, second, digits)
        yy = torch.tensor([prompts.metadata["yy"][i]])
        assert fast["prob_diff"][0, i].item() == pytest.approx(M.greater_than_prob_diff(probs, yy).item(), abs=1e-5)
        assert fast["cutoff_sharpness"][0, i].item() == pytest.approx(M.cutoff_sharpness(probs, yy).item(), abs=1e-5)


def test_grouped_cache_equals_the_plain_one(toy):
    prompts = _toy_prompts(n=2)
    from circuitscan.evaluation.intervention import expand_with_suffixes

    tokens, _ = expand_with_suffixes(prompts.positive, None, [5, 6, 7])
    plain = cache_heads(toy, tokens, with_logits=False)
    grouped = cache_heads(toy, tokens, with_logits=False, group=3, prefix=prompts.seq_len)
    assert grouped.z.shape[0] == 2 and grouped.z_suffix.shape[2] == 1
    assert torch.allclose(grouped.full_z(), plain.z, atol=1e-5)
    assert torch.allclose(grouped.full_z(torch.tensor([4]), layer=1), plain.z[4:5, 1], atol=1e-5)


# --------------------------------------------------------------------------- exact identities


def _plain_ld(model, tokens, prompts):
    with torch.no_grad():
        logits = model.bridge(tokens)[:, -1]
    return M.logit_diff(logits, prompts.answers, prompts.wrong_answers)


@pytest.mark.parametrize("kind", ABLATIONS)
def test_all_heads_is_the_clean_model_and_no_heads_the_ablated_one(planted, planted_prompts, kind):
    p = planted_prompts
    ev = CircuitEvaluator.build(planted, p, ablation=kind)
    n_total = planted.layout.n_total
    out = ev.evaluate(torch.stack([torch.ones(n_total, dtype=torch.bool), torch.zeros(n_total, dtype=torch.bool)]))
    clean = _plain_ld(planted, p.positive, p)
    assert torch.allclose(out["logit_diff"][0], clean, atol=1e-4)
    assert torch.allclose(ev.clean["logit_diff"], clean, atol=1e-4)
    assert torch.equal(out["logit_diff"][1], ev.empty["logit_diff"])
    assert out["kl"][0].abs().max() < 1e-5
    # what "no heads" must equal, worked out from how the planted model is built
    if kind == "corrupt":  # only the planted heads write what the unembedding reads
        expected = _plain_ld(planted, p.negative, p)
        assert torch.allclose(ev.corrupted_input["logit_diff"], expected, atol=1e-4)
    elif kind == "zero":
        expected = torch.zeros(p.n_positive)
    else:  # no layer norm, uniform attention: the read-out is linear in z, so mean z -> mean LD
        everything = torch.cat([_plain_ld(planted, p.positive, p), _plain_ld(planted, p.negative, p)])
        expected = torch.full((p.n_positive,), float(everything.mean()))
    assert torch.allclose(out["logit_diff"][1], expected, atol=1e-3)


def test_replacing_z_replaces_exactly_that_heads_output(toy):
    """hook_z replacement changes the attention output by (z' - z) W_O of that head only."""
    tokens = _toy_prompts(n=3).positive
    layer, head = 1, 2
    got: dict[str, torch.Tensor] = {}
    z_new = torch.randn(3, tokens.shape[1], toy.d_head, generator=torch.Generator().manual_seed(5))

    def keep_z(z, hook):
        got["z"] = z.detach().clone()
        return z

    def swap(z, hook):
        z = z.clone()
        z[:, :, head] = z_new
        return z

    def grab(name):
        def hook(x, hook):
            got[name] = x.detach().clone()
            return x

        return hook

    out_name = f"blocks.{layer}.attn.hook_out"
    with torch.no_grad():
        toy.bridge.run_with_hooks(tokens, fwd_hooks=[(toy.hook_z(layer), keep_z), (out_name, grab("clean"))])
        toy.bridge.run_with_hooks(tokens, fwd_hooks=[(toy.hook_z(layer), swap), (out_name, grab("patched"))])
    w_o = toy.bridge.W_O[layer, head].detach()
    expected = (z_new - got["z"][:, :, head]) @ w_o
    assert torch.allclose(got["patched"] - got["clean"], expected, atol=1e-5)


def test_float_masks_interpolate_and_carry_gradients(toy):
    prompts = _toy_prompts(n=4)
    source = ablation_source(toy, prompts, "corrupt")
    n_total = toy.layout.n_total
    ones = torch.ones(1, n_total)
    with torch.no_grad():
        clean = toy.bridge(prompts.positive)
        with heads_ablated(toy, ones, source) as bridge:
            same = bridge(prompts.positive)
        with heads_ablated(toy, torch.zeros(1, n_total), source) as bridge:
            float_none = bridge(prompts.positive)
    assert torch.allclose(same, clean, atol=1e-5)
    bool_none = run_with_heads(toy, prompts.positive, torch.zeros(1, n_total, dtype=torch.bool), source,
                               positions="all")[0]
    assert torch.allclose(float_none, bool_none, atol=1e-5)
    keep = torch.full((1, n_total), 0.5, requires_grad=True)
    with heads_ablated(toy, keep, source) as bridge:
        bridge(prompts.positive)[:, -1, 3].sum().backward()
    assert keep.grad is not None and keep.grad.abs().sum() > 0


def test_one_pass_serves_many_circuits_and_duplicates_run_once(planted, planted_prompts):
    ev = CircuitEvaluator.build(planted, planted_prompts, ablation="corrupt", max_rows=80)
    before = ev.stats.forward_passes, ev.stats.rows
    masks = random_masks(12, 4, 5, generator=torch.Generator().manual_seed(0))
    out = ev.evaluate(torch.cat([masks, masks]))  # 5 distinct circuits, twice
    assert torch.equal(out["logit_diff"][:5], out["logit_diff"][5:])
    # 40 prompts per circuit, 2 circuits per pass (80 rows) -> 3 passes for 5 circuits
    assert ev.stats.forward_passes - before[0] == 3
    assert ev.stats.rows - before[1] == 5 * 40


@pytest.mark.parametrize("kind", ABLATIONS)
def test_circuits_seen_in_an_earlier_call_are_not_run_again(toy, kind):
    """Values are kept across calls (table, curves, the empty baseline): only new circuits cost passes,
    and what comes back equals a fresh evaluator's; keeping every head is the clean model, free."""
    prompts = _toy_prompts()
    n_total = toy.layout.n_total
    g = torch.Generator().manual_seed(2)
    first = torch.cat([random_masks(n_total, k, 3, generator=g) for k in (2, 5)])
    second = torch.cat([first[:4], random_masks(n_total, 3, 2, generator=g)])
    ev = CircuitEvaluator.build(toy, prompts, ablation=kind, metrics=["logit_diff", "kl"], max_rows=12)
    ev.evaluate(first)
    before = ev.stats.circuits, ev.stats.rows
    got = ev.evaluate(second)
    assert ev.stats.circuits - before[0] == len(torch.unique(second[4:], dim=0))
    assert ev.stats.rows - before[1] == (ev.stats.circuits - before[0]) * prompts.n_positive
    fresh = CircuitEvaluator.build(toy, prompts, ablation=kind, metrics=["logit_diff", "kl"], max_rows=12)
    want = fresh.evaluate(second)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5)
    before = ev.stats.forward_passes, ev.stats.circuits
    every = ev.evaluate(torch.ones(2, n_total, dtype=torch.bool))
    assert (ev.stats.forward_passes, ev.stats.circuits) == before
    assert torch.equal(every["logit_diff"][1], ev.clean["logit_diff"])
    hooked = fresh._run(torch.ones(1, n_total, dtype=torch.bool), fresh.n)  # what a pass with every head kept gives
    assert torch.allclose(every["logit_diff"][0], hooked["logit_diff"][0], atol=1e-5)


def test_bfloat16_evaluation_is_the_float32_one_to_bfloat16_rounding(toy):
    prompts = _toy_prompts()
    masks = random_masks(toy.layout.n_total, 4, 5, generator=torch.Generator().manual_seed(3))
    ev32 = CircuitEvaluator.build(toy, prompts, metrics=["logit_diff", "kl"])
    ev16 = CircuitEvaluator.build(toy, prompts, metrics=["logit_diff", "kl"], precision="bf16")
    a, b = ev32.evaluate(masks), ev16.evaluate(masks)
    span = float((ev32.clean["logit_diff"] - ev32.empty["logit_diff"]).abs().mean())
    for name in a:
        assert b[name].dtype == torch.float32
        assert torch.allclose(a[name], b[name], atol=0.02 * span + 0.02), name
    assert not torch.equal(a["logit_diff"], b["logit_diff"])  # it did run in bfloat16
    assert ev16.describe()["precision"] == "bf16" and ev32.describe()["precision"] == "fp32"
    with pytest.raises(CircuitscanError, match="precision 'half' is not one of fp32, bf16"):
        CircuitEvaluator.build(toy, prompts, precision="half")


def test_bad_inputs_are_clear_errors(planted, planted_prompts):
    with pytest.raises(CircuitscanError, match="ablation 'resample' is not one of corrupt, mean, zero"):
        CircuitEvaluator.build(planted, planted_prompts, ablation="resample")
    with pytest.raises(CircuitscanError, match="n_examples must be in 1..40"):
        CircuitEvaluator.build(planted, planted_prompts, n_examples=41)
    with pytest.raises(CircuitscanError, match="prob_diff"):
        CircuitEvaluator.build(planted, planted_prompts, metrics=["prob_diff"])
    unpaired = PromptSet(task="u", positive=planted_prompts.positive[:4], negative=planted_prompts.negative[:3],
                         answers=planted_prompts.answers[:4], wrong_answers=planted_prompts.wrong_answers[:4])
    with pytest.raises(CircuitscanError, match="corrupted partner.*--ablation mean or zero"):
        CircuitEvaluator.build(planted, unpaired, ablation="corrupt")
    CircuitEvaluator.build(planted, unpaired, ablation="mean")  # fine without partners
    ev = CircuitEvaluator.build(planted, planted_prompts, n_examples=4)
    with pytest.raises(CircuitscanError, match="12 entries per circuit"):
        ev.evaluate(torch.ones(1, 11, dtype=torch.bool))
    with pytest.raises(CircuitscanError, match="L3H0 does not exist"):
        circuit_mask(planted.layout, ["L3H0"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["corrupt", "mean"])
def test_hf_path_evaluator_equals_bridge_path(gpt2_random, kind):
    from circuitscan.evaluation.intervention import CircuitEvaluator, random_masks
    from circuitscan.models.hf import bridge_only, hf_view
    from circuitscan.tasks import build_task

    assert hf_view(gpt2_random) is not None
    prompts = build_task("ioi", gpt2_random, 4, seed=0)
    keep = random_masks(144, 72, 3, generator=torch.Generator().manual_seed(0))
    fast = CircuitEvaluator.build(gpt2_random, prompts, ablation=kind)
    with bridge_only(gpt2_random):
        slow = CircuitEvaluator.build(gpt2_random, prompts, ablation=kind)
        ref = slow.evaluate(keep)
    got = fast.evaluate(keep)
    if kind == "corrupt":  # IOI pairs differ only late: the first positions run once, unhooked
        assert int(fast.shared.min()) >= 2
        fast.prefix_sharing = False
        unshared = fast.evaluate(keep)
        fast.prefix_sharing = True
        for name in ref:
            assert torch.allclose(unshared[name], ref[name], atol=1e-4, rtol=1e-4)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-4, rtol=1e-4)
        assert torch.allclose(fast.clean[name], slow.clean[name], atol=1e-4, rtol=1e-4)


def test_shared_prefix_lengths_known_answer():
    from circuitscan.evaluation.intervention import shared_prefix_lengths

    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]])
    b = torch.tensor([[1, 2, 9, 4], [1, 2, 3, 4], [0, 6, 7, 8]])
    assert shared_prefix_lengths(a, b, None, None).tolist() == [2, 4, 0]
    mask_b = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    assert shared_prefix_lengths(a, b, None, mask_b).tolist() == [2, 0, 0]


def test_toy_models_run_without_a_shared_prefix(planted, planted_prompts):
    # planted pairs differ at the signal token; the toy has no Hugging Face view, so the
    # evaluator computes the shared lengths but runs every position (bridge path)
    from circuitscan.evaluation.intervention import CircuitEvaluator
    from circuitscan.models.hf import hf_view

    ev = CircuitEvaluator.build(planted, planted_prompts, ablation="corrupt")
    assert hf_view(planted) is None and ev.shared is not None
    assert not ev._prefixes.has_view() and ev._prefix(1, ev.tokens, ev.mask, torch.arange(ev.tokens.shape[0])) is None


def test_build_counts_its_seconds_once(planted, planted_prompts):
    """build's seconds are its wall time; the empty circuit's evaluate() inside it is not added twice."""
    import time

    from circuitscan.evaluation.intervention import CircuitEvaluator

    t = time.perf_counter()
    ev = CircuitEvaluator.build(planted, planted_prompts, ablation="corrupt")
    assert 0 < ev.stats.seconds <= time.perf_counter() - t
