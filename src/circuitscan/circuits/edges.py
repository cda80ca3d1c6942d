"""Edge-level ground truths: the class-level connections a source defines
(:class:`ClassEdge`), expanded to named edges such as ``"L5H5->L9H9"`` (or, with ports,
``"L5H5->L9H9.k"``) by :meth:`EdgeGroundTruth.edges`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CircuitscanError
from ..types import HeadId, HeadLayout
from .heads import _DOC_CLASSES, _GT_CLASSES, _IOI_CLASSES, _IOI_OB_CLASSES, MLP_GROUPS

PORTS = ("q", "k", "v")
INPUT, OUTPUT = "input", "output"


@dataclass(frozen=True)
class ClassEdge:
    """A connection between groups of nodes.

    ``src`` is a head class, an MLP group or ``"input"``; ``dst`` a head class, an MLP group
    or ``"output"``; ``ports`` are the inputs of receiving heads it enters (q, k, v).
    """

    src: str
    dst: str
    ports: tuple[str, ...] = PORTS


@dataclass(frozen=True)
class EdgeGroundTruth:
    """Class-level edges of a ground-truth circuit, expandable to named edges.

    Nodes: ``input`` (the embeddings), heads ``L{l}H{h}``, MLPs ``MLP{l}`` and ``output``
    (the logits), ordered input < attention of layer l < MLP l < attention of layer l + 1
    < ... < output; an edge exists only from an earlier node to a later one.
    """

    name: str
    model: str
    classes: dict[str, tuple[HeadId, ...]]
    class_edges: tuple[ClassEdge, ...]
    mlp_groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_includes_mlps: bool = False  # IOI: "input" means the embeddings and every MLP
    source: str = ""
    notes: str = ""

    def _members(self, group: str, n_layers: int) -> list[tuple[str, float]]:
        if group == INPUT:
            nodes = [(INPUT, -1.0)]
            if self.input_includes_mlps:
                nodes += [(f"MLP{layer}", 2 * layer + 1.0) for layer in range(n_layers)]
            return nodes
        if group == OUTPUT:
            return [(OUTPUT, float("inf"))]
        if group in self.mlp_groups:
            return [(f"MLP{layer}", 2 * layer + 1.0) for layer in self.mlp_groups[group]]
        if group in self.classes:
            return [(h.name, 2.0 * h.layer) for h in self.classes[group]]
        raise KeyError(f"{self.name}: edge end {group!r} is not a class, an MLP group, input or output")

    def full_edges(self, n_layers: int) -> frozenset[tuple[str, str]]:
        """(source node, receiving node[.port]) pairs with MLPs kept."""
        out = set()
        for e in self.class_edges:
            for src, ps in self._members(e.src, n_layers):
                for dst, pd in self._members(e.dst, n_layers):
                    if ps >= pd or src == dst:
                        continue
                    is_head = dst not in (OUTPUT,) and not dst.startswith("MLP")
                    for port in (e.ports if is_head else ("",)):
                        out.add((src, f"{dst}.{port}" if port else dst))
        return frozenset(out)

    def edges(self, n_layers: int = 12, *, ports: bool = False, mlps: bool = False) -> frozenset[str]:
        """Named edges ``"SRC->DST"`` (``"SRC->DST.q"`` with ``ports``).

        Args:
            n_layers: layers of the model (for "input" including every MLP).
            ports: name the receiving head's input (q, k or v).
            mlps: keep MLP nodes; without them, paths through MLPs are contracted to the
                heads (or input/output) at their ends, as a head-level method sees them.
        """
        full = self.full_edges(n_layers)
        if mlps:
            pairs = set(full)
        else:
            succ: dict[str, set[str]] = {}
            for s, d in full:
                succ.setdefault(s, set()).add(d)
            pairs = set()
            for s in succ:
                if s.startswith("MLP"):
                    continue
                stack, seen = list(succ[s]), set()
                while stack:
                    d = stack.pop()
                    if d in seen:
                        continue
                    seen.add(d)
                    if d.startswith("MLP"):
                        stack.extend(succ.get(d, ()))
                    else:
                        pairs.add((s, d))
        if not ports:
            pairs = {(s, d.split(".")[0]) for s, d in pairs}
        return frozenset(f"{s}->{d}" for s, d in pairs)


def _ioi_edges(name: str, classes: dict[str, tuple[HeadId, ...]], source: str) -> EdgeGroundTruth:
    movers = ("name mover", "backup name mover", "negative name mover")
    ce = [
        ClassEdge(INPUT, "previous token"),
        ClassEdge(INPUT, "duplicate token"),
        ClassEdge(INPUT, "s-inhibition", ("q",)),
        *(ClassEdge(INPUT, m, ("k", "v")) for m in movers),
        ClassEdge("previous token", "induction", ("k", "v")),
        ClassEdge("induction", "s-inhibition", ("k", "v")),
        ClassEdge("duplicate token", "s-inhibition", ("k", "v")),
        *(ClassEdge("s-inhibition", m, ("q",)) for m in movers),
        *(ClassEdge(m, OUTPUT, ()) for m in movers),
    ]
    return EdgeGroundTruth(
        name=name, model="gpt2", classes=classes, class_edges=tuple(ce), input_includes_mlps=True,
        source=source,
        notes="class-level connections of ACDC's IOI edge ground truth; 'input' is the embeddings "
        "and every MLP. ACDC's own edge set also keeps MLP-to-head and head-to-MLP edges left over "
        "from its masked graph, which are not class-level and not included here",
    )


def _gt_edges() -> EdgeGroundTruth:
    ce = (
        ClassEdge(INPUT, "0305"),
        ClassEdge(INPUT, "01"),
        ClassEdge(INPUT, "MEARLY", ()),
        ClassEdge("01", "MEARLY", ()),
        ClassEdge("01", "AMID"),
        ClassEdge("0305", "AMID"),
        ClassEdge("MEARLY", "AMID"),
        ClassEdge("AMID", "MLATE", ()),
        ClassEdge("MEARLY", "MEARLY", ()),  # the MLPs of a group feed each other
        ClassEdge("MLATE", "MLATE", ()),
        ClassEdge("AMID", OUTPUT, ()),
        ClassEdge("MLATE", OUTPUT, ()),
    )
    return EdgeGroundTruth(
        name="greater-than/acdc", model="gpt2", classes=_GT_CLASSES, class_edges=ce,
        mlp_groups=MLP_GROUPS["greater-than/acdc"],
        source="Hanna et al. 2023 as encoded by ArthurConmy/Automatic-Circuit-Discovery acdc/greaterthan/utils.py",
        notes="01->MEARLY, 01->AMID, 0305->AMID, MEARLY->AMID, AMID->MLATE, with input -> {0305, 01, "
        "MEARLY} and {AMID, MLATE} -> output. ACDC also links every MLP below an AMID head to its "
        "query and the MLPs below the last AMID layer to each other; contracted to heads (mlps=False) "
        "those add nothing",
    )


def _doc_edges() -> EdgeGroundTruth:
    key2, key1, query, l0, mover = "mover key (layer 2)", "mover key (layer 1)", "mover query", "layer 0", "mover"
    ce = (
        ClassEdge(INPUT, l0, ("v",)),
        ClassEdge(INPUT, query, ("v",)),
        ClassEdge(l0, query, ("v",)),
        ClassEdge(INPUT, key1, ("q", "k")),
        ClassEdge(l0, key1, ("q", "k")),
        ClassEdge(INPUT, key2, ("q", "k")),
        ClassEdge(l0, key2, ("q", "k")),
        ClassEdge(query, key2, ("v",)),
        ClassEdge(query, mover, ("q",)),
        ClassEdge(INPUT, mover, ("v",)),
        ClassEdge(l0, mover, ("v",)),
        ClassEdge(key2, mover, ("k",)),
        ClassEdge(key1, mover, ("k",)),
        ClassEdge(mover, OUTPUT, ()),
    )
    return EdgeGroundTruth(
        name="docstring/acdc", model="attn-only-4l", classes=_DOC_CLASSES, class_edges=ce,
        source="ACDC's manual docstring graph (acdc/docstring/utils.py, get_docstring_subgraph_true_edges)",
        notes="24 edges between nodes; ACDC counts 37 because it adds each head's internal q/k/v edges",
    )


def _edge_registry() -> dict[str, EdgeGroundTruth]:
    acdc = "ArthurConmy/Automatic-Circuit-Discovery"
    return {
        "ioi/acdc": _ioi_edges("ioi/acdc", _IOI_CLASSES, f"Wang et al. 2022 as encoded by {acdc} acdc/ioi/utils.py"),
        "ioi/oneill-bui": _ioi_edges("ioi/oneill-bui", _IOI_OB_CLASSES, "ioi/acdc's class edges over O'Neill & Bui's heads"),
        "greater-than/acdc": _gt_edges(),
        "docstring/acdc": _doc_edges(),
    }


def edge_names() -> list[str]:
    """Ground truths that have an edge-level version."""
    return list(_edge_registry())


def edge_ground_truth(name: str) -> EdgeGroundTruth:
    reg = _edge_registry()
    if name not in reg:
        raise CircuitscanError(f"no edge-level ground truth {name!r}; known: {', '.join(reg)}")
    return reg[name]


def true_edges(name: str, layout: HeadLayout, family: str, *, ports: bool = False, mlps: bool = False) -> frozenset[str]:
    """The named true edges of ground truth ``name`` for a model of ``family`` (checked)."""
    egt = edge_ground_truth(name)
    if egt.model != family:
        raise CircuitscanError(
            f"edge ground truth {name!r} belongs to model family {egt.model!r}, but the model is {family!r}"
        )
    for heads in egt.classes.values():
        for h in heads:
            layout.index(h)
    return egt.edges(layout.n_layers, ports=ports, mlps=mlps)
