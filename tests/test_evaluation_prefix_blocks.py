"""The evaluator's prompts run in blocks of one shared-prefix length, each length's prefix cached
once and its rows handed to smaller blocks: the values equal those of the unshared path."""

from __future__ import annotations

import pytest
import torch

from circuitscan.evaluation.prefix_blocks import MIN_BLOCK, example_lengths, prefix_blocks

SEQ = 8
SHARED = [3] * 10 + [5] * 12 + [6] * 2  # 24 prompts; the 2 that share 6 join the 5s (fewer than MIN_BLOCK)


def test_prefix_blocks_known_answer():
    assert MIN_BLOCK == 8
    lengths = [3, 5, 5, 3, 5, 5, 5, 5, 5, 5, 6, 3]
    assert prefix_blocks(lengths, chunk=100) == [(3, [0, 3, 11]), (5, [1, 2, 4, 5, 6, 7, 8, 9, 10])]
    assert prefix_blocks(lengths, chunk=4) == [(3, [0, 3, 11]), (5, [1, 2, 4, 5]), (5, [6, 7, 8, 9]), (5, [10])]
    assert prefix_blocks([7, 7, 2], chunk=9, min_block=2) == [(2, [2]), (7, [0, 1])]  # the shortest stays alone
    assert prefix_blocks([0, 0, 0], chunk=2) == [(0, [0, 1]), (0, [2])]
    shared = torch.tensor([4, 6, 2, 9, 9, 9])  # 3 examples x group 2: each example's fewest, at most 5
    assert example_lengths(shared, 3, 2, 5) == [4, 2, 5] and example_lengths(None, 2, 1, 5) == [0, 0]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from conftest import tiny_llama_model

    return tiny_llama_model(tmp_path_factory.mktemp("tiny-llama"))


def _prompts():
    from circuitscan.types import PromptSet

    g = torch.Generator().manual_seed(1)
    pos = torch.randint(3, 64, (len(SHARED), SEQ), generator=g)
    neg = pos.clone()
    for i, s in enumerate(SHARED):  # the partner differs from position s on
        neg[i, s:] = (pos[i, s:] + 1 + torch.randint(0, 60, (SEQ - s,), generator=g)) % 61 + 3
    ans = torch.randint(3, 64, (len(SHARED), 2), generator=g)
    return PromptSet(task="blocks", positive=pos, negative=neg, answers=ans[:, :1], wrong_answers=ans[:, 1:])


def test_blocks_equal_the_unshared_path_and_reuse_prefixes(tiny_llama):
    from circuitscan.evaluation import CircuitEvaluator
    from circuitscan.evaluation.head_masks import random_masks

    prompts = _prompts()
    ev = CircuitEvaluator.build(tiny_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    assert ev.shared.tolist() == SHARED and ev._prefixes.has_view()
    assert sorted(ev._prefixes.cached) == [3, 5]  # the empty circuit ran the two blocks: one prefix each
    keep = random_masks(8, 4, 6, generator=torch.Generator().manual_seed(0))
    passes = ev.stats.forward_passes
    few = ev.evaluate(keep, 9)["logit_diff"]  # prompts 0..8 share 3: rows of the cached prefix, one circuit pass
    assert ev.stats.forward_passes - passes == 1
    passes = ev.stats.forward_passes
    got = ev.evaluate(keep)["logit_diff"]  # two blocks (3 and 5); 6 circuits x 14 rows: two passes for the 5s
    assert ev.stats.forward_passes - passes == 1 + 2
    ev2 = CircuitEvaluator.build(tiny_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    mixed = ev2.evaluate(keep, 16)["logit_diff"]  # 10 share 3, 6 share 5: one block at 3, a prefix of 16 rows
    ev.prefix_sharing = False
    ref = ev.evaluate(keep)["logit_diff"]
    ev.prefix_sharing = True
    assert not torch.allclose(ref, ref[:1].expand_as(ref), atol=1e-3)  # the circuits do differ
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(few, ref[:, :9], atol=1e-5, rtol=1e-5)
    assert torch.allclose(mixed, ref[:, :16], atol=1e-5, rtol=1e-5)


def test_baselines_through_the_shared_prefix_equal_whole_passes(tiny_llama):
    """The clean logits, the corrupted logits and every head's corrupted z (prefix
    positions from the clean pass, the rest from the corrupted pass after it) equal those of
    whole-sequence passes."""
    from circuitscan.evaluation import CircuitEvaluator
    from circuitscan.evaluation.forward import cache_heads

    prompts = _prompts()
    ev = CircuitEvaluator.build(tiny_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    # per block (3 and 5): the clean prompts (keeping the prefix), the corrupted ones after it; then
    # the empty circuit, one pass per block, from the kept prefixes (no prefix pass of its own), and
    # the layer-skip check: one prompt from half-way (.layer_skip)
    assert ev._skip is not None
    assert ev.stats.forward_passes == 2 * 2 + 2 + 1 and ev.stats.rows == 2 * 24 + 24 + 1
    clean = cache_heads(tiny_llama, prompts.positive, positions=ev.positions, with_z=False)
    corrupt = cache_heads(tiny_llama, prompts.negative, positions=ev.positions)
    assert torch.allclose(ev.source.cache.z, corrupt.z, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ev.source.cache.logits, corrupt.logits, atol=1e-5, rtol=1e-5)
    index = torch.arange(len(SHARED))
    # (not bit for bit: the blocks batch different prompts together than one whole pass does)
    assert torch.allclose(ev.clean["logit_diff"], ev._score(clean.logits, index)["logit_diff"], atol=1e-5, rtol=1e-5)
    assert torch.allclose(ev.corrupted_input["logit_diff"], ev._score(corrupt.logits, index)["logit_diff"], atol=1e-5)


def test_bf16_evaluation_runs_through_the_prefix_blocks(tiny_llama):
    """--eval-precision bf16 on the Hugging Face path with shared prefixes (the clean logits
    come back in bf16 and are kept in float32); close to the fp32 values."""
    from circuitscan.evaluation import CircuitEvaluator

    prompts = _prompts()
    ev16 = CircuitEvaluator.build(tiny_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64,
                                  precision="bf16")
    ev32 = CircuitEvaluator.build(tiny_llama, prompts, ablation="corrupt", metrics=["logit_diff"], max_rows=64)
    assert ev16.clean["logit_diff"].dtype == torch.float32
    assert torch.allclose(ev16.clean["logit_diff"], ev32.clean["logit_diff"], atol=0.1)
    assert not torch.equal(ev16.clean["logit_diff"], ev32.clean["logit_diff"])  # bf16 did run
