"""RelP (relevance patching) and CD-T (contextual decomposition) against known answers.

* toy-planted is linear in every head's value (uniform attention, no norm, no MLP): RelP's
  rules change nothing there, so RelP equals EAP, and CD-T's decomposition is exact, so a
  head's CD-T score equals minus its activation-patching effect; both rank the planted
  heads first (AUC 1).
* RelP with no rules is EAP; its rules leave every forward value unchanged (the logits
  under the rule hooks are the model's) and change the backward pass where a norm or a
  smooth nonlinearity is (toy-induction's LayerNorm, gpt2-random's LayerNorm and GELU).
* tracr frac_prev: its one true head writes what the output reads; RelP (ReLU: the
  identity rule is the gradient) equals EAP and both CD-T and RelP give AUC 1.
"""

from __future__ import annotations

import os

import pytest
import torch

from circuitscan.circuits import get as get_circuit
from circuitscan.errors import CircuitscanError
from circuitscan.evaluation.ground_truth import evaluate_against
from circuitscan.methods import get


@pytest.fixture(scope="module")
def induction(single_thread):
    from circuitscan.models import load_model
    from circuitscan.tasks import build_task

    model = load_model("toy-induction")
    return model, build_task("induction", model, 16, seed=0)


@pytest.mark.parametrize("name", ["relp", "cd-t"])
def test_planted_heads_rank_first(planted, planted_prompts, name):
    gt = get_circuit("planted")
    scores = get(name).score(planted, planted_prompts)
    assert scores.method == name and scores.node.shape == (3, 4)
    gm = evaluate_against(scores, gt)
    assert gm.auc == pytest.approx(1.0) and gm.best_f1 == pytest.approx(1.0)
    flat, mask = scores.flat, gt.mask(planted.layout)
    assert flat[mask].min() > flat[~mask].max()
    assert scores.wall_time_s > 0
    assert (scores.backward_passes > 0) == (name == "relp")


def test_relp_is_eap_on_the_linear_planted_model(planted, planted_prompts):
    from circuitscan.evaluation.edges import (
        EdgeGraph,
        contract,
        edge_auc,
        head_level_edges,
        planted_true_edges,
    )
    from circuitscan.methods.eap import EAPConfig

    relp = get("relp").score(planted, planted_prompts)
    eap = get("eap").score(planted, planted_prompts, EAPConfig())
    torch.testing.assert_close(relp.node, eap.node)
    assert relp.forward_passes == eap.forward_passes and relp.backward_passes == eap.backward_passes
    e = edge_auc(contract(EdgeGraph.for_model(planted), relp.edges), planted_true_edges(),
                 head_level_edges(planted.layout))
    assert e["auc"] == pytest.approx(1.0)


def test_cd_t_is_exact_on_the_linear_planted_model(planted, planted_prompts):
    from circuitscan.methods.cd_t import CDTConfig
    from circuitscan.methods.patching import PatchingConfig

    n_total = planted.layout.n_total
    for ablation in ("corrupt", "zero"):
        patch = get("patching").score(planted, planted_prompts, PatchingConfig(ablation=ablation))
        for k, per_batch in ((1, n_total), (5, 3), (None, 3)):  # None: 128 // 32 rows = 4 heads a pass
            cdt = get("cd-t").score(planted, planted_prompts, CDTConfig(ablation=ablation, heads_per_pass=k))
            # contribution of the head's relevant part = minus the change when it is ablated
            torch.testing.assert_close(cdt.stats["signed"], -patch.stats["signed"], atol=1e-4, rtol=1e-4)
            n_batches = -(-planted_prompts.n_positive // CDTConfig().batch_size)
            # the objective's passes (the corrupted prompts' two batches; none for zero), then per
            # batch a clean pass and ceil(n_heads / heads_per_pass) decomposition passes
            setup = {"corrupt": n_batches, "zero": 0}[ablation]
            assert cdt.forward_passes == setup + n_batches * (1 + per_batch), (ablation, k)
            assert cdt.stats["heads_per_pass"] == (k or 4)


@pytest.mark.parametrize("k", [2, 5, 12, None])
def test_cd_t_batched_heads_give_the_one_head_scores(planted, planted_prompts, k):
    from circuitscan.methods.cd_t import CDTConfig

    one = get("cd-t").score(planted, planted_prompts, CDTConfig(heads_per_pass=1))
    many = get("cd-t").score(planted, planted_prompts, CDTConfig(heads_per_pass=k))
    torch.testing.assert_close(many.stats["signed"], one.stats["signed"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(many.node, one.node, atol=1e-5, rtol=1e-5)
    assert many.forward_passes < one.forward_passes


def test_cd_t_batched_heads_on_toy_induction(induction):
    """LayerNorm scales and attention patterns frozen, heads of both layers in one pass."""
    from circuitscan.methods.cd_t import CDTConfig

    model, prompts = induction
    one = get("cd-t").score(model, prompts, CDTConfig(heads_per_pass=1))
    many = get("cd-t").score(model, prompts, CDTConfig(heads_per_pass=3))
    torch.testing.assert_close(many.stats["signed"], one.stats["signed"], atol=1e-5, rtol=1e-5)
    assert many.forward_passes == one.forward_passes - (model.layout.n_total - 6)  # 16 heads: 6 passes


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_heads_per_pass_is_named(bad):
    from circuitscan.methods.cd_t import CDTConfig

    with pytest.raises(CircuitscanError, match=r"heads_per_pass must be an integer >= 1.*got"):
        CDTConfig(heads_per_pass=bad)


def test_relp_without_rules_is_eap_and_its_rules_move_the_scores(induction):
    from circuitscan.methods.eap import EAPConfig
    from circuitscan.methods.relp import RelPConfig

    model, prompts = induction
    eap = get("eap").score(model, prompts, EAPConfig())
    bare = get("relp").score(model, prompts, RelPConfig(rules=()))
    torch.testing.assert_close(bare.node, eap.node)
    assert bare.edges.keys() == eap.edges.keys()
    full = get("relp").score(model, prompts, RelPConfig())
    assert full.stats["rule_sites"] == 3  # ln1 of both layers and the final norm
    assert not torch.allclose(full.node, eap.node, atol=1e-4)


@pytest.mark.parametrize(("spec", "rules", "n_sites"), [
    ("toy-induction", ("ln", "attention"), 5),
    ("gpt2-random", ("ln", "identity", "half", "attention"), None),
])
def test_relp_rules_keep_the_forward_values(spec, rules, n_sites, single_thread):
    from circuitscan.methods.relp import relp_rules
    from circuitscan.models import load_model
    from circuitscan.models.hf import bridge_only

    model = load_model(spec)
    tokens = torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), bridge_only(model):
        want = model.bridge(tokens)
    with torch.no_grad(), relp_rules(model, rules) as sites:
        got = model.bridge(tokens)
    torch.testing.assert_close(got, want)
    if n_sites is not None:
        assert len(sites) == n_sites
    else:  # a GELU MLP per layer: its pre- and post-activation hooks are among the sites
        assert any(s.endswith("mlp.hook_post") for s in sites)


def test_relp_identity_rule_changes_the_gradient_through_gelu(single_thread):
    from circuitscan.methods.eap import EAPConfig
    from circuitscan.methods.relp import RelPConfig
    from circuitscan.models import load_model
    from circuitscan.tasks import build_task

    model = load_model("gpt2-random")
    prompts = build_task("ioi", model, 4, seed=0)
    eap = get("eap").score(model, prompts, EAPConfig(edges=False))
    ident = get("relp").score(model, prompts, RelPConfig(edges=False, rules=("identity",)))
    assert torch.isfinite(ident.node).all()
    assert not torch.allclose(ident.node, eap.node, atol=1e-6)


def test_bad_rule_is_named():
    from circuitscan.methods.relp import RelPConfig

    with pytest.raises(CircuitscanError, match="unknown RelP rule.*'lnx'.*valid rules"):
        RelPConfig(rules=("lnx",))


def _need_tracr() -> None:
    try:
        import tracr.compiler.compiling  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise AssertionError(f"CI must run the tracr tests, but tracr does not import: {exc}") from exc
        pytest.skip(f"tracr is not installed ({exc}); pip install 'circuitscan[tracr]'")


def test_tracr_frac_prev_relp_and_cd_t(single_thread):
    _need_tracr()
    from circuitscan.methods.cd_t import CDTConfig
    from circuitscan.methods.eap import EAPConfig
    from circuitscan.methods.relp import RelPConfig
    from circuitscan.testbeds import tracr as T

    T.register_metric()
    model = T.load_tracr("frac_prev")
    prompts = T.build_tracr_task(model, 50, seed=0, negative="constant")
    gt = T.ground_truth(model)
    relp = get("relp").score(model, prompts, RelPConfig(ablation="mean", edges=False))
    eap = get("eap").score(model, prompts, EAPConfig(ablation="mean", edges=False))
    torch.testing.assert_close(relp.node, eap.node)  # ReLU MLPs, no norm: the rules are the gradient
    assert relp.stats["rule_sites"] > 0  # the MLPs' hooks were in the pass
    cdt = get("cd-t").score(model, prompts, CDTConfig(ablation="mean"))
    one = get("cd-t").score(model, prompts, CDTConfig(ablation="mean", heads_per_pass=1))  # a pass per head
    torch.testing.assert_close(cdt.stats["signed"], one.stats["signed"], atol=1e-5, rtol=1e-5)
    assert cdt.stats["heads_per_pass"] > 1 and cdt.forward_passes < one.forward_passes
    for s in (relp, cdt):
        assert evaluate_against(s, gt).auc == 1.0, s.method
        assert (s.flat[~gt.mask(model.layout)] == 0).all()  # W_O = 0: nothing relevant leaves them
