"""Contextual decomposition for transformers (Hsu et al. 2025, "Efficient Automated Circuit
Discovery in Transformers using Contextual Decomposition", CD-T), node level.

For a source head A, every activation ``x`` of the clean forward pass is split into a
relevant part (what A's output contributes) and an irrelevant part, ``x = rel + irrel``:

* A's own output z_A: ``rel = z_A(clean) - z_A(ablated)``, ``irrel = z_A(ablated)`` (with
  ``--ablation zero`` the whole output is relevant, which is plain CD-T); the input
  embedding and every bias are irrelevant;
* linear maps (W_V, W_O, the MLP's matrices, the unembedding) act on both parts, biases go
  to ``irrel``;
* attention probabilities and the norms' scales are frozen at their clean values, so a
  head and a norm are linear maps of the parts;
* an elementwise nonlinearity ``f`` (GELU, ReLU, SiLU) splits its output by the two-term
  Shapley rule CD uses: ``rel_out = ((f(x) - f(irrel)) + (f(rel) - f(0))) / 2``,
  ``irrel_out = f(x) - rel_out``;
* a product (a gated MLP's ``act(g) * u``): only ``irrel * irrel`` is irrelevant, the
  cross terms are relevant.

Only the irrelevant parts are propagated (one hooked forward pass per source head; the
relevant part is the clean value minus it), so the cost is the ablation pass (the corrupted
prompts; none for zero ablation), then per batch one clean pass (recording the frozen quantities) and ``n_heads``
decomposition passes, with no backward pass. A head's score
is ``goodness(clean logits) - goodness(irrel logits)``, which for the logit difference is
the logit difference of the relevant part of the logits -- the paper's score.

Departures from Hsu et al.: their relevant part of a source is its whole output (zero
ablation); here it is relative to the comparison's ablation (corrupt by default), so CD-T
is scored against the same baseline as the other methods. For metrics that are not linear
in the logits (probabilities, KL, loss) the score is the metric's change when the relevant
part is removed, not the metric of the relevant part alone. Edges (their source -> target
decomposition) are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._setup import BaselineConfig, PassCounter, build_objective, finish_scores, split_heads
from .base import MethodSpec, examples_used
from .relp import _activation

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


@dataclass(frozen=True)
class CDTConfig(BaselineConfig):
    """CD-T settings: those every baseline takes (:class:`~circuitscan.methods._setup.BaselineConfig`)."""


@dataclass
class _Sites:
    """Hook names of the frozen quantities and the MLP nonlinearities of one model."""

    scales: list[str]
    patterns: list[str]
    mlps: list[tuple[str, str, str | None]]  # (pre, post, pre_linear or None)


def _sites(model: ModelHandle) -> _Sites:
    have = set(model.bridge.hook_dict)
    L = model.layout.n_layers
    scales = [n for n in [*(f"blocks.{layer}.{ln}.hook_scale" for layer in range(L) for ln in ("ln1", "ln2")),
                          "ln_final.hook_scale"] if n in have]
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(L)]
    mlps = []
    for layer in range(L):
        pre, post, lin = (f"blocks.{layer}.mlp.{s}" for s in ("hook_pre", "hook_post", "hook_pre_linear"))
        if pre in have and post in have:
            mlps.append((pre, post, lin if lin in have else None))
    return _Sites(scales, patterns, mlps)


def _record(cache: dict[str, Tensor], names: list[str]) -> list[tuple[str, Any]]:
    def make(name: str):
        def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            cache[name] = x.detach()
            return x

        return hook

    return [(n, make(n)) for n in names]


def _decomposition_hooks(model: ModelHandle, sites: _Sites, cache: dict[str, Tensor], act: Any,
                         layer: int, head: int, source: Tensor | None) -> list[tuple[str, Any]]:
    """Hooks of the pass that carries the irrelevant parts for source head (layer, head)."""
    import torch

    H = model.layout.n_heads

    def frozen(name: str):
        def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            return cache[name].to(x.dtype)

        return hook

    def at_source(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        zz = split_heads(z, H).clone()
        zz[:, :, head] = 0.0 if source is None else source[:, :, head].to(zz.dtype).expand_as(zz[:, :, head])
        return zz.reshape(z.shape)

    hooks = [(n, frozen(n)) for n in sites.scales + sites.patterns]
    hooks.append((model.hook_z(layer), at_source))
    seen: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            seen[name] = x
            return x

        return hook

    def split(full: Tensor, irrel: Tensor) -> Tensor:
        """The irrelevant part of act(x) by the two-term Shapley rule."""
        rel = full - irrel
        f_full = act(full)
        rel_out = 0.5 * ((f_full - act(irrel)) + (act(rel) - act(torch.zeros_like(rel))))
        return f_full - rel_out

    def make_post(pre: str, lin: str | None):
        def hook(p: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            g_i = seen.pop(pre)
            a_i = split(cache[pre].to(g_i.dtype), g_i)
            if lin is None:
                return a_i + (p - act(g_i))  # any term added after f stays irrelevant
            u_i = seen.pop(lin)
            return a_i * u_i + (p - act(g_i) * u_i)

        return hook

    for pre, post, lin in sites.mlps:
        hooks.append((pre, keep(pre)))
        if lin is not None:
            hooks.append((lin, keep(lin)))
        hooks.append((post, make_post(pre, lin)))
    return hooks


def cd_t_scores(model: ModelHandle, prompts: PromptSet, cfg: CDTConfig) -> Scores:
    import torch

    from ..models.hf import bridge_only
    from ..progress import bar

    counter = PassCounter()
    obj = build_objective(model, prompts, cfg, counter=counter)
    L, H = model.layout.n_layers, model.layout.n_heads
    sites = _sites(model)
    act = _activation(getattr(model.bridge.cfg, "act_fn", None)) if sites.mlps else None
    recorded = sites.scales + sites.patterns + [pre for pre, _, _ in sites.mlps]
    effect = torch.zeros(obj.n, L, H)
    n_batches = -(-obj.n // obj.examples_per_batch)
    with torch.no_grad(), bridge_only(model), bar("cd-t", n_batches * L * H, show=cfg.progress) as advance:
        for index, sl in obj.batches():
            rows = sl.stop - sl.start
            tok = obj.tokens[sl]
            mask = None if obj.mask is None else obj.mask[sl]
            cache: dict[str, Tensor] = {}
            clean = obj.goodness(obj.logits(tok, mask, _record(cache, recorded)), index)
            counter.fwd(rows)
            for layer in range(L):
                source = obj.source_z(layer, sl)
                for head in range(H):
                    hooks = _decomposition_hooks(model, sites, cache, act, layer, head, source)
                    irrel = obj.goodness(obj.logits(tok, mask, hooks), index)
                    counter.fwd(rows)
                    effect[index, layer, head] = (clean - irrel).float().cpu()
                    advance()
    mean = effect.mean(0)
    stats: dict[str, Any] = {"signed": mean, "level": "node",
                             "score": "goodness(clean) - goodness(irrelevant part): the relevant part's effect",
                             "frozen": {"norm_scales": len(sites.scales), "attention_patterns": len(sites.patterns)},
                             "nonlinearities": len(sites.mlps)}
    return finish_scores("cd-t", mean.abs(), obj, counter, stats=stats)


class CDTScorer:
    """``cd-t`` as a :class:`~circuitscan.methods.base.Scorer`: node scores."""

    name = "cd-t"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return cd_t_scores(model, prompts, cfg or CDTConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n, n_total = examples_used(cfg, prompts), model.layout.n_total
    return (2 + n_total) * n, 0, f"{n_total} decomposition passes (one per source head)"


SPEC = MethodSpec(
    name="cd-t", scorer=CDTScorer, config=CDTConfig, cost=_cost,
    summary="contextual decomposition: each head's relevant part propagated with frozen attention and norms",
    source="Hsu et al. 2025, arXiv:2407.00886",
)

__all__ = ["SPEC", "CDTConfig", "CDTScorer", "cd_t_scores"]
