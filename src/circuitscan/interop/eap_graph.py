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

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CircuitscanError
from ..evaluation.edges import INPUT, LOGITS, EdgeGraph
from .names import (
    our_node,
    parse_their_node,
    split_their_edge,
    their_edges,
    their_node,
    their_nodes,
    to_our_edge,
)


def _graph_of_edge_set(edges: Iterable[str]) -> set[str]:
    """Head names an edge set touches (both ends)."""
    out: set[str] = set()
    for e in edges:
        src, dst = e.split("->", 1)
        for n in (src, dst.split(".")[0]):
            if n not in (INPUT, LOGITS) and "KV" not in n:
                out.add(n)
    return out


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
    from .names import to_their_edges

    if heads_in is not None and edges_in is not None:
        raise CircuitscanError("give a circuit as heads or as edges, not both")
    L, H = graph.layout.n_layers, graph.layout.n_heads
    their_edge_in: set[str] | None = None
    if edges_in is not None:
        edges_in = list(edges_in)
        heads = _graph_of_edge_set(edges_in)
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


@dataclass(frozen=True)
class ImportedGraph:
    """An EAP-IG / MIB graph read for one model, in our names.

    Attributes:
        heads: attention nodes the file marks ``in_graph``.
        edges: our port-level edges whose EAP-IG edges are in the graph (a grouped
            key/value edge when any of its query heads' edges is).
        edge_scores: our port-level edges' scores (the largest-magnitude score of the
            EAP-IG edges they stand for).
        node_scores: per-head scores when the file has node scores, else None.
        mlp_edges_removed: MLP edges the file leaves out of the circuit (ignored here).
        source: where it was read from.
    """

    heads: frozenset[str]
    edges: frozenset[str]
    edge_scores: dict[str, float]
    node_scores: dict[str, float] | None
    mlp_edges_removed: int
    source: str

    def head_edges(self, graph: EdgeGraph) -> frozenset[str]:
        """The circuit's edges at head level (``A->B``), as edge ground truths name them."""
        from ..evaluation.edges import contract

        return frozenset(contract(graph, dict.fromkeys(self.edges, 1.0)))

    def ground_truth(self, family: str):
        from ..types import GroundTruth

        heads = self.heads or frozenset(_graph_of_edge_set(self.edges))
        if not heads:
            raise CircuitscanError(f"{self.source}: the graph has no attention head in its circuit (in_graph)")
        return GroundTruth.from_heads(sorted(heads), name=Path(self.source).name, model=family)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise CircuitscanError(f"{where}: 'in_graph' must be true or false, got {value!r}")
    return value


def read_graph(data: Any, graph: EdgeGraph, *, d_model: int | None = None, source: str = "graph") -> ImportedGraph:
    """Check an EAP-IG graph object against our model and read it; errors name the first bad entry."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("cfg", "nodes", "edges")):
        raise CircuitscanError(f"{source}: an EAP-IG graph must be a JSON object with objects 'cfg', 'nodes' and "
                               "'edges'")
    cfg = data["cfg"]
    L, H = graph.layout.n_layers, graph.layout.n_heads
    try:
        n_layers, n_heads = int(cfg["n_layers"]), int(cfg["n_heads"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CircuitscanError(f"{source}: cfg must give whole numbers n_layers and n_heads, got {cfg!r}") from exc
    if (n_layers, n_heads) != (L, H):
        raise CircuitscanError(f"{source}: the graph is for a model with {n_layers} layers x {n_heads} heads, but "
                               f"this model has {L} layers x {H} heads")
    if d_model is not None and cfg.get("d_model") is not None and int(cfg["d_model"]) != int(d_model):
        raise CircuitscanError(f"{source}: the graph is for d_model {cfg['d_model']}, this model has {d_model}")
    parallel = cfg.get("parallel_attn_mlp", False)
    if not isinstance(parallel, bool):
        raise CircuitscanError(f"{source}: cfg parallel_attn_mlp must be true or false, got {parallel!r}")
    valid_nodes = set(their_nodes(L, H))
    heads: set[str] = set()
    node_scores: dict[str, float] = {}
    for name, entry in data["nodes"].items():
        if name not in valid_nodes:
            parse_their_node(name)  # a clear message for names that are not node names at all
            raise CircuitscanError(f"{source}: node {name!r} does not exist in a model with {L} layers x {H} heads")
        if not isinstance(entry, dict):
            raise CircuitscanError(f"{source}: node {name!r} must map to an object with 'in_graph'")
        member = _bool(entry.get("in_graph"), f"{source}: node {name!r}")
        ours = our_node(name)
        if ours not in (None, INPUT, LOGITS):
            if member:
                heads.add(ours)
            if entry.get("score") is not None:
                node_scores[ours] = _number(entry["score"], f"{source}: node {name!r}")
    valid_edges = set(their_edges(L, H, parallel))
    edges: set[str] = set()
    edge_scores: dict[str, float] = {}
    mlp_removed = 0
    for name, entry in data["edges"].items():
        if name not in valid_edges:
            src, dst, _ = split_their_edge(name)
            for n in (src, dst):
                if n not in valid_nodes:
                    parse_their_node(n)
                    raise CircuitscanError(f"{source}: edge {name!r} names node {n!r}, which a model with {L} "
                                           f"layers x {H} heads lacks")
            raise CircuitscanError(f"{source}: edge {name!r} is not an edge of EAP-IG's graph (a sender feeds "
                                   "only later heads' <q>/<k>/<v>, later MLPs and the logits)")
        if not isinstance(entry, dict):
            raise CircuitscanError(f"{source}: edge {name!r} must map to an object with 'score' and 'in_graph'")
        member = _bool(entry.get("in_graph"), f"{source}: edge {name!r}")
        ours = to_our_edge(name, graph)
        if ours is None:
            mlp_removed += not member
            continue
        if member:
            edges.add(ours)
        if entry.get("score") is not None:
            s = _number(entry["score"], f"{source}: edge {name!r}")
            if ours not in edge_scores or abs(s) > abs(edge_scores[ours]):
                edge_scores[ours] = s
    if node_scores and len(node_scores) != graph.layout.n_total:
        missing = next(h for h in graph.layout.names() if h not in node_scores)
        raise CircuitscanError(f"{source}: some heads have node scores but {their_node(missing)!r} has none")
    return ImportedGraph(heads=frozenset(heads), edges=frozenset(edges), edge_scores=edge_scores,
                         node_scores=node_scores or None, mlp_edges_removed=mlp_removed, source=source)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CircuitscanError(f"{where}: 'score' must be a finite number, got {value!r}")
    return float(value)


def ground_truth_from_graph(data: Any, source: str, layout, family: str, model=None):
    """A :class:`~circuitscan.types.GroundTruth` of the heads a graph object marks in_graph (checked)."""
    graph = EdgeGraph.for_model(model) if model is not None else EdgeGraph(layout, layout.n_heads)
    d_model = getattr(model, "d_model", None) if model is not None else None
    gt = read_graph(data, graph, d_model=d_model, source=source).ground_truth(family)
    gt.check_layout(layout)
    return gt


def is_graph_json(data: Any) -> bool:
    """Whether parsed JSON looks like an EAP-IG graph (has 'cfg', 'nodes' and 'edges')."""
    return isinstance(data, dict) and {"cfg", "nodes", "edges"} <= set(data)


def read_graph_file(path: str | Path, graph: EdgeGraph, *, d_model: int | None = None) -> ImportedGraph:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise CircuitscanError(f"graph file {str(p)!r} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise CircuitscanError(f"graph file {str(p)!r} is not valid JSON: {exc}") from exc
    return read_graph(data, graph, d_model=d_model, source=str(p))


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
