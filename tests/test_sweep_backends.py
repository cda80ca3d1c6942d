"""Execution backends give the same table: in-process, a local process pool, a local Ray instance."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from circuitscan import circuits
from circuitscan.config import SAEConfig
from circuitscan.sweep.backends import DIED, LocalPoolBackend
from circuitscan.sweep.grid import parse_grid
from circuitscan.sweep.plan import RowTask, SweepSpec, UnitTask
from circuitscan.sweep.runner import Execution, run_sweep

TIMING = ["train_s", "score_s", "unit_s", "worker"]
GRID = "features=2,8 seq_len=6,8"  # two prompt variants, so activations are shared per variant


def make_spec(planted) -> SweepSpec:
    truth = tuple(sorted(planted.layout.index(h) for h in circuits.get("planted").heads))
    return SweepSpec(model="toy-planted", task="planted", examples=20, seeds=(0, 1), truth=truth,
                     grid=parse_grid(GRID, task="planted"), sae=SAEConfig(epochs=50, n_features=4))


@pytest.fixture(scope="module")
def inline_table(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("inline") / "s"
    return run_sweep(make_spec(planted), out, model=planted, execution=Execution(workers=1, threads=1))


def metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIMING).reset_index(drop=True)


def test_local_pool_equals_inline(planted, inline_table, tmp_path):
    res = run_sweep(make_spec(planted), tmp_path / "s", model=planted, execution=Execution(workers=2, threads=1))
    assert res.backend.startswith("local (2 worker(s) x 1 thread(s))")
    r = res.tables["results"]
    assert (r["status"] == "ok").all()
    pd.testing.assert_frame_equal(metrics(r), metrics(inline_table.tables["results"]))
    pids = {w.rsplit(":", 1)[1] for w in r["worker"]}
    assert str(os.getpid()) not in pids  # the units ran in worker processes


def dies_on_boom(unit: UnitTask) -> dict:
    """A worker function that kills its process for one unit (a stand-in for an out-of-memory kill)."""
    if unit.key == "boom":
        os._exit(3)
    return {"unit": unit.key, "worker": str(os.getpid()), "train": {},
            "rows": [{"key": r.key, "status": "ok", "error": None} for r in unit.rows]}


def test_a_dead_worker_costs_only_its_own_unit():
    def unit(key: str) -> UnitTask:
        return UnitTask(key=key, variant="v", examples=None, sae={"seed": 0}, contrastive={}, level="node",
                        rows=(RowTask(key + "-row", {}),), truth=None)

    keys = ["a", "b", "boom", "c", "d", "e"]
    backend = LocalPoolBackend({}, workers=2, threads=1, fn=dies_on_boom)
    try:
        results = list(backend.run([unit(k) for k in keys]))
    finally:
        backend.close()
    by_unit = {r["unit"]: r for r in results}
    assert sorted(by_unit) == sorted(keys) and len(results) == len(keys)  # each unit reported once
    assert by_unit["boom"]["rows"][0]["status"] == "error" and DIED in by_unit["boom"]["rows"][0]["error"]
    assert all(by_unit[k]["rows"][0]["status"] == "ok" for k in keys if k != "boom")


@pytest.mark.slow  # starts a Ray cluster
@pytest.mark.filterwarnings("ignore::UserWarning")  # Ray's start-up chatter (auth tokens, /dev/shm)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_ray_equals_local_and_puts_activations_once_per_variant(planted, inline_table, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is the optional 'scale' extra (scripts/setup.sh installs it)")
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(type(value)) or real_put(value, **kw))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(make_spec(planted), tmp_path / "s", model=planted,
                        execution=Execution(workers=2, threads=1, ray_address="auto"))
    finally:
        ray.shutdown()
    assert res.backend.startswith("ray")
    assert puts == [tuple, tuple]  # two prompt variants: two objects, however many tasks (10)
    r = res.tables["results"]
    assert (r["status"] == "ok").all() and len(res.plan.units) == 10
    pd.testing.assert_frame_equal(metrics(r), metrics(inline_table.tables["results"]))
