"""Named ground-truth circuits (GROUND_TRUTH.md), tied to the model family they belong to.

Names: ``ioi/acdc`` (default for IOI), ``ioi/oneill-bui``, ``greater-than/acdc``,
``docstring/acdc``, ``docstring/oneill-bui``, and ``planted`` for the toy model.
"""

from __future__ import annotations

import json
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
_DOC_CLASSES = {"docstring": _h((0, 5), (1, 2), (1, 4), (2, 0), (3, 0), (3, 6))}
_DOC_OB_CLASSES = {"docstring": _h((0, 5), (1, 0), (1, 4), (2, 0), (3, 0), (3, 6))}


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
            notes="also MLPs 0-3 (MEARLY) and 8-11 (MLATE), which a head-level method cannot find",
        ),
        "docstring/acdc": _gt(
            "docstring/acdc", "attn-only-4l", _DOC_CLASSES, f"Heimersheim & Janiak 2023 as encoded by {acdc}"
        ),
        "docstring/oneill-bui": _gt(
            "docstring/oneill-bui", "attn-only-4l", _DOC_OB_CLASSES, "O'Neill & Bui's code: (1,0) for (1,2)"
        ),
        "planted": _gt("planted", "toy-planted", {"planted": PLANTED_HEADS}, "circuitscan.models.toy (set by hand)"),
    }


DEFAULT_FOR_TASK = {"ioi": "ioi/acdc", "greater-than": "greater-than/acdc", "docstring": "docstring/acdc", "planted": "planted"}


def names() -> list[str]:
    return list(_registry())


def get(name: str) -> GroundTruth:
    reg = _registry()
    if name not in reg:
        raise CircuitscanError(f"unknown ground truth {name!r}; known: {', '.join(reg)}")
    return reg[name]


def default_for(task: str, family: str) -> GroundTruth | None:
    """The canonical circuit for ``task`` if one exists for this model family."""
    name = DEFAULT_FOR_TASK.get(task)
    if name is None:
        return None
    gt = get(name)
    return gt if gt.model == family else None


def resolve(spec: str, layout: HeadLayout, family: str) -> GroundTruth:
    """A registry name, a JSON file (list of heads or {"heads": [...]}), or ``L9H6,L9H9,...``.

    A registry circuit used with a model of another family is an error: its head indices
    mean nothing there.
    """
    spec = spec.strip()
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
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CircuitscanError(f"ground-truth file {spec!r} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise CircuitscanError(f"ground-truth file {spec!r} is not valid JSON: {exc}") from exc
        heads = data.get("heads") if isinstance(data, dict) else data
        if not isinstance(heads, list):
            raise CircuitscanError(
                f"ground-truth file {spec!r} must hold a list of heads or {{\"heads\": [...]}}, "
                'e.g. ["L9H6", "L9H9"] or [[9, 6], [9, 9]]'
            )
        gt = GroundTruth.from_heads([h if isinstance(h, str) else tuple(h) for h in heads], name=path.name, model=family)
    else:
        parts = [p for p in spec.replace(";", ",").split(",") if p.strip()]
        # "9,6" style pairs would be ambiguous in a comma list: accept only L#H# here
        gt = GroundTruth.from_heads(parts, name="user", model=family)
    gt.check_layout(layout)
    return gt
