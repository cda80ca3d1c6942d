"""Ground truths named from outside :mod:`circuitscan.circuits` (testbeds, plugins).

:func:`circuitscan.circuits.resolve` asks every registered source for a spec before its
own names, files and head lists, and :func:`circuitscan.circuits.default_for` asks them
for the default of a task that has no hand-made circuit, so a higher layer such as
:mod:`circuitscan.testbeds` adds ground truths without ``circuits`` ever importing it.
``circuitscan/__init__.py`` imports the testbeds once, which registers theirs.

Ground-truth JSON files of another format (EAP-IG / MIB graphs, read by
:mod:`circuitscan.evaluation.eap_read`) are read by the registered file readers;
``circuitscan/__init__.py`` registers the graph reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import GroundTruth, HeadLayout

#: ``fn(spec, layout, family, model)``: the ground truth ``spec`` names, or None when it names none of this source's
Resolver = Callable[[str, "HeadLayout", str, "ModelHandle | None"], "GroundTruth | None"]
#: ``fn(task, family, model)``: the ground truth ``task`` uses on this model without ``--ground-truth``, or None
Default = Callable[[str, str, "ModelHandle | None"], "GroundTruth | None"]

#: ``fn(data, spec, layout, family, model)``: the ground truth of parsed JSON ``data`` read from file ``spec``,
#: or None when the data is not of this reader's format
FileReader = Callable[[object, str, "HeadLayout", str, "ModelHandle | None"], "GroundTruth | None"]

_SOURCES: dict[str, tuple[Resolver, Default | None]] = {}
_FILE_READERS: dict[str, FileReader] = {}


def register_source(name: str, resolve: Resolver, default: Default | None = None) -> None:
    """Add the ground-truth source ``name``; registering a name again replaces it (idempotent re-imports)."""
    _SOURCES[name] = (resolve, default)


def resolve_registered(spec: str, layout: HeadLayout, family: str, model: ModelHandle | None) -> GroundTruth | None:
    """The ground truth a registered source finds for ``spec`` (the first, in registration order), or None."""
    for resolve, _ in _SOURCES.values():
        gt = resolve(spec, layout, family, model)
        if gt is not None:
            return gt
    return None


def default_registered(task: str, family: str, model: ModelHandle | None) -> GroundTruth | None:
    """The default ground truth a registered source gives ``task`` on this model, or None."""
    for _, default in _SOURCES.values():
        gt = default(task, family, model) if default is not None else None
        if gt is not None:
            return gt
    return None


def register_file_reader(name: str, read: FileReader) -> None:
    """Add the ground-truth file format ``name``; registering a name again replaces it."""
    _FILE_READERS[name] = read


def read_registered_file(data: object, spec: str, layout: HeadLayout, family: str,
                         model: ModelHandle | None) -> GroundTruth | None:
    """The ground truth a registered reader finds in a file's parsed JSON (the first), or None."""
    for read in _FILE_READERS.values():
        gt = read(data, spec, layout, family, model)
        if gt is not None:
            return gt
    return None
