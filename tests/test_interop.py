"""EAP-IG / MIB graph JSON and auto-circuit prune scores, out and back in (circuitscan.interop)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from circuitscan.cli import main
from circuitscan.errors import CircuitscanError
from circuitscan.evaluation.edges import EdgeGraph
from circuitscan.interop.eap_graph import graph_json, read_graph
from circuitscan.interop.names import their_edges, to_our_edge, to_their_edges
from circuitscan.types import HeadLayout

FIXTURE = Path(__file__).parent / "data" / "toy_planted_eap_ig.json"


def _random_scores(graph: EdgeGraph, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    rng = random.Random(seed)
    edges = {e: rng.uniform(-2, 2) for e in graph.edge_names()}
    nodes = {h: rng.uniform(0, 1) for h in graph.layout.names()}
    return nodes, edges


def _round_trip(graph: EdgeGraph, d_model: int, heads: list[str]):
    nodes, edges = _random_scores(graph)
    data = json.loads(json.dumps(graph_json(graph, d_model=d_model, node_scores=nodes, edge_scores=edges,
                                            heads_in=heads)))
    back = read_graph(data, graph, d_model=d_model)
    return data, nodes, edges, back


@pytest.mark.parametrize("layout,kv,d_model", [((3, 4), 4, 32), ((12, 12), 12, 768), ((30, 9), 3, 576)],
                         ids=["toy-planted", "gpt2-random", "smollm2-gqa"])
def test_graph_round_trip_keeps_scores_and_circuit(layout, kv, d_model):
    graph = EdgeGraph(HeadLayout(*layout), kv)
    heads = graph.layout.names()[1::5]
    data, nodes, edges, back = _round_trip(graph, d_model, heads)
    L, H = layout
    assert len(data["edges"]) == len(list(their_edges(L, H)))
    assert back.heads == frozenset(heads)
    assert back.node_scores == nodes
    assert back.edge_scores == edges  # every port-level edge, GQA groups merged back exactly
    # the circuit's edges are those between its heads, input and logits
    inside = set(heads) | {"input", "logits"}
    expected = {e for e in graph.edge_names() if e.split("->")[0] in inside
                and any(h in inside for h in _dst_heads(graph, e.split("->")[1]))}  # GQA: any head of a group
    assert back.edges == expected


def _dst_heads(graph, dst):
    for i, r in enumerate(graph.receivers):
        if r.name == dst:
            return graph.receiver_heads(i)
    raise KeyError(dst)


def test_gpt2_small_graph_has_eap_igs_edge_count():
    assert len(list(their_edges(12, 12))) == 32491  # the count EAP-IG / MIB give for GPT-2 small


def test_edge_names_map_both_ways_with_grouped_keys():
    flat = EdgeGraph(HeadLayout(6, 9), 9)
    gqa = EdgeGraph(HeadLayout(6, 9), 3)
    assert to_their_edges("L3H2->L5H1.q", flat) == ["a3.h2->a5.h1<q>"]
    assert to_our_edge("a3.h2->a5.h1<q>", gqa) == "L3H2->L5H1.q"
    assert to_their_edges("L3H2->L5KV1.k", gqa) == ["a3.h2->a5.h3<k>", "a3.h2->a5.h4<k>", "a3.h2->a5.h5<k>"]
    assert to_our_edge("a3.h2->a5.h4<v>", gqa) == "L3H2->L5KV1.v"
    assert to_our_edge("input->logits", gqa) == "input->logits"
    assert to_our_edge("m2->a5.h4<v>", gqa) is None  # MLPs are not nodes of ours
    assert to_their_edges("L3H2->L5H1", flat) == [f"a3.h2->a5.h1<{p}>" for p in "qkv"]


def test_gqa_import_takes_any_query_heads_edge_and_the_largest_score():
    graph = EdgeGraph(HeadLayout(2, 4), 2)
    data = graph_json(graph, d_model=8)
    data["edges"]["a0.h0->a1.h3<k>"] = {"score": -5.0, "in_graph": True}
    data["edges"]["a0.h0->a1.h2<k>"] = {"score": 2.0, "in_graph": False}
    back = read_graph(data, graph)
    assert "L0H0->L1KV1.k" in back.edges and back.edge_scores["L0H0->L1KV1.k"] == -5.0


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["cfg"].update(n_layers=12, n_heads=12), "12 layers x 12 heads, but this model has 3 layers x 4"),
    (lambda d: d["nodes"].update({"a7.h0": {"in_graph": True}}), "node 'a7.h0' does not exist"),
    (lambda d: d["nodes"].update({"attn3": {"in_graph": True}}), "'attn3' is not an EAP-IG node name"),
    (lambda d: d["edges"].update({"a2.h0->a1.h2<q>": {"score": 1, "in_graph": True}}),
     "'a2.h0->a1.h2<q>' is not an edge of EAP-IG's graph"),
    (lambda d: d["edges"].update({"a0.h1->a9.h2<q>": {"score": 1, "in_graph": True}}), "names node 'a9.h2'"),
    (lambda d: d["edges"]["a0.h1->logits"].update(in_graph="yes"), "'in_graph' must be true or false"),
    (lambda d: d["edges"]["a0.h1->logits"].update(score="big"), "'score' must be a finite number"),
    (lambda d: d.pop("edges"), "objects 'cfg', 'nodes' and 'edges'"),
])
def test_malformed_graphs_name_the_first_bad_entry(edit, message):
    data = json.loads(FIXTURE.read_text())
    edit(data)
    with pytest.raises(CircuitscanError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_graph(data, EdgeGraph(HeadLayout(3, 4), 4), d_model=32)


def test_hand_written_fixture_reads_as_the_planted_circuit():
    from circuitscan.evaluation.edges import planted_true_edges

    graph = EdgeGraph(HeadLayout(3, 4), 4)
    back = read_graph(json.loads(FIXTURE.read_text()), graph, d_model=32)
    assert back.heads == {"L0H1", "L1H2", "L2H0"}
    assert back.head_edges(graph) == planted_true_edges()


def test_fixture_evaluates_like_our_circuit_of_the_same_edges(planted, planted_prompts):
    from circuitscan.evaluation.edges import planted_true_edges
    from circuitscan.evaluation.mib import edge_circuit_faithfulness, imported_circuit

    name, heads, imp = imported_circuit(planted, str(FIXTURE))
    assert heads == ["L0H1", "L1H2", "L2H0"]
    f = edge_circuit_faithfulness(planted, planted_prompts, {"file": imp.edges, "ours": planted_true_edges(),
                                                             "one edge": {"L0H1->logits"}})
    assert f["file"] == pytest.approx(f["ours"], abs=1e-6)
    assert f["ours"] == pytest.approx(1.0, abs=1e-3)  # the planted edges carry the whole task
    assert f["one edge"] < 0.9


def test_mib_cpr_cmd_are_mibs_trapezoids():
    from circuitscan.evaluation.mib import MIB_PERCENTAGES, mib_cmd, mib_cpr

    ones = [1.0] * len(MIB_PERCENTAGES)
    assert mib_cpr(ones) == pytest.approx(1 - 0.001)  # no 0 % point: the area starts at 0.1 %
    assert mib_cmd(ones) == 0.0
    over = [1.5] * len(MIB_PERCENTAGES)
    assert mib_cpr(over) == pytest.approx(1.5 * 0.999)  # not clipped: CPR may exceed 1
    assert mib_cmd(over) == pytest.approx(0.5 * 0.999)
    step = [0.0] * 9 + [1.0]
    assert mib_cpr(step) == pytest.approx(0.5 * 0.5)  # linear axis: the last segment 50 %..100 %


def test_mib_pruning_drops_dangling_heads():
    import torch

    from circuitscan.evaluation.mib import prune

    graph = EdgeGraph(HeadLayout(3, 4), 4)
    index = {n: i for i, n in enumerate(graph.edge_names())}
    pairs = graph.edge_index()
    kept = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
    for e in ("input->L0H1.v", "L0H1->logits", "L0H2->L1H0.q", "input->L2H3.q"):
        kept[pairs[index[e]]] = True
    out = prune(graph, kept)
    left = {graph.edge_name(s, r) for s, r in out.nonzero().tolist()}
    # L0H2 has no input and L1H0 / L2H3 reach nothing: only the path input -> L0H1 -> logits stays
    assert left == {"input->L0H1.v", "L0H1->logits"}


@pytest.fixture(scope="module")
def eap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "planted-eap"
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "16", "--methods", "eap",
                 "--out", str(out), "--no-faithfulness"]) == 0
    return out


def test_export_then_import_gives_the_runs_circuit_and_scores(eap_run, tmp_path, planted):
    from circuitscan import circuits
    from circuitscan.report.rundata import load_run

    assert main(["export", str(eap_run), "--format", "eap-ig", "--out", str(tmp_path / "e")]) == 0
    run = load_run(eap_run)
    path = tmp_path / "e" / "eap.json"
    graph = EdgeGraph.for_model(planted)
    back = read_graph(json.loads(path.read_text()), graph, d_model=planted.d_model)
    assert back.heads == frozenset(run.circuit("eap")["heads"])
    assert back.edge_scores == pytest.approx(run.methods["eap"].edges)
    assert [back.node_scores[h] for h in planted.layout.names()] == pytest.approx(run.methods["eap"].scores.tolist())
    gt = circuits.for_model(str(path), planted)  # --ground-truth FILE.json
    assert {h.name for h in gt.heads} == set(run.circuit("eap")["heads"])


def test_export_formats_mib_and_auto_circuit(eap_run, tmp_path):
    from safetensors.torch import load_file

    assert main(["export", str(eap_run), "-f", "mib", "--out", str(tmp_path / "m")]) == 0
    mib = tmp_path / "m" / "eap" / "planted_toy-planted" / "importances.json"
    g = json.loads(mib.read_text())
    assert set(g) >= {"cfg", "nodes", "edges"}
    assert main(["export", str(eap_run), "-f", "auto-circuit", "--out", str(tmp_path / "a")]) == 0
    ps = load_file(str(tmp_path / "a" / "eap.safetensors"))
    sources = json.loads((tmp_path / "a" / "sources.json").read_text())["sources"]
    assert ps["blocks.1.hook_v_input"].shape == (4, len(sources))
    s = sources.index("a0.h1")
    assert float(ps["blocks.1.hook_v_input"][2, s]) == pytest.approx(g["edges"]["a0.h1->a1.h2<v>"]["score"])
    assert float(ps["blocks.2.hook_resid_post"][s]) == pytest.approx(g["edges"]["a0.h1->logits"]["score"])


def test_export_mib_binary_circuits(eap_run, tmp_path, capsys):
    assert main(["export", str(eap_run), "-f", "mib-circuits", "--out", str(tmp_path / "c")]) == 0
    folder = tmp_path / "c" / "eap" / "planted_toy-planted"
    files = sorted(folder.iterdir(), key=lambda p: float(p.stem.split("_")[1]))
    assert [p.name for p in files] == [f"circuit_{x:g}.json" for x in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)]
    previous: set[str] = set()
    for p in files:
        g = json.loads(p.read_text())
        share = float(p.stem.split("_")[1]) / 100
        edges_in = {n for n, e in g["edges"].items() if e["in_graph"]}
        assert len(edges_in) <= int(share * len(g["edges"]))
        assert previous <= edges_in  # nested: each circuit grows the last
        others = [abs(e["score"]) for n, e in g["edges"].items() if n not in edges_in]
        assert all(abs(g["edges"][n]["score"]) >= max(others) for n in edges_in)
        touched = {x for n in edges_in for x in n.replace("<", "->").split("->")[:2]} | {"input", "logits"}
        assert {n for n, e in g["nodes"].items() if e["in_graph"]} == touched
        previous = edges_in
    assert previous  # the 50 % circuit holds edges
    assert main(["evaluate", str(eap_run), "--circuit", str(files[-1]), "--random-samples", "0"]) == 0
    capsys.readouterr()
    node_run = tmp_path / "nd"
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "8", "--methods", "norm-diff",
                 "--no-faithfulness", "--out", str(node_run)]) == 0
    assert main(["export", str(node_run), "-f", "mib-circuits", "--out", str(tmp_path / "d")]) == 2
    assert "scores edges" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_evaluate_circuit_file_and_mismatched_files(eap_run, tmp_path, capsys):
    metrics = eap_run / "metrics.json"
    assert main(["evaluate", str(eap_run), "--circuit", str(FIXTURE), "--random-samples", "0"]) == 0
    printed = capsys.readouterr().out
    assert "imported file toy_planted_eap_ig.json: 3 heads" in printed
    after = json.loads(metrics.read_text())
    rows = {r["name"]: r for r in after["circuit_performance"]["rows"]}
    assert rows["file toy_planted_eap_ig.json"]["normalised"]["logit_diff"] == pytest.approx(
        rows["ground truth (planted)"]["normalised"]["logit_diff"])
    assert after["imported_circuit"]["edge_faithfulness"] == pytest.approx(1.0, abs=1e-3)
    before = metrics.read_bytes()
    gpt2 = json.loads(FIXTURE.read_text())
    gpt2["cfg"].update(n_layers=12, n_heads=12, d_model=768)
    bad = tmp_path / "gpt2.json"
    bad.write_text(json.dumps(gpt2))
    for flag in ("--circuit", "--ground-truth"):
        assert main(["evaluate", str(eap_run), flag, str(bad), "--random-samples", "0"]) == 2
        assert "12 layers x 12 heads, but this model has 3 layers x 4 heads" in capsys.readouterr().err
        assert metrics.read_bytes() == before  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("fixture,grouped", [("smollm2", True), ("gpt2_random", False)])
def test_real_model_round_trip_through_ground_truth(fixture, grouped, request, tmp_path):
    from circuitscan import circuits

    model = request.getfixturevalue(fixture)
    graph = EdgeGraph.for_model(model)
    assert graph.grouped == grouped
    heads = ["L3H1", "L10H4", "L7H8"]
    data, nodes, edges, back = _round_trip(graph, model.d_model, heads)
    assert back.edge_scores == edges and back.node_scores == nodes and back.heads == set(heads)
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(data))
    assert {h.name for h in circuits.for_model(str(path), model).heads} == set(heads)
    other = (4, 4) if fixture == "gpt2_random" else (12, 12)
    path.write_text(json.dumps(graph_json(EdgeGraph(HeadLayout(*other), other[1]), d_model=64, heads_in=["L1H1"])))
    L, H = model.layout.n_layers, model.layout.n_heads
    with pytest.raises(CircuitscanError, match=f"{other[0]} layers x {other[1]} heads, but this model has {L} layers"
                       f" x {H} heads"):
        circuits.for_model(str(path), model)  # e.g. a GPT-2 graph on SmolLM2


def test_an_edge_circuit_exports_its_edges_and_the_heads_they_touch():
    graph = EdgeGraph(HeadLayout(2, 4), 2)
    data = graph_json(graph, d_model=8, edges_in=["L0H0->L1KV1.k", "L1H2->logits"])
    kept = {e for e, v in data["edges"].items() if v["in_graph"] and "m" not in e.replace("logits", "")}
    assert kept == {"a0.h0->a1.h2<k>", "a0.h0->a1.h3<k>", "a1.h2->logits"}
    assert {n for n, v in data["nodes"].items() if v["in_graph"] and n.startswith("a")} == {"a0.h0", "a1.h2", "a1.h3"}
    back = read_graph(data, graph)
    assert back.edges == {"L0H0->L1KV1.k", "L1H2->logits"}
