"""The paper's Appendix G negatives: activation-level contrasts of heads that write vs heads kept silent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import SAEConfig, ScoringConfig
from ..errors import CircuitscanError
from ..methods.sae_codes import SAECodesConfig, discover_from_activations
from ..types import HeadActivations, HeadId
from .tracr_model import (
    component_weights,
)
from .tracr_task import build_tracr_task

if TYPE_CHECKING:
    from torch import Tensor

    from ..methods.sae_codes import Discovery
    from ..models.handle import ModelHandle


# --------------------------------------------------------------------------- Appendix G negatives


def appendix_g_activations(
    model: ModelHandle,
    tokens: Tensor,
    *,
    edit: bool,
    sigma: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> Tensor:
    """Per-head outputs (mean over positions) ``[n, n_heads_total, d_model]``, optionally Appendix-G edited.

    With ``edit``, each head's q, k and v vectors are replaced while the model runs: a
    component whose weight matrix (and bias) is all zero gets Gaussian noise of standard
    deviation ``sigma`` added; a component with a non-zero weight is set to zero.
    Without ``edit`` this is :func:`circuitscan.activations.head_outputs` on ``tokens``.
    """
    import torch

    if sigma < 0:
        raise CircuitscanError(f"sigma must be >= 0, got {sigma}")
    layout = model.layout
    n_heads = layout.n_heads
    parts = component_weights(model)
    zero_w = {
        kind: torch.tensor(
            [
                [not parts[HeadId(layer, h)][kind] for h in range(n_heads)]
                for layer in range(layout.n_layers)
            ]
        )
        for kind in ("q", "k", "v")
    }
    w_o = model.bridge.W_O.detach()  # [L, H, d_head, d_model]
    n = tokens.shape[0]
    out = torch.empty(n, layout.n_total, model.d_model)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, int] = {}

    def editor(kind: str, layer: int):
        def hook(x: Tensor, hook) -> Tensor:  # x: [b, pos, H, d_head]
            zero = zero_w[kind][layer][None, None, :, None].to(x.device)
            noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype) * sigma
            return torch.where(zero, x + noise, torch.zeros_like(x))

        return hook

    def capture(layer: int):
        def hook(z: Tensor, hook) -> Tensor:
            zz = z if z.ndim == 4 else z.reshape(z.shape[0], z.shape[1], n_heads, -1)
            res = torch.einsum("bhd,hdm->bhm", zz.mean(1).to(w_o.dtype), w_o[layer])
            out[state["lo"] : state["hi"], layer * n_heads : (layer + 1) * n_heads] = res.float()
            return z

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", capture(layer)) for layer in range(layout.n_layers)]
    if edit:
        hooks = [
            (f"blocks.{layer}.attn.hook_{kind}", editor(kind, layer))
            for layer in range(layout.n_layers)
            for kind in ("q", "k", "v")
        ] + hooks
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            state["lo"], state["hi"] = lo, min(n, lo + batch_size)
            model.bridge.run_with_hooks(tokens[lo : lo + batch_size], fwd_hooks=hooks)
    return out


def appendix_g_head_activations(
    model: ModelHandle, n: int = 250, *, seed: int = 0, sigma: float = 1.0, batch_size: int = 64
) -> HeadActivations:
    """Appendix G's data: ``n`` random inputs (positives) and the same inputs run edited (negatives)."""
    import torch

    prompts = build_tracr_task(model, n, seed=seed, negative="random")
    pos = appendix_g_activations(model, prompts.positive, edit=False, batch_size=batch_size)
    neg = appendix_g_activations(
        model, prompts.positive, edit=True, sigma=sigma, seed=seed, batch_size=batch_size
    )
    labels = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return HeadActivations(
        x=torch.cat([pos, neg]), labels=labels, layout=model.layout, aggregation="mean"
    )


def appendix_g_config(seed: int = 0) -> SAECodesConfig:
    """The paper's Appendix G protocol: SAE trained on 10 examples drawn at random from the
    pooled positives and negatives, codes counted on all examples."""
    return SAECodesConfig(
        sae=SAEConfig(balanced=False, seed=seed), scoring=ScoringConfig(count_on="all")
    )


def appendix_g_discover(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    sigma: float = 1.0,
    cfg: SAECodesConfig | None = None,
) -> Discovery:
    """sae-codes on Appendix G's activation-level negatives (default: :func:`appendix_g_config`)."""
    acts = appendix_g_head_activations(model, n, seed=seed, sigma=sigma)
    return discover_from_activations(acts, cfg or appendix_g_config(seed), paired=True)
