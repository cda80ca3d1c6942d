"""toy-induction (trained here, cached) and head scores for any model.

Known answers:

* head scores of a hand-set model: a previous-token head scores 1 (to 1e-6) and a head
  with W_Q = W_K = 0 scores exactly the mean of 1 / (p + 1) over the positions read;
* the trained model does induction: loss on repeated tokens below a quarter of the loss
  on unrepeated ones (measured: 0.58 vs 4.21 nats);
* its reference circuit has the classic two-layer shape: induction heads in layer 1,
  previous-token heads in layer 0;
* sae-codes and EAP find it: node ROC AUC >= 0.9 over its 16 heads (measured on 250
  prompts: sae-codes 0.98, EAP 0.97). The margin: the previous-token head attends to the
  previous token on negatives too, so input-contrast methods may rank it below some
  non-circuit heads; one such head out of 8 costs up to 1/8 of the AUC;
* KL faithfulness curves with zero ablation (Appendix H): the full model has KL 0, the
  empty one loses the task, both methods beat random circuits of the same sizes on
  average, and reach KL <= 10 % of the empty model's within 15 of 16 heads (the paper:
  near zero at 12-15 heads).

The model trains once per machine (about a minute on 2 free cores) into the circuitscan
cache; later sessions load it in well under a second.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def toy_induction(single_thread):
    from circuitscan.models import load_model

    return load_model("toy-induction")


@pytest.fixture(scope="module")
def induction_prompts(toy_induction):
    from circuitscan.tasks import build_task

    return build_task("induction", toy_induction, 250, seed=0)


@pytest.fixture(scope="module")
def gt(toy_induction):
    from circuitscan import circuits

    return circuits.default_for("induction", toy_induction.family, model=toy_induction)


def _hand_set_model():
    """1 layer: head 0 attends to the previous token (positions one-hot, K shifted), head 1 uniformly."""
    import torch

    from circuitscan.models.handle import ModelHandle
    from circuitscan.testbeds._native import boot, native_params, set_weights
    from circuitscan.types import HeadLayout

    n_ctx, d_head = 8, 8
    cfg = dict(
        n_layers=1,
        n_heads=2,
        d_model=16,
        d_head=d_head,
        d_vocab=20,
        n_ctx=n_ctx,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        act_fn="gelu",
        seed=0,
    )
    bridge = boot(cfg)
    w = {k: torch.zeros_like(v) for k, v in native_params(bridge).items()}
    w["pos.weight"][:, :n_ctx] = torch.eye(n_ctx)
    w["tok_embed.weight"][:, n_ctx:] = torch.randn(
        20, 16 - n_ctx, generator=torch.Generator().manual_seed(0)
    )
    w["layers.0.attn.q.weight"][:d_head, :n_ctx] = 100.0 * torch.eye(n_ctx)
    shift = torch.zeros(n_ctx, n_ctx)
    # the key of position j points at j + 1: the query of p matches the key of p - 1
    shift[torch.arange(1, n_ctx), torch.arange(n_ctx - 1)] = 1.0
    w["layers.0.attn.k.weight"][:d_head, :n_ctx] = shift
    set_weights(bridge, w, what="hand-set")
    return ModelHandle(
        bridge=bridge,
        spec="hand-set",
        family="hand-set",
        layout=HeadLayout(1, 2),
        tokenizer=None,
        prepend_bos=False,
    )


def test_head_scores_known_answer():
    from circuitscan.errors import CircuitscanError
    from circuitscan.testbeds.head_scores import head_scores

    model = _hand_set_model()
    s = head_scores(model, n=6, length=4, seed=0)
    uniform_prev = sum(1 / (p + 1) for p in range(1, 8)) / 7
    uniform_ind = sum(1 / (p + 1) for p in range(4, 8)) / 4
    assert s.previous_token[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert s.induction[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert s.previous_token[0, 1].item() == pytest.approx(uniform_prev, abs=1e-6)
    assert s.induction[0, 1].item() == pytest.approx(uniform_ind, abs=1e-6)
    with pytest.raises(CircuitscanError, match="do not fit model 'hand-set'"):
        head_scores(model, n=2, length=5)


def test_trained_model_does_induction(toy_induction):
    from circuitscan.testbeds.induction import induction_losses

    saved = toy_induction.info["induction_task_loss"]
    assert saved["repeated"] < 0.25 * saved["unrepeated"]
    fresh = induction_losses(toy_induction, n=100, seed=7)  # other sequences than at training time
    assert fresh["repeated"] < 0.25 * fresh["unrepeated"]
    assert fresh["unrepeated"] > 3.0  # unrepeated tokens stay unpredictable (log 64 = 4.16)


def test_cached_with_its_config_and_reloads_identically(toy_induction):
    from dataclasses import asdict

    import torch

    from circuitscan.models import load_model
    from circuitscan.testbeds.induction import InductionConfig, cache_path

    path = cache_path(InductionConfig())
    assert str(path) == toy_induction.info["path"]
    config = json.loads((path / "config.json").read_text())
    assert config["training"] == asdict(InductionConfig())
    assert config["tl_config"]["n_layers"] == 2 and config["tl_config"]["attn_only"] is True
    assert (path / "model.safetensors").is_file()
    again = load_model("toy-induction")
    tokens = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(toy_induction.bridge(tokens), again.bridge(tokens))


def test_training_is_reproducible_by_seed(single_thread):
    import torch

    from circuitscan.testbeds._native import native_state
    from circuitscan.testbeds.induction import InductionConfig, train

    small = dict(n_heads=2, d_model=16, d_vocab=24, n_ctx=16, max_segment=6, steps=4, batch_size=8)
    a, _ = train(InductionConfig(**small, seed=3))
    b, _ = train(InductionConfig(**small, seed=3))
    c, _ = train(InductionConfig(**small, seed=4))
    sa, sb, sc = native_state(a), native_state(b), native_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert InductionConfig(**small, seed=3).key() != InductionConfig(**small, seed=4).key()


def test_reference_circuit_has_the_two_layer_shape(toy_induction, gt):
    from circuitscan.testbeds.head_scores import head_scores
    from circuitscan.testbeds.induction import INDUCTION_THRESHOLD, PREVIOUS_THRESHOLD

    assert gt.name == "toy-induction"
    induction, previous = gt.classes["induction"], gt.classes.get("previous token", ())
    assert len(induction) >= 2 and all(h.layer == 1 for h in induction)
    assert len(previous) >= 1 and all(h.layer == 0 for h in previous)
    s = head_scores(toy_induction, n=30, length=10, seed=5)  # other sequences than the saved scores
    for h in induction:
        assert s.induction[h.layer, h.head] >= INDUCTION_THRESHOLD - 0.1
    for h in previous:
        assert s.previous_token[h.layer, h.head] >= PREVIOUS_THRESHOLD - 0.1
    outside = [h for h in toy_induction.layout.heads() if h not in gt.heads]
    assert all(s.induction[h.layer, h.head] < INDUCTION_THRESHOLD + 0.1 for h in outside)


def test_sae_codes_and_eap_find_the_induction_circuit(toy_induction, induction_prompts, gt):
    from circuitscan import methods
    from circuitscan.evaluation.ground_truth import evaluate_against
    from circuitscan.methods.sae_codes import SAECodesConfig, run_sae_codes

    d = run_sae_codes(toy_induction, induction_prompts, SAECodesConfig())
    assert evaluate_against(d.node, gt).auc >= 0.9
    eap = methods.get("eap")
    assert evaluate_against(eap.score(toy_induction, induction_prompts), gt).auc >= 0.9


def test_kl_faithfulness_curves_appendix_h(toy_induction, gt):
    from circuitscan import methods
    from circuitscan.evaluation import CircuitEvaluator, faithfulness_curves
    from circuitscan.methods.sae_codes import SAECodesConfig, run_sae_codes
    from circuitscan.tasks import build_task

    eap = methods.get("eap")
    prompts = build_task("induction", toy_induction, 25, seed=1)  # Appendix H: 25 of each
    ev = CircuitEvaluator.build(toy_induction, prompts, ablation="zero", metrics=["kl"])
    scores = [
        run_sae_codes(toy_induction, prompts, SAECodesConfig()).node,
        eap.score(toy_induction, prompts),
    ]
    n = toy_induction.layout.n_total
    curves = faithfulness_curves(ev, scores, metric="kl", sizes=range(n + 1), random_samples=10, seed=0)  # every size
    for c in curves.values():
        kl = dict(zip(c.sizes, c.metric_values, strict=True))
        assert kl[n] == pytest.approx(0.0, abs=1e-6) and kl[0] > 1.0
        assert sum(c.values) / len(c.values) > sum(c.random_mean) / len(c.random_mean)
        reached = min(k for k in c.sizes if kl[k] <= 0.1 * kl[0])
        assert reached <= 15, (c.method, kl)


def test_induction_scores_ground_truth(toy_induction):
    from circuitscan import circuits
    from circuitscan.errors import CircuitscanError

    layout, family = toy_induction.layout, toy_induction.family
    top = circuits.resolve("induction-scores:k=4", layout, family, model=toy_induction)
    assert len(top.heads) == 4 and all(h.layer == 1 for h in top.heads)
    default = circuits.resolve("induction-scores", layout, family, model=toy_induction)
    assert len(default.heads) == 4  # min(10, 16 // 4)
    both = circuits.resolve(
        "induction-scores:k=4,previous=true", layout, family, model=toy_induction
    )
    assert any(h.layer == 0 for h in both.heads) and top.heads < both.heads
    by_score = circuits.resolve(
        "induction-scores:threshold=0.5", layout, family, model=toy_induction
    )
    assert by_score.heads and all(h.layer == 1 for h in by_score.heads)
    with pytest.raises(CircuitscanError, match="options are k=N, threshold=X"):
        circuits.resolve("induction-scores:top=3", layout, family, model=toy_induction)
    with pytest.raises(CircuitscanError, match="k must lie in 1..15"):
        circuits.resolve("induction-scores:k=16", layout, family, model=toy_induction)
    with pytest.raises(CircuitscanError, match="no model was given"):
        circuits.resolve("induction-scores", layout, family)
    with pytest.raises(CircuitscanError, match="belongs to model 'toy-induction'"):
        circuits.resolve("toy-induction", layout, "toy-planted")


def test_discover_cli_uses_the_saved_circuit(toy_induction, tmp_path):
    from circuitscan.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "discover",
                "--model",
                "toy-induction",
                "--task",
                "induction",
                "-n",
                "60",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())["ground_truth"]["sae-codes"]
    assert metrics["ground_truth"] == "toy-induction" and metrics["n_heads"] == 16
    assert metrics["auc"] >= 0.8


@pytest.mark.slow
def test_smollm2_induction_scores_reference(smollm2, tmp_path):
    from circuitscan.cli import main
    from circuitscan.testbeds.head_scores import head_scores

    s = head_scores(smollm2, n=4, length=12, seed=0)
    assert float(s.induction.max()) > 0.5 and float(s.previous_token.max()) > 0.5
    top = s.top("induction", 10)
    assert all(h.layer >= 10 for h in top)  # induction needs an earlier previous-token head
    out = tmp_path / "run"
    argv = [
        "discover",
        "--model",
        "smollm2-135m",
        "--task",
        "induction",
        "-n",
        "12",
        "--level",
        "node",
        "--epochs",
        "100",
        "--ground-truth",
        "induction-scores:n=4,length=12",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())["ground_truth"]["sae-codes"]
    assert (
        m["ground_truth"] == "induction-scores:n=4,length=12"
        and m["n_true"] == 10
        and m["n_heads"] == 270
    )
    assert 0.0 <= m["auc"] <= 1.0
