"""The total-variation statistic (``statistic="tv"``): known answers, its permutation null,
the planted circuit, and refusals of bad settings (its null on the tracr null task:
tests/test_codes_null.py, parametrised over the statistic)."""

from __future__ import annotations

import pytest
import torch

from circuitscan.codes import code_distance, code_statistic
from circuitscan.codes.null import benjamini_hochberg, label_swap_null
from circuitscan.config import SAEConfig, ScoringConfig
from circuitscan.errors import CircuitscanError
from circuitscan.types import Codes, HeadLayout


def _codes(rows, labels, layout, n_codes=10):
    return Codes(torch.tensor(rows), torch.tensor(labels), layout, n_codes)


def test_tv_by_hand():
    layout = HeadLayout(1, 4)
    # head 0: pos {1, 1}, neg {1, 1} -> 0 (same distribution)
    # head 1: pos {2, 3}, neg {4, 5} -> 1 (disjoint)
    # head 2: pos {1, 2}, neg {1, 1} -> 0.5 * (|1/2 - 1| + |1/2 - 0|) = 0.5
    # head 3: pos {7, 8}, neg {8, 7} -> 0 (same codes, other order)
    c = _codes([[1, 2, 1, 7], [1, 3, 2, 8], [1, 4, 1, 8], [1, 5, 1, 7]], [True, True, False, False], layout)
    assert code_distance(c).tolist() == [0.0, 1.0, 0.5, 0.0]
    # the paper's count differs where it should: head 3 also 0, head 2 counts code 2 once
    assert code_statistic(c, "unique-positive").tolist() == [0.0, 2.0, 1.0, 0.0]
    mask = torch.tensor([True, False, True, True])  # drop the second positive
    assert code_distance(c, mask=mask).tolist() == [0.0, 1.0, 0.0, 0.5]
    with pytest.raises(CircuitscanError, match="statistic must be one of"):
        code_statistic(c, "kl")


def test_tv_weighs_codes_by_frequency_where_the_count_cannot():
    # head 0: one stray positive code among 20 shared ones; head 1: half the positives change code
    n = 20
    pos = [[1, 1]] * n
    pos[0] = [9, 1]
    pos[1:11] = [[1, 5]] * 10
    rows = pos + [[1, 1]] * n
    c = _codes(rows, [True] * n + [False] * n, HeadLayout(1, 2))
    assert code_statistic(c, "unique-positive").tolist() == [1.0, 1.0]  # the count ties them
    tv = code_distance(c)
    assert tv[0] == pytest.approx(0.05) and tv[1] == pytest.approx(0.5)


def _random_codes(n_pairs=30, layers=20, heads=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(2, 12, (layers * heads,), generator=g)
    codes = (torch.rand(2 * n_pairs, layers * heads, generator=g) * k).long()
    labels = torch.tensor([True] * n_pairs + [False] * n_pairs)
    return Codes(codes, labels, HeadLayout(layers, heads), 12)


def test_tv_null_matches_the_direct_statistic_and_is_uniform_when_labels_do_not_matter():
    c = _random_codes()
    mask = torch.ones(c.labels.numel(), dtype=torch.bool)
    mask[[3, 33]] = False
    r = label_swap_null([c], [mask], permutations=400, seed=2, statistic="tv")
    assert torch.allclose(r.observed, code_distance(c, mask=mask), atol=1e-6)
    for a in (0.05, 0.1, 0.2, 0.5):
        assert abs(float((r.p_randomised <= a).float().mean()) - a) < 0.06, a
        assert float((r.p <= a).float().mean()) <= a + 0.03, a
    assert int(benjamini_hochberg(r.p, 0.05)[0].sum()) <= 2


def test_tv_null_detects_a_head_whose_codes_follow_the_label():
    c = _random_codes(layers=2, heads=3)
    codes = c.codes.clone()
    codes[:30, 4] = 1  # head 4: code 1 on most positives, random on negatives
    codes[:5, 4] = 7
    c = Codes(codes, c.labels, c.layout, c.n_codes)
    r = label_swap_null([c], [torch.ones(60, dtype=torch.bool)], permutations=500, seed=0, statistic="tv")
    keep, _ = benjamini_hochberg(r.p, 0.05)
    assert keep.nonzero().flatten().tolist() == [4]


def test_tv_recovers_the_planted_circuit_by_fdr(planted, single_thread):
    from circuitscan.activations import head_outputs
    from circuitscan.circuits import for_model
    from circuitscan.methods.sae_codes import SAECodesConfig, discover_from_activations
    from circuitscan.run import predicted_circuit
    from circuitscan.tasks import build_task

    acts = head_outputs(planted, build_task("planted", planted, 100, seed=0))
    truth = sorted(h.name for h in for_model(None, planted, "planted").heads)
    for seed in (0, 1, 2):
        sc = ScoringConfig(statistic="tv", permutations=1000, circuit="fdr", node_score="count", null_seed=seed)
        cfg = SAECodesConfig(sae=SAEConfig(epochs=150, seed=seed, input_scale="d_model", head_norm="center"),
                             scoring=sc)
        d = discover_from_activations(acts, cfg)
        assert d.node.stats["statistic"] == "tv"
        assert torch.allclose(d.node.node, d.node.stats["code_distance"])
        assert sorted(predicted_circuit(d.node, None, None, sc)["heads"]) == truth, seed


def test_bad_statistic_settings_are_refused():
    with pytest.raises(CircuitscanError, match="statistic must be 'unique-positive' or 'tv'"):
        ScoringConfig(statistic="kl")
    with pytest.raises(CircuitscanError, match="normalise"):
        ScoringConfig(statistic="tv", normalise=True)


def test_cli_bad_statistic_exits_2(capsys):
    from circuitscan.cli import main

    with pytest.raises(SystemExit) as e:
        main(["discover", "--model", "toy-planted", "--task", "planted", "--statistic", "kl", "--out", "x"])
    assert e.value.code == 2
    assert "--statistic" in capsys.readouterr().err


def test_min_effect_keeps_only_significant_heads_with_a_large_enough_effect(planted, single_thread):
    from circuitscan.activations import head_outputs
    from circuitscan.circuits import for_model
    from circuitscan.methods.sae_codes import SAECodesConfig, discover_from_activations
    from circuitscan.run import predicted_circuit
    from circuitscan.tasks import build_task

    acts = head_outputs(planted, build_task("planted", planted, 100, seed=0))
    truth = sorted(h.name for h in for_model(None, planted, "planted").heads)
    sae = SAEConfig(epochs=150, seed=0, input_scale="d_model", head_norm="center")

    def circuit(min_effect):
        sc = ScoringConfig(statistic="tv", permutations=1000, circuit="fdr", min_effect=min_effect)
        d = discover_from_activations(acts, SAECodesConfig(sae=sae, scoring=sc))
        return d.node, predicted_circuit(d.node, None, None, sc)

    s, c0 = circuit(0.0)
    assert sorted(c0["heads"]) == truth and "effect" not in c0["rule"]
    effect = s.stats["effect"].reshape(-1)
    assert torch.allclose(effect, s.stats["code_distance"].reshape(-1) - s.stats["null_mean"].reshape(-1))
    # a floor just above the weakest planted head's effect drops exactly that head
    sig = s.stats["significant"].reshape(-1)
    weakest = min((effect[i].item(), i) for i in sig.nonzero().flatten().tolist())
    _, c1 = circuit(weakest[0] + 1e-4)
    assert sorted(c1["heads"]) == sorted(set(truth) - {s.layout.head(weakest[1]).name})
    assert "effect (statistic - null mean) >= " in c1["rule"]
    _, c2 = circuit(1.0 + 1e-6)  # TV minus a non-negative null mean never exceeds 1
    assert c2["heads"] == []


def test_bad_min_effect_is_refused(capsys):
    from circuitscan.cli import main

    for bad in (-0.1, float("nan")):
        with pytest.raises(CircuitscanError, match="min_effect must be a finite number >= 0"):
            ScoringConfig(min_effect=bad)
    with pytest.raises(CircuitscanError, match="min_effect must be a number"):
        ScoringConfig(min_effect="0.1")
    assert main(["discover", "--model", "toy-planted", "--task", "planted", "--min-effect", "-1", "--out", "x"]) == 2
    assert "min_effect" in capsys.readouterr().err
    # a floor without the FDR circuit would be silently ignored: refused instead
    with pytest.raises(CircuitscanError, match="needs circuit='fdr'"):
        ScoringConfig(min_effect=0.05)
    assert main(["discover", "--model", "toy-planted", "--task", "planted", "--compat", "paper", "--min-effect",
                 "0.1", "--out", "x"]) == 2
    assert "needs circuit='fdr'" in capsys.readouterr().err


def test_circuit_above_uniform_on_the_default_drops_the_presets_floor():
    import argparse

    from circuitscan.cli import build_parser
    from circuitscan.commands.discover import configs_from_args

    parser = build_parser()
    args = parser.parse_args(["discover", "--model", "toy-planted", "--task", "planted", "--circuit", "above-uniform",
                              "--out", "x"])
    assert isinstance(args, argparse.Namespace)
    _, scoring = configs_from_args(args)
    assert scoring.circuit == "above-uniform" and scoring.min_effect == 0.0
    assert scoring.node_score == "softmax"  # the rule reads softmaxed scores, not the preset's ranks
    _, default = configs_from_args(parser.parse_args(["discover", "--model", "toy-planted", "--task", "planted",
                                                        "--out", "x"]))
    assert default.circuit == "fdr-top" and default.min_effect == 0.05
    _, fdr = configs_from_args(parser.parse_args(["discover", "--model", "toy-planted", "--task", "planted",
                                                    "--circuit", "fdr", "--out", "x"]))
    assert fdr.circuit == "fdr" and fdr.min_effect == 0.05  # the floor belongs to both FDR rules


def test_fdr_top_takes_as_many_heads_as_are_significant_from_the_top_of_the_ranking():
    """circuit='fdr-top': the null fixes the size, the score the members (ties by head index)."""
    from circuitscan.run import predicted_circuit
    from circuitscan.types import Scores

    layout = HeadLayout(2, 3)
    score = torch.tensor([[0.9, 0.1, 0.5], [0.5, 0.8, 0.0]])
    # significant: the low-scoring L0H1 and L1H2 (a head can be significant with a small score)
    significant = torch.tensor([[False, True, False], [False, False, True]])
    s = Scores(method="sae-codes", node=score, layout=layout, stats={"significant": significant})
    sc = ScoringConfig(statistic="tv", permutations=10, circuit="fdr-top", min_effect=0.05)
    c = predicted_circuit(s, None, None, sc)
    assert c["heads"] == ["L0H0", "L1H1"] and c["size"] == 2
    assert c["rule"].startswith("the top 2 heads by score") and "effect (statistic - null mean) >= 0.05" in c["rule"]
    fdr = predicted_circuit(s, None, None, ScoringConfig(statistic="tv", permutations=10, circuit="fdr"))
    assert sorted(fdr["heads"]) == ["L0H1", "L1H2"]
    three = Scores(method="sae-codes", node=score, layout=layout,
                   stats={"significant": torch.tensor([[True, True, True], [False, False, False]])})
    assert predicted_circuit(three, None, None, sc)["heads"] == ["L0H0", "L1H1", "L0H2"]  # L0H2 ties L1H0: index
    none = Scores(method="sae-codes", node=score, layout=layout, stats={"significant": torch.zeros(2, 3, dtype=bool)})
    assert predicted_circuit(none, None, None, sc)["heads"] == []
    with pytest.raises(CircuitscanError, match="circuit must be one of"):
        ScoringConfig(circuit="top")
    with pytest.raises(CircuitscanError, match="permutation null"):
        ScoringConfig(circuit="fdr-top")


def test_rank_change_scores_the_planted_circuit_first_and_falls_back_without_pairs(planted, single_thread):
    from dataclasses import replace

    from circuitscan.activations import head_outputs
    from circuitscan.circuits import for_model
    from circuitscan.methods.sae_codes import SAECodesConfig, discover_from_activations
    from circuitscan.tasks import build_task

    acts = head_outputs(planted, build_task("planted", planted, 60, seed=0))
    truth = sorted(h.name for h in for_model(None, planted, "planted").heads)
    cfg = SAECodesConfig()  # the preset
    cfg = replace(cfg, scoring=replace(cfg.scoring, node_score="rank-change"))
    d = discover_from_activations(acts, cfg)
    change = d.node.stats["paired_feature_change"].reshape(-1)
    tv = d.node.stats["code_distance"].reshape(-1)
    assert sorted(h.name for h in d.node.ranking()[:3]) == truth
    assert float(d.node.flat.max()) <= 1.0 and float(d.node.flat.min()) > 0
    # the score is the mean of the two tie-aware ranks
    from scipy.stats import rankdata

    want = 0.5 * (rankdata(tv.numpy()) + rankdata(change.numpy())) / tv.numel()
    assert torch.allclose(d.node.flat.double(), torch.tensor(want), atol=1e-6)
    alone = discover_from_activations(acts, cfg, paired=False)  # no pairs: the statistic's rank alone
    assert "paired_feature_change" not in alone.node.stats and "not paired" in alone.node.stats["node_score"]
    tv_alone = alone.node.stats["code_distance"].reshape(-1)
    assert torch.allclose(alone.node.flat.double(), torch.tensor(rankdata(tv_alone.numpy()) / tv.numel()), atol=1e-6)


def test_unknown_node_score_and_ranks_above_uniform_are_refused():
    with pytest.raises(CircuitscanError, match="node_score must be one of 'softmax', 'count', 'z', 'rank-change'"):
        ScoringConfig(node_score="rank")
    with pytest.raises(CircuitscanError, match="node_score='rank-change' gives ranks"):
        ScoringConfig(node_score="rank-change", circuit="above-uniform")
    with pytest.raises(CircuitscanError, match="feature_change must be one of 'absolute', 'relative', got 'raw'"):
        ScoringConfig(feature_change="raw")
