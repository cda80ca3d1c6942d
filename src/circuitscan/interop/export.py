"""``circuitscan export``: a run directory's scores and circuits in the field's formats.

Formats (docs/INTEROP.md):

``eap-ig``        ``OUT/<method>.json``: one EAP-IG graph JSON per method (scores and the
                  run's circuit as ``in_graph``), loadable with EAP-IG's ``Graph.from_json``.
``mib``           ``OUT/<method>/<task>_<model>/importances.json``: the same graph in MIB's
                  submission layout (one folder per method, one per task and model, a single
                  importance-score file).
``mib-circuits``  ``OUT/<method>/<task>_<model>/circuit_<percent>.json``: MIB's other submission
                  form, nine binary circuits with at most 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50 % of
                  the graph's edges (largest |edge score| first), for methods that score edges.
``auto-circuit``  ``OUT/<method>.safetensors``: auto-circuit-style prune scores, one tensor per
                  destination module (``blocks.L.hook_{q,k,v}_input`` of shape
                  ``[n_heads, n_sources]``, ``blocks.L.hook_mlp_in`` and the last block's
                  ``hook_resid_post`` of shape ``[n_sources]``), with ``OUT/sources.json`` naming
                  the sources in their order (``Resid Start``, then per layer its heads and MLP).

``neuronpedia``   ``OUT/<run>.json``: a ``circuitscan features`` run's feature graph as
                  circuit-tracer / Neuronpedia graph JSON (:mod:`.neuronpedia`).

The run directory is read with :func:`circuitscan.report.rundata.load_run`. Every file is
written atomically; nothing is written when the run cannot be read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import CircuitscanError
from ..evaluation.edges import EdgeGraph
from ..features.graph import AttributionGraph
from ..features.run import GRAPH
from ..report.rundata import load_run
from ..rundir import atomic_path, read_json, write_json
from .eap_graph import binary_circuits, graph_json
from .names import split_their_edge
from .neuronpedia import neuronpedia_graph

FORMATS = ("eap-ig", "mib", "mib-circuits", "auto-circuit", "neuronpedia")


def _kv_heads(run) -> int:
    """Key/value heads per layer, read from grouped receiver names (``L3KV1.k``) if any."""
    groups = [int(m.group(1)) for ms in run.methods.values() for e in ms.edges
              for m in [re.search(r"KV(\d+)\.", e)] if m]
    return max(groups) + 1 if groups else run.layout.n_heads


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text)).strip("-") or "x"


def method_graphs(run_dir: str | Path) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Each method of a run as an EAP-IG graph object (``{method: graph}``), and the run."""
    import math

    run = load_run(run_dir)
    graph = EdgeGraph(run.layout, _kv_heads(run))
    model = run.config.get("model") or {}
    d_model = int(model.get("d_model") or 0)
    names = run.layout.names()
    out = {}
    for name, ms in run.methods.items():
        node = {h: (float(v) if math.isfinite(v) else 0.0) for h, v in zip(names, ms.scores.tolist(), strict=True)}
        circuit = run.circuit(name)
        heads = list(circuit.get("heads", [])) if circuit else []
        edge_scores = {e: float(v) for e, v in ms.edges.items() if math.isfinite(v)} or None
        meta = {"method": name, "model": model.get("spec"), "task": (run.config.get("task") or {}).get("name"),
                "circuit_rule": (circuit or {}).get("rule", "none saved: no head in_graph"),
                "mlps": "not nodes of circuitscan's graph: written in_graph with score 0.0 on their edges",
                "kv_heads": graph.n_kv_heads}
        out[name] = graph_json(graph, d_model=d_model, node_scores=node, edge_scores=edge_scores, heads_in=heads,
                               meta=meta)
    return run, out


def _sources(n_layers: int, n_heads: int) -> list[str]:
    out = ["input"]
    for layer in range(n_layers):
        out += [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
    return out


def prune_scores(g: dict[str, Any]) -> dict[str, Any]:
    """An EAP-IG graph object as auto-circuit-style prune scores (torch tensors by destination)."""
    import torch

    L, H = g["cfg"]["n_layers"], g["cfg"]["n_heads"]
    src_index = {s: i for i, s in enumerate(_sources(L, H))}
    n_src = len(src_index)
    out: dict[str, torch.Tensor] = {}
    for layer in range(L):
        for p in "qkv":
            out[f"blocks.{layer}.hook_{p}_input"] = torch.zeros(H, n_src)
        out[f"blocks.{layer}.hook_mlp_in"] = torch.zeros(n_src)
    final = f"blocks.{L - 1}.hook_resid_post"
    out[final] = torch.zeros(n_src)
    for name, entry in g["edges"].items():
        src, dst, port = split_their_edge(name)
        s = src_index[src]
        if dst == "logits":
            out[final][s] = entry["score"]
        elif dst.startswith("m"):
            out[f"blocks.{int(dst[1:])}.hook_mlp_in"][s] = entry["score"]
        else:
            layer, head = (int(x[1:]) for x in dst.split("."))
            out[f"blocks.{layer}.hook_{port}_input"][head, s] = entry["score"]
    return out


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> list[Path]:
    """Write a run's methods in format ``fmt`` under ``out`` (default ``RUN_DIR/export-<fmt>``).

    Returns the files written. Raises :class:`CircuitscanError` for an unknown format or a
    directory that is not a run, before writing anything.
    """
    if fmt not in FORMATS:
        raise CircuitscanError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "neuronpedia":
        return [_export_feature_graph(Path(run_dir), out)]
    run, graphs = method_graphs(run_dir)
    dest = Path(out) if out is not None else Path(run_dir) / f"export-{fmt}"
    if dest.exists() and not dest.is_dir():
        raise CircuitscanError(f"--out {str(dest)!r} exists and is not a directory")
    written: list[Path] = []
    if fmt == "eap-ig":
        for name, g in graphs.items():
            p = dest / f"{_slug(name)}.json"
            write_json(p, g)
            written.append(p)
    elif fmt in ("mib", "mib-circuits"):
        task = _slug((run.config.get("task") or {}).get("name", "task")).replace("_", "-")
        model = _slug((run.config.get("model") or {}).get("spec", "model")).replace("_", "-")
        if fmt == "mib-circuits":
            graphs = {name: g for name, g in graphs.items() if run.methods[name].edges}
            if not graphs:
                raise CircuitscanError(f"{str(run_dir)!r}: no method of this run scores edges; --format mib-circuits "
                                       "writes edge circuits (use --format mib for head scores)")
        for name, g in graphs.items():
            folder = dest / _slug(name) / f"{task}_{model}"
            if fmt == "mib":
                write_json(folder / "importances.json", g)
                written.append(folder / "importances.json")
                continue
            for share, circuit in binary_circuits(g).items():
                p = folder / f"circuit_{share * 100:g}.json"
                write_json(p, circuit)
                written.append(p)
    else:
        from safetensors.torch import save_file

        L, H = run.layout.n_layers, run.layout.n_heads
        p = dest / "sources.json"
        write_json(p, {"sources": _sources(L, H),
                       "note": "source index of every prune-score tensor's last axis; 'input' is auto-circuit's "
                               "Resid Start"})
        written.append(p)
        for name, g in graphs.items():
            p = dest / f"{_slug(name)}.safetensors"
            with atomic_path(p) as tmp:
                save_file({k: v.contiguous() for k, v in prune_scores(g).items()}, str(tmp))
            written.append(p)
    return written


def _export_feature_graph(run_dir: Path, out: str | Path | None) -> Path:
    run = load_run(run_dir)
    if not run.has(GRAPH):
        raise CircuitscanError(f"{str(run_dir)!r} has no {GRAPH}: --format neuronpedia exports the feature graph "
                               "of a `circuitscan features` run")
    graph = AttributionGraph.from_json(read_json(run_dir / GRAPH))
    model = run.config.get("model") or {}
    prompt = run.config.get("prompt") or {}
    text = prompt.get("text") or (run.config.get("task") or {}).get("name", "")
    tokens = [str(t) for t in prompt.get("token_ids") or []]  # the run keeps ids, not token strings
    data = neuronpedia_graph(graph, slug=_slug(run_dir.name), scan=str(model.get("spec", "")),
                             n_layers=run.layout.n_layers, prompt=str(text), prompt_tokens=tokens)
    dest = (Path(out) if out is not None else run_dir / "export-neuronpedia") / f"{_slug(run_dir.name)}.json"
    write_json(dest, data)
    return dest
