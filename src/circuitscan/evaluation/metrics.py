"""Task metrics: what a circuit must preserve, computed per example from logits.

Two layers:

* plain functions on tensors (:func:`logit_diff`, :func:`greater_than_prob_diff`,
  :func:`cutoff_sharpness`, :func:`induction_loss`, :func:`kl_divergence`...), each
  returning one value per example; they know nothing of models or prompt sets and are
  unit-tested on hand-made numbers (the greater-than ones are defined once, in
  :mod:`circuitscan.tasks.greater_than`, and re-exported here);
* a registry :data:`METRICS` of :class:`Metric` objects that bind those functions to
  a :class:`~circuitscan.types.PromptSet` (answer ids, years, token ids), so that the
  intervention code can evaluate any task's metric on any batch of rows.

A task names its default metric in ``prompts.metadata["metric"]``; without one, a task
with answers and wrong answers uses ``logit_diff`` and any other task ``kl``
(:func:`default_metric`). Summaries over examples are plain means; the probability
multiplier of the paper's Table 2 is ``exp(mean logit difference)``
(:func:`probability_multiplier`), e.g. 3.55 -> 34.8.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CircuitscanError
from ..tasks.greater_than import cutoff_sharpness as cutoff_sharpness
from ..tasks.greater_than import probability_difference as greater_than_prob_diff

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor

    from ..types import PromptSet

# --------------------------------------------------------------------------- plain functions


def logit_diff(
    logits: Float[Tensor, "n vocab"], answers: Int[Tensor, "n n_ans"], wrong: Int[Tensor, "n n_wrong"]
) -> Float[Tensor, " n"]:
    """Mean logit of the answers minus mean logit of the wrong answers, per example.

    With one answer and one wrong answer (IOI: IO and S) this is logit(IO) - logit(S).
    """
    return logits.gather(-1, answers).mean(-1) - logits.gather(-1, wrong).mean(-1)


def logit_diff_max_wrong(
    logits: Float[Tensor, "n vocab"], answers: Int[Tensor, "n n_ans"], wrong: Int[Tensor, "n n_wrong"]
) -> Float[Tensor, " n"]:
    """Mean answer logit minus the LARGEST wrong-answer logit (docstring: the best distractor)."""
    return logits.gather(-1, answers).mean(-1) - logits.gather(-1, wrong).max(-1).values


def induction_loss(
    logits: Float[Tensor, "n seq vocab"], tokens: Int[Tensor, "n seq"], mask: Float[Tensor, "n seq"]
) -> Float[Tensor, " n"]:
    """Mean next-token cross-entropy over the positions ``mask`` marks, per example.

    ``mask[i, p] = 1`` scores the prediction made AT position p of ``tokens[i, p + 1]``;
    the last position predicts nothing and must be 0.
    """
    logp = logits[:, :-1].float().log_softmax(-1)
    nll = -logp.gather(-1, tokens[:, 1:, None].to(logp.device))[..., 0]
    m = mask[:, :-1].to(nll.dtype)
    return (nll * m).sum(-1) / m.sum(-1).clamp_min(1)


def kl_divergence(
    logits: Float[Tensor, "n *pos vocab"], reference_logprobs: Float[Tensor, "n *pos vocab"]
) -> Float[Tensor, " n"]:
    """KL(reference || model) in nats, averaged over positions, per example.

    ``reference_logprobs`` are the clean model's log-probabilities (the "M" of
    faithfulness); 0 means the patched model predicts exactly what the clean one does.
    """
    logq = logits.float().log_softmax(-1)
    logp = reference_logprobs.float()
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return kl.reshape(kl.shape[0], -1).mean(-1)


def repeated_half_mask(tokens: Int[Tensor, "n seq"], repeat_start: int | None = None) -> Float[Tensor, "n seq"]:
    """Positions whose next token an induction head can predict.

    With ``repeat_start`` (the index where the second copy begins), every position from
    there to the second-to-last. Without it, a position p is marked when the pair
    (tokens[p], tokens[p+1]) occurred earlier in the sequence: exactly the tokens of the
    repeated half after its first, plus any accidental repeat.
    """
    import torch

    n, seq = tokens.shape
    mask = torch.zeros(n, seq)
    if repeat_start is not None:
        if not 0 < repeat_start < seq:
            raise CircuitscanError(f"repeat_start must lie in 1..{seq - 1}, got {repeat_start}")
        mask[:, repeat_start : seq - 1] = 1.0
        return mask
    cur, nxt = tokens[:, :-1], tokens[:, 1:]
    # same (token, next token) pair at an earlier position j < p
    same = (cur[:, :, None] == cur[:, None, :]) & (nxt[:, :, None] == nxt[:, None, :])
    earlier = torch.tril(torch.ones(seq - 1, seq - 1, dtype=torch.bool), diagonal=-1)
    mask[:, :-1] = (same & earlier).any(-1).float()
    return mask


def probability_multiplier(mean_logit_diff: float) -> float:
    """``exp(LD)``: how many times likelier the answer is than the wrong answer."""
    return math.exp(mean_logit_diff) if mean_logit_diff < 700 else float("inf")


def normalise(value: float, clean: float, corrupted: float) -> float:
    """(value - corrupted) / (clean - corrupted): 0 = corrupted, 1 = clean (faithfulness).

    NaN when clean and corrupted agree (the task gives nothing to recover).
    """
    span = clean - corrupted
    if not math.isfinite(span) or abs(span) <= 1e-12 * max(1.0, abs(clean), abs(corrupted)):
        return float("nan")
    return (value - corrupted) / span


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricBatch:
    """What a registered metric sees for one batch of examples.

    Attributes:
        prompts: the task's prompt set.
        index: which positive prompt each example is (``[b]``, into ``prompts.positive``).
        positions: the sequence positions whose logits were kept (``[P]``, ascending).
        last: the index into ``positions`` of the prompt's last token.
        group: token rows per example (1; 10 when each prompt was also run followed by
            each digit, for two-digit year probabilities); logits hold ``b * group`` rows.
        reference_logprobs: the clean model's log-probs at the prompt's last position
            (``[b, V]``), present when a metric ``needs_reference``.
    """

    prompts: PromptSet
    index: Int[Tensor, " b"]
    positions: Int[Tensor, " P"]
    last: int = -1
    group: int = 1
    reference_logprobs: Float[Tensor, "b vocab"] | None = None

    @property
    def tokens(self) -> Int[Tensor, "b seq"]:
        """The clean (positive) tokens of these examples: targets of next-token metrics."""
        return self.prompts.positive[self.index]

    def last_logits(self, logits: Float[Tensor, "rows P vocab"]) -> Float[Tensor, "b vocab"]:
        """Logits at the prompt's last token, one row per example."""
        return logits[:: self.group, self.last]


MetricFn = Callable[["Float[Tensor, 'rows P vocab']", MetricBatch], "Float[Tensor, ' b']"]


@dataclass(frozen=True)
class Metric:
    """A task metric bound to prompt sets.

    Attributes:
        name: registry key.
        description: one line for tables and help.
        fn: ``fn(logits, batch) -> [b]``; ``logits`` is ``[b * group, P, vocab]`` at ``batch.positions``.
        positions: ``"last"`` (the final position, plus any suffix) or ``"all"``.
        higher_is_better: False for losses and divergences.
        needs_reference: reads the clean model's log-probs (KL).
        requires: what the prompt set must carry (``"answers"``, ``"metadata.yy"``;
            ``"a|b"`` = either), checked by :meth:`check`.
        suffix_fn: ``prompts -> token ids or None``: when it returns ids, every prompt
            is also run followed by each of them (``group = len(ids)`` rows per example).
    """

    name: str
    description: str
    fn: MetricFn
    positions: str = "last"
    higher_is_better: bool = True
    needs_reference: bool = False
    requires: tuple[str, ...] = ()
    suffix_fn: Callable[[PromptSet], Sequence[int] | None] | None = None

    def check(self, prompts: PromptSet) -> None:
        """Raise :class:`CircuitscanError` if ``prompts`` lack what this metric reads."""
        missing = [r for r in self.requires if not _has(prompts, r)]
        if missing:
            raise CircuitscanError(
                f"metric {self.name!r} needs {', '.join(missing)} on the prompt set, which task "
                f"{prompts.task!r} does not provide; metrics it supports: "
                f"{', '.join(applicable_metrics(prompts))}"
            )

    def suffixes(self, prompts: PromptSet) -> Sequence[int] | None:
        return None if self.suffix_fn is None else self.suffix_fn(prompts)

    def __call__(self, logits: Tensor, batch: MetricBatch) -> Tensor:
        return self.fn(logits, batch)


def _has(prompts: PromptSet, requirement: str) -> bool:
    for key in requirement.split("|"):
        value = prompts.metadata.get(key.split(".", 1)[1]) if key.startswith("metadata.") else getattr(prompts, key)
        if value is not None:
            return True
    return False


def _ld(logits: Tensor, b: MetricBatch) -> Tensor:
    p = b.prompts
    return logit_diff(b.last_logits(logits).float(), p.answers[b.index], p.wrong_answers[b.index])


def _ld_max(logits: Tensor, b: MetricBatch) -> Tensor:
    p = b.prompts
    return logit_diff_max_wrong(b.last_logits(logits).float(), p.answers[b.index], p.wrong_answers[b.index])


def year_probs(logits_last: Float[Tensor, "b vocab"], yy_token_ids: Sequence[int]) -> Float[Tensor, "b 100"]:
    """P(YY') for YY' = 00..99 when each two-digit year is one token (GPT-2)."""
    import torch

    ids = torch.as_tensor(list(yy_token_ids), device=logits_last.device)
    if ids.numel() != 100:
        raise CircuitscanError(f"yy_token_ids must list 100 token ids (for 00..99), got {ids.numel()}")
    return logits_last.float().softmax(-1)[:, ids]


def two_digit_year_probs(
    logits_first: Float[Tensor, "b vocab"], logits_second: Float[Tensor, "b 10 vocab"], digit_ids: Sequence[int]
) -> Float[Tensor, "b 100"]:
    """P(YY' = 10 d1 + d2) = P(d1 | prompt) P(d2 | prompt, d1) when digits are tokens (SmolLM2).

    ``logits_second[i, d1]`` are the logits after prompt i followed by digit d1.
    """
    import torch

    ids = torch.as_tensor(list(digit_ids), device=logits_first.device)
    if ids.numel() != 10:
        raise CircuitscanError(f"need the token ids of the 10 digits, got {ids.numel()}")
    first = logits_first.float().log_softmax(-1)[:, ids]  # [b, 10]
    second = logits_second.float().log_softmax(-1)[..., ids]  # [b, 10, 10]
    return (first[:, :, None] + second).exp().reshape(first.shape[0], 100)


def _digit_suffixes(prompts: PromptSet) -> Sequence[int] | None:
    meta = prompts.metadata
    if meta.get("yy_token_ids") is None and meta.get("eval_suffix_ids") is not None:
        return [int(t) for t in meta["eval_suffix_ids"]]
    return None


def _year_probs(logits: Tensor, b: MetricBatch) -> Tensor:
    meta = b.prompts.metadata
    if meta.get("yy_token_ids") is not None:
        return year_probs(b.last_logits(logits), meta["yy_token_ids"])
    digits = meta["eval_suffix_ids"]
    if b.group != len(digits):
        raise ValueError(f"two-digit years need {len(digits)} rows per example, got {b.group}")
    second = logits[:, b.last + 1].reshape(-1, b.group, logits.shape[-1])
    return two_digit_year_probs(b.last_logits(logits), second, digits)


def _yy(b: MetricBatch) -> Tensor:
    import torch

    return torch.as_tensor(b.prompts.metadata["yy"])[b.index.cpu()]


def _pd(logits: Tensor, b: MetricBatch) -> Tensor:
    return greater_than_prob_diff(_year_probs(logits, b), _yy(b))


def _cs(logits: Tensor, b: MetricBatch) -> Tensor:
    return cutoff_sharpness(_year_probs(logits, b), _yy(b))


def induction_mask(prompts: PromptSet, tokens: Int[Tensor, "b seq"]) -> Float[Tensor, "b seq"]:
    """The scored positions: ``metadata["loss_positions"]``, else from ``repeat_start``, else inferred."""
    import torch

    meta = prompts.metadata
    if meta.get("loss_positions") is not None:
        mask = torch.zeros(tokens.shape)
        pos = torch.as_tensor(list(meta["loss_positions"]), dtype=torch.long)
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= tokens.shape[1] - 1):
            raise CircuitscanError(f"loss_positions must lie in 0..{tokens.shape[1] - 2}")
        mask[:, pos] = 1.0
        return mask
    start = meta.get("repeat_start")
    return repeated_half_mask(tokens, None if start is None else int(start))


def _induction(logits: Tensor, b: MetricBatch) -> Tensor:
    tokens = b.tokens
    if logits.shape[1] != tokens.shape[1]:
        raise ValueError("induction_loss needs the logits at every position")
    return induction_loss(logits, tokens, induction_mask(b.prompts, tokens))


def _kl(logits: Tensor, b: MetricBatch) -> Tensor:
    if b.reference_logprobs is None:
        raise ValueError("kl needs the clean model's log-probs (reference_logprobs)")
    return kl_divergence(b.last_logits(logits), b.reference_logprobs)


_YEARS = ("metadata.yy", "metadata.yy_token_ids|metadata.eval_suffix_ids")

METRICS: dict[str, Metric] = {
    "logit_diff": Metric(
        "logit_diff", "mean answer logit minus mean wrong-answer logit at the last position (IOI: IO - S)", _ld,
        requires=("answers", "wrong_answers"),
    ),
    "logit_diff_max_wrong": Metric(
        "logit_diff_max_wrong", "answer logit minus the largest wrong-answer logit (docstring, ACDC)", _ld_max,
        requires=("answers", "wrong_answers"),
    ),
    "prob_diff": Metric(
        "prob_diff", "greater-than probability difference: P(YY' > YY) - P(YY' <= YY)", _pd,
        requires=_YEARS, suffix_fn=_digit_suffixes,
    ),
    "cutoff_sharpness": Metric(
        "cutoff_sharpness", "greater-than cutoff sharpness: p(YY+1) - p(YY-1)", _cs,
        requires=_YEARS, suffix_fn=_digit_suffixes,
    ),
    "induction_loss": Metric(
        "induction_loss", "mean next-token loss on the repeated half (nats)", _induction,
        positions="all", higher_is_better=False,
    ),
    "kl": Metric(
        "kl", "KL(clean model || circuit) at the last position (nats)", _kl,
        higher_is_better=False, needs_reference=True,
    ),
}

# the columns of the circuit-performance table for each task metric
TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "logit_diff": ("logit_diff", "logit_diff_max_wrong", "kl"),
    "logit_diff_max_wrong": ("logit_diff_max_wrong", "logit_diff", "kl"),
    "prob_diff": ("prob_diff", "cutoff_sharpness", "kl"),
    "cutoff_sharpness": ("prob_diff", "cutoff_sharpness", "kl"),
    "induction_loss": ("induction_loss", "kl"),
    "kl": ("kl",),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise CircuitscanError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name]


def register_metric(metric: Metric, table: tuple[str, ...] | None = None) -> None:
    """Add a metric (e.g. for a new task); ``table`` lists its performance-table columns."""
    METRICS[metric.name] = metric
    TABLE_METRICS[metric.name] = table or (metric.name, "kl")


def applicable_metrics(prompts: PromptSet) -> list[str]:
    """The registered metrics whose inputs ``prompts`` carry."""
    return [m.name for m in METRICS.values() if all(_has(prompts, r) for r in m.requires)]


def default_metric(prompts: PromptSet) -> str:
    """The task's metric: ``metadata["metric"]``, else logit_diff if answers exist, else kl."""
    named = prompts.metadata.get("metric")
    if named is not None:
        get_metric(str(named)).check(prompts)
        return str(named)
    if prompts.answers is not None and prompts.wrong_answers is not None:
        return "logit_diff"
    return "kl"


def table_metrics(prompts: PromptSet, primary: str | None = None) -> list[str]:
    """The metric columns of the performance table for this task (primary first)."""
    primary = primary or default_metric(prompts)
    get_metric(primary).check(prompts)
    names = TABLE_METRICS.get(primary, (primary, "kl"))
    out = [primary] + [n for n in names if n != primary]
    supported = set(applicable_metrics(prompts))
    several_wrong = prompts.wrong_answers is not None and prompts.wrong_answers.shape[1] > 1
    # with one wrong answer the max-wrong variant equals the plain logit difference
    return [n for n in out if n in supported and (n != "logit_diff_max_wrong" or several_wrong or n == primary)]
