"""The feature graph's head-level view: attention-output features belong to the layer's
heads through W_O, so a graph can be scored like every other method (ROC over heads,
faithfulness), registered as the method ``feature-attribution``.

Mapping. At an ``attn.L`` site the output is ``sum_h r_h + b_O`` with ``r_h = z_h W_O^h``.

* ``head_map="decoder"`` (default): at each position, the feature's contribution
  ``|f_i(t) dm/df_i(t)|`` is split over the heads in proportion to ``|r_h(t) . W_D[i]|``,
  how much each head writes along the feature's atom; a head's score sums its shares.
* ``head_map="encoder"``: where feature ``i`` is active its pre-activation is linear in the
  output, so its node score splits exactly into ``n_(i,h) = sum_t (r_h(t) . W_E[:, i])
  dm/df_i(t)`` plus a constant; a head's score is ``sum_i |n_(i,h)|``. Exact, but a head
  that reaches the encoder only through cross-talk weights (which the SAE error then
  cancels) gets a share too: on the planted toy this view ranks non-circuit heads high.

Sums run over the graph's kept features of the layer (``features="kept"``: what the graph
claims) or over every feature (``"all"``). Heads in layers without an attention SAE score
0, and the error node is not split over heads: train attention SAEs at every layer for a
full ranking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CircuitscanError
from ..methods.base import MethodSpec, register
from ..models.handle import ModelHandle
from ..types import HeadLayout, PromptSet, Scores
from .graph import AttributionGraph, GraphConfig, graph_for_prompts
from .saes import SublayerSAEs, load_sublayer_saes
from .sites import parse_site

METHOD = "feature-attribution"


@dataclass(frozen=True)
class FeatureAttributionConfig:
    """Configuration of the ``feature-attribution`` method.

    Attributes:
        saes: an SAE directory (``circuitscan features train``) or loaded :class:`SublayerSAEs`.
        top_k: features kept per site.
        features: ``"kept"`` or ``"all"`` (which features' head shares count).
        head_map: ``"decoder"`` or ``"encoder"`` (see the module docstring).
        baseline: ``"zero"`` (node = f * dm/df) or ``"corrupt"`` (Marks et al.'s attribution
            patching against the task's paired negatives; decoder head map only).
        metric: task metric (default: the task's own; see :func:`~.graph.task_objective`).
        n_prompts: positive prompts the graph is built on (None: all).
        batch_size: prompts per forward pass.
    """

    saes: str | Path | SublayerSAEs | None = None
    top_k: int = 10
    features: str = "kept"
    head_map: str = "decoder"
    baseline: str = "zero"
    metric: str | None = None
    n_prompts: int | None = 32
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.features not in ("kept", "all"):
            raise CircuitscanError(f"features must be 'kept' or 'all', got {self.features!r}")
        if self.head_map not in ("decoder", "encoder"):
            raise CircuitscanError(f"head_map must be 'decoder' or 'encoder', got {self.head_map!r}")
        if self.baseline not in ("zero", "corrupt"):
            raise CircuitscanError(f"baseline must be 'zero' or 'corrupt', got {self.baseline!r}")
        if self.baseline == "corrupt" and self.head_map == "encoder":
            raise CircuitscanError("the encoder head map is exact only for the zero baseline; use head_map='decoder'")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise CircuitscanError(f"n_prompts must be >= 1, got {self.n_prompts}")


def head_scores(graph: AttributionGraph, layout: HeadLayout, features: str = "kept",
                head_map: str = "decoder") -> torch.Tensor:
    """``[n_layers, n_heads]`` head scores from a graph (0 where no attention SAE)."""
    out = torch.zeros(layout.n_layers, layout.n_heads, dtype=torch.float64)
    key = features if head_map == "decoder" else f"{features}_encoder"
    for site, scores in (graph.head_scores or {}).items():
        layer = parse_site(site).layer
        values = scores[key]
        if len(values) != layout.n_heads:
            raise CircuitscanError(f"graph site {site} has {len(values)} head scores, the model has {layout.n_heads} heads")
        out[layer] = torch.tensor(values, dtype=torch.float64)
    return out


def scores_from_graph(graph: AttributionGraph, layout: HeadLayout, features: str = "kept",
                      head_map: str = "decoder", wall_time_s: float | None = None) -> Scores:
    covered = sorted(parse_site(s).layer for s in (graph.head_scores or {}))
    return Scores(
        method=METHOD,
        node=head_scores(graph, layout, features, head_map).float(),
        layout=layout,
        wall_time_s=graph.seconds if wall_time_s is None else wall_time_s,
        forward_passes=graph.forward_passes,
        backward_passes=graph.backward_passes,
        stats={"covered_layers": covered, "features": features, "head_map": head_map,
               "objective": graph.objective.get("name"),
               "level": "head shares of attention-output features"},
    )


class FeatureAttributionScorer:
    """``feature-attribution`` as a :class:`~circuitscan.methods.base.Scorer` (needs SAEs)."""

    name = METHOD

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        if not isinstance(cfg, FeatureAttributionConfig) or cfg.saes is None:
            raise CircuitscanError(
                "method 'feature-attribution' needs sublayer SAEs: train them with `circuitscan features train "
                "--sites attn.0-N ...` and pass FeatureAttributionConfig(saes=DIR)"
            )
        t0 = time.perf_counter()
        saes = cfg.saes if isinstance(cfg.saes, SublayerSAEs) else load_sublayer_saes(cfg.saes)
        attn = [s for s in saes.sites if s.kind == "attn"]
        if not attn:
            raise CircuitscanError(
                f"the SAEs cover {', '.join(saes.saes)} but no attention output; the head-level view needs "
                "attn.L sites (train with --sites attn.0-N)"
            )
        graph = graph_for_prompts(
            model, saes, prompts, GraphConfig(top_k=cfg.top_k, compute_edges=False, batch_size=cfg.batch_size,
                                              baseline=cfg.baseline),
            metric=cfg.metric, n_prompts=cfg.n_prompts, sites=attn,
        )
        return scores_from_graph(graph, model.layout, cfg.features, cfg.head_map, wall_time_s=time.perf_counter() - t0)


def _cost(cfg: Any, model: ModelHandle, prompts: PromptSet) -> tuple[float, float, str]:
    n = prompts.n_positive if cfg.n_prompts is None else min(cfg.n_prompts, prompts.n_positive)
    return 2 * n, 2 * n, "an attribution graph over the sublayer SAEs' features"


SPEC = MethodSpec(
    name=METHOD, scorer=FeatureAttributionScorer, config=FeatureAttributionConfig, cost=_cost,
    settings={"metric": "metric"}, in_all=False,
    summary="head shares of a sparse-feature attribution graph (needs sublayer SAEs: circuitscan features train)",
    source="Marks et al. 2024, arXiv:2403.19647",
)
# registered here: circuitscan.methods never imports the higher features layer;
# compare.settings.method_registry imports this module for the pipelines and the CLI
register(SPEC)
