"""Named ground-truth circuits (GROUND_TRUTH.md), tied to the model family they belong to.

Names: ``ioi/acdc`` (default for IOI), ``ioi/oneill-bui``, ``greater-than/acdc``,
``docstring/acdc``, ``docstring/oneill-bui``, and ``planted`` for the toy model.

Head level: :func:`get` gives a :class:`~circuitscan.types.GroundTruth` (heads and head
classes). Edge level: :func:`edge_ground_truth` gives an :class:`EdgeGroundTruth`, the
class-level connections the sources define (IOI and greater-than, after ACDC; docstring,
after ACDC's manual graph), which :meth:`EdgeGroundTruth.edges` expands to named edges
such as ``"L5H5->L9H9"`` or, with ports, ``"L5H5->L9H9.k"``. Using a circuit with a
model of another family is an error (:func:`resolve`, :func:`true_edges`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CircuitscanError
from ..types import GroundTruth, HeadId, HeadLayout


def _h(*pairs: tuple[int, int]) -> tuple[HeadId, ...]:
    return tuple(HeadId(*p) for p in pairs)


_IOI_CLASSES = {
    "name mover": _h((9, 9), (10, 0), (9, 6)),
    "backup name mover": _h((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "negative name mover": _h((10, 7), (11, 10)),
    "s-inhibition": _h((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": _h((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": _h((0, 1), (0, 10), (3, 0)),
    "previous token": _h((2, 2), (4, 11)),
}
_IOI_OB_CLASSES = {
    k: tuple(HeadId(11, 3) if h == HeadId(9, 0) else h for h in v) for k, v in _IOI_CLASSES.items()
}
_GT_CLASSES = {
    "0305": _h((0, 3), (0, 5)),
    "01": _h((0, 1),),
    "AMID": _h((5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)),
}
# Docstring head classes follow the wiring of ACDC's manual graph (which input of which head
# each one feeds, see _DOC_EDGES); the names are circuitscan's, not the source's.
_DOC_CLASSES = {
    "mover": _h((3, 0), (3, 6)),
    "mover key (layer 2)": _h((2, 0),),
    "mover key (layer 1)": _h((1, 2),),
    "mover query": _h((1, 4),),
    "layer 0": _h((0, 5),),
}
_DOC_OB_CLASSES = {**_DOC_CLASSES, "mover key (layer 1)": _h((1, 0),)}
MLP_GROUPS = {"greater-than/acdc": {"MEARLY": (0, 1, 2, 3), "MLATE": (8, 9, 10, 11)}}


def _gt(name: str, model: str, classes: dict[str, tuple[HeadId, ...]], source: str, notes: str = "") -> GroundTruth:
    heads = frozenset(h for hs in classes.values() for h in hs)
    return GroundTruth(name=name, model=model, heads=heads, classes=classes, source=source, notes=notes)


def _registry() -> dict[str, GroundTruth]:
    from ..models.toy import PLANTED_HEADS

    acdc = "ArthurConmy/Automatic-Circuit-Discovery"
    return {
        "ioi/acdc": _gt("ioi/acdc", "gpt2", _IOI_CLASSES, f"Wang et al. 2022 as encoded by {acdc} acdc/ioi/utils.py"),
        "ioi/oneill-bui": _gt(
            "ioi/oneill-bui", "gpt2", _IOI_OB_CLASSES, "O'Neill & Bui's code: ioi/acdc with (11,3) for (9,0)"
        ),
        "greater-than/acdc": _gt(
            "greater-than/acdc",
            "gpt2",
            _GT_CLASSES,
            f"Hanna et al. 2023 as encoded by {acdc} acdc/greaterthan/utils.py",
            notes="also MLPs 0-3 (MEARLY) and 8-11 (MLATE), which a head-level method cannot find "
            "(circuitscan.circuits.MLP_GROUPS)",
        ),
        "docstring/acdc": _gt(
            "docstring/acdc", "attn-only-4l", _DOC_CLASSES, f"Heimersheim & Janiak 2023 as encoded by {acdc}"
        ),
        "docstring/oneill-bui": _gt(
            "docstring/oneill-bui", "attn-only-4l", _DOC_OB_CLASSES, "O'Neill & Bui's code: (1,0) for (1,2)"
        ),
        "planted": _gt("planted", "toy-planted", {"planted": PLANTED_HEADS}, "circuitscan.models.toy (set by hand)"),
    }


DEFAULT_FOR_TASK = {
    "ioi": "ioi/acdc",
    "ioi-acdc": "ioi/acdc",
    "greater-than": "greater-than/acdc",
    "docstring": "docstring/acdc",
    "planted": "planted",
}


def names() -> list[str]:
    return list(_registry())


def get(name: str) -> GroundTruth:
    reg = _registry()
    if name not in reg:
        raise CircuitscanError(f"unknown ground truth {name!r}; known: {', '.join(reg)}")
    return reg[name]


def default_for(task: str, family: str, *, model=None) -> GroundTruth | None:
    """The canonical circuit for ``task`` if one exists for this model family.

    Testbed circuits (tracr, toy-induction, and induction heads measured on ``model``
    when it is given) come from :mod:`circuitscan.testbeds.references`.
    """
    name = DEFAULT_FOR_TASK.get(task)
    if name is None:
        from ..testbeds.references import default as testbed_default

        return testbed_default(task, family, model)
    gt = get(name)
    return gt if gt.model == family else None


def resolve(spec: str, layout: HeadLayout, family: str, *, model=None) -> GroundTruth:
    """A registry name, a JSON file (list of heads, {"heads": [...]} or an EAP-IG / MIB graph), or ``L9H6,L9H9,...``.

    A registry circuit used with a model of another family is an error: its head indices
    mean nothing there. Testbed names (``tracr-reverse``, ``toy-induction``,
    ``induction-scores``, which measures ``model``) resolve through
    :mod:`circuitscan.testbeds.references`.
    """
    from ..testbeds.references import resolve as testbed_resolve

    spec = spec.strip()
    testbed = testbed_resolve(spec, layout, family, model)
    if testbed is not None:
        testbed.check_layout(layout)
        return testbed
    if spec in _registry():
        gt = get(spec)
        if gt.model != family:
            raise CircuitscanError(
                f"ground truth {spec!r} belongs to model family {gt.model!r}, but the model is "
                f"{family!r}; pass the heads yourself (--ground-truth L1H2,...) to compare anyway"
            )
    elif spec.endswith(".json") or Path(spec).is_file():
        path = Path(spec)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CircuitscanError(f"ground-truth file {spec!r} does not exist") from exc
        except IsADirectoryError as exc:
            raise CircuitscanError(f"ground-truth file {spec!r} is a directory, not a JSON file") from exc
        except UnicodeDecodeError as exc:
            raise CircuitscanError(f"ground-truth file {spec!r} is not UTF-8 text ({exc.reason} at byte "
                                   f"{exc.start})") from None
        except json.JSONDecodeError as exc:
            raise CircuitscanError(f"ground-truth file {spec!r} is not valid JSON: {exc}") from exc
        except OSError as exc:
            raise CircuitscanError(f"cannot read ground-truth file {spec!r}: {exc.strerror or exc}") from exc
        from ..interop.eap_graph import ground_truth_from_graph, is_graph_json

        if is_graph_json(data):  # EAP-IG / MIB graph JSON: its in_graph heads
            return ground_truth_from_graph(data, spec, layout, family, model)
        gt = GroundTruth.from_heads(_json_heads(data, spec), name=path.name, model=family)
    else:
        parts = [p for p in spec.replace(";", ",").split(",") if p.strip()]
        if len(parts) == 1 and not _looks_like_head(parts[0]):
            raise CircuitscanError(
                f"unknown ground truth {spec!r}: give a registry name ({', '.join(names())}), heads like "
                "L9H6,L9H9, or a JSON file of heads"
            )
        # "9,6" style pairs would be ambiguous in a comma list: accept only L#H# here
        gt = GroundTruth.from_heads(parts, name="user", model=family)
    gt.check_layout(layout)
    return gt


def _looks_like_head(text: str) -> bool:
    try:
        HeadId.parse(text.strip())
    except CircuitscanError:
        return False
    return True


def _json_heads(data: object, spec: str) -> list[str | tuple[int, int]]:
    """The heads of a ground-truth JSON file, every entry checked (``"L9H6"`` or ``[9, 6]``)."""
    example = 'e.g. ["L9H6", "L9H9"] or [[9, 6], [9, 9]]'
    heads = data.get("heads") if isinstance(data, dict) else data
    if not isinstance(heads, list):
        raise CircuitscanError(f"ground-truth file {spec!r} must hold a list of heads or {{\"heads\": [...]}}, "
                               f"{example}")
    out: list[str | tuple[int, int]] = []
    for i, h in enumerate(heads):
        if isinstance(h, str):
            out.append(h)
        elif (isinstance(h, list) and len(h) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in h)):
            out.append((h[0], h[1]))
        else:
            raise CircuitscanError(f"ground-truth file {spec!r}: entry {i} ({json.dumps(h)[:60]}) is not a head; "
                                   f"write each as \"L<layer>H<head>\" or [layer, head], {example}")
    return out


def for_model(spec: str | None, model, task: str | None = None) -> GroundTruth | None:
    """The ground truth of ``--ground-truth SPEC`` for a loaded model, as every command resolves it.

    Args:
        spec: what :func:`resolve` takes, or None.
        model: the loaded :class:`~circuitscan.models.handle.ModelHandle`; names that
            measure the model (``induction-scores``) measure this one.
        task: without ``spec``, the task whose canonical circuit for this model to use
            (:func:`default_for`); None = no default.

    Returns:
        The ground truth, or None when no spec is given and the task has no default here.
    """
    if spec:
        return resolve(spec, model.layout, model.family, model=model)
    if task is None:
        return None
    return default_for(task, model.family, model=model)


# --------------------------------------------------------------------------- edges

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
