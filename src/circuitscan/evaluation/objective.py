"""A task's metric on a model, ready for interventions: what the baselines and edge-level
faithfulness both patch against.

* :class:`ObjectiveConfig` -- metric (the task's own, or ``kl``), ablation (``corrupt``,
  ``mean``, ``zero``), how many prompts, batch size;
* :class:`Objective` -- the prompts expanded the way the metric needs them (greater-than
  on a digit tokenizer runs every prompt followed by each digit), the replacement
  values of every head and of the input embedding, and ``goodness``: the metric with
  its sign fixed so that higher always means "the model does the task better" (KL
  becomes -KL, a loss becomes -loss);
* :class:`PassCounter` -- forward and backward passes, counted as batched model calls
  (the convention of ``sae-codes``: one call over up to ``batch_size`` prompts).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from .capture import PassCounter, _clean_pass, _masked_mean, capture, split_heads
from .intervention import (
    ABLATIONS,
    AblationSource,
    HeadCache,
    expand_with_suffixes,
    logits_at,
    paired_negatives,
)
from .metrics import MetricBatch, default_metric, get_metric

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet
    from .metrics import Metric

@dataclass(frozen=True)
class ObjectiveConfig:
    """What an objective measures and how.

    Attributes:
        metric: a metric of :mod:`circuitscan.evaluation.metrics` (``logit_diff``,
            ``prob_diff``, ``kl``...); None = the task's own (``prompts.metadata["metric"]``).
        ablation: what a removed head or edge carries instead of its clean value:
            ``corrupt`` (its value on the paired corrupted prompt), ``mean`` (its mean over
            the task's prompts) or ``zero``.
        n_examples: use the first n positive prompts (and their corrupted partners);
            None = all.
        batch_size: token rows per forward pass: prompts, or, for a metric that runs each
            prompt several times (two-digit years: once per digit, 10 rows), as many whole
            prompts as fit in ``batch_size`` rows (at least one). EAP-IG on SmolLM2
            greater-than with 32 prompts of 10 rows per pass peaked at 22.7 GB.
    """

    metric: str | None = None
    ablation: str = "corrupt"
    n_examples: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise CircuitscanError(f"ablation {self.ablation!r} is not one of {', '.join(ABLATIONS)}")
        if self.n_examples is not None and self.n_examples < 1:
            raise CircuitscanError(f"n_examples must be >= 1, got {self.n_examples}")
        if self.batch_size < 1:
            raise CircuitscanError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Objective:
    """A task's metric on a model, ready for interventions and gradients.

    Rows: ``n`` examples, each ``group`` token rows (``group > 1`` only for metrics that
    read the prompt followed by suffix tokens). Example i owns rows
    ``i * group .. (i + 1) * group - 1`` of ``tokens`` and ``corrupt_tokens``.

    Attributes:
        metric, metric_name: the metric and its registry name.
        sign: +1 if higher metric values are better, else -1; ``goodness = sign * metric``.
        source: the heads' replacement z (:class:`~circuitscan.evaluation.intervention.AblationSource`).
        input_source: the input embedding's replacement: ``[rows, seq, d]`` (corrupt),
            ``[1, seq, d]`` (mean) or None (zero).
        clean_input: the clean input embedding ``[rows, seq, d]``.
        reference: the clean model's log-probs at the last prompt position (KL only).
    """

    model: ModelHandle
    prompts: PromptSet
    metric: Metric
    metric_name: str
    sign: float
    ablation: str
    n: int
    group: int
    positions: Int[Tensor, " P"]
    last: int
    tokens: Int[Tensor, "rows seq"]
    mask: Int[Tensor, "rows seq"] | None
    corrupt_tokens: Int[Tensor, "rows seq"] | None
    corrupt_mask: Int[Tensor, "rows seq"] | None
    batch_rows: int
    source: AblationSource
    input_source: Float[Tensor, "r seq d"] | None
    clean_input: Float[Tensor, "rows seq d"]
    reference: Float[Tensor, "n vocab"] | None
    counter: PassCounter
    clean_z: Float[Tensor, "rows layers seq heads d_head"] | None = None

    @property
    def rows(self) -> int:
        return self.n * self.group

    @property
    def examples_per_batch(self) -> int:
        return self.batch_rows // self.group

    def batches(self) -> Iterator[tuple[Int[Tensor, " b"], slice]]:
        """(example indices, row slice) per batch."""
        import torch

        step = self.examples_per_batch
        for lo in range(0, self.n, step):
            hi = min(self.n, lo + step)
            yield torch.arange(lo, hi), slice(lo * self.group, hi * self.group)

    def goodness(self, logits: Float[Tensor, "rows P vocab"], index: Int[Tensor, " b"]) -> Float[Tensor, " b"]:
        """sign * metric per example, differentiable in ``logits``."""
        ref = None if self.reference is None else self.reference[index]
        batch = MetricBatch(prompts=self.prompts, index=index, positions=self.positions, last=self.last,
                            group=self.group, reference_logprobs=ref)
        return self.sign * self.metric(logits, batch)

    def logits(self, tokens: Tensor, mask: Tensor | None, hooks: list) -> Tensor:
        """Logits at :attr:`positions` of one batch of rows, with ``hooks``."""
        return logits_at(self.model, tokens, self.positions, hooks=hooks, attention_mask=mask)

    def source_z(self, layer: int, rows: slice) -> Tensor | None:
        """Replacement z of one layer for a row slice: ``[r, seq, H, d]``, ``[1, seq, H, d]`` or None (zero)."""
        import torch

        if self.source.kind == "zero":
            return None
        if self.source.kind == "mean":
            return self.source.z[layer][None]
        return self.source.cache.full_z(torch.arange(rows.start, rows.stop), layer)

    def source_input(self, rows: slice) -> Tensor | None:
        if self.input_source is None:
            return None
        return self.input_source if self.input_source.shape[0] == 1 else self.input_source[rows]

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric_name, "ablation": self.ablation, "n_examples": self.n,
                "rows_per_example": self.group, "batch_size": self.examples_per_batch}


def build_objective(
    model: ModelHandle,
    prompts: PromptSet,
    cfg: ObjectiveConfig,
    *,
    counter: PassCounter | None = None,
    keep_clean_z: bool = False,
) -> Objective:
    """Check the metric and ablation against the prompts; cache replacement values.

    Costs one pass over the clean prompts (their input embedding; with KL the clean
    model's distribution, the reference; with ``keep_clean_z`` every head's clean z, which
    :attr:`Objective.clean_z` keeps), stopped as early as it can be, and one over the
    corrupted prompts (corrupt ablation) or every prompt (mean ablation).
    """
    import torch

    counter = counter or PassCounter()
    name = cfg.metric or default_metric(prompts)
    metric = get_metric(name)
    metric.check(prompts)
    vocab = int(model.bridge.cfg.d_vocab)
    all_tokens, _ = prompts.all_tokens()
    if int(all_tokens.min()) < 0 or int(all_tokens.max()) >= vocab:
        raise CircuitscanError(f"task {prompts.task!r} has token ids outside the model's vocabulary 0..{vocab - 1}")
    n = prompts.n_positive if cfg.n_examples is None else min(cfg.n_examples, prompts.n_positive)
    seq = prompts.seq_len
    tok = prompts.positive[:n]
    mask = None if prompts.positive_mask is None else prompts.positive_mask[:n]
    neg = neg_mask = None
    if cfg.ablation == "corrupt":
        neg, neg_mask = paired_negatives(prompts)
        neg, neg_mask = neg[:n], None if neg_mask is None else neg_mask[:n]
    suffixes = metric.suffixes(prompts)
    group = 1
    if suffixes is not None:
        group = len(suffixes)
        tok, mask = expand_with_suffixes(tok, mask, suffixes)
        if neg is not None:
            neg, neg_mask = expand_with_suffixes(neg, neg_mask, suffixes)
    run_seq = tok.shape[1]
    positions = torch.arange(run_seq) if metric.positions == "all" else torch.arange(seq - 1, run_seq)
    last = seq - 1 - int(positions[0])
    batch_rows = max(1, cfg.batch_size // group) * group  # whole prompts, about batch_size rows

    reference, clean_input, clean_z = _clean_pass(model, tok, mask, positions, last, group, batch_rows, counter,
                                                  need_reference=metric.needs_reference, need_z=keep_clean_z)

    source, input_source = _ablation_source(model, prompts, cfg.ablation, neg, neg_mask, suffixes, batch_rows, counter)
    return Objective(
        model=model, prompts=prompts, metric=metric, metric_name=name,
        sign=1.0 if metric.higher_is_better else -1.0, ablation=cfg.ablation, n=n, group=group,
        positions=positions, last=last, tokens=tok, mask=mask, corrupt_tokens=neg, corrupt_mask=neg_mask,
        batch_rows=batch_rows, source=source, input_source=input_source, clean_input=clean_input,
        reference=reference, counter=counter, clean_z=clean_z,
    )


def _ablation_source(model: ModelHandle, prompts: PromptSet, ablation: str, neg: Tensor | None,
                     neg_mask: Tensor | None, suffixes: Any, batch_rows: int,
                     counter: PassCounter) -> tuple[AblationSource, Tensor | None]:
    """What a removed head and the input embedding carry: (the heads' source, the input's)."""
    import torch

    input_source = None
    if ablation == "corrupt":
        z, e = capture(model, neg, neg_mask, batch_rows=batch_rows, counter=counter)
        source = AblationSource("corrupt", cache=HeadCache(z=z, logits=None, positions=None))
        input_source = e
    elif ablation == "mean":
        # the mean over ALL the task's prompts, positives and negatives, per position
        parts = []
        for t, m in ((prompts.positive, prompts.positive_mask), (prompts.negative, prompts.negative_mask)):
            if suffixes is not None:
                t, m = expand_with_suffixes(t, m, suffixes)
            z, e = capture(model, t, m, batch_rows=batch_rows, counter=counter)
            parts.append((z, e, m))
        z_all = torch.cat([p[0] for p in parts])
        e_all = torch.cat([p[1] for p in parts])
        masks = [p[2] if p[2] is not None else torch.ones(p[0].shape[0], p[0].shape[2], dtype=torch.long)
                 for p in parts]
        m_all = torch.cat(masks)
        source = AblationSource("mean", z=_masked_mean(z_all.transpose(1, 2), m_all).transpose(0, 1).contiguous())
        input_source = _masked_mean(e_all, m_all)[None]
    else:
        source = AblationSource("zero")
    return source, input_source


__all__ = ["Objective", "ObjectiveConfig", "PassCounter", "build_objective", "capture", "split_heads"]
