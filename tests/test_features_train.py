"""Sites, the offline corpus, streamed sublayer SAE training, and the features CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from circuitscan.cli import main
from circuitscan.errors import CircuitscanError
from circuitscan.features.corpus import (
    Corpus,
    build_corpus,
    package_documents,
    parse_sources,
    python_doc_documents,
)
from circuitscan.features.sae_train import _fold_scale, train_sublayer_saes
from circuitscan.features.saes import (
    SublayerSAEConfig,
    load_many,
    load_sublayer_saes,
    save_sublayer_saes,
)
from circuitscan.features.sites import parse_sites, upstream_of
from circuitscan.sae.model import SparseAutoencoder


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CIRCUITSCAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_sites_parse_sort_and_expand_blocks():
    sites = parse_sites("mlp.3, block.3, attn.1-2")
    assert [s.name for s in sites] == ["attn.1", "attn.2", "resid.2", "attn.3", "mlp.3", "resid.3"]
    assert [s.name for s in parse_sites("block.0")] == ["embed", "attn.0", "mlp.0", "resid.0"]
    assert parse_sites("block.0")[0].hook == "blocks.0.hook_resid_pre"
    four = parse_sites("block.4")
    a, b, c, d = four
    # the four-sublayer case: D depends directly on A, B and C; C on A and B; B on A
    assert upstream_of(d, four) == [a, b, c] and upstream_of(c, four) == [a, b] and upstream_of(b, four) == [a]
    # a residual site cuts everything before it off from everything after it
    eight = parse_sites("block.4,block.5")
    assert upstream_of(eight[-1], eight)[0].name == "resid.4" and upstream_of(None, eight) == [eight[-1]]
    for bad, match in (("attn", "cannot read site"), ("resid.5-2", "backwards"), ("", "no sites"),
                       ("mlp.x", "cannot read site")):
        with pytest.raises(CircuitscanError, match=match):
            parse_sites(bad)
    with pytest.raises(CircuitscanError, match="the model has 3 layers"):
        parse_sites("attn.3", n_layers=3)


def test_corpus_sources_ship_and_parse():
    docs = package_documents()
    assert len(docs) >= 45 and all(d.text and d.source == "package" for d in docs)
    assert any("Four score and seven years ago" in d.text for d in docs)
    py = python_doc_documents()
    assert len(py) > 50 and sum(len(d.text) for d in py) > 200_000
    assert parse_sources("package, python-docs") == ["package", "python-docs"]
    for bad, match in (("wiki", "unknown corpus source"), ("package,package", "twice"), ("file:/nonexistent", "does not exist")):
        with pytest.raises(CircuitscanError, match=match):
            parse_sources(bad)


def test_text_corpus_tokenises_into_chunks_with_bos():
    from transformers import AutoTokenizer

    from circuitscan.models.handle import ModelHandle
    from circuitscan.models.loading import find_gpt2_tokenizer
    from circuitscan.types import HeadLayout

    tok = AutoTokenizer.from_pretrained(str(find_gpt2_tokenizer()))
    handle = ModelHandle(bridge=None, spec="gpt2-tokenizer", family="gpt2", layout=HeadLayout(1, 1), tokenizer=tok,
                         prepend_bos=True)
    c = build_corpus(handle, "package", seq_len=32, seed=0)
    assert c.chunks.shape[1] == 32 and bool((c.chunks[:, 0] == tok.bos_token_id).all())
    text = tok.decode(torch.cat([row[1:] for row in c.chunks]))
    assert "lighthouse" in text
    again = build_corpus(handle, "package", seq_len=32, seed=0)
    other = build_corpus(handle, "package", seq_len=32, seed=1)
    assert torch.equal(c.chunks, again.chunks) and not torch.equal(c.chunks, other.chunks)
    assert c.summary["package"]["chunks"] == c.chunks.shape[0]


def test_toy_models_can_read_only_generated_text(planted):
    with pytest.raises(CircuitscanError, match="no tokenizer"):
        build_corpus(planted, "generated,package")
    c = build_corpus(planted, "generated", seq_len=16, generated_tokens=300, seed=0)
    d = build_corpus(planted, "generated", seq_len=16, generated_tokens=300, seed=0)  # from the disk cache
    assert torch.equal(c.chunks, d.chunks) and c.chunks.shape[0] >= 300 // 16 - 2


def test_fold_scale_gives_the_same_sae_in_model_units():
    g = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(8, 5)
    for p in sae.parameters():
        p.data = torch.randn(p.shape, generator=g)
    x = torch.randn(20, 8, generator=g)
    s = 3.7
    folded = _fold_scale(sae, s)
    assert torch.allclose(folded.encode(x), sae.encode(x * s) / s, atol=1e-5)
    assert torch.allclose(folded.decode(folded.encode(x)), sae.decode(sae.encode(x * s)) / s, atol=1e-5)


def test_streamed_training_learns_saves_and_loads(tmp_path):
    from circuitscan.models import load_model

    model = load_model("toy-random")
    corpus = build_corpus(model, "generated", seq_len=32, generated_tokens=3000, seed=0)
    cfg = SublayerSAEConfig(n_features=48, l1=0.5, train_tokens=12_000, batch_rows=256, model_batch=8,
                            buffer_batches=2, eval_chunks=6, context_chunks=20, dead_window=2048)
    sites = parse_sites("attn.0,resid.1")
    saes = train_sublayer_saes(model, corpus, sites, cfg, log_every=5)
    for name in ("attn.0", "resid.1"):
        curve = saes.curves[name]
        assert curve["fvu"][-1] < 0.6 * curve["fvu"][0]
        assert len(curve["tokens"]) == len(curve["l0"]) == len(curve["dead_fraction"])
        assert torch.allclose(saes[name].atom_norms(), torch.ones(48), atol=1e-4)
        m = saes.info["metrics"][name]
        assert 0 < m["fvu"] < 1 and m["l0"] > 0 and {"ce_clean", "ce_spliced", "loss_recovered"} <= set(m)
        assert saes.contexts[name] and all(len(v[0]) == 4 for v in saes.contexts[name].values())
    assert saes.info["training"]["tokens_per_site"] >= 12_000 - 256
    path = save_sublayer_saes(saes, tmp_path / "saes")
    back = load_sublayer_saes(path)
    assert list(back.saes) == ["attn.0", "resid.1"]
    assert torch.equal(back["attn.0"].W_D, saes["attn.0"].W_D) and back.contexts == json.loads(json.dumps(saes.contexts))
    back.check_model(model)
    one = load_sublayer_saes(path, parse_sites("resid.1"))
    assert list(one.saes) == ["resid.1"]
    a = save_sublayer_saes(saes.subset(parse_sites("resid.1")), tmp_path / "a")
    b = save_sublayer_saes(saes.subset(parse_sites("attn.0")), tmp_path / "b")
    both = load_many(f"{a},{b}")
    assert list(both.saes) == ["attn.0", "resid.1"] and set(both.contexts) == {"attn.0", "resid.1"}
    with pytest.raises(CircuitscanError, match="more than one SAE directory"):
        load_many([a, path])
    with pytest.raises(CircuitscanError, match="no SAE for site"):
        load_sublayer_saes(path, parse_sites("attn.1"))
    with pytest.raises(CircuitscanError, match="trained on a 'toy-random'"):
        back.check_model(load_model("toy-planted"))
    with pytest.raises(CircuitscanError, match="not a circuitscan SAE directory"):
        load_sublayer_saes(tmp_path)
    with pytest.raises(CircuitscanError, match="fewer than one model batch"):
        train_sublayer_saes(model, Corpus(corpus.chunks[:3], corpus.source[:3], ["generated"]), sites,
                            SublayerSAEConfig(eval_chunks=0))


# --------------------------------------------------------------------------- the CLI


def test_cli_trains_builds_a_graph_and_scores_heads(tmp_path, capsys):
    saes = tmp_path / "saes"
    rc = main(["features", "train", "--model", "toy-planted", "--sites", "attn.0-2", "--out", str(saes),
               "--corpus", "generated", "--generated-tokens", "1500", "--seq-len", "16", "--features", "48",
               "--tokens", "8192", "--batch-rows", "256", "--l1", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "attn.2" in printed and "FVU" in printed
    assert {p.name for p in saes.iterdir()} >= {"saes.json", "training.json", "contexts.json", "figures",
                                                "sae-attn.0.safetensors"}
    run = tmp_path / "run"
    rc = main(["features", "graph", "--model", "toy-planted", "--task", "planted", "-n", "8", "--saes", str(saes),
               "--out", str(run), "--top-k", "4", "--validate", "3", "--ablate", "attn.2/f1,attn.1/error"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "feature-attribution: ROC AUC over heads" in printed and "sae-codes: ROC AUC over heads 1" in printed
    names = {p.name for p in run.iterdir()}
    assert names >= {"config.json", "scores.json", "metrics.json", "feature_graph.json", "features.json",
                     "ablations.json", "features.html", "feature_figures"}
    scores = json.loads((run / "scores.json").read_text())
    assert set(scores["methods"]) == {"feature-attribution", "sae-codes"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ground_truth"]["sae-codes"]["auc"] == 1.0
    assert set(metrics["feature_graph"]["explained_fractions"]) == {"attn.0", "attn.1", "attn.2"}
    abl = json.loads((run / "ablations.json").read_text())
    assert len(abl["single_nodes"]["nodes"]) == 3 and abl["user"]["nodes"] == "attn.2/f1,attn.1/error"
    page = (run / "features.html").read_text()
    assert "data:image/png;base64" in page and "attn.2/error" in page
    # the run directory is a regular one: the main report reads it and shows the feature figures
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and (run / "figures" / "feature-graph.png").is_file()
    # a prompt given as token ids, with a target token
    run2 = tmp_path / "run2"
    assert main(["features", "graph", "--model", "toy-planted", "--prompt-ids", "0,17,3,4,5", "--target", "32",
                 "--saes", str(saes), "--out", str(run2), "--validate", "0", "--no-edges"]) == 0
    cfg = json.loads((run2 / "config.json").read_text())
    assert cfg["prompt"]["token_ids"] == [0, 17, 3, 4, 5] and cfg["prompt"]["target"] == 32
    graph = json.loads((run2 / "feature_graph.json").read_text())
    assert graph["edges"] == [] and graph["backward_passes"] == 1


@pytest.mark.parametrize("argv, message", [
    (["features", "train", "--model", "toy-planted", "--sites", "attn.7", "--out", "{tmp}/x"], "the model has 3 layers"),
    (["features", "train", "--model", "toy-planted", "--sites", "attn.0", "--corpus", "package", "--out", "{tmp}/x"],
     "no tokenizer"),
    (["features", "train", "--model", "toy-planted", "--sites", "mlp.0", "--corpus", "generated", "--out", "{tmp}/x"],
     "attention-only"),
    (["features", "graph", "--model", "toy-planted", "--task", "planted", "--saes", "{tmp}/none", "--out", "{tmp}/x"],
     "does not exist"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == []
