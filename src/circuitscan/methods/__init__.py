"""Circuit-finding methods behind one contract (:class:`Scorer` + :class:`MethodSpec`) and a registry.

Adding a method: write ``methods/NAME.py`` with a config dataclass, a Scorer and a
``SPEC = MethodSpec(...)``, and add one ``register(...)`` line below. ``compare``, its
table, the report and the CLI's method lists read the registry and nothing else.

A method of a higher layer registers itself when imported (``feature-attribution``, the
attribution graph's head-level view, in :mod:`circuitscan.features.heads`; it needs
sublayer SAEs); the pipelines take the registry from
:func:`circuitscan.comparison.settings.method_registry`, which imports it.
"""

from __future__ import annotations

from . import acdc, cd_t, eap, eap_ig, edge_pruning, hisp, norm_diff, patching, relp, sae_codes, sp
from .acdc import ACDCConfig, ACDCEdgeScorer, ACDCScorer
from .base import (
    MethodSpec,
    Scorer,
    all_names,
    default_names,
    get,
    names,
    register,
    run_method,
    spec,
    specs,
    unregister,
)
from .eap import EAPConfig, EAPScorer
from .eap_ig import EAPIGConfig, EAPIGScorer
from .edge_pruning import EdgePruningConfig, EdgePruningScorer
from .hisp import HISPConfig, HISPScorer
from .norm_diff import NormDiffConfig, NormDiffScorer
from .patching import PatchingConfig, PatchingScorer
from .sae_codes import (
    Discovery,
    SAECodesConfig,
    SAECodesScorer,
    discover_from_activations,
    run_sae_codes,
)
from .sp import SPConfig, SPScorer

# the registry, in the order tables list methods
register(sae_codes.SPEC)
register(eap.SPEC)
register(eap_ig.SPEC)
register(patching.SPEC)
register(acdc.SPEC)
register(acdc.EDGE_SPEC)
register(hisp.SPEC)
register(sp.SPEC)
register(norm_diff.SPEC)
register(edge_pruning.SPEC)
register(relp.SPEC)
register(cd_t.SPEC)

__all__ = [
    "ACDCConfig",
    "ACDCEdgeScorer",
    "ACDCScorer",
    "Discovery",
    "EAPConfig",
    "EAPIGConfig",
    "EAPIGScorer",
    "EAPScorer",
    "EdgePruningConfig",
    "EdgePruningScorer",
    "HISPConfig",
    "HISPScorer",
    "MethodSpec",
    "NormDiffConfig",
    "NormDiffScorer",
    "PatchingConfig",
    "PatchingScorer",
    "SAECodesConfig",
    "SAECodesScorer",
    "SPConfig",
    "SPScorer",
    "Scorer",
    "all_names",
    "default_names",
    "discover_from_activations",
    "get",
    "names",
    "register",
    "run_method",
    "run_sae_codes",
    "spec",
    "specs",
    "unregister",
]
