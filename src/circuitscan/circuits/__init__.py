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
from pathlib import Path

from ..errors import CircuitscanError
from ..types import GroundTruth, HeadId, HeadLayout
from .edges import (
    INPUT,
    OUTPUT,
    PORTS,
    ClassEdge,
    EdgeGroundTruth,
    edge_ground_truth,
    edge_names,
    true_edges,
)
from .heads import DEFAULT_FOR_TASK, MLP_GROUPS, _registry, get, names
from .registry import (
    default_registered,
    read_registered_file,
    register_file_reader,
    register_source,
    resolve_registered,
)


def default_for(task: str, family: str, *, model=None) -> GroundTruth | None:
    """The canonical circuit for ``task`` if one exists for this model family.

    Other tasks ask the registered sources (:mod:`.registry`): the testbeds give tracr,
    toy-induction, and induction heads measured on ``model`` when it is given
    (:mod:`circuitscan.testbeds.references`).
    """
    name = DEFAULT_FOR_TASK.get(task)
    if name is None:
        return default_registered(task, family, model)
    gt = get(name)
    return gt if gt.model == family else None


def resolve(spec: str, layout: HeadLayout, family: str, *, model=None) -> GroundTruth:
    """A registry name, a JSON file (list of heads, {"heads": [...]} or an EAP-IG / MIB graph), or ``L9H6,L9H9,...``.

    A registry circuit used with a model of another family is an error: its head indices
    mean nothing there. Testbed names (``tracr-reverse``, ``toy-induction``,
    ``induction-scores``, which measures ``model``) resolve through the sources registered
    in :mod:`.registry` (:mod:`circuitscan.testbeds.references`), asked first.
    """
    spec = spec.strip()
    testbed = resolve_registered(spec, layout, family, model)
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
        graph_truth = read_registered_file(data, spec, layout, family, model)  # EAP-IG / MIB graph JSON
        if graph_truth is not None:
            return graph_truth
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


__all__ = ["DEFAULT_FOR_TASK", "INPUT", "MLP_GROUPS", "OUTPUT", "PORTS", "ClassEdge", "EdgeGroundTruth", "default_for",
           "edge_ground_truth", "edge_names", "for_model", "get", "names", "register_file_reader", "register_source", "resolve",
           "true_edges"]
