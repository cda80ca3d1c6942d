"""Node and edge names: circuitscan's and EAP-IG / MIB's.

The mapping lives in :mod:`circuitscan.evaluation.eap_names` (``evaluate --circuit FILE``
and ``--ground-truth FILE`` read graph files below this layer); this module re-exports it.
"""

from __future__ import annotations

from ..evaluation.eap_names import (
    our_node,
    parse_their_node,
    split_their_edge,
    their_edges,
    their_node,
    their_nodes,
    to_our_edge,
    to_their_edges,
)

__all__ = ["our_node", "parse_their_node", "split_their_edge", "their_edges", "their_node", "their_nodes",
           "to_our_edge", "to_their_edges"]
