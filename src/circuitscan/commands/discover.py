"""``circuitscan discover``: the paper's method end to end, writing a run directory."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from .. import circuits
from ..activations import AGGREGATIONS
from ..config import (
    CIRCUIT_RULES,
    EDGE_RULES,
    FDR_RULES,
    FEATURE_CHANGES,
    LR_SCHEDULES,
    NODE_SCORES,
    SAE_PRECISIONS,
    SAEConfig,
    ScoringConfig,
    apply_compat,
)
from ..evaluation.performance import evaluate_run
from ..guards import check_discover_memory
from ..report import write_report
from ..run import discover
from ..rundir import check_out_dir
from .common import (
    add_model_args,
    add_task_args,
    build_prompts_from_args,
    finite_float,
    load_model_from_args,
    positive_int,
)
from .evaluate import add_intervention_args, non_negative_int, print_evaluation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover",
        help="find a circuit's heads with discrete SAE codes",
        description="Cache every head's output on positive and negative prompts, train a small SAE, "
        "discretise its features into one code per head per prompt, and score heads by the codes "
        "that appear only on positives (node level) or in head pairs only on positives (edge level).",
    )
    add_model_args(p)
    add_task_args(p)
    p.add_argument("--out", "-o", required=True, help="run directory to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that circuitscan wrote (never any other directory)")
    p.add_argument("--report", action="store_true",
                   help="also write RUN_DIR/report.html and its figures (as `circuitscan report` does)")
    p.add_argument("--save-activations", action="store_true",
                   help="also write activations.safetensors (per-head outputs, float32), which the report's "
                   "SAE-feature figures need")
    p.add_argument("--level", choices=("node", "edge", "both"), default="both", help="default: both")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="theta on softmaxed scores for the predicted circuit (default: best F1 when a "
                   "ground truth is known, else scores above uniform)")
    p.add_argument("--ground-truth", default=None,
                   help="registry name (ioi/acdc, ...), a JSON file, or heads like L9H6,L9H9 (default: the "
                   "task's canonical circuit when it belongs to this model)")
    g = p.add_argument_group("SAE")
    g.add_argument("--features", type=positive_int, default=200, help="dictionary size (default 200)")
    g.add_argument("--l1", type=finite_float, default=0.02, help="sparsity weight lambda (default 0.02)")
    g.add_argument("--lr", type=finite_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="SAE training steps, full batch unless --batch-rows (default: the --compat preset's; "
                   "circuitscan 100, paper and authors 500)")
    g.add_argument("--train-examples", type=positive_int, default=10, help="SAE training examples (default 10)")
    g.add_argument("--precision", choices=SAE_PRECISIONS, default=None,
                   help="SAE training matmuls; bf16 is ~2x faster on hardware with bf16 units, auto = bf16 there "
                   "and fp32 elsewhere (default: the --compat preset's; circuitscan auto, paper and authors fp32)")
    s = p.add_argument_group("scoring")
    s.add_argument("--normalise", action="store_true", help="divide unique codes by all codes at the head")
    s.add_argument("--softmax", choices=("global", "layer"), default="global")
    s.add_argument("--edge-k", type=positive_int, default=None, help="top-k head pairs (default: half)")
    s.add_argument("--silent", choices=("own-code", "zero"), default="own-code",
                   help="code of a head where no feature fires (default: its own code)")
    s.add_argument("--count-on", choices=("held-out", "all"), default="held-out",
                   help="examples codes are counted on (default: those the SAE did not train on)")
    s.add_argument("--compat", choices=("paper", "authors", "circuitscan"), default="circuitscan",
                   help="'circuitscan' (default): scaled and per-head centred SAE inputs, the total-variation "
                   "statistic and the circuit significant at FDR 0.05 under a label-swap null (docs/CALIBRATION.md); "
                   "'paper': the paper's SAE and scoring; 'authors': every deviation of the authors' code "
                   "(METHOD.md section 3); flags given override the preset")
    add_beyond_paper_args(p)
    x = p.add_argument_group("activations")
    x.add_argument("--aggregation", choices=AGGREGATIONS, default="mean",
                   help="over positions (default: mean over real tokens); 'mean+last' = two codes per head (the "
                   "mean and the last position) scored together; 'all' = a code per head per position "
                   "(edge level: 'mean+last' sums the pair counts over the two slots; 'all' has none)")
    x.add_argument("--batch-size", type=positive_int, default=64)

    e = p.add_argument_group("evaluation by intervention")
    e.add_argument("--evaluate", action="store_true",
                   help="then ablate every head outside each circuit: performance table and faithfulness curves "
                   "in metrics.json (as `circuitscan evaluate RUN_DIR --faithfulness` does)")
    add_intervention_args(e, prefix_help="with --evaluate: ")
    p.set_defaults(func=run)


BEYOND_PAPER_SAE = {"input_scale": "input_scale", "head_norm": "head_norm", "target_l0": "target_l0", "sae_seeds": "n_seeds", "stop": "stop",
                    "check_every": "check_every", "lr_schedule": "lr_schedule", "batch_rows": "batch_rows"}
BEYOND_PAPER_SCORING = {"statistic": "statistic", "permutations": "permutations", "fdr": "fdr", "circuit": "circuit",
                        "min_effect": "min_effect", "node_score": "node_score", "feature_change": "feature_change",
                        "combine": "combine", "edge_rule": "edge_rule",
                        "edge_permutations": "edge_permutations"}


def add_beyond_paper_args(p: argparse.ArgumentParser) -> None:
    """Flags of the variants beyond the paper (default None: the --compat preset decides)."""
    b = p.add_argument_group("beyond the paper (docs/METHODS.md)")
    b.add_argument("--input-scale", choices=("none", "d_model"), default=None,
                   help="scale SAE inputs so the mean squared norm is d_model (paper: none)")
    b.add_argument("--head-norm", choices=("none", "center", "standardise"), default=None,
                   help="centre (and scale) each head's outputs before the SAE (paper: none)")
    b.add_argument("--target-l0", type=finite_float, default=None,
                   help="calibrate l1 to this mean number of active SAE features (overrides --l1)")
    b.add_argument("--sae-seeds", type=int, default=None,
                   help="SAEs in the ensemble, trained as one batched model (paper: 1)")
    b.add_argument("--stop", choices=("epochs", "codes"), default=None,
                   help="'codes': stop SAE training once the argmax codes settle (--epochs is then the most); "
                   "'epochs' (paper): exactly --epochs steps")
    b.add_argument("--check-every", type=positive_int, default=None, help="with --stop codes: epochs between checks")
    b.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="SAE step size over the --epochs steps: constant (paper), cosine or linear decay to ~0")
    b.add_argument("--batch-rows", type=non_negative_int, default=None,
                   help="SAE training rows per step, from a shuffled pass over all of them; 0 = every row, the "
                   "paper's full batch (default: the --compat preset's; circuitscan 256; with --stop codes "
                   "full batch)")
    b.add_argument("--statistic", choices=("unique-positive", "tv"), default=None,
                   help="per-head statistic: codes seen only on positives (paper) or the total-variation distance "
                   "between the head's codes on positives and on negatives")
    b.add_argument("--permutations", type=int, default=None,
                   help="label-swap permutations for each head's null distribution (paper: 0, none)")
    b.add_argument("--fdr", type=finite_float, default=None, help="false-discovery rate in (0, 1) (default 0.05)")
    b.add_argument("--circuit", choices=CIRCUIT_RULES, default=None,
                   help="circuit rule without --threshold: 'fdr' = heads significant under the null; 'fdr-top' = "
                   "as many heads as 'fdr' finds, from the top of the ranking")
    b.add_argument("--min-effect", type=finite_float, default=None,
                   help="with --circuit fdr or fdr-top: count a significant head only if its statistic exceeds its "
                   "null mean by at least this (TV: in [0, 1]; 0 = significance alone)")
    b.add_argument("--node-score", choices=NODE_SCORES, default=None,
                   help="per-head score: softmax of the count (paper), the count, its z under the null, or "
                   "rank-change: the mean rank by the statistic and by the paired feature change")
    b.add_argument("--feature-change", choices=FEATURE_CHANGES, default=None,
                   help="rank-change's paired feature change: absolute (the SAE's units, one scale for every head) "
                   "or relative (each head's change over its own typical activation)")
    b.add_argument("--combine", choices=("mean", "median"), default=None, help="over the ensemble's SAEs")
    b.add_argument("--edge-rule", choices=EDGE_RULES, default=None,
                   help="edge level: top-k pairs by U (paper); fdr: pairs significant under label swaps; tv: head "
                   "score = summed joint-code distances of its pairs, as many heads as the node circuit; "
                   "top-k-tv: top-k with ties broken by the joint-code distance")
    b.add_argument("--edge-permutations", type=int, default=None, help="label swaps for --edge-rule fdr")


def configs_from_args(args: argparse.Namespace):
    """(SAEConfig, ScoringConfig) from the paper's flags, the --compat preset, then explicit flags."""
    sae = SAEConfig(n_features=args.features, l1=args.l1, lr=args.lr,
                    train_examples=args.train_examples, seed=args.seed)
    scoring = ScoringConfig(silent=args.silent, count_on=args.count_on, normalise=args.normalise,
                            softmax=args.softmax, threshold=args.threshold, edge_k=args.edge_k)
    sae, scoring = apply_compat(args.compat, sae, scoring)
    if args.compat == "authors":
        scoring = replace(scoring, count_on=args.count_on if args.count_on != "held-out" else "all")
    if args.epochs is not None:  # after the preset, which sets its own
        sae = replace(sae, epochs=args.epochs)
    if args.precision is not None:
        sae = replace(sae, precision=args.precision)
    given_sae = {f: getattr(args, a) for a, f in BEYOND_PAPER_SAE.items() if getattr(args, a) is not None}
    if given_sae.get("batch_rows") == 0:
        given_sae["batch_rows"] = None  # --batch-rows 0: the paper's full batch
    if given_sae.get("stop") == "codes":  # settled codes are judged on all rows: full batch unless asked
        given_sae.setdefault("batch_rows", None)
    sae = replace(sae, **given_sae)
    given = {f: getattr(args, a) for a, f in BEYOND_PAPER_SCORING.items() if getattr(args, a) is not None}
    if given.get("circuit", "fdr") not in FDR_RULES:  # the preset's effect floor belongs to its FDR circuit
        given.setdefault("min_effect", 0.0)
        if scoring.node_score == "rank-change":  # and "above uniform" reads softmaxed scores, not ranks
            given.setdefault("node_score", "softmax")
    if given.get("circuit") in FDR_RULES or given.get("node_score") == "z":
        given.setdefault("permutations", scoring.permutations or 1000)
    return sae, replace(scoring, **given)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out_dir(out, overwrite=args.overwrite)  # fail before any work
    sae, scoring = configs_from_args(args)
    t = time.perf_counter()
    model = load_model_from_args(args)
    t_model = time.perf_counter() - t
    if not args.task_file:  # before the prompts are built (a task file's rows bound it; discover checks again)
        check_discover_memory(model, 2 * args.examples, sae)
    t = time.perf_counter()
    prompts = build_prompts_from_args(args, model)
    t_task = time.perf_counter() - t
    task_name = prompts.task
    gt = circuits.for_model(args.ground_truth, model, task_name)
    result = discover(
        model, prompts, sae=sae, scoring=scoring, level=args.level, ground_truth=gt, out=out,
        overwrite=args.overwrite, aggregation=args.aggregation, batch_size=args.batch_size,
        extra_config={"argv": vars(args) | {"func": None}},
        timings={"load_model": t_model, "build_task": t_task},
        save_activations=args.save_activations,
    )
    print_summary(result)
    if args.evaluate:
        print()
        print_evaluation(evaluate_run(result.out, ablation=args.ablation, faithfulness=True,
                                      random_samples=args.random_samples, model=result.model,
                                      prompts=result.prompts, precision=args.eval_precision,
                                      random_examples=args.random_examples,
                                      random_precision=args.random_precision))
    if args.report:
        print(f"wrote  {write_report(result.out)}")
    return 0


def print_sae_line(d) -> None:
    t = d.train
    members = list(t.members or (t,))
    n = len(members)
    l0 = sum(m.final_l0 for m in members) / n
    dead = sum(m.dead_features for m in members) / n
    codes = d.node.stats.get("distinct_codes")
    if n > 1:
        mse = sum(m.final_mse for m in members) / n
        print(f"SAE    {n} SAEs (seeds {members[0].seed}..{members[-1].seed}) of {t.sae.n_features} features, mean "
              f"final MSE {mse:.4g}, L0 {l0:.2f}, dead {dead:g}; l1 {t.l1:.3g}, input scale {t.input_scale:.3g} (first "
              f"SAE), {t.epochs_run} epochs ({t.precision} products), trained on {len(t.train_indices)} examples each")
    else:
        print(f"SAE    {t.sae.n_features} features, final MSE {t.final_mse:.4g}, L0 {l0:.2f}, dead {dead:g}, "
              f"l1 {t.l1:.3g}, input scale {t.input_scale:.3g}, {t.epochs_run} epochs ({t.precision} products), "
              f"trained on {len(t.train_indices)} examples")
    if codes is not None:
        c = codes.reshape(-1).float()
        extra = ""
        if d.node.stats.get("rank_agreement") is not None:
            extra = f"; rank agreement over seeds (mean pairwise Spearman) {d.node.stats['rank_agreement']:.3f}"
        print(f"codes  distinct codes per head: mean {float(c.mean()):.1f}, min {float(c.min()):g}, "
              f"max {float(c.max()):g}{extra}")


def print_summary(result) -> None:
    d = result.discovery
    m = result.model
    p = result.prompts
    print(f"model  {m.spec}  ({m.layout.n_layers} layers x {m.layout.n_heads} heads = {m.layout.n_total})")
    print(f"task   {p.task}  ({p.n_positive} positive + {p.n_negative} negative prompts, {p.seq_len} tokens)")
    print_sae_line(d)
    for s in result.scores:
        raw_key = next(k for k in ("code_distance", "unique_positive_codes", "pair_counts") if k in s.stats)
        raw = s.stats[raw_key].reshape(-1)
        print()
        label = "node level" if s.method == "sae-codes" else "edge level (head scores from head pairs)"
        print(f"[{s.method}] {label}: top heads")
        print(f"  {'rank':>4}  {'head':<7} {'score':>10}  {raw_key.replace('_', ' ')}")
        for r, h in enumerate(s.ranking()[:10], 1):
            i = s.layout.index(h)
            print(f"  {r:>4}  {h.name:<7} {float(s.flat[i]):>10.3g}  {float(raw[i]):g}")
        c = result.circuits[s.method]
        heads = ", ".join(c["heads"][:30]) + (" ..." if c["size"] > 30 else "")
        print(f"  circuit ({c['rule']}, theta={c['threshold']:.3g}): {c['size']} heads: {heads}")
        gm = result.metrics.get(s.method)
        if gm is not None:
            auc_name = "ROC AUC over heads" if s.method == "sae-codes" else "ROC AUC over heads (paper: 'edge-level AUC')"
            print(f"  vs {gm.ground_truth} ({gm.n_true} heads): {auc_name} {gm.auc:.3f}; best F1 {gm.best_f1:.3f} "
                  f"(P {gm.precision:.2f}, R {gm.recall:.2f}, {gm.circuit_size} heads); "
                  f"TPR/TNR harmonic mean {gm.tpr_tnr_hmean:.3f}")
            if gm.at_threshold:
                a = gm.at_threshold
                print(f"  at theta={a['threshold']:.3g}: F1 {a['f1']:.3f} (P {a['precision']:.2f}, R {a['recall']:.2f})")
    print()
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(f"time   {stages}  (total {sum(result.timings.values()):.2f}s)")
    if result.out is not None:
        print(f"wrote  {result.out}/")
