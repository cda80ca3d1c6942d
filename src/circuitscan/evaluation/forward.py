"""Plain forward passes: logits at chosen positions (unembedding only those) and per-head z caches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..models.hf import hf_view, run_hooked, supports
from ..precision import resolve_precision

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..models.hf import Prefix


_UNEMBED_IN = "unembed.hook_in"

def precision_context(model: ModelHandle, precision: str) -> Any:
    """How passes run: ``fp32`` as loaded, ``bf16``: bfloat16 matrix products (``torch.autocast``;
    norms, softmax and the cached values stay float32), or ``auto`` (:mod:`circuitscan.precision`).
    On CPUs with AVX-512 BF16 the products run about 4x faster; values move by bfloat16 rounding
    (docs/METHODS.md "Speed (issue 14)"). Nested, the inner context decides."""
    import torch

    device = next(model.bridge.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")


class _StopForward(Exception):
    """Raised in the hook before the unembedding, once the residual stream is captured."""


# --------------------------------------------------------------------------- plain forward passes


def resolve_positions(positions: str | int | Sequence[int] | Tensor | None, seq: int) -> Tensor | None:
    """``"last"``, ``"all"``, an index or indices (negative allowed) -> ascending LongTensor; None = all."""
    import torch

    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    if isinstance(positions, str):
        if positions != "last":
            raise CircuitscanError(f"positions must be 'last', 'all' or indices, got {positions!r}")
        return torch.tensor([seq - 1])
    pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    pos = torch.where(pos < 0, pos + seq, pos)
    if pos.numel() == 0 or int(pos.min()) < 0 or int(pos.max()) >= seq:
        raise CircuitscanError(f"positions {positions!r} are outside 0..{seq - 1}")
    return pos


def logits_at(
    model: ModelHandle,
    tokens: Int[Tensor, "b seq"],
    positions: Int[Tensor, " P"] | None,
    *,
    hooks: Sequence[tuple[str, Any]] = (),
    attention_mask: Int[Tensor, "b seq"] | None = None,
    past: Prefix | None = None,
    start: tuple[int, Tensor] | None = None,
    capture: list[Tensor] | None = None,
) -> Float[Tensor, "b P vocab"]:
    """One forward pass with ``hooks``; logits only at ``positions`` (None: all).

    When the bridge exposes ``unembed.hook_in``, the pass stops there and only the
    requested positions are unembedded. Hugging Face models run on their unwrapped
    module tree (:func:`circuitscan.models.hf.run_hooked`) when every hook has a site
    there; the bridge runs the rest. ``past``: a cached prefix (see ``run_hooked``);
    ``positions`` still index the whole sequence and must all lie after it. ``start``,
    ``capture``: the residual stream entering a layer given, or captured (``run_hooked``).
    """
    bridge = model.bridge
    first = 0 if past is None else past.length
    if positions is None or _UNEMBED_IN not in bridge.hook_dict:
        out = run_hooked(model, tokens, hooks, attention_mask=attention_mask, past=past, start=start,
                         capture=capture)
        return out if positions is None else out[:, positions.to(out.device) - first]
    captured: dict[str, Tensor] = {}

    def grab(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        captured["x"] = x[:, positions.to(x.device) - first]
        raise _StopForward

    try:
        run_hooked(model, tokens, [*hooks, (_UNEMBED_IN, grab)], attention_mask=attention_mask, logits=False,
                   past=past, start=start, capture=capture)
    except _StopForward:
        pass
    if "x" not in captured:  # pragma: no cover - an adapter that skips its unembedding hook
        out = run_hooked(model, tokens, hooks, attention_mask=attention_mask, past=past, start=start)
        return out[:, positions.to(out.device) - first]
    view = hf_view(model)
    if supports(view, [*hooks, (_UNEMBED_IN, grab)]):
        return view.lm_head(captured["x"])
    return bridge.unembed(captured["x"])


def split_heads(z: Tensor, n_heads: int) -> Tensor:
    """[b, p, H, d] stays; [b, p, H*d] (concatenated heads) -> [b, p, H, d]. The one
    place a hook's z is split into heads (forward, head_masks, objective use it)."""
    return z if z.ndim == 4 else z.reshape(z.shape[0], z.shape[1], n_heads, -1)


@dataclass(frozen=True)
class HeadCache:
    """Per-head z of every layer (and the logits) on a batch of prompts.

    Attributes:
        z: ``[n, n_layers, seq, n_heads, d_head]``, the input of each layer's output
            projection; None when not kept. In grouped form (``group > 1``, see
            :func:`cache_heads`) only the first ``seq`` positions of one row per group.
        logits: ``[rows, P, vocab]`` at ``positions``, or None when not asked for.
        positions: the positions of ``logits``.
        z_suffix: grouped form only: ``[rows, n_layers, k, n_heads, d_head]``, the
            positions after the shared prefix, for every row.
        group: rows per group that share their first positions (1 = plain).
    """

    z: Float[Tensor, "n layers seq heads d_head"] | None
    logits: Float[Tensor, "n P vocab"] | None
    positions: Int[Tensor, " P"] | None
    z_suffix: Float[Tensor, "rows layers k heads d_head"] | None = None
    group: int = 1

    def full_z(self, rows: Int[Tensor, " r"] | None = None, layer: int | None = None) -> Tensor:
        """z of the given rows (all: None) as ``[r, (layers,) seq, H, d]``, prefix and suffix joined."""
        import torch

        if self.z is None:
            raise ValueError("this cache kept no z")
        n_rows = self.z.shape[0] * self.group
        idx = torch.arange(n_rows) if rows is None else torch.as_tensor(rows)
        base = self.z[idx // self.group] if layer is None else self.z[idx // self.group, layer]
        if self.z_suffix is None:
            return base
        suf = self.z_suffix[idx] if layer is None else self.z_suffix[idx, layer]
        return torch.cat([base, suf], dim=-3)


def cache_heads(
    model: ModelHandle,
    tokens: Int[Tensor, "n seq"],
    *,
    attention_mask: Int[Tensor, "n seq"] | None = None,
    positions: str | Sequence[int] | Tensor | None = "last",
    with_logits: bool = True,
    with_z: bool = True,
    batch_size: int = 64,
    group: int = 1,
    prefix: int | None = None,
) -> HeadCache:
    """Run ``tokens`` through the unablated model, keeping every head's z (and logits).

    Used for the corrupted-prompt cache of ``corrupt`` ablation, for mean ablation and
    by gradient-free baselines (activation patching, ACDC) that need clean and
    corrupted per-head activations.

    Args:
        group, prefix: rows come in groups of ``group`` consecutive rows that share
            their first ``prefix`` tokens (a prompt followed by different suffixes). z
            of the shared positions is then stored once per group (a causal model
            computes the same values there), the rest per row.
    """
    import torch

    n, seq = tokens.shape
    layout = model.layout
    if group < 1 or n % group:
        raise ValueError(f"{n} rows do not split into groups of {group}")
    prefix = seq if group == 1 or prefix is None else prefix
    pos = resolve_positions(positions, seq) if with_logits else None
    shape = (layout.n_layers, layout.n_heads, model.d_head)
    z_out = torch.empty(n // group, shape[0], prefix, *shape[1:]) if with_z else None
    z_suf = torch.empty(n, shape[0], seq - prefix, *shape[1:]) if with_z and prefix < seq else None
    logits_out: list[Tensor] = []
    state: dict[str, int] = {}

    def make_hook(layer: int):
        def hook(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            zz = split_heads(z, layout.n_heads).detach().float()
            lo, hi = state["lo"], state["hi"]
            z_out[lo // group : hi // group, layer] = zz[::group, :prefix]
            if z_suf is not None:
                z_suf[lo:hi, layer] = zz[:, prefix:]
            return z

        return hook

    hooks = [(model.hook_z(layer), make_hook(layer)) for layer in range(layout.n_layers)] if with_z else []
    step = max(1, batch_size // group) * group
    with torch.inference_mode():
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            state["lo"], state["hi"] = lo, hi
            mask = None if attention_mask is None else attention_mask[lo:hi]
            if with_logits:
                logits_out.append(logits_at(model, tokens[lo:hi], pos, hooks=hooks, attention_mask=mask).float())
            else:
                _run_z_only(model, tokens[lo:hi], hooks, mask)
    logits = torch.cat(logits_out) if with_logits else None
    return HeadCache(z=z_out, logits=logits, positions=pos, z_suffix=z_suf, group=group)


def _run_z_only(model: ModelHandle, tokens: Tensor, hooks: list, mask: Tensor | None) -> None:
    """Run until the last layer's z has been seen."""
    last = model.hook_z(model.layout.n_layers - 1)

    def stop(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        raise _StopForward

    try:
        run_hooked(model, tokens, [*hooks, (last, stop)], attention_mask=mask, logits=False)
    except _StopForward:
        pass
