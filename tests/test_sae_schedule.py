"""The SAE's training schedule: a decaying step size and minibatch steps (issue 14)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitscan import circuits
from circuitscan.cli import main
from circuitscan.config import SAEConfig, default_sae
from circuitscan.errors import CircuitscanError
from circuitscan.run import discover
from circuitscan.sae import ensemble as ensemble_mod
from circuitscan.sae import fit, train_sae
from circuitscan.sae.ensemble import train_ensemble
from circuitscan.sae.train import row_batches
from conftest import build_sae_cfg


def _acts(n_pairs=20, heads=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, d, generator=g)
    coef = torch.relu(torch.randn(2 * n_pairs, heads, 5, generator=g))
    labels = torch.tensor([True] * n_pairs + [False] * n_pairs)
    return coef @ basis, labels


def _same(a, b):
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("W_E", "b_E", "W_D", "b"))


@pytest.fixture
def seen_lrs(monkeypatch):
    """The step size of every Adam step taken, as the optimiser saw it."""
    lrs: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    return lrs


@pytest.mark.parametrize("how", ["ensemble", "single"])
def test_cosine_decays_from_lr_to_about_zero_at_the_last_step(single_thread, seen_lrs, how):
    x, labels = _acts()
    cfg = build_sae_cfg(n_features=8, epochs=40, lr=3e-3, lr_schedule="cosine", train_examples=6)
    if how == "ensemble":
        fit(x, labels, cfg)
    else:
        train_sae(x[:6].reshape(-1, x.shape[-1]), cfg)
    assert len(seen_lrs) == 40
    assert seen_lrs[0] == 3e-3
    assert seen_lrs[20] == pytest.approx(1.5e-3)  # half way: half the step size
    assert 0 < seen_lrs[-1] < 3e-3 * 0.01  # ~0 at the last step, never exactly (a wasted step)
    assert all(a > b for a, b in zip(seen_lrs, seen_lrs[1:], strict=False))
    assert seen_lrs == pytest.approx([3e-3 * (1 + math.cos(math.pi * k / 40)) / 2 for k in range(40)])


def test_linear_and_constant_schedules(single_thread, seen_lrs):
    x, labels = _acts()
    fit(x, labels, build_sae_cfg(n_features=8, epochs=10, lr=1e-3, lr_schedule="linear", train_examples=6))
    assert seen_lrs == pytest.approx([1e-3 * (1 - k / 10) for k in range(10)])
    seen_lrs.clear()
    fit(x, labels, build_sae_cfg(n_features=8, epochs=10, lr=1e-3, train_examples=6))
    assert seen_lrs == [1e-3] * 10


def test_each_pass_of_minibatches_covers_every_row_once():
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    batches = row_batches(10, 4, gens)
    passes = [[next(batches) for _ in range(3)] for _ in range(2)]
    for p in passes:
        assert [b.shape for b in p] == [(2, 4), (2, 4), (2, 2)]
        for s in range(2):  # each member: a permutation of all ten rows
            assert sorted(torch.cat([b[s] for b in p]).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(passes[0], 1), torch.cat(passes[1], 1))  # reshuffled per pass
    assert not torch.equal(passes[0][0][0], passes[0][0][1])  # each member its own shuffle
    full = row_batches(10, 10, gens)
    assert next(full) is None and next(full) is None  # as many rows as a batch: full batch


def test_minibatch_training_sees_every_row_once_per_pass(single_thread, monkeypatch):
    d = 4
    rows = torch.randn(1, 9, d, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    real = ensemble_mod.batched_loss_and_grads

    def spy(p, x, l1, cfg, **kwargs):
        seen.append(x.detach().clone())
        return real(p, x, l1, cfg, **kwargs)

    monkeypatch.setattr(ensemble_mod, "batched_loss_and_grads", spy)
    fitted = train_ensemble(rows, build_sae_cfg(n_features=6, epochs=6, batch_rows=4),
                            [torch.Generator().manual_seed(0)])
    steps, final = seen[:-1], seen[-1]
    assert [s.shape[1] for s in steps] == [4, 4, 1, 4, 4, 1]
    assert torch.equal(final, rows)  # the final statistics are over every row
    for p in (steps[:3], steps[3:]):
        got = torch.cat(p, 1)[0]
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, rows[0].tolist()))
    assert fitted.epochs_run == 6


def test_members_stay_the_run_of_their_own_seed_with_minibatches(single_thread):
    x, labels = _acts()
    cfg = dict(n_features=10, epochs=30, train_examples=6, batch_rows=5, lr_schedule="cosine")
    ens = fit(x, labels, build_sae_cfg(**cfg, n_seeds=3, seed=4))
    for s in range(3):
        alone = fit(x, labels, build_sae_cfg(**cfg, seed=4 + s))
        for k in ("W_E", "b_E", "W_D", "b"):  # batched matmuls: equal up to rounding
            assert torch.allclose(getattr(alone.sae, k), getattr(ens.members[s].sae, k), atol=1e-5), (s, k)
    again = fit(x, labels, build_sae_cfg(**cfg, n_seeds=3, seed=4))
    assert all(_same(a.sae, b.sae) for a, b in zip(ens.members, again.members, strict=True))  # bit-identical


def test_a_batch_as_large_as_the_data_is_the_full_batch_run(single_thread):
    x, labels = _acts()
    full = fit(x, labels, build_sae_cfg(n_features=10, epochs=30, train_examples=6))
    wide = fit(x, labels, build_sae_cfg(n_features=10, epochs=30, train_examples=6, batch_rows=18))
    small = fit(x, labels, build_sae_cfg(n_features=10, epochs=30, train_examples=6, batch_rows=5))
    assert _same(full.sae, wide.sae)
    assert not _same(full.sae, small.sae)


@pytest.mark.parametrize("over", [{"epochs": 150, "lr_schedule": "cosine"},
                                  {"batch_rows": 32, "lr_schedule": "cosine"}])
def test_the_planted_circuit_is_found_exactly_with_a_schedule(planted, planted_prompts, over):
    gt = circuits.get("planted")
    sae = SAEConfig(**{**default_sae().__dict__, **over})
    result = discover(planted, planted_prompts, level="node", ground_truth=gt, sae=sae)
    assert result.metrics["sae-codes"].auc == 1.0
    assert set(result.circuits["sae-codes"]["heads"]) == {"L0H1", "L1H2", "L2H0"}


@pytest.mark.parametrize("over, match", [
    ({"lr_schedule": "step"}, "lr_schedule must be one of 'constant', 'cosine', 'linear', got 'step'"),
    ({"lr_schedule": 1}, "lr_schedule must be a string"),
    ({"batch_rows": 0}, "batch_rows (rows per SAE training step) must be >= 1 or None"),
    ({"batch_rows": 2.5}, "batch_rows must be a whole number (int) or None"),
    ({"batch_rows": 64, "stop": "codes"}, "use stop='epochs' or batch_rows=None"),
])
def test_bad_schedule_values_are_refused(over, match):
    with pytest.raises(CircuitscanError, match=match.replace("(", r"\(").replace(")", r"\)")):
        SAEConfig(**over)


def test_minibatches_with_an_extra_term_are_refused():
    rows = torch.randn(20, 4)
    with pytest.raises(CircuitscanError, match="use batch_rows=None"):
        train_sae(rows, build_sae_cfg(n_features=4, epochs=2, batch_rows=5),
                  extra=lambda sae, x, z: (torch.zeros(()), {}))


def test_cli_takes_the_schedule_and_refuses_bad_values(tmp_path, capsys):
    base = ["discover", "--model", "toy-planted", "--task", "planted", "-n", "20", "--level", "node"]
    out = tmp_path / "run"
    assert main([*base, "--out", str(out), "--epochs", "60", "--lr-schedule", "linear", "--batch-rows", "16"]) == 0
    capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())["sae"]
    assert (cfg["lr_schedule"], cfg["batch_rows"], cfg["epochs"]) == ("linear", 16, 60)
    for bad, match in ((["--lr-schedule", "step"], "invalid choice: 'step'"), (["--batch-rows", "-1"], "--batch-rows"),
                       (["--batch-rows", "8", "--stop", "codes"], "use stop='epochs' or batch_rows=None")):
        try:
            rc = main([*base, "--out", str(tmp_path / "bad"), *bad])
        except SystemExit as exc:  # argparse's own refusals
            rc = exc.code
        assert rc == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("argv, want", [
    # the circuitscan preset: 5 SAEs of 256-row steps (docs/CALIBRATION.md "SAE ensemble (issues 13 and 14)")
    ([], (100, "cosine", 256, 5)),
    (["--compat", "paper"], (500, "constant", None, 1)),  # the paper's schedule, unchanged
    (["--compat", "authors"], (500, "constant", None, 1)),
    (["--epochs", "70"], (70, "cosine", 256, 5)),  # a given --epochs wins over the preset's
    (["--batch-rows", "0"], (100, "cosine", None, 5)),  # 0 = the full batch
    (["--sae-seeds", "1", "--batch-rows", "64"], (100, "cosine", 64, 1)),
    (["--stop", "codes"], (100, "cosine", None, 5)),  # settled codes are judged on every row: full batch
    (["--compat", "paper", "--epochs", "70", "--lr-schedule", "linear"], (70, "linear", None, 1)),
])
def test_cli_epochs_and_schedule_follow_the_preset_unless_given(argv, want):
    from circuitscan.cli import build_parser
    from circuitscan.commands.discover import configs_from_args

    args = build_parser().parse_args(["discover", "--model", "toy-planted", "--task", "planted", "--out", "x", *argv])
    sae, _ = configs_from_args(args)
    assert (sae.epochs, sae.lr_schedule, sae.batch_rows, sae.n_seeds) == want


@pytest.mark.parametrize(("argv", "want"), [
    ([], "auto"),  # the preset: bf16 where the hardware has it
    (["--compat", "paper"], "fp32"),
    (["--compat", "authors"], "fp32"),
    (["--precision", "fp32"], "fp32"),  # a given --precision wins over the preset's
    (["--compat", "paper", "--precision", "bf16"], "bf16"),
])
def test_cli_precision_follows_the_preset_unless_given(argv, want):
    from circuitscan.cli import build_parser
    from circuitscan.commands.discover import configs_from_args

    args = build_parser().parse_args(["discover", "--model", "toy-planted", "--task", "planted", "--out", "x", *argv])
    assert configs_from_args(args)[0].precision == want
