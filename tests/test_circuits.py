"""The ground-truth registry: heads and classes as the sources list them, edges, model ties."""

from __future__ import annotations

import pytest

from circuitscan import circuits
from circuitscan.errors import CircuitscanError
from circuitscan.types import HeadId, HeadLayout

GPT2 = HeadLayout(12, 12)
ATTN4 = HeadLayout(4, 8)


def _layer(node: str) -> float:
    node = node.split(".")[0]
    if node == "input":
        return -1
    if node == "output":
        return float("inf")
    if node.startswith("MLP"):
        return int(node[3:]) + 0.5  # after the attention of its layer
    return HeadId.parse(node).layer


def test_registry_names_models_and_sizes():
    expected = {
        "ioi/acdc": ("gpt2", 26),
        "ioi/oneill-bui": ("gpt2", 26),
        "greater-than/acdc": ("gpt2", 9),
        "docstring/acdc": ("attn-only-4l", 6),
        "docstring/oneill-bui": ("attn-only-4l", 6),
        "planted": ("toy-planted", 3),
    }
    for name, (model, size) in expected.items():
        gt = circuits.get(name)
        assert (gt.model, len(gt.heads)) == (model, size), name
        # the classes partition the heads
        members = [h for hs in gt.classes.values() for h in hs]
        assert len(members) == len(set(members)) == size, name
        assert set(members) == gt.heads


def test_ioi_classes_and_the_oneill_bui_swap():
    acdc, ob = circuits.get("ioi/acdc"), circuits.get("ioi/oneill-bui")
    assert set(acdc.classes["name mover"]) == {HeadId(9, 9), HeadId(10, 0), HeadId(9, 6)}
    assert set(acdc.classes["negative name mover"]) == {HeadId(10, 7), HeadId(11, 10)}
    assert len(acdc.classes["backup name mover"]) == 8
    assert acdc.heads - ob.heads == {HeadId(9, 0)}
    assert ob.heads - acdc.heads == {HeadId(11, 3)}


def test_greater_than_and_docstring_heads():
    gt = circuits.get("greater-than/acdc")
    assert set(gt.classes) == {"0305", "01", "AMID"}
    assert gt.heads == {HeadId(*p) for p in [(0, 1), (0, 3), (0, 5), (5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)]}
    assert circuits.MLP_GROUPS["greater-than/acdc"] == {"MEARLY": (0, 1, 2, 3), "MLATE": (8, 9, 10, 11)}
    doc, doc_ob = circuits.get("docstring/acdc"), circuits.get("docstring/oneill-bui")
    assert doc.heads == {HeadId(*p) for p in [(0, 5), (1, 2), (1, 4), (2, 0), (3, 0), (3, 6)]}
    assert doc.heads ^ doc_ob.heads == {HeadId(1, 2), HeadId(1, 0)}


def test_wrong_model_family_is_an_error():
    with pytest.raises(CircuitscanError, match="belongs to model family 'gpt2'"):
        circuits.resolve("ioi/acdc", HeadLayout(30, 9), "smollm2-135m")
    with pytest.raises(CircuitscanError, match="attn-only-4l"):
        circuits.resolve("docstring/acdc", GPT2, "gpt2")
    assert circuits.resolve("ioi/acdc", GPT2, "gpt2").name == "ioi/acdc"
    assert circuits.default_for("ioi", "smollm2-135m") is None
    for task in ("ioi", "ioi-acdc"):
        assert circuits.default_for(task, "gpt2").name == "ioi/acdc"
    assert circuits.default_for("greater-than", "gpt2").name == "greater-than/acdc"
    with pytest.raises(CircuitscanError, match="belongs to model family"):
        circuits.true_edges("greater-than/acdc", HeadLayout(30, 9), "smollm2-135m")
    with pytest.raises(CircuitscanError, match="no edge-level ground truth"):
        circuits.edge_ground_truth("planted")


@pytest.mark.parametrize("name", ["ioi/acdc", "ioi/oneill-bui", "greater-than/acdc"])
@pytest.mark.parametrize("mlps", [False, True])
def test_edges_run_forward_between_known_nodes(name, mlps):
    gt = circuits.get(name)
    heads = {h.name for h in gt.heads}
    edges = circuits.true_edges(name, GPT2, "gpt2", ports=True, mlps=mlps)
    assert edges
    for e in edges:
        src, dst = e.split("->")
        assert _layer(src) < _layer(dst), e
        for node in (src, dst.split(".")[0]):
            assert node in heads or node in ("input", "output") or (mlps and node.startswith("MLP")), e
        if dst not in ("output",) and not dst.startswith("MLP"):
            assert dst.split(".")[1] in ("q", "k", "v"), e


def test_ioi_class_edges():
    e = circuits.true_edges("ioi/acdc", GPT2, "gpt2", ports=True)
    # S-inhibition -> name movers enters the query only; input -> name movers keys and values only
    assert "L7H3->L9H9.q" in e and "L7H3->L9H9.k" not in e
    assert {"input->L9H9.k", "input->L9H9.v"} <= e and "input->L9H9.q" not in e
    assert "L2H2->L5H5.k" in e and "L2H2->L5H5.q" not in e  # previous token -> induction [k, v]
    assert "L5H5->L7H3.v" in e and "L0H1->L7H3.k" in e  # induction, duplicate token -> S-inhibition
    assert {"L9H9->output", "L10H7->output", "L11H2->output"} <= e
    assert "L5H5->output" not in e and "L2H2->L9H9.q" not in e  # no class-level connection
    # without ports, one edge per (sender, receiver); the counts follow from the class sizes
    plain = circuits.true_edges("ioi/acdc", GPT2, "gpt2")
    assert plain == {f"{a}->{b.split('.')[0]}" for a, b in (x.split("->") for x in e)}
    movers = 3 + 8 + 2
    n_input = 2 + 3 + 4 + movers  # previous token, duplicate token, S-inhibition, movers
    n_output = movers
    n_prev_ind = 2 * 4  # (2,2),(4,11) -> (5,5),(5,8),(5,9),(6,9): all earlier
    n_to_sinh = 4 * 4 + 3 * 4  # induction and duplicate token (all below layer 7) -> 4 S-inhibition heads
    # S-inhibition (7,3),(7,9),(8,6),(8,10) -> movers in later layers only
    mover_layers = [h.layer for c in ("name mover", "backup name mover", "negative name mover")
                    for h in circuits.get("ioi/acdc").classes[c]]
    n_sinh_movers = sum(sum(1 for m in mover_layers if m > s) for s in (7, 7, 8, 8))
    assert len(plain) == n_input + n_output + n_prev_ind + n_to_sinh + n_sinh_movers


def test_ioi_input_includes_mlps():
    with_mlps = circuits.true_edges("ioi/acdc", GPT2, "gpt2", ports=True, mlps=True)
    assert "MLP3->L5H5.q" not in with_mlps  # input -> induction is not a class edge
    assert {"MLP0->L3H0.q", "MLP6->L7H3.q", "MLP8->L9H9.k"} <= with_mlps
    assert "MLP0->L0H1.q" not in with_mlps  # MLP 0 comes after layer 0's attention
    assert "MLP9->L9H9.k" not in with_mlps  # MLP 9 comes after layer 9's attention
    assert "MLP0->L3H0.q" not in circuits.true_edges("ioi/acdc", GPT2, "gpt2", ports=True)


def test_greater_than_edges_through_mlps():
    gt = circuits.edge_ground_truth("greater-than/acdc")
    full = gt.edges(12, mlps=True)
    assert {"L0H1->MLP0", "L0H1->MLP3", "MLP0->MLP2", "MLP3->L5H5", "L9H1->MLP9", "MLP11->output"} <= full
    assert "L9H1->MLP8" not in full  # MLP 8 runs before layer 9's attention
    assert "L0H3->MLP1" not in full  # 0305 -> MEARLY is not an edge
    heads = gt.edges(12)
    # contracted: MEARLY's inputs reach AMID directly, AMID reaches the output through MLATE
    assert {"input->L5H5", "L0H1->L9H1", "L0H3->L6H9", "L9H1->output", "input->L0H1"} <= heads
    assert not any("MLP" in e for e in heads)
    assert "L0H1->output" not in heads  # MEARLY never reaches the output except through AMID


def test_docstring_edges_match_the_manual_graph():
    e = circuits.true_edges("docstring/acdc", ATTN4, "attn-only-4l", ports=True)
    assert len(e) == 24
    # ACDC's count (37) adds one internal edge per (head, used input)
    receivers = {x.split("->")[1] for x in e if x.split("->")[1] != "output"}
    assert len(e) + len(receivers) == 37
    assert {"L1H4->L3H0.q", "L2H0->L3H6.k", "L0H5->L1H4.v", "L3H6->output"} <= e
    assert "L1H4->L3H0.k" not in e
