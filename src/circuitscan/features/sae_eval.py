"""How well trained sublayer SAEs do on held-out chunks: reconstruction (MSE, fraction of
variance unexplained), sparsity (L0, dead features) and next-token cross-entropy with each
site spliced by its reconstruction, against the clean model and the site mean-ablated."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.handle import ModelHandle
from .corpus import Corpus
from .saes import SublayerSAEConfig, SublayerSAEs
from .sites import capture_sites


def site_rows(acts: Tensor, skip: int, mask: Tensor | None = None) -> Tensor:
    """[b, T, d] -> [rows, d], without the first ``skip`` positions (and masked ones)."""
    a = acts[:, skip:]
    if mask is not None:
        return a[mask[:, skip:].bool()]
    return a.reshape(-1, a.shape[-1])


@torch.no_grad()
def evaluate_saes(
    model: ModelHandle, saes: SublayerSAEs, held: Corpus, cfg: SublayerSAEConfig
) -> dict[str, dict[str, Any]]:
    """Reconstruction, sparsity and (optionally) spliced cross-entropy on held-out chunks."""
    sites = saes.sites
    chunks = held.chunks
    per_site_x: dict[str, list[Tensor]] = {s.name: [] for s in sites}
    for lo in range(0, chunks.shape[0], cfg.model_batch):
        acts = capture_sites(model, chunks[lo : lo + cfg.model_batch], sites)
        for s in sites:
            per_site_x[s.name].append(site_rows(acts[s.name], cfg.skip_positions))
    out: dict[str, dict[str, Any]] = {}
    for s in sites:
        x = torch.cat(per_site_x[s.name])
        sae = saes[s]
        z = sae.encode(x)
        r = sae.decode(z) - x
        fired = (z > 0).any(0)
        out[s.name] = {
            "rows": int(x.shape[0]),
            "mse": float(r.square().sum(-1).mean()),
            "fvu": float(r.square().sum() / (x - x.mean(0)).square().sum().clamp_min(1e-12)),
            "l0": float((z > 0).float().sum(-1).mean()),
            "dead_fraction_eval": float((~fired).float().mean()),
            "mean_norm": float(x.norm(dim=-1).mean()),
        }
        mean = x.mean(0)
        out[s.name]["_mean"] = mean
    if cfg.ce_eval and chunks.shape[0] > 0:
        ce = _spliced_ce(model, saes, chunks, {n: v.pop("_mean") for n, v in out.items()}, cfg)
        for name, v in ce.items():
            out[name].update(v)
    for v in out.values():
        v.pop("_mean", None)
    return out


def _spliced_ce(model, saes: SublayerSAEs, chunks: Tensor, means: dict[str, Tensor], cfg) -> dict[str, dict[str, float]]:
    """Next-token CE: clean; each site -> its reconstruction; each site -> its mean."""
    def ce(logits: Tensor, toks: Tensor) -> Tensor:
        lp = logits[:, cfg.skip_positions : -1].float().log_softmax(-1)
        tgt = toks[:, cfg.skip_positions + 1 :]
        return -lp.gather(-1, tgt[..., None])[..., 0].sum()

    totals: dict[str, float] = {"clean": 0.0}
    n = 0
    for lo in range(0, chunks.shape[0], cfg.model_batch):
        toks = chunks[lo : lo + cfg.model_batch]
        n += toks.shape[0] * (toks.shape[1] - cfg.skip_positions - 1)
        totals["clean"] += float(ce(model.bridge(toks), toks))
        for s in saes.sites:
            sae = saes[s]

            k = cfg.skip_positions  # the positions the SAE was trained on are replaced, the sink is not

            def recon(x, hook, sae=sae, k=k):  # noqa: ARG001
                y = x.clone()
                y[:, k:] = sae.decode(sae.encode(x[:, k:].float())).to(x.dtype)
                return y

            def ablate(x, hook, m=means[s.name], k=k):  # noqa: ARG001
                y = x.clone()
                y[:, k:] = m.to(x.dtype)
                return y

            for tag, fn in (("sae", recon), ("mean", ablate)):
                logits = model.bridge.run_with_hooks(toks, fwd_hooks=[(s.hook, fn)])
                key = f"{s.name}/{tag}"
                totals[key] = totals.get(key, 0.0) + float(ce(logits, toks))
    clean = totals["clean"] / max(n, 1)
    out = {}
    for s in saes.sites:
        ce_sae = totals[f"{s.name}/sae"] / max(n, 1)
        ce_mean = totals[f"{s.name}/mean"] / max(n, 1)
        span = ce_mean - clean
        out[s.name] = {
            "ce_clean": clean,
            "ce_spliced": ce_sae,
            "ce_mean_ablated": ce_mean,
            "loss_recovered": (ce_mean - ce_sae) / span if abs(span) > 1e-9 else float("nan"),
        }
    return out
