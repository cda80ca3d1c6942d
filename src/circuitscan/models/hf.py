"""A hook-free Hugging Face view of a bridged model, for the per-head hooks circuitscan runs.

``TransformerBridge`` wraps each module of the Hugging Face model it boots in a bridge
component that carries TransformerLens hook points. For the two hook sites circuitscan
needs on its hot paths -- every head's ``z`` (``blocks.{l}.attn.hook_z``) and the
residual stream entering the unembedding (``unembed.hook_in``) -- the Hugging Face
model offers cheaper equivalents:

* ``z`` of every head is the input of the attention output projection (``o_proj`` in
  Llama-style models, ``c_proj`` in GPT-2), ``[batch, pos, n_heads * d_head]``: one
  plain forward pre-hook per layer gives all heads at once;
* ``unembed.hook_in`` is the output of the final norm (``model.norm`` / ``ln_f``), and
  the unembedding is ``lm_head``.

:func:`hf_view` builds, once per model, a copy of the module tree with every bridge
wrapper replaced by the Hugging Face module it wraps (the weights are shared, not
copied), and :func:`run_hooked` runs TransformerLens-style ``(name, fn)`` hooks on it.
Models without such a view (TransformerLens-native toys, testbeds) or hooks on other
sites go through ``bridge.run_with_hooks`` unchanged: one code path per model family.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .handle import ModelHandle

_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
UNEMBED_IN = "unembed.hook_in"
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks",
               "_backward_pre_hooks")


@dataclass(frozen=True)
class HFView:
    """The unwrapped Hugging Face model and its hook sites.

    Attributes:
        model: the ``*ForCausalLM`` module tree without bridge wrappers (shared weights).
        out_proj: per layer, the attention output projection (its input is every head's z).
        final_norm: the norm whose output enters ``lm_head``.
        lm_head: the unembedding.
        layers: the decoder layers (a ``ModuleList``), in order.
    """

    model: Any
    out_proj: tuple[Any, ...]
    final_norm: Any
    lm_head: Any
    layers: Any = None


def _is_bridge(m: nn.Module) -> bool:
    return type(m).__module__.startswith("transformer_lens") and hasattr(m, "_original_component")


def _is_hook_point(m: nn.Module) -> bool:
    return type(m).__module__.startswith("transformer_lens") and not hasattr(m, "_original_component")


def _unwrap(m: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``m`` with bridge wrappers replaced by what they wrap; modules that change are shallow copies."""
    if id(m) in memo:
        return memo[id(m)]
    orig = m
    while _is_bridge(m):
        m = m._original_component
    changed = m is not orig
    kids: dict[str, Any] = {}
    for name, child in m._modules.items():
        if child is not None and _is_hook_point(child):
            changed = True
            continue
        kids[name] = None if child is None else _unwrap(child, memo)
        changed |= kids[name] is not child
    if changed or any(getattr(m, d, None) for d in _HOOK_DICTS):
        m = copy.copy(m)
        m._modules = kids
        for d in _HOOK_DICTS:
            if hasattr(m, d):
                setattr(m, d, type(getattr(m, d))())
    memo[id(orig)] = m
    return m


def _sites(model: Any, n_layers: int) -> tuple[tuple[Any, ...], Any, Any, Any] | None:
    """(output projections, final norm, lm_head, decoder layers) of a Llama-style or GPT-2-style model, else None."""
    lm_head = getattr(model, "lm_head", None)
    body = getattr(model, "model", None) or getattr(model, "transformer", None)
    if lm_head is None or body is None:
        return None
    layers = getattr(body, "layers", None) or getattr(body, "h", None)
    norm = getattr(body, "norm", None) or getattr(body, "ln_f", None)
    if layers is None or norm is None or len(layers) != n_layers:
        return None
    projs = []
    for layer in layers:
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        proj = None if attn is None else getattr(attn, "o_proj", None) or getattr(attn, "c_proj", None)
        if proj is None:
            return None
        projs.append(proj)
    return tuple(projs), norm, lm_head, layers


def hf_view(handle: ModelHandle) -> HFView | None:
    """The Hugging Face view of ``handle`` (built once, cached on it), or None when it has none."""
    cached = handle.__dict__.get("_hf_view", False)
    if cached is not False:
        return cached
    view = None
    original = getattr(handle.bridge, "original_model", None)
    if original is not None:
        model = _unwrap(original, {})
        sites = _sites(model, handle.layout.n_layers)
        if sites is not None:
            d = handle.layout.n_heads * handle.d_head
            if all(getattr(p, "in_features", None) in (d, None) for p in sites[0]):
                model.eval()
                view = HFView(model, *sites)
    handle.__dict__["_hf_view"] = view
    return view


@contextmanager
def bridge_only(handle: ModelHandle) -> Iterator[None]:
    """Inside the block, :func:`run_hooked` uses the bridge's hook points (the reference path)."""
    had = "_hf_view" in handle.__dict__
    old = handle.__dict__.get("_hf_view")
    handle.__dict__["_hf_view"] = None
    try:
        yield
    finally:
        if had:
            handle.__dict__["_hf_view"] = old
        else:
            handle.__dict__.pop("_hf_view", None)


def supports(view: HFView | None, hooks: Sequence[tuple[str, Any]]) -> bool:
    """Whether every hook of ``hooks`` has a site in ``view``."""
    return view is not None and all(_HOOK_Z.match(n) or n == UNEMBED_IN for n, _ in hooks)


def run_hooked(
    handle: ModelHandle,
    tokens: Tensor,
    fwd_hooks: Sequence[tuple[str, Any]],
    *,
    attention_mask: Tensor | None = None,
    logits: bool = True,
    past: Prefix | None = None,
    start: tuple[int, Tensor] | None = None,
    capture: list[Tensor] | None = None,
) -> Tensor | None:
    """``bridge.run_with_hooks(tokens, fwd_hooks)`` on the fastest path that gives the same values.

    Hooks are TransformerLens-style ``(name, fn(x, hook))``; on the Hugging Face path
    ``fn`` gets z as ``[batch, pos, n_heads * d_head]`` (hook_z functions here accept
    both layouts) and ``hook`` is None. ``logits=False`` skips ``lm_head`` (the caller
    stops the pass from a hook or does not need logits).

    ``past`` (Hugging Face path only): the keys and values of the first ``past.length``
    positions of every row, computed once by :func:`prefix_keys_values` on the
    unhooked model; the pass then runs only the positions after them, and hooks and
    the returned logits see only those. Callers use it where the hooks cannot change
    those positions (corrupt ablation with prompts that share their first tokens with
    their corrupted partners). ``tokens`` may hold the prefix's rows repeated (circuit-major).

    ``start = (s, hidden)`` (Hugging Face path only): the residual stream entering layer ``s`` is
    ``hidden`` (``[batch, positions run, d_model]``) and layers ``0 .. s-1`` do not run (see
    :mod:`circuitscan.evaluation.layer_skip` for when that is exact). ``capture``: a list that gets
    the residual stream entering each layer, in order.
    """
    view = hf_view(handle)
    kwargs: dict[str, Any] = {} if attention_mask is None else {"attention_mask": attention_mask}
    if not supports(view, fwd_hooks):
        if past is not None or start is not None or capture is not None:
            raise ValueError("a cached prefix, a start layer or a residual capture needs the Hugging Face path")
        return handle.bridge.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks), **kwargs)
    kwargs.update(_positions(attention_mask, 0 if past is None else past.length))
    if past is not None:
        kwargs[_cache_kwarg(view.model.base_model)] = past.cache_for(tokens.shape[0], view.model.config)
        tokens = tokens[:, past.length :]
    handles = []
    try:
        for name, fn in fwd_hooks:
            m = _HOOK_Z.match(name)
            if m:
                handles.append(view.out_proj[int(m.group(1))].register_forward_pre_hook(_pre(fn)))
            else:
                handles.append(view.final_norm.register_forward_hook(_post(fn)))
        handles += _layer_hooks(view, start, capture)
        body = view.model.base_model
        out = body(input_ids=tokens.to(view.lm_head.weight.device), use_cache=past is not None, **kwargs)
        return view.lm_head(out.last_hidden_state) if logits else None
    finally:
        for h in reversed(handles):
            h.remove()


class _Skipped:
    """A decoder layer that does not run: it hands its input on (restored by :meth:`remove`)."""

    def __init__(self, layers: Any, i: int) -> None:
        self.layers, self.i, self.layer = layers, i, layers[i]
        layers[i] = _passthrough()

    def remove(self) -> None:
        self.layers[self.i] = self.layer


def _passthrough() -> nn.Module:
    """A module whose forward returns its first argument (a decoder layer that does not run)."""
    import torch

    global _PASS
    if _PASS is None:
        class Pass(torch.nn.Module):
            def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # noqa: ARG002
                return hidden_states

        _PASS = Pass
    return _PASS()


_PASS: Any = None


def _layer_hooks(view: HFView, start: tuple[int, Tensor] | None, capture: list[Tensor] | None) -> list[Any]:
    """Handles (with ``remove()``) that skip the layers before ``start``'s and capture each layer's input."""
    if (start is not None or capture is not None) and view.layers is None:
        raise ValueError("this model's view has no decoder layers to start from or capture")
    handles: list[Any] = []
    if capture is not None:
        for layer in view.layers:
            handles.append(layer.register_forward_pre_hook(_grab(capture), with_kwargs=True))
    if start is not None and start[0] > 0:
        s, hidden = start
        handles.append(view.layers[s].register_forward_pre_hook(_put(hidden), with_kwargs=True))
        handles += [_Skipped(view.layers, i) for i in range(s)]
    return handles


def _hidden_of(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _grab(into: list[Tensor]) -> Any:
    def hook(module: Any, args: tuple, kwargs: dict) -> None:  # noqa: ARG001
        into.append(_hidden_of(args, kwargs).detach())

    return hook


def _put(hidden: Tensor) -> Any:
    def hook(module: Any, args: tuple, kwargs: dict) -> Any:  # noqa: ARG001
        h = hidden.to(device=_hidden_of(args, kwargs).device, dtype=_hidden_of(args, kwargs).dtype)
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    return hook


def _positions(attention_mask: Tensor | None, start: int) -> dict[str, Tensor]:
    """Position ids that skip left padding (a padded row's first real token is position 0),
    as the bridge path counts them; from ``start`` on when a cached prefix covers the rest."""
    if attention_mask is None:
        return {}
    pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return {"position_ids": pos[:, start:]}


def _cache_kwarg(body: Any) -> str:
    """The name the model's forward takes its key/value cache under (newer transformers: ``cache``)."""
    import inspect

    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class Prefix:
    """Per-layer keys and values of the first ``length`` positions of r rows."""

    length: int
    keys_values: tuple[tuple[Any, Any], ...]

    def cache_for(self, rows: int, config: Any) -> Any:
        """A fresh cache for ``rows`` rows (a multiple of r: the r rows tiled circuit-major)."""
        from transformers import DynamicCache

        r = self.keys_values[0][0].shape[0]
        if rows % r:
            raise ValueError(f"{rows} rows are not a multiple of the prefix's {r}")
        reps = rows // r
        data = [(k.repeat(reps, 1, 1, 1), v.repeat(reps, 1, 1, 1)) for k, v in self.keys_values]
        return DynamicCache(ddp_cache_data=data, config=config)


def prefix_keys_values(handle: ModelHandle, tokens: Tensor, attention_mask: Tensor | None = None) -> Prefix | None:
    """Run the unhooked model over ``tokens`` (the shared first positions) and keep its cache; None without a view."""
    view = hf_view(handle)
    if view is None or tokens.shape[1] < 1:
        return None
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask, **_positions(attention_mask, 0)}
    out = view.model.base_model(input_ids=tokens.to(view.lm_head.weight.device), use_cache=True, **kwargs)
    cache = out.past_key_values
    kv = tuple((layer.keys, layer.values) for layer in cache.layers)
    return Prefix(int(tokens.shape[1]), kv)


def run_keeping_prefix(handle: ModelHandle, tokens: Tensor, fwd_hooks: Sequence[tuple[str, Any]], positions: Tensor,
                       length: int, *, attention_mask: Tensor | None = None) -> tuple[Tensor, Prefix | None]:
    """:func:`run_hooked` on the Hugging Face path (``hook_z`` hooks only), returning the logits at
    ``positions`` and the keys and values of the first ``length`` positions (None for 0): the pass
    that also yields a :func:`prefix_keys_values` of its rows without a pass of its own."""
    view = hf_view(handle)
    if view is None or not supports(view, fwd_hooks) or any(not _HOOK_Z.match(n) for n, _ in fwd_hooks):
        raise ValueError("run_keeping_prefix needs the Hugging Face path and hook_z hooks only")
    kwargs: dict[str, Any] = {} if attention_mask is None else {"attention_mask": attention_mask,
                                                                **_positions(attention_mask, 0)}
    handles = [view.out_proj[int(_HOOK_Z.match(name).group(1))].register_forward_pre_hook(_pre(fn))
               for name, fn in fwd_hooks]
    try:
        out = view.model.base_model(input_ids=tokens.to(view.lm_head.weight.device), use_cache=length > 0, **kwargs)
    finally:
        for h in handles:
            h.remove()
    logits = view.lm_head(out.last_hidden_state[:, positions.to(out.last_hidden_state.device)])
    if length < 1:
        return logits, None
    kv = tuple((layer.keys[:, :, :length], layer.values[:, :, :length]) for layer in out.past_key_values.layers)
    return logits, Prefix(length, kv)


def _pre(fn: Any) -> Any:
    def hook(module: Any, args: tuple) -> Any:  # noqa: ARG001
        new = fn(args[0], None)
        return None if new is None else (new, *args[1:])

    return hook


def _post(fn: Any) -> Any:
    def hook(module: Any, args: tuple, output: Any) -> Any:  # noqa: ARG001
        return fn(output, None)

    return hook
