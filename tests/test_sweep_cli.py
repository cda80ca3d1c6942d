"""``circuitscan sweep``: end to end on the toy model; bad input exits 2 and writes nothing."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from circuitscan.cli import main

BASE = ["sweep", "--model", "toy-planted", "--task", "planted", "-n", "20", "--epochs", "40",
        "--workers", "1", "--threads-per-worker", "1"]


def fails(argv, capsys, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert match in err, err
    assert "Traceback" not in err


def test_named_sweep_end_to_end_with_figures_and_report(tmp_path, capsys):
    out = tmp_path / "s"
    rc = main([*BASE, "--sweep", "softmax", "--grid", "features=4,8", "--seeds", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "4 point(s) x 2 seed(s)" in printed and "node_auc" in printed and "wrote" in printed
    s = pd.read_csv(out / "summary.csv")
    assert len(s) == 4 and set(s["softmax"]) == {"global", "layer"} and (s["n_ok"] == 2).all()
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["named"] == "softmax" and spec["grid"] == {"softmax": ["global", "layer"], "features": [4, 8]}
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert {"bars-softmax.png", "line-features.png", "f1-vs-theta.png", "f1-vs-theta.svg"} <= set(figs)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "head AUC from pairs" in page
    # the same command again must not silently redo or mix: it asks for --resume
    fails([*BASE, "--sweep", "softmax", "--grid", "features=4,8", "--seeds", "2", "--out", str(out)], capsys,
          "holds a sweep already; pass --resume")
    assert main([*BASE, "--sweep", "softmax", "--grid", "features=4,8", "--seeds", "2", "--out", str(out),
                 "--resume", "--no-figures"]) == 0
    assert "0 SAE unit(s) computed, 10 row(s) reused" in capsys.readouterr().out
    # `circuitscan report` on a sweep directory redraws the sweep's own page
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


def test_search_end_to_end(tmp_path, capsys):
    out = tmp_path / "search"
    rc = main([*BASE, "--search", "optuna", "--trials", "3", "--space", "features=2:8", "l1=0.01:0.1",
               "--level", "node", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "trial 2:" in printed and ("improved on its first trial" in printed or "did not improve" in printed)
    assert len(pd.read_csv(out / "trials.csv")) == 3
    assert (out / "figures" / "search-history.png").is_file() and (out / "figures" / "search-points.png").is_file()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--grid", "features"], "--grid item 'features' must look like axis=value1,value2"),
        (["--grid", "features=1,x"], "axis 'features' cannot take 'x'"),
        (["--grid", "colour=red"], "unknown axis 'colour'; valid axes:"),
        (["--sweep", "nope"], "unknown named sweep 'nope'; known: features-l1"),
        (["--sweep", "negatives"], "varies an option of task 'greater-than'"),
        (["--grid", "edge_k=3", "--level", "node"], "only edge scoring uses"),
        (["--search", "optuna", "--grid", "features=2,4"], "--search explores --space"),
        (["--space", "features=2:8"], "--space is for --search optuna"),
        (["--search", "optuna", "--space", "softmax=1:2"], "cannot search axis 'softmax'"),
        (["--ground-truth", "L9H9"], "does not exist in a model with 3 layers"),
        (["--resume", "--overwrite"], "not both"),
        (["--baselines", "eap,nosuch"], "unknown method 'nosuch'; valid: sae-codes, eap"),
        (["--baselines", "sae-codes"], "is the method the sweep's grid varies"),
        (["--search", "optuna", "--baselines", "eap"], "a --search has none"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    fails([*BASE, "--out", str(out), *extra], capsys, match)
    assert not out.exists()


def test_a_sweep_whose_every_point_fails_exits_1(tmp_path, capsys):
    rc = main([*BASE, "--grid", "easy_negatives=2,3", "--seeds", "1", "--out", str(tmp_path / "s")])
    captured = capsys.readouterr()
    assert rc == 1 and "every point of the sweep failed; first error: prompts: TaskError: easy negatives" in captured.err
    assert (tmp_path / "s" / "results.csv").is_file()  # the errors are in the table


def test_bad_seeds_and_resume_of_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*BASE, "--out", str(tmp_path / "x"), "--seeds", "0,0"])
    assert "seeds must be distinct" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    fails([*BASE, "--out", str(tmp_path / "other"), "--resume"], capsys, "holds no sweep")
    assert (tmp_path / "other" / "file.txt").read_text() == "mine"
