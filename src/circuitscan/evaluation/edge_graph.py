"""The head-level computational graph edge methods score (:class:`EdgeGraph`), its edge names and edge AUC."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..models.toy import PLANTED_HEADS
from ..types import HeadLayout

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle


INPUT = "input"
LOGITS = "logits"
PORTS = ("q", "k", "v")


@dataclass(frozen=True)
class Receiver:
    """One receiving input: a head's q, a (key/value) head's k or v, or the logits."""

    layer: int  # n_layers for the logits
    port: str  # q | k | v | logits
    index: int  # query head (q), key/value head (k, v), 0 (logits)
    name: str
    heads: tuple[int, ...]  # the query heads (within the layer) whose computation it enters


@dataclass(frozen=True)
class EdgeGraph:
    """Senders, receivers and the valid edges between them for one model.

    Sender index 0 is ``input``; sender ``1 + i`` is the head with flat index i.
    Receivers are ordered layer by layer (q of every head, then k, then v of every
    key/value head), the logits last.
    """

    layout: HeadLayout
    n_kv_heads: int

    @classmethod
    def for_model(cls, model: ModelHandle) -> EdgeGraph:
        n_kv = getattr(model.bridge.cfg, "n_key_value_heads", None) or model.layout.n_heads
        if model.layout.n_heads % int(n_kv):
            raise CircuitscanError(f"model {model.spec!r}: {model.layout.n_heads} query heads do not split into "
                                   f"{n_kv} key/value groups")
        return cls(model.layout, int(n_kv))

    @property
    def grouped(self) -> bool:
        return self.n_kv_heads != self.layout.n_heads

    @property
    def group_size(self) -> int:
        return self.layout.n_heads // self.n_kv_heads

    @cached_property
    def senders(self) -> list[str]:
        return [INPUT, *self.layout.names()]

    def sender_layer(self, s: int) -> int:
        return -1 if s == 0 else (s - 1) // self.layout.n_heads

    @cached_property
    def receivers(self) -> list[Receiver]:
        out: list[Receiver] = []
        H, G = self.layout.n_heads, self.n_kv_heads
        for layer in range(self.layout.n_layers):
            for h in range(H):
                out.append(Receiver(layer, "q", h, f"L{layer}H{h}.q", (h,)))
            for port in ("k", "v"):
                for g in range(G):
                    name = f"L{layer}KV{g}.{port}" if self.grouped else f"L{layer}H{g}.{port}"
                    heads = tuple(range(g * self.group_size, (g + 1) * self.group_size))
                    out.append(Receiver(layer, port, g, name, heads))
        out.append(Receiver(self.layout.n_layers, LOGITS, 0, LOGITS, ()))
        return out

    @property
    def n_senders(self) -> int:
        return 1 + self.layout.n_total

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    def layer_receivers(self, layer: int) -> dict[str, list[int]]:
        """Receiver indices of one layer by port (``logits`` for layer n_layers)."""
        per = self.layout.n_heads + 2 * self.n_kv_heads
        if layer == self.layout.n_layers:
            return {LOGITS: [self.n_receivers - 1]}
        base = layer * per
        H, G = self.layout.n_heads, self.n_kv_heads
        return {"q": list(range(base, base + H)), "k": list(range(base + H, base + H + G)),
                "v": list(range(base + H + G, base + H + 2 * G))}

    def n_upstream(self, layer: int) -> int:
        """Senders that feed a receiver of ``layer``: input + every head below it."""
        return 1 + layer * self.layout.n_heads

    @cached_property
    def valid(self) -> Tensor:
        """Bool ``[n_senders, n_receivers]``: which sender may feed which receiver."""
        import torch

        s_layer = torch.tensor([self.sender_layer(s) for s in range(self.n_senders)])
        r_layer = torch.tensor([r.layer for r in self.receivers])
        return s_layer[:, None] < r_layer[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edge_index(self) -> list[tuple[int, int]]:
        """Valid (sender, receiver) pairs in row-major order."""
        return [tuple(x) for x in self.valid.nonzero().tolist()]

    def edge_name(self, s: int, r: int) -> str:
        return f"{self.senders[s]}->{self.receivers[r].name}"

    def edge_names(self) -> list[str]:
        return [self.edge_name(s, r) for s, r in self.edge_index()]

    def to_dict(self, matrix: Tensor) -> dict[str, float]:
        """A ``[n_senders, n_receivers]`` score matrix as {edge name: score} over valid edges."""
        return {self.edge_name(s, r): float(matrix[s, r]) for s, r in self.edge_index()}

    def receiver_heads(self, r: int) -> list[str]:
        """Head-level names of the nodes receiver r belongs to (``logits`` for the logits)."""
        rec = self.receivers[r]
        if rec.port == LOGITS:
            return [LOGITS]
        return [f"L{rec.layer}H{h}" for h in rec.heads]

    def describe(self) -> dict[str, Any]:
        return {"senders": self.n_senders, "receivers": self.n_receivers, "edges": self.n_edges,
                "kv_heads": self.n_kv_heads, "mlps": "wiring (not nodes)"}


def contract(graph: EdgeGraph, edges: Mapping[str, float]) -> dict[str, float]:
    """Port-level edges to head-level edges ``"A->B"``: the largest absolute score over B's ports.

    A key/value receiver of a grouped-query model counts for every query head of its group.
    """
    by_name = {r.name: i for i, r in enumerate(graph.receivers)}
    out: dict[str, float] = {}
    for name, score in edges.items():
        src, dst = name.split("->")
        if dst not in by_name:
            raise CircuitscanError(f"edge {name!r} does not end at a receiver of this model's graph")
        value = abs(score)
        for head in graph.receiver_heads(by_name[dst]):
            key = f"{src}->{head}"
            if key not in out or value > out[key]:
                out[key] = value
    return out


def head_level_edges(layout: HeadLayout) -> list[str]:
    """Every head-level edge of the graph: input/heads -> later heads, and -> logits."""
    names = layout.names()
    out = []
    for i, b in enumerate(names):
        lb = i // layout.n_heads
        out.append(f"{INPUT}->{b}")
        out.extend(f"{a}->{b}" for j, a in enumerate(names) if j // layout.n_heads < lb)
    out.append(f"{INPUT}->{LOGITS}")
    out.extend(f"{a}->{LOGITS}" for a in names)
    return out


def normalise_edge(name: str) -> str:
    """Ground-truth spelling to ours: ``output`` is our ``logits``."""
    src, dst = name.split("->")
    return f"{src}->{LOGITS if dst == 'output' else dst}"


def planted_true_edges() -> frozenset[str]:
    """The edges of the toy-planted model's circuit (:mod:`circuitscan.models.toy`).

    Each planted head reads the signal token (``input``) and the planted heads of earlier
    layers, and only planted heads write what the unembedding reads.
    """
    names = [h.name for h in PLANTED_HEADS]
    edges = {f"{INPUT}->{n}" for n in names} | {f"{n}->{LOGITS}" for n in names}
    for a in PLANTED_HEADS:
        for b in PLANTED_HEADS:
            if a.layer < b.layer:
                edges.add(f"{a.name}->{b.name}")
    return frozenset(edges)


def edge_auc(
    scores: Mapping[str, float], true_edges: Iterable[str], candidates: Iterable[str]
) -> dict[str, Any]:
    """ROC AUC over ``candidates`` (head-level edge names) of head-level ``scores``.

    Edges a method did not score count as 0. Returns {auc, n_edges, n_true}.
    """
    from sklearn.metrics import roc_auc_score

    cand = list(candidates)
    truth = {normalise_edge(e) for e in true_edges}
    missing = sorted(truth - set(cand))
    if missing:
        raise CircuitscanError(
            f"{len(missing)} ground-truth edges are not edges of this model's head-level graph "
            f"(e.g. {missing[0]!r})"
        )
    y = [1 if e in truth else 0 for e in cand]
    s = [float(scores.get(e, 0.0)) for e in cand]
    if sum(y) in (0, len(y)):
        raise CircuitscanError("an edge ROC needs edges both in and out of the ground truth")
    return {"auc": float(roc_auc_score(y, s)), "n_edges": len(cand), "n_true": sum(y)}
