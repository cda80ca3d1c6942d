"""Greater-than year probabilities against a brute-force computation on a small random model."""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import TaskError
from circuitscan.tasks.greater_than import (
    cutoff_sharpness,
    greater_than_year_probs,
    probability_difference,
)
from circuitscan.types import PromptSet

VOCAB = 128
DIGITS = [40 + 3 * d for d in range(10)]  # any ten distinct ids stand for "0".."9"


@pytest.fixture(scope="module")
def toy():
    from circuitscan.models.toy import random_toy_model

    return random_toy_model(seed=1, d_vocab=VOCAB, n_layers=2)


def _logits_fn(model):
    def fn(tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.bridge(tokens)

    return fn


def _prompts(meta: dict, n: int = 3, seq: int = 6) -> PromptSet:
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, VOCAB, (n, seq), generator=g)
    return PromptSet(task="greater-than", positive=pos, negative=pos.clone(), metadata=meta)


def test_two_digit_probs_equal_brute_force(toy):
    """P(YY') = P(d1 | prompt) * P(d2 | prompt, d1), checked by scoring all 100 continuations."""
    prompts = _prompts({"year_reading": "two-digit", "eval_suffix_ids": DIGITS, "yy": [5, 50, 93]})
    fast = greater_than_year_probs(_logits_fn(toy), prompts, batch_size=2)  # chunks of 2 and 1
    assert fast.shape == (3, 100)
    # every one of the 100 two-token continuations as its own sequence, scored token by token
    L = prompts.seq_len
    first = torch.tensor([DIGITS[y // 10] for y in range(100)])
    second = torch.tensor([DIGITS[y % 10] for y in range(100)])
    brute = torch.zeros(3, 100, dtype=torch.float64)
    for i in range(3):
        seqs = torch.cat([prompts.positive[i].expand(100, L), first[:, None], second[:, None]], 1)
        with torch.inference_mode():
            logp = torch.log_softmax(toy.bridge(seqs).double(), -1)
        rows = torch.arange(100)
        brute[i] = (logp[rows, L - 1, first] + logp[rows, L, second]).exp()
    torch.testing.assert_close(fast.double(), brute, rtol=1e-4, atol=1e-7)
    # a distribution over 100 of the model's two-token continuations: at most all of it
    assert bool((fast.sum(1) <= 1 + 1e-5).all()) and bool((fast > 0).all())


def test_single_token_probs_equal_softmax_at_the_last_position(toy):
    ids = [int(i) for i in torch.randperm(VOCAB, generator=torch.Generator().manual_seed(2))[:100]]
    prompts = _prompts({"year_reading": "single-token", "yy_token_ids": ids, "yy": [5, 50, 93]})
    fast = greater_than_year_probs(_logits_fn(toy), prompts)
    with torch.inference_mode():
        probs = torch.softmax(toy.bridge(prompts.positive)[:, -1].double(), -1)
    torch.testing.assert_close(fast.double(), probs[:, ids], rtol=1e-5, atol=1e-8)
    # other tokens can be read too (e.g. the negatives)
    neg = greater_than_year_probs(_logits_fn(toy), prompts, tokens=prompts.negative[:2])
    assert neg.shape == (2, 100)


def test_probability_difference_and_cutoff_sharpness_by_hand():
    probs = torch.zeros(2, 100)
    probs[0, 40], probs[0, 30], probs[0, 31], probs[0, 29] = 0.5, 0.2, 0.1, 0.05
    probs[1, 99], probs[1, 0] = 0.3, 0.6
    pd = probability_difference(probs, [30, 98])
    cs = cutoff_sharpness(probs, [30, 98])
    torch.testing.assert_close(pd, torch.tensor([0.5 + 0.1 - 0.2 - 0.05, 0.3 - 0.6]))
    torch.testing.assert_close(cs, torch.tensor([0.1 - 0.05, 0.3 - 0.0]))
    assert float(cutoff_sharpness(probs[1:], [99])) == 0.0 - 0.0  # beyond 99 counts as 0
    with pytest.raises(ValueError, match="one start year per prompt"):
        probability_difference(probs, [1])


def test_year_probs_need_a_greater_than_prompt_set(toy):
    with pytest.raises(TaskError, match="not a greater-than prompt set"):
        greater_than_year_probs(_logits_fn(toy), _prompts({}))
