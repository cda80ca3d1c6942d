"""EAP, EAP-IG and HISP against known answers: brute-force derivatives, exact patching.

* On toy-random (layer norm, real attention: nonlinear), EAP's node score of a head is
  the derivative of the metric along the straight line from the head's clean value to
  its ablated value. Brute force: that derivative through the evaluation module's own
  float-mask hooks (an independent code path), and by finite differences.
* On toy-planted (no norm, uniform attention: the metric is linear in every head's
  output), the first-order estimate is exact: EAP equals exact activation patching, for
  nodes and for every single edge.
"""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.methods._setup import BaselineConfig, build_objective
from circuitscan.methods.eap import EAPConfig, attribute, eap_scores
from circuitscan.methods.eap_ig import EAPIGConfig, eap_ig_scores
from circuitscan.methods.edges import EdgeForward, EdgeGraph, removed_all, run_edges
from circuitscan.methods.hisp import HISPConfig, hisp_scores
from circuitscan.methods.patching import PatchingConfig, patching_scores
from circuitscan.types import PromptSet


@pytest.fixture(scope="module")
def toy():
    from circuitscan.models import load_model

    return load_model("toy-random", seed=1)


@pytest.fixture(scope="module")
def toy_prompts():
    g = torch.Generator().manual_seed(3)
    n, seq = 6, 7
    return PromptSet(
        task="toy", positive=torch.randint(1, 64, (n, seq), generator=g),
        negative=torch.randint(1, 64, (n, seq), generator=g),
        answers=torch.randint(0, 64, (n, 1), generator=g), wrong_answers=torch.randint(0, 64, (n, 1), generator=g),
    )


def _goodness_of_gates(model, obj, keep):
    """Mean goodness with head gates ``keep`` [n_heads] (float, differentiable), via the
    evaluation module's interpolating mask hooks."""
    from circuitscan.evaluation.intervention import head_mask_hooks

    hooks = head_mask_hooks(model, keep[None], obj.source, rows=torch.arange(obj.n))
    logits = obj.logits(obj.tokens, obj.mask, hooks)
    return obj.goodness(logits, torch.arange(obj.n)).mean()


@pytest.mark.parametrize("ablation", ["corrupt", "zero", "mean"])
def test_eap_nodes_equal_the_brute_force_derivative(toy, toy_prompts, ablation):
    cfg = EAPConfig(ablation=ablation, edges=False, batch_size=4)
    scores = eap_scores(toy, toy_prompts, cfg)
    signed = scores.stats["signed"].flatten()

    obj = build_objective(toy, toy_prompts, BaselineConfig(ablation=ablation))
    n_total = toy.layout.n_total
    keep = torch.ones(n_total, requires_grad=True)
    for p in toy.bridge.parameters():
        p.requires_grad_(False)
    try:
        (grad,) = torch.autograd.grad(_goodness_of_gates(toy, obj, keep), keep)
        # gate 1 -> 0 moves the head from clean to ablated: EAP's estimate is -d/dgate
        assert torch.allclose(signed, -grad, rtol=1e-4, atol=1e-5)
        # and by finite differences, one head at a time (float64 would be tighter; float32 needs eps ~1e-2)
        eps = 1e-2
        with torch.no_grad():
            for h in range(n_total):
                up, down = torch.ones(n_total), torch.ones(n_total)
                down[h] = 1 - eps
                up[h] = 1 + eps
                fd = (_goodness_of_gates(toy, obj, up) - _goodness_of_gates(toy, obj, down)) / (2 * eps)
                assert abs(float(-fd) - float(signed[h])) <= 2e-3 * max(1.0, abs(float(signed[h])))
    finally:
        for p in toy.bridge.parameters():
            p.requires_grad_(True)
    assert torch.equal(scores.flat, signed.abs())
    assert signed.abs().max() > 1e-3  # the test would be empty otherwise
    # 2 batches: one gradient pass each, plus caching the ablated values (none for zero; mean reads
    # positives and negatives); the clean embedding lookup is not a pass through the model
    assert scores.backward_passes == 2
    assert scores.forward_passes == {"corrupt": 4, "zero": 2, "mean": 6}[ablation]


def test_eap_with_kl_differentiates_at_the_ablated_point(toy, toy_prompts):
    scores = eap_scores(toy, toy_prompts, EAPConfig(metric="kl", edges=False))
    assert scores.stats["gradient_at"] == "corrupted"
    # brute force: run the model on the corrupted prompts (every head and the input at their
    # ablated values, later heads responding naturally) and push each head by k (clean - ablated);
    # EAP at the ablated point estimates -d metric / dk at k = 0
    obj = build_objective(toy, toy_prompts, BaselineConfig(metric="kl"), keep_clean_z=True)
    L, H = toy.layout.n_layers, toy.layout.n_heads
    k = torch.zeros(L, H, requires_grad=True)
    rows = slice(0, obj.n)

    def make(layer):
        def hook(z, hook):
            push = obj.clean_z[:, layer] - obj.source_z(layer, rows)
            return z + (k[layer][None, None, :, None] * push).reshape(z.shape)

        return hook

    hooks = [(toy.hook_z(layer), make(layer)) for layer in range(L)]
    for p in toy.bridge.parameters():
        p.requires_grad_(False)
    try:
        logits = obj.logits(obj.corrupt_tokens, obj.corrupt_mask, hooks)
        (grad,) = torch.autograd.grad(obj.goodness(logits, torch.arange(obj.n)).mean(), k)
    finally:
        for p in toy.bridge.parameters():
            p.requires_grad_(True)
    assert torch.allclose(scores.stats["signed"], -grad, rtol=1e-4, atol=1e-6)
    assert scores.flat.max() > 1e-4
    # at the clean model the gradient of KL vanishes: the reason for the ablated point
    clean_point = eap_scores(toy, toy_prompts, EAPConfig(metric="kl", edges=False, gradient_at="clean"))
    assert clean_point.flat.abs().max() < 1e-5


def test_eap_equals_exact_patching_on_the_linear_model(planted, planted_prompts):
    for ablation in ("corrupt", "mean", "zero"):
        eap = eap_scores(planted, planted_prompts, EAPConfig(ablation=ablation, batch_size=16))
        exact = patching_scores(planted, planted_prompts, PatchingConfig(ablation=ablation))
        assert torch.allclose(eap.stats["signed"], exact.stats["signed"], rtol=1e-4, atol=1e-4), ablation
        assert exact.stats["signed"].abs().max() > 1.0


def test_eap_edges_equal_exact_edge_patching_on_the_linear_model(planted, planted_prompts):
    obj = build_objective(planted, planted_prompts, BaselineConfig(batch_size=40))
    att = attribute(obj, edges=True)
    graph = att.graph
    estimate = att.edges / obj.n
    fwd = EdgeForward(planted, graph)
    pairs = graph.edge_index()
    removed = torch.zeros(len(pairs), graph.n_senders, graph.n_receivers, dtype=torch.bool)
    for i, (s, r) in enumerate(pairs):
        removed[i, s, r] = True
    none = torch.zeros(1, graph.n_senders, graph.n_receivers, dtype=torch.bool)
    values = run_edges(obj, fwd, torch.cat([none, removed]))
    exact = values[1:].mean(-1) - values[0].mean()
    got = torch.tensor([float(estimate[s, r]) for s, r in pairs])
    assert torch.allclose(got, exact, rtol=1e-3, atol=1e-3)
    assert exact.abs().max() > 1.0


def test_edge_scores_sum_to_the_node_score_in_an_attention_only_model(toy, toy_prompts):
    """Chain rule: a head's output reaches the metric only through the receivers' inputs."""
    obj = build_objective(toy, toy_prompts, BaselineConfig())
    att = attribute(obj, edges=True)
    node = att.node.sum(0).flatten()
    out_sums = att.edges[1:].sum(1)  # senders 1.. are the heads
    assert torch.allclose(out_sums, node, rtol=1e-4, atol=1e-5)


def test_edge_forward_reproduces_clean_and_corrupted_runs(toy, toy_prompts):
    from circuitscan.evaluation.intervention import logits_at

    obj = build_objective(toy, toy_prompts, BaselineConfig(batch_size=4))
    graph = EdgeGraph.for_model(toy)
    fwd = EdgeForward(toy, graph)
    none = torch.zeros(1, graph.n_senders, graph.n_receivers, dtype=torch.bool)
    values = run_edges(obj, fwd, torch.cat([none, removed_all(graph)]), verify=True)
    assert fwd.checked
    index = torch.arange(obj.n)
    with torch.no_grad():
        clean = obj.goodness(logits_at(toy, toy_prompts.positive, obj.positions), index)
        corrupt = obj.goodness(logits_at(toy, toy_prompts.negative, obj.positions), index)
    assert torch.allclose(values[0], clean, atol=1e-5)
    # every receiver reads only corrupted senders: in an attention-only model that IS the corrupted run
    assert torch.allclose(values[1], corrupt, atol=1e-4)
    assert not torch.allclose(clean, corrupt, atol=1e-2)


def test_eap_ig_with_one_step_is_eap_and_is_exact_on_the_linear_model(toy, toy_prompts, planted, planted_prompts):
    one = eap_ig_scores(toy, toy_prompts, EAPIGConfig(steps=1, batch_size=4))
    eap = eap_scores(toy, toy_prompts, EAPConfig(batch_size=4))
    assert torch.allclose(one.node, eap.node, atol=1e-6)
    assert one.edges.keys() == eap.edges.keys()
    assert max(abs(one.edges[k] - eap.edges[k]) for k in eap.edges) < 1e-5
    five = eap_ig_scores(toy, toy_prompts, EAPIGConfig(steps=5, batch_size=4))
    assert five.forward_passes == one.forward_passes + 4 * 2  # 4 more steps, 2 batches
    assert (one.backward_passes, five.backward_passes) == (2, 10)
    assert not torch.allclose(five.node, one.node, atol=1e-4)  # the path matters in a nonlinear model
    lin = eap_ig_scores(planted, planted_prompts, EAPIGConfig(steps=4))
    lin_eap = eap_scores(planted, planted_prompts, EAPConfig())
    assert torch.allclose(lin.node, lin_eap.node, rtol=1e-4, atol=1e-4)


def test_hisp_is_the_mean_absolute_per_example_attribution(toy, toy_prompts):
    raw = hisp_scores(toy, toy_prompts, HISPConfig(normalise=False))
    obj = build_objective(toy, toy_prompts, BaselineConfig())
    att = attribute(obj, edges=False)
    assert torch.allclose(raw.node, att.node.abs().mean(0), atol=1e-6)
    # per example absolute values first: at least the mean of the signed values
    assert bool((raw.node >= att.node.mean(0).abs() - 1e-6).all())
    norm = hisp_scores(toy, toy_prompts, HISPConfig())
    assert torch.allclose(norm.node.norm(dim=1), torch.ones(toy.layout.n_layers), atol=1e-5)


def test_bad_configs_are_user_errors():
    with pytest.raises(CircuitscanError, match="ablation"):
        EAPConfig(ablation="resample")
    with pytest.raises(CircuitscanError, match="gradient_at"):
        EAPConfig(gradient_at="middle")
    with pytest.raises(CircuitscanError, match="step"):
        EAPIGConfig(steps=0)
    with pytest.raises(CircuitscanError, match="n_examples"):
        HISPConfig(n_examples=0)


def test_an_unknown_metric_is_a_user_error(planted, planted_prompts):
    with pytest.raises(CircuitscanError, match="metric"):
        eap_scores(planted, planted_prompts, EAPConfig(metric="accuracy"))
    with pytest.raises(CircuitscanError, match="prob_diff"):
        eap_scores(planted, planted_prompts, EAPConfig(metric="prob_diff"))


def test_metrics_that_read_suffix_tokens_are_handled_like_the_evaluator(toy, toy_prompts):
    """Greater-than on a digit tokenizer reads P(d1) P(d2 | d1): each prompt runs once per digit."""
    from dataclasses import replace

    from circuitscan.evaluation.intervention import CircuitEvaluator, head_mask_hooks

    n = toy_prompts.n_positive
    prompts = replace(toy_prompts, metadata={"metric": "prob_diff", "eval_suffix_ids": list(range(10, 20)),
                                             "yy": [5 * i + 20 for i in range(n)]})
    obj = build_objective(toy, prompts, BaselineConfig(batch_size=4))
    assert obj.group == 10 and obj.tokens.shape == (n * 10, toy_prompts.seq_len + 1)
    ev = CircuitEvaluator.build(toy, prompts, metrics=["prob_diff"])
    with torch.no_grad():
        clean = obj.goodness(obj.logits(obj.tokens, None, []), torch.arange(n))
    assert torch.allclose(clean, ev.clean["prob_diff"], atol=1e-6)

    scores = eap_scores(toy, prompts, EAPConfig(edges=False, batch_size=4))
    keep = torch.ones(toy.layout.n_total, requires_grad=True)
    for p in toy.bridge.parameters():
        p.requires_grad_(False)
    try:
        hooks = head_mask_hooks(toy, keep[None], obj.source, rows=torch.arange(obj.rows))
        value = obj.goodness(obj.logits(obj.tokens, None, hooks), torch.arange(n)).mean()
        (grad,) = torch.autograd.grad(value, keep)
    finally:
        for p in toy.bridge.parameters():
            p.requires_grad_(True)
    assert torch.allclose(scores.stats["signed"].flatten(), -grad, rtol=1e-4, atol=1e-7)
    assert grad.abs().max() > 0
    # batch_size bounds the rows of a pass: whole prompts of 10 rows, at least one
    assert (obj.examples_per_batch, obj.batch_rows) == (1, 10)
    assert build_objective(toy, prompts, BaselineConfig(batch_size=25)).batch_rows == 20
    big = eap_scores(toy, prompts, EAPConfig(edges=False, batch_size=10 * n))  # every prompt in one pass
    assert torch.allclose(big.stats["signed"], scores.stats["signed"], rtol=1e-4, atol=1e-7)
