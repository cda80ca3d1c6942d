"""The evaluator's baseline passes: the clean prompts and their corrupted partners, run once.

Under corrupt ablation (Hugging Face models, one row per example) the clean and corrupted
prompts of a block share their first positions (:mod:`.prefix_blocks`), so those run once:
the clean prompts run whole, as before (the clean logits, bit for bit), and keep the keys
and values of the shared prefix for every circuit pass to come and each head's z there
(which is the corrupted prompt's z too); the corrupted prompts then run only the positions
after it (their logits and z). Otherwise each prompt set runs whole
(:func:`~.forward.cache_heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..models.hf import run_keeping_prefix
from .ablation import AblationSource, _mean_of_caches
from .forward import HeadCache, cache_heads, logits_at, split_heads

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet
    from .prefix_blocks import PrefixCache


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


def baselines(model: ModelHandle, prompts: PromptSet, rows: Any, ablation: str, n: int, batch_size: int,
              stats: Any, blocks: list[tuple[int, list[int]]] | None = None,
              prefixes: PrefixCache | None = None) -> tuple[HeadCache, HeadCache | None, AblationSource]:
    """Cache the clean rows (and the corrupted ones unless ``zero``) and build the ablation source.

    ``rows``: the evaluator's token rows; ``blocks`` and ``prefixes``: where the shared prefixes
    go (corrupt ablation, one row per example); ``stats`` counts the passes."""
    if ablation == "corrupt" and blocks is not None and prefixes is not None and rows.group == 1:
        clean_cache, corrupt_cache = _prefixed(model, rows, n, blocks, prefixes, stats)
        return clean_cache, corrupt_cache, AblationSource("corrupt", cache=corrupt_cache)
    group, positions, prefix = rows.group, rows.positions, rows.prefix
    rows_batch = max(1, batch_size // group) * group

    def passes(n_rows: int) -> int:
        return -(-n_rows // rows_batch)

    if ablation == "mean" and n < prompts.n_positive:  # the mean is over ALL the task's prompts
        clean_tok, clean_mask = prompts.positive, prompts.positive_mask
        if rows.suffix is not None:
            clean_tok, clean_mask = expand_with_suffixes(clean_tok, clean_mask, rows.suffix)
    else:
        clean_tok, clean_mask = rows.pos_tok, rows.pos_mask
    clean_cache = cache_heads(model, clean_tok, attention_mask=clean_mask, positions=positions,
                              with_z=ablation == "mean", batch_size=batch_size, group=group, prefix=prefix)
    stats.forward_passes += passes(clean_tok.shape[0])
    stats.rows += clean_tok.shape[0]
    corrupt_cache = None
    if ablation != "zero":
        corrupt_cache = cache_heads(model, rows.neg, attention_mask=rows.neg_mask, positions=positions,
                                    with_logits=ablation == "corrupt", batch_size=batch_size, group=group,
                                    prefix=prefix)
        stats.forward_passes += passes(rows.neg.shape[0])
        stats.rows += rows.neg.shape[0]
    if ablation == "corrupt":
        source = AblationSource("corrupt", cache=corrupt_cache)
    elif ablation == "mean":
        source = AblationSource("mean", z=_mean_of_caches([(clean_cache, clean_mask), (corrupt_cache, rows.neg_mask)]))
    else:
        source = AblationSource("zero")
    return clean_cache, corrupt_cache, source


def _prefixed(model: ModelHandle, rows: Any, n: int, blocks: list[tuple[int, list[int]]], prefixes: PrefixCache,
              stats: Any) -> tuple[HeadCache, HeadCache]:
    """Per block: the clean prompts whole (every head's z kept over the shared prefix, which is the
    corrupted prompts' z there, and its keys and values into ``prefixes``), then the corrupted
    prompts' positions after the prefix."""
    import torch

    layout, positions = model.layout, rows.positions
    seq = rows.pos_tok.shape[1]
    z = torch.empty(n, layout.n_layers, seq, layout.n_heads, model.d_head)
    vocab = int(model.bridge.cfg.d_vocab)
    clean, corrupt = torch.empty(n, len(positions), vocab), torch.empty(n, len(positions), vocab)
    state: dict[str, Any] = {}

    def make_hook(layer: int):
        def hook(x: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
            zz = split_heads(x, layout.n_heads).detach().float()
            lo, hi = state["positions"]
            z[state["rows"], layer, lo:hi] = zz[:, : hi - lo]
            return x

        return hook

    hooks = [(model.hook_z(layer), make_hook(layer)) for layer in range(layout.n_layers)]
    with torch.inference_mode():
        for length, examples in blocks:
            idx = torch.tensor(examples)
            tok, mask = rows.pos_tok[idx], None if rows.pos_mask is None else rows.pos_mask[idx]
            neg, neg_mask = rows.neg[idx], None if rows.neg_mask is None else rows.neg_mask[idx]
            state.update(rows=idx, positions=(0, length))
            logits, past = run_keeping_prefix(model, tok, hooks, positions, length, attention_mask=mask)
            clean[idx] = logits.float()  # bf16 under --eval-precision bf16
            prefixes.put(length, idx, past)
            state["positions"] = (length, seq)
            corrupt[idx] = logits_at(model, neg, positions, hooks=hooks, attention_mask=neg_mask, past=past).float()
            stats.forward_passes += 2
            stats.rows += 2 * len(examples)
    return HeadCache(z=None, logits=clean, positions=positions), HeadCache(z=z, logits=corrupt, positions=positions)
