"""``toy-induction``: a 2-layer attention-only transformer trained here to do induction.

The paper's Appendix H studies induction on a pre-trained 2-layer, 8-head
attention-only model (Goldowsky-Dill et al. 2023) that cannot be downloaded here; this
is the stand-in, trained from scratch on CPU and cached, reproducible from its seed.

Model: TL-native, 2 layers x 8 heads, d_model 64 (d_head 8), layer norm, rotary
positions, vocabulary 64, context 32, no BOS (:class:`InductionConfig`).

Data: every training sequence is 32 uniformly random tokens in which a random segment
of 4..16 tokens is copied right after itself, at a random place; the loss is next-token
cross-entropy at every position. Only induction (find the earlier occurrence of the
current token, predict what followed it) lowers the loss on the copied tokens; the
others are unpredictable.

Training: AdamW (lr 3e-3, no weight decay), 50 warm-up steps, the last 30 % of steps
decaying linearly to 5 % of the rate, batch 64, 1,500 steps, one CPU thread (tiny
matrices: more threads only add overhead). Afterwards the model is checked on the
``induction`` task (10 random tokens repeated vs not): its mean loss on the predictable
tokens of the repeat is recorded beside the loss on the same positions of unrepeated
sequences; a model whose repeated loss is not far below the unrepeated one is refused.

Ground truth (``toy-induction``): heads whose induction score is at least
:data:`INDUCTION_THRESHOLD` or whose previous-token score is at least
:data:`PREVIOUS_THRESHOLD` (:mod:`~circuitscan.testbeds.head_scores`), the two halves of
the induction circuit; both scores are saved with the model.

Cache: ``<cache>/testbeds/toy-induction-<hash of the config>/`` holds
``model.safetensors`` and ``config.json`` (training config, TL config, losses,
scores, ground truth, seconds), written atomically; tests and commands train at most
once per machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError, TrainingError
from ..evaluation.metrics import induction_loss
from ..models.handle import ModelHandle
from ..progress import status
from ..tasks.induction import build_induction
from ..types import GroundTruth, HeadId, HeadLayout
from ._native import (
    boot,
    native_state,
    read_cached,
    save_files,
    set_weights,
    testbed_cache,
    write_cached,
)
from .head_scores import head_scores

if TYPE_CHECKING:
    from torch import Tensor


SPEC = "toy-induction"
INDUCTION_THRESHOLD = 0.3
PREVIOUS_THRESHOLD = 0.5
FORMAT_VERSION = 1


@dataclass(frozen=True)
class InductionConfig:
    """Architecture and training of ``toy-induction`` (every field enters the cache key)."""

    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 64
    d_vocab: int = 64
    n_ctx: int = 32
    normalization_type: str = "LN"
    positional_embedding_type: str = "rotary"
    min_segment: int = 4
    max_segment: int = 16
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    decay_fraction: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise CircuitscanError(
                f"toy-induction: d_model must split evenly into heads, got {self}"
            )
        if not 2 <= self.min_segment <= self.max_segment <= self.n_ctx // 2:
            raise CircuitscanError(
                f"toy-induction: need 2 <= min_segment <= max_segment <= n_ctx / 2, got "
                f"{self.min_segment}, {self.max_segment}, {self.n_ctx}"
            )
        if self.d_vocab < 20:
            raise CircuitscanError(
                "toy-induction: the induction task needs a vocabulary of at least 20 tokens"
            )
        if self.steps < 1 or self.batch_size < 1 or not (self.lr > 0 and math.isfinite(self.lr)):
            raise CircuitscanError(
                f"toy-induction: steps, batch_size and lr must be positive, got {self}"
            )

    def tl_config(self) -> dict[str, Any]:
        return dict(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            d_head=self.d_model // self.n_heads,
            d_vocab=self.d_vocab,
            n_ctx=self.n_ctx,
            attn_only=True,
            normalization_type=self.normalization_type,
            positional_embedding_type=self.positional_embedding_type,
            act_fn="gelu",
            seed=self.seed,
        )

    def key(self) -> str:
        text = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def training_batch(cfg: InductionConfig, n: int, generator: Any) -> Tensor:
    """``n`` sequences of ``n_ctx`` random tokens, each with one segment copied right after itself."""
    import torch

    seq = cfg.n_ctx
    x = torch.randint(0, cfg.d_vocab, (n, seq), generator=generator)
    length = torch.randint(cfg.min_segment, cfg.max_segment + 1, (n,), generator=generator)
    start = (torch.rand(n, generator=generator) * (seq - 2 * length + 1).float()).long()
    pos = torch.arange(seq)[None]
    rel = pos - (start + length)[:, None]  # position within the copy
    in_copy = (rel >= 0) & (rel < length[:, None])
    source = (pos - length[:, None]).clamp(0, seq - 1)
    return torch.where(in_copy, x.gather(1, source), x)


def _lr_factor(cfg: InductionConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    decay_steps = max(1.0, cfg.decay_fraction * cfg.steps)
    return min(warm, max(0.05, (cfg.steps - step) / decay_steps))


def train(cfg: InductionConfig, *, log: Any = None) -> tuple[Any, dict[str, Any]]:
    """Train a fresh model; returns (bridge, {"losses": [...], "seconds": s}).

    Randomness comes only from ``cfg.seed`` (initialisation through the TL-native
    config's seed, data through a private generator); torch's global RNG is restored.
    """
    import torch

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            bridge = boot(cfg.tl_config())
        model = bridge.original_model  # the plain module: no hook dispatch in the training loop
        g = torch.Generator().manual_seed(cfg.seed + 1)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        losses: list[float] = []
        model.train()
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, step)
            x = training_batch(cfg, cfg.batch_size, g)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, cfg.d_vocab), x[:, 1:].reshape(-1)
            )
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"toy-induction: the training loss became {loss.item()} at step {step}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 100 == 0 or step == cfg.steps - 1:
                losses.append(round(float(loss.detach()), 5))
                if log is not None:
                    log(f"toy-induction step {step}: loss {losses[-1]:.3f}")
        model.eval()
        bridge.eval()
    finally:
        torch.set_num_threads(threads)
    return bridge, {"losses": losses, "seconds": round(time.perf_counter() - t0, 2)}


def handle(bridge: Any, cfg: InductionConfig, info: dict[str, Any]) -> ModelHandle:
    return ModelHandle(
        bridge=bridge,
        spec=SPEC,
        family=SPEC,
        layout=HeadLayout(cfg.n_layers, cfg.n_heads),
        tokenizer=None,
        prepend_bos=False,
        info=info,
    )


def induction_losses(model: ModelHandle, *, n: int = 200, seed: int = 12345) -> dict[str, float]:
    """Mean loss on the predictable tokens of the ``induction`` task: repeated vs unrepeated."""
    import torch

    prompts = build_induction(model, n, seed=seed)
    mask = torch.zeros(prompts.positive.shape)
    mask[:, prompts.metadata["loss_positions"]] = 1.0
    with torch.inference_mode():
        rep = induction_loss(model.bridge(prompts.positive), prompts.positive, mask).mean()
        unrep = induction_loss(model.bridge(prompts.negative), prompts.negative, mask).mean()
    return {
        "repeated": round(float(rep), 5),
        "unrepeated": round(float(unrep), 5),
        "n": n,
        "seed": seed,
    }


def reference_heads(scores: Any) -> dict[str, list[str]]:
    """The ground-truth classes from head scores (thresholds in the module docstring)."""
    ind = scores.above("induction", INDUCTION_THRESHOLD)
    prev = [h for h in scores.above("previous_token", PREVIOUS_THRESHOLD) if h not in set(ind)]
    return {"induction": [h.name for h in ind], "previous token": [h.name for h in prev]}


def cache_path(cfg: InductionConfig) -> Path:
    return testbed_cache() / f"{SPEC}-{cfg.key()}"


def load_induction_model(
    cfg: InductionConfig | None = None, *, device: str = "cpu", log: Any = None
) -> ModelHandle:
    """``toy-induction``: loaded from the cache, or trained (about a minute) and cached first."""
    cfg = cfg or InductionConfig()
    path = cache_path(cfg)
    cached = read_cached(path)
    if cached is None:
        with status(f"training toy-induction once (cached in {path})"):
            bridge, trained = train(cfg, log=log)
            model = handle(bridge, cfg, {})
            losses = induction_losses(model)
            if not losses["repeated"] < 0.5 * losses["unrepeated"]:
                raise TrainingError(
                    f"toy-induction did not learn induction: loss {losses['repeated']:.3f} on repeated tokens vs "
                    f"{losses['unrepeated']:.3f} on unrepeated ones; train longer (steps > {cfg.steps})"
                )
            scores = head_scores(model, n=50, length=10, seed=1)
            import torch

            config = {
                "testbed": SPEC,
                "training": asdict(cfg),
                "tl_config": cfg.tl_config(),
                "train": trained,
                "induction_task_loss": losses,
                "head_scores": scores.to_dict(),
                "ground_truth": reference_heads(scores),
                "thresholds": {
                    "induction": INDUCTION_THRESHOLD,
                    "previous_token": PREVIOUS_THRESHOLD,
                },
                "format_version": FORMAT_VERSION,
                "torch_version": torch.__version__,
            }
            weights = native_state(bridge)
            write_cached(path, lambda tmp: save_files(tmp, weights, config))
        cached = read_cached(path)
        if cached is None:  # pragma: no cover
            raise CircuitscanError(
                f"the cached toy-induction model {path} disappeared while loading"
            )
    weights, config = cached
    bridge = boot(config["tl_config"])
    set_weights(bridge, weights, what=f"toy-induction model {path}")
    bridge.eval()
    if str(device) != "cpu":
        bridge.to(device)
    info = {
        "path": str(path),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "induction_task_loss": config["induction_task_loss"],
        "ground_truth": config["ground_truth"],
        "train_seconds": config["train"]["seconds"],
    }
    return handle(bridge, cfg, info)


def ground_truth(model: ModelHandle) -> GroundTruth:
    """The saved reference circuit of ``toy-induction`` (induction and previous-token heads)."""
    if model.family != SPEC or "ground_truth" not in model.info:
        raise CircuitscanError(
            f"ground truth {SPEC!r} belongs to model {SPEC!r}, not {model.spec!r}"
        )
    classes = {
        k: tuple(HeadId.parse(h) for h in v) for k, v in model.info["ground_truth"].items() if v
    }
    heads = frozenset(h for hs in classes.values() for h in hs)
    if not heads:
        raise CircuitscanError(
            f"{SPEC}: no head passes the score thresholds; the model has no reference circuit"
        )
    return GroundTruth(
        name=SPEC,
        model=SPEC,
        heads=heads,
        classes=classes,
        source="circuitscan.testbeds.induction: head scores of the trained model",
        notes=f"induction score >= {INDUCTION_THRESHOLD} or previous-token score >= {PREVIOUS_THRESHOLD}",
    )
