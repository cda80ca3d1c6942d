"""MIB's circuit-track numbers computed MIB's way, and faithfulness of given edge sets.

MIB (Mueller et al. 2025; its ``run_evaluation.py``) evaluates an edge-scored graph at
:data:`MIB_PERCENTAGES` = 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 % of the graph's
edges. At each percentage it keeps the ``int(p * n_edges)`` edges of largest ``|score|``,
prunes the graph (repeatedly drops heads without a kept incoming or outgoing edge, and
the edges of dropped heads), patches every other edge and measures faithfulness
``(m(C) - m(∅)) / (m(M) - m(∅))``. Then, with trapezoids on the linear percentage axis
over the ten points (no point at 0, the 100 % point measured, not set to 1):

    CPR = Σ (p_{i+1} - p_i) (f_i + f_{i+1}) / 2
    CMD = Σ (p_{i+1} - p_i) (|1 - f_i| + |1 - f_{i+1}|) / 2

Neither is clipped: CPR exceeds 1 when circuits beat the model. circuitscan's own
numbers (:mod:`.faithfulness`) rank by signed score, do not prune, and integrate from a
0 % point with f = 0; both are reported side by side. Here the graph is ours (heads and
the logits; MLPs are wiring, :mod:`.edges`), so ``n_edges`` counts our edges, not MIB's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .eap_read import read_graph_file
from .edges import EdgeForward, EdgeGraph, removed_all, run_edges
from .metrics import normalise
from .objective import ObjectiveConfig, build_objective

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores

MIB_PERCENTAGES: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def mib_cpr(values: Sequence[float], percentages: Sequence[float] = MIB_PERCENTAGES) -> float:
    """MIB's CPR: trapezoids of faithfulness over the percentages (linear axis)."""
    _check(values, percentages)
    return float(sum((percentages[i + 1] - percentages[i]) * (values[i] + values[i + 1]) / 2
                     for i in range(len(values) - 1)))


def mib_cmd(values: Sequence[float], percentages: Sequence[float] = MIB_PERCENTAGES) -> float:
    """MIB's CMD: trapezoids of |1 - faithfulness| over the percentages (linear axis)."""
    return mib_cpr([abs(1.0 - v) for v in values], percentages)


def _check(values: Sequence[float], percentages: Sequence[float]) -> None:
    if len(values) != len(percentages) or len(values) < 2:
        raise ValueError(f"need one value per percentage (>= 2), got {len(values)} and {len(percentages)}")


def port_edges(graph: EdgeGraph, names: Iterable[str]) -> set[str]:
    """Edge names as port-level edges of ``graph``: head-level ``A->B`` stands for every input of B."""
    valid = set(graph.edge_names())
    by_head: dict[str, list[str]] = {}
    for i, r in enumerate(graph.receivers):
        for h in graph.receiver_heads(i):
            by_head.setdefault(h, []).append(r.name)
    out: set[str] = set()
    for name in names:
        if name in valid:
            out.add(name)
            continue
        src, _, dst = name.partition("->")
        expanded = [f"{src}->{r}" for r in by_head.get(dst, [])]
        if not expanded or not all(e in valid for e in expanded):
            raise CircuitscanError(f"edge {name!r} is not an edge of this model's graph (edges look like "
                                   "'L1H0->L3H2.q', 'input->L0H1.v', 'L2H0->logits' or head-level 'L1H0->L3H2')")
        out.update(expanded)
    return out


def prune(graph: EdgeGraph, kept: Tensor) -> Tensor:
    """MIB's pruning on a ``[n_senders, n_receivers]`` kept mask: drop dangling heads and their edges."""
    import torch

    kept = kept.clone()
    H = graph.layout.n_heads
    # receiver -> the heads (flat sender index 1 + i) whose computation it enters
    owner = torch.zeros(graph.n_receivers, graph.n_senders, dtype=torch.bool)
    for r, rec in enumerate(graph.receivers):
        for h in rec.heads:
            owner[r, 1 + rec.layer * H + h] = True
    while True:
        has_out = kept.any(dim=1)
        has_in = (kept.any(dim=0).float() @ owner.float()) > 0
        has_in[0] = True  # the input has no inputs of its own
        alive = has_out & has_in
        recv_alive = (owner.float() @ alive.float()) > 0
        recv_alive[-1] = True  # the logits
        new = kept & alive[:, None] & recv_alive[None, :]
        if torch.equal(new, kept):
            return kept
        kept = new


@dataclass(frozen=True)
class MIBCurve:
    method: str
    n_edges: int
    percentages: list[float]
    sizes: list[int]
    kept_after_pruning: list[int]
    values: list[float]
    cpr: float
    cmd: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _goodness(model: ModelHandle, prompts: PromptSet, graph: EdgeGraph, removed: Tensor, *, ablation: str,
              metric: str | None, n_examples: int | None, max_rows: int) -> tuple[list[float], str]:
    """Mean goodness of each removed-edge configuration, plus the clean and empty ones first."""
    import torch

    none = torch.zeros(1, graph.n_senders, graph.n_receivers, dtype=torch.bool)
    allr = removed_all(graph)
    stack = torch.cat([none, allr, removed])
    unique, inverse = torch.unique(stack.reshape(stack.shape[0], -1), dim=0, return_inverse=True)
    obj = build_objective(model, prompts, ObjectiveConfig(metric=metric, ablation=ablation, n_examples=n_examples))
    good = run_edges(obj, EdgeForward(model, graph), unique.reshape(-1, *stack.shape[1:]), max_rows=max_rows)
    return good.mean(-1)[inverse].tolist(), obj.metric_name


def edge_circuit_faithfulness(
    model: ModelHandle, prompts: PromptSet, circuits: Mapping[str, Iterable[str]], *, ablation: str = "corrupt",
    metric: str | None = None, n_examples: int | None = None, max_rows: int = 32,
) -> dict[str, float]:
    """Faithfulness of edge circuits ``{name: edge names}``: their edges kept, every other edge patched."""
    import torch

    graph = EdgeGraph.for_model(model)
    index = {n: i for i, n in enumerate(graph.edge_names())}
    pairs = graph.edge_index()
    removed = []
    for edges in circuits.values():
        keep = port_edges(graph, edges)
        r = graph.valid.clone()
        for e in keep:
            s, t = pairs[index[e]]
            r[s, t] = False
        removed.append(r)
    if not removed:
        return {}
    means, _ = _goodness(model, prompts, graph, torch.stack(removed), ablation=ablation, metric=metric,
                         n_examples=n_examples, max_rows=max_rows)
    clean, empty = means[0], means[1]
    return {name: normalise(v, clean, empty) for name, v in zip(circuits, means[2:], strict=True)}


def mib_edge_curves(
    model: ModelHandle, prompts: PromptSet, scores: Sequence[Scores], *, ablation: str = "corrupt",
    metric: str | None = None, n_examples: int | None = None, max_rows: int = 32,
) -> dict[str, MIBCurve]:
    """MIB's faithfulness curve, CPR and CMD for every method with edge scores."""
    import torch

    with_edges = [s for s in scores if s.edges]
    if not with_edges:
        return {}
    graph = EdgeGraph.for_model(model)
    pairs = graph.edge_index()
    index = {graph.edge_name(s, r): i for i, (s, r) in enumerate(pairs)}
    n_edges = len(pairs)
    sizes = [int(p * n_edges) for p in MIB_PERCENTAGES]
    configs, kept_counts = [], []
    for sc in with_edges:
        unknown = next((e for e in sc.edges if e not in index), None)
        if unknown is not None:
            raise CircuitscanError(f"method {sc.method!r} scores edge {unknown!r}, which this model's graph lacks")
        mag = torch.full((n_edges,), -1.0)
        for name, v in sc.edges.items():
            mag[index[name]] = abs(float(v)) if math.isfinite(v) else -1.0
        order = torch.sort(-mag, stable=True).indices
        for k in sizes:
            kept = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
            for i in order[:k].tolist():
                kept[pairs[i]] = True
            kept = prune(graph, kept)
            kept_counts.append(int(kept.sum()))
            configs.append(graph.valid & ~kept)
    means, _ = _goodness(model, prompts, graph, torch.stack(configs), ablation=ablation, metric=metric,
                         n_examples=n_examples, max_rows=max_rows)
    clean, empty = means[0], means[1]
    faith = [normalise(v, clean, empty) for v in means[2:]]
    n = len(sizes)
    out = {}
    for b, sc in enumerate(with_edges):
        f = faith[b * n:(b + 1) * n]
        out[sc.method] = MIBCurve(method=sc.method, n_edges=n_edges, percentages=list(MIB_PERCENTAGES), sizes=sizes,
                                  kept_after_pruning=kept_counts[b * n:(b + 1) * n], values=f, cpr=mib_cpr(f),
                                  cmd=mib_cmd(f))
    return out


def imported_circuit(model: ModelHandle, path: str) -> tuple[str, list[str], Any]:
    """An EAP-IG / MIB graph file as a named head circuit for this model (and the graph read)."""
    from pathlib import Path

    imp = read_graph_file(path, EdgeGraph.for_model(model), d_model=model.d_model)
    heads = sorted(h.name for h in imp.ground_truth(model.family).heads)
    return f"file {Path(path).name}", heads, imp


def mib_blocks(model: ModelHandle, prompts: PromptSet, scores: Sequence[Scores], imported: Any, *, ablation: str,
               metric: str | None, n_examples: int | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """metrics.json's ``faithfulness.mib`` block (MIB's curves of ``scores``) and ``imported_circuit`` block."""
    curves = mib_edge_curves(model, prompts, scores, ablation=ablation, metric=metric, n_examples=n_examples)
    mib_json = {"rule": "MIB's: |score| top-n at 0.1 %..100 % of edges, pruned, trapezoids on the linear axis "
                "without a 0 point (circuitscan.evaluation.mib)",
                "curves": {m: c.to_dict() for m, c in curves.items()}} if curves else None
    if imported is None:
        return mib_json, None
    return mib_json, imported_summary(model, prompts, imported[0], imported[2], ablation=ablation, metric=metric,
                                      n_examples=n_examples)


def imported_summary(model: ModelHandle, prompts: PromptSet, name: str, imp: Any, *, ablation: str,
                     metric: str | None, n_examples: int | None) -> dict[str, Any]:
    """metrics.json's ``imported_circuit`` block: the file's heads and its edge circuit's faithfulness."""
    out: dict[str, Any] = {"name": name, "source": imp.source, "heads": sorted(imp.heads),
                           "n_edges": len(imp.edges), "mlp_edges_removed_in_file": imp.mlp_edges_removed,
                           "mlp_rule": "MLPs are wiring here: MLP edges the file removes stay in (counted above)"}
    if imp.edges:
        f = edge_circuit_faithfulness(model, prompts, {name: imp.edges}, ablation=ablation, metric=metric,
                                      n_examples=n_examples)
        out["edge_faithfulness"] = f[name]
    return out
