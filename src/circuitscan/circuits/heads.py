"""The named head-level ground truths as data: each circuit's head classes, where they come
from, and which circuit is a task's default."""

from __future__ import annotations

from ..errors import CircuitscanError
from ..models.toy import PLANTED_HEADS
from ..types import GroundTruth, HeadId


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
