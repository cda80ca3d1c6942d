"""``circuitscan compare``: every method on the same model and prompts, one table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import circuits
from ..comparison import CompareSettings, compare, format_table, method_registry, parse_methods
from ..errors import CircuitscanError
from ..evaluation.metrics import default_metric, get_metric
from ..report import write_report
from ..rundir import check_out_dir
from .common import (
    add_model_args,
    add_task_args,
    build_prompts_from_args,
    finite_float,
    load_model_from_args,
    positive_int,
)
from .evaluate import add_random_circuit_args

METHOD_HELP = ("comma-separated registered methods (`circuitscan methods` lists them: sae-codes, eap, eap-ig, "
               "patching, acdc, acdc-edge, hisp, sp, norm-diff, edge-pruning, ...) or 'all' (default: those "
               "`circuitscan methods` marks default)")


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.01,0.1,1, got {text!r}") from None
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be numbers >= 0, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run sae-codes and the baselines (EAP, EAP-IG, patching, ACDC, HISP, SP, norm-diff) side by side",
        description="Run several circuit-finding methods on the same model and prompts, with the same metric "
        "and ablation, and compare them: ROC AUC over heads (and over edges for edge methods) against a "
        "ground truth, CPR/CMD from faithfulness curves, circuit size at best F1, wall time and forward/"
        "backward passes. Writes a run directory (see docs/RUN_DIRECTORY.md) and prints one table.",
    )
    add_model_args(p)
    add_task_args(p)
    p.add_argument("--methods", default=None, help=METHOD_HELP)
    p.add_argument("--out", "-o", required=True, help="run directory to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that circuitscan wrote (never any other directory)")
    p.add_argument("--ground-truth", default=None,
                   help="registry name (ioi/acdc, planted, ...), a JSON file, or heads like L9H6,L9H9 (default: the "
                   "task's canonical circuit when it belongs to this model)")
    p.add_argument("--edge-ground-truth", default=None,
                   help="edge ground truth by name (default: that of --ground-truth, where one exists)")
    p.add_argument("--metric", default=None, help="task metric or 'kl' (default: the task's own)")
    p.add_argument("--ablation", choices=("corrupt", "mean", "zero"), default="corrupt",
                   help="what a removed head/edge carries: its value on the paired corrupted prompt (default), "
                   "its mean over the prompts, or zero")
    p.add_argument("--baseline-examples", type=positive_int, default=None,
                   help="positive prompts (with their corrupted partners) the baselines use (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="prompts per forward pass; for two-digit years (each prompt run once per digit: 10 rows) whole prompts in about this many rows (default 32)")
    p.add_argument("--max-seconds", type=finite_float, default=None,
                   help="time limit of each slow method (acdc, acdc-edge, sp); a stopped run says so and "
                   "extrapolates its full time")
    p.add_argument("--acdc-thresholds", type=_thresholds, default=None,
                   help="ACDC's tau values to sweep, e.g. 0.01,0.1,1 (default: 0.001..0.3 x the metric's span)")
    p.add_argument("--sp-steps", type=positive_int, default=200, help="SP's and edge pruning's optimiser steps (default 200)")
    p.add_argument("--eap-ig-steps", type=positive_int, default=5, help="EAP-IG path points (default 5)")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the faithfulness curves (CPR, CMD)")
    p.add_argument("--faithfulness-samples", type=int, default=10,
                   help="random circuits per size on the faithfulness curves (default 10)")
    add_random_circuit_args(p, what="faithfulness curves")
    p.add_argument("--report", action="store_true", help="also write RUN_DIR/report.html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods) if args.methods is not None else method_registry().default_names()  # fail early
    out = Path(args.out)
    check_out_dir(out, overwrite=args.overwrite)
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise CircuitscanError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if args.faithfulness_samples < 0:
        raise CircuitscanError(f"--faithfulness-samples must be >= 0, got {args.faithfulness_samples}")
    if args.metric is not None:
        get_metric(args.metric)
    t = time.perf_counter()
    model = load_model_from_args(args)
    t_model = time.perf_counter() - t
    t = time.perf_counter()
    prompts = build_prompts_from_args(args, model)
    t_task = time.perf_counter() - t
    gt = circuits.for_model(args.ground_truth, model, prompts.task)
    settings = CompareSettings(metric=args.metric, ablation=args.ablation, n_examples=args.baseline_examples,
                               batch_size=args.batch_size, max_seconds=args.max_seconds,
                               acdc_thresholds=args.acdc_thresholds, sp_steps=args.sp_steps,
                               eap_ig_steps=args.eap_ig_steps)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = compare(
        model, prompts, methods, gt, out, settings=settings, edge_ground_truth=args.edge_ground_truth,
        faithfulness=not args.no_faithfulness, faithfulness_samples=args.faithfulness_samples,
        random_examples=args.random_examples, random_precision=args.random_precision, overwrite=args.overwrite, extra_config={"argv": vars(args) | {"func": None}},
        timings={"load_model": t_model, "build_task": t_task}, log=log, seed=args.seed,
    )
    print(f"model  {model.spec}  ({model.layout.n_layers} layers x {model.layout.n_heads} heads); task {prompts.task} "
          f"({prompts.n_positive} positive + {prompts.n_negative} negative prompts)")

    metric = settings.metric or default_metric(prompts)
    print(f"metric {metric}, ablation {settings.ablation}; ground truth: {gt.name if gt else 'none (no AUCs)'}"
          + (f"; edge ground truth: {result.config['edge_ground_truth']}" if result.config["edge_ground_truth"] else ""))
    print()
    print(format_table(result.rows))
    print()
    print("node AUC: over heads (ACDC/SP from their threshold sweep, others from their ranking); edge AUC: over "
          "head-level edges; AUC pairs: the paper's 'edge-level' AUC of sae-codes, over heads")
    print(f"wrote  {result.out}/")
    if args.report:
        print(f"wrote  {write_report(result.out)}")
    return 0

