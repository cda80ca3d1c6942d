"""Benchmark: ``discover --evaluate`` with random circuits on every prompt against the first 16
(``--random-examples``, issue 14), SmolLM2-135M IOI, in ONE process.

For each number of examples (12 and 60 by default) it times discover alone, then
``evaluate_run`` (performance table + faithfulness, defaults) with ``random_examples`` 0 (every
prompt: the behaviour before) and 16, and prints seconds, the ratio to discover, passes, rows,
circuits, CPR / CMD (which read only the method curves, so should not move), ``cpr_random``
and the random rows of the table (normalised mean ± std over draws).

The machine may be shared: only ratios measured in this process compare.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_random_examples.py [--examples 12 60] [--r 16 8] [--bf16]
"""

from __future__ import annotations

import argparse
import tempfile
import time


def _summary(ev) -> str:
    f = ev.faithfulness or {}
    cpr = ", ".join(f"{m} {v:.4f}" for m, v in f.get("cpr", {}).items())
    cmd = ", ".join(f"{m} {v:.4f}" for m, v in f.get("cmd", {}).items())
    rnd = ", ".join(f"{m} {v:.4f}" for m, v in f.get("cpr_random", {}).items())
    rows = "; ".join(f"{r.name} {r.normalised[ev.performance.metric]:.3f} ± {r.std['normalised_' + ev.performance.metric]:.3f}"
                     f" ({r.samples} draws x {r.examples} prompts)" for r in ev.performance.rows if r.kind == "random")
    return f"CPR {cpr}; CMD {cmd}; cpr_random {rnd}\n      random rows: {rows}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, nargs="+", default=[12, 60])
    ap.add_argument("--r", type=int, nargs="+", default=[16], help="random_examples to compare with 0 (every prompt)")
    ap.add_argument("--bf16", action="store_true", help="also each --r with --eval-precision bf16")
    args = ap.parse_args()

    import torch

    import circuitscan as cs
    from circuitscan.evaluation import evaluate_run

    model = cs.load_model("smollm2-135m")
    print(f"smollm2-135m IOI, {torch.get_num_threads()} torch threads", flush=True)
    for n in args.examples:
        p = cs.build_task("ioi", model, n, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = cs.discover(model, p, level="both", out=f"{tmp}/run")
            d_s = time.perf_counter() - t
            print(f"{n} examples: discover {d_s:.1f}s", flush=True)
            runs = [(0, "fp32"), *((r, "fp32") for r in args.r), *((r, "bf16") for r in args.r if args.bf16)]
            for r, precision in runs:
                t = time.perf_counter()
                ev = evaluate_run(res.out, faithfulness=True, model=model, prompts=p, random_examples=r,
                                  precision=precision)
                e_s = time.perf_counter() - t
                s = ev.stats
                print(f"  random_examples {r or 'all'}, {precision}: evaluate {e_s:.1f}s, ratio {e_s / d_s:.2f}; "
                      f"{int(s['forward_passes'])} passes, {int(s['rows'])} rows, {int(s['circuits'])} circuits\n"
                      f"      {_summary(ev)}", flush=True)


if __name__ == "__main__":
    main()
