"""Node and edge names: circuitscan's (:mod:`circuitscan.evaluation.edges`) and EAP-IG / MIB's.

======================  ==========================  =========================================
what                    circuitscan                 EAP-IG / MIB
======================  ==========================  =========================================
embeddings              ``input``                   ``input``
head 2 of layer 3       ``L3H2``                    ``a3.h2``
MLP of layer 3          (wiring, not a node)        ``m3``
unembedding input       ``logits``                  ``logits``
edge into a query       ``L3H2->L5H1.q``            ``a3.h2->a5.h1<q>``
edge into a key/value   ``L3H2->L5H1.k``            ``a3.h2->a5.h1<k>``
  (grouped-query)       ``L3H2->L5KV0.k``           ``a3.h2->a5.h{h}<k>`` for every query head h
                                                    of key/value group 0 (same score each)
edge into the logits    ``L3H2->logits``            ``a3.h2->logits``
======================  ==========================  =========================================

EAP-IG's graph is written per query head: with grouped-query attention (SmolLM2: 3 query
heads share a key/value head) their ``<k>``/``<v>`` edges of the heads of one group are
the one shared key/value input of ours, so a group's edge is exported to each of its query
heads with the same score, and on import the group's edge is in the circuit if any of its
query heads' edges is, with the score of largest magnitude among them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import CircuitscanError
from .edge_graph import INPUT, LOGITS, PORTS, EdgeGraph

_ATTN = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")
_OURS = re.compile(r"^L(\d+)H(\d+)$")
_OURS_RECV = re.compile(r"^L(\d+)(H|KV)(\d+)\.([qkv])$")
_EDGE = re.compile(r"^([^<>]+)->([^<>]+?)(?:<([qkv])>)?$")


def their_node(ours: str) -> str:
    """``L3H2`` -> ``a3.h2``; ``input`` and ``logits`` stay."""
    if ours in (INPUT, LOGITS):
        return ours
    m = _OURS.match(ours)
    if m is None:
        raise CircuitscanError(f"{ours!r} is not a circuitscan node (input, logits or L<layer>H<head>)")
    return f"a{m.group(1)}.h{m.group(2)}"


def parse_their_node(name: str) -> tuple[str, int, int]:
    """``(kind, layer, head)``: kind is input | attn | mlp | logits (layer -1 for input)."""
    if name == INPUT:
        return "input", -1, 0
    if name == LOGITS:
        return "logits", 1 << 30, 0
    m = _ATTN.match(name)
    if m:
        return "attn", int(m.group(1)), int(m.group(2))
    m = _MLP.match(name)
    if m:
        return "mlp", int(m.group(1)), 0
    raise CircuitscanError(f"{name!r} is not an EAP-IG node name (input, a<layer>.h<head>, m<layer>, logits)")


def our_node(theirs: str) -> str | None:
    """``a3.h2`` -> ``L3H2``; an MLP (``m3``) -> None."""
    kind, layer, head = parse_their_node(theirs)
    if kind == "attn":
        return f"L{layer}H{head}"
    return None if kind == "mlp" else theirs


def their_nodes(n_layers: int, n_heads: int) -> list[str]:
    """Every node of EAP-IG's graph for a model of this size, in its order."""
    out = [INPUT]
    for layer in range(n_layers):
        out += [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
    return out + [LOGITS]


def their_edges(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> Iterator[str]:
    """Every edge of EAP-IG's graph: each node feeds every later head's q/k/v, MLP and the logits.

    In a sequential block the MLP of layer l also reads that layer's heads; with
    ``parallel_attn_mlp`` it reads only what the heads read.
    """
    stream = [INPUT]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for src in stream:
            for dst in heads:
                for p in PORTS:
                    yield f"{src}->{dst}<{p}>"
        mlp_in = stream if parallel_attn_mlp else stream + heads
        for src in mlp_in:
            yield f"{src}->m{layer}"
        stream = stream + heads + [f"m{layer}"]
    for src in stream:
        yield f"{src}->{LOGITS}"


def split_their_edge(name: str) -> tuple[str, str, str | None]:
    m = _EDGE.match(name)
    if m is None:
        raise CircuitscanError(f"{name!r} is not an EAP-IG edge name (e.g. 'a3.h2->a5.h1<q>', 'm2->logits')")
    return m.group(1), m.group(2), m.group(3)


def to_their_edges(ours: str, graph: EdgeGraph) -> list[str]:
    """One of our edges (port level ``A->L5H1.q``, head level ``A->L5H1``) as EAP-IG edges."""
    if "->" not in ours:
        raise CircuitscanError(f"{ours!r} is not an edge name (e.g. 'L1H0->L3H2.q')")
    src, dst = ours.split("->", 1)
    s = their_node(src)
    if dst == LOGITS:
        return [f"{s}->{LOGITS}"]
    m = _OURS_RECV.match(dst)
    if m is None:
        h = _OURS.match(dst)
        if h is None:
            raise CircuitscanError(f"edge {ours!r} does not end at a head input, a head or the logits")
        return [f"{s}->a{h.group(1)}.h{h.group(2)}<{p}>" for p in PORTS]
    layer, kind, idx, port = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
    heads = range(idx * graph.group_size, (idx + 1) * graph.group_size) if kind == "KV" else [idx]
    return [f"{s}->a{layer}.h{h}<{port}>" for h in heads]


def to_our_edge(theirs: str, graph: EdgeGraph) -> str | None:
    """An EAP-IG edge as our port-level edge; None when either end is an MLP."""
    src, dst, port = split_their_edge(theirs)
    s, d = our_node(src), our_node(dst)
    if s is None or d is None:
        return None
    if d == LOGITS:
        return f"{s}->{LOGITS}"
    _, layer, head = parse_their_node(dst)
    if port is None:
        raise CircuitscanError(f"edge {theirs!r} enters an attention head but names no input <q>, <k> or <v>")
    if port != "q" and graph.grouped:
        return f"{s}->L{layer}KV{head // graph.group_size}.{port}"
    return f"{s}->L{layer}H{head}.{port}"
