"""Per-head outputs, aggregated over positions inside the hook, batch by batch.

A head's output into the residual stream is ``z_h @ W_O^h`` (TransformerLens's
``hook_result``). Because that map is linear, the mean over positions of the output
equals the mean of ``z_h`` mapped through ``W_O^h``; so the hook aggregates ``z``
([batch, pos, heads, d_head], small) first and multiplies by ``W_O`` once per example,
never materialising [batch, pos, heads, d_model]. The forward pass is aborted right
after the last layer's ``z`` is seen: the last attention output projection, the last
MLP, the final norm and the unembedding are never computed.

Where the model is a Hugging Face model (``smollm2-135m``, ``gpt2-random``, local
directories), z comes from a forward pre-hook on each attention output projection of
the unwrapped Hugging Face module tree (:mod:`circuitscan.models.hf`), all heads of a
layer at once, without the bridge's hook points; TransformerLens's ``hook_z`` serves
every other model. Both give the same values (``tests/test_models_activations.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CircuitscanError
from .models.hf import run_hooked
from .progress import bar
from .types import HeadActivations, PromptSet

if TYPE_CHECKING:
    import torch

    from .models import ModelHandle

AGGREGATIONS = ("mean", "last", "mean+last", "all")
"""Over positions: the mean over real tokens (the paper), the last position, both side by side
(``x[e, 0]`` mean, ``x[e, 1]`` last: two codes per head, scored together), or every position."""

SLOTTED = ("mean+last", "all")
"""Aggregations that keep a slot axis: ``x`` is [examples, slots, heads, d_model]."""


class _StopForward(Exception):
    """Raised inside the last hook to end the forward pass early."""


def _aggregate(z: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """[b, p, h, d] -> [b, h, d] (mean / last), [b, 2, h, d] (mean+last) or [b, p, h, d] (all)."""
    if how == "mean+last":
        import torch

        return torch.stack([_aggregate(z, mask, "mean"), _aggregate(z, mask, "last")], dim=1)
    if how == "all":
        return z if mask is None else z * mask[:, :, None, None].to(z.dtype)
    if mask is None:
        return z.mean(1) if how == "mean" else z[:, -1]
    m = mask.to(z.dtype)
    if how == "mean":
        return (z * m[:, :, None, None]).sum(1) / m.sum(1).clamp_min(1)[:, None, None]
    # last real token: padding is on the left, so the last position is real
    return z[:, -1]


def _make_hook(layer: int, layout, w_o: torch.Tensor, out: torch.Tensor, z_out: torch.Tensor, state: dict,
               aggregation: str):
    """The hook on layer ``layer``'s z: aggregate, map through ``w_o`` [H, d_head, d_model],
    write rows ``state["lo"]:state["hi"]`` of ``out`` (and the aggregated z to ``z_out``)."""
    import torch

    n_heads = layout.n_heads
    cols = slice(layer * n_heads, (layer + 1) * n_heads)

    def hook(z_in: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
        z = z_in
        if z.ndim == 3:  # concatenated heads (the Hugging Face path, some adapters)
            z = z.reshape(z.shape[0], z.shape[1], n_heads, -1)
        agg = _aggregate(z, state.get("mask"), aggregation).to(w_o.dtype)
        res = torch.einsum("...hd,hdm->...hm", agg, w_o)
        out[state["lo"]:state["hi"], ..., cols, :] = res.float()
        z_out[state["lo"]:state["hi"], ..., cols, :] = agg.float()
        if layer == layout.n_layers - 1:
            raise _StopForward
        return z_in

    return hook


def head_outputs(
    model: ModelHandle,
    prompts: PromptSet,
    *,
    aggregation: str = "mean",
    batch_size: int = 64,
    progress: bool | None = None,
) -> HeadActivations:
    """Run ``model`` over every prompt and return per-head outputs.

    Args:
        model: a loaded model.
        prompts: positives and negatives of one task, equal lengths.
        aggregation: ``"mean"`` over real tokens (the paper), ``"last"`` position,
            ``"mean+last"`` (both: x is [examples, 2, heads, d_model]) or ``"all"``
            positions kept ([examples, seq, heads, d_model]).
        batch_size: prompts per forward pass.
        progress: show a progress bar (default: on a terminal, for long runs).

    Returns:
        :class:`HeadActivations` with positives first, then negatives.
    """
    import torch

    if aggregation not in AGGREGATIONS:
        raise CircuitscanError(f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    if batch_size < 1:
        raise CircuitscanError(f"batch_size must be >= 1, got {batch_size}")
    tokens, labels = prompts.all_tokens()
    masks = prompts.all_masks()
    layout = model.layout
    n, seq = tokens.shape
    vocab = int(model.bridge.cfg.d_vocab)
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise CircuitscanError(
            f"task {prompts.task!r} has token ids outside the model's vocabulary 0..{vocab - 1}"
        )
    n_layers, d_model = layout.n_layers, model.d_model
    slots = {"mean+last": (2,), "all": (seq,)}.get(aggregation, ())
    out = torch.empty((n, *slots, layout.n_total, d_model), dtype=torch.float32)
    state: dict[str, object] = {}
    w_o = model.bridge.W_O.detach()  # [L, H, d_head, d_model]
    z_out = torch.empty((n, *slots, layout.n_total, w_o.shape[-2]), dtype=torch.float32)
    hooks = [(model.hook_z(layer), _make_hook(layer, layout, w_o[layer], out, z_out, state, aggregation))
             for layer in range(n_layers)]
    n_batches = (n + batch_size - 1) // batch_size
    show = progress if progress is not None else None
    with torch.inference_mode(), bar("caching head outputs", n_batches, show=show if n_batches > 4 else False) as advance:
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            state["lo"], state["hi"] = lo, hi
            state["mask"] = None if masks is None else masks[lo:hi]
            try:
                run_hooked(model, tokens[lo:hi], hooks, attention_mask=state["mask"], logits=False)
            except _StopForward:
                pass
            advance()
    if not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).reshape(n, -1).any(-1).nonzero().flatten().tolist()
        raise CircuitscanError(
            f"model {model.spec!r} produced non-finite head outputs on {len(bad)} prompt(s) "
            f"(first: example {bad[0]}); check the model weights and the prompts"
        )
    return HeadActivations(x=out, labels=labels, layout=layout, aggregation=aggregation, z=z_out,
                           w_o=w_o.reshape(-1, *w_o.shape[-2:]).float())
