"""circuitscan: find circuits in language models with discrete sparse-autoencoder codes.

The public API, imported here explicitly (``import circuitscan`` loads torch, about two
seconds on a cold start)::

    import circuitscan as cs
    model = cs.load_model("smollm2-135m")
    prompts = cs.build_task("ioi", model, n=250)
    result = cs.discover(model, prompts, level="both", out="runs/ioi")
    table = cs.compare(model, prompts, methods=["sae-codes", "eap"], out="runs/ioi-compare")
"""

from __future__ import annotations

from typing import Any

from . import circuits
from . import testbeds as _testbeds  # noqa: F401  (registers the testbed models and the tracr task)
from ._version import __version__
from .activations import head_outputs
from .circuits.registry import register_file_reader
from .codes import discretise, edge_scores, node_scores
from .comparison import CompareSettings, compare
from .config import SAEConfig, ScoringConfig
from .errors import CircuitscanError
from .evaluation import evaluate_against
from .evaluation.circuit_rule import predicted_circuit
from .evaluation.eap_read import ground_truth_from_graph, is_graph_json
from .evaluation.performance import evaluate_run
from .interop import export_run, read_graph_file
from .methods.base import MethodSpec, Scorer
from .models import ModelHandle, load_model
from .report import write_report
from .run import RunResult, discover
from .sae import SparseAutoencoder, train_sae
from .tasks import TASKS, build_task
from .types import Codes, GroundTruth, HeadActivations, HeadId, HeadLayout, PromptSet, Scores


def _graph_ground_truth(data: object, spec: str, layout: Any, family: str, model: Any) -> Any:
    """``--ground-truth FILE`` of an EAP-IG / MIB graph: its in_graph heads (None for other JSON)."""
    return ground_truth_from_graph(data, spec, layout, family, model) if is_graph_json(data) else None


# circuits (a lower layer) reads graph files through this reader (it may not import evaluation)
register_file_reader("eap-graph", _graph_ground_truth)

__all__ = [
    "__version__",
    "circuits",
    "CircuitscanError",
    "Codes",
    "CompareSettings",
    "GroundTruth",
    "HeadActivations",
    "HeadId",
    "HeadLayout",
    "MethodSpec",
    "ModelHandle",
    "PromptSet",
    "RunResult",
    "SAEConfig",
    "Scorer",
    "Scores",
    "ScoringConfig",
    "SparseAutoencoder",
    "TASKS",
    "build_task",
    "compare",
    "discover",
    "discretise",
    "edge_scores",
    "evaluate_against",
    "evaluate_run",
    "export_run",
    "head_outputs",
    "load_model",
    "node_scores",
    "predicted_circuit",
    "read_graph_file",
    "train_sae",
    "write_report",
]
