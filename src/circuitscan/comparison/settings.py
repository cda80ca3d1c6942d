"""What every method shares in one comparison: the method list, the shared settings and
each method's config built from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import methods
from ..errors import CircuitscanError
from ..features import heads  # noqa: F401  (registers feature-attribution)


def method_registry():
    """:mod:`circuitscan.methods` with every method registered.

    ``methods`` registers its own; ``feature-attribution`` lives in
    :mod:`circuitscan.features.heads`, which registers itself when imported (``methods``
    never imports the higher ``features`` layer), so the pipelines ask for the registry here.
    """
    return methods


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"sae-codes,eap"`` or a list -> checked method names (``all`` = every method in ``--methods all``).

    Valid names are the registry's (:func:`circuitscan.methods.names`).
    """
    registry = method_registry()
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if items == ["all"]:
        return registry.all_names()
    known = registry.names()
    unknown = [m for m in items if m not in known]
    if unknown or not items:
        raise CircuitscanError(
            f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid: {', '.join(known)} (or 'all')"
        )
    if len(set(items)) != len(items):
        raise CircuitscanError(f"methods are listed twice: {items}")
    return items


@dataclass(frozen=True)
class CompareSettings:
    """What every baseline shares in one comparison (matched metric, ablation, prompts).

    Attributes:
        metric: None = the task's own metric.
        ablation: corrupt | mean | zero.
        n_examples: positive prompts (with their corrupted partners) the intervention
            and gradient methods use; None = all. ``sae-codes`` and ``norm-diff`` always
            see every prompt of the set (that is their input).
        batch_size: prompts per forward pass.
        max_seconds: time limit of each slow method (acdc, acdc-edge, sp); None = none.
        acdc_thresholds: absolute thresholds for ACDC (None = its relative default grid).
        sp_steps: SP's and edge pruning's optimiser steps.
        eap_ig_steps: EAP-IG path points.
    """

    metric: str | None = None
    ablation: str = "corrupt"
    n_examples: int | None = None
    batch_size: int = 32
    max_seconds: float | None = None
    acdc_thresholds: tuple[float, ...] | None = None
    sp_steps: int = 200
    eap_ig_steps: int = 5
    progress: bool | None = None


def method_configs(settings: CompareSettings, methods: Sequence[str]) -> dict[str, Any]:
    """Each method's config built from the shared settings (:meth:`MethodSpec.config_from`)."""
    spec = method_registry().spec
    return {m: spec(m).config_from(settings) for m in methods}
