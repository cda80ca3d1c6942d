"""SmolLM2-135M does the positive tasks, and the negatives switch the behaviour off.

Margins were set from measurements on 20 prompts of seed 0 (these are their first 12, or 8; see
docs/TASKS.md): IOI logit difference about 3.2 on positives and -0.7 on negatives,
ACDC's IOI 5.1 and -0.7, docstring 2.3 and -5.4, greater-than probability difference
0.93 on positives and 0.14 on range negatives. The asserted margins are about half of
those gaps.
"""

from __future__ import annotations

import pytest
import torch

from circuitscan.tasks import build_task
from circuitscan.tasks.greater_than import greater_than_year_probs, probability_difference

pytestmark = pytest.mark.slow


def _logits_fn(model):
    def fn(tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.bridge(tokens)

    return fn


def _logit_diff(model, tokens, answers, wrong):
    last = _logits_fn(model)(tokens)[:, -1]
    return last.gather(1, answers).mean(1) - last.gather(1, wrong).max(1).values


@pytest.mark.parametrize(("task", "pos_min", "gap_min"), [("ioi", 1.5, 2.0), ("ioi-acdc", 2.5, 2.5), ("docstring", 1.0, 3.0)])
def test_logit_difference_on_positives_and_negatives(smollm2, task, pos_min, gap_min):
    p = build_task(task, smollm2, 12, seed=0)
    pos = _logit_diff(smollm2, p.positive, p.answers, p.wrong_answers)
    neg = _logit_diff(smollm2, p.negative, p.answers, p.wrong_answers)
    assert float(pos.mean()) > pos_min, f"{task}: mean logit difference {float(pos.mean()):.2f} on positives"
    assert float(pos.mean() - neg.mean()) > gap_min, (
        f"{task}: positives {float(pos.mean()):.2f} vs negatives {float(neg.mean()):.2f}"
    )


def test_greater_than_probability_difference(smollm2):
    p = build_task("greater-than", smollm2, 8, seed=0)
    assert p.metadata["year_reading"] == "two-digit"
    probs = greater_than_year_probs(_logits_fn(smollm2), p)
    assert float(probs.sum(1).mean()) > 0.9  # the model continues with two digits
    pd = probability_difference(probs, p.metadata["yy"])
    assert float(pd.mean()) > 0.5 and float((pd > 0).float().mean()) >= 0.9, pd
    neg = probability_difference(greater_than_year_probs(_logits_fn(smollm2), p, tokens=p.negative), p.metadata["yy"])
    assert float(pd.mean() - neg.mean()) > 0.3, (pd.mean(), neg.mean())
