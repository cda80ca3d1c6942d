"""Benchmark: every speed target of issue 14, as ratios measured in ONE run on this machine.

Prints, for smollm2-135m IOI (model cached, load not counted), each with the peak
resident memory of the process so far beside it:

  1. discover --level both at --examples (250 + 250) against a plain `transformers`
     forward pass over the same prompts (with logits)              target <= 1.0
  2. sae-codes against EAP at 12 + 12 and at 48 + 48 prompts       target <= 1.0
  3. discover --evaluate: evaluate_run (performance table + faithfulness, defaults)
     against discover alone, at --eval-examples (60)               target <= 3.0
     (random circuits at the default --random-precision auto; the same with them in fp32, and
     with --eval-precision bf16, with its CPR and CMD beside fp32's)
  4. `report RUN_DIR` on that run                                  target <= 5 s
  and the checks against the slow paths: the Hugging Face activations path against the
  TransformerBridge one (node ranking equal), the shared-prefix evaluator against the
  unshared one (largest difference).

The machine may be shared: only ratios measured here, in one process, compare; the
absolute seconds say how busy it was.

Usage: .venv/bin/python benchmarks/bench_targets.py [--examples 250] [--eval-examples 60] [--quick] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time


def _peak() -> str:
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


def _line(name: str, ratio: float, target: str, detail: str) -> None:
    print(f"{name:<44} ratio {ratio:6.2f}  (target {target})  {detail}; {_peak()}", flush=True)


def _cpr_cmd(ev) -> str:
    f = ev.faithfulness or {}
    return "CPR " + ", ".join(f"{m} {v:.4f}" for m, v in f.get("cpr", {}).items()) + "; CMD " + ", ".join(
        f"{m} {v:.4f}" for m, v in f.get("cmd", {}).items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=250)
    ap.add_argument("--eval-examples", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="small sizes (40 / 12 prompts): a smoke run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time steps 1 and 3 this many times, alternating, and keep each side's fastest (the "
                    "machine's noise only ever adds time)")
    ap.add_argument("--before", action="store_true",
                    help="also time step 3 the way it ran before issue 14 (bridge hooks, no shared prefix, "
                    "100 random circuits per size in fp32, 20 curve points) and with the 20 curve points of before "
                    "issue 14's last round, in this process")
    args = ap.parse_args()
    if args.quick:
        args.examples, args.eval_examples = 40, 12

    import torch
    from transformers import AutoModelForCausalLM

    import circuitscan as cs
    from circuitscan.evaluation import evaluate_run
    from circuitscan.methods import EAPConfig, SAECodesConfig, get
    from circuitscan.models.hf import bridge_only
    from circuitscan.models.loading import cache_dir
    from circuitscan.report import write_report

    model = cs.load_model("smollm2-135m")
    print(f"smollm2-135m, {torch.get_num_threads()} torch threads", flush=True)

    # 1. discover vs the plain forward pass
    prompts = cs.build_task("ioi", model, args.examples, seed=0)
    tokens, _ = prompts.all_tokens()
    hf = AutoModelForCausalLM.from_pretrained(str(cache_dir() / "models" / "smollm2-135m-instruct-q4_1")).eval()
    floor = disc = float("inf")
    for _ in range(max(1, args.repeat)):
        with torch.inference_mode():
            hf(tokens[:4])
            t = time.perf_counter()
            for lo in range(0, tokens.shape[0], args.batch_size):
                hf(tokens[lo : lo + args.batch_size])
            floor = min(floor, time.perf_counter() - t)
        t = time.perf_counter()
        result = cs.discover(model, prompts, level="both", batch_size=args.batch_size)
        disc = min(disc, time.perf_counter() - t)
    del hf
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items() if v >= 0.05)
    _line(f"1. discover / plain forward ({tokens.shape[0]} prompts)", disc / floor, "<= 1.0",
          f"{disc:.1f}s vs {floor:.1f}s [{stages}]")
    with bridge_only(model):
        t = time.perf_counter()
        slow = cs.head_outputs(model, prompts, batch_size=args.batch_size)
        bridge_s = time.perf_counter() - t
    t = time.perf_counter()
    fast = cs.head_outputs(model, prompts, batch_size=args.batch_size)
    hf_s = time.perf_counter() - t
    print(f"   activations: HF pre-hook path {hf_s:.1f}s, bridge hook_z path {bridge_s:.1f}s "
          f"({bridge_s / hf_s:.2f}x); max |diff| {float((fast.x - slow.x).abs().max()):.1e}", flush=True)

    # 2. sae-codes vs EAP
    for n in (12, 48):
        p = cs.build_task("ioi", model, n, seed=1)
        sae = get("sae-codes").score(model, p, SAECodesConfig(batch_size=64))
        eap = get("eap").score(model, p, EAPConfig(batch_size=32))
        _line(f"2. sae-codes / eap at {n} + {n} prompts", sae.wall_time_s / eap.wall_time_s, "<= 1.0",
              f"{sae.wall_time_s:.1f}s vs {eap.wall_time_s:.1f}s")

    # 3. discover --evaluate vs discover, 4. report
    p = cs.build_task("ioi", model, args.eval_examples, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        d_s = e_s = float("inf")
        for i in range(max(1, args.repeat)):
            t = time.perf_counter()
            res = cs.discover(model, p, level="both", out=f"{tmp}/run", overwrite=i > 0)
            d_s = min(d_s, time.perf_counter() - t)
            t = time.perf_counter()
            ev = evaluate_run(res.out, faithfulness=True, model=model, prompts=p)
            e_s = min(e_s, time.perf_counter() - t)
        _line(f"3. evaluate / discover ({args.eval_examples} examples)", e_s / d_s, "<= 3.0",
              f"{e_s:.1f}s vs {d_s:.1f}s, {ev.stats['forward_passes']} passes, {ev.stats['rows']} rows")
        print(f"   {_cpr_cmd(ev)}; random precision {ev.metrics_json['circuit_performance']['random_precision']}",
              flush=True)
        t = time.perf_counter()
        r32 = evaluate_run(res.out, faithfulness=True, model=model, prompts=p, random_precision="fp32")
        r_s = time.perf_counter() - t
        _line("   the same, random circuits in fp32 (before)", r_s / d_s, "<= 3.0",
              f"{r_s:.1f}s; {_cpr_cmd(r32)}; cpr_random {r32.faithfulness['cpr_random']} vs "
              f"{ev.faithfulness['cpr_random']}")
        t = time.perf_counter()
        bf = evaluate_run(res.out, faithfulness=True, model=model, prompts=p, precision="bf16")
        b_s = time.perf_counter() - t
        _line("   the same, --eval-precision bf16", b_s / d_s, "<= 3.0", f"{b_s:.1f}s; {_cpr_cmd(bf)}")
        if args.before:
            t = time.perf_counter()
            pts = evaluate_run(res.out, faithfulness=True, model=model, prompts=p, faithfulness_points=20)
            p_s = time.perf_counter() - t
            _line("   20 curve points (the default until now)", p_s / d_s, "<= 3.0",
                  f"{p_s:.1f}s, {pts.stats['rows']} rows; {_cpr_cmd(pts)}")
            with bridge_only(model):
                t = time.perf_counter()
                old = evaluate_run(res.out, faithfulness=True, model=model, prompts=p, random_samples=100,
                                   faithfulness_points=20, random_precision="fp32")
                o_s = time.perf_counter() - t
            old_cpr = ", ".join(f"{m} {v:.3f}" for m, v in (old.faithfulness or {}).get("cpr", {}).items())
            _line("   before: evaluate / discover", o_s / d_s, "<= 3.0",
                  f"{o_s:.1f}s ({o_s / e_s:.1f}x the new path), CPR {old_cpr}")
        t = time.perf_counter()
        write_report(res.out)
        r_s = time.perf_counter() - t
        print(f"{'4. report RUN_DIR':<44} {r_s:6.2f} s     (target <= 5 s); {_peak()}", flush=True)


if __name__ == "__main__":
    main()
