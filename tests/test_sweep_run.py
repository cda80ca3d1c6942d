"""Sweeps on the planted toy model, in-process: tables, known answers, determinism, resume, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from circuitscan import circuits
from circuitscan.config import SAEConfig, ScoringConfig
from circuitscan.errors import CircuitscanError
from circuitscan.methods.sae_codes import SAECodesConfig, discover_from_activations
from circuitscan.sweep.evaluate import run_unit, subset
from circuitscan.sweep.grid import parse_grid
from circuitscan.sweep.plan import THETAS, SweepSpec, build_plan
from circuitscan.sweep.runner import Execution, run_sweep
from circuitscan.types import HeadActivations, HeadLayout

INLINE = Execution(workers=1, threads=1)
TIMING = ["train_s", "score_s", "unit_s", "worker"]


@pytest.fixture(scope="module")
def truth(planted):
    return tuple(sorted(planted.layout.index(h) for h in circuits.get("planted").heads))


def make_spec(truth, grid="features=2,8 l1=0.01,0.1", seeds=(0, 1), **kw):
    kw.setdefault("sae", SAEConfig(epochs=60))
    return SweepSpec(model="toy-planted", task="planted", examples=kw.pop("examples", 20), seeds=seeds,
                     grid=parse_grid(grid, task="planted"), truth=truth, truth_name="planted", **kw)


def metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in TIMING if c in df.columns]).reset_index(drop=True)


def test_small_grid_has_every_point_and_seed_and_finds_the_planted_heads(planted, truth, tmp_path):
    spec = make_spec(truth)
    res = run_sweep(spec, tmp_path / "s", model=planted, execution=INLINE)
    r = res.tables["results"]
    grid = r[r["role"] == "grid"]
    assert len(grid) == 4 * 2 and set(zip(grid["point"], grid["seed"], strict=True)) == {
        (p, s) for p in range(4) for s in (0, 1)}
    assert (r["status"] == "ok").all()
    assert list(grid.drop_duplicates("point")[["features", "l1"]].itertuples(index=False, name=None)) == [
        (2, 0.01), (2, 0.1), (8, 0.01), (8, 0.1)]
    # known answer: with 8 features every planted head has codes unique to positives, others none
    eight = grid[grid["features"] == 8]
    assert (eight["node_auc"] == 1.0).all() and (eight["node_best_f1"] == 1.0).all()
    assert (eight["node_circuit_size"] == 3).all() and (eight["head_auc_from_pairs"] == 1.0).all()
    assert ((grid["train_s"] > 0) & (grid["n_examples"] == 40) & (grid["n_count"] == 30)).all()
    # the reference (base config, 200 features) per seed, and stability against it
    ref = r[r["role"] == "reference"]
    assert len(ref) == 2 and (ref["features"] == 200).all()
    assert ref["node_rank_corr_vs_base"].tolist() == pytest.approx([1.0, 1.0])
    assert grid["node_topk_overlap_vs_base"].between(0, 1).all()
    # summary: mean +- std over seeds per point
    s = res.tables["summary"]
    assert len(s) == 4 and (s["n_ok"] == 2).all() and (s["n_error"] == 0).all()
    g = grid.groupby("point")["node_auc"]
    assert s["node_auc_mean"].tolist() == pytest.approx(g.mean().tolist())
    assert s["node_auc_std"].tolist() == pytest.approx(g.std(ddof=1).tolist())
    # F1 at every theta for node and pair scores, and it peaks at the best-F1 point
    t = res.tables["thresholds"]
    assert len(t) == len(r) * len(THETAS) * 2
    row0 = t[(t["point"] == 2) & (t["seed"] == 0) & (t["level"] == "node")]
    assert row0["f1"].max() <= grid[(grid["point"] == 2) & (grid["seed"] == 0)]["node_best_f1"].iloc[0] + 1e-12
    # files: Parquet and CSV agree; the journal has one line per unit
    for name in ("results", "summary", "thresholds"):
        pq, csv = pd.read_parquet(tmp_path / "s" / f"{name}.parquet"), pd.read_csv(tmp_path / "s" / f"{name}.csv")
        assert len(pq) == len(csv) and list(pq.columns) == list(csv.columns)
    assert len((tmp_path / "s" / "journal.jsonl").read_text().splitlines()) == len(res.plan.units) == 10
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["grid"] == {"features": [2, 8], "l1": [0.01, 0.1]}


def test_sweeps_are_deterministic_under_seeds(planted, truth, tmp_path):
    spec = make_spec(truth, grid="features=2,4", seeds=(0, 1))
    a = run_sweep(spec, tmp_path / "a", model=planted, execution=INLINE).tables["results"]
    b = run_sweep(spec, tmp_path / "b", model=planted, execution=INLINE).tables["results"]
    pd.testing.assert_frame_equal(metrics(a), metrics(b))
    # another seed is another SAE
    mse = a[a["role"] == "grid"].set_index(["point", "seed"])["final_mse"]
    assert mse[(0, 0)] != mse[(0, 1)]


def test_resume_after_interruption_recomputes_nothing_finished(planted, truth, tmp_path):
    spec = make_spec(truth)
    full = run_sweep(spec, tmp_path / "full", model=planted, execution=INLINE).tables["results"]

    def stop_after_three(result, done, total):
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, model=planted, execution=INLINE, on_result=stop_after_three)
    assert len((out / "journal.jsonl").read_text().splitlines()) == 3
    assert not (out / "results.parquet").exists()  # no table describes a half-done sweep
    with (out / "journal.jsonl").open("a") as f:
        f.write('{"unit": "cut-off mid-wri')  # a write interrupted by a crash
    with pytest.raises(CircuitscanError, match="holds a sweep already; pass --resume"):
        run_sweep(spec, out, model=planted, execution=INLINE)
    seen = []
    res = run_sweep(spec, out, model=None, execution=INLINE, resume=True,  # caches exist: no model needed
                    on_result=lambda r, d, t: seen.append(r["unit"]))
    assert res.computed_units == len(seen) == 10 - 3 and res.reused_rows == 3
    pd.testing.assert_frame_equal(metrics(res.tables["results"]), metrics(full))
    # and a finished sweep resumed does nothing
    again = run_sweep(spec, out, execution=INLINE, resume=True)
    assert again.computed_units == 0 and again.reused_rows == len(full)
    # extending the grid computes only the new points
    more = run_sweep(make_spec(truth, grid="features=2,8,16 l1=0.01,0.1"), out, execution=INLINE, resume=True)
    assert more.computed_units == 2 * 2 and len(more.tables["summary"]) == 6


def test_a_failing_point_records_its_error_and_the_sweep_goes_on(planted, truth, tmp_path):
    spec = make_spec(truth, grid="train_examples=10,1000", seeds=(0,))
    res = run_sweep(spec, tmp_path / "s", model=planted, execution=INLINE)
    r = res.tables["results"].set_index("train_examples")
    assert r.loc[10, "status"] == "ok" and r.loc[1000, "status"] == "error"
    assert "train_examples=1000 but the task has only 40 examples" in r.loc[1000, "error"]
    s = res.tables["summary"].set_index("train_examples")
    assert s.loc[1000, "n_error"] == 1 and s.loc[10, "n_ok"] == 1 and "train_examples=1000" in s.loc[1000, "errors"]
    # resuming tries failed rows again, and only them (train_examples=10 is the base: no extra reference)
    again = run_sweep(spec, tmp_path / "s", execution=INLINE, resume=True)
    assert again.computed_units == 1 and again.reused_rows == 1


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_prompt_variant_that_cannot_be_built_fails_only_its_points(planted, truth, tmp_path):
    spec = make_spec(truth, grid="easy_negatives=0,2", seeds=(0,))  # the toy model has no tokenizer for text
    r = run_sweep(spec, tmp_path / "s", model=planted, execution=INLINE).tables["results"].set_index("easy_negatives")
    assert r.loc[0, "status"] == "ok" and r.loc[2, "status"] == "error"
    assert r.loc[2, "error"].startswith("prompts: TaskError: easy negatives are text and need a tokenizer")


def test_a_unit_equals_discover_from_activations(planted, planted_prompts, truth, one_thread):
    from circuitscan.activations import head_outputs
    from circuitscan.evaluation.ground_truth import evaluate_scores

    acts = head_outputs(planted, planted_prompts)
    spec = SweepSpec(model="toy-planted", task="planted", examples=40, seeds=(3,), truth=truth, level="both",
                     grid=parse_grid("softmax=global,layer normalise=false,true edge_k_frac=0.5,0.1"),
                     sae=SAEConfig(epochs=80, n_features=6))
    plan = build_plan(spec)
    (unit,) = [u for u in plan.units.values() if u.sae["n_features"] == 6]
    out = run_unit(acts, unit)
    rows = {r["key"]: r for r in out["rows"]}
    mask = torch.zeros(12, dtype=torch.bool)
    mask[list(truth)] = True
    found = {}
    for info in (i for i in plan.rows.values() if i.unit == unit.key and i.role == "grid"):
        v = info.values
        sc = ScoringConfig(softmax=v["softmax"], normalise=v["normalise"])
        if sc not in found:
            found[sc] = discover_from_activations(acts, SAECodesConfig(
                sae=SAEConfig(epochs=80, n_features=6, seed=3), scoring=sc, level="both"))
        d = found[sc]
        row = rows[info.key]
        assert row["node_scores"] == d.node.flat.tolist()
        assert row["node_auc"] == evaluate_scores(d.node.flat, mask).auc
        if v["edge_k_frac"] == 0.5:  # half of all pairs is the default k
            assert row["pairs_scores"] == d.edge.flat.tolist()
        assert row["edge_k"] == round(v["edge_k_frac"] * 66)
    assert len(found) == 4 and len(rows) == 8 + 1  # and the base row (default k) shares the SAE
    assert out["train"]["final_mse"] == d.train.final_mse


def test_subset_keeps_prefix_pairs_and_every_easy_negative():
    layout = HeadLayout(1, 2)
    labels = torch.tensor([1] * 5 + [0] * 8, dtype=torch.bool)  # 5 positives, 5 paired + 3 easy negatives
    x = torch.arange(13, dtype=torch.float32)[:, None, None].expand(13, 2, 3)
    acts = HeadActivations(x=x, labels=labels, layout=layout)
    s = subset(acts, 2, easy=3)
    assert s.x[:, 0, 0].tolist() == [0, 1, 5, 6, 10, 11, 12] and s.labels.tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert subset(acts, None, easy=3) is acts
    with pytest.raises(CircuitscanError, match="examples=6 but the cached prompt set has 5 per side"):
        subset(acts, 6, easy=3)


def test_examples_and_prompt_axes(planted, truth, tmp_path):
    spec = make_spec(truth, grid="examples=10,20 seq_len=6,8", seeds=(0,), examples=20)
    res = run_sweep(spec, tmp_path / "s", model=planted, execution=INLINE)
    r = res.tables["results"]
    assert (r["status"] == "ok").all()
    assert sorted(r[r["role"] == "grid"]["n_examples"].tolist()) == [20, 20, 40, 40]
    # one forward pass per prompt variant (seq_len), none per examples value
    assert len(list((tmp_path / "s" / "activations").iterdir())) == 2


def test_without_ground_truth_reports_stability_sizes_and_time(planted, tmp_path):
    spec = make_spec(None, grid="features=4,8", seeds=(0,), level="node")
    res = run_sweep(spec, tmp_path / "s", model=planted, execution=INLINE)
    r = res.tables["results"]
    assert "node_auc" not in r.columns and "node_best_f1" not in r.columns
    assert r["node_rank_corr_vs_base"].notna().all() and r["node_size_above_uniform"].notna().all()
    assert res.tables["thresholds"].empty


def test_contrastive_axis_runs_and_changes_the_sae(planted, truth, tmp_path):
    spec = make_spec(truth, grid="contrastive=0,1", seeds=(0,), sae=SAEConfig(epochs=40, n_features=8))
    r = run_sweep(spec, tmp_path / "s", model=planted, execution=INLINE).tables["results"]
    g = r[r["role"] == "grid"].set_index("contrastive")
    assert (g["status"] == "ok").all() and g.loc[0.0, "final_mse"] != g.loc[1.0, "final_mse"]
