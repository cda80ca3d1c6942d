"""``circuitscan sweep``: grids, the paper's named robustness sweeps, and Optuna searches."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import circuits
from ..config import SAE_PRECISIONS, SAEConfig, ScoringConfig, authors_compat
from ..errors import CircuitscanError
from ..models import load_model
from ..report.sweep_figures import write_sweep_report
from ..rundir import lock_run
from ..sweep.baselines import check_baselines
from ..sweep.contrastive import ContrastiveConfig
from ..sweep.grid import AXES, Grid, parse_grid
from ..sweep.plan import SweepSpec
from ..sweep.presets import NAMED_SWEEPS, check_task, get_named
from ..sweep.runner import SWEEP_DIR, Execution, run_sweep
from ..sweep.search import parse_space, run_search
from ..sweep.store import check_dir
from ..tasks import parse_task_spec
from .common import add_model_args, finite_float, positive_int, seed_int

EPILOG = """\
examples:
  circuitscan sweep -m toy-planted -t planted -n 40 --grid features=50,100,200,400 l1=0.005,0.01,0.02,0.05 \\
      --seeds 5 --out runs/sweep
  circuitscan sweep -m gpt2-random -t greater-than --sweep negatives --out runs/negatives
  circuitscan sweep -m toy-planted -t planted --search optuna --trials 100 --out runs/search
  circuitscan sweep ... --ray auto          (an existing Ray cluster; 'local' starts one here)
  circuitscan sweep ... --out runs/sweep --resume      (finish an interrupted sweep)

named sweeps (--sweep NAME), the paper's robustness studies:
{named}

axes (--grid AXIS=V1,V2,...): {axes}; plus the task's own options (see `circuitscan tasks`)
"""


def _epilog() -> str:
    named = "\n".join(f"  {s.name:<15} {s.paper:<20} {s.description}" for s in NAMED_SWEEPS.values())
    return EPILOG.format(named=named, axes=", ".join(AXES))


def seeds_arg(text: str) -> tuple[int, ...]:
    """``5`` -> seeds 0..4; ``0,3,7`` -> those seeds."""
    try:
        if "," in text:
            seeds = tuple(int(t) for t in text.split(",") if t.strip())
        else:
            n = int(text)
            if n < 1:
                raise argparse.ArgumentTypeError(f"expected a number of seeds >= 1, got {n}")
            seeds = tuple(range(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (5) or a list of seeds (0,3,7), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and not empty, got {text!r}")
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="hyperparameter sweeps, the paper's robustness studies and Optuna searches",
        description="Train many SAEs on activations cached once and tabulate node AUC, head AUC from head "
        "pairs, best-F1 threshold, F1, circuit size and train time for every point x seed (Parquet and "
        "CSV, mean +- std over seeds). Runs on a local process pool or a Ray cluster; an interrupted sweep "
        "resumes with --resume.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--task", "-t", required=True, help="task name, options allowed (greater-than:negative=year)")
    p.add_argument("--examples", "-n", type=positive_int, default=250,
                   help="positive prompts, and as many negatives (default 250)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the prompts (and of random models) (default 0)")
    p.add_argument("--out", "-o", required=True, help="sweep directory (new, or an existing one with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out; finished points are kept")
    p.add_argument("--overwrite", action="store_true", help="start over: delete --out first (only a sweep directory circuitscan wrote)")
    w = p.add_argument_group("what to sweep")
    w.add_argument("--grid", nargs="+", metavar="AXIS=V1,V2", default=None,
                   help="axes and their values; every combination runs (e.g. features=50,100 l1=0.01,0.02)")
    w.add_argument("--sweep", dest="named", default=None, metavar="NAME",
                   help="a named robustness sweep (listed below); --grid adds or overrides axes")
    w.add_argument("--seeds", type=seeds_arg, default=None,
                   help="SAE seeds: a count (5 = seeds 0..4) or a list (0,3,7) (default: 5 for a grid, 1 for a "
                   "search)")
    w.add_argument("--search", choices=("optuna",), default=None, help="search instead of a grid")
    w.add_argument("--trials", type=positive_int, default=100, help="search trials (default 100, as the paper)")
    w.add_argument("--space", nargs="+", metavar="AXIS=LOW:HIGH", default=None,
                   help="search ranges (default: features=128:2048 l1=0.01:0.1, the paper's)")
    w.add_argument("--storage", default=None,
                   help="Optuna storage URL, resumable (default: sqlite:///OUT/study.db)")
    w.add_argument("--study-name", default=None, help="Optuna study name (default: from task and model)")
    x = p.add_argument_group("execution")
    x.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes (default: the CPU cores; 1 runs in this process)")
    x.add_argument("--threads-per-worker", type=positive_int, default=None,
                   help="torch threads per worker (default: cores / workers)")
    x.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on a Ray cluster: an address (ray://host:10001, auto) or 'local' to start one here")
    x.add_argument("--no-figures", action="store_true", help="skip figures/ and report.html")
    s = p.add_argument_group("base configuration (what every point starts from)")
    s.add_argument("--level", choices=("node", "edge", "both"), default="both",
                   help="node scores only, or head-pair scores too (default: both)")
    s.add_argument("--ground-truth", default=None,
                   help="registry name, JSON file or heads L9H6,L9H9 (default: the task's canonical circuit for "
                   "this model, if any)")
    s.add_argument("--features", type=positive_int, default=200)
    s.add_argument("--l1", type=finite_float, default=0.02)
    s.add_argument("--lr", type=finite_float, default=1e-3)
    s.add_argument("--epochs", type=positive_int, default=500)
    s.add_argument("--train-examples", type=positive_int, default=10)
    s.add_argument("--precision", choices=SAE_PRECISIONS, default="fp32")
    s.add_argument("--contrastive", type=finite_float, default=0.0,
                   help="weight alpha of the contrastive loss of Appendix J (default 0: off)")
    s.add_argument("--contrastive-epsilon", type=finite_float, default=1.0, help="its hinge margin (default 1)")
    s.add_argument("--softmax", choices=("global", "layer"), default="global")
    s.add_argument("--normalise", action="store_true")
    s.add_argument("--silent", choices=("own-code", "zero"), default="own-code")
    s.add_argument("--count-on", choices=("held-out", "all"), default="held-out")
    s.add_argument("--edge-k", type=positive_int, default=None)
    s.add_argument("--compat", choices=("paper", "authors"), default="paper")
    s.add_argument("--aggregation", choices=("mean", "last"), default="mean")
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--stability-k", type=positive_int, default=10,
                   help="top-k heads compared with the base run when no ground truth is known (default 10)")
    s.add_argument("--baselines", default="",
                   help="registered methods (e.g. eap,norm-diff) run once with their defaults on the base prompts, "
                   "as reference rows (baselines.parquet|csv); default: none")
    p.set_defaults(func=run)


def build_spec(args: argparse.Namespace, model):
    """The :class:`SweepSpec` of the command line (validates everything before any work)."""
    task_name, _ = parse_task_spec(args.task)
    grid = Grid()
    level = args.level
    if args.named:
        named = get_named(args.named)
        check_task(named, args.task)
        grid = named.parse(args.task)
        if named.level and level == "node":
            level = named.level
    if args.grid:
        grid = grid.merged(parse_grid(args.grid, task=args.task))
    if args.search and (args.grid or args.named):
        raise CircuitscanError("--search explores --space; drop --grid/--sweep (or run them as separate sweeps)")
    if args.search and args.baselines.strip():
        raise CircuitscanError("--baselines adds reference rows to a grid's tables; a --search has none (run the "
                               "baselines in a grid sweep, or with `circuitscan compare`)")
    if args.space and not args.search:
        raise CircuitscanError("--space is for --search optuna")
    sae = SAEConfig(n_features=args.features, l1=args.l1, lr=args.lr, epochs=args.epochs,
                    train_examples=args.train_examples, precision=args.precision)
    scoring = ScoringConfig(silent=args.silent, count_on=args.count_on, normalise=args.normalise,
                            softmax=args.softmax, edge_k=args.edge_k)
    if args.compat == "authors":
        sae, scoring = authors_compat(sae, scoring)
    gt = circuits.for_model(args.ground_truth, model, task_name)
    truth = None if gt is None else tuple(sorted(model.layout.index(h) for h in gt.heads))
    if truth is not None and len(truth) in (0, model.layout.n_total):
        raise CircuitscanError(f"ground truth {gt.name!r} marks {len(truth)} of {model.layout.n_total} heads; "
                               "an AUC needs some heads in and some out of the circuit")
    seeds = args.seeds or ((0,) if args.search else tuple(range(5)))
    return SweepSpec(
        model=args.model, task=args.task, examples=args.examples, prompt_seed=args.seed, seeds=seeds, grid=grid,
        sae=sae, scoring=scoring, contrastive=ContrastiveConfig(args.contrastive, args.contrastive_epsilon),
        level=level, aggregation=args.aggregation, batch_size=args.batch_size, truth=truth,
        truth_name=None if gt is None else gt.name, stability_k=args.stability_k, named=args.named,
        baselines=check_baselines([m for m in args.baselines.split(",") if m.strip()]),
    )


def _progress():
    start = time.perf_counter()

    def on_result(result, done, total):
        ok = [r for r in result["rows"] if r["status"] == "ok"]
        bits = []
        if ok and "node_auc" in ok[0]:
            bits.append("node AUC " + ", ".join(f"{r['node_auc']:.3f}" for r in ok[:4]))
        errs = [r["error"] for r in result["rows"] if r["status"] != "ok"]
        if errs:
            bits.append(f"{len(errs)} error(s): {errs[0][:120]}")
        train = result.get("train") or {}
        t = f"{train['train_s']:.1f}s" if "train_s" in train else ""
        print(f"[{done}/{total}] {time.perf_counter() - start:6.1f}s  unit {result['unit'][:8]} {t}  "
              + "; ".join(bits), flush=True)

    return on_result


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_dir(out, resume=args.resume, overwrite=args.overwrite)  # fail before loading the model
    with lock_run(out, what=SWEEP_DIR, reenter=True):  # an existing sweep is locked before the model loads
        rc = _sweep(args, out)
        if rc == 0 and not args.no_figures:
            with lock_run(out, what=SWEEP_DIR, reenter=True):  # a new sweep's directory exists only now
                print(f"wrote  {write_sweep_report(out)}")
        return rc


def _sweep(args: argparse.Namespace, out: Path) -> int:
    model = load_model(args.model, device=args.device, tokenizer=args.tokenizer, seed=args.seed)
    spec = build_spec(args, model)
    execution = Execution(workers=args.workers, threads=args.threads_per_worker, ray_address=args.ray)
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        if args.search:
            result = run_search(
                spec, out, trials=args.trials, space=parse_space(args.space) if args.space else None,
                storage=args.storage, study_name=args.study_name, model=model, execution=execution,
                resume=args.resume, overwrite=args.overwrite, log=log,
                on_trial=lambda t: print(f"trial {t['trial']}: "
                                         + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in t["params"].items())
                                         + (f"  node AUC {t['node_auc_mean']:.4f}" if "node_auc_mean" in t
                                            else f"  failed: {t.get('error', '')[:160]}"), flush=True),
            )
            print(result.summary["message"])
            print(f"wrote  {out}/trials.parquet, trials.csv, search.json (study {result.study_name!r} in "
                  f"{result.storage})")
        else:
            result = run_sweep(spec, out, model=model, execution=execution, resume=args.resume,
                               overwrite=args.overwrite, on_result=_progress(), log=log)
            print_summary(result)
            grid = result.tables["results"]
            grid = grid[grid["role"] == "grid"]
            if len(grid) and not (grid["status"] == "ok").any():
                print(f"circuitscan: every point of the sweep failed; first error: {grid['error'].iloc[0]}",
                      file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print(f"circuitscan: interrupted; finished points are kept in {out}/journal.jsonl: run the same command "
              "with --resume to finish", file=sys.stderr)
        return 130
    return 0


def print_summary(result) -> None:
    import math

    spec = result.plan.spec
    summary = result.tables["summary"]
    axes = spec.grid.names
    has_truth = spec.truth is not None
    metric = "node_auc" if has_truth else "node_rank_corr_vs_base"
    cols = [metric] + (["head_auc_from_pairs"] if has_truth and spec.level != "node" else []) + (
        ["node_best_f1", "node_best_theta", "node_circuit_size"] if has_truth else ["node_size_above_uniform"]
    ) + ["train_s"]
    print()
    print(f"sweep  {spec.model} / {spec.task}: {len(summary)} point(s) x {len(spec.seeds)} seed(s); "
          f"{result.computed_units} SAE unit(s) computed, {result.reused_rows} row(s) reused; backend {result.backend}")
    if not has_truth:
        print("       no ground truth is known for this task on this model: AUC and F1 cannot be computed; "
              "reported instead: circuit size (heads above uniform), train time, and stability against the base "
              "configuration (rank correlation, top-k overlap)")
    head = "  ".join([f"{a:>12}" for a in axes] + [f"{c:>22}" for c in cols] + ["  ok/err"])
    print(head)
    for _, r in summary.iterrows():
        cells = [f"{str(r[a]):>12}" for a in axes]
        for c in cols:
            m, s = r[f"{c}_mean"], r[f"{c}_std"]
            txt = "n/a" if m != m else (f"{m:.4g}" + ("" if s != s else f" +- {s:.2g}"))
            cells.append(f"{txt:>22}")
        cells.append(f"  {int(r['n_ok'])}/{int(r['n_error'])}")
        print("  ".join(cells))
    errs = summary[summary["n_error"] > 0]
    for _, r in errs.head(5).iterrows():
        print(f"  point {int(r['point'])} failed on {int(r['n_error'])} seed(s): {r['errors']}")
    if result.seconds and not math.isnan(result.seconds):
        print(f"time   {result.seconds:.1f}s  " + "  ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    base = result.tables.get("baselines")
    if base is not None and len(base):
        print("baselines (each run once with its defaults on the base prompts):")
        for _, r in base.iterrows():
            cells = [f"{c} {r[c]:.4g}" for c in ("node_auc", "node_best_f1", "node_circuit_size") if r[c] == r[c]]
            print(f"  {r['method']:>14}  " + "  ".join(cells + [f"{r['wall_time_s']:.1f}s"]))
    print(f"wrote  {result.out}/results.parquet|csv, summary.parquet|csv, thresholds.parquet|csv"
          + (", baselines.parquet|csv" if base is not None else ""))
