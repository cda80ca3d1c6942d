"""Forward passes that patch edges: every receiver reads a private copy of its input (:class:`EdgeForward`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .edge_graph import LOGITS, PORTS, EdgeGraph
from .objective import split_heads

if TYPE_CHECKING:
    from jaxtyping import Float
    from torch import Tensor

    from ..models.handle import ModelHandle
    from .objective import Objective


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
        per_layer: bool | None = None,
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
            per_layer: keep each layer's sender differences as its own tensor and sum
                receivers' inputs block by block, instead of one buffer filled in place
                (same sums, other order). None: when ``removed`` requires grad (edge
                pruning's gates), where the in-place buffer would make autograd copy
                and zero every sender's differences once per layer.

        Returns:
            (hooks, state): after the pass, state holds ``z`` (per layer, as the forward
            saw it), ``input`` (the embedding) and ``leaf``.
        """
        p = _EdgePass(self, removed=removed, source_heads=source_heads, source_input=source_input,
                      leaves=leaves, verify=verify, n_configs=n_configs,
                      per_layer=bool(removed is not None and removed.requires_grad) if per_layer is None else per_layer)
        return p.hook_list(), p.state

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


class _EdgePass:
    """The hooks of one forward pass of :meth:`EdgeForward.hooks` and what they share.

    ``buf["D"][c, s]`` is the ablated minus the current value of sender ``s`` in config
    ``c``, flattened over (rows, pos, d), filled as the pass reaches each sender;
    ``buf["T"][c]`` is the sum of D over the senders so far. With ``per_layer``, D is
    instead ``blocks``: one ``[C, senders of the layer, (rows, pos, d)]`` tensor per
    sender layer (input first), never written after it is made.
    """

    def __init__(self, fwd: EdgeForward, *, removed: Tensor | None, source_heads: list[Tensor | None] | None,
                 source_input: Tensor | None, leaves: bool, verify: bool, n_configs: int,
                 per_layer: bool = False) -> None:
        g = fwd.graph
        self.fwd, self.g = fwd, g
        self.L, self.H = g.layout.n_layers, g.layout.n_heads
        self.C = n_configs
        self.removed, self.source_heads, self.source_input = removed, source_heads, source_input
        self.leaves, self.verify = leaves, verify
        self.state: dict[str, Any] = {"z": [None] * self.L, "input": None, "leaf": {}}
        self.patch = removed is not None and bool(removed.any())
        if self.patch and tuple(removed.shape) != (self.C, g.n_senders, g.n_receivers):
            raise ValueError(f"removed must be [{self.C}, {g.n_senders}, {g.n_receivers}], got {tuple(removed.shape)}")
        self.buf: dict[str, Tensor] = {}
        self.per_layer = per_layer
        self.blocks: list[Tensor] = []
        self.resid: dict[int, Tensor] = {}

    def hook_list(self) -> list[tuple[str, Any]]:
        hooks: list[tuple[str, Any]] = [("blocks.0.hook_resid_pre", self.grab_input)]
        for layer in range(self.L):
            hooks.append((f"blocks.{layer}.ln1.hook_in", self.make_ln_in(layer)))
            hooks.extend((f"blocks.{layer}.attn.hook_{port}", self.make_port(layer, port)) for port in PORTS)
            hooks.append((self.fwd.model.hook_z(layer), self.make_z(layer)))
        hooks.append(("ln_final.hook_in", self.final))
        return hooks

    # ---- sums of sender differences

    def ablated(self, values: Tensor | None, like: Tensor) -> Tensor:
        import torch

        if values is None:
            return torch.zeros_like(like)
        v = values.to(dtype=like.dtype, device=like.device)
        if v.shape[0] == 1:
            return v.expand_as(like)
        if v.shape[0] * self.C != like.shape[0]:
            raise ValueError(f"ablation values have {v.shape[0]} rows, the batch {like.shape[0] // self.C} per config")
        return v.repeat(self.C, *([1] * (v.ndim - 1)))

    def weighted_sum(self, M: Tensor, n_up: int) -> Tensor | None:
        """sum_s M[c, s, n] D[c, s]: [C, n, (r p d)]; None if M is all zero."""
        import torch

        if self.per_layer:
            return self.blockwise_sum(M, n_up)
        used = M.any(2).any(0).nonzero().flatten()
        if used.numel() == 0:
            return None
        D = self.buf["D"]
        if used.numel() < n_up // 2:
            return torch.bmm(M[:, used].transpose(1, 2), D[:, used])
        # D fills in place as the pass goes on: a gradient in M needs this layer's copy of it
        return torch.bmm(M.transpose(1, 2), D[:, :n_up].clone() if M.requires_grad else D[:, :n_up])

    def blockwise_sum(self, M: Tensor, n_up: int) -> Tensor | None:
        """:meth:`weighted_sum` over ``blocks``: one product per sender layer that feeds M."""
        import torch

        out, lo = None, 0
        for D in self.blocks:
            hi = lo + D.shape[1]
            if hi > n_up:
                break
            part = M[:, lo:hi]
            if bool(part.any()):
                term = torch.bmm(part.transpose(1, 2), D)
                out = term if out is None else out + term
            lo = hi
        return out

    def delta_for(self, r_idx: list[int], n_up: int, like: Tensor) -> Tensor | None:
        """Sum over removed edges into receivers r_idx of (ablated - current): [C*r, p, n, d]."""
        if not self.patch:
            return None
        C = self.C
        W = self.removed[:, :n_up][:, :, r_idx].to(self.buf["T"].dtype)  # [C, S_up, n]
        n_removed = int(W.any(2).any(0).sum())
        if n_removed == 0:
            return None
        P = 1.0 - W  # every sender below the receiver's layer feeds it
        if n_removed <= int(P.any(2).any(0).sum()):
            out = self.weighted_sum(W, n_up)
        else:  # mostly removed: everything upstream minus what is still present
            kept = self.weighted_sum(P, n_up)
            total = self.buf["T"][:, None, :]
            out = total.expand(-1, len(r_idx), -1) if kept is None else total - kept
        rows, p, d = like.shape[0], like.shape[1], like.shape[-1]
        out = out.reshape(C, len(r_idx), rows // C, p, d).permute(0, 2, 3, 1, 4)
        return out.reshape(rows, p, len(r_idx), d)

    # ---- the hooks

    def grab_input(self, x: Tensor, hook: Any) -> Tensor:  # noqa: ARG002
        import torch

        self.state["input"] = x
        if self.patch:
            C = self.C
            diff = (self.ablated(self.source_input, x) - x).reshape(C, -1)
            if self.per_layer:
                self.blocks = [diff[:, None]]
                self.buf["T"] = diff
                return x
            self.buf["D"] = torch.zeros(C, self.g.n_senders, x[: x.shape[0] // C].numel(), dtype=x.dtype,
                                        device=x.device)
            self.buf["D"][:, 0] = diff
            self.buf["T"] = diff.clone()
        return x

    def make_ln_in(self, layer: int):
        def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            self.resid[layer] = x
            return x

        return hook

    def make_port(self, layer: int, port: str):
        import torch

        idx = self.g.layer_receivers(layer)[port]
        local = list(range(len(idx)))
        n_up = self.g.n_upstream(layer)

        def hook(t: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            x = self.resid[layer]
            delta = self.delta_for(idx, n_up, x)
            leaf = None
            if self.leaves:
                leaf = torch.zeros(x.shape[0], x.shape[1], len(idx), x.shape[-1], dtype=x.dtype,
                                   device=x.device, requires_grad=True)
                self.state["leaf"].setdefault(layer, {})[port] = leaf
            if delta is None and leaf is None and not self.verify:
                return t
            xx = x[:, :, None, :]
            if delta is not None:
                xx = xx + delta
            if leaf is not None:
                xx = xx + leaf
            elif delta is None:
                xx = xx.expand(-1, -1, len(idx), -1)
            new = self.fwd.project(layer, port, xx, local)
            orig = t if t.ndim == 4 else t.reshape(t.shape[0], t.shape[1], len(idx), -1)
            if self.verify and delta is None:
                self.fwd._check(layer, port, new, orig)
            return new.to(t.dtype).reshape(t.shape)

        return hook

    def make_z(self, layer: int):
        import torch

        H, C = self.H, self.C
        lo = 1 + layer * H

        def hook(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001

            zz = split_heads(z, H)
            self.state["z"][layer] = zz
            if self.patch:
                src = None if self.source_heads is None else self.source_heads[layer]
                a = self.fwd.head_out(layer, zz)
                a_src = torch.zeros_like(a) if src is None else self.fwd.head_out(layer, self.ablated(src, zz))
                diff = (a_src - a).reshape(C, a.shape[0] // C, a.shape[1], H, a.shape[-1])
                diff = diff.permute(0, 3, 1, 2, 4).reshape(C, H, -1)
                if self.per_layer:
                    self.blocks.append(diff)
                    self.buf["T"] = self.buf["T"] + diff.sum(1)
                else:
                    self.buf["D"][:, lo : lo + H] = diff
                    self.buf["T"] += diff.sum(1)
            return z

        return hook

    def final(self, x: Tensor, hook: Any) -> Tensor:  # noqa: ARG002
        import torch

        delta = self.delta_for(self.g.layer_receivers(self.L)[LOGITS], self.g.n_senders, x)
        out = x if delta is None else x + delta[:, :, 0]
        if self.leaves:
            leaf = torch.zeros_like(x, requires_grad=True)
            self.state["leaf"][LOGITS] = leaf
            out = out + leaf
        return out


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
