"""Interventions on attention heads: run a model with every head outside a circuit ablated.

A head's output into the residual stream is ``z_h @ W_O^h`` (+ a bias shared by all
heads of the layer). The hooks here replace ``z`` (``blocks.{l}.attn.hook_z``, the
input of the output projection) of every ablated head, which replaces exactly that
head's output because the projection is linear. The replacement comes from an
:class:`AblationSource`:

``corrupt``  the head's z on the paired corrupted (negative) prompt, position by
             position (the paper's default: activation patching from the pair);
``mean``     the head's z averaged over all the task's prompts (positives and
             negatives), per position, over real (non-padding) tokens;
``zero``     zero (the head writes only the layer's shared bias, if any).

Batching: many circuits are run in ONE forward pass. Rows are circuit-major: with C
circuits and r prompts the batch holds ``C * r`` rows, row ``c * r + i`` being prompt
``rows[i]`` under circuit ``c``; each hook views z as ``[C, r, pos, H, d_head]`` and
picks clean or ablated values per (circuit, head) with one ``torch.where``. A float
mask in [0, 1] interpolates instead (``src + m * (z - src)``), which keeps gradients
for mask-learning baselines.

Only the logits a metric needs are computed: the residual stream entering the
unembedding is captured and unembedded at the requested positions (usually just the
last), which saves the [batch, seq, vocab] tensor and most of the unembedding's cost.

The API for other methods:

* :func:`cache_heads` -- per-head z (and optionally logits) on a batch of tokens;
* :func:`ablation_source` -- the replacement values of one ablation kind;
* :func:`head_mask_hooks` / :func:`heads_ablated` -- hooks / a context manager that
  ablate heads while the caller runs the bridge as it likes (gradients allowed);
* :func:`run_with_heads` -- logits of many circuits at once;
* :class:`CircuitEvaluator` -- per-example task metrics of many circuits at once,
  with the clean model, the fully ablated model and forward-pass accounting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError

if TYPE_CHECKING:
    import torch
    from jaxtyping import Bool, Float, Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..models.hf import Prefix
    from ..types import HeadId, HeadLayout, PromptSet

ABLATIONS = ("corrupt", "mean", "zero")
LOGITS_BUDGET = 2**27  # most logits one evaluation pass may hold (512 MiB in float32)
_UNEMBED_IN = "unembed.hook_in"


class _StopForward(Exception):
    """Raised in the hook before the unembedding, once the residual stream is captured."""


def check_ablation(kind: str) -> str:
    if kind not in ABLATIONS:
        raise CircuitscanError(f"ablation {kind!r} is not one of {', '.join(ABLATIONS)}")
    return kind


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
) -> Float[Tensor, "b P vocab"]:
    """One forward pass with ``hooks``; logits only at ``positions`` (None: all).

    When the bridge exposes ``unembed.hook_in``, the pass stops there and only the
    requested positions are unembedded. Hugging Face models run on their unwrapped
    module tree (:func:`circuitscan.models.hf.run_hooked`) when every hook has a site
    there; the bridge runs the rest. ``past``: a cached prefix (see ``run_hooked``);
    ``positions`` still index the whole sequence and must all lie after it.
    """
    from ..models.hf import hf_view, run_hooked, supports

    bridge = model.bridge
    start = 0 if past is None else past.length
    if positions is None or _UNEMBED_IN not in bridge.hook_dict:
        out = run_hooked(model, tokens, hooks, attention_mask=attention_mask, past=past)
        return out if positions is None else out[:, positions.to(out.device) - start]
    captured: dict[str, Tensor] = {}

    def grab(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        captured["x"] = x[:, positions.to(x.device) - start]
        raise _StopForward

    try:
        run_hooked(model, tokens, [*hooks, (_UNEMBED_IN, grab)], attention_mask=attention_mask, logits=False,
                   past=past)
    except _StopForward:
        pass
    if "x" not in captured:  # pragma: no cover - an adapter that skips its unembedding hook
        out = run_hooked(model, tokens, hooks, attention_mask=attention_mask, past=past)
        return out[:, positions.to(out.device) - start]
    view = hf_view(model)
    if supports(view, [*hooks, (_UNEMBED_IN, grab)]):
        return view.lm_head(captured["x"])
    return bridge.unembed(captured["x"])


def _split_heads(z: Tensor, n_heads: int) -> Tensor:
    """[b, p, H, d] stays; [b, p, H*d] (concatenated heads) -> [b, p, H, d]."""
    if z.ndim == 3:
        return z.reshape(z.shape[0], z.shape[1], n_heads, -1)
    return z


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
            zz = _split_heads(z, layout.n_heads).detach().float()
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

    from ..models.hf import run_hooked

    try:
        run_hooked(model, tokens, [*hooks, (last, stop)], attention_mask=mask, logits=False)
    except _StopForward:
        pass


# --------------------------------------------------------------------------- ablation sources


@dataclass(frozen=True)
class AblationSource:
    """What an ablated head's z becomes.

    Attributes:
        kind: ``"corrupt"``, ``"mean"`` or ``"zero"``.
        cache: corrupt only: the corrupted prompts' :class:`HeadCache` (row i = the
            partner of clean row i).
        z: mean only: ``[n_layers, seq, n_heads, d_head]``.
    """

    kind: str
    cache: HeadCache | None = None
    z: Float[Tensor, "layers seq heads d_head"] | None = None

    def __post_init__(self) -> None:
        check_ablation(self.kind)
        if self.kind == "corrupt" and (self.cache is None or self.cache.z is None):
            raise ValueError("corrupt ablation needs the corrupted prompts' z cache")
        if self.kind == "mean" and (self.z is None or self.z.ndim != 4):
            raise ValueError("mean ablation needs z of shape [layers, seq, heads, d_head]")

    @property
    def n_rows(self) -> int | None:
        if self.cache is None:
            return None
        return self.cache.z.shape[0] * self.cache.group

    def layer(self, layer: int, rows: Int[Tensor, " r"] | None) -> Tensor | None:
        """Replacement z for one layer: ``[r, seq, H, d]`` (corrupt), ``[1, seq, H, d]`` (mean), None (zero)."""
        if self.kind == "zero":
            return None
        if self.kind == "mean":
            return self.z[layer][None]
        return self.cache.full_z(rows, layer)


def masked_position_mean(z: Float[Tensor, "n layers seq heads d"], mask: Int[Tensor, "n seq"] | None) -> Tensor:
    """Mean over examples at each position, over real tokens only (0 where none is real)."""
    if mask is None:
        return z.mean(0)
    m = mask.to(z.dtype)[:, None, :, None, None]
    return (z * m).sum(0) / m.sum(0).clamp_min(1)


def _mean_of_caches(caches: Sequence[tuple[HeadCache, Tensor | None]]) -> Tensor:
    """Per-position mean z over the rows of several caches (masks over real tokens).

    Grouped caches are averaged over groups for the shared prefix (every row of a group
    has the same values there) and over rows for the suffix.
    """
    import torch

    num = den = None
    for cache, mask in caches:
        g = cache.group
        pm = mask[::g] if mask is not None else None
        prefix_len = cache.z.shape[2]
        m = torch.ones(cache.z.shape[0], prefix_len) if pm is None else pm[:, :prefix_len].float()
        s_num = (cache.z * m[:, None, :, None, None]).sum(0)
        s_den = m.sum(0)
        if cache.z_suffix is not None:
            k = cache.z_suffix.shape[2]
            ms = torch.ones(cache.z_suffix.shape[0], k) if mask is None else mask[:, prefix_len:].float()
            # the prefix is counted once per group: weigh the suffix by 1/g to match
            s_num = torch.cat([s_num, (cache.z_suffix * ms[:, None, :, None, None]).sum(0) / g], dim=1)
            s_den = torch.cat([s_den, ms.sum(0) / g])
        num = s_num if num is None else num + s_num
        den = s_den if den is None else den + s_den
    return num / den.clamp_min(1e-12)[None, :, None, None]


def paired_negatives(prompts: PromptSet) -> tuple[Tensor, Tensor | None]:
    """The corrupted partner of each positive prompt (and its mask).

    Negatives pair with positives index by index; easy negatives (unrelated text, which
    ``metadata["easy_negatives"]`` counts at the end) have no partner and are left out.
    """
    n_pos, n_neg = prompts.n_positive, prompts.n_negative
    easy = int(prompts.metadata.get("easy_negatives", 0) or 0)
    if n_neg == n_pos or n_neg - easy == n_pos:
        mask = None if prompts.negative_mask is None else prompts.negative_mask[:n_pos]
        return prompts.negative[:n_pos], mask
    raise CircuitscanError(
        f"corrupt ablation needs a corrupted partner for every positive prompt, but task "
        f"{prompts.task!r} has {n_pos} positive and {n_neg} negative prompts; use --ablation mean or zero"
    )


def ablation_source(
    model: ModelHandle,
    prompts: PromptSet,
    kind: str,
    *,
    clean: HeadCache | None = None,
    corrupted: HeadCache | None = None,
    batch_size: int = 64,
) -> AblationSource:
    """Build the replacement values of ``kind`` for ``prompts`` (reusing caches if given).

    ``corrupted`` is the cache of the paired negatives (:func:`paired_negatives`) for
    corrupt ablation, of all negatives for mean ablation.
    """
    check_ablation(kind)
    if kind == "zero":
        return AblationSource("zero")
    if kind == "corrupt":
        if corrupted is None:
            neg, neg_mask = paired_negatives(prompts)
            corrupted = cache_heads(model, neg, attention_mask=neg_mask, with_logits=False, batch_size=batch_size)
        return AblationSource("corrupt", cache=corrupted)
    if corrupted is None:
        corrupted = cache_heads(model, prompts.negative, attention_mask=prompts.negative_mask, with_logits=False,
                                batch_size=batch_size)
    if clean is None:
        clean = cache_heads(model, prompts.positive, attention_mask=prompts.positive_mask, with_logits=False,
                            batch_size=batch_size)
    mean = _mean_of_caches([(clean, prompts.positive_mask), (corrupted, prompts.negative_mask)])
    return AblationSource("mean", z=mean)


# --------------------------------------------------------------------------- hooks


def _as_keep(keep: Tensor, layout: HeadLayout) -> Tensor:
    import torch

    keep = torch.as_tensor(keep)
    if keep.ndim == 1:
        keep = keep[None]
    if keep.ndim == 3:  # [C, layers, heads]
        keep = keep.reshape(keep.shape[0], -1)
    if keep.ndim != 2 or keep.shape[1] != layout.n_total:
        raise CircuitscanError(
            f"a head mask must have {layout.n_total} entries per circuit ({layout.n_layers} layers x "
            f"{layout.n_heads} heads), got shape {tuple(keep.shape)}"
        )
    return keep


def head_mask_hooks(
    model: ModelHandle,
    keep: Bool[Tensor, "C n_heads_total"] | Float[Tensor, "C n_heads_total"],
    source: AblationSource,
    rows: Int[Tensor, " r"] | None = None,
) -> list[tuple[str, Any]]:
    """Forward hooks that ablate, per circuit, the heads ``keep`` leaves out.

    Args:
        model: the model the hooks are for.
        keep: one row per circuit, True (1.0) = the head runs clean. Float values in
            [0, 1] interpolate between ablated (0) and clean (1) and keep gradients.
        source: replacement values (:func:`ablation_source`).
        rows: for corrupt ablation, which prompt (index into the source) each of the r
            prompts of the batch is; default ``0 .. r-1``.

    Returns:
        ``[(hook name, fn)]`` for ``bridge.run_with_hooks`` / ``bridge.hooks``; the batch
        they see must hold ``C * r`` rows, circuit-major.
    """
    import torch

    layout = model.layout
    keep = _as_keep(keep, layout)
    n_circuits = keep.shape[0]
    is_bool = keep.dtype == torch.bool
    keep_l = keep.reshape(n_circuits, layout.n_layers, layout.n_heads)

    def make_hook(layer: int):
        def hook(z: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            shape = z.shape
            zz = _split_heads(z, layout.n_heads)
            b, p, h, d = zz.shape
            if b % n_circuits:
                raise ValueError(f"batch of {b} rows is not a multiple of {n_circuits} circuits")
            r = b // n_circuits
            zc = zz.reshape(n_circuits, r, p, h, d)
            src = source.layer(layer, rows)
            if src is None:
                src = torch.zeros((), dtype=zz.dtype, device=zz.device)
            else:
                if src.shape[0] not in (1, r):
                    raise ValueError(f"ablation source has {src.shape[0]} rows, batch has {r} per circuit")
                if src.shape[1] > p:  # a pass over the positions after a cached prefix
                    src = src[:, src.shape[1] - p :]
                src = src.to(device=zz.device, dtype=zz.dtype)[None]
            k = keep_l[:, layer].to(zz.device)[:, None, None, :, None]
            out = torch.where(k, zc, src) if is_bool else src + k.to(zz.dtype) * (zc - src)
            return out.reshape(shape)

        return hook

    return [(model.hook_z(layer), make_hook(layer)) for layer in range(layout.n_layers)]


@contextmanager
def heads_ablated(
    model: ModelHandle,
    keep: Tensor,
    source: AblationSource,
    rows: Int[Tensor, " r"] | None = None,
) -> Iterator[Any]:
    """Context manager: inside it, ``model.bridge(tokens)`` runs with heads ablated.

    ``tokens`` must be the r prompts repeated once per circuit (``tokens.repeat(C, 1)``).
    Yields the bridge. Gradients flow through float masks.
    """
    with model.bridge.hooks(fwd_hooks=head_mask_hooks(model, keep, source, rows)):
        yield model.bridge


def run_with_heads(
    model: ModelHandle,
    tokens: Int[Tensor, "r seq"],
    keep: Tensor,
    source: AblationSource,
    *,
    rows: Int[Tensor, " r"] | None = None,
    positions: str | Sequence[int] | Tensor | None = "last",
    attention_mask: Int[Tensor, "r seq"] | None = None,
    past: Prefix | None = None,
) -> Float[Tensor, "C r P vocab"]:
    """Logits of every circuit in ``keep`` on the r prompts ``tokens``: one forward pass.

    ``rows`` maps the prompts to the source's rows (corrupt ablation); by default prompt
    i is paired with source row i. ``past``: the r prompts' cached first positions,
    which no circuit may change (:meth:`CircuitEvaluator.evaluate` decides).
    """
    import torch

    keep = _as_keep(keep, model.layout)
    n_circuits, (r, seq) = keep.shape[0], tokens.shape
    if rows is None and source.kind == "corrupt" and source.n_rows != r:
        raise CircuitscanError(
            f"{r} prompts but the corrupted cache has {source.n_rows} rows; pass rows= to pair them"
        )
    pos = resolve_positions(positions, seq)
    batch = tokens.repeat(n_circuits, 1)
    mask = None if attention_mask is None else attention_mask.repeat(n_circuits, 1)
    hooks = head_mask_hooks(model, keep, source, None if rows is None else torch.as_tensor(rows))
    out = logits_at(model, batch, pos, hooks=hooks, attention_mask=mask, past=past)
    return out.reshape(n_circuits, r, *out.shape[1:])


# --------------------------------------------------------------------------- circuits as masks


def circuit_mask(layout: HeadLayout, heads: Sequence[HeadId | str | tuple[int, int]]) -> Bool[Tensor, " n_total"]:
    """A flat boolean mask with True at the given heads (names, HeadIds or pairs)."""
    import torch

    m = torch.zeros(layout.n_total, dtype=torch.bool)
    for h in heads:
        m[layout.index(h)] = True
    return m


def random_masks(
    n_total: int, size: int, samples: int, *, generator: torch.Generator | None = None
) -> Bool[Tensor, "samples n_total"]:
    """``samples`` circuits of ``size`` heads drawn uniformly without replacement."""
    import torch

    if not 0 <= size <= n_total:
        raise CircuitscanError(f"a random circuit of {size} heads cannot be drawn from {n_total} heads")
    masks = torch.zeros(samples, n_total, dtype=torch.bool)
    for s in range(samples):
        masks[s, torch.randperm(n_total, generator=generator)[:size]] = True
    return masks


def top_k_masks(order: Sequence[int], sizes: Sequence[int], n_total: int) -> Bool[Tensor, "n_sizes n_total"]:
    """Circuits made of the first k heads of ``order`` (flat indices, best first), one per k."""
    import torch

    idx = torch.as_tensor(list(order), dtype=torch.long)
    masks = torch.zeros(len(sizes), n_total, dtype=torch.bool)
    for i, k in enumerate(sizes):
        if not 0 <= k <= n_total:
            raise CircuitscanError(f"circuit size {k} is outside 0..{n_total}")
        masks[i, idx[:k]] = True
    return masks


# --------------------------------------------------------------------------- the evaluator


@dataclass
class EvaluatorStats:
    """Forward-pass accounting: ``forward_passes`` bridge calls over ``rows`` token rows."""

    forward_passes: int = 0
    rows: int = 0
    circuits: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"forward_passes": self.forward_passes, "rows": self.rows, "circuits": self.circuits,
                "seconds": self.seconds}


def expand_with_suffixes(
    tokens: Int[Tensor, "n seq"], mask: Int[Tensor, "n seq"] | None, suffix_ids: Sequence[int]
) -> tuple[Tensor, Tensor | None]:
    """Each prompt followed by each suffix token: ``[n * k, seq + 1]``, row ``k * i + j``."""
    import torch

    ids = torch.as_tensor(list(suffix_ids), dtype=tokens.dtype)
    k = ids.numel()
    out = torch.cat([tokens.repeat_interleave(k, 0), ids.repeat(tokens.shape[0])[:, None]], 1)
    if mask is None:
        return out, None
    return out, torch.cat([mask.repeat_interleave(k, 0), torch.ones(out.shape[0], 1, dtype=mask.dtype)], 1)


def shared_prefix_lengths(
    a: Int[Tensor, "n seq"], b: Int[Tensor, "n seq"], mask_a: Tensor | None, mask_b: Tensor | None
) -> Int[Tensor, " n"]:
    """Per row, the number of first positions where ``a`` and ``b`` (tokens and masks) agree."""
    import torch

    diff = a != b
    if mask_a is not None or mask_b is not None:
        ones = torch.ones_like(a)
        diff |= (ones if mask_a is None else mask_a) != (ones if mask_b is None else mask_b)
    first = diff.int().argmax(1)
    return torch.where(diff.any(1), first, torch.full_like(first, a.shape[1]))


@dataclass
class CircuitEvaluator:
    """Per-example task metrics of many circuits, batched, against clean and ablated baselines.

    Build with :meth:`build`. :meth:`evaluate` takes a ``[C, n_heads_total]`` mask and
    returns, per metric, ``[C, n]`` per-example values on the first ``n`` positive
    prompts. Identical circuits are run once.

    Some metrics read more than one forward pass per example: the greater-than metrics
    on a tokenizer that splits years into digits need P(d1) P(d2 | d1), so each prompt is
    run ``group = 10`` times, followed by each digit (the corrupted prompts likewise, so
    ablated heads see the same suffix). ``group`` is 1 otherwise.

    Attributes:
        clean: metric values of the unablated model (every head kept).
        empty: metric values with every head ablated (``m(∅)``).
        corrupted_input: metric values of the model run on the corrupted prompts
            (``corrupt`` ablation only), scored against the clean prompts' answers.
        stats: forward passes and rows spent so far (the baseline passes included).
        shared: corrupt ablation: per row, how many first positions the prompt shares
            with its corrupted partner (tokens and mask). No circuit can change the
            model there (every ablated head's replacement equals its clean value), so
            :meth:`evaluate` runs those positions once per batch of prompts, unhooked,
            and each circuit only on the rest (Hugging Face models; ``prefix_sharing``
            False turns it off).
    """

    model: ModelHandle
    prompts: PromptSet
    ablation: str
    metrics: list[str]
    source: AblationSource
    n: int
    max_rows: int
    positions: Int[Tensor, " P"]
    last: int
    group: int
    tokens: Int[Tensor, "rows seq"]
    mask: Int[Tensor, "rows seq"] | None
    reference_logprobs: Float[Tensor, "n vocab"] | None
    clean: dict[str, Tensor] = field(default_factory=dict)
    empty: dict[str, Tensor] = field(default_factory=dict)
    corrupted_input: dict[str, Tensor] | None = None
    stats: EvaluatorStats = field(default_factory=EvaluatorStats)
    progress: bool | None = None
    shared: Int[Tensor, " rows"] | None = None
    prefix_sharing: bool = True

    @classmethod
    def build(
        cls,
        model: ModelHandle,
        prompts: PromptSet,
        *,
        ablation: str = "corrupt",
        metrics: Sequence[str] | None = None,
        n_examples: int | None = None,
        max_rows: int = 256,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> CircuitEvaluator:
        """Check inputs, cache the ablation source and run the clean and empty baselines.

        Args:
            model: a loaded model.
            prompts: the task's prompts; circuits are scored on the positives.
            ablation: ``"corrupt"``, ``"mean"`` or ``"zero"``.
            metrics: metric names (default: :func:`~circuitscan.evaluation.metrics.table_metrics`).
            n_examples: score on the first n positive prompts only (default: all).
            max_rows: most token rows per forward pass (circuits x prompts x group); fewer
                when the logits kept would pass :data:`LOGITS_BUDGET` (all-position metrics).
            batch_size: prompts per pass when caching.
            progress: progress bar for long evaluations (default: on a terminal).
        """
        import time

        import torch

        from .metrics import get_metric, table_metrics

        t0 = time.perf_counter()
        check_ablation(ablation)
        if max_rows < 1:
            raise CircuitscanError(f"max_rows must be >= 1, got {max_rows}")
        names = list(metrics) if metrics is not None else table_metrics(prompts)
        if not names:
            raise CircuitscanError("give at least one metric")
        metric_objs = [get_metric(name) for name in names]
        for m in metric_objs:
            m.check(prompts)
        n = prompts.n_positive if n_examples is None else int(n_examples)
        if not 1 <= n <= prompts.n_positive:
            raise CircuitscanError(
                f"n_examples must be in 1..{prompts.n_positive} (the task's positive prompts), got {n}"
            )
        vocab = int(model.bridge.cfg.d_vocab)
        all_tokens, _ = prompts.all_tokens()
        if int(all_tokens.min()) < 0 or int(all_tokens.max()) >= vocab:
            raise CircuitscanError(f"task {prompts.task!r} has token ids outside the model's vocabulary 0..{vocab - 1}")
        neg, neg_mask = paired_negatives(prompts) if ablation == "corrupt" else (prompts.negative, prompts.negative_mask)

        # rows: one per example, or one per (example, suffix) when a metric reads suffixes
        suffixes = {tuple(s) for m in metric_objs if (s := m.suffixes(prompts)) is not None}
        if len(suffixes) > 1:
            raise CircuitscanError(f"metrics {names} need different prompt suffixes; evaluate them separately")
        seq = prompts.seq_len
        pos_tok, pos_mask = prompts.positive[:n], None if prompts.positive_mask is None else prompts.positive_mask[:n]
        if ablation == "corrupt":
            neg, neg_mask = neg[:n], None if neg_mask is None else neg_mask[:n]
        group, prefix = 1, None
        if suffixes:
            ids = next(iter(suffixes))
            group, prefix = len(ids), seq
            pos_tok, pos_mask = expand_with_suffixes(pos_tok, pos_mask, ids)
            neg, neg_mask = expand_with_suffixes(neg, neg_mask, ids)
        run_seq = pos_tok.shape[1]
        if any(m.positions == "all" for m in metric_objs):
            positions = torch.arange(run_seq)
        else:
            positions = torch.arange(seq - 1, run_seq)  # the prompt's last position (+ suffix positions)
        last = int((positions == seq - 1).nonzero()[0, 0])

        stats = EvaluatorStats()
        rows_batch = max(1, batch_size // group) * group

        def passes(rows: int) -> int:
            return -(-rows // rows_batch)

        if ablation == "mean" and n < prompts.n_positive:  # the mean is over ALL the task's prompts
            clean_tok, clean_mask = prompts.positive, prompts.positive_mask
            if suffixes:
                clean_tok, clean_mask = expand_with_suffixes(clean_tok, clean_mask, next(iter(suffixes)))
        else:
            clean_tok, clean_mask = pos_tok, pos_mask
        clean_cache = cache_heads(model, clean_tok, attention_mask=clean_mask, positions=positions,
                                  with_z=ablation == "mean", batch_size=batch_size, group=group, prefix=prefix)
        stats.forward_passes += passes(clean_tok.shape[0])
        stats.rows += clean_tok.shape[0]
        corrupt_cache = None
        if ablation != "zero":
            corrupt_cache = cache_heads(model, neg, attention_mask=neg_mask, positions=positions,
                                        with_logits=ablation == "corrupt", batch_size=batch_size, group=group,
                                        prefix=prefix)
            stats.forward_passes += passes(neg.shape[0])
            stats.rows += neg.shape[0]
        if ablation == "corrupt":
            source = AblationSource("corrupt", cache=corrupt_cache)
        elif ablation == "mean":
            source = AblationSource("mean", z=_mean_of_caches([(clean_cache, clean_mask), (corrupt_cache, neg_mask)]))
        else:
            source = AblationSource("zero")
        clean_logits = clean_cache.logits[: n * group]
        needs_ref = any(m.needs_reference for m in metric_objs)
        ref = clean_logits[::group, last].log_softmax(-1) if needs_ref else None
        shared = shared_prefix_lengths(pos_tok, neg, pos_mask, neg_mask) if ablation == "corrupt" else None
        ev = cls(model=model, prompts=prompts, ablation=ablation, metrics=names, source=source, n=n,
                 max_rows=max_rows, positions=positions, last=last, group=group, tokens=pos_tok, mask=pos_mask,
                 reference_logprobs=ref, stats=stats, progress=progress, shared=shared)
        index = torch.arange(n)
        ev.clean = ev._score(clean_logits, index)
        if ablation == "corrupt":
            ev.corrupted_input = ev._score(corrupt_cache.logits, index)
        none = torch.zeros(1, model.layout.n_total, dtype=torch.bool)
        ev.empty = {k: v[0] for k, v in ev.evaluate(none).items()}
        ev.stats.seconds += time.perf_counter() - t0
        return ev

    # ------------------------------------------------------------------ scoring

    def _score(self, logits: Tensor, index: Tensor) -> dict[str, Tensor]:
        """Metric values of the examples ``index`` from their rows' logits ``[len(index) * group, P, V]``."""
        from .metrics import MetricBatch, get_metric

        ref = None if self.reference_logprobs is None else self.reference_logprobs[index]
        batch = MetricBatch(prompts=self.prompts, index=index, positions=self.positions, last=self.last,
                            group=self.group, reference_logprobs=ref)
        return {name: get_metric(name)(logits, batch).detach().float().cpu() for name in self.metrics}

    def evaluate(self, keep: Bool[Tensor, "C n_heads_total"]) -> dict[str, Float[Tensor, "C n"]]:
        """Per-example metric values of each circuit in ``keep`` (True = head kept clean)."""
        import time

        import torch

        from ..progress import bar

        t0 = time.perf_counter()
        keep = _as_keep(keep, self.model.layout).bool()
        unique, inverse = torch.unique(keep, dim=0, return_inverse=True)
        n_unique = unique.shape[0]
        out = {name: torch.empty(n_unique, self.n) for name in self.metrics}
        g = self.group
        # rows per pass: max_rows, and at most LOGITS_BUDGET logits (all-position metrics)
        vocab = int(self.model.bridge.cfg.d_vocab)
        budget = max(g, min(self.max_rows, LOGITS_BUDGET // (len(self.positions) * vocab)))
        chunk = max(1, min(self.n, budget // g))  # examples per pass
        per_pass = max(1, budget // (chunk * g))  # circuits per pass
        n_passes = -(-self.n // chunk) * -(-n_unique // per_pass)
        show = self.progress if self.progress is not None else None
        with torch.inference_mode(), bar("evaluating circuits", n_passes,
                                         show=show if n_passes > 4 else False) as advance:
            for lo in range(0, self.n, chunk):
                hi = min(self.n, lo + chunk)
                index = torch.arange(lo, hi)
                rows = torch.arange(lo * g, hi * g)
                tokens = self.tokens[lo * g : hi * g]
                mask = None if self.mask is None else self.mask[lo * g : hi * g]
                past = self._prefix(tokens, mask, rows)
                for c0 in range(0, n_unique, per_pass):
                    c1 = min(n_unique, c0 + per_pass)
                    logits = run_with_heads(self.model, tokens, unique[c0:c1], self.source, rows=rows,
                                            positions=self.positions, attention_mask=mask, past=past)
                    for c in range(c1 - c0):
                        for name, values in self._score(logits[c], index).items():
                            out[name][c0 + c, lo:hi] = values
                    self.stats.forward_passes += 1
                    self.stats.rows += (c1 - c0) * (hi - lo) * g
                    advance()
        self.stats.circuits += n_unique
        self.stats.seconds += time.perf_counter() - t0
        return {name: values[inverse] for name, values in out.items()}

    def _prefix(self, tokens: Tensor, mask: Tensor | None, rows: Tensor) -> Prefix | None:
        """The cached first positions these rows share with their partners, or None."""
        from ..models.hf import prefix_keys_values

        if self.shared is None or not self.prefix_sharing:
            return None
        length = min(int(self.shared[rows].min()), int(self.positions.min()))
        if length < 1:
            return None
        past = prefix_keys_values(self.model, tokens[:, :length], None if mask is None else mask[:, :length])
        if past is not None:
            self.stats.forward_passes += 1
            self.stats.rows += tokens.shape[0]
        return past

    # ------------------------------------------------------------------ summaries

    def mean_clean(self, metric: str) -> float:
        return float(self.clean[metric].mean())

    def mean_empty(self, metric: str) -> float:
        return float(self.empty[metric].mean())

    def faithfulness(self, values: Float[Tensor, "C n"], metric: str) -> Float[Tensor, " C"]:
        """(m(C) - m(∅)) / (m(M) - m(∅)) of each circuit, on example means (NaN if M and ∅ agree)."""
        import torch

        from .metrics import normalise

        clean, empty = self.mean_clean(metric), self.mean_empty(metric)
        means = values.mean(-1)
        return torch.tensor([normalise(float(v), clean, empty) for v in means])

    def describe(self) -> dict[str, Any]:
        return {"ablation": self.ablation, "metrics": list(self.metrics), "n_examples": self.n,
                "max_rows": self.max_rows, "group": self.group}
