"""Optuna search on the toy model: improves on its first trial or says it did not; resumes from storage."""

from __future__ import annotations

import json

import pytest

from circuitscan import circuits
from circuitscan.config import SAEConfig
from circuitscan.errors import CircuitscanError
from circuitscan.sweep.plan import SweepSpec
from circuitscan.sweep.runner import Execution
from circuitscan.sweep.search import improvement, parse_space, run_search

INLINE = Execution(workers=1, threads=1)
SPACE = parse_space("features=1:12 l1=0.001:1")


def make_spec(planted, truth=True) -> SweepSpec:
    t = tuple(sorted(planted.layout.index(h) for h in circuits.get("planted").heads)) if truth else None
    return SweepSpec(model="toy-planted", task="planted", examples=20, seeds=(0,), truth=t, truth_name="planted",
                     level="node", sae=SAEConfig(epochs=40))


def test_improvement_says_which_way_it_went():
    import optuna
    from optuna.distributions import FloatDistribution

    def trial(number, value):
        t = optuna.trial.create_trial(params={"l1": 0.1}, distributions={"l1": FloatDistribution(0.01, 1)},
                                      value=value)
        t.number = number
        return t

    up = improvement([trial(0, 0.7), trial(1, 0.9), trial(2, 0.8)])
    assert up["improved"] and up["best"]["trial"] == 1 and up["first"]["value"] == 0.7
    assert "improved on its first trial: best trial #1" in up["message"] and "up from 0.7000" in up["message"]
    flat = improvement([trial(0, 0.9), trial(1, 0.9), trial(2, 0.5)])
    assert not flat["improved"] and "did not improve on its first trial (#0, node AUC 0.9000)" in flat["message"]
    top = improvement([trial(0, 1.0), trial(1, 1.0)])
    assert "already reached the maximum" in top["message"]
    assert "no trial finished" in improvement([])["message"]


def test_search_runs_reports_and_resumes_from_its_storage(planted, tmp_path):
    import optuna

    out = tmp_path / "search"
    res = run_search(make_spec(planted), out, trials=4, space=SPACE, model=planted, execution=INLINE)
    t = res.trials
    assert len(t) == 4 and (t["state"] == "COMPLETE").all()
    assert t["features"].between(1, 12).all() and t["l1"].between(0.001, 1).all()
    assert t["best_so_far"].tolist() == t["node_auc"].cummax().tolist()
    summary = json.loads((out / "search.json").read_text())
    first, best = t["node_auc"].iloc[0], t["node_auc"].max()
    assert summary["improved"] == (best > first)
    assert ("improved on its first trial" if best > first else "did not improve on its first trial") in summary[
        "message"]
    assert (out / "trials.parquet").is_file() and (out / "trials.csv").is_file() and (out / "study.db").is_file()

    # a trial left running by an interruption: failed and asked again on resume
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name=res.study_name, storage=storage)
    stale = study.ask({"features": optuna.distributions.IntDistribution(1, 12, log=True),
                       "l1": optuna.distributions.FloatDistribution(0.001, 1, log=True)})
    more = run_search(make_spec(planted), out, trials=6, space=SPACE, execution=INLINE, resume=True)
    states = more.trials.set_index("trial")["state"]
    assert states[stale.number] == "FAIL" and (states == "COMPLETE").sum() == 6
    redo = more.trials[more.trials["trial"] > stale.number].iloc[0]
    assert (redo["features"], redo["l1"]) == (stale.params["features"], stale.params["l1"])
    assert more.trials[more.trials["trial"] < 4]["node_auc"].tolist() == t["node_auc"].tolist()
    # the resumed sampler drew new points instead of replaying the first ones
    old = set(zip(t["features"], t["l1"], strict=True))
    new = more.trials[(more.trials["state"] == "COMPLETE") & (more.trials["trial"] > redo["trial"])]
    assert all((f, l1) not in old for f, l1 in zip(new["features"], new["l1"], strict=True))


def test_search_needs_a_ground_truth_and_a_valid_storage(planted, tmp_path):
    with pytest.raises(CircuitscanError, match="needs a ground truth"):
        run_search(make_spec(planted, truth=False), tmp_path / "a", trials=2, model=planted, execution=INLINE)
    with pytest.raises(CircuitscanError, match="does not exist"):
        run_search(make_spec(planted), tmp_path / "b", trials=2, storage=f"sqlite:///{tmp_path}/no/such/dir/x.db",
                   model=planted, execution=INLINE)
    with pytest.raises(CircuitscanError, match="is not a database URL"):
        run_search(make_spec(planted), tmp_path / "c", trials=2, storage="study.db", model=planted, execution=INLINE)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
