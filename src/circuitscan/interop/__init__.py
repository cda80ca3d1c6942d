"""The field's circuit formats, in and out (docs/INTEROP.md).

* :mod:`.names` maps circuitscan's node and edge names to EAP-IG / MIB's (re-exported from
  :mod:`circuitscan.evaluation.eap_names`).
* :mod:`.eap_graph` writes and reads EAP-IG / MIB graph JSON (the reader lives in
  :mod:`circuitscan.evaluation.eap_read`, which ``evaluate`` and ground truths use).
* :mod:`.export` turns a run directory into files of those formats (and auto-circuit's
  prune scores); ``circuitscan export`` is its command.
"""

from __future__ import annotations

from .eap_graph import ImportedGraph, graph_json, read_graph, read_graph_file
from .export import FORMATS, export_run

__all__ = ["FORMATS", "ImportedGraph", "export_run", "graph_json", "read_graph", "read_graph_file"]
