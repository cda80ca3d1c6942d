"""Random circuits on the first ``random_examples`` prompts (issue 14): the method circuits and the
baselines keep every prompt, a random circuit is normalised over the prompts it ran on."""

from __future__ import annotations

import pytest
import torch

from circuitscan.cli import main
from circuitscan.errors import CircuitscanError
from circuitscan.evaluation import CircuitEvaluator, circuit_performance, faithfulness_curves
from circuitscan.evaluation.curve_stats import RANDOM_EXAMPLES, random_example_count
from circuitscan.evaluation.head_masks import random_masks
from circuitscan.models.toy import PLANTED_HEADS
from circuitscan.types import GroundTruth, HeadLayout, Scores

LAYOUT = HeadLayout(3, 4)
CIRCUITS = {"found": ["L0H1", "L1H2", "L2H0"], "partial": ["L0H1", "L0H0"]}
GT = GroundTruth.from_heads([h.name for h in PLANTED_HEADS], name="planted")


def _scores() -> list[Scores]:
    a = Scores(method="a", node=torch.arange(12.0).reshape(3, 4), layout=LAYOUT)
    b = Scores(method="b", node=torch.arange(12.0).flip(0).reshape(3, 4), layout=LAYOUT)
    return [a, b]


def _ev(planted, prompts, n=None):
    return CircuitEvaluator.build(planted, prompts, ablation="corrupt", n_examples=n)


def _table(ev, r):
    return circuit_performance(ev, CIRCUITS, ground_truth=GT, random_samples=5, seed=1, random_examples=r)


def _curves(ev, r):
    return faithfulness_curves(ev, _scores(), sizes=range(13), random_samples=4, seed=0, random_examples=r)


def test_evaluate_on_the_first_n_examples_is_a_slice_and_reuses_longer_runs(planted, planted_prompts):
    ev = _ev(planted, planted_prompts)
    masks = random_masks(12, 4, 3, generator=torch.Generator().manual_seed(0))
    short = ev.evaluate(masks, 8)
    assert short["logit_diff"].shape == (3, 8)
    rows = ev.stats.rows
    full = ev.evaluate(masks)  # known on 8 only: run again on all 40
    assert ev.stats.rows - rows == 3 * ev.n
    assert torch.allclose(full["logit_diff"][:, :8], short["logit_diff"], atol=1e-6)
    rows = ev.stats.rows
    again = ev.evaluate(masks, 8)  # known on all 40: a slice, no pass
    assert ev.stats.rows == rows and torch.equal(again["logit_diff"], full["logit_diff"][:, :8])
    for bad in (0, ev.n + 1):
        with pytest.raises(CircuitscanError, match=r"n must be in 1\.\.40"):
            ev.evaluate(masks, bad)


def test_random_examples_at_or_above_n_changes_nothing(planted, planted_prompts):
    """0, n and more than n all mean every prompt: bit-equal tables and curves."""
    n = planted_prompts.n_positive
    tables = [_table(_ev(planted, planted_prompts), r).to_dict() for r in (0, n, n + 7)]
    curves = [{m: c.to_dict() for m, c in _curves(_ev(planted, planted_prompts), r).items()} for r in (0, n, n + 7)]
    assert tables[0] == tables[1] == tables[2]
    assert curves[0] == curves[1] == curves[2]
    assert all(row["examples"] == n for row in tables[0]["rows"] if row["kind"] == "random")
    assert curves[0]["a"]["random_examples"] == n


def test_random_rows_equal_an_evaluator_of_the_first_r_prompts(planted, planted_prompts):
    r = 8
    full, short = _ev(planted, planted_prompts), _ev(planted, planted_prompts, n=r)
    table, want = _table(full, r), _table(short, 0)
    every = _table(_ev(planted, planted_prompts), 0)
    for row, ref, all_prompts in zip(table.rows, want.rows, every.rows, strict=True):
        assert row.name == ref.name == all_prompts.name
        if row.kind == "random":  # as if the evaluator had r prompts
            assert row.examples == r and row.samples == 5
            for got, exp in ((row.metrics, ref.metrics), (row.normalised, ref.normalised), (row.std, ref.std)):
                assert got == pytest.approx(exp, rel=1e-5, abs=1e-6)
            assert row.metrics != pytest.approx(all_prompts.metrics, rel=1e-3)  # and it is not the 40-prompt row
        else:  # every other row keeps all 40 prompts
            assert row.metrics == pytest.approx(all_prompts.metrics, rel=1e-6, abs=1e-7)
    curves, curves_want = _curves(full, r), _curves(short, 0)
    curves_all = _curves(_ev(planted, planted_prompts), 0)
    for m in ("a", "b"):
        got, exp, base = curves[m], curves_want[m], curves_all[m]
        assert got.random_examples == r and exp.random_examples == r
        assert got.random_mean == pytest.approx(exp.random_mean, abs=1e-5)
        assert got.random_std == pytest.approx(exp.random_std, abs=1e-5)
        assert got.values == pytest.approx(base.values, abs=1e-6)  # the method's curve: all prompts
        assert got.cpr == pytest.approx(base.cpr, abs=1e-6) and got.cmd == pytest.approx(base.cmd, abs=1e-6)


def test_fewer_random_examples_run_fewer_rows(planted, planted_prompts):
    a, b = _ev(planted, planted_prompts), _ev(planted, planted_prompts)
    start = a.stats.rows
    assert b.stats.rows == start
    _table(a, 0)
    _table(b, 8)
    n_random = len(torch.unique(torch.cat([m for m in _random_blocks()]), dim=0))
    assert a.stats.rows - b.stats.rows == n_random * (a.n - 8)
    assert b.stats.forward_passes <= a.stats.forward_passes


def _random_blocks():
    from circuitscan.evaluation.intervention import random_circuits

    return [random_circuits(12, [k], 5, 1) for k in (2, 3)]  # the table's: sizes of "partial" and "found"


def test_random_example_count_and_bad_values():
    assert random_example_count(60, 16) == 16 and random_example_count(60, 0) == 60
    assert random_example_count(12, 16) == 12 and RANDOM_EXAMPLES == 16
    with pytest.raises(CircuitscanError, match="random_examples must be >= 0"):
        random_example_count(60, -1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "planted"
    assert main(["discover", "--model", "toy-planted", "--task", "planted", "-n", "24", "--out", str(out),
                 "--epochs", "50"]) == 0
    return out


def test_cli_records_random_examples(run_dir):
    from circuitscan.rundir import read_run_json

    assert main(["evaluate", str(run_dir), "--faithfulness", "--random-samples", "3", "--faithfulness-samples", "2",
                 "--random-examples", "5"]) == 0
    m = read_run_json(run_dir, "metrics.json")
    perf = m["circuit_performance"]
    assert perf["random_examples"] == 5 and perf["random_samples"] == 3 and perf["n_examples"] == 24
    assert all(r["examples"] == 5 for r in perf["rows"] if r["kind"] == "random")
    assert all(c["random_examples"] == 5 for c in m["faithfulness"]["curves"].values())
    from circuitscan.precision import resolve_precision

    assert perf["random_precision"] == resolve_precision("auto") and perf["precision"] == "fp32"
    assert main(["evaluate", str(run_dir), "--random-samples", "2", "--random-precision", "fp32"]) == 0
    assert read_run_json(run_dir, "metrics.json")["circuit_performance"]["random_precision"] == "fp32"
    assert main(["evaluate", str(run_dir), "--random-samples", "2", "--random-examples", "0"]) == 0
    assert read_run_json(run_dir, "metrics.json")["circuit_performance"]["random_examples"] == 24


@pytest.mark.parametrize("flag", ["--random-precision", "--eval-precision"])
def test_cli_rejects_an_unknown_precision(run_dir, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(run_dir), flag, "fp16"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "fp16" in err and "'fp32', 'bf16', 'auto'" in err


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_cli_rejects_bad_random_examples(run_dir, bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(run_dir), "--random-examples", bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--random-examples" in err and bad in err


def test_cli_and_library_share_the_random_examples_default():
    import inspect

    from circuitscan.commands import evaluate as cmd
    from circuitscan.comparison import compare
    from circuitscan.evaluation import performance

    assert cmd.RANDOM_EXAMPLES == RANDOM_EXAMPLES
    for fn in (performance.evaluate_run, circuit_performance, faithfulness_curves, compare):
        assert inspect.signature(fn).parameters["random_examples"].default == RANDOM_EXAMPLES


def test_random_precision_moves_only_the_random_circuits(planted, planted_prompts):
    """bf16 random circuits: the fixed rows are the fp32 ones bit for bit, the random rows
    within bfloat16 rounding; the evaluator records what ran."""
    ev32 = CircuitEvaluator.build(planted, planted_prompts, random_precision="fp32")
    ev16 = CircuitEvaluator.build(planted, planted_prompts, random_precision="bf16")
    assert ev16.describe()["random_precision"] == "bf16" and ev32.describe()["random_precision"] == "fp32"
    t32, t16 = _table(ev32, 8).to_dict()["rows"], _table(ev16, 8).to_dict()["rows"]
    moved = 0.0
    for a, b in zip(t32, t16, strict=True):
        assert a["name"] == b["name"]
        if a["kind"] == "random":
            for k, v in a["normalised"].items():
                assert b["normalised"][k] == pytest.approx(v, abs=5e-2)
                moved = max(moved, abs(b["normalised"][k] - v))
        else:
            assert a == b
    assert moved > 0  # the random rows did run in bfloat16
    c32, c16 = _curves(ev32, 8), _curves(ev16, 8)
    for m in c32:
        assert c32[m].values == c16[m].values and c32[m].cpr == c16[m].cpr  # the methods' curves: fp32 both
        assert c32[m].random_mean != c16[m].random_mean


def test_random_precision_default_is_shared_and_bad_values_are_refused(planted, planted_prompts):
    import inspect

    from circuitscan.commands import evaluate as cmd
    from circuitscan.comparison import compare
    from circuitscan.evaluation import performance
    from circuitscan.evaluation.curve_stats import RANDOM_PRECISION
    from circuitscan.precision import PRECISIONS

    assert cmd.RANDOM_PRECISION == RANDOM_PRECISION == "auto" and cmd.PRECISIONS == PRECISIONS
    for fn in (performance.evaluate_run, compare):
        assert inspect.signature(fn).parameters["random_precision"].default == RANDOM_PRECISION
    with pytest.raises(CircuitscanError, match="precision 'fp16' is not one of fp32, bf16, auto"):
        CircuitEvaluator.build(planted, planted_prompts, random_precision="fp16").evaluate(
            torch.ones(1, 12, dtype=torch.bool), precision="fp16")


@pytest.mark.slow
def test_bf16_random_circuits_leave_the_shared_prefixes_fp32(gpt2_random):
    """Prefixes are cached per length and shared by every circuit: computed during a bf16 random
    pass they must still be the fp32 ones, or the method circuits after it would change."""
    from circuitscan.tasks import build_task

    prompts = build_task("ioi", gpt2_random, 10, seed=0)
    n_total = gpt2_random.layout.n_total
    fixed = random_masks(n_total, 20, 3, generator=torch.Generator().manual_seed(0))
    rand = random_masks(n_total, 30, 4, generator=torch.Generator().manual_seed(1))
    ev = CircuitEvaluator.build(gpt2_random, prompts, random_precision="bf16")
    assert ev.shared is not None and int(ev.shared.max()) > 0  # the prompts do share prefixes
    ev._prefixes = type(ev._prefixes)(gpt2_random)  # forget the build's prefixes: the bf16 pass computes them
    ev.evaluate(rand, precision="bf16")
    got = ev.evaluate(fixed)
    want = CircuitEvaluator.build(gpt2_random, prompts).evaluate(fixed)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name
