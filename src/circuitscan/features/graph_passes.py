"""The attribution graph's forward and backward passes: hooked sites, SAE splits, attention heads' shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import CircuitscanError
from ..sae.model import decode_with, encode_with
from .sites import Site

if TYPE_CHECKING:
    from ..models.handle import ModelHandle


# --------------------------------------------------------------------------- forward passes


@dataclass
class _Pass:
    logits: Tensor
    x: dict[str, Tensor]  # computed site values (pre-intervention), with graph
    handles: dict[str, Tensor]  # total: zero deltas added to each site; leaf: the site outputs
    z: dict[str, Tensor]  # hook_z of attention layers (detached), when asked


def _forward(model: ModelHandle, tokens: Tensor, sites: list[Site], *, mode: str, mask: Tensor | None,
             clean: dict[str, Tensor] | None = None, z_layers: tuple[int, ...] = ()) -> _Pass:
    """One forward pass with a hook at every site.

    ``mode="total"``: the site outputs ``x + delta`` with ``delta`` a zero leaf, so
    gradients at ``delta`` are total derivatives. ``mode="leaf"``: the site outputs a leaf
    holding the clean value, so paths through the site are cut (direct derivatives).
    ``mode="observe"``: nothing changes, activations are recorded detached, no graph is built.
    """
    xs: dict[str, Tensor] = {}
    handles: dict[str, Tensor] = {}
    zs: dict[str, Tensor] = {}

    def make(site: Site):
        def hook(x: Tensor, hook) -> Tensor:  # noqa: ARG001
            xs[site.name] = x
            if mode == "observe":
                xs[site.name] = x.detach()
                return x
            if mode == "total":
                delta = torch.zeros_like(x, requires_grad=True)
                handles[site.name] = delta
                return x + delta
            assert clean is not None
            leaf = clean[site.name].detach().clone().to(x.dtype).requires_grad_(True)
            handles[site.name] = leaf
            return leaf

        return hook

    def make_z(layer: int):
        def hook(z: Tensor, hook) -> Tensor:  # noqa: ARG001
            zs[f"attn.{layer}"] = z.detach()
            return z

        return hook

    fwd = [(s.hook, make(s)) for s in sites] + [(f"blocks.{la}.attn.hook_z", make_z(la)) for la in z_layers]
    kw = {} if mask is None else {"attention_mask": mask}
    with torch.no_grad() if mode == "observe" else torch.enable_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=fwd, **kw)
    missing = [s.name for s in sites if s.name not in xs]
    if missing:
        raise CircuitscanError(f"model {model.spec!r} never reached the hook point(s) of {', '.join(missing)}")
    return _Pass(logits=logits, x=xs, handles=handles, z=zs)


def _baseline_pass(model: ModelHandle, tokens: Tensor, sites: list[Site], mask: Tensor | None,
                   z_layers: tuple[int, ...]) -> _Pass:
    """Site activations (and attention z) of the counterfactual prompts, detached."""
    return _forward(model, tokens, sites, mode="observe", mask=mask, z_layers=z_layers)


def _grad(out: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    gs = torch.autograd.grad(out, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs, strict=True)]


# --------------------------------------------------------------------------- the computation


class _Counter:
    def __init__(self) -> None:
        self.fwd = 0
        self.bwd = 0


def _split(w: dict[str, Tensor], x: Tensor, cov3: Tensor) -> tuple[Tensor, Tensor]:
    """Features and error of ``x`` [b, seq, d], zero at positions the SAE does not cover."""
    f = encode_with(w, x)
    return f * cov3, (x - decode_with(w, f)) * cov3


def _attn_out_bias(model: ModelHandle, dtype) -> dict[int, Tensor]:
    """Each layer's attention output bias (zeros when the model has none)."""
    out = {}
    b_o = getattr(model.bridge, "b_O", None)
    for layer in range(model.layout.n_layers):
        try:
            out[layer] = b_o[layer].detach().to(dtype) if b_o is not None else None
        except (TypeError, IndexError):
            out[layer] = None
    return out


def _head_shares(z: Tensor, w_o: Tensor, b_o: Tensor | None, w: dict[str, Tensor], f: Tensor,
                 c: Tensor, delta: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Two ways to give an attention-output feature's node score to the layer's heads.

    *Encoder side* (exact): where feature i is active, ``f_i = sum_h r_h . W_E[:, i] + const``
    with ``r_h = z_h W_O^h``, so ``n_i = sum_h sum_t (r_h(t) . W_E[:, i]) c_i(t) + const part``.
    Returns ``[n_heads + 1, F]`` (last row: the constant part, from the biases). Heads that
    only feed the encoder through cross-talk weights get shares that the SAE error cancels.

    *Decoder side* (the default head view): at each position, ``|f_i(t) c_i(t)|`` is split
    over the heads in proportion to ``|r_h(t) . W_D[i]|``, how much each head writes along the
    feature's atom. Returns ``[n_heads, F]`` (non-negative).

    With a counterfactual baseline, ``z`` is the difference of the heads' z from the
    baseline run and ``delta`` the features' differences: the decoder-side split uses
    them; the encoder side is not defined (ReLU of a difference) and comes back as zeros.
    """
    if z.ndim == 3:
        z = z.reshape(z.shape[0], z.shape[1], w_o.shape[0], -1)
    z = z.to(w_o.dtype)
    if delta is not None:
        write = torch.einsum("hdm,fm->hdf", w_o, w["W_D"])
        psi = torch.einsum("bthd,hdf->bthf", z, write).abs()
        share = psi / psi.sum(2, keepdim=True).clamp_min(1e-30)
        decoder = (share * (delta * c).abs()[:, :, None, :]).sum((0, 1)).detach()
        encoder = torch.zeros(w_o.shape[0] + 1, f.shape[-1], dtype=decoder.dtype, device=decoder.device)
        return encoder, decoder
    read = torch.einsum("hdm,mf->hdf", w_o, w["W_E"])  # each head's W_O read by each feature's encoder
    phi = torch.einsum("bthd,hdf->bthf", z, read)  # [b, T, H, F]
    active = (f > 0).to(c.dtype)
    weight = (c * active)[:, :, None, :]
    per_head = (phi * weight).sum((0, 1))  # [H, F]
    const_pre = w["b_E"] - w["b"] @ w["W_E"]
    if b_o is not None:
        const_pre = const_pre + b_o @ w["W_E"]
    const = (const_pre * c * active).sum((0, 1))
    encoder = torch.cat([per_head, const[None]], 0).detach()
    del phi
    write = torch.einsum("hdm,fm->hdf", w_o, w["W_D"])  # each head's W_O along each atom
    psi = torch.einsum("bthd,hdf->bthf", z, write).abs()
    share = psi / psi.sum(2, keepdim=True).clamp_min(1e-30)
    decoder = (share * (f * c).abs()[:, :, None, :]).sum((0, 1)).detach()
    return encoder, decoder
