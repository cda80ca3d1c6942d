"""Task metrics and faithfulness summaries against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.evaluation import metrics as M
from circuitscan.evaluation.faithfulness import MIB_FRACTIONS, cmd, cpr, curve_sizes, mib_sizes
from circuitscan.types import PromptSet


def test_logit_diff_by_hand():
    logits = torch.tensor([[1.0, 2.0, 5.0, 0.0], [3.0, -1.0, 0.0, 2.0]])
    ld = M.logit_diff(logits, torch.tensor([[2], [0]]), torch.tensor([[1], [3]]))
    assert ld.tolist() == [3.0, 1.0]
    # several answers / wrong answers: means of each side
    ld2 = M.logit_diff(logits[:1], torch.tensor([[2, 0]]), torch.tensor([[1, 3]]))
    assert ld2.tolist() == [(5 + 1) / 2 - (2 + 0) / 2]
    # docstring flavour: against the strongest wrong answer
    ldm = M.logit_diff_max_wrong(logits[:1], torch.tensor([[2]]), torch.tensor([[1, 3]]))
    assert ldm.tolist() == [5.0 - 2.0]


def _year_table():
    p = torch.zeros(2, 100)
    p[0, 10], p[0, 29], p[0, 30], p[0, 31], p[0, 80] = 0.2, 0.05, 0.5, 0.1, 0.05
    p[1, 98], p[1, 1] = 0.4, 0.3
    return p


def test_greater_than_probability_difference_by_hand():
    p = _year_table()
    pd = M.greater_than_prob_diff(p, torch.tensor([30, 99]))
    # row 0: above 30: 0.1 + 0.05; at or below: 0.2 + 0.05 + 0.5.  row 1: nothing above 99.
    assert pd.tolist() == pytest.approx([0.15 - 0.75, -(0.4 + 0.3)])


def test_cutoff_sharpness_by_hand_and_at_the_edges():
    p = _year_table()
    cs = M.cutoff_sharpness(p, torch.tensor([30, 99]))
    assert cs.tolist() == pytest.approx([0.1 - 0.05, 0.0 - 0.4])
    # YY = 0: p(-1) counts as 0
    assert M.cutoff_sharpness(p[1:], torch.tensor([0])).tolist() == pytest.approx([0.3])


def test_year_probs_single_token_and_two_digit_readings():
    # single-token: softmax over the whole vocabulary, read at the 100 year ids
    logits = torch.randn(3, 150, generator=torch.Generator().manual_seed(0))
    ids = list(range(50, 150))
    assert torch.allclose(M.year_probs(logits, ids), logits.softmax(-1)[:, 50:150])
    # two-digit: P(10 d1 + d2) = P(d1) P(d2 | d1), each a full-vocabulary softmax
    vocab, digits = 20, list(range(5, 15))
    first = torch.randn(2, vocab, generator=torch.Generator().manual_seed(1))
    second = torch.randn(2, 10, vocab, generator=torch.Generator().manual_seed(2))
    probs = M.two_digit_year_probs(first, second, digits)
    p1 = first.softmax(-1)
    p2 = second.softmax(-1)
    assert probs.shape == (2, 100)
    assert probs[1, 37].item() == pytest.approx((p1[1, 5 + 3] * p2[1, 3, 5 + 7]).item(), rel=1e-5)
    assert probs[0, 0].item() == pytest.approx((p1[0, 5] * p2[0, 0, 5]).item(), rel=1e-5)
    # over digits only the probabilities sum to P(first token is a digit) * ... < 1
    total = (p1[:, 5:15, None] * p2[:, :, 5:15]).sum((1, 2))
    assert torch.allclose(probs.sum(-1), total, atol=1e-6)


def test_induction_loss_by_hand():
    tokens = torch.tensor([[0, 1, 0, 1]])
    logits = torch.zeros(1, 4, 2)
    logits[0, 2] = torch.tensor([0.0, math.log(3.0)])  # p(token 1 at position 3) = 3/4
    logits[0, 1] = torch.tensor([math.log(9.0), 0.0])  # p(token 0 at position 2) = 9/10
    only_last = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert M.induction_loss(logits, tokens, only_last).item() == pytest.approx(-math.log(0.75))
    two = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert M.induction_loss(logits, tokens, two).item() == pytest.approx(-(math.log(0.75) + math.log(0.9)) / 2)


def test_repeated_half_mask_inferred_and_given():
    tokens = torch.tensor([[5, 7, 8, 5, 7, 8]])
    inferred = M.repeated_half_mask(tokens)
    assert inferred.tolist() == [[0, 0, 0, 1, 1, 0]]
    assert M.repeated_half_mask(tokens, repeat_start=3).tolist() == inferred.tolist()
    with pytest.raises(CircuitscanError, match="repeat_start"):
        M.repeated_half_mask(tokens, repeat_start=6)


def test_kl_divergence_by_hand():
    ref = torch.tensor([[0.5, 0.5]]).log()
    logits = torch.tensor([[0.25, 0.75]]).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert M.kl_divergence(logits, ref).item() == pytest.approx(expected, rel=1e-6)
    assert M.kl_divergence(ref, ref).item() == pytest.approx(0.0, abs=1e-7)


def test_probability_multiplier_and_normalise():
    assert M.probability_multiplier(3.55) == pytest.approx(math.exp(3.55))
    assert M.probability_multiplier(-3.55) == pytest.approx(1 / math.exp(3.55))
    assert M.normalise(3.0, clean=5.0, corrupted=1.0) == 0.5
    assert M.normalise(-1.0, clean=5.0, corrupted=1.0) == -0.5  # worse than corrupted
    # losses: lower clean value, same formula
    assert M.normalise(2.0, clean=1.0, corrupted=5.0) == 0.75
    assert math.isnan(M.normalise(1.0, clean=2.0, corrupted=2.0))


def _prompts(**kw):
    base = dict(task="t", positive=torch.zeros(2, 4, dtype=torch.long), negative=torch.ones(2, 4, dtype=torch.long))
    return PromptSet(**{**base, **kw})


def test_default_metric_and_table_columns():
    one = torch.tensor([[1], [2]])
    p = _prompts(answers=one, wrong_answers=one + 1)
    assert M.default_metric(p) == "logit_diff"
    assert M.table_metrics(p) == ["logit_diff", "kl"]  # max-wrong = plain LD with one wrong answer
    many = _prompts(answers=one, wrong_answers=torch.tensor([[3, 4], [5, 6]]))
    assert M.table_metrics(many) == ["logit_diff", "logit_diff_max_wrong", "kl"]
    assert M.default_metric(_prompts()) == "kl"
    gt = _prompts(metadata={"metric": "prob_diff", "yy": [3, 4], "eval_suffix_ids": list(range(10))})
    assert M.table_metrics(gt) == ["prob_diff", "cutoff_sharpness", "kl"]
    assert M.METRICS["prob_diff"].suffixes(gt) == list(range(10))
    single = _prompts(metadata={"metric": "prob_diff", "yy": [3, 4], "yy_token_ids": list(range(100))})
    assert M.METRICS["prob_diff"].suffixes(single) is None
    ind = _prompts(metadata={"metric": "induction_loss"})
    assert M.table_metrics(ind) == ["induction_loss", "kl"]


def test_a_metric_the_task_cannot_feed_is_a_clear_error():
    with pytest.raises(CircuitscanError, match="prob_diff.*metadata.yy"):
        M.table_metrics(_prompts(), "prob_diff")
    with pytest.raises(CircuitscanError, match="unknown metric 'nope'.*logit_diff"):
        M.get_metric("nope")
    with pytest.raises(CircuitscanError, match="unknown metric"):
        M.default_metric(_prompts(metadata={"metric": "nope"}))


def test_induction_mask_prefers_loss_positions():
    tokens = torch.tensor([[9, 5, 7, 5, 7]])
    p = _prompts(positive=tokens, negative=tokens, metadata={"loss_positions": [3]})
    assert M.induction_mask(p, tokens).tolist() == [[0, 0, 0, 1, 0]]
    p2 = _prompts(positive=tokens, negative=tokens, metadata={"repeat_start": 3})
    assert M.induction_mask(p2, tokens).tolist() == [[0, 0, 0, 1, 0]]


def test_cpr_and_cmd_by_hand():
    n = len(MIB_FRACTIONS)
    perfect = [0.0] + [1.0] * (n - 1)  # empty circuit is 0 by definition
    assert cpr(perfect) == pytest.approx(1 - 0.001 / 2)
    assert cmd(perfect) == pytest.approx(0.001 / 2)
    diagonal = list(MIB_FRACTIONS)  # f(x) = x: trapezoids are exact
    assert cpr(diagonal) == pytest.approx(0.5)
    assert cmd(diagonal) == pytest.approx(0.5)
    overshoot = [0.0] + [2.0] * (n - 1)  # CMD counts overshoot as distance too: |1 - f| = 1 everywhere
    assert cmd(overshoot) == pytest.approx(1.0)
    assert cpr(overshoot) == pytest.approx(2 * cpr(perfect))
    with pytest.raises(ValueError):
        cpr([0.0, 1.0])


def test_mib_and_curve_sizes():
    assert mib_sizes(144) == [0, 0, 0, 0, 1, 2, 7, 14, 28, 72, 144]
    assert mib_sizes(12) == [0, 0, 0, 0, 0, 0, 0, 1, 2, 6, 12]
    assert curve_sizes(12, 20) == list(range(13)) and curve_sizes(8) == list(range(9))
    assert curve_sizes(270) == sorted(set(mib_sizes(270)))  # the default: the MIB sizes, what CPR and CMD read
    assert set(mib_sizes(12)) < set(curve_sizes(12)) and len(curve_sizes(12)) <= 9
    sizes = curve_sizes(270, 20)
    assert sizes[0] == 0 and sizes[-1] == 270 and sizes == sorted(set(sizes))
    assert set(mib_sizes(270)) <= set(sizes)
    assert len(sizes) <= 20
    with pytest.raises(CircuitscanError):
        curve_sizes(10, 1)
