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

Only the irrelevant parts are propagated (one hooked decomposition per source head; the
relevant part is the clean value minus it), so the cost is the ablation pass (the corrupted
prompts; none for zero ablation), then per batch one clean pass (recording the frozen
quantities) and ``n_heads`` decompositions, with no backward pass. The decompositions of
``heads_per_pass`` heads share one forward pass: the batch is stacked once per head along
the batch axis, each copy carrying its own head's parts, so the passes per batch are
``ceil(n_heads / heads_per_pass)`` (the arithmetic, and so the scores, are those of one
pass per head). A head's score
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

from ..errors import CircuitscanError
from ..models.hf import bridge_only
from ..progress import bar
from ._setup import BaselineConfig, PassCounter, build_objective, finish_scores, split_heads
from .base import MethodSpec, examples_used
from .relp import _activation

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores


#: sequences one decomposition pass carries at most when ``heads_per_pass`` is None
ROWS_PER_PASS = 128


@dataclass(frozen=True)
class CDTConfig(BaselineConfig):
    """CD-T settings: those every baseline takes (:class:`~circuitscan.methods._setup.BaselineConfig`), and

    Attributes:
        heads_per_pass: source heads decomposed in one forward pass, the batch stacked once
            per head along the batch axis (1: one pass per head); None: as many as keep a
            pass at :data:`ROWS_PER_PASS` sequences (at least one head).
    """

    heads_per_pass: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.heads_per_pass
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise CircuitscanError(f"heads_per_pass must be an integer >= 1 (or None: automatic), got {k!r}")

    def heads_in_pass(self, rows: int, n_heads: int) -> int:
        """Heads per decomposition pass for a batch of ``rows`` sequences and ``n_heads`` source heads."""
        k = self.heads_per_pass if self.heads_per_pass is not None else max(1, ROWS_PER_PASS // max(1, rows))
        return max(1, min(k, n_heads))


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
                         heads: list[tuple[int, int]], sources: dict[int, Tensor | None]) -> list[tuple[str, Any]]:
    """Hooks of the pass that carries the irrelevant parts for the source ``heads``.

    The pass's batch is the prompts' rows stacked once per head (copy ``j`` belongs to
    ``heads[j]``); ``cache`` holds the clean pass's frozen quantities stacked the same way,
    ``sources[layer]`` the ablated z of each source layer (None: zero).
    """
    import torch

    H, k = model.layout.n_heads, len(heads)

    def frozen(name: str):
        def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            return cache[name].to(x.dtype)

        return hook

    def at_source(layer: int):
        picks = [(j, h) for j, (src_layer, h) in enumerate(heads) if src_layer == layer]
        source = sources[layer]

        def hook(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            zz = split_heads(z, H)
            zz = zz.reshape(k, zz.shape[0] // k, *zz.shape[1:]).clone()  # [copy, rows, seq, H, d]
            for j, h in picks:
                zz[j, :, :, h] = 0.0 if source is None else source[:, :, h].to(zz.dtype).expand_as(zz[j, :, :, h])
            return zz.reshape(z.shape)

        return hook

    hooks = [(n, frozen(n)) for n in sites.scales + sites.patterns]
    hooks += [(model.hook_z(layer), at_source(layer)) for layer in sorted(sources)]
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


def _stacked(cache: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    """The clean pass's recorded tensors, each repeated ``k`` times along the batch axis."""
    return cache if k == 1 else {n: t.repeat(k, *([1] * (t.dim() - 1))) for n, t in cache.items()}


def cd_t_scores(model: ModelHandle, prompts: PromptSet, cfg: CDTConfig) -> Scores:
    import torch

    counter = PassCounter()
    obj = build_objective(model, prompts, cfg, counter=counter)
    L, H = model.layout.n_layers, model.layout.n_heads
    sites = _sites(model)
    act = _activation(getattr(model.bridge.cfg, "act_fn", None)) if sites.mlps else None
    recorded = sites.scales + sites.patterns + [pre for pre, _, _ in sites.mlps]
    effect = torch.zeros(obj.n, L, H)
    every = [(layer, head) for layer in range(L) for head in range(H)]
    n_batches = -(-obj.n // obj.examples_per_batch)
    k = cfg.heads_in_pass(min(obj.n, obj.examples_per_batch) * obj.group, len(every))  # the largest batch's rows
    with torch.no_grad(), bridge_only(model), bar("cd-t", n_batches * L * H, show=cfg.progress) as advance:
        for index, sl in obj.batches():
            rows = sl.stop - sl.start
            tok = obj.tokens[sl]
            mask = None if obj.mask is None else obj.mask[sl]
            cache: dict[str, Tensor] = {}
            clean = obj.goodness(obj.logits(tok, mask, _record(cache, recorded)), index)
            counter.fwd(rows)
            stacked = _stacked(cache, k)
            for lo in range(0, len(every), k):
                heads = every[lo:lo + k]
                m = len(heads)
                sources = {layer: obj.source_z(layer, sl) for layer in sorted({layer for layer, _ in heads})}
                frozen = stacked if m == k else _stacked(cache, m)
                hooks = _decomposition_hooks(model, sites, frozen, act, heads, sources)
                logits = obj.logits(tok.repeat(m, 1), None if mask is None else mask.repeat(m, 1), hooks)
                counter.fwd(rows * m)
                for j, (layer, head) in enumerate(heads):
                    irrel = obj.goodness(logits[j * rows:(j + 1) * rows], index)
                    effect[index, layer, head] = (clean - irrel).float().cpu()
                advance(m)
    mean = effect.mean(0)
    stats: dict[str, Any] = {"signed": mean, "level": "node",
                             "score": "goodness(clean) - goodness(irrelevant part): the relevant part's effect",
                             "frozen": {"norm_scales": len(sites.scales), "attention_patterns": len(sites.patterns)},
                             "nonlinearities": len(sites.mlps), "heads_per_pass": k}
    return finish_scores("cd-t", mean.abs(), obj, counter, stats=stats)


class CDTScorer:
    """``cd-t`` as a :class:`~circuitscan.methods.base.Scorer`: node scores."""

    name = "cd-t"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return cd_t_scores(model, prompts, cfg or CDTConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n, n_total = examples_used(cfg, prompts), model.layout.n_total
    k = cfg.heads_in_pass(min(cfg.batch_size, n), n_total) if isinstance(cfg, CDTConfig) else 1
    return (2 + n_total) * n, 0, f"{n_total} source heads' decompositions ({-(-n_total // k)} passes per batch)"


SPEC = MethodSpec(
    name="cd-t", scorer=CDTScorer, config=CDTConfig, cost=_cost,
    summary="contextual decomposition: each head's relevant part propagated with frozen attention and norms",
    source="Hsu et al. 2025, arXiv:2407.00886",
)

__all__ = ["SPEC", "CDTConfig", "CDTScorer", "cd_t_scores"]
