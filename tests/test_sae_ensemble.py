"""Batched SAE ensembles, the input scale, the stopping rule and l1 calibration."""

from __future__ import annotations

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.sae import fit, train_sae
from circuitscan.sae.ensemble import train_ensemble
from conftest import build_sae_cfg


def _acts(n_pairs=20, heads=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, d, generator=g)
    coef = torch.relu(torch.randn(2 * n_pairs, heads, 5, generator=g))
    x = coef @ basis * 40.0  # far from unit scale, as real head outputs are
    labels = torch.tensor([True] * n_pairs + [False] * n_pairs)
    return x, labels


def _same(a, b):
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("W_E", "b_E", "W_D", "b"))


def test_an_ensemble_of_one_is_the_single_sae(single_thread):
    x, _ = _acts()
    rows = x[:6].reshape(-1, x.shape[-1])
    cfg = build_sae_cfg(n_features=10, epochs=60)
    single, _ = train_sae(rows, cfg)
    ens = train_ensemble(rows[None], cfg, [torch.Generator().manual_seed(cfg.seed)])
    assert _same(single, ens.saes[0])


def test_each_member_is_the_run_with_its_own_seed(single_thread):
    x, labels = _acts()
    cfg = build_sae_cfg(n_features=10, epochs=60, train_examples=6)
    ens = fit(x, labels, build_sae_cfg(n_features=10, epochs=60, train_examples=6, n_seeds=3, seed=4))
    assert [m.seed for m in ens.members] == [4, 5, 6]
    for s, member in enumerate(ens.members):
        alone = fit(x, labels, build_sae_cfg(n_features=10, epochs=60, train_examples=6, seed=4 + s))
        assert torch.equal(alone.train_indices, member.train_indices)
        for k in ("W_E", "b_E", "W_D", "b"):
            assert torch.allclose(getattr(alone.sae, k), getattr(member.sae, k), atol=1e-5), (s, k)
    again = fit(x, labels, build_sae_cfg(n_features=10, epochs=60, train_examples=6, n_seeds=3, seed=4))
    assert all(_same(a.sae, b.sae) for a, b in zip(ens.members, again.members, strict=True))
    assert not _same(ens.members[0].sae, ens.members[1].sae)
    assert fit(x, labels, cfg).members[0].seed == 0


def test_input_scale_is_folded_into_the_sae(single_thread):
    x, labels = _acts()
    r = fit(x, labels, build_sae_cfg(n_features=10, epochs=40, train_examples=6, input_scale="d_model"))
    rows = x[r.train_indices].reshape(-1, x.shape[-1])
    assert r.input_scale == pytest.approx((rows.shape[1] / rows.square().sum(1).mean()).sqrt().item(), rel=1e-4)
    # the folded SAE on raw rows gives the codes of the scaled SAE on scaled rows
    s = r.input_scale
    z_raw = r.sae.encode(rows)
    z_scaled = torch.relu((rows * s - r.sae.b * s) @ (r.sae.W_E / s) + r.sae.b_E)
    assert torch.allclose(z_raw, z_scaled, rtol=1e-4, atol=1e-4)
    assert torch.allclose(r.sae.atom_norms(), torch.full((10,), 1 / s), rtol=1e-4)


def test_codes_stop_rule_ends_early_and_epochs_keeps_the_fixed_count(single_thread):
    x, labels = _acts()
    loose = fit(x, labels, build_sae_cfg(n_features=10, epochs=400, train_examples=6, stop="codes",
                                         check_every=10, stop_tol=0.5))
    fixed = fit(x, labels, build_sae_cfg(n_features=10, epochs=400, train_examples=6))
    assert loose.epochs_run < 400 and loose.epochs_run % 10 == 0
    assert fixed.epochs_run == 400


@pytest.mark.parametrize("how", ["online", "bisect"])
def test_calibration_reaches_the_target_l0(how, single_thread):
    x, labels = _acts(heads=4)
    for target in (2.0, 5.0):
        r = fit(x, labels, build_sae_cfg(n_features=12, epochs=150, lr=1e-2, train_examples=10,
                                         input_scale="d_model", target_l0=target, calibrate=how))
        assert abs(r.final_l0 - target) <= 0.3 * target, (target, r.final_l0, r.calibration)
        assert r.l1 > 0 and bool(r.calibration) == (how == "bisect")


def test_bad_ensemble_and_target_settings_are_clear_errors():
    with pytest.raises(CircuitscanError, match="n_seeds"):
        build_sae_cfg(n_seeds=0)
    with pytest.raises(CircuitscanError, match="target_l0"):
        build_sae_cfg(n_features=8, target_l0=9)
    with pytest.raises(CircuitscanError, match="target_l0"):
        build_sae_cfg(target_l0=0)
    x, labels = _acts(heads=2, d=4)
    for how in ("online", "bisect"):
        with pytest.raises(CircuitscanError, match="cannot be reached"):  # 4-d rows never need 11 of 12 atoms
            fit(x, labels, build_sae_cfg(n_features=12, epochs=60, train_examples=4, target_l0=11.5, calibrate=how))


@pytest.mark.parametrize("fast", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_multiplies_it(monkeypatch, fast, single_thread):
    from circuitscan import precision as train_mod

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: fast)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert train_mod.resolve_precision("auto") == ("bf16" if fast else "fp32")
    assert train_mod.resolve_precision("fp32") == "fp32" and train_mod.resolve_precision("bf16") == "bf16"
    x, labels = _acts()
    auto = fit(x, labels, build_sae_cfg(n_features=10, epochs=20, n_seeds=2, precision="auto"))
    explicit = fit(x, labels, build_sae_cfg(n_features=10, epochs=20, n_seeds=2, precision="bf16" if fast else "fp32"))
    assert auto.precision == explicit.precision == ("bf16" if fast else "fp32")
    assert all(m.precision == auto.precision for m in auto.members)
    assert all(_same(a.sae, b.sae) for a, b in zip(auto.members, explicit.members, strict=True))


def test_an_unknown_precision_is_a_clear_error():
    with pytest.raises(CircuitscanError, match="precision must be one of fp32, bf16, auto"):
        build_sae_cfg(precision="fp16")
