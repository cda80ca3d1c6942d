"""Standard SAEs on sublayers (residual stream, attention output, MLP output), trained
streamed and batched on an offline corpus; saved as one safetensors file per site.

The SAE is :class:`circuitscan.sae.SparseAutoencoder` (z = ReLU((x - b) W_E + b_E),
x_hat = z W_D + b, unit-norm dictionary atoms). Training, for every site at once:

* the corpus (:mod:`.corpus`) is run through the model batch by batch, stopping after the
  last site; the activations of ``buffer_batches`` forward batches are pooled, shuffled
  and consumed ``buffer_epochs`` times in minibatches of ``batch_rows`` rows, then the pool
  is refilled (reusing each pool a few times makes the model's forward passes, the
  expensive part on a CPU, go further);
* the first ``skip_positions`` positions of every chunk are left out (position 0 carries
  the attention sink, whose norm is many times the others');
* inputs are scaled so that their mean squared norm is ``d_model`` (one scalar per site,
  estimated on the first pool); after training the scale is folded into the biases, so the
  saved SAE reads and writes the model's own units and its atoms keep unit norm;
* loss per row: ||x - x_hat||^2 + l1 * sum(z) (in scaled units), Adam; the gradient of
  each atom is projected off the atom and atoms are renormalised after each step; the l1
  weight ramps up linearly over the first ``l1_warmup`` of training;
* features that have not fired for ``dead_window`` tokens are dead; at the fractions
  ``resample_at`` of training, dead features are re-initialised towards inputs the SAE
  reconstructs worst (Bricken et al. 2023's resampling, simplified).

Saved metrics per site: the training curves (MSE, fraction of variance unexplained, L0,
dead fraction), and on held-out chunks the same plus next-token cross-entropy with the
site replaced by its reconstruction, against the clean model and against the site
mean-ablated ("loss recovered").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._version import __version__
from ..errors import CircuitscanError, TrainingError
from ..models.handle import ModelHandle
from ..progress import bar
from ..sae.model import SparseAutoencoder
from .corpus import Corpus
from .interpret import top_contexts
from .sae_eval import evaluate_saes, site_rows
from .saes import FORMAT, SublayerSAEConfig, SublayerSAEs
from .sites import Site, capture_sites, check_sites_exist, parse_sites

# --------------------------------------------------------------------------- training


@dataclass
class _SiteState:
    site: Site
    sae: SparseAutoencoder
    opt: torch.optim.Optimizer
    scale: float
    last_fired: Tensor  # [F] token counter at which each feature last fired
    log: dict[str, list[float]] = field(default_factory=dict)
    acc: dict[str, float] = field(default_factory=dict)
    resampled: list[int] = field(default_factory=list)


def _init_sae(d: int, n: int, mean: Tensor, g: torch.Generator) -> SparseAutoencoder:
    sae = SparseAutoencoder(d, n)
    with torch.no_grad():
        w = torch.randn(n, d, generator=g)
        sae.W_D.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_E.copy_(sae.W_D.T)
        sae.b.copy_(mean)
    return sae


def _step(st: _SiteState, x: Tensor, l1: float) -> dict[str, float]:
    sae = st.sae
    z = sae.encode(x)
    r = sae.decode(z) - x
    sq = r.square().sum(-1)
    loss = sq.mean() + l1 * z.sum(-1).mean()
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        w, gw = sae.W_D, sae.W_D.grad
        gw.sub_((gw * w).sum(1, keepdim=True) * w)  # keep atoms on the unit sphere
    st.opt.step()
    with torch.no_grad():
        sae.W_D.div_(sae.W_D.norm(dim=1, keepdim=True).clamp_min(1e-12))
        var = (x - x.mean(0)).square().sum()
        return {
            "mse": float(sq.mean()),
            "fvu": float(sq.sum() / var.clamp_min(1e-12)),
            "l0": float((z > 0).float().sum(-1).mean()),
            "fired": (z > 0).any(0),  # type: ignore[dict-item]
        }


def _resample(st: _SiteState, x: Tensor, dead: Tensor, g: torch.Generator) -> int:
    """Point dead features at inputs the SAE reconstructs worst; reset their Adam state."""
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    sae = st.sae
    with torch.no_grad():
        err = (sae.decode(sae.encode(x)) - x).square().sum(-1)
        if float(err.sum()) <= 0:
            return 0
        rows = torch.multinomial(err.square() / err.square().sum(), idx.numel(), replacement=True, generator=g)
        v = x[rows] - sae.b
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead
        enc_norm = float(sae.W_E[:, alive].norm(dim=0).mean()) if bool(alive.any()) else 1.0
        sae.W_D[idx] = v
        sae.W_E[:, idx] = v.T * 0.2 * enc_norm
        sae.b_E[idx] = 0.0
        for p, sl in ((sae.W_D, (idx,)), (sae.W_E, (slice(None), idx)), (sae.b_E, (idx,))):
            state = st.opt.state.get(p)
            if state:
                state["exp_avg"][sl] = 0.0
                state["exp_avg_sq"][sl] = 0.0
    return int(idx.numel())


@dataclass
class _Stream:
    """The training chunks in shuffled order, one model batch at a time (reshuffled each epoch)."""

    chunks: Tensor
    batch: int
    g: torch.Generator
    order: Tensor = field(init=False)
    cursor: int = 0
    epochs: int = 0

    def __post_init__(self) -> None:
        self.order = torch.randperm(self.chunks.shape[0], generator=self.g)

    def next(self) -> Tensor:
        if self.cursor + self.batch > self.order.numel():
            self.order = torch.randperm(self.chunks.shape[0], generator=self.g)
            self.cursor = 0
            self.epochs += 1
        idx = self.order[self.cursor : self.cursor + self.batch]
        self.cursor += self.batch
        return self.chunks[idx]


def _fill_pool(model: ModelHandle, stream: _Stream, sites: list[Site], cfg: SublayerSAEConfig) -> dict[str, Tensor]:
    """Each site's activation rows of ``buffer_batches`` forward batches."""
    pool: dict[str, list[Tensor]] = {s.name: [] for s in sites}
    with torch.no_grad():
        for _ in range(cfg.buffer_batches):
            acts = capture_sites(model, stream.next(), sites)
            for s in sites:
                pool[s.name].append(site_rows(acts[s.name], cfg.skip_positions))
    return {k: torch.cat(v) for k, v in pool.items()}


def _init_states(sites: list[Site], buffers: dict[str, Tensor], cfg: SublayerSAEConfig,
                 g: torch.Generator) -> dict[str, _SiteState]:
    """One fresh SAE per site, its input scale estimated on the first pool."""
    states = {}
    for s in sites:
        x = buffers[s.name]
        if not torch.isfinite(x).all():
            raise TrainingError(f"site {s.name}: the model's activations contain NaN or inf")
        scale = math.sqrt(x.shape[1] / float(x.square().sum(1).mean().clamp_min(1e-12)))
        sae = _init_sae(x.shape[1], cfg.n_features, (x * scale).mean(0), g)
        states[s.name] = _SiteState(
            site=s, sae=sae, opt=torch.optim.Adam(sae.parameters(), lr=cfg.lr), scale=scale,
            last_fired=torch.zeros(cfg.n_features, dtype=torch.long),
            log={k: [] for k in ("step", "tokens", "mse", "fvu", "l0", "dead_fraction", "l1")},
        )
    return states


@dataclass
class _Schedule:
    """When to stop, resample, call a feature dead and log; the l1 ramp."""

    cfg: SublayerSAEConfig
    total_steps: int
    log_every: int
    on_log: Callable[[int, dict[str, Any]], None] | None
    resample_steps: set[int] = field(init=False)
    dead_steps: int = field(init=False)
    step: int = 0
    tokens_seen: int = 0

    def __post_init__(self) -> None:
        self.resample_steps = {max(1, int(f * self.total_steps)) for f in self.cfg.resample_at}
        self.dead_steps = max(1, self.cfg.dead_window // self.cfg.batch_rows)

    def l1(self) -> float:
        warm = self.cfg.l1_warmup * self.total_steps
        return self.cfg.l1 * min(1.0, (self.step + 1) / warm) if warm >= 1 else self.cfg.l1


def _site_step(st: _SiteState, x: Tensor, l1: float, sched: _Schedule, g: torch.Generator) -> None:
    """One optimiser step of one site's SAE: the dead-feature bookkeeping, resampling and logging."""
    step = sched.step
    out = _step(st, x, l1)
    if not math.isfinite(out["mse"]):
        raise TrainingError(f"site {st.site.name}: SAE training diverged at step {step}; lower --lr (now {sched.cfg.lr})")
    st.last_fired[out.pop("fired")] = step
    for k, v in out.items():
        st.acc[k] = st.acc.get(k, 0.0) + v
    st.acc["n"] = st.acc.get("n", 0.0) + 1
    if step in sched.resample_steps:
        dead = (step - st.last_fired) >= min(sched.dead_steps, step)
        st.resampled.append(_resample(st, x, dead, g))
    if step % sched.log_every == 0 or step == sched.total_steps:
        n = st.acc.pop("n")
        dead_steps = sched.dead_steps
        dead_frac = float(((step - st.last_fired) >= dead_steps).float().mean()) if step >= dead_steps else float("nan")
        entry = {"step": step, "tokens": sched.tokens_seen, "l1": l1, "dead_fraction": dead_frac,
                 **{k: st.acc[k] / n for k in ("mse", "fvu", "l0")}}
        for k, v in entry.items():
            st.log[k].append(v)
        st.acc.clear()
        if sched.on_log is not None:
            sched.on_log(step, {"site": st.site.name, **entry})


def _train_on_pool(states: dict[str, _SiteState], buffers: dict[str, Tensor], sched: _Schedule,
                   g: torch.Generator, advance: Callable[[], None]) -> None:
    """``buffer_epochs`` shuffled passes over one pool in minibatches, every site stepping alike."""
    cfg = sched.cfg
    n_rows = min(b.shape[0] for b in buffers.values())
    perm = torch.cat([torch.randperm(n_rows, generator=g) for _ in range(cfg.buffer_epochs)])
    for lo in range(0, perm.numel() - cfg.batch_rows + 1, cfg.batch_rows):
        if sched.step >= sched.total_steps:
            break
        rows = perm[lo : lo + cfg.batch_rows]
        l1 = sched.l1()
        sched.step += 1
        sched.tokens_seen += cfg.batch_rows
        for st in states.values():
            _site_step(st, buffers[st.site.name][rows] * st.scale, l1, sched, g)
        advance()


def _check_training_input(model: ModelHandle, sites: list[Site]) -> None:
    if not sites:
        raise CircuitscanError("give at least one site to train an SAE on")
    parse_sites([s.name for s in sites], model.layout.n_layers)
    check_sites_exist(sites, model.bridge.hook_dict, model.spec)


def _add_training_metrics(metrics: dict[str, dict[str, Any]], states: dict[str, _SiteState]) -> None:
    """Each site's input scale, resampled counts and last logged training numbers."""
    for name, st in states.items():
        m = metrics.setdefault(name, {})
        m["scale"] = st.scale
        m["resampled"] = st.resampled
        m["final_train"] = {k: st.log[k][-1] for k in ("mse", "fvu", "l0", "dead_fraction") if st.log[k]}


def train_sublayer_saes(
    model: ModelHandle,
    corpus: Corpus,
    sites: list[Site],
    cfg: SublayerSAEConfig | None = None,
    *,
    progress: bool | None = None,
    log_every: int = 20,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
) -> SublayerSAEs:
    """Train one SAE per site on ``corpus`` (streamed, batched); see the module docstring.

    Returns:
        :class:`SublayerSAEs` with metrics, curves and top-activating contexts.
    """
    cfg = cfg or SublayerSAEConfig()
    _check_training_input(model, sites)
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    n_eval = min(cfg.eval_chunks, max(0, corpus.chunks.shape[0] // 5))
    train, held = corpus.split(n_eval) if n_eval > 0 else (corpus, None)
    seq_len = int(train.chunks.shape[1])
    rows_per_chunk = seq_len - cfg.skip_positions
    if rows_per_chunk < 1:
        raise CircuitscanError(f"skip_positions={cfg.skip_positions} leaves no positions of {seq_len}-token chunks")
    sched = _Schedule(cfg, max(1, cfg.train_tokens // cfg.batch_rows), log_every, on_log)
    states: dict[str, _SiteState] = {}
    stream = _Stream(train.chunks, cfg.model_batch, g)
    timings = {"model_forward": 0.0, "sae_steps": 0.0}
    n_buffers = -(-sched.total_steps * cfg.batch_rows // (cfg.buffer_batches * cfg.model_batch * rows_per_chunk
                                                          * cfg.buffer_epochs))
    if train.chunks.shape[0] < cfg.model_batch:
        raise CircuitscanError(
            f"the training corpus has {train.chunks.shape[0]} chunks, fewer than one model batch "
            f"({cfg.model_batch}); add corpus sources or lower --model-batch"
        )
    was_training = model.bridge.training
    model.bridge.eval()
    with bar("training sublayer SAEs", sched.total_steps, show=progress) as advance:
        while sched.step < sched.total_steps:
            t0 = time.perf_counter()
            buffers = _fill_pool(model, stream, sites, cfg)
            timings["model_forward"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if not states:
                states = _init_states(sites, buffers, cfg, g)
            _train_on_pool(states, buffers, sched, g, advance)
            timings["sae_steps"] += time.perf_counter() - t0
    timings["train"] = time.perf_counter() - t_start
    result = SublayerSAEs(saes={name: _fold_scale(st.sae, st.scale) for name, st in states.items()})
    result.curves = {name: st.log for name, st in states.items()}
    t0 = time.perf_counter()
    metrics = evaluate_saes(model, result, held, cfg) if held is not None else {}
    timings["eval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result.contexts = top_contexts(model, result, corpus.chunks[: cfg.context_chunks], k=cfg.contexts_per_feature,
                                   skip_positions=cfg.skip_positions, batch=cfg.model_batch)
    timings["contexts"] = time.perf_counter() - t0
    _add_training_metrics(metrics, states)
    result.info = {
        "format": FORMAT,
        "circuitscan_version": __version__,
        "model": model.describe(),
        "sites": [s.name for s in sites],
        "hooks": {s.name: s.hook for s in sites},
        "config": asdict(cfg),
        "corpus": {"sources": corpus.source_names, "summary": corpus.summary, "seq_len": seq_len,
                   "train_chunks": int(train.chunks.shape[0]), "eval_chunks": n_eval},
        "training": {"steps": sched.step, "tokens_per_site": sched.tokens_seen,
                     "corpus_epochs": stream.epochs + stream.cursor / max(1, stream.order.numel()),
                     "buffers": n_buffers},
        "metrics": metrics,
        "timings_s": {"total": time.perf_counter() - t_start, "train": timings["train"],
                      "model_forward": timings["model_forward"], "sae_steps": timings["sae_steps"],
                      "eval": timings["eval"], "contexts": timings["contexts"]},
    }
    model.bridge.train(was_training)
    return result


def _fold_scale(sae: SparseAutoencoder, scale: float) -> SparseAutoencoder:
    """The same SAE reading unscaled inputs: biases divided by the scale, atoms unchanged.

    With inputs x * s: z = ReLU((x s - b) W_E + b_E); then z / s = ReLU((x - b/s) W_E + b_E/s)
    and x_hat / s = (z / s) W_D + b/s. Feature activations come out in the model's units.
    """
    out = SparseAutoencoder(sae.d_in, sae.n_features)
    with torch.no_grad():
        out.W_E.copy_(sae.W_E)
        out.W_D.copy_(sae.W_D)
        out.b_E.copy_(sae.b_E / scale)
        out.b.copy_(sae.b / scale)
    out.requires_grad_(False)
    return out


__all__ = ["evaluate_saes", "train_sublayer_saes"]
