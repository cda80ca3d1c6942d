"""ACDC, automatic circuit discovery (Conmy et al. 2023), at node and at edge level.

ACDC walks the graph from the output backwards (reverse topological order) and tries
to remove every connection into the current receiver, one at a time:

    D(H) = - mean_i goodness_i(H)          (KL for ``kl``, minus the logit difference ...)
    remove e  if  D(H without e) - D(H) < tau       (|...| < tau with ``abs_value``)

where H is the current graph: removed connections carry the sender's ablated value
(corrupted, mean or zero) into the receiver. Each try is one forward pass over the
prompts. Removals are final; a receiver whose own outputs have all been removed is
disconnected from the output, so its inputs are removed without trying them.

* ``level="node"``: the nodes are heads; removing a head ablates its output everywhere.
  Heads are visited from the last layer to the first (within a layer, last head
  first). Circuits are evaluated by
  :class:`~circuitscan.evaluation.intervention.CircuitEvaluator`.
* ``level="edge"``: the graph of :mod:`circuitscan.methods.edges` (input and heads to
  heads' q/k/v inputs and to the logits; MLPs are wiring). Receivers are visited from
  the logits down to layer 0 (within a layer: queries, then keys, then values, last
  head first), and each receiver's senders from the latest to the input.

ROC: ACDC predicts one circuit per threshold tau, so its ROC comes from a SWEEP of tau.
All thresholds of a sweep run in lockstep (each try of every threshold's run in one
batched forward pass; the runs do not interact, so each is exactly the run that
threshold alone would give). A head's (edge's) score is the largest tau at which it is
still in the circuit (0 if at none); ``stats["sweep"]`` lists every threshold's circuit.
By default the thresholds are ``relative_thresholds`` times the metric's span
|D(nothing kept) - D(clean model)|.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError
from ..progress import bar
from ._setup import BaselineConfig, PassCounter, build_objective, finish_scores
from .base import COMMON_SETTINGS, MethodSpec, examples_used, plural
from .edges import EdgeForward, EdgeGraph, removed_all, run_edges
from .patching import build_evaluator, goodness_sign

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.handle import ModelHandle
    from ..types import PromptSet, Scores

LEVELS = ("node", "edge")
DEFAULT_RELATIVE = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
_LOG_LIMIT = 5000


@dataclass(frozen=True)
class ACDCConfig(BaselineConfig):
    """ACDC settings.

    Attributes:
        level: ``node`` (heads) or ``edge``.
        thresholds: absolute values of tau to sweep; None = ``relative_thresholds`` x span.
        relative_thresholds: fractions of |D(nothing kept) - D(clean)| used when
            ``thresholds`` is None.
        abs_value: compare |D(H without e) - D(H)| with tau (ACDC's ``abs_value_threshold``).
        max_seconds: stop after this long (edge or node level); what was not tried stays
            in the circuit and ``stats`` says how far the run got and extrapolates.
        max_rows: prompt rows per forward pass at node level (thresholds x prompts).
        edge_rows: prompt rows per forward pass at edge level; each row holds every
            sender's difference (senders x seq x d_model floats: ~9 MB on SmolLM2 IOI).
    """

    level: str = "node"
    thresholds: tuple[float, ...] | None = None
    relative_thresholds: tuple[float, ...] = DEFAULT_RELATIVE
    abs_value: bool = False
    max_seconds: float | None = None
    max_rows: int = 256
    edge_rows: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in LEVELS:
            raise CircuitscanError(f"ACDC level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        taus = self.thresholds if self.thresholds is not None else self.relative_thresholds
        if not taus:
            raise CircuitscanError("ACDC needs at least one threshold")
        if any(not (t == t) or t < 0 for t in taus):  # NaN or negative
            raise CircuitscanError(f"ACDC thresholds must be >= 0, got {list(taus)}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise CircuitscanError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.max_rows < 1 or self.edge_rows < 1:
            raise CircuitscanError(f"max_rows and edge_rows must be >= 1, got {self.max_rows}, {self.edge_rows}")


@dataclass
class _Run:
    """Bookkeeping of a lockstep sweep."""

    taus: list[float]
    tried: int = 0
    skipped: int = 0
    stopped_early: bool = False
    visited: int = 0
    total: int = 0
    seconds: float = 0.0

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"thresholds": self.taus, "tries": self.tried, "skipped_disconnected": self.skipped,
                               "visited": self.visited, "to_visit": self.total, "stopped_early": self.stopped_early,
                               "loop_seconds": self.seconds}
        if self.stopped_early and self.visited:
            per_try = self.seconds / max(1, self.tried)
            out["seconds_per_try"] = per_try
            out["extrapolated_seconds_if_every_remaining_edge_is_tried"] = self.seconds + per_try * (
                self.total - self.visited)
            # the rate so far, skipped (disconnected) receivers included: a central estimate
            out["extrapolated_seconds_at_the_rate_so_far"] = self.seconds * self.total / self.visited
        return out


def _thresholds(cfg: ACDCConfig, span: float) -> list[float]:
    if cfg.thresholds is not None:
        return sorted(float(t) for t in cfg.thresholds)
    return sorted(float(r) * span for r in cfg.relative_thresholds)


def _decide(result: Tensor, taus: Tensor, abs_value: bool) -> Tensor:
    return (result.abs() if abs_value else result) < taus


def acdc_scores(model: ModelHandle, prompts: PromptSet, cfg: ACDCConfig) -> Scores:
    if cfg.level == "node":
        return _acdc_node(model, prompts, cfg)
    return _acdc_edge(model, prompts, cfg)


# --------------------------------------------------------------------------- node level


def _acdc_node(model: ModelHandle, prompts: PromptSet, cfg: ACDCConfig) -> Scores:
    import torch

    counter = PassCounter()
    layout = model.layout
    ev = build_evaluator(model, prompts, cfg, cfg.max_rows)
    name = ev.metrics[0]
    sign = goodness_sign(ev)
    d_clean = -sign * float(ev.clean[name].mean())
    d_empty = -sign * float(ev.empty[name].mean())
    taus = _thresholds(cfg, abs(d_empty - d_clean))
    T = len(taus)
    tau_t = torch.tensor(taus)
    keep = torch.ones(T, layout.n_total, dtype=torch.bool)
    cur = torch.full((T,), d_clean)
    order = list(range(layout.n_total - 1, -1, -1))  # last layer's last head first
    run = _Run(taus=taus, total=len(order))
    log: list[list[tuple[str, float, bool]]] = [[] for _ in range(T)]
    t0 = time.perf_counter()
    with bar(f"acdc (node, {T} thresholds)", len(order), show=cfg.progress) as advance:
        for h in order:
            if run.visited and cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                run.stopped_early = True
                break
            trial = keep.clone()
            trial[:, h] = False
            values = ev.evaluate(trial)[name]  # [T, n]
            new = -sign * values.mean(-1)
            result = new - cur
            remove = _decide(result, tau_t, cfg.abs_value)
            keep[remove, h] = False
            cur = torch.where(remove, new, cur)
            run.tried += 1
            run.visited += 1
            for t in range(T):
                if len(log[t]) < _LOG_LIMIT:
                    log[t].append((layout.head(h).name, float(result[t]), bool(remove[t])))
            advance()
    run.seconds = time.perf_counter() - t0
    node = _max_tau(keep, tau_t)
    counter.forward = ev.stats.forward_passes
    counter.rows_forward = ev.stats.rows
    sweep = [{"threshold": taus[t], "heads": [layout.head(i).name for i in keep[t].nonzero().flatten().tolist()],
              "damage": float(cur[t])} for t in range(T)]
    stats = {"level": "node", "roc_source": "threshold sweep", "sweep": sweep, "metric": name,
             "ablation": ev.ablation, "n_examples": ev.n, "damage_clean": d_clean, "damage_all_ablated": d_empty,
             "decisions": log if run.tried * T <= _LOG_LIMIT else None, **run.stats()}
    return finish_scores("acdc", node, None, counter, stats=stats, layout=layout)


def _max_tau(kept: Tensor, taus: Tensor) -> Tensor:
    """Per item: the largest tau whose run kept it, 0 where none did. kept: [T, items]."""
    import torch

    vals = torch.where(kept, taus[:, None].expand_as(kept), torch.zeros_like(kept, dtype=taus.dtype))
    return vals.max(0).values


# --------------------------------------------------------------------------- edge level


def _acdc_edge(model: ModelHandle, prompts: PromptSet, cfg: ACDCConfig) -> Scores:
    import torch

    counter = PassCounter()
    layout = model.layout
    obj = build_objective(model, prompts, cfg, counter=counter)
    graph = EdgeGraph.for_model(model)
    fwd = EdgeForward(model, graph)
    S, R = graph.n_senders, graph.n_receivers
    valid = graph.valid

    # the clean model (and a check that the receivers' private inputs reproduce it) and nothing kept
    none = torch.zeros(1, S, R, dtype=torch.bool)
    base = run_edges(obj, fwd, torch.cat([none, removed_all(graph)]), verify=True, max_rows=cfg.edge_rows)
    d_clean, d_empty = float(-base[0].mean()), float(-base[1].mean())
    taus = _thresholds(cfg, abs(d_empty - d_clean))
    T = len(taus)
    tau_t = torch.tensor(taus)
    removed = torch.zeros(T, S, R, dtype=torch.bool)
    cur = torch.full((T,), d_clean)

    order = _edge_order(graph)
    run = _Run(taus=taus, total=len(order))
    log: list[list[tuple[str, float, bool]]] = [[] for _ in range(T)]
    H = layout.n_heads
    t0 = time.perf_counter()
    with bar(f"acdc (edge, {T} thresholds, {len(order)} edges)", len(order), show=cfg.progress) as advance:
        for s, r in order:
            if run.tried and cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                run.stopped_early = True
                break
            run.visited += 1
            rec = graph.receivers[r]
            if rec.port == "logits":
                connected = torch.ones(T, dtype=torch.bool)
            else:
                heads = [1 + rec.layer * H + h for h in rec.heads]
                # a head is still used if any of its outgoing edges is present
                out_present = (~removed[:, heads] & valid[heads][None]).any(-1)  # [T, n_heads]
                connected = out_present.any(-1)
            if not bool(connected.all()):
                removed[~connected, s, r] = True
                run.skipped += int((~connected).sum())
            test = connected.nonzero().flatten()
            if test.numel():
                trial = removed[test].clone()
                trial[:, s, r] = True
                values = run_edges(obj, fwd, trial, max_rows=cfg.edge_rows)  # [k, n]
                new = -values.mean(-1)
                result = new - cur[test]
                drop = _decide(result, tau_t[test], cfg.abs_value)
                removed[test[drop], s, r] = True
                cur[test[drop]] = new[drop]
                run.tried += 1
                name = graph.edge_name(s, r)
                for j, t in enumerate(test.tolist()):
                    if len(log[t]) < _LOG_LIMIT:
                        log[t].append((name, float(result[j]), bool(drop[j])))
            advance()
    run.seconds = time.perf_counter() - t0
    present = valid[None] & ~removed  # [T, S, R]
    edge_score = _max_tau(present.reshape(T, -1), tau_t).reshape(S, R)
    # a head is in a threshold's circuit when one of its outgoing edges is present
    head_in = present[:, 1:].any(-1)  # [T, n_heads]
    node = _max_tau(head_in, tau_t)
    sweep = []
    for t in range(T):
        names = [graph.edge_name(s, r) for s, r in present[t].nonzero().tolist()]
        sweep.append({"threshold": taus[t], "heads": [layout.head(i).name for i in head_in[t].nonzero().flatten().tolist()],
                      "edges": names if len(names) <= 20000 else None, "n_edges": len(names),
                      "damage": float(cur[t])})
    stats = {"level": "edge", "roc_source": "threshold sweep", "sweep": sweep, "graph": graph.describe(),
             "damage_clean": d_clean, "damage_all_ablated": d_empty,
             "decisions": log if run.tried * T <= _LOG_LIMIT else None, **run.stats()}
    return finish_scores("acdc-edge", node, obj, counter, edges=graph.to_dict(edge_score), stats=stats)


def _edge_order(graph: Any) -> list[tuple[int, int]]:
    """(sender, receiver) pairs in ACDC's visiting order."""
    L = graph.layout.n_layers
    out: list[tuple[int, int]] = []
    for layer in range(L, -1, -1):
        for port, idx in graph.layer_receivers(layer).items():
            del port
            for r in reversed(idx):
                out.extend((s, r) for s in range(graph.n_upstream(layer) - 1, -1, -1))
    return out


class ACDCScorer:
    """``acdc`` (node level) as a :class:`~circuitscan.methods.base.Scorer`."""

    name = "acdc"
    level = "node"

    def score(self, model: ModelHandle, prompts: PromptSet, cfg: Any = None) -> Scores:
        from dataclasses import replace

        cfg = cfg or ACDCConfig(level=self.level)
        if cfg.level != self.level:
            cfg = replace(cfg, level=self.level)
        return acdc_scores(model, prompts, cfg)


class ACDCEdgeScorer(ACDCScorer):
    """``acdc-edge`` (edge level) as a :class:`~circuitscan.methods.base.Scorer`."""

    name = "acdc-edge"
    level = "edge"


ACDC_SETTINGS = {**COMMON_SETTINGS, "acdc_thresholds": "thresholds", "max_seconds": "max_seconds"}


def _cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n, n_total = examples_used(cfg, prompts), model.layout.n_total
    T = len(cfg.thresholds or cfg.relative_thresholds)
    return 3 * n + n_total * T * n, 0, f"{n_total} heads x {plural(T, 'threshold')}, one try each"


def _edge_cost(cfg: Any, model: Any, prompts: Any) -> tuple[float, float, str]:
    n = examples_used(cfg, prompts)
    T = len(cfg.thresholds or cfg.relative_thresholds)
    e = EdgeGraph.for_model(model).n_edges
    return 2 * n + e * T * n, 0, f"up to {e} edges x {plural(T, 'threshold')}, one try each"


SPEC = MethodSpec(
    name="acdc", scorer=ACDCScorer, config=ACDCConfig, cost=_cost, threshold_sweep=True, default=True,
    settings=ACDC_SETTINGS, fixed={"level": "node"},
    summary="ACDC at node level: prune heads whose removal changes the output by less than a threshold",
    source="Conmy et al. 2023, arXiv:2304.14997",
)
EDGE_SPEC = MethodSpec(
    name="acdc-edge", scorer=ACDCEdgeScorer, config=ACDCConfig, cost=_edge_cost, threshold_sweep=True,
    edges=True, settings=ACDC_SETTINGS, fixed={"level": "edge"},
    summary="ACDC over head-level edges (receivers' q/k/v inputs)",
    source="Conmy et al. 2023, arXiv:2304.14997",
)
