"""The label-swap permutation null, Benjamini-Hochberg, significant circuits and edges,
ensembles of SAEs in sae-codes, per-position codes, and the CLI of these variants."""

from __future__ import annotations

import json

import pytest
import torch

from circuitscan.codes import unique_positive_codes
from circuitscan.codes.null import benjamini_hochberg, label_swap_null
from circuitscan.config import SAEConfig, ScoringConfig
from circuitscan.errors import CircuitscanError
from circuitscan.types import Codes, HeadLayout


def _null_codes(n_pairs=30, layers=20, heads=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(2, 12, (layers * heads,), generator=g)
    codes = (torch.rand(2 * n_pairs, layers * heads, generator=g) * k).long()
    labels = torch.tensor([True] * n_pairs + [False] * n_pairs)
    return Codes(codes, labels, HeadLayout(layers, heads), 12)


def test_null_counts_match_and_p_values_are_uniform_on_a_planted_null():
    c = _null_codes()
    mask = torch.ones(c.labels.numel(), dtype=torch.bool)
    mask[[0, 30]] = False  # one pair left out, as a held-out count mask does
    r = label_swap_null([c], [mask], permutations=400, seed=1)
    assert r.scheme == "pair-swap"
    assert torch.equal(r.observed, unique_positive_codes(c, mask=mask))
    for a in (0.05, 0.1, 0.2, 0.5):
        assert abs(float((r.p_randomised <= a).float().mean()) - a) < 0.06, a
        assert float((r.p <= a).float().mean()) <= a + 0.03, a  # valid, conservative
    assert int(benjamini_hochberg(r.p, 0.05)[0].sum()) <= 2


def test_unpaired_examples_get_a_label_shuffle_and_an_ensemble_is_combined():
    c = _null_codes(layers=2, heads=3)
    keep = torch.ones(c.labels.numel(), dtype=torch.bool)
    keep[0] = False  # a positive without its negative: no longer paired
    r = label_swap_null([c, c], [keep, keep], permutations=50, seed=0)
    assert r.scheme == "label-shuffle"
    assert torch.equal(r.observed, unique_positive_codes(c, mask=keep))


def test_benjamini_hochberg_known_answer_and_bad_rate():
    p = torch.tensor([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    keep, adj = benjamini_hochberg(p, 0.05)
    assert keep.tolist() == [True, True] + [False] * 8
    assert adj[0] == pytest.approx(0.01) and adj[1] == pytest.approx(0.04)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(CircuitscanError, match="false-discovery rate"):
            benjamini_hochberg(p, bad)


def test_scoring_config_rejects_bad_settings():
    with pytest.raises(CircuitscanError, match="fdr"):
        ScoringConfig(fdr=1.0)
    with pytest.raises(CircuitscanError, match="permutation null"):
        ScoringConfig(circuit="fdr")
    with pytest.raises(CircuitscanError, match="permutation null"):
        ScoringConfig(node_score="z")


def _discover(acts, level="node", **kw):
    from circuitscan.methods.sae_codes import SAECodesConfig, discover_from_activations

    sae = {k: v for k, v in kw.items() if k in SAEConfig.__dataclass_fields__}
    sc = {k: v for k, v in kw.items() if k in ScoringConfig.__dataclass_fields__}
    return discover_from_activations(acts, SAECodesConfig(sae=SAEConfig(epochs=150, **sae),
                                                          scoring=ScoringConfig(**sc), level=level))


@pytest.fixture(scope="module")
def planted_acts(planted, planted_prompts):
    from circuitscan.activations import head_outputs

    return head_outputs(planted, planted_prompts)


def test_significance_recovers_the_planted_circuit_exactly(planted, single_thread):
    from circuitscan.activations import head_outputs
    from circuitscan.circuits import for_model
    from circuitscan.run import predicted_circuit
    from circuitscan.tasks import build_task

    planted_acts = head_outputs(planted, build_task("planted", planted, 100, seed=0))
    truth = sorted(h.name for h in for_model(None, planted, "planted").heads)
    for seed, n_seeds in ((0, 1), (1, 1), (2, 1), (3, 1), (4, 3)):
        sc = ScoringConfig(permutations=1000, circuit="fdr", node_score="z", null_seed=seed)
        d = _discover(planted_acts, seed=seed, n_seeds=n_seeds, permutations=1000, circuit="fdr", node_score="z",
                      null_seed=seed)
        assert sorted(predicted_circuit(d.node, None, None, sc)["heads"]) == truth, (seed, n_seeds)


def test_ensemble_statistics_and_an_ensemble_of_one(planted_acts, single_thread):
    one = _discover(planted_acts)
    same = _discover(planted_acts, n_seeds=1)
    assert torch.equal(one.node.node, same.node.node) and "seed_std" not in one.node.stats
    ens = _discover(planted_acts, n_seeds=3, seed=5)
    per = torch.stack([unique_positive_codes(c, mask=m) for c, m in zip(ens.member_codes, ens.count_masks,
                                                                         strict=True)])
    stats = ens.node.stats
    assert torch.allclose(stats["unique_positive_codes"].reshape(-1), per.mean(0))
    assert torch.allclose(stats["seed_std"].reshape(-1), per.std(0, unbiased=False))
    assert -1 <= stats["rank_agreement"] <= 1 and stats["n_seeds"] == 3
    assert [m.seed for m in ens.train.members] == [5, 6, 7]


def test_edge_fdr_rule_does_not_saturate(planted_acts, single_thread):
    paper = _discover(planted_acts, level="edge")
    new = _discover(planted_acts, level="edge", edge_rule="fdr", edge_permutations=10)
    n_distinct = lambda s: len(set(s.edge.flat.tolist()))  # noqa: E731
    assert n_distinct(new) > n_distinct(paper)
    assert n_distinct(new) >= 0.75 * planted_acts.layout.n_total
    truth = set(paper.node.ranking()[:3])
    assert set(new.edge.ranking()[:3]) == truth


def test_per_position_codes_count_position_code_pairs(planted, planted_prompts, single_thread):
    from circuitscan.activations import head_outputs

    acts = head_outputs(planted, planted_prompts, aggregation="all")
    d = _discover(acts, permutations=200)
    n, seq, heads = acts.x.shape[0], acts.x.shape[1], acts.layout.n_total
    assert d.codes.codes.shape == (n, seq * heads)
    per_pos = unique_positive_codes(d.codes, mask=d.count_mask).reshape(seq, heads).sum(0)
    assert torch.equal(d.node.stats["unique_positive_codes"].reshape(-1), per_pos)
    assert torch.equal(d.null.observed, per_pos)
    with pytest.raises(CircuitscanError, match="edge level"):
        _discover(acts, level="edge")


def test_mean_and_last_codes_are_scored_together(planted, planted_prompts, single_thread):
    """aggregation mean+last: two codes per head; its statistic and null are the slots' sum,
    the edge level sums the pair counts of the four slot blocks, each slot is centred alone."""
    from circuitscan.activations import head_outputs
    from circuitscan.circuits import for_model
    from circuitscan.codes import code_statistic
    from circuitscan.codes.edge import cooccurrence_both
    from circuitscan.methods.sae_codes import head_normalised
    from circuitscan.run import predicted_circuit

    acts = head_outputs(planted, planted_prompts, aggregation="mean+last")
    H = acts.layout.n_total
    centred = head_normalised(acts, "center").x
    assert torch.allclose(centred.mean(0), torch.zeros_like(centred[0]), atol=1e-4)
    sc = ScoringConfig(statistic="tv", permutations=200, circuit="fdr")
    d = _discover(acts, level="both", permutations=200, statistic="tv", circuit="fdr", head_norm="center",
                  input_scale="d_model")
    assert d.codes.codes.shape == (acts.n_examples, 2 * H)
    per_slot = code_statistic(d.codes, "tv", normalise=False, mask=d.count_mask).reshape(2, H)
    assert torch.allclose(d.node.stats["code_distance"].reshape(-1), per_slot.sum(0))
    assert torch.allclose(d.null.observed, per_slot.sum(0))
    U, _ = cooccurrence_both(d.codes, mask=d.count_mask)
    folded = sum(U[a * H:(a + 1) * H, b * H:(b + 1) * H] for a in range(2) for b in range(2))
    assert torch.equal(d.edge.pairs, folded)
    truth = sorted(h.name for h in for_model(None, planted, "planted").heads)
    assert sorted(predicted_circuit(d.node, None, None, sc)["heads"]) == truth
    with pytest.raises(CircuitscanError, match="mean\\+last"):
        _discover(head_outputs(planted, planted_prompts, aggregation="all"), level="edge")


def test_cli_circuitscan_preset_and_bad_settings_exit_2(tmp_path, capsys):
    from circuitscan.cli import main

    out = tmp_path / "run"
    base = ["discover", "--model", "toy-planted", "--task", "planted", "-n", "30", "--epochs", "100"]
    assert main([*base, "--out", str(out), "--compat", "circuitscan", "--sae-seeds", "2"]) == 0
    text = capsys.readouterr().out
    assert "2 SAEs" in text and "significant at FDR 0.05" in text and "distinct codes per head" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sae"]["n_seeds"] == 2 and len(metrics["sae"]["members"]) == 2
    assert "dead_features" in metrics["sae"] and "rank_agreement" in metrics["sae"]
    scores = json.loads((out / "scores.json").read_text())["methods"]["sae-codes"]
    assert len(scores["p_value"]) == 12 and len(scores["distinct_codes"]) == 12
    for bad, msg in ((["--fdr", "1.5"], "fdr"), (["--sae-seeds", "0"], "n_seeds"),
                     (["--target-l0", "500"], "target_l0"), (["--node-score", "z", "--permutations", "0"], "null")):
        bad_out = tmp_path / "bad"
        assert main([*base, "--out", str(bad_out), *bad]) == 2, bad
        assert msg in capsys.readouterr().err
        assert not bad_out.exists()
    with pytest.raises(SystemExit) as exc:  # a choice argparse refuses itself
        main([*base, "--out", str(tmp_path / "bad"), "--feature-change", "raw"])
    assert exc.value.code == 2 and "invalid choice: 'raw' (choose from 'absolute', 'relative')" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("variant", [{}, {"statistic": "tv", "input_scale": "d_model", "head_norm": "center"}],
                         ids=["paper", "default-tv"])
def test_p_values_are_uniform_on_the_tracr_null_task(single_thread, variant):
    """tracr with random negatives: positives and negatives are both random inputs (a null task)."""
    pytest.importorskip("tracr")
    from scipy.stats import kstest

    from circuitscan.activations import head_outputs
    from circuitscan.tasks import build_task
    from circuitscan.testbeds import tracr as T

    ps, conservative = [], []
    for i, name in enumerate(("sort", "reverse", "frac_prev", "sort_freq")):
        model = T.load_tracr(name)
        for seed in range(4):
            acts = head_outputs(model, build_task("tracr:negative=random", model, 60, seed=seed))
            d = _discover(acts, seed=seed, permutations=300, null_seed=10 * i + seed, **variant)  # independent tie-breaks
            ps.append(d.node.stats["p_value_randomised"].reshape(-1))
            conservative.append(d.node.stats["p_value"].reshape(-1))
    p = torch.cat(ps)
    assert p.numel() >= 50
    assert kstest(p.numpy(), "uniform").pvalue > 0.01
    assert float((torch.cat(conservative) <= 0.05).float().mean()) <= 0.1


def test_head_norm_centres_and_scales_each_head(planted_acts):
    from circuitscan.methods.sae_codes import head_normalised

    c = head_normalised(planted_acts, "center")
    assert torch.allclose(c.x.mean(0), torch.zeros_like(c.x[0]), atol=1e-5)
    s = head_normalised(planted_acts, "standardise")
    rms = s.x.square().sum(-1).mean(0)
    live = planted_acts.x.square().sum(-1).mean(0) > 0
    assert torch.allclose(rms[live], torch.ones_like(rms[live]), atol=1e-4)
    assert head_normalised(planted_acts, "none") is planted_acts
    with pytest.raises(CircuitscanError, match="head_norm"):
        SAEConfig(head_norm="whiten")
