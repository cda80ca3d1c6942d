"""The computational graph edge-level methods score, and forward passes that patch its edges.

Here in :mod:`circuitscan.evaluation` because edge-level faithfulness patches edges too;
the methods reach it through :mod:`circuitscan.methods.edges`. The graph lives in
``edge_graph``, the patching passes in ``edge_forward``; this module re-exports both.

Nodes
-----
*Senders*: ``input`` (the embedding entering layer 0: token + position embeddings) and
every head ``L{l}H{h}`` (its output ``z_h W_O^h`` into the residual stream, without the
layer's shared bias). *Receivers*: every head's query, key and value input and the
``logits`` (the residual stream entering the final norm). A receiver reads every sender
of an earlier layer (``input`` is layer -1, ``logits`` layer ``n_layers``).

MLPs are not nodes: they are part of the wiring. An MLP reads the real residual stream
and its output reaches later receivers directly, so removing the edge A -> B replaces
A's output in B's input only, while paths A -> MLP -> B stay clean. This is the
head-level graph the ground truths are written in (``circuits.EdgeGroundTruth.edges``
with ``mlps=False`` contracts MLPs the same way).

"Input of B"
------------
The input a head's query reads is the residual stream before the layer's first norm
(``blocks.{l}.ln1.hook_in``), one private copy per receiver: B's query is recomputed as
``norm(x + delta_B) W_Q^B + b_Q^B`` with the layer's own norm module (LayerNorm,
RMSNorm or none), where ``delta_B`` is the sum over B's removed edges of
``a_A(ablated) - a_A(current)``. Keys and values likewise. The recomputation is checked
against the model's own q/k/v once per run. In a grouped-query model (SmolLM2: 9 query
heads, 3 key/value heads per layer) a key or value input belongs to a key/value head
shared by its group; its receivers are named ``L{l}KV{g}.k`` / ``.v``, and a
gradient there is the effect through every query head of the group.

Edge names: ``"L1H0->L3H2.q"``, ``"input->L0H1.v"``, ``"L1H0->L3KV0.k"`` (grouped query),
``"L2H0->logits"``. :func:`contract` turns them into head-level edges ``"L1H0->L3H2"``
(the largest absolute score over the receiving head's ports) as ground truths name them.
"""

from __future__ import annotations

from .edge_forward import EdgeForward, removed_all, run_edges
from .edge_graph import (
    INPUT,
    LOGITS,
    PORTS,
    EdgeGraph,
    Receiver,
    contract,
    edge_auc,
    head_level_edges,
    normalise_edge,
    planted_true_edges,
)

__all__ = [
    "INPUT", "LOGITS", "PORTS", "EdgeForward", "EdgeGraph", "Receiver", "contract", "edge_auc", "head_level_edges",
    "normalise_edge", "planted_true_edges", "removed_all", "run_edges",
]
