"""Faithfulness curves and the performance table on the planted-circuit model (known answers)."""

from __future__ import annotations

import math

import pytest
import torch

from circuitscan.errors import CircuitscanError
from circuitscan.evaluation import (
    MIB_FRACTIONS,
    CircuitEvaluator,
    circuit_performance,
    cmd,
    cpr,
    curve_sizes,
    faithfulness_curve,
    faithfulness_curves,
)
from circuitscan.models.toy import PLANTED_HEADS
from circuitscan.types import GroundTruth, HeadLayout, Scores

LAYOUT = HeadLayout(3, 4)
PLANTED = {LAYOUT.index(h) for h in PLANTED_HEADS}  # flat 1, 6, 8
EVERY = list(range(LAYOUT.n_total + 1))  # every circuit size (the default visits CURVE_POINTS of them)


def _scores(order: list[int], name: str = "hand") -> Scores:
    """Scores that rank the flat head indices in ``order`` first to last."""
    flat = torch.empty(LAYOUT.n_total)
    for rank, i in enumerate(order):
        flat[i] = float(LAYOUT.n_total - rank)
    return Scores(method=name, node=flat.reshape(3, 4), layout=LAYOUT)


def _order_with_planted_at(ranks: list[int]) -> list[int]:
    """A ranking with the planted heads at the given 1-based ranks, others in index order."""
    others = iter(sorted(set(range(LAYOUT.n_total)) - PLANTED))
    planted = iter(sorted(PLANTED))
    return [next(planted) if r + 1 in ranks else next(others) for r in range(LAYOUT.n_total)]


@pytest.fixture(scope="module", params=["corrupt", "mean", "zero"])
def evaluator(request, planted, planted_prompts):
    return CircuitEvaluator.build(planted, planted_prompts, ablation=request.param)


def test_planted_circuit_is_faithful_and_its_complement_is_not(evaluator):
    first = _scores(_order_with_planted_at([1, 2, 3]), "planted-first")
    last = _scores(_order_with_planted_at([10, 11, 12]), "planted-last")
    curves = faithfulness_curves(evaluator, [first, last], sizes=EVERY, random_samples=4)
    f_first, f_last = curves["planted-first"], curves["planted-last"]
    assert f_first.sizes == list(range(13))
    assert f_first.values[3] == pytest.approx(1.0, abs=1e-4)  # the planted circuit
    assert f_last.values[9] == pytest.approx(0.0, abs=1e-4)  # its complement
    assert f_first.values[0] == pytest.approx(0.0, abs=1e-6) and f_first.values[12] == pytest.approx(1.0, abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in f_first.values[3:])
    # the same random circuits serve both methods
    assert f_first.random_mean == f_last.random_mean
    assert f_first.order[:3] == sorted(h.name for h in PLANTED_HEADS)


def test_curve_rises_exactly_where_planted_heads_enter(evaluator):
    ranks = [2, 5, 9]
    curve = faithfulness_curves(evaluator, _scores(_order_with_planted_at(ranks)), sizes=EVERY, random_samples=0)["hand"]
    steps = [b - a for a, b in zip(curve.values, curve.values[1:], strict=False)]
    for k, step in enumerate(steps, start=1):  # step k: the k-th head enters
        if k in ranks:
            assert abs(step) > 0.01, (k, curve.values)
        else:
            assert step == pytest.approx(0.0, abs=1e-4), (k, curve.values)
    assert curve.values[9] == pytest.approx(1.0, abs=1e-4)
    assert math.isnan(curve.cpr_random)


def test_cpr_and_cmd_are_read_off_the_curve_at_the_mib_sizes(evaluator):
    curve = faithfulness_curves(evaluator, _scores(_order_with_planted_at([1, 2, 3])), sizes=EVERY,
                                random_samples=3)["hand"]
    # 12 heads: MIB sizes are 0 (x7), 1, 2, 6, 12
    assert curve.mib_sizes == [0, 0, 0, 0, 0, 0, 0, 1, 2, 6, 12]
    at = [curve.values[k] for k in curve.mib_sizes]
    assert curve.cpr == pytest.approx(cpr(at)) and curve.cmd == pytest.approx(cmd(at))
    # the first two planted heads alone recover part of it; from 3 heads on it is all
    area = (0.2 - 0.1) * (at[7] + at[8]) / 2 + (0.5 - 0.2) * (at[8] + 1) / 2 + 0.5 + (0.1 - 0.05) * at[7] / 2
    assert curve.cpr == pytest.approx(area, abs=1e-5)
    assert curve.cpr > curve.cpr_random and curve.cmd < curve.cmd_random
    assert list(MIB_FRACTIONS) == curve.mib_fractions


def test_random_baseline_statistics(evaluator):
    curve = faithfulness_curves(evaluator, _scores(list(range(12))), random_samples=5, seed=3)["hand"]
    assert curve.random_mean[0] == pytest.approx(0.0, abs=1e-6)
    assert curve.random_mean[-1] == pytest.approx(1.0, abs=1e-6)
    assert curve.random_std[0] == pytest.approx(0.0, abs=1e-6)
    assert all(s >= 0 for s in curve.random_std)
    again = faithfulness_curves(evaluator, _scores(list(range(12))), random_samples=5, seed=3)["hand"]
    assert again.random_mean == curve.random_mean  # seeded


def test_random_circuits_of_a_size_do_not_depend_on_the_other_sizes_or_the_count():
    from circuitscan.evaluation import random_circuits

    both = random_circuits(12, [3, 5], 4, seed=1)
    assert both.shape == (8, 12) and both.sum(1).tolist() == [3] * 4 + [5] * 4
    assert torch.equal(both[4:], random_circuits(12, [5], 4, seed=1))
    assert torch.equal(random_circuits(12, [3], 7, seed=1)[:4], both[:4])  # the table's 7 begin with the curve's 4
    assert not torch.equal(random_circuits(12, [3], 4, seed=2), both[:4])
    assert random_circuits(12, [3], 0).shape == (0, 12)


def test_cpr_and_cmd_and_their_random_baselines_do_not_depend_on_the_other_curve_points(evaluator):
    scores = _scores(_order_with_planted_at([2, 5, 9]))
    dense = faithfulness_curves(evaluator, scores, sizes=EVERY, random_samples=3, seed=4)["hand"]
    sparse = faithfulness_curves(evaluator, scores, sizes=[], random_samples=3, seed=4)["hand"]
    assert sparse.sizes == sorted(set(dense.mib_sizes)) and len(dense.sizes) == 13
    for key in ("cpr", "cmd", "cpr_random", "cmd_random"):
        assert getattr(sparse, key) == getattr(dense, key), key
    at = {k: i for i, k in enumerate(dense.sizes)}
    assert sparse.random_std == [dense.random_std[at[k]] for k in sparse.sizes]


def test_any_scores_plug_in_and_bad_ones_are_refused(planted, planted_prompts):
    # a "baseline": scores from the planted heads' norm, no SAE involved
    w = planted.bridge.W_O.detach().norm(dim=(-1, -2))
    baseline = Scores(method="wo-norm", node=w, layout=LAYOUT)
    curve = faithfulness_curve(planted, planted_prompts, baseline, random_samples=2, n_examples=10)
    assert curve.sizes == curve_sizes(12) and len(curve.values) == len(curve.sizes) and curve.method == "wo-norm"
    ev = CircuitEvaluator.build(planted, planted_prompts, n_examples=5)
    with pytest.raises(CircuitscanError, match="distinct"):
        faithfulness_curves(ev, [baseline, baseline])
    other = Scores(method="x", node=torch.zeros(2, 2), layout=HeadLayout(2, 2))
    with pytest.raises(CircuitscanError, match="2x2 heads"):
        faithfulness_curves(ev, other)
    with pytest.raises(CircuitscanError, match="metric 'prob_diff' was not computed"):
        faithfulness_curves(ev, baseline, metric="prob_diff")
    with pytest.raises(CircuitscanError, match="sizes must lie in 0..12"):
        faithfulness_curves(ev, baseline, sizes=[13])


def test_performance_table_rows(planted, planted_prompts):
    ev = CircuitEvaluator.build(planted, planted_prompts, ablation="corrupt")
    gt = GroundTruth.from_heads([h.name for h in PLANTED_HEADS], name="planted")
    table = circuit_performance(ev, {"found": ["L0H1", "L1H2", "L2H0"], "partial": ["L0H1", "L0H0"]},
                                ground_truth=gt, random_samples=7, seed=1)
    names = [r.name for r in table.rows]
    assert names == ["clean model", "all heads ablated", "corrupted input", "ground truth (planted)", "found",
                     "found complement", "partial", "partial complement", "random 2 heads", "random 3 heads"]
    row = {r.name: r for r in table.rows}
    assert table.metrics == ["logit_diff", "kl", "prob_multiplier"]
    assert row["clean model"].normalised["logit_diff"] == 1.0 and row["clean model"].n_heads == 12
    assert row["all heads ablated"].normalised["logit_diff"] == 0.0 and row["all heads ablated"].n_heads == 0
    assert row["found"].normalised["logit_diff"] == pytest.approx(1.0, abs=1e-4)
    assert row["found"].metrics["kl"] == pytest.approx(0.0, abs=1e-4)
    assert row["found complement"].normalised["logit_diff"] == pytest.approx(0.0, abs=1e-4)
    assert row["ground truth (planted)"].heads == ["L0H1", "L1H2", "L2H0"]
    ld = row["found"].metrics["logit_diff"]
    assert row["found"].metrics["prob_multiplier"] == pytest.approx(math.exp(ld), rel=1e-6)
    rand = row["random 3 heads"]
    assert rand.samples == 7 and rand.std["logit_diff"] > 0
    assert rand.normalised["logit_diff"] < 0.5
    r = rand.examples  # random rows are normalised over the prompts they ran on
    assert r == min(ev.n, 16) and all(x.examples is None for x in table.rows if x.kind != "random")
    span = float(ev.clean["logit_diff"][:r].mean() - ev.empty["logit_diff"][:r].mean())
    assert rand.std["normalised_logit_diff"] == pytest.approx(rand.std["logit_diff"] / abs(span))
    assert table.to_dict()["rows"][0]["name"] == "clean model"


def _planted_port_edges() -> set[str]:
    """The planted circuit at port level: every planted head reads the signal and earlier
    planted heads through its VALUE (queries and keys are zero: uniform attention)."""
    names = [h.name for h in PLANTED_HEADS]
    edges = {f"input->{n}.v" for n in names} | {f"{n}->logits" for n in names}
    for a in PLANTED_HEADS:
        for b in PLANTED_HEADS:
            if a.layer < b.layer:
                edges.add(f"{a.name}->{b.name}.v")
    return edges


@pytest.mark.parametrize("ablation", ["corrupt", "zero"])
def test_edge_level_curve_recovers_the_model_at_the_planted_edges(planted, planted_prompts, ablation):
    from circuitscan.evaluation import edge_faithfulness_curves
    from circuitscan.methods.edges import EdgeGraph

    graph = EdgeGraph.for_model(planted)
    true = _planted_port_edges()
    assert len(true) == 9 and true <= set(graph.edge_names())
    perfect = Scores(method="perfect", node=torch.zeros(3, 4), layout=LAYOUT,
                     edges={e: (1.0 if e in true else 0.0) for e in graph.edge_names()})
    nodes_only = Scores(method="nodes-only", node=torch.zeros(3, 4), layout=LAYOUT)
    curves = edge_faithfulness_curves(planted, planted_prompts, [perfect, nodes_only], ablation=ablation,
                                      random_samples=2, n_examples=8)
    assert set(curves) == {"perfect"}  # methods without edge scores are skipped
    c = curves["perfect"]
    assert c.n_edges == graph.n_edges == 193
    # 193 edges: MIB sizes 0,0,0,0,1,3,9,19,38,96,193; at 9 edges the circuit is complete
    assert c.sizes == [0, 0, 0, 0, 1, 3, 9, 19, 38, 96, 193]
    assert c.values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in c.values[6:])
    assert c.values[5] < 0.99  # 3 of the 9 edges are not enough
    assert c.cpr == pytest.approx(cpr(c.values)) and c.cpr > c.cpr_random
    wrong = Scores(method="bad", node=torch.zeros(3, 4), layout=LAYOUT, edges={"L0H1->L0H2.v": 1.0})
    with pytest.raises(CircuitscanError, match="does not have"):
        edge_faithfulness_curves(planted, planted_prompts, wrong, random_samples=0, n_examples=2)
