"""Passes over a task's prompts that keep what interventions patch with: every head's z and
the input embedding, stopped as early as they can be, and the :class:`PassCounter` of the
model calls they (and every method) spend, counted as batched calls (the convention of
``sae-codes``: one call over up to ``batch_size`` prompts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .forward import logits_at, split_heads

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor

    from ..models.handle import ModelHandle

_RESID0 = "blocks.0.hook_resid_pre"


@dataclass
class PassCounter:
    """Model calls spent: forward and backward passes, and the prompt rows they carried."""

    forward: int = 0
    backward: int = 0
    rows_forward: int = 0
    rows_backward: int = 0
    embedding_lookups: int = 0
    started: float = field(default_factory=time.perf_counter)

    def fwd(self, rows: int, n: int = 1) -> None:
        self.forward += n
        self.rows_forward += rows

    def bwd(self, rows: int, n: int = 1) -> None:
        self.backward += n
        self.rows_backward += rows

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def stats(self) -> dict[str, int]:
        return {"rows_forward": self.rows_forward, "rows_backward": self.rows_backward,
                "embedding_lookups": self.embedding_lookups}


class _Stop(Exception):
    """Raised in a hook once everything needed from a forward pass has been seen."""


def capture(
    model: ModelHandle,
    tokens: Int[Tensor, "n seq"],
    mask: Int[Tensor, "n seq"] | None,
    *,
    batch_rows: int,
    counter: PassCounter,
    with_z: bool = True,
) -> tuple[Float[Tensor, "n layers seq heads d_head"] | None, Float[Tensor, "n seq d_model"]]:
    """Every head's z and the input embedding (``blocks.0.hook_resid_pre``) on ``tokens``.

    The pass stops after the last layer's z (or right after the embedding when
    ``with_z`` is False; that counts as an embedding lookup, not a forward pass).
    """
    import torch

    layout = model.layout
    n, seq = tokens.shape
    z_out = torch.empty(n, layout.n_layers, seq, layout.n_heads, model.d_head) if with_z else None
    e_out = torch.empty(n, seq, model.d_model)
    state: dict[str, int] = {}

    def grab_e(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        e_out[state["lo"] : state["hi"]] = x.detach().float()
        if not with_z:
            raise _Stop
        return x

    def make(layer: int):
        def grab(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            z_out[state["lo"] : state["hi"], layer] = split_heads(z, layout.n_heads).detach().float()
            if layer == layout.n_layers - 1:
                raise _Stop
            return z

        return grab

    hooks = [(_RESID0, grab_e)]
    if with_z:
        hooks += [(model.hook_z(layer), make(layer)) for layer in range(layout.n_layers)]
    with torch.inference_mode():
        for lo in range(0, n, batch_rows):
            hi = min(n, lo + batch_rows)
            state["lo"], state["hi"] = lo, hi
            kwargs = {} if mask is None else {"attention_mask": mask[lo:hi]}
            try:
                model.bridge.run_with_hooks(tokens[lo:hi], fwd_hooks=hooks, **kwargs)
            except _Stop:
                pass
            if with_z:
                counter.fwd(hi - lo)
            else:  # stopped right after the embedding: not a pass through the model
                counter.embedding_lookups += 1
    return z_out, e_out


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over rows at each position (axis 1 of x is the position), real tokens only."""
    if mask is None:
        return x.mean(0)
    m = mask.to(x.dtype).reshape(mask.shape[0], mask.shape[1], *([1] * (x.ndim - 2)))
    return (x * m).sum(0) / m.sum(0).clamp_min(1)


def _clean_pass(
    model: ModelHandle,
    tok: Tensor,
    mask: Tensor | None,
    positions: Tensor,
    last: int,
    group: int,
    batch_rows: int,
    counter: PassCounter,
    *,
    need_reference: bool,
    need_z: bool,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(reference log-probs or None, input embedding, z or None) on the clean rows."""
    import torch


    if not need_reference:
        z, e = capture(model, tok, mask, batch_rows=batch_rows, counter=counter, with_z=need_z)
        return None, e, z
    layout = model.layout
    refs, embeds, zs = [], [], []
    cur: dict[str, Any] = {}

    def grab_e(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        embeds.append(x.detach().float())
        return x

    def make(layer: int):
        def grab(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            cur["z"][:, layer] = split_heads(z, layout.n_heads).detach().float()
            return z

        return grab

    hooks = [(_RESID0, grab_e)]
    if need_z:
        hooks += [(model.hook_z(layer), make(layer)) for layer in range(layout.n_layers)]
    with torch.inference_mode():
        for lo in range(0, tok.shape[0], batch_rows):
            hi = min(tok.shape[0], lo + batch_rows)
            if need_z:
                cur["z"] = torch.empty(hi - lo, layout.n_layers, tok.shape[1], layout.n_heads, model.d_head)
            out = logits_at(model, tok[lo:hi], positions, hooks=hooks,
                            attention_mask=None if mask is None else mask[lo:hi])
            refs.append(out[::group, last].float().log_softmax(-1))
            if need_z:
                zs.append(cur["z"])
            counter.fwd(hi - lo)
    return torch.cat(refs), torch.cat(embeds), torch.cat(zs) if need_z else None
