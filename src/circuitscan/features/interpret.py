"""Interpretation data per feature: the tokens it promotes and suppresses through the
unembedding, and the corpus contexts where it fires most.

Promoted tokens (a static, weights-only view, the "logit lens" on the feature's atom):
every site here writes into the residual stream (``attn.L`` and ``mlp.L`` are added to
it, ``resid.L`` is it), so a feature with atom ``v`` moves the final logits along
``norm(v) @ W_U``, where ``norm`` applies the final normalisation's elementwise weight
(and, for LayerNorm, its centring), ignoring the per-position scale. The tokens with
the largest entries are promoted, those with the smallest suppressed. The effect of a
feature *in one forward pass* (which can differ, since later layers read the feature
too) is measured by ablation (:mod:`.ablate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import CircuitscanError
from .sites import capture_sites

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from .saes import SublayerSAEs


def token_text(model: ModelHandle, ids: list[int] | Tensor) -> str:
    """Decode token ids (``<id>`` for models without a tokenizer)."""
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    if model.tokenizer is None:
        return "".join(f"<{i}>" for i in ids)
    return model.tokenizer.decode(ids)


def token_strings(model: ModelHandle, ids: list[int] | Tensor) -> list[str]:
    return [token_text(model, [int(i)]) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]


def unembedding_directions(model: ModelHandle, directions: Tensor) -> Tensor:
    """``[n, d_model]`` residual-stream directions -> ``[n, vocab]`` logit changes.

    Applies the final normalisation's elementwise weight (and LayerNorm's centring) and
    the unembedding; the position-dependent normalisation scale is left out.
    """
    bridge = model.bridge
    v = directions.detach().to(torch.float32)
    norm_type = getattr(bridge.cfg, "normalization_type", None)
    if norm_type in ("LN", "LNPre"):
        v = v - v.mean(-1, keepdim=True)
    comp = getattr(getattr(bridge, "ln_final", None), "_original_component", None)
    weight = getattr(comp, "weight", None)
    if norm_type in ("LN", "RMS") and isinstance(weight, Tensor) and weight.shape == (v.shape[-1],):
        v = v * weight.detach().float()
    w_u = bridge.W_U.detach().float()  # [d_model, vocab]
    if w_u.shape[0] != v.shape[-1]:
        raise CircuitscanError(f"the unembedding has shape {tuple(w_u.shape)}; expected [{v.shape[-1]}, vocab]")
    return v @ w_u


def promoted_tokens(
    model: ModelHandle, directions: Tensor, k: int = 10
) -> list[dict[str, list[list[Any]]]]:
    """For each direction, the ``k`` tokens whose logits it raises and lowers most.

    Returns:
        One ``{"promoted": [[token, logit change], ...], "suppressed": [...]}`` per row.
    """
    if directions.ndim == 1:
        directions = directions[None]
    logits = unembedding_directions(model, directions)
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1)
    bottom = (-logits).topk(k, dim=-1)
    out = []
    for i in range(logits.shape[0]):
        out.append({
            "promoted": [[s, float(v)] for s, v in zip(token_strings(model, top.indices[i]), top.values[i].tolist(), strict=True)],
            "suppressed": [[s, -float(v)] for s, v in zip(token_strings(model, bottom.indices[i]), bottom.values[i].tolist(), strict=True)],
        })
    return out


@torch.no_grad()
def top_contexts(
    model: ModelHandle,
    saes: SublayerSAEs,
    chunks: Tensor,
    *,
    k: int = 5,
    skip_positions: int = 1,
    batch: int = 16,
    left: int = 12,
    right: int = 3,
) -> dict[str, dict[str, list[list[Any]]]]:
    """The ``k`` strongest activations of every feature over ``chunks``, with their text.

    Returns:
        ``{site: {feature index: [[activation, text before, the token, text after], ...]}}``,
        strongest first; features that never fire are left out.
    """
    sites = saes.sites
    if chunks.shape[0] == 0:
        return {s.name: {} for s in sites}
    seq = chunks.shape[1]
    best: dict[str, tuple[Tensor, Tensor]] = {}
    for lo in range(0, chunks.shape[0], batch):
        toks = chunks[lo : lo + batch]
        acts = capture_sites(model, toks, sites)
        for s in sites:
            z = saes[s].encode(acts[s.name])  # [b, T, F]
            z[:, :skip_positions] = 0.0
            flat = z.reshape(-1, z.shape[-1])
            kk = min(k, flat.shape[0])
            vals, idx = flat.topk(kk, dim=0)  # [kk, F]
            rows = idx + lo * seq  # global row = chunk * seq + pos
            if s.name in best:
                pv, pi = best[s.name]
                vals, rows = torch.cat([pv, vals]), torch.cat([pi, rows])
                keep = vals.topk(min(k, vals.shape[0]), dim=0).indices
                vals, rows = vals.gather(0, keep), rows.gather(0, keep)
            best[s.name] = (vals, rows)
    out: dict[str, dict[str, list[list[Any]]]] = {}
    for s in sites:
        vals, rows = best[s.name]
        site_out: dict[str, list[list[Any]]] = {}
        for f in range(vals.shape[1]):
            items = []
            for v, r in zip(vals[:, f].tolist(), rows[:, f].tolist(), strict=True):
                if v <= 0:
                    continue
                c, p = divmod(int(r), seq)
                row = chunks[c]
                items.append([float(v), token_text(model, row[max(0, p - left) : p]), token_text(model, row[p : p + 1]),
                              token_text(model, row[p + 1 : p + 1 + right])])
            if items:
                site_out[str(f)] = items
        out[s.name] = site_out
    return out


def feature_cards(
    model: ModelHandle, saes: SublayerSAEs, nodes: list[tuple[str, int]], *, k: int = 8, contexts: int = 3
) -> dict[str, dict[str, Any]]:
    """Interpretation data for ``(site, feature)`` pairs, keyed ``"site/f<i>"``."""
    by_site: dict[str, list[int]] = {}
    for site, f in nodes:
        by_site.setdefault(site, []).append(int(f))
    out: dict[str, dict[str, Any]] = {}
    for site, feats in by_site.items():
        sae = saes[site]
        toks = promoted_tokens(model, sae.W_D.detach()[torch.tensor(feats)], k=k)
        ctx = saes.contexts.get(site, {}) if isinstance(saes.contexts, dict) else {}
        for f, t in zip(feats, toks, strict=True):
            out[f"{site}/f{f}"] = {**t, "contexts": (ctx.get(str(f)) or [])[:contexts]}
    return out
