"""Edge attribution patching (Syed, Rager & Conmy 2023) and the gradient core it shares.

EAP estimates, to first order, what happens to the task metric when a head's output
(node score) or one edge (edge score) is switched from its clean value to its ablated
value, from one forward and one backward pass on the clean prompts:

    node(A)      = mean_i  sum_{pos, d}  (z_A(ablated) - z_A(clean)) . d goodness_i / d z_A
    edge(A -> R) = mean_i  sum_{pos, d}  (a_A(ablated) - a_A(clean)) . d goodness_i / d in_R

``a_A = z_A W_O^A`` is A's output into the residual stream; ``in_R`` is the private
input of receiver R (a head's q, k or v input before the layer norm, or the residual
stream entering the final norm; see :mod:`circuitscan.methods.edges`). Scores are the
absolute values (higher = more in the circuit); the signed means stay in ``stats``.

The ablated values come from one more forward pass (the corrupted prompts, or the mean
over all prompts; zero costs nothing). The gradient of KL(clean || model) vanishes at
the clean model, so with ``kl`` (or ``gradient_at="corrupted"``) the gradient is taken
at the ablated point instead: every head and the input carry their ablated values and
the scores estimate what restoring one node or edge does (this costs a clean pass for
the reference distribution and the clean values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..evaluation.metrics import default_metric, get_metric
from ..progress import bar
from ._setup import (
    BaselineConfig,
    PassCounter,
    build_objective,
    finish_scores,
    frozen_params,
    split_heads,
)
from .base import MethodSpec, examples_used
from .edges import LOGITS, EdgeForward, EdgeGraph

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores
    from ._setup import Objective

GRADIENT_POINTS = ("clean", "corrupted")


@dataclass(frozen=True)
class EAPConfig(BaselineConfig):
    """EAP settings (see :class:`~circuitscan.methods._setup.BaselineConfig` for the shared ones).

    Attributes:
        edges: also score edges (costs the receivers' private inputs in the pass).
        gradient_at: ``clean`` or ``corrupted``; None = clean, or corrupted for metrics
            whose gradient vanishes at the clean model (``kl``).
    """

    edges: bool = True
    gradient_at: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gradient_at is not None and self.gradient_at not in GRADIENT_POINTS:
            raise CircuitscanError(f"gradient_at must be one of {', '.join(GRADIENT_POINTS)}, got {self.gradient_at!r}")


@dataclass
class Attribution:
    """Per-example node attributions and summed edge attributions.

    Attributes:
        node: ``[n, n_layers, n_heads]`` per example (signed: estimated change of goodness
            when the head is ablated).
        edges: ``[n_senders, n_receivers]`` summed over examples (signed), or None.
        graph: the edge graph, when edges were scored.
        gradient_at: where the gradient was taken.
    """

    node: Tensor
    edges: Tensor | None
    graph: Any
    gradient_at: str


def resolve_gradient_point(obj: Objective, gradient_at: str | None) -> str:
    if gradient_at is not None:
        return gradient_at
    return "corrupted" if obj.metric.needs_reference else "clean"


def attribute(
    obj: Objective,
    *,
    edges: bool,
    gradient_at: str = "clean",
    alphas: tuple[float, ...] | None = None,
    progress: bool | None = None,
    label: str = "eap",
) -> Attribution:
    """Gradient attributions of every head (and edge) on the objective's examples.

    Args:
        obj: from :func:`~circuitscan.methods._setup.build_objective` (with
            ``keep_clean_z`` when the clean values are not seen by the gradient passes).
        edges: score edges too.
        gradient_at: ``clean`` (one pass on the clean input) or ``corrupted`` (every head
            and the input at their ablated values).
        alphas: integrated gradients on the inputs: the input embedding is moved to
            ``ablated + alpha (clean - ablated)`` for each alpha and the gradients are
            averaged (EAP-IG); None = plain EAP.
    """
    import torch

    model = obj.model
    layout = model.layout
    L, H = layout.n_layers, layout.n_heads
    graph = EdgeGraph.for_model(model) if edges else None
    fwd = EdgeForward(model, graph) if edges else None
    w_o = model.bridge.W_O.detach().float()
    node = torch.zeros(obj.n, L, H)
    edge_sum = torch.zeros(graph.n_senders, graph.n_receivers) if edges else None
    steps = alphas if alphas is not None else (None,)
    n_batches = -(-obj.n // obj.examples_per_batch)
    with frozen_params(model), bar(f"{label}: gradients", n_batches * len(steps), show=progress) as advance:
        for index, sl in obj.batches():
            src_z = [obj.source_z(layer, sl) for layer in range(L)]
            src_in = obj.source_input(sl)
            clean_in = obj.clean_input[sl]
            g_z, g_leaf, z_clean = _batch_gradients(obj, fwd, index, sl, src_z, src_in, clean_in, steps,
                                                    gradient_at, advance)
            k = len(steps)
            # delta z of each head: ablated - clean, [L, r, p, H, d]
            dz = torch.stack([
                (torch.zeros_like(z_clean[layer]) if src_z[layer] is None
                 else src_z[layer].float().expand_as(z_clean[layer])) - z_clean[layer]
                for layer in range(L)
            ])
            for layer in range(L):
                gz = g_z[layer].float() / k
                per_row = (dz[layer] * gz).sum((1, 3))  # [r, H]
                node[index, layer] += per_row.reshape(len(index), -1, H).sum(1)
            if edges:
                g_leaf = {key: v.float() / k for key, v in g_leaf.items()}
                _edge_scores(edge_sum, graph, dz, w_o, src_in, clean_in, g_leaf)
    return Attribution(node=node, edges=edge_sum, graph=graph, gradient_at=gradient_at)


def _batch_gradients(
    obj: Objective,
    fwd: Any,
    index: Any,
    sl: slice,
    src_z: list[Any],
    src_in: Tensor,
    clean_in: Tensor,
    steps: tuple[float | None, ...],
    gradient_at: str,
    advance: Any,
) -> tuple[list[Any], dict[Any, Any], Tensor]:
    """One batch's gradients, summed over the integration steps: (per-layer head gradients,
    edge-leaf gradients, the clean head values [L, r, p, H, d])."""
    import torch

    L = obj.model.layout.n_layers
    rows = sl.stop - sl.start
    tok = obj.tokens[sl]
    mask = None if obj.mask is None else obj.mask[sl]
    g_z: list[Any] = [None] * L
    g_leaf: dict[Any, Any] = {}
    z_clean = None if obj.clean_z is None else obj.clean_z[sl].transpose(0, 1)  # [L, r, p, H, d]
    for alpha in steps:
        hooks, z_seen = _gradient_hooks(obj, src_z, src_in, clean_in, gradient_at=gradient_at, alpha=alpha)
        leaf_state = None
        if fwd is not None:
            edge_hooks, leaf_state = fwd.hooks(leaves=True, verify=not fwd.checked)
            hooks = hooks + edge_hooks
        with torch.enable_grad():
            logits = obj.logits(tok, mask, hooks)
            total = obj.goodness(logits, index).sum()
            grads_of = [z_seen[layer] for layer in range(L)]
            leaves = _leaf_list(leaf_state, L) if leaf_state is not None else []
            grads = torch.autograd.grad(total, grads_of + leaves, allow_unused=True)
        obj.counter.fwd(rows)
        obj.counter.bwd(rows)
        for layer in range(L):
            gz = _zeros_if_none(grads[layer], z_seen[layer]).detach()
            g_z[layer] = gz if g_z[layer] is None else g_z[layer] + gz
        for key, g, like in zip(_leaf_keys(L) if leaves else [], grads[L:], leaves, strict=True):
            g = _zeros_if_none(g, like).detach()
            g_leaf[key] = g if key not in g_leaf else g_leaf[key] + g
        if z_clean is None and gradient_at == "clean" and alpha in (None, 1.0):
            z_clean = torch.stack([z_seen[layer].detach().float() for layer in range(L)])
        advance()
    if z_clean is None:
        raise CircuitscanError("integrated gradients need alpha = 1 among their steps (the clean input)")
    return g_z, g_leaf, z_clean


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    import torch

    return torch.zeros_like(like) if g is None else g


def _leaf_keys(L: int) -> list[Any]:
    return [(layer, port) for layer in range(L) for port in ("q", "k", "v")] + ["logits"]


def _leaf_list(state: dict[str, Any], L: int) -> list[Tensor]:
    leaf = state["leaf"]
    return [leaf[layer][port] for layer in range(L) for port in ("q", "k", "v")] + [leaf["logits"]]


def _gradient_hooks(
    obj: Objective,
    src_z: list[Tensor | None],
    src_in: Tensor | None,
    clean_in: Tensor,
    *,
    gradient_at: str,
    alpha: float | None,
) -> tuple[list[tuple[str, Any]], dict[int, Tensor]]:
    """Hooks that keep every z in the graph (and move heads/input for the chosen point)."""
    import torch

    model = obj.model
    H = model.layout.n_heads
    seen: dict[int, Tensor] = {}
    hooks: list[tuple[str, Any]] = []

    def ablated_input(x: Tensor) -> Tensor:
        return torch.zeros_like(x) if src_in is None else src_in.to(x.dtype).expand_as(x)

    if alpha is not None:
        def interpolate(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            base = ablated_input(x)
            return (base + alpha * (x - base)).detach()

        hooks.append(("blocks.0.hook_resid_pre", interpolate))
    elif gradient_at == "corrupted":
        def to_ablated(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            return ablated_input(x).detach()

        hooks.append(("blocks.0.hook_resid_pre", to_ablated))

    def make(layer: int):
        def hook(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            zz = split_heads(z, H)
            if not zz.requires_grad:  # nothing upstream needs a gradient: start the graph here
                zz = zz.detach().requires_grad_(True)
            if gradient_at == "corrupted" and alpha is None:
                src = src_z[layer]
                target = torch.zeros_like(zz) if src is None else src.to(zz.dtype).expand_as(zz)
                zz = zz + (target - zz).detach()  # the ablated value, gradient as if it were z
            seen[layer] = zz
            return zz.reshape(z.shape)

        return hook

    hooks += [(model.hook_z(layer), make(layer)) for layer in range(model.layout.n_layers)]
    return hooks, seen


def _edge_scores(
    out: Tensor,
    graph: Any,
    dz: Tensor,
    w_o: Tensor,
    src_in: Tensor | None,
    clean_in: Tensor,
    g_leaf: dict[Any, Tensor],
    chunk: int = 8,
) -> None:
    """Add sum_{rows, pos, d} (a_s(ablated) - a_s(clean)) . grad_r to out[s, r] for valid pairs."""
    import torch

    L = dz.shape[0]
    r_total = dz.shape[1]
    for lo in range(0, r_total, chunk):
        hi = min(r_total, lo + chunk)
        d_in = (torch.zeros_like(clean_in[lo:hi]) if src_in is None else src_in.float().expand_as(clean_in)[lo:hi]) \
            - clean_in[lo:hi].float()
        # sender deltas as one matrix [S, (r p d)]: input, then every head (z delta through W_O)
        d_heads = torch.einsum("lrphe,lhed->lhrpd", dz[:, lo:hi], w_o).flatten(0, 1)
        delta = torch.cat([d_in[None], d_heads], 0).flatten(1)
        for layer in range(L + 1):
            n_up = graph.n_upstream(layer)
            for port, idx in graph.layer_receivers(layer).items():
                g = g_leaf[LOGITS][lo:hi, :, None] if port == LOGITS else g_leaf[(layer, port)][lo:hi]
                g_mat = g.float().permute(2, 0, 1, 3).flatten(1)  # [n, (r p d)]
                out[:n_up, idx] += delta[:n_up] @ g_mat.T


def eap_scores(
    model: ModelHandle,
    prompts: PromptSet,
    cfg: EAPConfig,
    *,
    method: str = "eap",
    alphas: tuple[float, ...] | None = None,
    extra_stats: dict[str, Any] | None = None,
) -> Scores:
    """Run EAP (or EAP-IG with ``alphas``) and wrap the result as :class:`Scores`."""
    counter = PassCounter()
    point = cfg.gradient_at or ("corrupted" if _needs_reference(prompts, cfg) else "clean")
    if alphas is not None:
        point = "clean"  # integrated gradients run along the path; its last step is the clean input
    obj = build_objective(model, prompts, cfg, counter=counter, keep_clean_z=point == "corrupted")
    att = attribute(obj, edges=cfg.edges, gradient_at=point, alphas=alphas, progress=cfg.progress, label=method)
    mean_node = att.node.mean(0)
    edges = None
    stats: dict[str, Any] = {"gradient_at": point if alphas is None else "integrated (inputs)",
                             "signed": mean_node, **(extra_stats or {})}
    if att.edges is not None:
        mean_edges = att.edges / obj.n
        edges = att.graph.to_dict(mean_edges.abs())
        stats["graph"] = att.graph.describe()
        stats["edge_score"] = "|mean over examples of (a_ablated - a_clean) . d goodness / d input of receiver|"
    return finish_scores(method, mean_node.abs(), obj, counter, edges=edges, stats=stats)


def _needs_reference(prompts: PromptSet, cfg: BaselineConfig) -> bool:
    return get_metric(cfg.metric or default_metric(prompts)).needs_reference


class EAPScorer:
    """``eap`` as a :class:`~circuitscan.methods.base.Scorer`: node and edge scores."""

    name = "eap"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        return eap_scores(model, prompts, cfg or EAPConfig())


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n = examples_used(cfg, prompts)
    return 2 * n, n, "two forward passes and one backward pass"


SPEC = MethodSpec(
    name="eap", scorer=EAPScorer, config=EAPConfig, cost=_cost, edges=True, default=True,
    summary="edge attribution patching: gradient x (clean - corrupt) activation, nodes and edges",
    source="Syed, Rager & Conmy 2023, arXiv:2310.10348",
)


__all__ = ["SPEC", "Attribution", "EAPConfig", "EAPScorer", "attribute", "eap_scores"]
