"""The attribution graph's settings (:class:`GraphConfig`) and result (:class:`AttributionGraph` of :class:`GraphNode`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import CircuitscanError

EDGE_MODES = ("corrected", "direct", "total")
OUTPUT = "output"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CircuitscanError(msg)


@dataclass(frozen=True)
class GraphConfig:
    """How a graph is built.

    Attributes:
        top_k: features kept per site, by absolute node score.
        edges: ``"corrected"`` (the seed post's subtraction; default), ``"direct"`` (the
            same quantity by stopping gradients at intermediate sites) or ``"total"``
            (uncorrected: double counts paths through intermediate sites).
        compute_edges: False computes node scores only (one backward pass per batch).
        batch_size: prompts per forward pass.
        head_shares: split attention-output features over the layer's heads (through W_O).
        baseline: ``"zero"`` (the seed post's ``f * dm/df``: against the feature switched
            off) or ``"corrupt"`` (Marks et al.'s attribution patching for tasks with
            counterfactual prompts: ``(f - f_corrupt) * dm/df``, upstream activations in
            the edges replaced by their differences likewise); needs baseline tokens.
    """

    top_k: int = 10
    edges: str = "corrected"
    compute_edges: bool = True
    batch_size: int = 8
    head_shares: bool = True
    baseline: str = "zero"

    def __post_init__(self) -> None:
        _check(self.baseline in ("zero", "corrupt"), f"baseline must be 'zero' or 'corrupt', got {self.baseline!r}")
        _check(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        _check(self.edges in EDGE_MODES, f"edges must be one of {', '.join(EDGE_MODES)}, got {self.edges!r}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------- the graph


@dataclass
class GraphNode:
    """One node. ``score``: attribution to the objective (see the module docstring);
    ``activation``: mean over prompts of the summed activation (error: of ``|eps|``);
    ``position``: the position with the largest ``|score|`` contribution."""

    id: str
    site: str
    kind: str  # feature | error | rest | output
    feature: int | None = None
    score: float = 0.0
    activation: float = 0.0
    position: int | None = None
    heads: dict[str, float] | None = None  # attn features: |score| split by what each head writes along the atom
    heads_encoder: dict[str, float] | None = None  # attn features: exact split of the score by encoder input (+ "const")


@dataclass
class AttributionGraph:
    """Nodes, edges (``(src id, dst id) -> weight``) and the accounting per site."""

    sites: list[str]
    nodes: dict[str, GraphNode]
    edges: dict[tuple[str, str], float]
    site_totals: dict[str, dict[str, float]]
    objective: dict[str, Any]
    config: dict[str, Any]
    n_prompts: int
    seq_len: int
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    # per attn site and head: {"kept": sum over kept features of the decoder-side share, "all": over every
    # feature, "kept_encoder" / "all_encoder": sums of |encoder-side share|}
    head_scores: dict[str, dict[str, list[float]]] | None = None

    def kept(self, site: str) -> list[GraphNode]:
        return [n for n in self.nodes.values() if n.site == site and n.kind == "feature"]

    def incoming(self, node: str) -> dict[str, float]:
        return {s: w for (s, d), w in self.edges.items() if d == node}

    def outgoing(self, node: str) -> dict[str, float]:
        return {d: w for (s, d), w in self.edges.items() if s == node}

    def thread(self, *, features_only: bool = True) -> list[str]:
        """The strongest chain into the output: from the output, repeatedly step to the
        upstream node with the largest ``|edge|``; returned upstream first."""
        chain: list[str] = []
        cur = OUTPUT
        while True:
            inc = {s: w for s, w in self.incoming(cur).items()
                   if not features_only or self.nodes[s].kind == "feature"}
            if not inc:
                break
            cur = max(inc, key=lambda s: (abs(inc[s]), s))
            chain.append(cur)
        return chain[::-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "edges": [[s, d, w] for (s, d), w in sorted(self.edges.items(), key=lambda kv: -abs(kv[1]))],
            "site_totals": self.site_totals,
            "objective": self.objective,
            "config": self.config,
            "n_prompts": self.n_prompts,
            "seq_len": self.seq_len,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "seconds": self.seconds,
            "head_scores": self.head_scores,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttributionGraph:
        try:
            nodes = {n["id"]: GraphNode(**n) for n in data["nodes"]}
            edges = {(str(s), str(d)): float(w) for s, d, w in data["edges"]}
            return cls(sites=list(data["sites"]), nodes=nodes, edges=edges, site_totals=data["site_totals"],
                       objective=data["objective"], config=data["config"], n_prompts=int(data["n_prompts"]),
                       seq_len=int(data["seq_len"]), forward_passes=int(data.get("forward_passes", 0)),
                       backward_passes=int(data.get("backward_passes", 0)), seconds=float(data.get("seconds", 0.0)),
                       head_scores=data.get("head_scores"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CircuitscanError(f"not a feature graph file ({type(exc).__name__}: {exc})") from exc


def node_id(site: str, kind: str, feature: int | None = None) -> str:
    return f"{site}/f{feature}" if kind == "feature" else f"{site}/{kind}"
