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

# baselines (docs/METHODS.md): each module's Scorer; configs are the modules' *Config classes
from .acdc import ACDCConfig, ACDCEdgeScorer, ACDCScorer  # noqa: E402
from .eap import EAPConfig, EAPScorer  # noqa: E402
from .eap_ig import EAPIGConfig, EAPIGScorer  # noqa: E402
from .edge_pruning import EdgePruningConfig, EdgePruningScorer  # noqa: E402
from .hisp import HISPConfig, HISPScorer  # noqa: E402
from .norm_diff import NormDiffConfig, NormDiffScorer  # noqa: E402
from .patching import PatchingConfig, PatchingScorer  # noqa: E402
from .sp import SPConfig, SPScorer  # noqa: E402

for _scorer in (EAPScorer, EAPIGScorer, PatchingScorer, ACDCScorer, ACDCEdgeScorer, HISPScorer, SPScorer,
                NormDiffScorer, EdgePruningScorer):
    register(_scorer.name, _scorer)

# feature-level circuits (docs/FEATURES.md): the attribution graph's head-level view; needs sublayer SAEs
from ..features.heads import FeatureAttributionScorer  # noqa: E402

register(FeatureAttributionScorer.name, FeatureAttributionScorer)

__all__ = [
    "ACDCConfig",
    "EAPConfig",
    "EAPIGConfig",
    "EdgePruningConfig",
    "HISPConfig",
    "NormDiffConfig",
    "PatchingConfig",
    "SPConfig",
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
