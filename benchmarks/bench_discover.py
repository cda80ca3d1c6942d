"""Benchmark: discover on smollm2-135m IOI vs a plain transformers forward pass.

Prints, from one run on this machine:
  * the floor: a plain `transformers` forward (full model, logits) over the same prompts;
  * discover --level both, split by stage (activations, SAE, codes, node/edge scores);
  * the same SAE stage with bf16 training matmuls, and how far its ranking moves;
  * the same SAE stage with the stopping rule (``stop="codes"``): epochs run, seconds ratio;
  * ratios to the floor, edge-scoring seconds, peak resident memory;
  * the activations stage on the Hugging Face path (a pre-hook on each attention output
    projection, the default) against the TransformerBridge hook_z path (the one before
    it), in this run, with the largest difference and whether the rankings agree.

Usage: .venv/bin/python benchmarks/bench_discover.py [--examples 250] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import replace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--lr-schedule", default="constant", help="SAEConfig.lr_schedule (docs/CALIBRATION.md 'SAE schedule')")
    ap.add_argument("--batch-rows", type=int, default=None, help="SAEConfig.batch_rows (default: full batch)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    import circuitscan as cs
    from circuitscan.methods.sae_codes import SAECodesConfig, discover_from_activations
    from circuitscan.models.loading import cache_dir

    model = cs.load_model("smollm2-135m")
    prompts = cs.build_task("ioi", model, args.examples, seed=0)
    tokens, _ = prompts.all_tokens()
    print(f"smollm2-135m IOI: {tokens.shape[0]} prompts x {tokens.shape[1]} tokens, {torch.get_num_threads()} threads")

    hf = AutoModelForCausalLM.from_pretrained(str(cache_dir() / "models" / "smollm2-135m-instruct-q4_1")).eval()
    with torch.inference_mode():
        hf(tokens[: args.batch_size])  # warm-up
        t = time.perf_counter()
        for lo in range(0, tokens.shape[0], args.batch_size):
            hf(tokens[lo : lo + args.batch_size])
        floor = time.perf_counter() - t
    del hf
    print(f"floor: plain transformers forward (with logits)   {floor:7.2f} s")

    sae_cfg = cs.SAEConfig(epochs=args.epochs, lr_schedule=args.lr_schedule, batch_rows=args.batch_rows)
    rows = "every row" if sae_cfg.batch_rows is None else f"{sae_cfg.batch_rows} rows"
    schedule = f"{sae_cfg.epochs} steps of {rows}, {sae_cfg.lr_schedule} lr {sae_cfg.lr:g}"
    print(f"SAE: {schedule}")
    result = cs.discover(model, prompts, level="both", sae=sae_cfg, batch_size=args.batch_size)
    t = result.timings
    total = sum(v for k, v in t.items() if k != "evaluate")
    for k, v in t.items():
        print(f"  {k:<14} {v:7.2f} s")
    print(f"discover --level both total (without model load)  {total:7.2f} s")

    acts = cs.head_outputs(model, prompts, batch_size=args.batch_size)
    bf = discover_from_activations(acts, SAECodesConfig(sae=replace(sae_cfg, precision="bf16"), level="both"))
    total_bf = total - t["sae_train"] + bf.timings["sae_train"]
    top32 = {h.name for h in result.discovery.node.ranking()[:20]}
    top16 = {h.name for h in bf.node.ranking()[:20]}
    print(f"  sae_train bf16 {bf.timings['sae_train']:7.2f} s   top-20 heads shared with fp32: {len(top32 & top16)}/20")
    early = discover_from_activations(acts, SAECodesConfig(sae=replace(sae_cfg, stop="codes"), level="node"))
    top_early = {h.name for h in early.node.ranking()[:20]}
    print(f"  sae_train stop=codes {early.timings['sae_train']:7.2f} s   ({early.train.epochs_run} of {args.epochs} "
          f"epochs; SAE seconds stop=codes / stop=epochs {early.timings['sae_train'] / t['sae_train']:.2f}; "
          f"top-20 heads shared: {len(top32 & top_early)}/20; docs/CALIBRATION.md 'Stopping rule')")
    print()
    print(f"ratio discover / floor          {total / floor:5.2f}   (target <= 1.0; fp32 SAE, the default)")
    print(f"ratio discover / floor (bf16)   {total_bf / floor:5.2f}   (--precision bf16)")
    print(f"ratio activations / floor       {t['activations'] / floor:5.2f}")
    print(f"ratio SAE training / floor      {t['sae_train'] / floor:5.2f}   ({schedule}, fp32)")
    print(f"edge scoring                    {t['edge_scores']:5.2f} s (target < 1 s)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory            {peak:7.0f} MiB")

    from circuitscan.models.hf import bridge_only

    t0 = time.perf_counter()
    fast = cs.head_outputs(model, prompts, batch_size=args.batch_size)
    hf_s = time.perf_counter() - t0
    with bridge_only(model):
        t0 = time.perf_counter()
        slow = cs.head_outputs(model, prompts, batch_size=args.batch_size)
        bridge_s = time.perf_counter() - t0
    same = discover_from_activations(fast, SAECodesConfig(sae=sae_cfg, level="node")).node.ranking()
    ref = discover_from_activations(slow, SAECodesConfig(sae=sae_cfg, level="node")).node.ranking()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"activations: HF pre-hook path {hf_s:.2f} s, bridge hook_z path {bridge_s:.2f} s, ratio "
          f"{bridge_s / hf_s:.2f}x; max |diff| {float((fast.x - slow.x).abs().max()):.2e}; "
          f"node ranking equal: {[h.name for h in same] == [h.name for h in ref]}; peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
