"""The one reader of a run directory (docs/RUN_DIRECTORY.md).

Every run kind that has per-head scores (``discover``, ``compare`` and ``features graph``)
is read here, validated once, and handed on as plain JSON: ``report`` turns it into numpy
arrays, ``evaluate`` into :class:`~circuitscan.types.Scores`, ``export`` into other tools'
formats. Writing lives in :mod:`circuitscan.rundir` (the file names are defined there); the blocks
every kind's config.json shares (:func:`config_header`, :func:`task_block`,
:func:`ground_truth_block`) are built here, next to the reader that expects them.

Method entries come back with their scores in the layout's flat order (L0H0, L0H1, ...),
whatever order the file listed them in, so no reader has to reorder them again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import CircuitscanError
from .integrity import prompts_sha256
from .rundir import CONFIG, MARKER, METRICS, SCORES, read_json, read_run_json
from .types import HeadLayout

#: the ``command`` of config.json for each run kind this reader knows
RUN_KINDS = ("discover", "compare", "features graph")
SWEEP_JSON = "sweep.json"


class OlderRunError(CircuitscanError):
    """A run directory whose files lack what this version of circuitscan reads."""


@dataclass(frozen=True)
class RunFiles:
    """The JSON files of one run directory, checked.

    Attributes:
        path: the run directory.
        kind: the command that wrote it (one of :data:`RUN_KINDS`).
        version: the circuitscan version that wrote it (None when the files do not say).
        config: config.json.
        scores: scores.json, each method's ``heads`` and ``scores`` in flat head order.
        metrics: metrics.json ({} when the run has none).
        layout: the model's heads, from scores.json.
    """

    path: Path
    kind: str
    version: str | None
    config: dict[str, Any]
    scores: dict[str, Any]
    metrics: dict[str, Any]
    layout: HeadLayout

    @property
    def methods(self) -> dict[str, dict[str, Any]]:
        """{method name: its scores.json entry} (scores in flat head order)."""
        return self.scores["methods"]

    @property
    def has_task(self) -> bool:
        """True when the run was made from a task's prompts (so ``evaluate`` can rebuild them)."""
        return isinstance(self.config.get("task"), Mapping)


def read_run(run_dir: str | Path) -> RunFiles:
    """Read and check the run directory ``run_dir``.

    Raises:
        CircuitscanError: it does not exist, is a sweep directory, or a file is missing or
            malformed (the message names the file and what is wrong).
        OlderRunError: it was written by a version of circuitscan whose files this one
            cannot read (the message says so, and which version wrote it).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise CircuitscanError(f"run directory {str(path)!r} does not exist (give a directory written by "
                               "`circuitscan discover`, `compare` or `features graph`)")
    if (path / SWEEP_JSON).is_file():
        raise CircuitscanError(f"{str(path)!r} is a sweep directory, not a run: `circuitscan report` draws "
                               "its page; evaluate one of its runs instead")
    for required in (CONFIG, SCORES):
        if not (path / required).is_file():
            raise CircuitscanError(f"{str(path)!r} is not a circuitscan run directory: it has no {required}")
    config = _object(read_json(path / CONFIG), path / CONFIG)
    scores = _object(read_run_json(path, SCORES), path / SCORES)
    metrics = _object(read_run_json(path, METRICS), path / METRICS) if (path / METRICS).is_file() else {}
    version = _version(path, config)
    kind = _kind(path, config, version)
    layout = _layout(scores, path / SCORES, version)
    entries = scores.get("methods")
    if not isinstance(entries, Mapping) or not entries:
        raise CircuitscanError(f"{str(path / SCORES)!r} lists no methods; is the run finished?")
    methods = {str(k): _method(str(k), v, layout, path / SCORES) for k, v in entries.items()}
    return RunFiles(path=path, kind=kind, version=version, config=config,
                    scores={**scores, "methods": methods}, metrics=metrics, layout=layout)


def _object(data: Any, where: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CircuitscanError(f"{str(where)!r} must hold a JSON object, not {type(data).__name__}; "
                               "is this a circuitscan run directory?")
    return data


def _version(path: Path, config: Mapping[str, Any]) -> str | None:
    version = config.get("circuitscan_version")
    if version is None and (path / MARKER).is_file():
        marker = read_json(path / MARKER)
        version = marker.get("circuitscan_version") if isinstance(marker, dict) else None
    return str(version) if version is not None else None


def _older(version: str | None) -> str:
    by = f"circuitscan {version}" if version else "an older circuitscan (its files name no version)"
    return f"written by {by}, whose run directories this version cannot read; re-run it with this version"


def _kind(path: Path, config: Mapping[str, Any], version: str | None) -> str:
    kind = config.get("command")
    if kind is None:
        raise OlderRunError(f"{str(path / CONFIG)!r} does not say which command wrote it: {_older(version)}")
    if kind not in RUN_KINDS:
        raise CircuitscanError(f"{str(path / CONFIG)!r}: a run of {kind!r} is not one this version reads "
                               f"(it reads {', '.join(RUN_KINDS)})")
    return str(kind)


def _layout(scores: Mapping[str, Any], where: Path, version: str | None) -> HeadLayout:
    lay = scores.get("layout")
    if lay is None:
        raise OlderRunError(f"{str(where)!r} has no 'layout': {_older(version)}")
    try:
        layout = HeadLayout(int(lay["n_layers"]), int(lay["n_heads"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CircuitscanError(f"{str(where)!r} has no valid 'layout' {{n_layers, n_heads}} (found {lay!r})") from exc
    if layout.n_layers < 1 or layout.n_heads < 1:
        raise CircuitscanError(f"{str(where)!r}: 'layout' must have at least one layer and head, found {lay!r}")
    return layout


def _method(name: str, entry: Any, layout: HeadLayout, where: Path) -> dict[str, Any]:
    """One method's entry with ``heads`` and ``scores`` (and per-head lists) in flat order."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("scores"), list):
        raise CircuitscanError(f"{str(where)!r}: method {name!r} has no 'scores' list")
    n = layout.n_total
    if len(entry["scores"]) != n:
        raise CircuitscanError(f"{str(where)!r}: method {name!r} has {len(entry['scores'])} scores but the layout "
                               f"has {n} heads ({layout.n_layers} layers x {layout.n_heads}); was the run made "
                               "with another model?")
    heads = entry.get("heads")
    flat = layout.names()
    if heads is None or heads == flat:
        return {**entry, "heads": flat}
    if not isinstance(heads, list) or len(heads) != n or sorted(map(str, heads)) != sorted(flat):
        raise CircuitscanError(f"{str(where)!r}: method {name!r}: 'heads' must name each of the {n} heads of "
                               f"the layout once (L0H0 ... L{layout.n_layers - 1}H{layout.n_heads - 1})")
    order = [layout.index(str(h)) for h in heads]
    out = dict(entry)
    for key, value in entry.items():
        if isinstance(value, list) and len(value) == n and key != "heads":
            placed: list[Any] = [math.nan] * n
            for i, v in zip(order, value, strict=True):
                placed[i] = v
            out[key] = placed
    pairs = entry.get("pairs")
    matrix = pairs.get("matrix") if isinstance(pairs, Mapping) else None
    if isinstance(matrix, list) and len(matrix) == n and all(isinstance(r, list) and len(r) == n for r in matrix):
        where = {o: i for i, o in enumerate(order)}  # flat index -> the file's position
        out["pairs"] = {**pairs, "matrix": [[matrix[where[a]][where[b]] for b in range(n)] for a in range(n)]}
    out["heads"] = flat
    return out


# ---------------------------------------------------------------------------- config.json blocks
# every run kind writes these the same way, so the reader above (and evaluate's prompt check)
# finds the same keys whichever command wrote the run


def config_header(kind: str, model: Any) -> dict[str, Any]:
    """The first keys of every config.json: version, the command (a :data:`RUN_KINDS` entry), the model."""
    if kind not in RUN_KINDS:
        raise CircuitscanError(f"unknown run kind {kind!r}; known: {', '.join(RUN_KINDS)}")
    return {"circuitscan_version": __version__, "command": kind, "model": model.describe()}


def task_block(prompts: Any, **extra: Any) -> dict[str, Any]:
    """config.json's ``task``: name, prompt counts, the task's scalar metadata and the prompts' hash."""
    return {"name": prompts.task, "n_positive": prompts.n_positive, "n_negative": prompts.n_negative,
            "seq_len": prompts.seq_len,
            **{k: v for k, v in prompts.metadata.items() if isinstance(v, int | float | str | bool)},
            "prompts_sha256": prompts_sha256(prompts), **extra}


def ground_truth_block(gt: Any) -> dict[str, Any] | None:
    """config.json's ``ground_truth`` (None without one): name, model, heads and head classes."""
    if gt is None:
        return None
    return {"name": gt.name, "model": gt.model, "heads": sorted(h.name for h in gt.heads),
            "classes": {k: [h.name for h in v] for k, v in gt.classes.items()}}
