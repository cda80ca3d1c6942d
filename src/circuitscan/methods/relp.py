"""Relevance patching (Jafari, Eberle, Khakzar & Nanda 2025, "RelP: Faithful and Efficient Circuit
Discovery via Relevance Patching", arXiv:2508.21258).

RelP is attribution patching (:mod:`.eap`: ``(ablated - clean) . d goodness / d activation``)
with the local gradients of the backward pass replaced by layer-wise relevance propagation
(LRP) coefficients. Every rule is applied here as a forward hook that leaves the forward
values unchanged and changes only what the backward pass sees, so the cost is EAP's (the
clean and ablated forward passes and one backward pass per batch):

* ``ln`` -- LN-rule: the normalising scale of every LayerNorm / RMSNorm (``hook_scale``)
  is detached, so a norm is the linear map ``x -> (x - mean) w / s`` (RMSNorm: ``x w / s``)
  in the backward pass.
* ``attention`` (off by default, as in the paper's released code, where it is the optional
  "AH-rule") -- attention probabilities are constants (``hook_pattern`` detached): a head is
  linear in its values in the backward pass, and nothing flows through queries and keys.
* ``identity`` -- identity rule for the MLP's nonlinearity: ``f(x)`` passes relevance
  unchanged, i.e. the backward pass multiplies by ``f(x) / x`` (detached) instead of
  ``f'(x)``. For ReLU this is the gradient itself.
* ``half`` -- half rule for products: in a gated MLP ``act(g) * u`` each factor receives
  half of the product's gradient-times-input (the gradient through each factor halved).
  As in the released code, attention's ``pattern . V`` product keeps its gradient.

The hooks sit on the bridge's hook points (``blocks.L.ln1.hook_scale``,
``blocks.L.attn.hook_pattern``, ``blocks.L.mlp.hook_pre``/``hook_pre_linear``/``hook_post``),
so RelP runs the bridge path on every model (toys, tracr, Hugging Face models such as
SmolLM2), not the hook-free Hugging Face view EAP uses for its node passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..models.hf import bridge_only
from ._setup import PassCounter, build_objective, finish_scores
from .base import MethodSpec, examples_used
from .eap import EAPConfig, _needs_reference, attribute

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores

RULES = ("ln", "identity", "half", "attention")
#: the rules of the paper's released code (LN-rule, Identity-rule, Half-rule); ``attention`` is its optional AH-rule
DEFAULT_RULES = ("ln", "identity", "half")
_EPS = 1e-6


@dataclass(frozen=True)
class RelPConfig(EAPConfig):
    """RelP settings: EAP's (:class:`~circuitscan.methods.eap.EAPConfig`) and

    Attributes:
        rules: which LRP rules replace the gradient (a subset of :data:`RULES`; default
            :data:`DEFAULT_RULES`; the empty tuple is plain EAP).
    """

    rules: tuple[str, ...] = DEFAULT_RULES

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [r for r in self.rules if r not in RULES]
        if bad:
            raise CircuitscanError(f"unknown RelP rule(s) {', '.join(map(repr, bad))}; valid rules: {', '.join(RULES)}")


def _activation(name: str | None):
    import torch.nn.functional as F

    acts = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
            "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
            "silu": F.silu, "swish": F.silu}
    if name not in acts:
        raise CircuitscanError(f"RelP's identity rule does not know activation {name!r}; known: {', '.join(acts)}")
    return acts[name]


def _gain(out: Tensor, x: Tensor) -> Tensor:
    """f(x) / x, detached (x near 0: divided by +-eps)."""
    import torch

    safe = torch.where(x.abs() < _EPS, torch.full_like(x, _EPS) * torch.where(x < 0, -1.0, 1.0), x)
    return (out / safe).detach()


def _same_value(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass, ``surrogate``'s gradient in the backward pass."""
    return value.detach() + (surrogate - surrogate.detach())


def rule_hooks(model: ModelHandle, rules: tuple[str, ...] = DEFAULT_RULES) -> list[tuple[str, Any]]:
    """Bridge hooks that apply ``rules`` to the backward pass (forward values unchanged)."""
    have = set(model.bridge.hook_dict)
    hooks: list[tuple[str, Any]] = []

    def detach(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        return x.detach()

    norms = [f"blocks.{layer}.{ln}.hook_scale" for layer in range(model.layout.n_layers) for ln in ("ln1", "ln2")]
    if "ln" in rules:
        hooks += [(n, detach) for n in [*norms, "ln_final.hook_scale"] if n in have]
    if "attention" in rules:
        hooks += [(f"blocks.{layer}.attn.hook_pattern", detach) for layer in range(model.layout.n_layers)]
    if "identity" in rules or "half" in rules:
        for layer in range(model.layout.n_layers):
            hooks += _mlp_hooks(model, layer, have, rules)
    missing = [n for n, _ in hooks if n not in have]
    if missing:
        raise CircuitscanError(f"RelP needs hook point {missing[0]!r}, which model {model.spec!r} does not have")
    return hooks


def _mlp_hooks(model: ModelHandle, layer: int, have: set[str], rules: tuple[str, ...]) -> list[tuple[str, Any]]:
    pre, post, lin = (f"blocks.{layer}.mlp.{s}" for s in ("hook_pre", "hook_post", "hook_pre_linear"))
    if pre not in have or post not in have:
        return []  # attention-only block
    gated = lin in have
    seen: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            seen[name] = x
            return x

        return hook

    identity, half = "identity" in rules, "half" in rules
    act = _activation(getattr(model.bridge.cfg, "act_fn", None)) if gated else None

    def at_post(p: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        g = seen.pop("pre")
        if not gated:  # p = f(g)
            return _same_value(p, g * _gain(p, g)) if identity else p
        u = seen.pop("lin")
        a = act(g)
        a_path = g * _gain(a, g) if identity else a  # the activation's rule
        w = 0.5 if half else 1.0
        surrogate = w * (a_path * u.detach()) + w * (a.detach() * u)
        return _same_value(p, surrogate)

    hooks = [(pre, keep("pre")), (post, at_post)]
    if gated:
        hooks.insert(1, (lin, keep("lin")))
    return hooks


@contextmanager
def relp_rules(model: ModelHandle, rules: tuple[str, ...] = DEFAULT_RULES) -> Iterator[list[str]]:
    """Within the block, every forward pass of ``model`` runs on the bridge with the rule hooks;
    yields the hook points used."""
    hooks = rule_hooks(model, rules)
    with bridge_only(model), model.bridge.hooks(fwd_hooks=hooks):
        yield [n for n, _ in hooks]


def relp_scores(model: ModelHandle, prompts: PromptSet, cfg: RelPConfig) -> Scores:
    """RelP node (and edge) scores: :func:`~circuitscan.methods.eap.attribute` under the rules."""
    counter = PassCounter()
    point = cfg.gradient_at or ("corrupted" if _needs_reference(prompts, cfg) else "clean")
    obj = build_objective(model, prompts, cfg, counter=counter, keep_clean_z=point == "corrupted")
    with relp_rules(model, cfg.rules) as sites:
        att = attribute(obj, edges=cfg.edges, gradient_at=point, progress=cfg.progress, label="relp")
    mean_node = att.node.mean(0)
    stats: dict[str, Any] = {"gradient_at": point, "signed": mean_node, "rules": list(cfg.rules),
                             "rule_sites": len(sites)}
    edges = None
    if att.edges is not None:
        edges = att.graph.to_dict((att.edges / obj.n).abs())
        stats["graph"] = att.graph.describe()
        stats["edge_score"] = "|mean over examples of (a_ablated - a_clean) . relevance coefficient at the receiver|"
    return finish_scores("relp", mean_node.abs(), obj, counter, edges=edges, stats=stats)


class RelPScorer:
    """``relp`` as a :class:`~circuitscan.methods.base.Scorer`: node and edge scores."""

    name = "relp"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return relp_scores(model, prompts, cfg or RelPConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n = examples_used(cfg, prompts)
    return 2 * n, n, "two forward passes and one backward pass (as EAP)"


SPEC = MethodSpec(
    name="relp", scorer=RelPScorer, config=RelPConfig, cost=_cost, edges=True,
    summary="relevance patching: EAP with LRP rules (LN, identity, half) in the backward pass",
    source="Jafari, Eberle, Khakzar & Nanda 2025, arXiv:2508.21258",
)

__all__ = ["DEFAULT_RULES", "RULES", "SPEC", "RelPConfig", "RelPScorer", "relp_rules", "relp_scores", "rule_hooks"]
