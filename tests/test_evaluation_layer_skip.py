"""Circuit passes start at their circuits' first kept layer, from the empty circuit's captured
residual stream (:mod:`circuitscan.evaluation.layer_skip`): the values equal those of passes
that run every layer, fewer layers run, and a model where starting half-way is wrong is caught."""

from __future__ import annotations

import pytest
import torch

from circuitscan.evaluation import layer_skip
from circuitscan.evaluation.layer_skip import SkipCache, first_layers, pass_order, plan_passes
from circuitscan.types import HeadLayout

N_LAYERS = 4


def test_first_layers_and_order_known_answer():
    layout = HeadLayout(3, 2)
    keep = torch.tensor([[0, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    starts = first_layers(keep, layout)
    assert starts.tolist() == [1, 0, 2, 2]  # the empty circuit: the last layer
    assert pass_order(starts).tolist() == [2, 3, 0, 1]  # latest first, ties in index order


def test_plan_passes_known_answer():
    starts = [5, 5, 3, 0]
    # no pass overhead: every start its own pass; a huge one: as few passes as per_pass allows
    assert plan_passes(starts, rows=10, per_pass=4, n_layers=6, overhead=0) == [(0, 2), (2, 3), (3, 4)]
    assert plan_passes(starts, rows=10, per_pass=4, n_layers=6, overhead=1e9) == [(0, 4)]
    # two passes forced: [5, 5] + [3, 0] runs 10 * (2 * 1 + 2 * 6) = 140 row-layers, [5] + [5, 3, 0] 190,
    # [5, 5, 3] + [0] 150
    assert plan_passes(starts, rows=10, per_pass=3, n_layers=6, overhead=1e9) == [(0, 2), (2, 4)]
    # overhead 25 rows x layers: [5, 5, 3] together costs 25 + 10*3*3 = 115, split 25+20 + 25+30 = 100
    assert plan_passes(starts[:3], rows=10, per_pass=4, n_layers=6, overhead=25) == [(0, 2), (2, 3)]
    assert plan_passes(starts[:3], rows=10, per_pass=4, n_layers=6, overhead=40) == [(0, 3)]
    assert plan_passes([], rows=10, per_pass=4, n_layers=6) == []


def test_skip_cache_merges_rows_and_keeps_to_its_budget(monkeypatch):
    cache = SkipCache()
    h = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).reshape(2, 3, 1, 2)  # 2 layers, rows 0, 2, 4
    assert cache.put(5, torch.tensor([0, 2, 4]), h)
    assert cache.get(5, torch.tensor([1])) is None and cache.get(4, torch.tensor([0])) is None
    assert torch.equal(cache.get(5, torch.tensor([2, 4])), h[:, 1:])
    g = -h[:, :2]
    assert cache.put(5, torch.tensor([1, 2]), g)  # row 2 again: the first kept
    assert cache.cached[5][0].tolist() == [0, 1, 2, 4]
    assert torch.equal(cache.get(5, torch.tensor([1, 2])), torch.stack([g[:, 0], h[:, 1]], 1))
    monkeypatch.setattr(layer_skip, "SKIP_BUDGET", cache.nbytes + 1)
    assert not cache.put(6, torch.tensor([0]), h[:, :1])  # over the budget: nothing kept
    assert 6 not in cache.cached


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory):
    from conftest import tiny_llama_model

    return tiny_llama_model(tmp_path_factory.mktemp("tiny-llama-4"), n_layers=N_LAYERS)


def _prompts(n: int = 12, seq: int = 7, shared: int = 3):
    from circuitscan.types import PromptSet

    g = torch.Generator().manual_seed(2)
    pos = torch.randint(3, 64, (n, seq), generator=g)
    neg = pos.clone()
    neg[:, shared:] = (pos[:, shared:] + 1 + torch.randint(0, 59, (n, seq - shared), generator=g)) % 61 + 3
    ans = torch.randint(3, 64, (n, 2), generator=g)
    return PromptSet(task="skip", positive=pos, negative=neg, answers=ans[:, :1], wrong_answers=ans[:, 1:])


def _late_circuits(layout: HeadLayout, n: int = 16) -> torch.Tensor:
    """Circuits whose first kept layer is spread over every layer (4 per layer)."""
    g = torch.Generator().manual_seed(3)
    keep = torch.zeros(n, layout.n_layers, layout.n_heads, dtype=torch.bool)
    for c in range(n):
        first = c % layout.n_layers
        keep[c, first, int(torch.randint(layout.n_heads, (1,), generator=g))] = True
        keep[c, first:] |= torch.rand(layout.n_layers - first, layout.n_heads, generator=g) < 0.4
    return keep.reshape(n, -1)


@pytest.mark.parametrize("ablation", ["corrupt", "mean"])
def test_skipping_equals_running_every_layer(deep_llama, ablation):
    from circuitscan.evaluation import CircuitEvaluator

    prompts = _prompts()
    keep = _late_circuits(deep_llama.layout)
    fast = CircuitEvaluator.build(deep_llama, prompts, ablation=ablation, metrics=["logit_diff", "kl"], max_rows=64)
    slow = CircuitEvaluator.build(deep_llama, prompts, ablation=ablation, metrics=["logit_diff", "kl"], max_rows=64,
                                  layer_skip=False)
    assert fast._skip is not None and slow._skip is None
    for name in fast.metrics:  # the empty circuit from the capturing pass
        assert torch.allclose(fast.empty[name], slow.empty[name], atol=1e-5, rtol=1e-5)
    before = fast.stats.layer_rows, slow.stats.layer_rows
    got, ref = fast.evaluate(keep), slow.evaluate(keep)
    assert not torch.allclose(ref["logit_diff"], ref["logit_diff"][:1].expand_as(ref["logit_diff"]), atol=1e-3)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-5, rtol=1e-5)
    ran, full = fast.stats.layer_rows - before[0], slow.stats.layer_rows - before[1]
    distinct = len(torch.unique(keep, dim=0))
    assert full == distinct * 12 * N_LAYERS and ran < 0.8 * full  # about 4 circuits start at each of the 4 layers


def test_a_capture_is_made_for_a_block_the_empty_circuit_did_not_run(deep_llama):
    """Prompts grouped differently from the empty circuit's blocks (no prefix sharing) get their own
    capture when they run enough circuits, and the values still equal the full passes'."""
    from circuitscan.evaluation import CircuitEvaluator

    prompts = _prompts()
    keep = _late_circuits(deep_llama.layout)
    ev = CircuitEvaluator.build(deep_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    assert sorted(ev._skip.cached) == [3]
    ev.prefix_sharing = False  # the whole sequence: length 0, not captured yet
    got = ev.evaluate(keep)["logit_diff"]
    assert sorted(ev._skip.cached) == [0, 3]
    ref = CircuitEvaluator.build(deep_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64,
                                 layer_skip=False).evaluate(keep)["logit_diff"]
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_over_the_budget_no_capture_is_made_and_every_layer_runs(deep_llama, monkeypatch):
    """A capture that would pass SKIP_BUDGET is not run (no pass spent on it), and the values
    stay those of full passes."""
    from circuitscan.evaluation import CircuitEvaluator

    prompts = _prompts()
    keep = _late_circuits(deep_llama.layout)
    monkeypatch.setattr(layer_skip, "SKIP_BUDGET", 0)
    ev = CircuitEvaluator.build(deep_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    assert ev._skip is None  # nothing captured in the empty circuit's pass: no start to check
    ref = CircuitEvaluator.build(deep_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64,
                                 layer_skip=False)
    passes = ev.stats.forward_passes, ref.stats.forward_passes
    got, want = ev.evaluate(keep)["logit_diff"], ref.evaluate(keep)["logit_diff"]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert ev.stats.forward_passes - passes[0] == ref.stats.forward_passes - passes[1]


def test_a_wrong_start_is_caught_and_every_layer_runs(deep_llama, monkeypatch):
    """When a pass started half-way does not give the full pass's logits (here: a capture that
    stores the wrong residual stream), the evaluator runs every layer and its values stay right."""
    from circuitscan.evaluation import CircuitEvaluator

    real = SkipCache.put
    monkeypatch.setattr(SkipCache, "put", lambda self, length, rows, hidden: real(self, length, rows, 2 * hidden))
    prompts = _prompts()
    ev = CircuitEvaluator.build(deep_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    assert ev._skip is None
    keep = _late_circuits(deep_llama.layout)
    ref = CircuitEvaluator.build(deep_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64,
                                 layer_skip=False).evaluate(keep)["logit_diff"]
    assert torch.allclose(ev.evaluate(keep)["logit_diff"], ref, atol=1e-5, rtol=1e-5)


def test_toy_models_without_a_hugging_face_view_run_every_layer(planted, planted_prompts):
    from circuitscan.evaluation import CircuitEvaluator

    ev = CircuitEvaluator.build(planted, planted_prompts, n_examples=4)
    assert ev._skip is None
    ev.evaluate(_late_circuits(planted.layout, 6))
    assert ev.stats.layer_rows == (1 + 6) * 4 * planted.layout.n_layers


@pytest.mark.slow
def test_gpt2_layer_skip_equals_the_bridge_path(gpt2_random):
    """GPT-2's blocks (position embeddings added before the first block, tuple-free layers in this
    transformers) start half-way correctly: equal to the bridge's whole passes."""
    from circuitscan.evaluation import CircuitEvaluator
    from circuitscan.models.hf import bridge_only
    from circuitscan.tasks import build_task

    prompts = build_task("ioi", gpt2_random, 4, seed=0)
    keep = _late_circuits(gpt2_random.layout, 8)
    fast = CircuitEvaluator.build(gpt2_random, prompts)
    assert fast._skip is not None
    with bridge_only(gpt2_random):
        ref = CircuitEvaluator.build(gpt2_random, prompts).evaluate(keep)
    got = fast.evaluate(keep)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-4, rtol=1e-4)


def test_the_empty_circuit_at_another_precision_runs_at_that_precision(deep_llama):
    """The capturing pass runs at the base precision, so its logits stand for m(empty) only there:
    asked in bf16 on a block with no capture yet (here: the whole sequence, prefix sharing off),
    the empty circuit runs in bf16 (close to, not equal to, fp32)."""
    from circuitscan.evaluation import CircuitEvaluator

    ev = CircuitEvaluator.build(deep_llama, _prompts(), ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    empty = torch.zeros(1, deep_llama.layout.n_total, dtype=torch.bool)
    ev.prefix_sharing = False
    got = ev.evaluate(empty, precision="bf16")["logit_diff"][0]
    assert torch.allclose(got, ev.empty["logit_diff"], atol=0.1)
    assert not torch.equal(got, ev.empty["logit_diff"])
