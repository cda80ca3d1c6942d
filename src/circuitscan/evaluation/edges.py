"""The computational graph edge-level methods score, and forward passes that patch its edges.

Here in :mod:`circuitscan.evaluation` because edge-level faithfulness patches edges too;
the methods reach it through :mod:`circuitscan.methods.edges`.

Nodes
-----
*Senders*: ``input`` (the embedding entering layer 0: token + position embeddings) and
every head ``L{l}H{h}`` (its output ``z_h W_O^h`` into the residual stream, without the
layer's shared bias). *Receivers*: every head's query, key and value input and the
``logits`` (the residual stream entering the final norm). A receiver reads every sender
of an earlier layer (``input`` is layer -1, ``logits`` layer ``n_layers``).

MLPs are not nodes: they are part of the wiring. An MLP reads the real residual stream
and its output reaches later receivers directly, so removing the edge A -> B replaces
A's output in B's input only, while paths A -> MLP -> B stay clean. This is the
head-level graph the ground truths are written in (``circuits.EdgeGroundTruth.edges``
with ``mlps=False`` contracts MLPs the same way).

"Input of B"
------------
The input a head's query reads is the residual stream before the layer's first norm
(``blocks.{l}.ln1.hook_in``), one private copy per receiver: B's query is recomputed as
``norm(x + delta_B) W_Q^B + b_Q^B`` with the layer's own norm module (LayerNorm,
RMSNorm or none), where ``delta_B`` is the sum over B's removed edges of
``a_A(ablated) - a_A(current)``. Keys and values likewise. The recomputation is checked
against the model's own q/k/v once per run. In a grouped-query model (SmolLM2: 9 query
heads, 3 key/value heads per layer) a key or value input belongs to a key/value head
shared by its group; its receivers are named ``L{l}KV{g}.k`` / ``.v``, and a
gradient there is the effect through every query head of the group.

Edge names: ``"L1H0->L3H2.q"``, ``"input->L0H1.v"``, ``"L1H0->L3KV0.k"`` (grouped query),
``"L2H0->logits"``. :func:`contract` turns them into head-level edges ``"L1H0->L3H2"``
(the largest absolute score over the receiving head's ports) as ground truths name them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..types import HeadLayout

if TYPE_CHECKING:
    from jaxtyping import Float
    from torch import Tensor

    from ..models.handle import ModelHandle
    from .objective import Objective

INPUT = "input"
LOGITS = "logits"
PORTS = ("q", "k", "v")


@dataclass(frozen=True)
class Receiver:
    """One receiving input: a head's q, a (key/value) head's k or v, or the logits."""

    layer: int  # n_layers for the logits
    port: str  # q | k | v | logits
    index: int  # query head (q), key/value head (k, v), 0 (logits)
    name: str
    heads: tuple[int, ...]  # the query heads (within the layer) whose computation it enters


@dataclass(frozen=True)
class EdgeGraph:
    """Senders, receivers and the valid edges between them for one model.

    Sender index 0 is ``input``; sender ``1 + i`` is the head with flat index i.
    Receivers are ordered layer by layer (q of every head, then k, then v of every
    key/value head), the logits last.
    """

    layout: HeadLayout
    n_kv_heads: int

    @classmethod
    def for_model(cls, model: ModelHandle) -> EdgeGraph:
        n_kv = getattr(model.bridge.cfg, "n_key_value_heads", None) or model.layout.n_heads
        if model.layout.n_heads % int(n_kv):
            raise CircuitscanError(f"model {model.spec!r}: {model.layout.n_heads} query heads do not split into "
                                   f"{n_kv} key/value groups")
        return cls(model.layout, int(n_kv))

    @property
    def grouped(self) -> bool:
        return self.n_kv_heads != self.layout.n_heads

    @property
    def group_size(self) -> int:
        return self.layout.n_heads // self.n_kv_heads

    @cached_property
    def senders(self) -> list[str]:
        return [INPUT, *self.layout.names()]

    def sender_layer(self, s: int) -> int:
        return -1 if s == 0 else (s - 1) // self.layout.n_heads

    @cached_property
    def receivers(self) -> list[Receiver]:
        out: list[Receiver] = []
        H, G = self.layout.n_heads, self.n_kv_heads
        for layer in range(self.layout.n_layers):
            for h in range(H):
                out.append(Receiver(layer, "q", h, f"L{layer}H{h}.q", (h,)))
            for port in ("k", "v"):
                for g in range(G):
                    name = f"L{layer}KV{g}.{port}" if self.grouped else f"L{layer}H{g}.{port}"
                    heads = tuple(range(g * self.group_size, (g + 1) * self.group_size))
                    out.append(Receiver(layer, port, g, name, heads))
        out.append(Receiver(self.layout.n_layers, LOGITS, 0, LOGITS, ()))
        return out

    @property
    def n_senders(self) -> int:
        return 1 + self.layout.n_total

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    def layer_receivers(self, layer: int) -> dict[str, list[int]]:
        """Receiver indices of one layer by port (``logits`` for layer n_layers)."""
        per = self.layout.n_heads + 2 * self.n_kv_heads
        if layer == self.layout.n_layers:
            return {LOGITS: [self.n_receivers - 1]}
        base = layer * per
        H, G = self.layout.n_heads, self.n_kv_heads
        return {"q": list(range(base, base + H)), "k": list(range(base + H, base + H + G)),
                "v": list(range(base + H + G, base + H + 2 * G))}

    def n_upstream(self, layer: int) -> int:
        """Senders that feed a receiver of ``layer``: input + every head below it."""
        return 1 + layer * self.layout.n_heads

    @cached_property
    def valid(self) -> Tensor:
        """Bool ``[n_senders, n_receivers]``: which sender may feed which receiver."""
        import torch

        s_layer = torch.tensor([self.sender_layer(s) for s in range(self.n_senders)])
        r_layer = torch.tensor([r.layer for r in self.receivers])
        return s_layer[:, None] < r_layer[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edge_index(self) -> list[tuple[int, int]]:
        """Valid (sender, receiver) pairs in row-major order."""
        return [tuple(x) for x in self.valid.nonzero().tolist()]

    def edge_name(self, s: int, r: int) -> str:
        return f"{self.senders[s]}->{self.receivers[r].name}"

    def edge_names(self) -> list[str]:
        return [self.edge_name(s, r) for s, r in self.edge_index()]

    def to_dict(self, matrix: Tensor) -> dict[str, float]:
        """A ``[n_senders, n_receivers]`` score matrix as {edge name: score} over valid edges."""
        return {self.edge_name(s, r): float(matrix[s, r]) for s, r in self.edge_index()}

    def receiver_heads(self, r: int) -> list[str]:
        """Head-level names of the nodes receiver r belongs to (``logits`` for the logits)."""
        rec = self.receivers[r]
        if rec.port == LOGITS:
            return [LOGITS]
        return [f"L{rec.layer}H{h}" for h in rec.heads]

    def describe(self) -> dict[str, Any]:
        return {"senders": self.n_senders, "receivers": self.n_receivers, "edges": self.n_edges,
                "kv_heads": self.n_kv_heads, "mlps": "wiring (not nodes)"}


def contract(graph: EdgeGraph, edges: Mapping[str, float]) -> dict[str, float]:
    """Port-level edges to head-level edges ``"A->B"``: the largest absolute score over B's ports.

    A key/value receiver of a grouped-query model counts for every query head of its group.
    """
    by_name = {r.name: i for i, r in enumerate(graph.receivers)}
    out: dict[str, float] = {}
    for name, score in edges.items():
        src, dst = name.split("->")
        if dst not in by_name:
            raise CircuitscanError(f"edge {name!r} does not end at a receiver of this model's graph")
        value = abs(score)
        for head in graph.receiver_heads(by_name[dst]):
            key = f"{src}->{head}"
            if key not in out or value > out[key]:
                out[key] = value
    return out


def head_level_edges(layout: HeadLayout) -> list[str]:
    """Every head-level edge of the graph: input/heads -> later heads, and -> logits."""
    names = layout.names()
    out = []
    for i, b in enumerate(names):
        lb = i // layout.n_heads
        out.append(f"{INPUT}->{b}")
        out.extend(f"{a}->{b}" for j, a in enumerate(names) if j // layout.n_heads < lb)
    out.append(f"{INPUT}->{LOGITS}")
    out.extend(f"{a}->{LOGITS}" for a in names)
    return out


def normalise_edge(name: str) -> str:
    """Ground-truth spelling to ours: ``output`` is our ``logits``."""
    src, dst = name.split("->")
    return f"{src}->{LOGITS if dst == 'output' else dst}"


def planted_true_edges() -> frozenset[str]:
    """The edges of the toy-planted model's circuit (:mod:`circuitscan.models.toy`).

    Each planted head reads the signal token (``input``) and the planted heads of earlier
    layers, and only planted heads write what the unembedding reads.
    """
    from ..models.toy import PLANTED_HEADS

    names = [h.name for h in PLANTED_HEADS]
    edges = {f"{INPUT}->{n}" for n in names} | {f"{n}->{LOGITS}" for n in names}
    for a in PLANTED_HEADS:
        for b in PLANTED_HEADS:
            if a.layer < b.layer:
                edges.add(f"{a.name}->{b.name}")
    return frozenset(edges)


def edge_auc(
    scores: Mapping[str, float], true_edges: Iterable[str], candidates: Iterable[str]
) -> dict[str, Any]:
    """ROC AUC over ``candidates`` (head-level edge names) of head-level ``scores``.

    Edges a method did not score count as 0. Returns {auc, n_edges, n_true}.
    """
    from sklearn.metrics import roc_auc_score

    cand = list(candidates)
    truth = {normalise_edge(e) for e in true_edges}
    missing = sorted(truth - set(cand))
    if missing:
        raise CircuitscanError(
            f"{len(missing)} ground-truth edges are not edges of this model's head-level graph "
            f"(e.g. {missing[0]!r})"
        )
    y = [1 if e in truth else 0 for e in cand]
    s = [float(scores.get(e, 0.0)) for e in cand]
    if sum(y) in (0, len(y)):
        raise CircuitscanError("an edge ROC needs edges both in and out of the ground truth")
    return {"auc": float(roc_auc_score(y, s)), "n_edges": len(cand), "n_true": sum(y)}


# --------------------------------------------------------------------------- forward passes


class EdgeForward:
    """Hooks that give every receiver a private input: patched edges, gradient leaves, or both.

    One instance serves one model and graph. :meth:`hooks` returns the hook list for one
    forward pass over ``C * r`` rows (C edge configurations, circuit-major, as
    :func:`~circuitscan.evaluation.intervention.head_mask_hooks` lays them out).
    """

    def __init__(self, model: ModelHandle, graph: EdgeGraph) -> None:
        import torch

        self.model = model
        self.graph = graph
        b = model.bridge
        L, H = model.layout.n_layers, model.layout.n_heads
        needed = ["blocks.0.hook_resid_pre", "ln_final.hook_in"] + [
            name for layer in range(L) for name in (
                f"blocks.{layer}.ln1.hook_in", *(f"blocks.{layer}.attn.hook_{p}" for p in PORTS), model.hook_z(layer))
        ]
        missing = [name for name in needed if name not in b.hook_dict]
        if missing:
            raise CircuitscanError(
                f"model {model.spec!r} has no hook point {missing[0]!r}; edge-level methods need each layer's "
                "ln1 input, per-head q/k/v and z, the first residual stream and the final norm's input"
            )
        self.w_o = b.W_O.detach()
        self.w = {"q": b.W_Q.detach(), "k": b.W_K.detach(), "v": b.W_V.detach()}
        self.b = {}
        for p in PORTS:
            bias = None
            try:
                bias = getattr(b, f"b_{p.upper()}")
            except AttributeError:  # bias-free projections (Llama)
                bias = None
            n = H if p == "q" else graph.n_kv_heads
            self.b[p] = torch.zeros(L, n, model.d_head) if bias is None else bias.detach()
        if tuple(self.w["k"].shape[1:2]) != (graph.n_kv_heads,):
            raise CircuitscanError(
                f"model {model.spec!r}: W_K has {self.w['k'].shape[1]} heads per layer, expected the "
                f"{graph.n_kv_heads} key/value heads; edge-level methods cannot split its inputs"
            )
        self.norms = []
        for layer in range(L):
            ln = b.blocks[layer].ln1
            inner = getattr(ln, "original_component", None)
            self.norms.append(ln if inner is None else inner)
        self.checked = False

    # ---- pieces

    def head_out(self, layer: int, z: Tensor) -> Tensor:
        """[b, p, H, d_head] -> [b, p, H, d_model] (no bias)."""
        import torch

        return torch.einsum("bphe,hed->bphd", z, self.w_o[layer].to(z.dtype))

    def project(self, layer: int, port: str, x: Tensor, idx: list[int]) -> Tensor:
        """norm(x) for a per-receiver input ``x`` [b, p, n, d] through receivers ``idx``'s projections."""
        import torch

        normed = self.norms[layer](x)
        w = self.w[port][layer][idx].to(normed.dtype)
        return torch.einsum("bpnd,nde->bpne", normed, w) + self.b[port][layer][idx].to(normed.dtype)

    # ---- the hooks

    def hooks(
        self,
        *,
        removed: Tensor | None = None,
        source_heads: list[Tensor | None] | None = None,
        source_input: Tensor | None = None,
        leaves: bool = False,
        verify: bool = False,
        n_configs: int = 1,
    ) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
        """Hooks for one forward pass, and the dict they fill.

        Args:
            removed: ``[C, n_senders, n_receivers]`` (bool or float): edges that carry the
                sender's ablated value instead of its current one; None = none.
            source_heads: per layer, the ablated z ``[r or 1, seq, H, d_head]`` (None = zero).
            source_input: the ablated input embedding ``[r or 1, seq, d]`` (None = zero).
            leaves: give every receiver a zero-valued input offset that requires grad
                (``state["leaf"][layer][port]``, ``state["leaf"]["logits"]``).
            verify: recompute every receiver even where nothing changes and check the
                result against the model's own q/k/v (raises if they differ).
            n_configs: C, the number of edge configurations in the batch.

        Returns:
            (hooks, state): after the pass, state holds ``z`` (per layer, as the forward
            saw it), ``input`` (the embedding) and ``leaf``.
        """
        import torch

        g = self.graph
        L, H = g.layout.n_layers, g.layout.n_heads
        C = n_configs
        state: dict[str, Any] = {"z": [None] * L, "input": None, "leaf": {}}
        patch = removed is not None and bool(removed.any())
        if patch and tuple(removed.shape) != (C, g.n_senders, g.n_receivers):
            raise ValueError(f"removed must be [{C}, {g.n_senders}, {g.n_receivers}], got {tuple(removed.shape)}")
        # D[c, s] = ablated - current value of sender s in config c, flattened over (rows, pos, d),
        # filled as the pass reaches each sender; T[c] = the sum of D over the senders so far
        buf: dict[str, Tensor] = {}

        def ablated(values: Tensor | None, like: Tensor) -> Tensor:
            if values is None:
                return torch.zeros_like(like)
            v = values.to(dtype=like.dtype, device=like.device)
            if v.shape[0] == 1:
                return v.expand_as(like)
            if v.shape[0] * C != like.shape[0]:
                raise ValueError(f"ablation values have {v.shape[0]} rows, the batch {like.shape[0] // C} per config")
            return v.repeat(C, *([1] * (v.ndim - 1)))

        def weighted_sum(M: Tensor, n_up: int) -> Tensor | None:
            """sum_s M[c, s, n] D[c, s]: [C, n, (r p d)]; None if M is all zero."""
            used = M.any(2).any(0).nonzero().flatten()
            if used.numel() == 0:
                return None
            D = buf["D"]
            if used.numel() < n_up // 2:
                return torch.bmm(M[:, used].transpose(1, 2), D[:, used])
            # D fills in place as the pass goes on: a gradient in M needs this layer's copy of it
            return torch.bmm(M.transpose(1, 2), D[:, :n_up].clone() if M.requires_grad else D[:, :n_up])

        def delta_for(r_idx: list[int], n_up: int, like: Tensor) -> Tensor | None:
            """Sum over removed edges into receivers r_idx of (ablated - current): [C*r, p, n, d]."""
            if not patch:
                return None
            W = removed[:, :n_up][:, :, r_idx].to(buf["D"].dtype)  # [C, S_up, n]
            n_removed = int(W.any(2).any(0).sum())
            if n_removed == 0:
                return None
            P = 1.0 - W  # every sender below the receiver's layer feeds it
            if n_removed <= int(P.any(2).any(0).sum()):
                out = weighted_sum(W, n_up)
            else:  # mostly removed: everything upstream minus what is still present
                kept = weighted_sum(P, n_up)
                total = buf["T"][:, None, :]
                out = total.expand(-1, len(r_idx), -1) if kept is None else total - kept
            rows, p, d = like.shape[0], like.shape[1], like.shape[-1]
            out = out.reshape(C, len(r_idx), rows // C, p, d).permute(0, 2, 3, 1, 4)
            return out.reshape(rows, p, len(r_idx), d)

        def grab_input(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            state["input"] = x
            if patch:
                buf["D"] = torch.zeros(C, g.n_senders, x[: x.shape[0] // C].numel(), dtype=x.dtype, device=x.device)
                diff = (ablated(source_input, x) - x).reshape(C, -1)
                buf["D"][:, 0] = diff
                buf["T"] = diff.clone()
            return x

        resid: dict[int, Tensor] = {}

        def make_ln_in(layer: int):
            def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
                resid[layer] = x
                return x

            return hook

        def make_port(layer: int, port: str):
            idx = g.layer_receivers(layer)[port]
            local = list(range(len(idx)))
            n_up = g.n_upstream(layer)

            def hook(t: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
                x = resid[layer]
                delta = delta_for(idx, n_up, x)
                leaf = None
                if leaves:
                    leaf = torch.zeros(x.shape[0], x.shape[1], len(idx), x.shape[-1], dtype=x.dtype,
                                       device=x.device, requires_grad=True)
                    state["leaf"].setdefault(layer, {})[port] = leaf
                if delta is None and leaf is None and not verify:
                    return t
                xx = x[:, :, None, :]
                if delta is not None:
                    xx = xx + delta
                if leaf is not None:
                    xx = xx + leaf
                elif delta is None:
                    xx = xx.expand(-1, -1, len(idx), -1)
                new = self.project(layer, port, xx, local)
                orig = t if t.ndim == 4 else t.reshape(t.shape[0], t.shape[1], len(idx), -1)
                if verify and delta is None:
                    self._check(layer, port, new, orig)
                return new.to(t.dtype).reshape(t.shape)

            return hook

        def make_z(layer: int):
            lo = 1 + layer * H

            def hook(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
                from .objective import split_heads

                zz = split_heads(z, H)
                state["z"][layer] = zz
                if patch:
                    src = None if source_heads is None else source_heads[layer]
                    a = self.head_out(layer, zz)
                    a_src = torch.zeros_like(a) if src is None else self.head_out(layer, ablated(src, zz))
                    diff = (a_src - a).reshape(C, a.shape[0] // C, a.shape[1], H, a.shape[-1])
                    diff = diff.permute(0, 3, 1, 2, 4).reshape(C, H, -1)
                    buf["D"][:, lo : lo + H] = diff
                    buf["T"] += diff.sum(1)
                return z

            return hook

        def final(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            delta = delta_for(g.layer_receivers(L)[LOGITS], g.n_senders, x)
            out = x if delta is None else x + delta[:, :, 0]
            if leaves:
                leaf = torch.zeros_like(x, requires_grad=True)
                state["leaf"][LOGITS] = leaf
                out = out + leaf
            return out

        hooks: list[tuple[str, Any]] = [("blocks.0.hook_resid_pre", grab_input)]
        for layer in range(L):
            hooks.append((f"blocks.{layer}.ln1.hook_in", make_ln_in(layer)))
            hooks.extend((f"blocks.{layer}.attn.hook_{port}", make_port(layer, port)) for port in PORTS)
            hooks.append((self.model.hook_z(layer), make_z(layer)))
        hooks.append(("ln_final.hook_in", final))
        return hooks, state

    def _check(self, layer: int, port: str, new: Tensor, orig: Tensor) -> None:
        scale = float(orig.detach().abs().max()) or 1.0
        err = float((new.detach() - orig.detach()).abs().max())
        if err > 1e-3 * scale + 1e-5:
            raise CircuitscanError(
                f"model {self.model.spec!r}: recomputing layer {layer}'s {port} from its residual stream "
                f"differs from the model's own values by {err:.3g}; edge-level methods cannot give this "
                "architecture's heads private inputs"
            )
        self.checked = True


def removed_all(graph: EdgeGraph, n_configs: int = 1) -> Float[Tensor, "C S R"]:
    """Every valid edge removed (all receivers read only ablated senders)."""
    return graph.valid[None].expand(n_configs, -1, -1).clone()


def run_edges(
    obj: Objective,
    fwd: EdgeForward,
    removed: Tensor,
    *,
    verify: bool = False,
    max_rows: int | None = None,
) -> Float[Tensor, "C n"]:
    """Goodness of each of C edge configurations on the objective's examples (no grad).

    Args:
        removed: ``[C, n_senders, n_receivers]``.
        verify: first check, with one unpatched pass over the first batch, that the
            receivers' recomputed inputs reproduce the model's own q/k/v.
        max_rows: most token rows per forward pass (configs x prompts x suffixes); each
            row holds every sender's difference (senders x seq x d_model floats), so this
            bounds memory. Default: the objective's batch.
    """
    import torch

    C = removed.shape[0]
    limit = max_rows or obj.batch_rows
    per_pass_examples = max(1, min(obj.examples_per_batch, limit // (C * obj.group)))
    configs_per_pass = max(1, min(C, limit // obj.group))
    out = torch.empty(C, obj.n)
    with torch.inference_mode():
        if verify and not fwd.checked:
            _, sl = next(obj.batches())
            hooks, _ = fwd.hooks(verify=True)
            obj.logits(obj.tokens[sl], None if obj.mask is None else obj.mask[sl], hooks)
            obj.counter.fwd(sl.stop - sl.start)
        for lo in range(0, obj.n, per_pass_examples):
            hi = min(obj.n, lo + per_pass_examples)
            index = torch.arange(lo, hi)
            sl = slice(lo * obj.group, hi * obj.group)
            src = [obj.source_z(layer, sl) for layer in range(obj.model.layout.n_layers)]
            for c0 in range(0, C, configs_per_pass):
                c1 = min(C, c0 + configs_per_pass)
                k = c1 - c0
                hooks, _ = fwd.hooks(removed=removed[c0:c1], source_heads=src, source_input=obj.source_input(sl),
                                     n_configs=k)
                tok = obj.tokens[sl].repeat(k, 1)
                mask = None if obj.mask is None else obj.mask[sl].repeat(k, 1)
                logits = obj.logits(tok, mask, hooks)
                obj.counter.fwd(tok.shape[0])
                logits = logits.reshape(k, sl.stop - sl.start, *logits.shape[1:])
                for c in range(k):
                    out[c0 + c, lo:hi] = obj.goodness(logits[c], index).float()
    return out
