"""Feature graphs as circuit-tracer / Neuronpedia graph JSON, validated by circuit-tracer's own models.

circuit-tracer is installed without its dependencies (scripts/setup.sh); only its
pydantic frontend models are imported. Without it the validation test skips, except
under CI (``CI`` set to true), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from circuitscan.cli import main
from circuitscan.features.graph import GraphConfig, attribution_graph, next_token_objective
from circuitscan.interop.neuronpedia import neuronpedia_graph
from test_features_toys import FOUR_SITES, identity_saes, known_paths_model


def _graph_models():
    try:
        from circuit_tracer.frontend import graph_models
    except ImportError as exc:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"circuit-tracer is not importable ({exc}); scripts/setup.sh installs it with --no-deps")
        pytest.skip(f"circuit-tracer is not installed ({exc}); scripts/setup.sh installs it with --no-deps")
    return graph_models


@pytest.fixture(scope="module")
def feature_graph():
    model, _ = known_paths_model()
    tokens = torch.tensor([[3, 1, 7, 2, 9]])
    obj = next_token_objective(model, tokens, 4)
    return attribution_graph(model, identity_saes(6, FOUR_SITES), tokens, obj, GraphConfig(top_k=4))


def test_export_validates_against_circuit_tracers_models(feature_graph):
    gm = _graph_models()
    data = neuronpedia_graph(feature_graph, slug="toy", scan="known-paths", n_layers=1, prompt="3 1 7 2 9",
                             prompt_tokens=["3", "1", "7", "2", "9"])
    parsed = gm.Model.model_validate(json.loads(json.dumps(data)))
    assert len(parsed.nodes) == len(feature_graph.nodes)
    ids = {n.node_id for n in parsed.nodes}
    assert len(ids) == len(parsed.nodes)  # unique ids
    for link in parsed.links:
        gm.Link.model_validate(link)
        assert link["source"] in ids and link["target"] in ids
    assert len(parsed.links) == len(feature_graph.edges)
    out = [n for n in parsed.nodes if n.feature_type == "logit"]
    assert len(out) == 1 and out[0].is_target_logit and out[0].layer == "2"
    by_id = {n.node_id: n for n in parsed.nodes}
    for node in feature_graph.nodes.values():
        assert by_id[node.id.replace("/", "_")].influence == pytest.approx(node.score)


def test_cli_exports_a_runs_feature_graph(feature_graph, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["compare", "--model", "toy-planted", "--task", "planted", "-n", "8", "--methods", "norm-diff",
                 "--out", str(run), "--no-faithfulness"]) == 0
    assert main(["export", str(run), "-f", "neuronpedia", "--out", str(tmp_path / "np")]) == 2
    assert "has no feature_graph.json" in capsys.readouterr().err
    assert not (tmp_path / "np").exists()  # nothing written
    (run / "feature_graph.json").write_text(json.dumps(feature_graph.to_json()))
    assert main(["export", str(run), "-f", "neuronpedia", "--out", str(tmp_path / "np")]) == 0
    data = json.loads((tmp_path / "np" / "run.json").read_text())
    assert data["metadata"]["scan"] == "toy-planted" and len(data["nodes"]) == len(feature_graph.nodes)
    shutil.rmtree(run)
