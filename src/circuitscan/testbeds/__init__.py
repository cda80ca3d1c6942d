"""Known-answer testbeds: models whose circuit is known by construction or by measurement.

==================  ===============================================================
spec                what it is
==================  ===============================================================
``tracr-reverse``   tracr-compiled RASP programs (:mod:`.tracr`, Appendix G of the
``tracr-frac_prev`` paper), converted to TL-native bridges; ground truth: the heads
``tracr-sort``      with non-zero weights. Task ``tracr`` (input-level negatives);
``tracr-sort_freq`` :func:`.tracr.appendix_g_discover` for the paper's
                    activation-level negatives.
``toy-induction``   a 2-layer x 8-head attention-only model trained here on repeated
                    random segments (:mod:`.induction`, Appendix H); ground truth: its
                    induction and previous-token heads by score.
==================  ===============================================================

Any model: :func:`.head_scores.head_scores` measures every head's induction and
previous-token score, and ``--ground-truth induction-scores`` turns them into a
reference circuit (:mod:`.references`).

Importing this package registers the ``tracr`` task, the testbed models (with
:mod:`circuitscan.models.registry`) and their ground truths (with
:mod:`circuitscan.circuits.registry`); loading a tracr model registers
the ``tracr_error`` metric. Nothing heavy is imported until a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import tasks
from ..circuits.registry import register_source
from ..errors import ModelLoadError
from ..models.registry import register_loader
from . import references
from .induction import load_induction_model
from .tracr import build_tracr_task, load_tracr, register_metric

if TYPE_CHECKING:
    from ..models.handle import ModelHandle

#: the testbed specs (described in ``circuitscan models`` and docs/TESTBEDS.md)
TESTBEDS: tuple[str, ...] = (
    "tracr-reverse",
    "tracr-frac_prev",
    "tracr-sort",
    "tracr-sort_freq",
    "toy-induction",
)


def is_testbed(spec: str) -> bool:
    key = spec.strip().lower()
    return key == "toy-induction" or key.startswith("tracr-")


def load_testbed(spec: str, *, device: str = "cpu") -> ModelHandle:
    """Load a testbed by spec (see the table above)."""
    key = spec.strip().lower()
    register_task()
    if key == "toy-induction":
        return load_induction_model(device=device)
    if key.startswith("tracr-"):
        register_metric()
        return load_tracr(key, device=device)
    raise ModelLoadError(f"unknown testbed {spec!r}; known: {', '.join(TESTBEDS)}")


def register_task() -> None:
    """Register the ``tracr`` task with :mod:`circuitscan.tasks` (idempotent)."""

    if "tracr" not in tasks.TASKS:
        tasks.register(
            "tracr",
            build_tracr_task,
            "inputs of a tracr-compiled program (tracr-* models only); negatives: one token repeated "
            "(constant) or fresh random inputs (random, a null control)",
        )


#: one line each for ``circuitscan models`` (docs/TESTBEDS.md)
DESCRIPTIONS: dict[str, str] = {
    "tracr-reverse": "tracr-compiled 'reverse' (4 x 1 heads, 2 with weights); compiled once with the tracr extra",
    "tracr-frac_prev": "tracr-compiled 'fraction of previous x' (2 x 1, numerical output); tracr extra, once",
    "tracr-sort": "tracr-compiled 'sort' (3 x 1, 2 heads with weights); compiled once with the tracr extra",
    "tracr-sort_freq": "tracr-compiled 'sort by frequency' (5 x 1, 3 with weights); tracr extra, once",
    "toy-induction": "2 x 8 attention-only model trained here to do induction (about a minute, once; cached)",
}

register_task()
register_loader("tracr-", load_testbed, prefix=True,
                descriptions={k: v for k, v in DESCRIPTIONS.items() if k.startswith("tracr-")})
register_loader("toy-induction", load_testbed, descriptions={"toy-induction": DESCRIPTIONS["toy-induction"]})
register_source("testbeds", references.resolve, references.default)

__all__ = ["TESTBEDS", "is_testbed", "load_testbed", "register_task"]
