"""The contrastive-loss SAE (Appendix J): known loss values, gradients vs autograd, alpha = 0 is the SAE."""

from __future__ import annotations

import pytest
import torch

from circuitscan.config import SAEConfig
from circuitscan.errors import CircuitscanError
from circuitscan.sae import fit
from circuitscan.sae.train import init_sae, loss_and_grads
from circuitscan.sweep.contrastive import (
    ContrastiveConfig,
    contrastive_grads,
    contrastive_loss,
    fit_contrastive,
)


def rows(vectors_by_example: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(vectors_by_example, dtype=torch.float64).reshape(-1, len(vectors_by_example[0][0]))


def test_contrastive_loss_known_values():
    e1, e2 = [1.0, 0.0], [0.0, 2.0]
    labels = torch.tensor([True, True, False, False]).repeat_interleave(2)  # 2 positives, 2 negatives, 2 heads
    # positives all e1, negatives all e2 (orthogonal): CS(P,N) = 0, CS(P,P) = CS(N,N) = 2 -> hinge off
    z = rows([[e1, e1], [e1, e1], [e2, e2], [e2, e2]])
    assert float(contrastive_loss(z, labels, 2, epsilon=1.0)) == pytest.approx(0.0)
    # everything the same direction: CS(P,N) = 2 (twice the mean cosine), hinge max(0, 1 - 1 - 1) = 0
    z = rows([[e1, e1]] * 4)
    assert float(contrastive_loss(z, labels, 2, epsilon=1.0)) == pytest.approx(2.0)
    # a silent (all-zero) vector has similarity 0 with everything; the margin epsilon enters the hinge
    z = rows([[e1, [0, 0]], [e1, [0, 0]], [e2, [0, 0]], [e2, [0, 0]]])
    # CS(P,N) = 0; CS(P,P) = 2 * mean over heads (1, 0) = 1; CS(N,N) = 1 -> hinge max(0, 3 - 0.5 - 0.5) = 2
    assert float(contrastive_loss(z, labels, 2, epsilon=3.0)) == pytest.approx(2.0)
    with pytest.raises(CircuitscanError, match="needs positive and negative examples"):
        contrastive_loss(z, torch.ones(8, dtype=torch.bool), 2)


def test_hand_pushed_gradients_match_autograd_of_the_full_loss():
    torch.manual_seed(0)
    n_ex, heads, d = 6, 3, 5
    x = torch.randn(n_ex * heads, d, dtype=torch.float64)
    labels = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool).repeat_interleave(heads)
    cfg = SAEConfig(n_features=4, l1=0.05)
    cc = ContrastiveConfig(alpha=0.7, epsilon=1.5)
    sae = init_sae(d, cfg, x, torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        sae.b_E.add_(0.3)  # most features on, so the ReLU passes gradient
    base, _, z, grads = loss_and_grads(sae, x, cfg)
    extra, cg = contrastive_grads(sae, x, z, labels, heads, cc)
    params = dict(sae.named_parameters())
    zz = torch.relu((x - params["b"]) @ params["W_E"] + params["b_E"])
    xh = zz @ params["W_D"] + params["b"]
    full = ((x - xh) ** 2).sum() / x.shape[0] + cfg.l1 * zz.sum() / x.shape[0] \
        + cc.alpha * contrastive_loss(zz, labels, heads, cc.epsilon)
    auto = torch.autograd.grad(full, list(params.values()))
    assert float(full.detach()) == pytest.approx(float(base + extra), rel=1e-10)
    for (name, _), g in zip(params.items(), auto, strict=True):
        mine = grads[name] + cg.get(name, 0)
        assert torch.allclose(mine, g, rtol=1e-8, atol=1e-10), name


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_alpha_zero_trains_exactly_the_default_sae_and_alpha_changes_it(planted, planted_prompts, one_thread):
    from circuitscan.activations import head_outputs

    acts = head_outputs(planted, planted_prompts)
    cfg = SAEConfig(n_features=8, epochs=30, seed=2)
    a = fit(acts.x, acts.labels, cfg)
    b = fit_contrastive(acts.x, acts.labels, cfg, ContrastiveConfig(alpha=0.0))
    assert torch.equal(a.train_indices, b.train_indices) and a.losses == b.losses
    for name, p in a.sae.named_parameters():
        assert torch.equal(p, dict(b.sae.named_parameters())[name]), name
    c = fit_contrastive(acts.x, acts.labels, cfg, ContrastiveConfig(alpha=1.0))
    assert not torch.equal(a.sae.W_E, c.sae.W_E) and c.losses[0] > a.losses[0]
    with pytest.raises(CircuitscanError, match="alpha must be >= 0"):
        ContrastiveConfig(alpha=-1)
