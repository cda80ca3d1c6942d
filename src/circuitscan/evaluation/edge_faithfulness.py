"""Faithfulness over EDGES (MIB's edge-level CPR and CMD), for methods whose :class:`Scores`
carry per-edge scores (``Scores.edges``, port-level names such as ``"L1H0->L3H2.q"``).

The circuit at fraction x keeps the ``floor(x * n_edges)`` highest-scoring edges of the
model's head graph (edges a method did not score rank last); every other edge carries its
sender's ablated value into its receiver (edge patching, :mod:`circuitscan.evaluation.edges`);
no pruning of dangling edges. Random edge sets of the same sizes are the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .curve_stats import MIB_FRACTIONS, cmd, cpr, random_band
from .edges import EdgeForward, EdgeGraph, run_edges
from .metrics import normalise
from .objective import ObjectiveConfig, build_objective

if TYPE_CHECKING:
    import torch

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class EdgeFaithfulnessCurve:
    """One method's faithfulness over edge counts (MIB's edge-level CPR/CMD)."""

    method: str
    metric: str
    ablation: str
    n_edges: int
    fractions: list[float]
    sizes: list[int]
    values: list[float]
    random_mean: list[float]
    random_std: list[float]
    random_samples: int
    cpr: float
    cmd: float
    cpr_random: float
    cmd_random: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _edge_index(graph: EdgeGraph, with_edges: list[Scores]) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """The graph's (sender, receiver) pairs and each edge name's index; every scored edge checked."""
    pairs = graph.edge_index()
    index = {graph.edge_name(s, r): i for i, (s, r) in enumerate(pairs)}
    for sc in with_edges:
        unknown = [e for e in sc.edges if e not in index]
        if unknown:
            raise CircuitscanError(
                f"method {sc.method!r} scores {len(unknown)} edges this model's graph does not have "
                f"(e.g. {unknown[0]!r}); edge names look like 'L1H0->L3H2.q', 'input->L0H1.v', 'L2H0->logits'"
            )
    return pairs, index


def _edge_configs(
    graph: EdgeGraph,
    pairs: list[tuple[int, int]],
    index: dict[str, int],
    with_edges: list[Scores],
    sizes: list[int],
    random_samples: int,
    seed: int,
) -> list[torch.Tensor]:
    """``[n_senders, n_receivers]`` removed flags of every circuit, in the order: the full model,
    the empty one, each method's top-k at each size, then the random sets of each size."""
    import torch

    n_edges = len(pairs)
    src = torch.tensor([p[0] for p in pairs])
    dst = torch.tensor([p[1] for p in pairs])

    def removed_for(kept: torch.Tensor) -> torch.Tensor:
        """[n_edges] kept flags -> [n_senders, n_receivers] removed flags."""
        removed = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
        removed[src[~kept], dst[~kept]] = True
        return removed

    configs = [removed_for(torch.ones(n_edges, dtype=torch.bool)), removed_for(torch.zeros(n_edges, dtype=torch.bool))]
    for sc in with_edges:
        score = torch.full((n_edges,), float("-inf"))
        for name, v in sc.edges.items():
            score[index[name]] = float(v)
        order = torch.sort(-score, stable=True).indices
        for k in sizes:
            kept = torch.zeros(n_edges, dtype=torch.bool)
            kept[order[:k]] = True
            configs.append(removed_for(kept))
    g = torch.Generator().manual_seed(seed)
    for k in sizes:
        for _ in range(random_samples):
            kept = torch.zeros(n_edges, dtype=torch.bool)
            kept[torch.randperm(n_edges, generator=g)[:k]] = True
            configs.append(removed_for(kept))
    return configs


def edge_faithfulness_curves(
    model: ModelHandle,
    prompts: PromptSet,
    scores: Scores | Sequence[Scores],
    *,
    ablation: str = "corrupt",
    metric: str | None = None,
    random_samples: int = 10,
    seed: int = 0,
    n_examples: int | None = None,
    max_rows: int = 32,
) -> dict[str, EdgeFaithfulnessCurve]:
    """Faithfulness at the MIB fractions of EDGES, for every method with edge scores.

    Args:
        model, prompts: the model and the task.
        scores: methods' :class:`Scores`; those without ``edges`` are skipped.
        ablation, metric: as for node level (default metric: the task's own).
        random_samples: random edge sets per size (uniform over the graph's edges).
        n_examples: the first n positive prompts (default: all).
        max_rows: token rows per edge-patched pass; each row holds every sender's
            difference (senders x seq x d_model floats), so this bounds memory.

    Returns:
        ``{method: EdgeFaithfulnessCurve}`` (empty when no method has edge scores).
    """
    import torch

    scores_list = [scores] if not isinstance(scores, Sequence) else list(scores)
    with_edges = [s for s in scores_list if s.edges]
    if not with_edges:
        return {}
    if random_samples < 0:
        raise CircuitscanError(f"random_samples must be >= 0, got {random_samples}")
    graph = EdgeGraph.for_model(model)
    pairs, index = _edge_index(graph, with_edges)
    n_edges = len(pairs)
    sizes = [int(math.floor(x * n_edges + 1e-9)) for x in MIB_FRACTIONS]
    configs = _edge_configs(graph, pairs, index, with_edges, sizes, random_samples, seed)
    obj = build_objective(model, prompts, ObjectiveConfig(metric=metric, ablation=ablation, n_examples=n_examples))
    removed = torch.stack(configs)
    unique, inverse = torch.unique(removed.reshape(removed.shape[0], -1), dim=0, return_inverse=True)
    good = run_edges(obj, EdgeForward(model, graph), unique.reshape(-1, *removed.shape[1:]), max_rows=max_rows)
    means = good.mean(-1)[inverse]
    clean, empty = float(means[0]), float(means[1])
    faith = [normalise(float(v), clean, empty) for v in means]
    n_s = len(sizes)
    offset = 2 + n_s * len(with_edges)
    r_mean, r_std = random_band(torch.tensor(faith[offset:]) if random_samples else None, n_s, random_samples)
    out = {}
    for b, sc in enumerate(with_edges):
        values = faith[2 + b * n_s : 2 + (b + 1) * n_s]
        out[sc.method] = EdgeFaithfulnessCurve(
            method=sc.method, metric=obj.metric_name, ablation=ablation, n_edges=n_edges,
            fractions=list(MIB_FRACTIONS), sizes=sizes, values=values, random_mean=r_mean, random_std=r_std,
            random_samples=random_samples, cpr=cpr(values), cmd=cmd(values),
            cpr_random=cpr(r_mean) if random_samples else float("nan"),
            cmd_random=cmd(r_mean) if random_samples else float("nan"),
        )
    return out
