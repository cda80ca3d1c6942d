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

The code lives by concept in ``forward`` (plain passes, head caches), ``ablation``
(replacement sources), ``head_masks`` (the hooks, circuits as masks) and ``evaluator``
(:class:`CircuitEvaluator`); this module re-exports their API for other methods:

* :func:`cache_heads` -- per-head z (and optionally logits) on a batch of tokens;
* :func:`ablation_source` -- the replacement values of one ablation kind;
* :func:`head_mask_hooks` / :func:`heads_ablated` -- hooks / a context manager that
  ablate heads while the caller runs the bridge as it likes (gradients allowed);
* :func:`run_with_heads` -- logits of many circuits at once;
* :class:`CircuitEvaluator` -- per-example task metrics of many circuits at once,
  with the clean model, the fully ablated model and forward-pass accounting.
"""

from __future__ import annotations

from .ablation import (
    ABLATIONS,
    AblationSource,
    ablation_source,
    check_ablation,
    masked_position_mean,
    paired_negatives,
)
from .baselines import expand_with_suffixes
from .eval_rows import LOGITS_BUDGET, shared_prefix_lengths
from .evaluator import CircuitEvaluator, EvaluatorStats
from .forward import HeadCache, cache_heads, logits_at, resolve_positions
from .head_masks import (
    circuit_mask,
    head_mask_hooks,
    heads_ablated,
    random_circuits,
    random_masks,
    run_with_heads,
    top_k_masks,
)

__all__ = [
    "ABLATIONS", "LOGITS_BUDGET", "AblationSource", "CircuitEvaluator", "EvaluatorStats", "HeadCache",
    "ablation_source", "cache_heads", "check_ablation", "circuit_mask", "expand_with_suffixes", "head_mask_hooks",
    "heads_ablated", "logits_at", "masked_position_mean", "paired_negatives", "random_circuits", "random_masks",
    "resolve_positions", "run_with_heads", "shared_prefix_lengths", "top_k_masks",
]
