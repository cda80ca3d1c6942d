"""Sublayer SAEs as data: their training config, the trained set, and the SAE directory
(one safetensors file per site plus a JSON index, curves and contexts), written atomically.
Training lives in :mod:`.sae_train`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import CircuitscanError
from ..models.handle import ModelHandle
from ..rundir import RunWriter, read_json
from ..sae.model import SparseAutoencoder
from .sites import Site, check_sites_exist, parse_site, parse_sites

INDEX = "saes.json"
TRAINING = "training.json"
CONTEXTS = "contexts.json"
FORMAT = "circuitscan-sublayer-saes/1"


def weights_file(site: str) -> str:
    return f"sae-{site}.safetensors"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CircuitscanError(msg)


@dataclass(frozen=True)
class SublayerSAEConfig:
    """Training of sublayer SAEs (see the module docstring).

    Attributes:
        n_features: dictionary size per site.
        l1: sparsity weight (inputs scaled to mean squared norm d_model).
        lr: Adam learning rate.
        train_tokens: training rows per site (tokens, after skipped positions, counted
            once per use); the corpus is cycled if it is shorter.
        batch_rows: rows per SAE step.
        buffer_epochs: passes over each pool of activations.
        model_batch: corpus chunks per forward pass.
        buffer_batches: forward batches pooled and shuffled before training on them.
        l1_warmup: fraction of training over which l1 ramps up from 0.
        resample_at: fractions of training at which dead features are re-initialised.
        dead_window: a feature that has not fired for this many tokens is dead.
        skip_positions: leading positions of every chunk left out of training.
        eval_chunks: held-out corpus chunks for the final metrics.
        ce_eval: also measure cross-entropy with each site spliced (full forward passes).
        context_chunks: corpus chunks scanned for top-activating contexts.
        contexts_per_feature: contexts kept per feature.
        seed: all randomness.
    """

    n_features: int = 1024
    l1: float = 2.0
    lr: float = 1e-3
    train_tokens: int = 262_144
    batch_rows: int = 128
    buffer_epochs: int = 4
    model_batch: int = 16
    buffer_batches: int = 8
    l1_warmup: float = 0.05
    resample_at: tuple[float, ...] = (0.25, 0.5)
    dead_window: int = 32_768
    skip_positions: int = 1
    eval_chunks: int = 8
    ce_eval: bool = True
    context_chunks: int = 256
    contexts_per_feature: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.n_features >= 1, f"n_features must be >= 1, got {self.n_features}")
        _check(self.l1 >= 0 and math.isfinite(self.l1), f"l1 must be a finite number >= 0, got {self.l1}")
        _check(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        _check(self.train_tokens >= 1, f"train_tokens must be >= 1, got {self.train_tokens}")
        for name in ("batch_rows", "buffer_epochs", "model_batch", "buffer_batches", "dead_window"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(0 <= self.l1_warmup < 1, f"l1_warmup must be in [0, 1), got {self.l1_warmup}")
        _check(all(0 < f < 1 for f in self.resample_at), f"resample_at fractions must lie in (0, 1), got {self.resample_at}")
        _check(self.skip_positions >= 0, f"skip_positions must be >= 0, got {self.skip_positions}")
        _check(self.eval_chunks >= 0 and self.context_chunks >= 0, "eval_chunks and context_chunks must be >= 0")
        _check(self.contexts_per_feature >= 1, f"contexts_per_feature must be >= 1, got {self.contexts_per_feature}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SublayerSAEConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        if "resample_at" in kw:
            kw["resample_at"] = tuple(kw["resample_at"])
        return cls(**kw)


@dataclass
class SublayerSAEs:
    """Trained SAEs by site, with what they were trained on.

    Attributes:
        saes: ``{site name: SparseAutoencoder}`` in forward order.
        info: the contents of ``saes.json`` (model, corpus, config, metrics).
        contexts: top-activating contexts ``{site: {feature: [[act, left, token, right], ...]}}``.
        curves: training curves ``{site: {metric: [values]}}``.
    """

    saes: dict[str, SparseAutoencoder]
    info: dict[str, Any] = field(default_factory=dict)
    contexts: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def sites(self) -> list[Site]:
        return sorted(parse_site(n) for n in self.saes)

    @property
    def skip_positions(self) -> int:
        """Leading positions the SAEs were not trained on (position 0 carries the attention
        sink). Graphs and ablations leave a site's value there untouched: it is neither a
        feature nor SAE error. 0 for SAEs built by hand."""
        if "skip_positions" in self.info:
            return int(self.info["skip_positions"])
        return int((self.info.get("config") or {}).get("skip_positions", 0))

    def __getitem__(self, site: str | Site) -> SparseAutoencoder:
        name = site.name if isinstance(site, Site) else site
        if name not in self.saes:
            raise CircuitscanError(f"no SAE for site {name}; these SAEs cover {', '.join(self.saes)}")
        return self.saes[name]

    def subset(self, sites: list[Site]) -> SublayerSAEs:
        missing = [s.name for s in sites if s.name not in self.saes]
        if missing:
            raise CircuitscanError(
                f"no SAE for site(s) {', '.join(missing)}; the SAEs cover {', '.join(self.saes)} "
                "(train more with `circuitscan features train --sites ...`)"
            )
        names = [s.name for s in sorted(sites)]
        info = {**self.info, "sites": names}
        return SublayerSAEs({n: self.saes[n] for n in names}, info,
                            {n: v for n, v in self.contexts.items() if n in names},
                            {n: v for n, v in self.curves.items() if n in names})

    def check_model(self, model: ModelHandle) -> None:
        """Raise if these SAEs cannot read ``model``'s activations."""
        d = model.d_model
        for name, sae in self.saes.items():
            if sae.d_in != d:
                raise CircuitscanError(
                    f"the SAE for site {name} reads vectors of size {sae.d_in} but model {model.spec!r} has "
                    f"d_model {d}; use SAEs trained on this model"
                )
        parse_sites(list(self.saes), model.layout.n_layers)
        check_sites_exist(self.sites, model.bridge.hook_dict, model.spec)
        trained_on = (self.info.get("model") or {}).get("family")
        if trained_on and trained_on != model.family:
            raise CircuitscanError(
                f"these SAEs were trained on a {trained_on!r} model, not on {model.spec!r} ({model.family}); "
                "train SAEs for this model with `circuitscan features train`"
            )


# --------------------------------------------------------------------------- save / load


def save_sublayer_saes(saes: SublayerSAEs, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write an SAE directory atomically (index, weights, curves, contexts)."""
    from safetensors.torch import save_file

    with RunWriter(Path(out), overwrite=overwrite) as w:
        for name, sae in saes.saes.items():
            meta = {"site": name, "hook": parse_site(name).hook, "d_in": str(sae.d_in),
                    "n_features": str(sae.n_features), "format": FORMAT}
            tensors = {k: v.detach().contiguous().float().cpu() for k, v in sae.state_dict().items()}
            save_file(tensors, str(w.path(weights_file(name))), metadata=meta)
        w.json(INDEX, saes.info)
        w.json(TRAINING, saes.curves)
        w.json(CONTEXTS, saes.contexts)
        return w.commit()


def load_sublayer_saes(path: str | Path, sites: list[Site] | None = None) -> SublayerSAEs:
    """Read an SAE directory written by :func:`save_sublayer_saes` (or ``features train``)."""
    from safetensors import safe_open

    root = Path(path)
    if not root.is_dir():
        raise CircuitscanError(
            f"SAE directory {str(root)!r} does not exist; train SAEs first with `circuitscan features train --out DIR`"
        )
    if not (root / INDEX).is_file():
        raise CircuitscanError(f"{str(root)!r} is not a circuitscan SAE directory: it has no {INDEX}")
    info = read_json(root / INDEX)
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("sites"), list):
        raise CircuitscanError(f"{str(root / INDEX)!r} is not a {FORMAT} index")
    wanted = [s.name for s in sites] if sites is not None else list(info["sites"])
    saes: dict[str, SparseAutoencoder] = {}
    for name in wanted:
        f = root / weights_file(name)
        if name not in info["sites"] or not f.is_file():
            raise CircuitscanError(f"{str(root)!r} has no SAE for site {name}; it has {', '.join(info['sites'])}")
        with safe_open(str(f), framework="pt") as h:
            meta = h.metadata() or {}
            state = {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118
        try:
            sae = SparseAutoencoder(int(meta["d_in"]), int(meta["n_features"]))
            sae.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CircuitscanError(f"{str(f)!r} is not a valid sublayer SAE file ({exc})") from exc
        sae.requires_grad_(False)
        saes[name] = sae
    order = sorted(parse_site(n) for n in saes)
    saes = {s.name: saes[s.name] for s in order}
    contexts = read_json(root / CONTEXTS) if (root / CONTEXTS).is_file() else {}
    curves = read_json(root / TRAINING) if (root / TRAINING).is_file() else {}
    return SublayerSAEs(saes=saes, info=info, contexts=contexts, curves=curves)


def load_many(paths: str | list[str | Path]) -> SublayerSAEs:
    """Load one or more SAE directories (comma-separated) into one set; sites must not repeat."""
    items = [p for p in (paths.split(",") if isinstance(paths, str) else paths) if str(p).strip()]
    if not items:
        raise CircuitscanError("give at least one SAE directory")
    loaded = [load_sublayer_saes(str(p).strip()) for p in items]
    if len(loaded) == 1:
        return loaded[0]
    saes: dict[str, SparseAutoencoder] = {}
    contexts: dict = {}
    curves: dict = {}
    metrics: dict = {}
    families = {(x.info.get("model") or {}).get("family") for x in loaded}
    if len(families) > 1:
        raise CircuitscanError(f"the SAE directories were trained on different models: {sorted(map(str, families))}")
    for path, x in zip(items, loaded, strict=True):
        clash = set(saes) & set(x.saes)
        if clash:
            raise CircuitscanError(f"site(s) {', '.join(sorted(clash))} appear in more than one SAE directory ({path})")
        saes.update(x.saes)
        contexts.update(x.contexts)
        curves.update(x.curves)
        metrics.update(x.info.get("metrics") or {})
    order = sorted(parse_site(n) for n in saes)
    info = {**loaded[0].info, "sites": [s.name for s in order], "metrics": metrics,
            "directories": [str(p) for p in items], "skip_positions": max(x.skip_positions for x in loaded)}
    return SublayerSAEs({s.name: saes[s.name] for s in order}, info, contexts, curves)


def describe(saes: SublayerSAEs) -> str:
    """One line per site: size and the held-out metrics."""
    lines = []
    for name, sae in saes.saes.items():
        m = (saes.info.get("metrics") or {}).get(name, {})
        parts = [f"{name:<9} {sae.n_features} features"]
        for key, label in (("fvu", "FVU"), ("l0", "L0"), ("dead_fraction_eval", "dead"), ("loss_recovered", "loss recovered")):
            if isinstance(m.get(key), int | float) and math.isfinite(m[key]):
                parts.append(f"{label} {m[key]:.3g}")
        if isinstance(m.get("ce_spliced"), int | float):
            parts.append(f"CE {m['ce_clean']:.3f} -> {m['ce_spliced']:.3f} spliced ({m['ce_mean_ablated']:.3f} mean-ablated)")
        lines.append("  ".join(parts))
    return "\n".join(lines)


def dumps(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=1, default=str)
