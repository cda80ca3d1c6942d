"""circuitscan: find circuits in language models with discrete sparse-autoencoder codes.

The public API, re-exported lazily so that ``import circuitscan`` (and the CLI's
``--help``) does not pay for torch::

    import circuitscan as cs
    model = cs.load_model("smollm2-135m")
    prompts = cs.build_task("ioi", model, n=250)
    result = cs.discover(model, prompts, level="both", out="runs/ioi")
"""

from __future__ import annotations

import importlib
from typing import Any

from . import testbeds as _testbeds  # noqa: F401  (registers the testbed models and the tracr task)
from ._version import __version__
from .circuits.registry import register_file_reader


def _graph_ground_truth(data: object, spec: str, layout: Any, family: str, model: Any) -> Any:
    """``--ground-truth FILE`` of an EAP-IG / MIB graph: its in_graph heads (None for other JSON)."""
    from .evaluation.eap_read import ground_truth_from_graph, is_graph_json

    return ground_truth_from_graph(data, spec, layout, family, model) if is_graph_json(data) else None


# circuits (a lower layer) reads graph files through this reader; evaluation is imported only when one is read
register_file_reader("eap-graph", _graph_ground_truth)

_EXPORTS = {
    "load_model": "circuitscan.models",
    "ModelHandle": "circuitscan.models",
    "build_task": "circuitscan.tasks",
    "TASKS": "circuitscan.tasks",
    "head_outputs": "circuitscan.activations",
    "discover": "circuitscan.run",
    "RunResult": "circuitscan.run",
    "predicted_circuit": "circuitscan.evaluation.circuit_rule",
    "evaluate_run": "circuitscan.evaluation.performance",
    "write_report": "circuitscan.report",
    "Scorer": "circuitscan.methods.base",
    "MethodSpec": "circuitscan.methods.base",
    "SAEConfig": "circuitscan.config",
    "ScoringConfig": "circuitscan.config",
    "SparseAutoencoder": "circuitscan.sae",
    "train_sae": "circuitscan.sae",
    "discretise": "circuitscan.codes",
    "node_scores": "circuitscan.codes",
    "edge_scores": "circuitscan.codes",
    "evaluate_against": "circuitscan.evaluation",
    "HeadId": "circuitscan.types",
    "HeadLayout": "circuitscan.types",
    "PromptSet": "circuitscan.types",
    "HeadActivations": "circuitscan.types",
    "Codes": "circuitscan.types",
    "Scores": "circuitscan.types",
    "GroundTruth": "circuitscan.types",
    "CircuitscanError": "circuitscan.errors",
    "export_run": "circuitscan.interop",
    "read_graph_file": "circuitscan.interop",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "circuits":
        return importlib.import_module("circuitscan.circuits")
    raise AttributeError(f"module 'circuitscan' has no attribute {name!r}")
