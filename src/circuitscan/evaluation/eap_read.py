"""Reading EAP-IG / MIB graph JSON into circuitscan's edge graph (the format:
:mod:`circuitscan.interop.eap_graph`, which writes it and re-exports this reader).

It lives here, below ``circuits`` and ``interop``' users, because ``evaluate --circuit
FILE`` (:mod:`.mib`) and ``--ground-truth FILE`` read graph files and need only the edge
graph of :mod:`.edge_graph` and the name mapping of :mod:`.eap_names`. MLP nodes and edges
are read, checked and then ignored: :attr:`ImportedGraph.mlp_edges_removed` counts the
MLP edges the file leaves out of its circuit, which our evaluation cannot remove.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CircuitscanError
from ..types import GroundTruth
from .eap_names import (
    our_node,
    parse_their_node,
    split_their_edge,
    their_edges,
    their_node,
    their_nodes,
    to_our_edge,
)
from .edge_graph import INPUT, LOGITS, EdgeGraph, contract


def heads_of_edge_set(edges: Iterable[str]) -> set[str]:
    """Head names an edge set touches (both ends)."""
    out: set[str] = set()
    for e in edges:
        src, dst = e.split("->", 1)
        for n in (src, dst.split(".")[0]):
            if n not in (INPUT, LOGITS) and "KV" not in n:
                out.add(n)
    return out



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
        return frozenset(contract(graph, dict.fromkeys(self.edges, 1.0)))

    def ground_truth(self, family: str):
        heads = self.heads or frozenset(heads_of_edge_set(self.edges))
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
