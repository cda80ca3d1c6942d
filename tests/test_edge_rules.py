"""The edge level's rules (issue 13 item 4): the joint-code distance, the ``tv`` and
``top-k-tv`` rules on the planted circuit, and bad rules refused."""

from __future__ import annotations

import pytest
import torch

from circuitscan.codes import code_distance
from circuitscan.codes.edge import joint_distance, joint_distance_reference
from circuitscan.config import EDGE_RULES, SAEConfig, ScoringConfig
from circuitscan.errors import CircuitscanError
from circuitscan.methods.sae_codes_edge import tie_fraction
from circuitscan.types import Codes, HeadLayout


def _codes(n_pairs=12, layers=2, heads=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 4, (2 * n_pairs, layers * heads), generator=g)
    labels = torch.tensor([True] * n_pairs + [False] * n_pairs)
    return Codes(codes, labels, HeadLayout(layers, heads), 4)


def test_joint_distance_matches_the_slow_definition_for_every_label_column():
    c = _codes()
    mask = torch.ones(c.labels.numel(), dtype=torch.bool)
    mask[[0, 12, 5]] = False  # unbalanced: 10 positives, 11 negatives
    swapped = c.labels.clone()
    swapped[[1, 13]] = swapped[[13, 1]]
    got = joint_distance(c.codes, mask, torch.stack([c.labels, swapped], 1), chunk=5)
    assert got.shape == (2, 6, 6)
    assert torch.allclose(got[0], joint_distance_reference(c, mask=mask), atol=1e-6)
    assert torch.allclose(got[1], joint_distance_reference(Codes(c.codes, swapped, c.layout, 4), mask=mask), atol=1e-6)
    assert torch.allclose(got[0].diagonal(), code_distance(c, mask=mask), atol=1e-6)  # a head with itself
    assert torch.allclose(got[0], got[0].T) and float(got.max()) <= 1 + 1e-6
    assert not torch.allclose(got[0], got[1])


def test_exact_counts_stay_exact_past_bfloat16s_integers():
    from circuitscan.codes.edge import exact_counts

    # 700 rows: 600 share one code pair (past 256, where a single bf16 product would round), 100 another
    other = torch.zeros(700, 3, dtype=torch.long)
    other[600:, 1] = 5
    block = torch.tensor([[0, 0, 0], [0, 5, 0]])[:, None, :]
    got = exact_counts(block, other)
    assert got[0, 0, 2] == 700 and got[0, 0, 1] == 600 and got[1, 1, 1] == 100 and got[1, 1, 0] == 100
    assert torch.equal(got, got.transpose(1, 2))
    # many distinct cells, against a direct count
    g = torch.Generator().manual_seed(1)
    other = torch.randint(0, 3, (613, 4), generator=g)
    block = other[:5, None, :]
    want = ((block[:, :, :, None] == other[None, :, :, None]) & (block[:, :, None, :] == other[None, :, None, :])).sum(1)
    assert torch.equal(exact_counts(block, other), want.float())


def test_joint_distance_on_more_examples_than_bfloat16_counts():
    c = _codes(n_pairs=300, heads=2)  # 600 examples, 4 codes: cells of ~40-150
    mask = torch.ones(600, dtype=torch.bool)
    assert torch.allclose(joint_distance(c.codes, mask, c.labels[:, None])[0], joint_distance_reference(c), atol=1e-5)


def test_tie_fraction_and_top_pairs_tiebreak():
    from circuitscan.codes.edge import top_pairs

    assert tie_fraction(torch.tensor([[1.0, 0.0], [1.0, 1.0]])) == 0.0
    U = torch.tensor([[0, 2, 2, 1], [2, 0, 2, 1], [2, 2, 0, 1], [1, 1, 1, 0]]).float()
    assert top_pairs(U, 1).tolist() == [[0, 1], [0, 2], [1, 2]]  # ties with the k-th kept
    second = torch.zeros(4, 4)
    second[1, 2] = second[2, 1] = 1.0
    assert top_pairs(U, 1, second).tolist() == [[1, 2]]
    assert top_pairs(U, 4, second).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert tie_fraction(torch.tensor([1.0, 2.0, 3.0])) == 0.0
    assert tie_fraction(torch.tensor([1.0, 1.0, 3.0, 3.0])) == 1.0
    assert tie_fraction(torch.tensor([0.0, 0.0, 0.5, 2.0])) == 0.5
    assert tie_fraction(torch.tensor([0.1 + 0.2, 0.3, 1.0])) == 2 / 3  # float rounding is no tiebreak
    assert tie_fraction(torch.tensor([0.3, 0.3001, 1.0])) == 0.0


@pytest.fixture(scope="module")
def planted_run(planted, planted_prompts):
    from circuitscan.activations import head_outputs
    from circuitscan.circuits import for_model

    acts = head_outputs(planted, planted_prompts)
    truth = sorted(h.name for h in for_model(None, planted, "planted").heads)
    return acts, truth


def _edge(acts, rule, **kw):
    from circuitscan.methods.sae_codes import SAECodesConfig, discover_from_activations

    torch.set_num_threads(1)
    sae = SAEConfig(epochs=150, input_scale="d_model", head_norm="center", n_seeds=2)
    sc = ScoringConfig(statistic="tv", permutations=200, circuit="fdr-top", edge_rule=rule, edge_permutations=10, **kw)
    return discover_from_activations(acts, SAECodesConfig(sae=sae, scoring=sc, level="both")), sc


def test_tv_rule_ranks_the_planted_heads_and_pairs_on_top(planted_run, single_thread):
    from circuitscan.run import predicted_circuit

    acts, truth = planted_run
    paper, _ = _edge(acts, "top-k")
    d, sc = _edge(acts, "tv")
    s = d.edge
    names = acts.layout.names()
    planted = torch.tensor([n in truth for n in names])
    assert float(s.flat[planted].min()) > float(s.flat[~planted].max())  # the planted heads on top, with a gap
    circuit = predicted_circuit(s, None, None, sc)
    assert sorted(circuit["heads"]) == truth and "edge_rule tv" in circuit["rule"]
    assert sorted(predicted_circuit(d.node, None, None, sc)["heads"]) == truth  # as many heads as the node circuit
    # m (m - 1) / 2 = 3 pairs, all planted: a planted head with any head is as distant as with another
    # planted head, the score of the pair's weaker head breaks that tie
    pairs = {tuple(sorted((names[a], names[b]))) for a, b in s.stats["top_pairs"].tolist()}
    assert pairs == {(a, b) for a in truth for b in truth if a < b}
    assert float(s.flat.sum()) == pytest.approx(1.0)
    # the pair matrix is what ranked the pairs: the joint-code distance (mean over the ensemble), named so
    want = torch.stack([joint_distance(c.codes, m, c.labels[:, None])[0] for c, m in zip(d.member_codes, d.count_masks, strict=True)])
    assert torch.allclose(s.pairs, want.mean(0), atol=1e-6) and not torch.equal(s.pairs, paper.edge.pairs)
    assert s.stats["pair_matrix"].startswith("D[h1,h2]") and paper.edge.stats["pair_matrix"].startswith("U[h1,h2]")
    from circuitscan.run import scores_to_json

    entry = scores_to_json(s)
    assert entry["pairs"]["meaning"] == s.stats["pair_matrix"] and "pair_matrix" not in entry
    a, b = s.stats["top_pairs"][0].tolist()
    assert entry["top_pairs"][0][2] == pytest.approx(float(s.pairs[a, b]))  # the distance beside each pair


def test_top_k_tv_keeps_the_top_k_circuit_and_breaks_its_ties(planted_run, single_thread):
    from circuitscan.methods.sae_codes_edge import _edge_level
    from circuitscan.run import predicted_circuit
    from circuitscan.types import HeadActivations

    acts, _ = planted_run
    paper, sc = _edge(acts, "top-k")
    d, _ = _edge(acts, "top-k-tv")
    assert torch.equal(d.edge.stats["pair_counts"], paper.edge.stats["pair_counts"])  # same k pairs
    assert predicted_circuit(d.edge, None, None, sc)["heads"] == predicted_circuit(paper.edge, None, None, sc)["heads"]
    # random codes: half of all pairs saturates, many heads share a count; the distance orders them
    c = _codes(n_pairs=20, layers=3, heads=4, seed=3)
    fake = HeadActivations(x=torch.zeros(40, 12, 1), labels=c.labels, layout=c.layout, aggregation="mean")
    keep = [torch.ones(40, dtype=torch.bool)]
    node = paper.node.__class__(method="sae-codes", node=torch.zeros(3, 4), layout=c.layout)
    old = _edge_level(fake, [c], keep, ScoringConfig(), node)
    new = _edge_level(fake, [c], keep, ScoringConfig(edge_rule="top-k-tv"), node)
    assert tie_fraction(old.flat) >= 0.5 and tie_fraction(new.flat) < tie_fraction(old.flat) / 2
    tv = _edge_level(fake, [c], keep, ScoringConfig(edge_rule="tv"), node)
    # exact sums of distances tie too (4 codes, 20 + 20 examples: 5.65 four times), but fewer
    assert tie_fraction(tv.flat) < tie_fraction(old.flat) and tv.stats["pair_ties"] < old.stats["pair_ties"]
    assert new.stats["pair_ties"] < old.stats["pair_ties"]
    assert torch.equal(new.stats["top_pairs"], old.stats["top_pairs"])
    o, n = old.flat, new.flat
    order = torch.argsort(n, descending=True)
    assert bool((o[order][:-1] >= o[order][1:]).all())  # the tiebreak never reorders different counts


def test_two_codes_per_head_keep_the_distance_in_0_1(planted, planted_prompts, single_thread):
    from circuitscan.activations import head_outputs
    from circuitscan.methods.sae_codes_edge import _groups, _pair_distance

    acts = head_outputs(planted, planted_prompts, aggregation="mean+last")
    d, sc = _edge(acts, "tv")
    H = acts.layout.n_total
    dist = _pair_distance(list(d.member_codes), list(d.count_masks), sc, _groups(acts), H)
    assert dist.shape == (H, H) and float(dist.max()) <= 1 + 1e-6 and float(dist.max()) > 0.5
    k, _ = _edge(acts, "top-k")
    kt, _ = _edge(acts, "top-k-tv")
    o, n = k.edge.flat, kt.edge.flat
    order = torch.argsort(n, descending=True)
    assert bool((o[order][:-1] >= o[order][1:]).all())  # the tiebreak stays below one count


def test_bad_edge_rules_are_refused(tmp_path, capsys):
    from circuitscan.cli import main

    assert set(EDGE_RULES) >= {"top-k", "fdr", "tv", "top-k-tv"}
    with pytest.raises(CircuitscanError, match="edge_rule must be one of 'top-k', 'fdr', 'tv', 'top-k-tv', got 'tvv'"):
        ScoringConfig(edge_rule="tvv")
    with pytest.raises(CircuitscanError, match="edge_permutations"):
        ScoringConfig(edge_rule="tv", edge_permutations=1)
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--model", "toy-planted", "--task", "planted", "--edge-rule", "tvv",
              "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "tvv" in err and "top-k-tv" in err
