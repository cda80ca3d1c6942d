"""The circuit evaluator: per-example task metrics of many circuits against the clean and fully ablated model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..precision import resolve_precision
from ..progress import bar
from .ablation import AblationSource
from .baselines import baselines
from .eval_rows import (
    _blocks,
    _budget,
    _checked_metrics,
    _EvalRows,
    shared_prefix_lengths,
)
from .forward import precision_context
from .head_masks import _as_keep, run_with_heads
from .layer_skip import (
    CAPTURE_MIN,
    SkipCache,
    capture_empty,
    check_skip,
    first_layers,
    pass_order,
    plan_passes,
)
from .metrics import MetricBatch, get_metric, normalise
from .prefix_blocks import PrefixCache

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..models.hf import Prefix
    from ..types import PromptSet

# --------------------------------------------------------------------------- the evaluator


@dataclass
class EvaluatorStats:
    """Forward-pass accounting: ``forward_passes`` bridge calls over ``rows`` token rows, ``layer_rows``
    the circuit passes' rows times the layers each ran (fewer than all: :mod:`.layer_skip`)."""

    forward_passes: int = 0
    rows: int = 0
    circuits: int = 0
    seconds: float = 0.0
    layer_rows: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CircuitEvaluator:
    """Per-example task metrics of many circuits, batched, against clean and ablated baselines.

    Build with :meth:`build`. :meth:`evaluate` takes a ``[C, n_heads_total]`` mask and
    returns, per metric, ``[C, n]`` per-example values on the first ``n`` positive
    prompts (or the first few: random baselines). Identical circuits are run once, across
    calls too: the values of every circuit run are kept, so the performance table, the
    faithfulness curves and the empty baseline share what they have in common, and the
    circuit of every head is the clean model (:attr:`clean`) without a pass.

    Some metrics read more than one pass per example: the greater-than metrics on a tokenizer
    that splits years into digits need P(d1) P(d2 | d1), so each prompt is run ``group = 10``
    times, followed by each digit (the corrupted prompts likewise). ``group`` is 1 otherwise.

    Attributes:
        clean: metric values of the unablated model (every head kept).
        empty: metric values with every head ablated (``m(∅)``).
        corrupted_input: metric values of the model run on the corrupted prompts
            (``corrupt`` ablation only), scored against the clean prompts' answers.
        stats: forward passes and rows spent so far (the baseline passes included).
        shared: corrupt ablation: per row, how many first positions the prompt shares
            with its corrupted partner (tokens and mask). No circuit can change the
            model there (every ablated head's replacement equals its clean value), so
            :meth:`evaluate` runs those positions once per block of prompts of one
            shared length (:mod:`.prefix_blocks`), unhooked, and each circuit only on the
            rest (Hugging Face models; ``prefix_sharing`` False turns it off).
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
    precision: str = "fp32"
    random_precision: str = "fp32"
    layer_skip: bool = True
    _known: dict[tuple[bool, bytes], dict[str, Tensor]] = field(default_factory=dict, repr=False)
    _prefixes: PrefixCache | None = field(default=None, repr=False)
    _skip: SkipCache | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._prefixes is None:
            self._prefixes = PrefixCache(self.model)

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
        precision: str = "fp32",
        random_precision: str = "fp32",
        layer_skip: bool = True,
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
            precision: ``fp32``, ``bf16`` or ``auto`` (every pass, baselines included:
                :func:`~circuitscan.evaluation.forward.precision_context`).
            random_precision: the same for random circuits
                (:func:`~.curve_stats.evaluate_with_random`); the clean and empty baselines
                that normalise them keep ``precision``. fp32 here (the evaluator on its own is
                exact); ``evaluate_run`` and ``compare`` pass
                :data:`~.curve_stats.RANDOM_PRECISION` (auto).
            layer_skip: start each circuit pass at its circuits' first kept layer
                (:mod:`.layer_skip`; False runs every layer, the reference path).
        """
        import time

        import torch

        t0 = time.perf_counter()
        names, metric_objs, n = _checked_metrics(model, prompts, ablation, metrics, n_examples, max_rows)
        rows = _EvalRows.of(prompts, metric_objs, names, n, ablation)
        stats, prefixes = EvaluatorStats(), PrefixCache(model)
        shared = (shared_prefix_lengths(rows.pos_tok, rows.neg, rows.pos_mask, rows.neg_mask)
                  if ablation == "corrupt" else None)
        blocks = _blocks(model, shared if prefixes.has_view() else None, n, rows.group, rows.positions, max_rows)
        with precision_context(model, precision):
            clean_cache, corrupt_cache, source = baselines(
                model, prompts, rows, ablation, n, batch_size, stats,
                blocks=blocks if any(length for length, _ in blocks) else None, prefixes=prefixes)
        group, last = rows.group, rows.last
        clean_logits = clean_cache.logits[: n * group]
        needs_ref = any(m.needs_reference for m in metric_objs)
        ref = clean_logits[::group, last].log_softmax(-1) if needs_ref else None
        ev = cls(model=model, prompts=prompts, ablation=ablation, metrics=names, source=source, n=n,
                 max_rows=max_rows, positions=rows.positions, last=last, group=group, tokens=rows.pos_tok,
                 mask=rows.pos_mask, reference_logprobs=ref, stats=stats, progress=progress, shared=shared,
                 precision=precision, random_precision=random_precision, layer_skip=layer_skip, _prefixes=prefixes)
        index = torch.arange(n)
        ev.clean = ev._score(clean_logits, index)
        if ablation == "corrupt":
            ev.corrupted_input = ev._score(corrupt_cache.logits, index)
        every = torch.ones(model.layout.n_total, dtype=torch.bool)
        for p in {ev.resolved(precision), ev.resolved(random_precision)}:  # every head kept: the clean model
            ev._known.update({ev._key(every, s, p): ev.clean for s in (True, False)})
        ev._skip = SkipCache() if layer_skip and prefixes.has_view() else None
        ev.empty = {k: v[0] for k, v in ev.evaluate(~every[None]).items()}  # captures the start states
        if ev._skip is not None and not check_skip(ev):
            ev._skip = None
        ev.stats.seconds = time.perf_counter() - t0  # the empty circuit's evaluate() added its part: counted once
        return ev

    # ------------------------------------------------------------------ scoring

    def _score(self, logits: Tensor, index: Tensor) -> dict[str, Tensor]:
        """Metric values of the examples ``index`` from their rows' logits ``[len(index) * group, P, V]``."""
        ref = None if self.reference_logprobs is None else self.reference_logprobs[index]
        batch = MetricBatch(prompts=self.prompts, index=index, positions=self.positions, last=self.last,
                            group=self.group, reference_logprobs=ref)
        logits = logits.float()
        return {name: get_metric(name)(logits, batch).detach().float().cpu() for name in self.metrics}

    def evaluate(self, keep: Bool[Tensor, "C n_heads_total"], n: int | None = None,
                 precision: str | None = None) -> dict[str, Float[Tensor, "C n"]]:
        """Per-example metric values of each circuit in ``keep`` (True = head kept clean), on the
        first ``n`` examples (default: all ``self.n``), its passes at ``precision`` (default:
        ``self.precision``); a circuit known on at least ``n`` at that precision is not run."""
        import time

        import torch

        t0 = time.perf_counter()
        if not 1 <= (n := self.n if n is None else int(n)) <= self.n:
            raise CircuitscanError(f"n must be in 1..{self.n} (the evaluator's examples), got {n}")
        precision = self.resolved(self.precision if precision is None else precision)
        keep = _as_keep(keep, self.model.layout).bool()
        unique, inverse = torch.unique(keep, dim=0, return_inverse=True)
        keys = [self._key(row, self.prefix_sharing, precision) for row in unique]
        todo = [i for i, key in enumerate(keys) if key not in self._known or len(self._known[key][self.metrics[0]]) < n]
        if todo:
            new = self._run(unique[todo], n, precision)
            for j, i in enumerate(todo):
                self._known[keys[i]] = {name: values[j] for name, values in new.items()}
        out = {name: torch.stack([self._known[key][name][:n] for key in keys]) for name in self.metrics}
        self.stats.seconds += time.perf_counter() - t0
        return {name: values[inverse] for name, values in out.items()}

    def resolved(self, precision: str) -> str:
        """``precision`` with ``auto`` resolved for this model's device (:mod:`circuitscan.precision`)."""
        return resolve_precision(precision, next(self.model.bridge.parameters()).device)

    def _key(self, keep: Tensor, sharing: bool, precision: str | None = None) -> tuple[bool, str, bytes]:
        """Per prefix-sharing setting (tests compare them) and precision (default the evaluator's)."""
        return sharing, precision or self.resolved(self.precision), keep.cpu().numpy().tobytes()

    def _run(self, unique: Bool[Tensor, "C n_heads_total"], n: int,
             precision: str | None = None) -> dict[str, Float[Tensor, "C n"]]:
        """Run distinct circuits on the first ``n`` examples, as many circuits and examples per pass as
        ``max_rows`` allows, the examples in blocks of one shared-prefix length (:mod:`.prefix_blocks`)."""
        import torch

        n_unique = unique.shape[0]
        out = {name: torch.empty(n_unique, n) for name in self.metrics}
        g = self.group
        vocab = int(self.model.bridge.cfg.d_vocab)
        budget = _budget(self.max_rows, len(self.positions), vocab, g)
        sharing = self.prefix_sharing and self._prefixes.has_view()
        blocks = _blocks(self.model, self.shared if sharing else None, n, g, self.positions, self.max_rows)
        plan = [(length, ex, max(1, budget // (len(ex) * g))) for length, ex in blocks]  # + circuits per pass
        n_layers = self.model.layout.n_layers
        starts = first_layers(unique, self.model.layout)
        order = pass_order(starts)
        ordered = starts[order].tolist()

        # passes per block as if every block may start late (a block without a capture splits evenly)
        planned = [plan_passes(ordered if self._skip is not None else [0] * n_unique, len(ex) * g, per_pass, n_layers)
                   for _, ex, per_pass in plan]
        n_passes = sum(map(len, planned))
        show = self.progress if self.progress is not None else None
        with torch.inference_mode(), precision_context(self.model, precision or self.precision), \
                bar("evaluating circuits", n_passes, show=show if n_passes > 4 else False) as advance:
            for (length, examples, per_pass), passes in zip(plan, planned, strict=True):
                index = torch.tensor(examples)
                rows = (index[:, None] * g + torch.arange(g)).reshape(-1)
                tokens = self.tokens[rows]
                mask = None if self.mask is None else self.mask[rows]
                with precision_context(self.model, self.precision):  # prefixes and captures: the base precision
                    past = self._prefix(length, tokens, mask, rows)
                    hidden, empty_logits = self._start_states(length, tokens, mask, rows, past, unique,
                                                              self.resolved(precision or self.precision))
                if empty_logits is not None:  # m(∅) itself, from the pass that captured its residual stream
                    for name, values in self._score(empty_logits[0], index).items():
                        out[name][0, index] = values
                    advance()
                    continue
                if hidden is None and self._skip is not None:
                    passes = plan_passes([0] * n_unique, len(rows), per_pass, n_layers)
                for lo, hi in passes:
                    idx = order[lo:hi]
                    s = int(starts[idx].min()) if hidden is not None else 0
                    logits = run_with_heads(self.model, tokens, unique[idx], self.source, rows=rows,
                                            positions=self.positions, attention_mask=mask, past=past,
                                            start=(s, hidden[s]) if s > 0 else None)
                    for c, ci in enumerate(idx.tolist()):
                        for name, values in self._score(logits[c], index).items():
                            out[name][ci, index] = values
                    self.stats.forward_passes += 1
                    self.stats.rows += len(idx) * len(rows)
                    self.stats.layer_rows += len(idx) * len(rows) * (n_layers - s)
                    advance()
        self.stats.circuits += n_unique
        return out

    def _start_states(self, length: int, tokens: Tensor, mask: Tensor | None, rows: Tensor, past: Prefix | None,
                      unique: Tensor, precision: str) -> tuple[Tensor | None, Tensor | None]:
        """The empty circuit's residual stream entering each layer for these rows (:mod:`.layer_skip`),
        or None (run every layer), captured now (one pass of the empty circuit, at the base precision)
        when missing and worth it; and that pass's logits when the empty circuit is all there is to run
        at the base precision (else None: at another precision it runs at its own)."""
        if self._skip is None:
            return None, None
        hidden = self._skip.get(length, rows)
        only_empty = (unique.shape[0] == 1 and not bool(unique.any())
                      and precision == self.resolved(self.precision))
        size = self.model.layout.n_layers * len(rows) * (tokens.shape[1] - length) * self.model.d_model * 4
        if hidden is not None or (unique.shape[0] < CAPTURE_MIN and not only_empty) or not self._skip.fits(size):
            return hidden, None
        hidden, logits = capture_empty(self, length, tokens, mask, rows, past)
        return hidden, logits if only_empty else None

    def _prefix(self, length: int, tokens: Tensor, mask: Tensor | None, rows: Tensor) -> Prefix | None:
        """The cached first ``length`` positions of these rows (computed once per length), or None."""
        past, ran = self._prefixes.get(length, rows, tokens, mask)
        if ran:
            self.stats.forward_passes += 1
            self.stats.rows += tokens.shape[0]
        return past

    # ------------------------------------------------------------------ summaries

    def mean_clean(self, metric: str, n: int | None = None) -> float:  # over the first n examples (default all)
        return float(self.clean[metric][:n].mean())

    def mean_empty(self, metric: str, n: int | None = None) -> float:
        return float(self.empty[metric][:n].mean())

    def faithfulness(self, values: Float[Tensor, "C n"], metric: str) -> Float[Tensor, " C"]:
        """(m(C) - m(∅)) / (m(M) - m(∅)) of each circuit, on example means (NaN if M and ∅ agree);
        m(M) and m(∅) over the same first ``values.shape[-1]`` examples as the circuits."""
        import torch

        clean, empty = self.mean_clean(metric, values.shape[-1]), self.mean_empty(metric, values.shape[-1])
        means = values.mean(-1)
        return torch.tensor([normalise(float(v), clean, empty) for v in means])

    def describe(self) -> dict[str, Any]:
        return {"ablation": self.ablation, "metrics": list(self.metrics), "n_examples": self.n,
                "max_rows": self.max_rows, "group": self.group, "precision": self.precision,
                "random_precision": self.resolved(self.random_precision)}
