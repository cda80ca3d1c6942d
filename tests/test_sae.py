"""The SAE: hand-written gradients, unit-norm atoms, learning, determinism, I/O."""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import CircuitscanError, TrainingError
from circuitscan.sae import load_sae, save_sae, select_train_examples, train_sae
from circuitscan.sae.train import _project_out_parallel, init_sae, loss_and_grads
from conftest import build_sae_cfg


def _data(n=120, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, d, generator=g)
    coef = torch.relu(torch.randn(n, 6, generator=g))
    return coef @ basis + 0.01 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("loss", ["paper", "authors"])
def test_hand_gradients_equal_autograd(loss):
    x = _data()
    cfg = build_sae_cfg(n_features=16, l1=0.1, loss=loss)
    sae = init_sae(x.shape[1], cfg, x, torch.Generator().manual_seed(1))
    with torch.no_grad():  # move off the symmetric init so every term is exercised
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    value, _, _, grads = loss_and_grads(sae, x, cfg)
    z = torch.relu((x - sae.b) @ sae.W_E + sae.b_E)
    r = z @ sae.W_D + sae.b - x
    if loss == "paper":
        ref = r.square().sum(1).mean() + cfg.l1 * z.abs().sum(1).mean()
    else:
        ref = r.square().mean() + cfg.l1 * z.abs().sum(1).mean()
    ref.backward()
    assert torch.allclose(value, ref.detach(), rtol=1e-5)
    for name, p in sae.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-6), name


def test_projection_removes_parallel_component():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g)
    w = w / w.norm(dim=1, keepdim=True)
    grad = torch.randn(5, 7, generator=g)
    _project_out_parallel(grad, w, "atoms")
    assert torch.allclose((grad * w).sum(1), torch.zeros(5), atol=1e-6)


def test_atoms_have_unit_norm_after_training_and_reconstruction_improves():
    x = _data()
    cfg = build_sae_cfg(n_features=12, l1=0.01, epochs=300, lr=1e-2)
    sae, losses = train_sae(x, cfg)
    assert torch.allclose(sae.atom_norms(), torch.ones(12), atol=1e-5)
    assert losses[-1] < 0.5 * losses[0]
    untrained = init_sae(x.shape[1], cfg, x, torch.Generator().manual_seed(cfg.seed))
    _, mse_before, _, _ = loss_and_grads(untrained, x, cfg, with_grads=False)
    _, mse_after, _, _ = loss_and_grads(sae, x, cfg, with_grads=False)
    assert mse_after < 0.5 * mse_before


def test_authors_decoder_norm_normalises_the_other_axis():
    x = _data()
    sae, _ = train_sae(x, build_sae_cfg(n_features=12, epochs=20, decoder_norm="authors"))
    assert torch.allclose(sae.W_D.norm(dim=0), torch.ones(x.shape[1]), atol=1e-5)
    assert not torch.allclose(sae.W_D.norm(dim=1), torch.ones(12), atol=1e-3)


def test_training_is_deterministic_under_a_seed():
    x = _data()
    a, _ = train_sae(x, build_sae_cfg(n_features=8, epochs=50, seed=3))
    b, _ = train_sae(x, build_sae_cfg(n_features=8, epochs=50, seed=3))
    c, _ = train_sae(x, build_sae_cfg(n_features=8, epochs=50, seed=4))
    assert torch.equal(a.W_E, b.W_E) and torch.equal(a.W_D, b.W_D)
    assert not torch.equal(a.W_E, c.W_E)


def test_non_finite_data_and_divergence_are_clear_errors():
    x = _data()
    x[3, 2] = float("nan")
    with pytest.raises(TrainingError, match="NaN or inf"):
        train_sae(x, build_sae_cfg(n_features=8, epochs=5))
    huge = _data() * 1e6
    with pytest.raises(TrainingError, match="diverged"):
        train_sae(huge, build_sae_cfg(n_features=8, epochs=200, lr=1e3, l1=0.0))


def test_balanced_selection_takes_whole_pairs_and_checks_counts():
    labels = torch.tensor([True] * 6 + [False] * 6)
    idx = select_train_examples(labels, build_sae_cfg(train_examples=4), torch.Generator().manual_seed(0))
    pos = sorted(i for i in idx.tolist() if i < 6)
    neg = sorted(i - 6 for i in idx.tolist() if i >= 6)
    assert pos == neg and len(pos) == 2  # the twins of the chosen positives
    with pytest.raises(CircuitscanError, match="only 12 examples"):
        select_train_examples(labels, build_sae_cfg(train_examples=20), torch.Generator())
    few_neg = torch.tensor([True] * 6 + [False] * 1)
    with pytest.raises(CircuitscanError, match="needs 2 positives and 2"):
        select_train_examples(few_neg, build_sae_cfg(train_examples=4), torch.Generator())


def test_save_load_round_trip(tmp_path):
    x = _data()
    cfg = build_sae_cfg(n_features=8, epochs=10)
    sae, _ = train_sae(x, cfg)
    save_sae(sae, cfg, tmp_path / "sae.safetensors")
    back, back_cfg = load_sae(tmp_path / "sae.safetensors")
    assert back_cfg == cfg
    assert torch.equal(back.encode(x), sae.encode(x))
    assert [p.name for p in tmp_path.iterdir()] == ["sae.safetensors"]  # no temp files left


def test_config_rejects_bad_values():
    with pytest.raises(CircuitscanError, match="n_features"):
        build_sae_cfg(n_features=0)
    with pytest.raises(CircuitscanError, match="loss"):
        build_sae_cfg(loss="l2")


def test_bf16_matmuls_stay_close_to_fp32():
    x = _data()
    cfg32 = build_sae_cfg(n_features=16, l1=0.05)
    cfg16 = build_sae_cfg(n_features=16, l1=0.05, precision="bf16")
    sae = init_sae(x.shape[1], cfg32, x, torch.Generator().manual_seed(0))
    l32, _, _, g32 = loss_and_grads(sae, x, cfg32)
    l16, _, _, g16 = loss_and_grads(sae, x, cfg16)
    assert torch.isclose(l16, l32, rtol=2e-2)
    for name in g32:
        rel = (g16[name] - g32[name]).norm() / g32[name].norm().clamp_min(1e-12)
        assert rel < 5e-2, name
