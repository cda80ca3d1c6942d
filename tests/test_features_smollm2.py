"""Feature circuits end to end on the real smollm2-135m: small SAEs on one four-sublayer
block, one prompt, the graph's identities checked on a real architecture (RMSNorm, GQA,
SiLU MLPs), ablations, the run directory."""

from __future__ import annotations

import json

import pytest
import torch

from circuitscan.features.corpus import build_corpus
from circuitscan.features.graph import GraphConfig, attribution_graph, next_token_objective
from circuitscan.features.run import feature_graph_run, prompt_tokens, target_token
from circuitscan.features.sae_train import train_sublayer_saes
from circuitscan.features.saes import SublayerSAEConfig
from circuitscan.features.sites import parse_sites

PROMPT = "When Mary and John went to the store, John gave a drink to"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_saes(smollm2):
    corpus = build_corpus(smollm2, "package", seq_len=64, seed=0)
    cfg = SublayerSAEConfig(n_features=128, l1=2.0, train_tokens=8192, batch_rows=128, model_batch=8,
                            buffer_batches=2, eval_chunks=4, ce_eval=False, context_chunks=16)
    return train_sublayer_saes(smollm2, corpus, parse_sites("block.2"), cfg)


def test_small_saes_train_on_smollm2(small_saes):
    assert list(small_saes.saes) == ["resid.1", "attn.2", "mlp.2", "resid.2"]
    for name, m in small_saes.info["metrics"].items():
        assert m["fvu"] < 1.0 and m["l0"] > 0, name
        curve = small_saes.curves[name]["fvu"]
        assert curve[-1] < curve[0], name
    assert small_saes.contexts["resid.2"]


def test_graph_identities_hold_on_smollm2(smollm2, small_saes):
    tokens = prompt_tokens(smollm2, PROMPT)
    target = target_token(smollm2, " Mary")
    obj = next_token_objective(smollm2, tokens, target)
    graph = attribution_graph(smollm2, small_saes, tokens, obj, GraphConfig(top_k=4))
    assert graph.objective["targets"] == [target] and 0 < graph.objective["value"] < 1.0  # the model gets it
    for node in graph.nodes.values():  # every path leaves a node through exactly one first site
        if node.kind != "output":
            out = sum(graph.outgoing(node.id).values())
            assert out == pytest.approx(node.score, rel=2e-3, abs=2e-4), node.id
    assert small_saes.skip_positions == 1
    for site, t in graph.site_totals.items():
        assert t["kept"] + t["rest"] + t["error"] + t["bias"] + t["uncovered"] == pytest.approx(t["total"], rel=1e-4, abs=1e-5), site
    direct = attribution_graph(smollm2, small_saes, tokens, obj, GraphConfig(top_k=4, edges="direct"))
    big = max(abs(w) for w in graph.edges.values())
    for key, w in graph.edges.items():
        assert direct.edges[key] == pytest.approx(w, abs=2e-3 * big), key
    # the strongest feature's score against a finite difference of the objective
    node = max((n for n in graph.nodes.values() if n.kind == "feature"), key=lambda n: abs(n.score))
    sae = small_saes[node.site]
    hook = parse_sites(node.site)[0].hook

    def value(alpha: float) -> float:
        def edit(x, hook):  # noqa: ARG001
            f = sae.encode(x)
            part = f[..., node.feature, None] * sae.W_D[node.feature]
            part[:, : small_saes.skip_positions] = 0.0  # the SAEs do not cover the attention sink
            return x + (alpha - 1.0) * part

        with torch.no_grad():
            logits = smollm2.bridge.run_with_hooks(tokens, fwd_hooks=[(hook, edit)])
        return float(obj.fn(logits, torch.arange(1)).mean())

    h = 0.02
    assert node.score == pytest.approx((value(1 + h) - value(1 - h)) / (2 * h), rel=3e-2, abs=1e-3)


def test_feature_graph_run_writes_a_run_directory(smollm2, small_saes, tmp_path):
    tokens = prompt_tokens(smollm2, PROMPT)
    out = tmp_path / "run"
    result = feature_graph_run(smollm2, small_saes, tokens=tokens, target=target_token(smollm2, " Mary"),
                               cfg=GraphConfig(top_k=3), validate=3, ablate="resid.2/error", out=out)
    assert result.out == out
    assert {"feature_graph.json", "features.json", "ablations.json", "features.html", "scores.json"} <= \
        {p.name for p in out.iterdir()}
    abl = json.loads((out / "ablations.json").read_text())
    assert len(abl["single_nodes"]["nodes"]) == 3 and "faithfulness_with_errors" in abl["faithfulness"]
    cards = json.loads((out / "features.json").read_text())
    assert cards and all(len(c["promoted"]) == 8 for c in cards.values())
    scores = json.loads((out / "scores.json").read_text())["methods"]["feature-attribution"]
    assert len(scores["scores"]) == 270 and sum(1 for v in scores["scores"] if v > 0) <= 9  # only layer 2's heads
