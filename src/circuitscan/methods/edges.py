"""The edge graph and edge-patched forward passes of the edge-level methods.

They live in :mod:`circuitscan.evaluation.edges` (edge-level faithfulness patches
edges too); this module keeps the names importable from here.
"""

from __future__ import annotations

from ..evaluation.edges import (
    INPUT,
    LOGITS,
    PORTS,
    EdgeForward,
    EdgeGraph,
    Receiver,
    contract,
    edge_auc,
    head_level_edges,
    normalise_edge,
    planted_true_edges,
    removed_all,
    run_edges,
)

__all__ = [
    "INPUT",
    "LOGITS",
    "PORTS",
    "EdgeForward",
    "EdgeGraph",
    "Receiver",
    "contract",
    "edge_auc",
    "head_level_edges",
    "normalise_edge",
    "planted_true_edges",
    "removed_all",
    "run_edges",
]
