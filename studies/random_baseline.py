"""Study (issue 14): how many prompts, and which precision, the random circuits of an evaluation need.

A random baseline (the performance table's "random k heads" row, the faithfulness curves'
random band and ``cpr_random``) is a mean ± std over draws of heads. For SmolLM2-135M tasks at
60 examples and seeds 0..S-1 (the seed draws the prompts and the random heads), this runs
discover (defaults) and then ``evaluate_run`` (faithfulness on) with the random circuits on
16 prompts in fp32, on 16 in ``auto`` precision (bf16 on hardware with bf16 units), on 8 in
auto and on all 60 in auto, and writes one JSON line per (task, seed, setting): the table's
random row (normalised mean, std over draws, draws), ``cpr_random`` and the seconds.
``--table`` prints, per setting, the change of each random mean against the reference
setting, in units of that mean's standard error over draws (std / sqrt(draws)).

    PYTHONPATH=src .venv/bin/python studies/random_baseline.py --out docs/references/random_baseline.jsonl
    PYTHONPATH=src .venv/bin/python studies/random_baseline.py --table docs/references/random_baseline.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

SETTINGS = {"r16-fp32": (16, "fp32"), "r16-auto": (16, "auto"), "r8-auto": (8, "auto"), "all-auto": (0, "auto")}


def run(tasks: list[str], seeds: list[int], n: int, out: Path) -> None:
    import circuitscan as cs
    from circuitscan.evaluation import evaluate_run

    model = cs.load_model("smollm2-135m")
    with out.open("a") as f:
        for task in tasks:
            for seed in seeds:
                prompts = cs.build_task(task, model, n, seed=seed)
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    res = cs.discover(model, prompts, level="both", out=f"{tmp}/run")
                    disc = time.perf_counter() - t
                    for name, (r, precision) in SETTINGS.items():
                        t = time.perf_counter()
                        ev = evaluate_run(res.out, faithfulness=True, model=model, prompts=prompts, seed=seed,
                                          random_examples=r, random_precision=precision)
                        secs = time.perf_counter() - t
                        metric = ev.performance.metric
                        rows = [{"name": x.name, "mean": x.normalised[metric], "std": x.std["normalised_" + metric],
                                 "draws": x.samples, "examples": x.examples}
                                for x in ev.performance.rows if x.kind == "random"]
                        rec = {"task": task, "seed": seed, "n": n, "setting": name, "random_examples": r,
                               "random_precision": ev.metrics_json["circuit_performance"]["random_precision"],
                               "random_rows": rows, "cpr_random": ev.faithfulness["cpr_random"],
                               "cpr": ev.faithfulness["cpr"], "seconds": secs, "discover_seconds": disc}
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        print(f"{task} seed {seed} {name}: {secs:.1f}s (discover {disc:.1f}s) "
                              f"rows {[(x['name'], round(x['mean'], 4), round(x['std'], 4)) for x in rows]} "
                              f"cpr_random {ev.faithfulness['cpr_random']}", flush=True)


def table(path: Path, reference: str) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by = {(r["task"], r["seed"], r["setting"]): r for r in recs}
    print(f"| setting | precision | random-row shift vs {reference} (SE units), mean / max | cpr_random shift, "
          "mean / max | seconds (mean) | evaluate / discover |")
    print("|---|---|---:|---:|---:|---:|")
    for name in SETTINGS:
        z, dc, secs, ratio, prec = [], [], [], [], set()
        for (task, seed, setting), r in by.items():
            if setting != name or (task, seed, reference) not in by:
                continue
            ref = by[(task, seed, reference)]
            for a, b in zip(ref["random_rows"], r["random_rows"], strict=True):
                se = a["std"] / math.sqrt(a["draws"]) if a["draws"] > 1 else float("nan")
                z.append(abs(b["mean"] - a["mean"]) / se if se > 0 else 0.0)
            dc += [abs(r["cpr_random"][m] - ref["cpr_random"][m]) for m in r["cpr_random"]]
            secs.append(r["seconds"])
            ratio.append(r["seconds"] / r["discover_seconds"])
            prec.add(r["random_precision"])
        if secs:
            print(f"| {name} | {'/'.join(sorted(prec))} | {statistics.mean(z):.2f} / {max(z):.2f} | "
                  f"{statistics.mean(dc):.4f} / {max(dc):.4f} | {statistics.mean(secs):.1f} | "
                  f"{statistics.mean(ratio):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="ioi,greater-than,induction")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("-n", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("runs/random_baseline.jsonl"))
    ap.add_argument("--table", type=Path, default=None)
    ap.add_argument("--reference", default="all-auto", choices=list(SETTINGS))
    args = ap.parse_args()
    if args.table:
        table(args.table, args.reference)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run(args.tasks.split(","), list(range(args.seeds)), args.n, args.out)


if __name__ == "__main__":
    main()
