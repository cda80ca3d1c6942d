"""Attribution graphs over SAE features (Marks et al. 2024, "Sparse Feature Circuits",
as replicated by Udell et al. 2025), with the double-counting correction.

Definitions (what is computed, exactly)
---------------------------------------
Sites ``S`` (:mod:`.sites`) each carry an SAE; at site ``s`` the model's activation
splits exactly into ``x_s = sum_i f_i W_D[i] + b + eps_s`` (features, decoder bias, error).
``m`` is the objective: the next-token cross-entropy at the last position (for a target
token), or a task metric; over a prompt set, its mean over prompts. Everything below is
summed over positions and averaged over prompts.

* node score of feature ``i`` at ``s``: ``n_i = sum_t f_i(t) * dm/df_i(t)`` where the
  derivative moves ``x_s`` along ``W_D[i]`` and lets everything downstream respond. It
  is the first-order estimate of ``m(clean) - m(feature i zero-ablated)``. Error node:
  ``n_eps = sum_t eps_s(t) . dm/dx_s(t)``. Per site, ``sum_i n_i + n_eps + n_bias =
  sum_t x_s(t) . dm/dx_s(t)`` exactly (the site's total, reported).
* positions the SAEs were not trained on (``SublayerSAEs.skip_positions``, position 0 with
  its attention sink for trained SAEs) are neither features nor error: sums over ``t``
  above run over the covered positions, the rest of the site's total is reported as
  ``uncovered``, and ablations (:mod:`.ablate`) never change those positions. (Counting
  the sink as SAE error made every error ablation destroy the sink, and with it the
  model.)
* kept nodes: the ``top_k`` features of each site by ``|n_i|``, its error node, and a
  ``rest`` node aggregating every other feature, so that nothing is silently dropped.
* edge from upstream node ``u`` (site ``U``) to downstream node ``d`` (site ``V > U``):
  ``e(u -> d) = sum_t' a_u(t') * d/da_u(t') [ sum_t c_d(t) a_d(t) ]  |direct``
  with ``a`` a feature activation (the error vector for error nodes, a dot product),
  ``c_d(t) = dm/da_d(t)`` held constant, and *direct* meaning: holding fixed the output
  of every site strictly between ``U`` and ``V``. This is Marks et al.'s
  ``(dm/dd)(dd/du) u`` (the seed post writes it ``f_i * d n_{f_j} / d f_i`` with
  ``n_{f_j} = f_j * dm/df_j`` and the gradient held constant). Edges into the output:
  ``e(u -> m) = sum_t a_u(t) dm/da_u(t) |direct`` (holding every later site fixed).

The double-counting correction
------------------------------
Along the residual stream a node reaches a later one through intermediate sites too.
With ``T_VU`` the total Jacobian from site ``U``'s output to site ``V``'s computed
value and ``D_VU`` the direct one, the chain rule gives, for sites ``U < W < V``,
``T_VU = D_VU + sum_W D_VW T_WU``, hence

    D_VU = T_VU - sum_{U < W < V} D_VW T_WU.

For three sites A < B < C: ``D_CA = T_CA - D_CB T_BA`` (A->C minus the effect through
A->B->C). For Marks et al.'s four sublayers A = resid.L-1, B = attn.L, C = mlp.L,
D = resid.L, expanding ``T_CA``: ``D_DA = T_DA - D_DB D_BA - D_DC D_CA - D_DC D_CB D_BA``,
the paths A->B->D, A->C->D and A->B->C->D of the seed post's footnote. ``edges=
"corrected"`` computes exactly this subtraction with vector-Jacobian products (for each
downstream node: one backward pass for the total row, then one per intermediate site,
nearest first); ``edges="direct"`` obtains the same quantity by cutting the gradient at
every intermediate site (a second forward pass in which each site's output is a leaf:
one backward pass per node); ``edges="total"`` keeps the uncorrected, double-counted
``T_VU`` for comparison. The subtraction runs through every node of the intermediate
site (all its features, its error and its bias, i.e. the site's whole output vector), so
it is exact, not limited to the kept nodes. Sites before the latest residual site
(``resid.L``/``embed``) preceding ``V`` reach ``V`` only through it; their direct
edges are zero and are not computed.

A consequence used in the tests: for every node ``u``, ``n_u = e(u -> m) + sum over later
sites V of sum over V's nodes (kept, error, rest) of e(u -> d)`` -- every path leaves
``u`` through exactly one first site.

Counterfactual baseline
-----------------------
``GraphConfig(baseline="corrupt")`` with ``baseline_tokens`` (a task's paired negatives)
is Marks et al.'s attribution patching: every activation ``a`` multiplying a derivative
above (node scores, and the upstream factor of edges) becomes ``a - a_corrupt``, the
decoder bias drops out, derivatives stay at the clean prompt. The node score is then the
first-order estimate of ``m(clean) - m(node patched to its corrupted value)``, and every
identity above still holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import CircuitscanError
from ..sae.model import decode_with, detached_weights, encode_with
from .sites import Site, upstream_of

if TYPE_CHECKING:
    from ..models.handle import ModelHandle
    from ..types import PromptSet
    from .saes import SublayerSAEs

EDGE_MODES = ("corrected", "direct", "total")
OUTPUT = "output"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CircuitscanError(msg)


@dataclass(frozen=True)
class GraphConfig:
    """How a graph is built.

    Attributes:
        top_k: features kept per site, by absolute node score.
        edges: ``"corrected"`` (the seed post's subtraction; default), ``"direct"`` (the
            same quantity by stopping gradients at intermediate sites) or ``"total"``
            (uncorrected: double counts paths through intermediate sites).
        compute_edges: False computes node scores only (one backward pass per batch).
        batch_size: prompts per forward pass.
        head_shares: split attention-output features over the layer's heads (through W_O).
        baseline: ``"zero"`` (the seed post's ``f * dm/df``: against the feature switched
            off) or ``"corrupt"`` (Marks et al.'s attribution patching for tasks with
            counterfactual prompts: ``(f - f_corrupt) * dm/df``, upstream activations in
            the edges replaced by their differences likewise); needs baseline tokens.
    """

    top_k: int = 10
    edges: str = "corrected"
    compute_edges: bool = True
    batch_size: int = 8
    head_shares: bool = True
    baseline: str = "zero"

    def __post_init__(self) -> None:
        _check(self.baseline in ("zero", "corrupt"), f"baseline must be 'zero' or 'corrupt', got {self.baseline!r}")
        _check(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        _check(self.edges in EDGE_MODES, f"edges must be one of {', '.join(EDGE_MODES)}, got {self.edges!r}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """What the graph explains: ``fn(logits [b, T, V], index [b]) -> [b]`` per prompt.

    ``index`` says which prompts (rows of ``tokens``) a batch holds.
    """

    name: str
    description: str
    fn: Callable[[Tensor, Tensor], Tensor]
    higher_is_better: bool
    targets: list[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _upcast(t: Tensor) -> Tensor:
    """At least float32 (float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


def next_token_objective(model: ModelHandle, tokens: Tensor, target: int | list[int] | None = None,
                         attention_mask: Tensor | None = None) -> Objective:
    """Cross-entropy of the next token at the last position.

    Args:
        target: token id(s) to predict (one, or one per prompt); None: the model's own
            top prediction on each prompt (what it actually says next).
    """
    n = tokens.shape[0]
    if target is None:
        with torch.no_grad():
            kw = {} if attention_mask is None else {"attention_mask": attention_mask}
            logits = model.bridge(tokens, **kw)
        targets = logits[:, -1].argmax(-1).tolist()
        how = "the model's top next-token prediction"
    else:
        targets = [int(target)] * n if isinstance(target, int) else [int(t) for t in target]
        how = "the given next token"
    if len(targets) != n:
        raise CircuitscanError(f"need one target per prompt ({n}), got {len(targets)}")
    vocab = int(model.bridge.cfg.d_vocab)
    if any(not 0 <= t < vocab for t in targets):
        raise CircuitscanError(f"target token ids must lie in 0..{vocab - 1}")
    tgt = torch.tensor(targets)

    def fn(logits: Tensor, index: Tensor) -> Tensor:
        lp = _upcast(logits[:, -1]).log_softmax(-1)
        return -lp.gather(-1, tgt[index][:, None].to(lp.device))[:, 0]

    return Objective("ce", f"next-token cross-entropy at the last position ({how})", fn,
                     higher_is_better=False, targets=targets)


def task_objective(prompts: PromptSet, metric: str | None = None) -> Objective:
    """A task metric of :mod:`circuitscan.evaluation.metrics` on the positive prompts.

    Metrics that need the clean model's reference (``kl``: its gradient at the clean
    model is zero) or extra suffix rows (two-digit years) cannot be differentiated here;
    for those, and for tasks with no answer tokens, the cross-entropy of the answer is used.
    """
    from ..evaluation.metrics import MetricBatch, default_metric, get_metric

    name = metric or default_metric(prompts)
    m = get_metric(name)
    m.check(prompts)
    if m.needs_reference or m.suffixes(prompts) is not None:
        if prompts.answers is None or metric is not None:
            raise CircuitscanError(
                f"metric {name!r} cannot be attributed by gradients here (it needs "
                f"{'the clean reference' if m.needs_reference else 'extra suffix rows'}); choose "
                "logit_diff, logit_diff_max_wrong or induction_loss, or give --prompt with a target"
            )
        answers = prompts.answers[:, 0]

        def ce(logits: Tensor, index: Tensor) -> Tensor:
            lp = _upcast(logits[:, -1]).log_softmax(-1)
            return -lp.gather(-1, answers[index][:, None].to(lp.device))[:, 0]

        return Objective("answer_ce", f"cross-entropy of the first answer token ({name} is not differentiable "
                         "here)", ce, higher_is_better=False, targets=answers.tolist())
    seq = prompts.seq_len
    positions = torch.arange(seq) if m.positions == "all" else torch.tensor([seq - 1])
    last = seq - 1 if m.positions == "all" else 0

    def fn(logits: Tensor, index: Tensor) -> Tensor:
        batch = MetricBatch(prompts=prompts, index=index, positions=positions, last=last)
        return _upcast(m(logits[:, positions], batch))

    return Objective(name, m.description, fn, higher_is_better=m.higher_is_better,
                     info={"task": prompts.task})


# --------------------------------------------------------------------------- the graph


@dataclass
class GraphNode:
    """One node. ``score``: attribution to the objective (see the module docstring);
    ``activation``: mean over prompts of the summed activation (error: of ``|eps|``);
    ``position``: the position with the largest ``|score|`` contribution."""

    id: str
    site: str
    kind: str  # feature | error | rest | output
    feature: int | None = None
    score: float = 0.0
    activation: float = 0.0
    position: int | None = None
    heads: dict[str, float] | None = None  # attn features: |score| split by what each head writes along the atom
    heads_encoder: dict[str, float] | None = None  # attn features: exact split of the score by encoder input (+ "const")


@dataclass
class AttributionGraph:
    """Nodes, edges (``(src id, dst id) -> weight``) and the accounting per site."""

    sites: list[str]
    nodes: dict[str, GraphNode]
    edges: dict[tuple[str, str], float]
    site_totals: dict[str, dict[str, float]]
    objective: dict[str, Any]
    config: dict[str, Any]
    n_prompts: int
    seq_len: int
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    # per attn site and head: {"kept": sum over kept features of the decoder-side share, "all": over every
    # feature, "kept_encoder" / "all_encoder": sums of |encoder-side share|}
    head_scores: dict[str, dict[str, list[float]]] | None = None

    def kept(self, site: str) -> list[GraphNode]:
        return [n for n in self.nodes.values() if n.site == site and n.kind == "feature"]

    def incoming(self, node: str) -> dict[str, float]:
        return {s: w for (s, d), w in self.edges.items() if d == node}

    def outgoing(self, node: str) -> dict[str, float]:
        return {d: w for (s, d), w in self.edges.items() if s == node}

    def thread(self, *, features_only: bool = True) -> list[str]:
        """The strongest chain into the output: from the output, repeatedly step to the
        upstream node with the largest ``|edge|``; returned upstream first."""
        chain: list[str] = []
        cur = OUTPUT
        while True:
            inc = {s: w for s, w in self.incoming(cur).items()
                   if not features_only or self.nodes[s].kind == "feature"}
            if not inc:
                break
            cur = max(inc, key=lambda s: (abs(inc[s]), s))
            chain.append(cur)
        return chain[::-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "edges": [[s, d, w] for (s, d), w in sorted(self.edges.items(), key=lambda kv: -abs(kv[1]))],
            "site_totals": self.site_totals,
            "objective": self.objective,
            "config": self.config,
            "n_prompts": self.n_prompts,
            "seq_len": self.seq_len,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "seconds": self.seconds,
            "head_scores": self.head_scores,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttributionGraph:
        try:
            nodes = {n["id"]: GraphNode(**n) for n in data["nodes"]}
            edges = {(str(s), str(d)): float(w) for s, d, w in data["edges"]}
            return cls(sites=list(data["sites"]), nodes=nodes, edges=edges, site_totals=data["site_totals"],
                       objective=data["objective"], config=data["config"], n_prompts=int(data["n_prompts"]),
                       seq_len=int(data["seq_len"]), forward_passes=int(data.get("forward_passes", 0)),
                       backward_passes=int(data.get("backward_passes", 0)), seconds=float(data.get("seconds", 0.0)),
                       head_scores=data.get("head_scores"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CircuitscanError(f"not a feature graph file ({type(exc).__name__}: {exc})") from exc


def node_id(site: str, kind: str, feature: int | None = None) -> str:
    return f"{site}/f{feature}" if kind == "feature" else f"{site}/{kind}"


# --------------------------------------------------------------------------- forward passes


@dataclass
class _Pass:
    logits: Tensor
    x: dict[str, Tensor]  # computed site values (pre-intervention), with graph
    handles: dict[str, Tensor]  # total: zero deltas added to each site; leaf: the site outputs
    z: dict[str, Tensor]  # hook_z of attention layers (detached), when asked


def _forward(model: ModelHandle, tokens: Tensor, sites: list[Site], *, mode: str, mask: Tensor | None,
             clean: dict[str, Tensor] | None = None, z_layers: tuple[int, ...] = ()) -> _Pass:
    """One forward pass with a hook at every site.

    ``mode="total"``: the site outputs ``x + delta`` with ``delta`` a zero leaf, so
    gradients at ``delta`` are total derivatives. ``mode="leaf"``: the site outputs a leaf
    holding the clean value, so paths through the site are cut (direct derivatives).
    ``mode="observe"``: nothing changes, activations are recorded detached, no graph is built.
    """
    xs: dict[str, Tensor] = {}
    handles: dict[str, Tensor] = {}
    zs: dict[str, Tensor] = {}

    def make(site: Site):
        def hook(x: Tensor, hook) -> Tensor:  # noqa: ARG001
            xs[site.name] = x
            if mode == "observe":
                xs[site.name] = x.detach()
                return x
            if mode == "total":
                delta = torch.zeros_like(x, requires_grad=True)
                handles[site.name] = delta
                return x + delta
            assert clean is not None
            leaf = clean[site.name].detach().clone().to(x.dtype).requires_grad_(True)
            handles[site.name] = leaf
            return leaf

        return hook

    def make_z(layer: int):
        def hook(z: Tensor, hook) -> Tensor:  # noqa: ARG001
            zs[f"attn.{layer}"] = z.detach()
            return z

        return hook

    fwd = [(s.hook, make(s)) for s in sites] + [(f"blocks.{la}.attn.hook_z", make_z(la)) for la in z_layers]
    kw = {} if mask is None else {"attention_mask": mask}
    with torch.no_grad() if mode == "observe" else torch.enable_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=fwd, **kw)
    missing = [s.name for s in sites if s.name not in xs]
    if missing:
        raise CircuitscanError(f"model {model.spec!r} never reached the hook point(s) of {', '.join(missing)}")
    return _Pass(logits=logits, x=xs, handles=handles, z=zs)


def _baseline_pass(model: ModelHandle, tokens: Tensor, sites: list[Site], mask: Tensor | None,
                   z_layers: tuple[int, ...]) -> _Pass:
    """Site activations (and attention z) of the counterfactual prompts, detached."""
    return _forward(model, tokens, sites, mode="observe", mask=mask, z_layers=z_layers)


def _grad(out: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    gs = torch.autograd.grad(out, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs, strict=True)]


# --------------------------------------------------------------------------- the computation


class _Counter:
    def __init__(self) -> None:
        self.fwd = 0
        self.bwd = 0


def attribution_graph(
    model: ModelHandle,
    saes: SublayerSAEs,
    tokens: Tensor,
    objective: Objective,
    cfg: GraphConfig | None = None,
    *,
    attention_mask: Tensor | None = None,
    sites: list[Site] | None = None,
    baseline_tokens: Tensor | None = None,
    baseline_mask: Tensor | None = None,
) -> AttributionGraph:
    """Build the attribution graph of ``objective`` on ``tokens`` (see the module docstring).

    Args:
        model: a loaded model (any dtype; the SAEs are cast to it).
        saes: SAEs for (at least) ``sites``.
        tokens: [n_prompts, seq] token ids, all of one length (left padding + mask allowed).
        objective: :func:`next_token_objective` or :func:`task_objective`.
        cfg: :class:`GraphConfig`.
        sites: which of the SAEs' sites to use (default: all).
        baseline_tokens: with ``cfg.baseline == "corrupt"``: one counterfactual prompt per
            prompt, of the same length (a task's paired negatives).
    """
    cfg = cfg or GraphConfig()
    if cfg.baseline == "corrupt":
        if baseline_tokens is None:
            raise CircuitscanError("baseline 'corrupt' needs counterfactual prompts (a task with paired negatives)")
        if tuple(baseline_tokens.shape) != tuple(tokens.shape):
            raise CircuitscanError(
                f"baseline prompts have shape {tuple(baseline_tokens.shape)}, the prompts {tuple(tokens.shape)}; "
                "they must pair one to one"
            )
    t0 = time.perf_counter()
    sites = sorted(sites) if sites is not None else saes.sites
    saes.subset(sites).check_model(model)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise CircuitscanError(f"tokens must be a non-empty [prompts, seq] tensor, got {tuple(tokens.shape)}")
    n, seq = tokens.shape
    dtype = next(model.bridge.parameters()).dtype
    W = {s.name: detached_weights(saes[s], dtype) for s in sites}
    counter = _Counter()
    # positions the SAEs were not trained on (the attention sink): neither features nor error
    cov = torch.ones(seq, dtype=dtype)
    cov[: saes.skip_positions] = 0.0
    cov3 = cov[None, :, None]
    attn_layers = tuple(s.layer for s in sites if s.kind == "attn") if cfg.head_shares else ()
    w_o = model.bridge.W_O.detach().to(dtype) if attn_layers else None
    w_o_bias = _attn_out_bias(model, dtype) if attn_layers else {}

    # ---- pass 1: node scores (one forward, one backward per batch) --------------------------
    acc = {s.name: {"feat": 0.0, "err": 0.0, "bias": 0.0, "uncovered": 0.0, "total": 0.0, "act": 0.0,
                    "err_norm": 0.0, "pos_feat": 0.0, "pos_err": 0.0} for s in sites}
    head_acc: dict[str, tuple[Tensor, Tensor]] = {}
    value_sum = 0.0
    batches = [torch.arange(lo, min(n, lo + cfg.batch_size)) for lo in range(0, n, cfg.batch_size)]
    corrupt = cfg.baseline == "corrupt"
    base_runs: list[_Pass | None] = []
    for index in batches:
        mask = None if attention_mask is None else attention_mask[index]
        base = None
        if corrupt:
            bmask = None if baseline_mask is None else baseline_mask[index]
            base = _baseline_pass(model, baseline_tokens[index], sites, bmask, attn_layers)
            counter.fwd += 1
        base_runs.append(base)
        p = _forward(model, tokens[index], sites, mode="total", mask=mask, z_layers=attn_layers)
        counter.fwd += 1
        vals = objective.fn(p.logits, index)
        value_sum += float(vals.detach().sum())
        m = vals.sum() / n
        gs = _grad(m, [p.handles[s.name] for s in sites])
        counter.bwd += 1
        for s, g in zip(sites, gs, strict=True):
            a = acc[s.name]
            w = W[s.name]
            x = p.x[s.name].detach()
            f, eps = _split(w, x, cov3)
            c = g @ w["W_D"].T  # dm/df per position
            df, deps, dx, z_h = f, eps, x, p.z.get(s.name)
            if base is not None:  # differences from the counterfactual run; the bias cancels
                xb = base.x[s.name]
                fb, eps_b = _split(w, xb, cov3)
                df, deps, dx = f - fb, eps - eps_b, x - xb
                z_h = None if z_h is None else z_h - base.z[s.name]
            contrib = df * c
            a["feat"] = a["feat"] + contrib.sum((0, 1))
            a["pos_feat"] = a["pos_feat"] + contrib.sum(0)
            e = (deps * g).sum(-1)
            a["err"] += float(e.sum())
            a["pos_err"] = a["pos_err"] + e.sum(0)
            a["bias"] += 0.0 if base is not None else float((w["b"] * g * cov3).sum())
            a["uncovered"] += float((dx * g * (1.0 - cov3)).sum())
            a["total"] += float((dx * g).sum())
            a["act"] = a["act"] + f.sum((0, 1))
            a["err_norm"] += float(eps.norm(dim=-1).sum())
            if s.kind == "attn" and z_h is not None:
                enc, dec = _head_shares(z_h, w_o[s.layer], None if base is not None else w_o_bias.get(s.layer), w,
                                        f, c, delta=df if base is not None else None)
                prev = head_acc.get(s.name)
                head_acc[s.name] = (enc, dec) if prev is None else (prev[0] + enc, prev[1] + dec)
        del p, gs

    # ---- node selection ---------------------------------------------------------------------
    nodes: dict[str, GraphNode] = {}
    kept: dict[str, list[int]] = {}
    site_totals: dict[str, dict[str, float]] = {}
    for s in sites:
        a = acc[s.name]
        feat = a["feat"].detach().double()
        order = torch.argsort(-feat.abs(), stable=True)
        chosen = [int(i) for i in order[: cfg.top_k] if float(feat[i]) != 0.0]
        kept[s.name] = chosen
        for i in chosen:
            pos = int(a["pos_feat"][:, i].abs().argmax())
            heads = heads_enc = None
            if s.name in head_acc:
                enc, dec = head_acc[s.name]
                heads = {f"L{s.layer}H{h}": float(v) for h, v in enumerate(dec[:, i].tolist())}
                he = enc[:, i].tolist()
                heads_enc = {f"L{s.layer}H{h}": float(v) for h, v in enumerate(he[:-1])}
                heads_enc["const"] = float(he[-1])
            nodes[node_id(s.name, "feature", i)] = GraphNode(
                id=node_id(s.name, "feature", i), site=s.name, kind="feature", feature=i, score=float(feat[i]),
                activation=float(a["act"][i]) / n, position=pos, heads=heads, heads_encoder=heads_enc,
            )
        err_pos = int(a["pos_err"].abs().argmax()) if isinstance(a["pos_err"], Tensor) else None
        nodes[node_id(s.name, "error")] = GraphNode(
            id=node_id(s.name, "error"), site=s.name, kind="error", score=a["err"], activation=a["err_norm"] / n,
            position=err_pos,
        )
        rest = float(feat.sum()) - sum(float(feat[i]) for i in chosen)
        nodes[node_id(s.name, "rest")] = GraphNode(id=node_id(s.name, "rest"), site=s.name, kind="rest", score=rest)
        kept_abs = sum(abs(float(feat[i])) for i in chosen)
        site_totals[s.name] = {
            "total": a["total"], "features": float(feat.sum()), "kept": float(feat.sum()) - rest, "rest": rest,
            "error": a["err"], "bias": a["bias"], "uncovered": a["uncovered"],
            "n_active_features": int((a["act"] > 0).sum()),
            "abs_features": float(feat.abs().sum()), "abs_kept": kept_abs,
            "abs_rest": float(feat.abs().sum()) - kept_abs,
        }
    value = value_sum / n
    nodes[OUTPUT] = GraphNode(id=OUTPUT, site=OUTPUT, kind="output", score=value)
    head_scores = None
    if head_acc:
        head_scores = {}
        for name, (enc, dec) in head_acc.items():
            cols = torch.tensor(kept[name], dtype=torch.long)
            head_scores[name] = {"kept": dec[:, cols].sum(1).tolist(), "all": dec.sum(1).tolist(),
                                 "kept_encoder": enc[:-1, cols].abs().sum(1).tolist(),
                                 "all_encoder": enc[:-1].abs().sum(1).tolist()}

    # ---- pass 2: edges -----------------------------------------------------------------------
    edges: dict[tuple[str, str], float] = {}
    if cfg.compute_edges:
        from ..progress import bar

        n_targets = sum(len(kept[s.name]) + 2 for s in sites) + 1
        with bar("attribution graph edges", len(batches) * n_targets,
                 show=None if len(batches) * n_targets > 40 else False) as advance:
            for index, base in zip(batches, base_runs, strict=True):
                mask = None if attention_mask is None else attention_mask[index]
                _edges_for_batch(model, tokens[index], index, n, sites, W, kept, objective, cfg.edges, mask, edges,
                                 counter, advance, base, cov3)

    return AttributionGraph(
        sites=[s.name for s in sites], nodes=nodes, edges=edges, site_totals=site_totals,
        objective={"name": objective.name, "description": objective.description, "value": value,
                   "higher_is_better": objective.higher_is_better, "targets": objective.targets, **objective.info},
        config=asdict(cfg), n_prompts=n, seq_len=seq, forward_passes=counter.fwd, backward_passes=counter.bwd,
        seconds=time.perf_counter() - t0, head_scores=head_scores,
    )


def _split(w: dict[str, Tensor], x: Tensor, cov3: Tensor) -> tuple[Tensor, Tensor]:
    """Features and error of ``x`` [b, seq, d], zero at positions the SAE does not cover."""
    f = encode_with(w, x)
    return f * cov3, (x - decode_with(w, f)) * cov3


def _attn_out_bias(model: ModelHandle, dtype) -> dict[int, Tensor]:
    """Each layer's attention output bias (zeros when the model has none)."""
    out = {}
    b_o = getattr(model.bridge, "b_O", None)
    for layer in range(model.layout.n_layers):
        try:
            out[layer] = b_o[layer].detach().to(dtype) if b_o is not None else None
        except (TypeError, IndexError):
            out[layer] = None
    return out


def _head_shares(z: Tensor, w_o: Tensor, b_o: Tensor | None, w: dict[str, Tensor], f: Tensor,
                 c: Tensor, delta: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Two ways to give an attention-output feature's node score to the layer's heads.

    *Encoder side* (exact): where feature i is active, ``f_i = sum_h r_h . W_E[:, i] + const``
    with ``r_h = z_h W_O^h``, so ``n_i = sum_h sum_t (r_h(t) . W_E[:, i]) c_i(t) + const part``.
    Returns ``[n_heads + 1, F]`` (last row: the constant part, from the biases). Heads that
    only feed the encoder through cross-talk weights get shares that the SAE error cancels.

    *Decoder side* (the default head view): at each position, ``|f_i(t) c_i(t)|`` is split
    over the heads in proportion to ``|r_h(t) . W_D[i]|``, how much each head writes along the
    feature's atom. Returns ``[n_heads, F]`` (non-negative).

    With a counterfactual baseline, ``z`` is the difference of the heads' z from the
    baseline run and ``delta`` the features' differences: the decoder-side split uses
    them; the encoder side is not defined (ReLU of a difference) and comes back as zeros.
    """
    if z.ndim == 3:
        z = z.reshape(z.shape[0], z.shape[1], w_o.shape[0], -1)
    z = z.to(w_o.dtype)
    if delta is not None:
        write = torch.einsum("hdm,fm->hdf", w_o, w["W_D"])
        psi = torch.einsum("bthd,hdf->bthf", z, write).abs()
        share = psi / psi.sum(2, keepdim=True).clamp_min(1e-30)
        decoder = (share * (delta * c).abs()[:, :, None, :]).sum((0, 1)).detach()
        encoder = torch.zeros(w_o.shape[0] + 1, f.shape[-1], dtype=decoder.dtype, device=decoder.device)
        return encoder, decoder
    read = torch.einsum("hdm,mf->hdf", w_o, w["W_E"])  # each head's W_O read by each feature's encoder
    phi = torch.einsum("bthd,hdf->bthf", z, read)  # [b, T, H, F]
    active = (f > 0).to(c.dtype)
    weight = (c * active)[:, :, None, :]
    per_head = (phi * weight).sum((0, 1))  # [H, F]
    const_pre = w["b_E"] - w["b"] @ w["W_E"]
    if b_o is not None:
        const_pre = const_pre + b_o @ w["W_E"]
    const = (const_pre * c * active).sum((0, 1))
    encoder = torch.cat([per_head, const[None]], 0).detach()
    del phi
    write = torch.einsum("hdm,fm->hdf", w_o, w["W_D"])  # each head's W_O along each atom
    psi = torch.einsum("bthd,hdf->bthf", z, write).abs()
    share = psi / psi.sum(2, keepdim=True).clamp_min(1e-30)
    decoder = (share * (f * c).abs()[:, :, None, :]).sum((0, 1)).detach()
    return encoder, decoder


def _edges_for_batch(model, tokens, index, n, sites, W, kept, objective, mode, mask, edges, counter,
                     advance=lambda n=1: None, base: _Pass | None = None, cov3: Tensor | None = None) -> None:
    if cov3 is None:
        cov3 = torch.ones(1, tokens.shape[1], 1, dtype=next(iter(W.values()))["W_D"].dtype)
    p = _forward(model, tokens, sites, mode="total", mask=mask)
    counter.fwd += 1
    vals = objective.fn(p.logits, index)
    m = vals.sum() / n
    deltas = [p.handles[s.name] for s in sites]
    g = dict(zip([s.name for s in sites], _grad(m, deltas), strict=True))
    counter.bwd += 1
    if mode == "direct":
        clean = {k: v.detach() for k, v in p.x.items()}
        q = _forward(model, tokens, sites, mode="leaf", mask=mask, clean=clean)
        counter.fwd += 1
        m_leaf = objective.fn(q.logits, index).sum() / n
    # upstream contraction data (detached): activations and errors of every site
    up_data = {}
    for s in sites:
        f, eps = _split(W[s.name], p.x[s.name].detach(), cov3)
        if base is not None:  # attribution patching: upstream activations as differences from the baseline
            fb, eps_b = _split(W[s.name], base.x[s.name], cov3)
            f, eps = f - fb, eps - eps_b
        up_data[s.name] = (f, eps)

    def rows(target_fn: Callable[[_Pass], Tensor], ups: list[Site], out_name: str) -> dict[str, Tensor]:
        """The direct (or total) row d s / d y_U for every upstream site U."""
        if mode == "direct":
            s_val = target_fn(q)
            r = _grad(s_val, [q.handles[u.name] for u in ups])
            counter.bwd += 1
            return {u.name: v for u, v in zip(ups, r, strict=True)}
        s_val = target_fn(p)
        total = _grad(s_val, [p.handles[u.name] for u in ups])
        counter.bwd += 1
        r = {u.name: v for u, v in zip(ups, total, strict=True)}
        if mode == "total":
            return r
        # the correction: D_VU = T_VU - sum_{U<W<V} D_VW T_WU, nearest U first
        for j in range(len(ups) - 2, -1, -1):
            u = ups[j]
            later = ups[j + 1 :]
            through = sum((r[w.name] * p.x[w.name]).sum() for w in later)
            (corr,) = _grad(through, [p.handles[u.name]])
            counter.bwd += 1
            r[u.name] = r[u.name] - corr
        return r

    def contract(r: dict[str, Tensor], ups: list[Site]) -> dict[str, float]:
        out: dict[str, float] = {}
        for u in ups:
            f, eps = up_data[u.name]
            ru = r[u.name]
            per_feat = (f * (ru @ W[u.name]["W_D"].T)).sum((0, 1))
            ks = kept[u.name]
            for i in ks:
                out[node_id(u.name, "feature", i)] = float(per_feat[i])
            out[node_id(u.name, "rest")] = float(per_feat.sum()) - sum(float(per_feat[i]) for i in ks)
            out[node_id(u.name, "error")] = float((eps * ru).sum())
        return out

    def add(src_vals: dict[str, float], dst: str) -> None:
        for src, v in src_vals.items():
            edges[(src, dst)] = edges.get((src, dst), 0.0) + v
        advance()

    for v in sites:
        ups = upstream_of(v, sites)
        if not ups:
            continue
        wv = W[v.name]
        g_all = g[v.name].detach()
        gv = g_all * cov3  # feature and error nodes live at covered positions only
        site_rows: dict[str, dict[str, float]] = {}
        for i in kept[v.name]:
            c = gv @ wv["W_D"][i]

            def feat_target(pp: _Pass, i=i, c=c, wv=wv, name=v.name) -> Tensor:
                return (encode_with(wv, pp.x[name])[..., i] * c).sum()

            site_rows[node_id(v.name, "feature", i)] = contract(rows(feat_target, ups, v.name), ups)

        def err_target(pp: _Pass, wv=wv, gv=gv, name=v.name) -> Tensor:
            x = pp.x[name]
            return ((x - decode_with(wv, encode_with(wv, x))) * gv).sum()

        def total_target(pp: _Pass, gv=g_all, name=v.name) -> Tensor:  # the whole site: "rest" keeps the remainder
            return (pp.x[name] * gv).sum()

        site_rows[node_id(v.name, "error")] = contract(rows(err_target, ups, v.name), ups)
        whole = contract(rows(total_target, ups, v.name), ups)
        rest = {k: whole[k] - sum(site_rows[d][k] for d in site_rows) for k in whole}
        site_rows[node_id(v.name, "rest")] = rest
        for dst, vals in site_rows.items():
            add(vals, dst)

    ups = upstream_of(None, sites)
    if ups:
        def out_target(pp: _Pass) -> Tensor:
            return m_leaf if pp is not p else m

        add(contract(rows(out_target, ups, OUTPUT), ups), OUTPUT)


def graph_for_prompts(
    model: ModelHandle,
    saes: SublayerSAEs,
    prompts: PromptSet,
    cfg: GraphConfig | None = None,
    *,
    metric: str | None = None,
    n_prompts: int | None = None,
    sites: list[Site] | None = None,
) -> AttributionGraph:
    """The graph of a task's metric over (the first ``n_prompts`` of) its positive prompts
    (with ``cfg.baseline == "corrupt"``, against their paired negatives)."""
    cfg = cfg or GraphConfig()
    k = prompts.n_positive if n_prompts is None else min(n_prompts, prompts.n_positive)
    tokens = prompts.positive[:k]
    mask = None if prompts.positive_mask is None else prompts.positive_mask[:k]
    base = base_mask = None
    if cfg.baseline == "corrupt":
        if not prompts.paired:
            raise CircuitscanError(f"task {prompts.task!r} has no paired negatives; use baseline 'zero'")
        base = prompts.negative[:k]
        base_mask = None if prompts.negative_mask is None else prompts.negative_mask[:k]
    objective = task_objective(prompts, metric)
    return attribution_graph(model, saes, tokens, objective, cfg, attention_mask=mask, sites=sites,
                             baseline_tokens=base, baseline_mask=base_mask)


def explained_fractions(graph: AttributionGraph) -> dict[str, dict[str, float]]:
    """Per site, shares of the site's *absolute* attribution ``sum_i |n_i| + |n_eps|``
    carried by the kept features, the other features and the SAE error.

    Signed shares of the site's total are not used: node scores of one site cancel, and
    a residual site feeding a final RMSNorm/LayerNorm has a total near zero (the norm
    makes the output invariant to scaling it), so its signed shares are meaningless."""
    out = {}
    for site, t in graph.site_totals.items():
        denom = t.get("abs_features", math.nan) + abs(t["error"])
        ok = math.isfinite(denom) and denom > 1e-30
        out[site] = {
            "kept": t.get("abs_kept", math.nan) / denom if ok else math.nan,
            "rest": t.get("abs_rest", math.nan) / denom if ok else math.nan,
            "error": abs(t["error"]) / denom if ok else math.nan,
        }
    return out
