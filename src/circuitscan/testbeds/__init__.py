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

Importing this package registers the ``tracr`` task; loading a tracr model registers
the ``tracr_error`` metric. Nothing heavy is imported until a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelLoadError

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
        from .induction import load_induction_model

        return load_induction_model(device=device)
    if key.startswith("tracr-"):
        from .tracr import load_tracr, register_metric

        register_metric()
        return load_tracr(key, device=device)
    raise ModelLoadError(f"unknown testbed {spec!r}; known: {', '.join(TESTBEDS)}")


def register_task() -> None:
    """Register the ``tracr`` task with :mod:`circuitscan.tasks` (idempotent)."""
    from .. import tasks
    from .tracr import build_tracr_task

    if "tracr" not in tasks.TASKS:
        tasks.register(
            "tracr",
            build_tracr_task,
            "inputs of a tracr-compiled program (tracr-* models only); negatives: one token repeated "
            "(constant) or fresh random inputs (random, a null control)",
        )


register_task()

__all__ = ["TESTBEDS", "is_testbed", "load_testbed", "register_task"]
