"""Benchmark: sweep execution on smollm2-135m IOI (in-process, local pool, Ray).

Caches the activations once (one forward pass), then runs the same SAE units
(``--grid``, default features=100,200 x l1=0.01,0.02, one seed) on each backend and
prints, from this one run:

  * seconds per SAE point (one worker, one torch thread; and one worker with all threads);
  * the speed-up from 1 to 2 local workers (1 thread each);
  * the overhead of Ray against the local pool (2 workers each): start-up and run;
  * whether every backend produced the same table (it must).

Usage: .venv/bin/python benchmarks/bench_sweep.py [--examples 250] [--epochs 500] [--no-ray]
Other load on the machine shows in the numbers: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def make_backend(kind: str, out: Path, plan, n_units: int):
    from circuitscan.sweep.backends import InlineBackend, LocalPoolBackend
    from circuitscan.sweep.runner import Execution, open_backend
    from circuitscan.sweep.store import activations_path

    paths = {k: activations_path(out, k) for k in plan.variants}
    if kind == "inline1":
        return InlineBackend(paths, threads=1)
    if kind == "inline2":
        return InlineBackend(paths, threads=2)
    if kind == "pool1":
        return LocalPoolBackend(paths, workers=1, threads=1)
    if kind == "pool2":
        return LocalPoolBackend(paths, workers=2, threads=1)
    return open_backend(out, set(plan.variants), Execution(workers=2, threads=1, ray_address="local"), n_units)


def timed(kind: str, out: Path, plan, units):
    """(start-up s, run s, journal rows); pools start lazily, so their start-up is inside run."""
    from circuitscan.sweep.runner import execute
    from circuitscan.sweep.store import Journal

    t = time.perf_counter()
    backend = make_backend(kind, out, plan, len(units))
    start = time.perf_counter() - t
    journal = Journal(out / f"journal-{kind}.jsonl")
    t = time.perf_counter()
    try:
        execute(units, backend, journal)
    finally:
        backend.close()
    rows, _ = journal.read()
    return start, time.perf_counter() - t, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--grid", default="features=100,200 l1=0.01,0.02")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()

    import circuitscan as cs
    from circuitscan.sweep.grid import parse_grid
    from circuitscan.sweep.plan import SweepSpec, build_plan
    from circuitscan.sweep.runner import cache_variants

    print(f"load average {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    model = cs.load_model("smollm2-135m")
    spec = SweepSpec(model="smollm2-135m", task="ioi", examples=args.examples, seeds=(0,), level="node",
                     grid=parse_grid(args.grid, task="ioi"), sae=cs.SAEConfig(epochs=args.epochs))
    plan = build_plan(spec, reference=False)
    units = list(plan.units.values())
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        t = time.perf_counter()
        cache_variants(out, plan, set(plan.variants), lambda: model)
        t_acts = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (out / "activations").rglob("*.npy")) / 2**20
        print(f"smollm2-135m IOI: {2 * args.examples} prompts, {model.layout.n_total} heads x {model.d_model}; "
              f"activations cached once: {t_acts:.1f} s, {size:.0f} MiB on disk")
        print(f"grid {args.grid}, 1 seed: {len(units)} SAE units ({args.epochs} epochs, 10 training examples)")

        names = {"inline1": "in-process, 1 thread", "inline2": "in-process, 2 threads",
                 "pool1": "local pool, 1 worker x 1 thread", "pool2": "local pool, 2 workers x 1 thread",
                 "ray": "Ray (local instance), 2 workers x 1 thread"}
        kinds = [k for k in names if k != "ray" or not args.no_ray]
        runs = {}
        for kind in kinds:
            start, run, rows = timed(kind, out, plan, units)
            runs[kind] = (start, run, rows)
            bad = sum(r["status"] != "ok" for r in rows.values())
            print(f"  {names[kind]:<44} start-up {start:6.2f} s   run {run:7.2f} s   "
                  f"per SAE point {run / len(units):6.2f} s" + (f"   {bad} ERRORS" if bad else ""))
        # every backend with 1 thread per worker must give the same numbers, bit for bit
        base = runs["inline1"][2]
        same = {kind: all(rows[k].get("node_scores") == base[k].get("node_scores") for k in plan.rows)
                for kind, (_, _, rows) in runs.items() if kind != "inline2"}

        r1, r1t2, p1, p2 = (runs[k][1] for k in ("inline1", "inline2", "pool1", "pool2"))
        print()
        print(f"seconds per SAE point (1 worker, 1 thread):            {r1 / len(units):.2f}")
        print(f"seconds per SAE point (1 worker, 2 threads):           {r1t2 / len(units):.2f}")
        print(f"speed-up 1 -> 2 workers (local pool, 1 thread each):   {p1 / p2:.2f}x")
        print(f"speed-up 2 workers x 1 thread vs 1 worker x 2 threads: {r1t2 / p2:.2f}x")
        print(f"local pool of 1 / in-process (pool start-up included): {p1 / r1:.2f}x the time")
        if not args.no_ray:
            rs, rr, _ = runs["ray"]
            print(f"Ray / local pool, 2 workers, run only:                 {rr / p2:.2f}x the time")
            print(f"Ray / local pool, 2 workers, with start-up:            {(rs + rr) / p2:.2f}x the time "
                  f"(ray.init + one put per variant: {rs:.1f} s)")
        print("identical node scores on every backend (1 thread):    "
              + ("yes" if all(same.values()) else f"NO: {same}"))
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
