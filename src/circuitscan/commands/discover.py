"""``circuitscan discover``: the paper's method end to end, writing a run directory."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from .common import add_model_args, add_task_args, finite_float, positive_int


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
    g.add_argument("--epochs", type=positive_int, default=500, help="full-batch steps (default 500)")
    g.add_argument("--train-examples", type=positive_int, default=10, help="SAE training examples (default 10)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="SAE training matmuls; bf16 is ~2x faster on CPUs with bf16 units (default fp32)")
    s = p.add_argument_group("scoring")
    s.add_argument("--normalise", action="store_true", help="divide unique codes by all codes at the head")
    s.add_argument("--softmax", choices=("global", "layer"), default="global")
    s.add_argument("--edge-k", type=positive_int, default=None, help="top-k head pairs (default: half)")
    s.add_argument("--silent", choices=("own-code", "zero"), default="own-code",
                   help="code of a head where no feature fires (default: its own code)")
    s.add_argument("--count-on", choices=("held-out", "all"), default="held-out",
                   help="examples codes are counted on (default: those the SAE did not train on)")
    s.add_argument("--compat", choices=("paper", "authors"), default="paper",
                   help="'authors' switches on every deviation of the authors' code (METHOD.md section 3)")
    x = p.add_argument_group("activations")
    x.add_argument("--aggregation", choices=("mean", "last"), default="mean",
                   help="over positions (default: mean over real tokens)")
    x.add_argument("--batch-size", type=positive_int, default=64)
    from .evaluate import add_intervention_args

    e = p.add_argument_group("evaluation by intervention")
    e.add_argument("--evaluate", action="store_true",
                   help="then ablate every head outside each circuit: performance table and faithfulness curves "
                   "in metrics.json (as `circuitscan evaluate RUN_DIR --faithfulness` does)")
    add_intervention_args(e, prefix_help="with --evaluate: ")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import circuits
    from ..config import SAEConfig, ScoringConfig, authors_compat
    from ..guards import check_discover_memory
    from ..run import discover
    from ..rundir import check_out_dir
    from .common import build_prompts_from_args, load_model_from_args

    out = Path(args.out)
    check_out_dir(out, overwrite=args.overwrite)  # fail before any work
    sae = SAEConfig(n_features=args.features, l1=args.l1, lr=args.lr, epochs=args.epochs,
                    train_examples=args.train_examples, precision=args.precision, seed=args.seed)
    scoring = ScoringConfig(silent=args.silent, count_on=args.count_on, normalise=args.normalise,
                            softmax=args.softmax, threshold=args.threshold, edge_k=args.edge_k)
    if args.compat == "authors":
        sae, scoring = authors_compat(sae, scoring)
        scoring = replace(scoring, count_on=args.count_on if args.count_on != "held-out" else "all")
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
        from ..evaluation.performance import evaluate_run
        from .evaluate import print_evaluation

        print()
        print_evaluation(evaluate_run(result.out, ablation=args.ablation, faithfulness=True,
                                      random_samples=args.random_samples, model=result.model,
                                      prompts=result.prompts))
    if args.report:
        from ..report import write_report

        print(f"wrote  {write_report(result.out)}")
    return 0


def print_summary(result) -> None:
    d = result.discovery
    m = result.model
    p = result.prompts
    print(f"model  {m.spec}  ({m.layout.n_layers} layers x {m.layout.n_heads} heads = {m.layout.n_total})")
    print(f"task   {p.task}  ({p.n_positive} positive + {p.n_negative} negative prompts, {p.seq_len} tokens)")
    print(f"SAE    {d.train.sae.n_features} features, final MSE {d.train.final_mse:.4g}, L0 {d.train.final_l0:.2f}, "
          f"trained on {len(d.train.train_indices)} examples")
    for s in result.scores:
        raw_key = "unique_positive_codes" if "unique_positive_codes" in s.stats else "pair_counts"
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
