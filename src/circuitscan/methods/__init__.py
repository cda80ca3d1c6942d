"""Circuit-finding methods behind one protocol (:class:`Scorer`) and a registry."""

from __future__ import annotations

from .base import Scorer, get, names, register
from .sae_codes import (
    Discovery,
    SAECodesConfig,
    SAECodesScorer,
    discover_from_activations,
    run_sae_codes,
)

register("sae-codes", SAECodesScorer)

__all__ = [
    "Discovery",
    "SAECodesConfig",
    "SAECodesScorer",
    "Scorer",
    "discover_from_activations",
    "get",
    "names",
    "register",
    "run_sae_codes",
]
