"""Study (issue 14): do the method circuits' passes need float32, on every testbed?

For each testbed of the calibration study (``sae_codes_calibration.TESTBEDS``: planted,
toy-induction, the four tracr programs, SmolLM2 induction, IOI, greater-than, docstring) and
seeds, this scores the heads once with the circuitscan preset (sae-codes node level) and
evaluates them twice, with the evaluator's passes in float32 and in ``auto`` precision
(bfloat16 products where the CPU multiplies them natively, :mod:`circuitscan.precision`),
on the study's own prompts (``faith_examples``): the faithfulness curve (the MIB sizes, 10
random circuits per size), its CPR, CMD and ``cpr_random``, and the performance of the
preset's circuit. One JSON line per (testbed, seed, precision). ``--table`` prints, per
testbed, each figure in float32 (mean ± std over seeds) and how far the auto run moved it
(mean and largest absolute change), beside the std over seeds that any change should be
compared with.

    PYTHONPATH=src:studies .venv/bin/python studies/eval_precision.py --seeds 0-2 --out docs/references/eval_precision.jsonl
    PYTHONPATH=src:studies .venv/bin/python studies/eval_precision.py --table docs/references/eval_precision.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "auto")
FIGURES = ("cpr", "cmd", "cpr_random", "recovered")


def run(testbeds: list[str], seeds: list[int], out: Path, cache: Path) -> None:
    from sae_codes_calibration import default_circuit, load_bed, variant_config

    from circuitscan.evaluation.faithfulness import faithfulness_curves
    from circuitscan.evaluation.intervention import CircuitEvaluator
    from circuitscan.evaluation.metrics import default_metric
    from circuitscan.evaluation.performance import circuit_performance
    from circuitscan.methods import discover_from_activations

    with out.open("a") as f:
        for name in testbeds:
            for seed in seeds:
                bed = load_bed(name, seed, cache)
                cfg = variant_config("sc-preset", seed)
                d = discover_from_activations(bed.activations(cfg.aggregation), cfg, paired=bed.prompts.paired)
                heads, _ = default_circuit(d.node, cfg)
                n = bed.tb.faith_examples or bed.tb.n_examples
                for precision in PRECISIONS:
                    t = time.perf_counter()
                    ev = CircuitEvaluator.build(bed.model, bed.prompts, ablation="corrupt",
                                                metrics=[default_metric(bed.prompts)], n_examples=n, batch_size=32,
                                                precision=precision, random_precision=precision)
                    c = faithfulness_curves(ev, [d.node], random_samples=10, seed=seed)[d.node.method]
                    perf = circuit_performance(ev, {"c": heads}, random_samples=0, complements=False)
                    secs = time.perf_counter() - t
                    rec: dict[str, Any] = {
                        "testbed": name, "seed": seed, "precision": precision,
                        "resolved": ev.resolved(precision), "n_examples": ev.n, "size": len(heads),
                        "cpr": c.cpr, "cmd": c.cmd, "cpr_random": c.cpr_random, "values": c.values,
                        "recovered": perf.row("c").normalised[ev.metrics[0]], "seconds": secs,
                    }
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    print(f"{name} seed {seed} {precision} ({rec['resolved']}): CPR {c.cpr:.5f} CMD {c.cmd:.5f} "
                          f"cpr_random {c.cpr_random:.5f} recovered {rec['recovered']:.5f} {secs:.1f}s", flush=True)


def _ms(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.3f}"


def table(path: Path) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by = {(r["testbed"], r["seed"], r["precision"]): r for r in recs}
    beds = list(dict.fromkeys(r["testbed"] for r in recs))
    print("| testbed | seeds | " + " | ".join(f"{k} fp32 | {k} change, mean / max" for k in FIGURES)
          + " | largest curve-point change | seconds fp32 / auto |")
    print("|---|---:|" + "---:|---:|" * len(FIGURES) + "---:|---:|")
    for bed in beds:
        seeds = sorted({s for (b, s, p) in by if b == bed and (b, s, "fp32") in by and (b, s, "auto") in by})
        if not seeds:
            continue
        cells = []
        for k in FIGURES:
            ref = [by[(bed, s, "fp32")][k] for s in seeds]
            delta = [abs(by[(bed, s, "auto")][k] - by[(bed, s, "fp32")][k]) for s in seeds]
            cells.append(f"{_ms(ref)} | {statistics.mean(delta):.1e} / {max(delta):.1e}")
        point = max(abs(a - b) for s in seeds
                    for a, b in zip(by[(bed, s, "auto")]["values"], by[(bed, s, "fp32")]["values"], strict=True))
        secs = [statistics.mean(by[(bed, s, p)]["seconds"] for s in seeds) for p in PRECISIONS]
        print(f"| {bed} | {len(seeds)} | " + " | ".join(cells) + f" | {point:.1e} | {secs[0]:.1f} / {secs[1]:.1f} |")


def main() -> None:
    from sae_codes_calibration import GROUPS, TESTBEDS, parse_seeds

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbeds", default="all", help="comma-separated testbeds or a group: toy, smollm2, all")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--out", type=Path, default=Path("docs/references/eval_precision.jsonl"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/circuitscan-study"), help="activation cache")
    ap.add_argument("--table", type=Path, help="print the table of this file and stop")
    args = ap.parse_args()
    if args.table:
        table(args.table)
        return
    names = GROUPS.get(args.testbeds, [t for t in args.testbeds.split(",") if t])
    names = [t for t in names if not t.endswith("-250")]
    unknown = [t for t in names if t not in TESTBEDS]
    if unknown:
        raise SystemExit(f"unknown testbeds {unknown}; valid: {', '.join(TESTBEDS)} or {', '.join(GROUPS)}")
    import torch

    torch.set_num_threads(1)
    run(names, parse_seeds(args.seeds), args.out, args.cache)


if __name__ == "__main__":
    main()
