"""EAP-IG / MIB graph JSON, written from and read into circuitscan's edge graph.

The format (EAP-IG's ``Graph.to_json`` / ``Graph.from_json``, which MIB's circuit track
reads)::

    {"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"},
     "nodes": {"input" | "a3.h2" | "m3" | "logits": {"in_graph": bool, "score"?: float}},
     "edges": {"a3.h2->a5.h1<q>" | "m3->logits" | ...: {"score": float, "in_graph": bool}}}

Names map as :mod:`.names` describes. Our graph has no MLP nodes (an MLP reads the real
residual stream and stays intact under every intervention of ours), so on export every
MLP node is written ``in_graph: true`` without a score, and every edge into or out of an
MLP has score 0.0 and is in the graph exactly when its other end is (MLPs are always
kept, as our evaluation keeps them). On import the MLP nodes and edges are read, checked
and then ignored: :attr:`ImportedGraph.mlp_edges_removed` counts the MLP edges the file
leaves out of its circuit, which our evaluation cannot remove.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import CircuitscanError
from ..evaluation.eap_names import (
    our_node,
    split_their_edge,
    their_edges,
    their_node,
    their_nodes,
    to_their_edges,
)
from ..evaluation.eap_read import (
    ImportedGraph,
    ground_truth_from_graph,
    heads_of_edge_set,
    is_graph_json,
    read_graph,
    read_graph_file,
)
from ..evaluation.edges import INPUT, LOGITS, EdgeGraph


def graph_json(
    graph: EdgeGraph,
    *,
    d_model: int,
    node_scores: Mapping[str, float] | None = None,
    edge_scores: Mapping[str, float] | None = None,
    heads_in: Iterable[str] | None = None,
    edges_in: Iterable[str] | None = None,
    parallel_attn_mlp: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An EAP-IG graph JSON object for one method's scores and circuit.

    Args:
        graph: our edge graph of the model (its layout and key/value grouping).
        node_scores: per-head scores ``{"L3H2": s}`` (written as node ``score``).
        edge_scores: port-level edge scores ``{"L3H2->L5H1.q": s}``; edges without one get 0.0.
        heads_in: the circuit's heads; edges between circuit nodes are in the graph.
        edges_in: an edge-level circuit (port-level names) instead; its heads are the
            heads it touches. Give at most one of ``heads_in`` and ``edges_in``.
        parallel_attn_mlp: the model's block layout (False for GPT-2 and Llama-style).
        meta: written under ``"circuitscan"`` (EAP-IG ignores other keys).
    """
    if heads_in is not None and edges_in is not None:
        raise CircuitscanError("give a circuit as heads or as edges, not both")
    L, H = graph.layout.n_layers, graph.layout.n_heads
    their_edge_in: set[str] | None = None
    if edges_in is not None:
        edges_in = list(edges_in)
        heads = heads_of_edge_set(edges_in)
        for e in edges_in:  # grouped key/value receivers: their query heads join too
            if "KV" in e:
                heads.update(n for n in _heads_of_receiver(e, graph))
        their_edge_in = {t for e in edges_in for t in to_their_edges(e, graph)}
    else:
        heads = set(heads_in or ())
    in_nodes = {INPUT, LOGITS} | {their_node(h) for h in heads} | {f"m{layer}" for layer in range(L)}
    nodes: dict[str, dict[str, Any]] = {}
    for name in their_nodes(L, H):
        entry: dict[str, Any] = {"in_graph": name in in_nodes}
        ours = our_node(name)
        if node_scores is not None and ours not in (None, INPUT, LOGITS):
            entry["score"] = float(node_scores[ours])
        nodes[name] = entry
    scores: dict[str, float] = {}
    for ours, s in (edge_scores or {}).items():
        for t in to_their_edges(ours, graph):
            scores[t] = float(s)
    edges: dict[str, dict[str, Any]] = {}
    for name in their_edges(L, H, parallel_attn_mlp):
        src, dst, _ = split_their_edge(name)
        mlp = src.startswith("m") or dst.startswith("m")
        if their_edge_in is not None and not mlp:
            member = name in their_edge_in
        else:
            member = src in in_nodes and dst in in_nodes
        edges[name] = {"score": scores.get(name, 0.0), "in_graph": bool(member)}
    out: dict[str, Any] = {"cfg": {"n_layers": L, "n_heads": H, "parallel_attn_mlp": bool(parallel_attn_mlp),
                                   "d_model": int(d_model)},
                           "nodes": nodes, "edges": edges}
    if meta:
        out["circuitscan"] = dict(meta)
    return out


def _heads_of_receiver(edge: str, graph: EdgeGraph) -> list[str]:
    dst = edge.split("->", 1)[1]
    for i, r in enumerate(graph.receivers):
        if r.name == dst:
            return [h for h in graph.receiver_heads(i) if h != LOGITS]
    return []


#: MIB's binary-circuit submission sizes: one circuit with at most each share of the graph's edges
MIB_CIRCUIT_PERCENTAGES: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def binary_circuits(g: Mapping[str, Any],
                    percentages: Iterable[float] = MIB_CIRCUIT_PERCENTAGES) -> dict[float, dict[str, Any]]:
    """MIB's multiple-circuit form of one scored graph: {share: graph JSON} with, per share p,
    the ``int(p * n_edges)`` edges of largest |score| in the graph (fewer where fewer edges have
    a non-zero score: MIB asks for "no more than" p), the nodes they touch, ``input`` and
    ``logits``. Scores are kept (EAP-IG's loader reads them); ties break by edge name.
    """
    edges = g["edges"]
    ranked = sorted((name for name, e in edges.items() if float(e["score"]) != 0.0),
                    key=lambda name: (-abs(float(edges[name]["score"])), name))
    out = {}
    for p in percentages:
        if not 0 < p <= 1:
            raise CircuitscanError(f"circuit share {p} must be in (0, 1]")
        chosen = set(ranked[: int(p * len(edges))])
        touched = {INPUT, LOGITS}
        for name in chosen:
            src, dst, _ = split_their_edge(name)
            touched |= {src, dst}
        out[p] = {**g,
                  "nodes": {n: {**e, "in_graph": n in touched} for n, e in g["nodes"].items()},
                  "edges": {n: {**e, "in_graph": n in chosen} for n, e in edges.items()},
                  "circuitscan": {**(g.get("circuitscan") or {}), "circuit_share": p, "n_edges_in": len(chosen)}}
    return out


__all__ = ["MIB_CIRCUIT_PERCENTAGES", "ImportedGraph", "binary_circuits", "graph_json", "ground_truth_from_graph",
           "is_graph_json", "read_graph", "read_graph_file"]
