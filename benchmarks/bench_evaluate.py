"""Benchmark: evaluation by intervention on smollm2-135m IOI (or any model/task).

Prints, from one run on this machine:
  * the floor: one plain forward pass over the prompts (no hooks, all logits);
  * building the evaluator (clean + corrupted caches, the all-ablated baseline);
  * one faithfulness curve (sae-codes scores, heads added in score order, 10 random
    circuits per size): forward passes, token rows, seconds, rows per second;
  * the same circuits run the naive way on a sample -- one forward pass per circuit and
    prompt -- and the speed ratio of the batched path to it;
  * the performance table of the sae-codes circuit against random circuits;
  * the same circuits with and without the shared prefix (corrupt ablation: the positions
    a prompt shares with its corrupted partner run once, unhooked), and whether the values agree;
  * the `discover --evaluate` flow: discover --level both alone, then evaluate_run with
    faithfulness (defaults), and their ratio (target <= 3), with peak memory.

Usage: .venv/bin/python benchmarks/bench_evaluate.py [--model smollm2-135m] [--task ioi]
       [--examples 40] [--random-samples 10] [--points 20] [--max-rows 256] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--examples", type=int, default=40)
    ap.add_argument("--random-samples", type=int, default=10)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--max-rows", type=int, default=256)
    ap.add_argument("--naive-circuits", type=int, default=3, help="circuits timed the naive way")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's; on a shared machine 1 can be several times faster)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import circuitscan as cs
    from circuitscan.evaluation import (
        CircuitEvaluator,
        circuit_performance,
        curve_sizes,
        faithfulness_curves,
    )
    from circuitscan.evaluation.intervention import logits_at, random_masks, run_with_heads

    model = cs.load_model(args.model)
    prompts = cs.build_task(args.task, model, args.examples, seed=0)
    n_total = model.layout.n_total
    print(f"{args.model} {args.task}: {prompts.n_positive} positive prompts x {prompts.seq_len} tokens, "
          f"{n_total} heads, {torch.get_num_threads()} threads")

    with torch.inference_mode():
        model.bridge(prompts.positive[:4])  # warm-up
        t = time.perf_counter()
        model.bridge(prompts.positive)
        floor = time.perf_counter() - t
    print(f"floor: one plain forward pass over {prompts.n_positive} prompts      {floor:8.2f} s "
          f"({prompts.n_positive / floor:.1f} rows/s)")

    t = time.perf_counter()
    result = cs.discover(model, prompts, level="node")
    print(f"discover (sae-codes, node level)                     {time.perf_counter() - t:8.2f} s")
    scores = result.discovery.node

    t = time.perf_counter()
    ev = CircuitEvaluator.build(model, prompts, ablation="corrupt", max_rows=args.max_rows)
    build_s = time.perf_counter() - t
    print(f"evaluator: caches + clean/ablated baselines          {build_s:8.2f} s "
          f"({ev.stats.forward_passes} passes, {ev.stats.rows} rows)")

    sizes = curve_sizes(n_total, args.points)
    before = (ev.stats.forward_passes, ev.stats.rows, ev.stats.circuits)
    t = time.perf_counter()
    curve = faithfulness_curves(ev, scores, sizes=sizes, random_samples=args.random_samples)[scores.method]
    curve_s = time.perf_counter() - t
    passes = ev.stats.forward_passes - before[0]
    rows = ev.stats.rows - before[1]
    circuits = ev.stats.circuits - before[2]
    print(f"faithfulness curve: {len(curve.sizes)} sizes x (1 + {args.random_samples} random) circuits "
          f"({circuits} distinct)")
    print(f"  {passes} forward passes, {rows} token rows, {curve_s:.2f} s, {rows / curve_s:.1f} rows/s; "
          f"CPR {curve.cpr:.3f} (random {curve.cpr_random:.3f}), CMD {curve.cmd:.3f} (random {curve.cmd_random:.3f})")
    print(f"  per curve: {passes} passes vs {circuits * prompts.n_positive} for one pass per circuit and prompt")

    # the naive way on a sample: one forward pass per circuit and prompt, full logits
    sample = random_masks(n_total, n_total // 2, args.naive_circuits, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    with torch.inference_mode():
        for keep in sample:
            for i in range(prompts.n_positive):
                run_with_heads(model, prompts.positive[i : i + 1], keep[None], ev.source,
                               rows=torch.tensor([i]), positions=None)
    naive_s = time.perf_counter() - t
    naive_rows = args.naive_circuits * prompts.n_positive
    t = time.perf_counter()
    ev.evaluate(sample)
    batched_s = time.perf_counter() - t
    print(f"naive (1 pass per circuit x prompt) on {args.naive_circuits} circuits: {naive_s:.2f} s "
          f"({naive_rows / naive_s:.1f} rows/s); batched: {batched_s:.2f} s; ratio {naive_s / batched_s:.1f}x")
    with torch.inference_mode():
        t = time.perf_counter()
        logits_at(model, prompts.positive, torch.tensor([prompts.seq_len - 1]))
        last_only = time.perf_counter() - t
    print(f"last-position logits only vs all logits (one pass): {last_only:.2f} s vs {floor:.2f} s; "
          f"ratio {floor / last_only:.2f}x")

    circuit = result.circuits[scores.method]["heads"]
    table = circuit_performance(ev, {"sae-codes": circuit}, random_samples=args.random_samples, complements=True)
    print(f"performance ({ev.ablation} ablation, {ev.n} prompts), circuit rule: {result.circuits[scores.method]['rule']}")
    for row in table.rows:
        m = row.metrics.get(ev.metrics[0])
        nm = row.normalised.get(ev.metrics[0])
        sd = row.std.get(f"normalised_{ev.metrics[0]}")
        extra = f" ± {sd:.3f}" if sd is not None else ""
        heads = "-" if row.n_heads is None else row.n_heads
        print(f"  {row.name:<28} {heads!s:>5} heads  {ev.metrics[0]} {m:8.3f}  normalised {nm:7.3f}{extra}")
    if ev.shared is not None:
        wide = random_masks(n_total, n_total // 2, 8, generator=torch.Generator().manual_seed(1))
        t = time.perf_counter()
        on = ev.evaluate(wide)[ev.metrics[0]]
        on_s = time.perf_counter() - t
        ev.prefix_sharing = False
        t = time.perf_counter()
        off = ev.evaluate(wide)[ev.metrics[0]]
        off_s = time.perf_counter() - t
        ev.prefix_sharing = True
        print(f"shared prefix ({int(ev.shared.min())}..{int(ev.shared.max())} of {prompts.seq_len} positions): "
              f"8 circuits {on_s:.2f} s vs {off_s:.2f} s without, ratio {off_s / on_s:.2f}x; "
              f"max |diff| {float((on - off).abs().max()):.2e}; peak RSS {_peak():.0f} MiB")

    import tempfile

    from circuitscan.evaluation import evaluate_run

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = cs.discover(model, prompts, level="both", out=f"{tmp}/run")
        disc_s = time.perf_counter() - t
        t = time.perf_counter()
        run_ev = evaluate_run(res.out, faithfulness=True, model=model, prompts=prompts)
        eval_s = time.perf_counter() - t
    print(f"discover --evaluate: discover {disc_s:.1f} s, evaluate {eval_s:.1f} s "
          f"({run_ev.stats['forward_passes']} passes, {run_ev.stats['rows']} rows), ratio evaluate / discover "
          f"{eval_s / disc_s:.2f} (target <= 3); peak RSS {_peak():.0f} MiB")
    print(f"total: {ev.stats.forward_passes} passes, {ev.stats.rows} rows, {ev.stats.seconds:.1f} s in the evaluator; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
