"""``circuitscan evaluate RUN_DIR``: prove a run's circuits by intervention.

Ablates every head outside each circuit and measures the task metric (circuit
performance table), optionally faithfulness curves with CPR/CMD; writes the results
into the run's metrics.json (replaced atomically).
"""

from __future__ import annotations

import argparse
import math

from ..evaluation.performance import evaluate_run
from ..rundir import lock_run
from .common import finite_float, positive_int, seed_int

ABLATION_HELP = ("what an ablated head's output becomes: corrupt = its value on the paired corrupted prompt "
                 "(the paper's default), mean = its mean over the task's prompts, zero = zero")


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v


RANDOM_SAMPLES = 30  # = evaluation.performance.RANDOM_SAMPLES (why 30: there); importing it here would load torch
RANDOM_EXAMPLES = 16  # = evaluation.curve_stats.RANDOM_EXAMPLES (why 16: there)
RANDOM_PRECISION = "auto"  # = evaluation.curve_stats.RANDOM_PRECISION (why: there)
PRECISIONS = ("fp32", "bf16", "auto")  # = circuitscan.precision.PRECISIONS
CURVE_POINTS = 9  # = evaluation.curve_stats.CURVE_POINTS (why 9: there)


def add_random_circuit_args(p: argparse.ArgumentParser, *, prefix_help: str = "", what: str) -> None:
    """``--random-examples N`` and ``--random-precision``, shared by ``evaluate``, ``discover
    --evaluate`` and ``compare``; ``what`` names where its random circuits are (a negative N
    stops argparse: exit 2)."""
    p.add_argument("--random-examples", type=non_negative_int, default=RANDOM_EXAMPLES, metavar="N",
                   help=f"{prefix_help}run the random circuits ({what}) on the first N "
                   "prompts only, normalised over the same prompts (0, or N at least the number of prompts: "
                   f"every prompt); the method circuits always use every prompt (default {RANDOM_EXAMPLES})")
    p.add_argument("--random-precision", choices=PRECISIONS, default=RANDOM_PRECISION,
                   help=f"{prefix_help}the random circuits' passes: fp32, bf16 matrix products, or auto = bf16 "
                   "where the hardware multiplies it natively, else fp32; a random baseline's spread over draws "
                   "(~0.4) dwarfs bf16 rounding (~1e-3). The method circuits keep --eval-precision "
                   f"(default {RANDOM_PRECISION})")


def add_intervention_args(p: argparse.ArgumentParser, *, prefix_help: str = "") -> None:
    """The flags shared by ``evaluate`` and ``discover --evaluate``."""
    p.add_argument("--ablation", choices=("corrupt", "mean", "zero"), default="corrupt",
                   help=f"{prefix_help}{ABLATION_HELP} (default: corrupt)")
    p.add_argument("--random-samples", type=non_negative_int, default=RANDOM_SAMPLES,
                   help=f"{prefix_help}random circuits of each predicted circuit's size, reported as mean ± std "
                   f"(default {RANDOM_SAMPLES})")
    add_random_circuit_args(p, prefix_help=prefix_help, what="table and faithfulness curves")
    p.add_argument("--eval-precision", choices=PRECISIONS, default="fp32",
                   help=f"{prefix_help}the head-level evaluation's passes: fp32, or bf16 matrix products "
                   "(about 3x faster on CPUs with AVX-512 BF16; faithfulness moves by ~0.005) (default: fp32)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a run's circuits by ablating every head outside them",
        description="Reload the run's model and prompts, ablate every head outside each circuit and measure "
        "the task metric: the clean model, all heads ablated, the ground truth, each method's circuit, its "
        "complement and random circuits of the same size. With --faithfulness, also faithfulness curves "
        "(heads added in score order, against random circuits) and the MIB numbers CPR and CMD. The results "
        "go into RUN_DIR/metrics.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by discover or compare")
    add_intervention_args(p)
    p.add_argument("--faithfulness", action="store_true", help="also compute faithfulness curves, CPR and CMD")
    p.add_argument("--faithfulness-samples", type=non_negative_int, default=10,
                   help="random circuits per size on the faithfulness curve (default 10)")
    p.add_argument("--faithfulness-points", type=positive_int, default=CURVE_POINTS,
                   help=f"about how many circuit sizes the curve visits (default {CURVE_POINTS}: the MIB sizes, "
                   "which CPR and CMD read; every size for small models)")
    p.add_argument("--ground-truth", default=None,
                   help="registry name, JSON file or heads like L9H6,L9H9 (default: the run's ground truth)")
    p.add_argument("--circuit", default=None, metavar="FILE.json",
                   help="also evaluate a circuit from an EAP-IG / MIB graph file (its in_graph heads as a row, its "
                   "in_graph edges as an edge circuit); see docs/INTEROP.md")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--threshold", type=finite_float, default=None,
                       help="circuit = heads with score >= theta (default: the run's circuits)")
    which.add_argument("--size", type=non_negative_int, default=None, help="circuit = the top SIZE heads")
    p.add_argument("--metric", default=None, help="task metric (default: the task's own; see the docs)")
    p.add_argument("--examples", "-n", type=positive_int, default=None,
                   help="score on the first N positive prompts only (default: all of the run's)")
    p.add_argument("--max-rows", type=positive_int, default=256,
                   help="prompt rows per forward pass, circuits x prompts (default 256)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random circuits (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with lock_run(args.run_dir):  # a second evaluate of this run stops at once; none is lost
        result = evaluate_run(
            args.run_dir, ablation=args.ablation, faithfulness=args.faithfulness,
            random_samples=args.random_samples, faithfulness_samples=args.faithfulness_samples,
            faithfulness_points=args.faithfulness_points, ground_truth=args.ground_truth,
            threshold=args.threshold, size=args.size, metric=args.metric, n_examples=args.examples,
            max_rows=args.max_rows, seed=args.seed, circuit=args.circuit, precision=args.eval_precision,
            random_examples=args.random_examples, random_precision=args.random_precision,
        )
    print_evaluation(result)
    print(f"wrote  {args.run_dir}/metrics.json")
    return 0


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def print_evaluation(result) -> None:
    t = result.performance
    print(f"circuit performance ({t.ablation} ablation, {t.n_examples} prompts); normalised: 0 = all heads "
          "ablated, 1 = clean model")
    cols = list(t.metrics)
    header = f"  {'circuit':<34} {'heads':>5}  " + "  ".join(f"{c:>18}" for c in cols) + f"  {'normalised ' + t.metric:>22}"
    print(header)
    for r in t.rows:
        cells = []
        for c in cols:
            v = r.metrics.get(c)
            cell = _fmt(v)
            if c in r.std:
                cell += f" ±{_fmt(r.std[c])}"
            cells.append(f"{cell:>18}")
        norm = _fmt(r.normalised.get(t.metric))
        if f"normalised_{t.metric}" in r.std:
            norm += f" ±{_fmt(r.std[f'normalised_{t.metric}'])}"
        heads = "-" if r.n_heads is None else str(r.n_heads)
        print(f"  {r.name[:34]:<34} {heads:>5}  " + "  ".join(cells) + f"  {norm:>22}")
    if result.faithfulness:
        f = result.faithfulness
        print()
        print(f"faithfulness ({f['ablation']} ablation, metric {f['metric']}); CPR higher is better, CMD lower")
        for m, c in result.curves.items():
            print(f"  {m:<20} CPR {_fmt(c.cpr)} (random {_fmt(c.cpr_random)})  CMD {_fmt(c.cmd)} "
                  f"(random {_fmt(c.cmd_random)})  over {len(c.sizes)} sizes")
        edge = f.get("edge_level")
        if edge:
            print(f"  edge level ({edge['n_edges']} edges):")
            for m, c in edge["curves"].items():
                print(f"  {m:<20} CPR {_fmt(c['cpr'])} (random {_fmt(c['cpr_random'])})  CMD {_fmt(c['cmd'])} "
                      f"(random {_fmt(c['cmd_random'])})")
    if result.faithfulness and result.faithfulness.get("mib"):
        print("  MIB's rule (|score| top-n at 0.1 %..100 % of edges, pruned, no 0 point):")
        for m, c in result.faithfulness["mib"]["curves"].items():
            print(f"  {m:<20} CPR {_fmt(c['cpr'])}  CMD {_fmt(c['cmd'])}  faithfulness at 100 % {_fmt(c['values'][-1])}")
    imp = result.metrics_json.get("imported_circuit")
    if imp:
        print(f"imported {imp['name']}: {len(imp['heads'])} heads, {imp['n_edges']} edges; edge-circuit faithfulness "
              f"{_fmt(imp.get('edge_faithfulness'))}; {imp['mlp_edges_removed_in_file']} MLP edges the file removes "
              "are kept (MLPs are wiring here)")
    s = result.stats
    print(f"cost   {int(s['forward_passes'])} forward passes, {int(s['rows'])} prompt rows, "
          f"{int(s['circuits'])} distinct circuits, {s['total_seconds']:.1f}s")
