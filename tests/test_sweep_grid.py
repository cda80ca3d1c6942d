"""Sweep grids, named sweeps, search spaces and plans: parsing, validation, sharing of work."""

from __future__ import annotations

import pytest

from circuitscan.config import SAEConfig
from circuitscan.errors import CircuitscanError
from circuitscan.sweep.grid import PROMPT, SAE, SCORING, SUBSET, parse_grid
from circuitscan.sweep.plan import SweepSpec, build_plan
from circuitscan.sweep.presets import NAMED_SWEEPS, check_task, get_named
from circuitscan.sweep.search import parse_space


def spec(grid: str = "", **kw) -> SweepSpec:
    task = kw.pop("task", "planted")
    return SweepSpec(model="toy-planted", task=task, grid=parse_grid(grid, task=task), **kw)


def test_grid_parses_typed_values_in_order_with_kinds():
    g = parse_grid(["features=50,100", "lambda=0.005,0.01", "normalise=false,true", "softmax=layer",
                    "examples=10", "k=5"])
    assert g.names == ["features", "l1", "normalise", "softmax", "examples", "edge_k"]
    assert g.values("features") == (50, 100) and g.values("l1") == (0.005, 0.01)
    assert g.values("normalise") == (False, True)
    assert [g.kind(n) for n in g.names] == [SAE, SAE, SCORING, SCORING, SUBSET, SCORING]
    pts = g.points()
    assert len(pts) == len(g) == 8
    assert pts[0] == {"features": 50, "l1": 0.005, "normalise": False, "softmax": "layer", "examples": 10, "edge_k": 5}
    assert pts[-1]["features"] == 100 and pts[-1]["normalise"] is True  # first axis slowest


def test_task_options_are_prompt_axes():
    g = parse_grid("negative=range,year,copy easy_negatives=0,5", task="greater-than")
    assert g.values("negative") == ("range", "year", "copy") and g.values("easy_negatives") == (0, 5)
    assert g.kind("negative") == PROMPT and g.kind("easy_negatives") == PROMPT
    assert parse_grid("seq_len=6,8", task="planted").values("seq_len") == (6, 8)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (["features"], "must look like axis=value1,value2"),
        (["=1,2"], "must look like axis=value1,value2"),
        (["fetaures=1,2"], "unknown axis 'fetaures'; valid axes: features, l1"),
        (["features=abc"], "axis 'features' cannot take 'abc' (expected a whole number); expected int >= 1"),
        (["features=0"], "expected int >= 1"),
        (["l1=-1"], "expected number >= 0"),
        (["l1=nan"], "expected a finite number"),
        (["l1=0.1,"], "has an empty value"),
        (["features=1,1"], "lists a value twice"),
        (["features=1", "n_features=2"], "axis 'features' is given twice"),
        (["softmax=heads"], "expected one of global, layer"),
        (["normalise=maybe"], "expected true or false"),
        (["edge_k_frac=1.5"], "fraction in (0, 1]"),
        (["edge_k=3", "edge_k_frac=0.5"], "not both"),
        (["negative=year"], "unknown axis 'negative'"),  # not an option of 'planted'
        (["easy_negatives=-1"], "expected a number >= 0"),
    ],
)
def test_bad_grids_name_the_item_and_what_is_valid(items, match):
    with pytest.raises(CircuitscanError, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_grid(items, task="planted")


def test_named_sweeps_cover_the_papers_axes_and_parse():
    papers = {s.paper for s in NAMED_SWEEPS.values()}
    for fig in ("Fig. 3", "Fig. 4", "Fig. 35", "Fig. 24", "Fig. 23", "Fig. 21", "Fig. 22", "Fig. 19", "Fig. 20"):
        assert fig in papers
    assert any("Appendix J" in p for p in papers)
    for s in NAMED_SWEEPS.values():
        task = s.task or "ioi"
        check_task(s, task)
        g = s.parse(task)
        assert len(g) >= 1 and build_plan(spec(task=task, grid=" ".join(s.grid), level=s.level or "both")).rows
    with pytest.raises(CircuitscanError, match="cannot run on task 'planted'"):
        check_task(get_named("negatives"), "planted")
    with pytest.raises(CircuitscanError, match="unknown named sweep 'nope'; known: features-l1"):
        get_named("nope")


def test_merged_grid_overrides_axes_by_name():
    g = get_named("features-l1").parse(None).merged(parse_grid("features=8,16 softmax=layer"))
    assert g.values("features") == (8, 16) and len(g.values("l1")) == 5 and g.names[-1] == "softmax"


def test_plan_shares_sae_units_across_scoring_and_caches_prompts_once_per_variant():
    s = spec("features=4,8 softmax=global,layer", seeds=(0, 1, 2))
    p = build_plan(s)
    assert len(p.variants) == 1
    assert len(p.units) == 2 * 3 + 3  # features x seeds, plus the base (200 features) per seed
    assert all(len(u.rows) == 2 for u in p.units.values() if u.sae["n_features"] in (4, 8))
    grid_rows = [r for r in p.rows.values() if r.role == "grid"]
    assert len(grid_rows) == 12 and {r.point for r in grid_rows} == set(range(4))
    assert len(p.reference) == 3 and all(p.rows[k].role == "reference" for k in p.reference.values())
    # a prompt axis makes one variant per value; an examples axis slices one cache
    assert len(build_plan(spec("seq_len=6,8")).variants) == 2
    pe = build_plan(spec("examples=10,30", examples=20))
    assert len(pe.variants) == 1 and next(iter(pe.variants.values())).n == 30
    assert sorted(str(u.examples) for u in pe.units.values()) == ["10", "20", "None"]


def test_base_point_in_the_grid_is_its_own_reference_and_keys_ignore_grid_order():
    s = spec("features=200,8", seeds=(0,), sae=SAEConfig())
    p = build_plan(s)
    assert len(p.rows) == 2 and p.rows[p.reference[0]].role == "grid"
    a = build_plan(spec("features=4,8 l1=0.1,0.2"))
    b = build_plan(spec("l1=0.2,0.1 features=8,4"))
    assert set(a.rows) == set(b.rows) and set(a.units) == set(b.units)
    c = build_plan(spec("features=4,8 l1=0.1,0.2", truth=(1, 2)))
    assert not set(c.rows) & set(a.rows)  # another ground truth: other rows


def test_spec_rejects_edge_axes_without_edge_scoring_and_bad_seeds():
    with pytest.raises(CircuitscanError, match="only edge scoring uses; use --level both"):
        spec("edge_k=4", level="node")
    with pytest.raises(CircuitscanError, match="seeds repeat"):
        spec("features=4", seeds=(0, 0))
    with pytest.raises(CircuitscanError, match="needs at least one seed"):
        spec("features=4", seeds=())


def test_search_space_parsing():
    sp = parse_space(None)
    assert [(r.axis, r.low, r.high, r.integer, r.log) for r in sp.ranges] == [
        ("features", 128, 2048, True, True), ("l1", 0.01, 0.1, False, True)]
    assert parse_space("l1=0:0.1").ranges[0].log is False
    for bad, match in [("features", "axis=low:high"), ("softmax=a:b", "cannot search axis 'softmax'"),
                       ("features=10:5", "needs low < high"), ("l1=x:1", "bounds of 'l1'"),
                       ("l1=0.1:1 l1=0.2:1", "given twice")]:
        with pytest.raises(CircuitscanError, match=match):
            parse_space(bad)
