"""Study: the feature graph's head-level view beside head-level methods on smollm2-135m IOI.

Attention-output SAEs at every layer (``circuitscan features train --sites attn.0-29``) let
the feature graph be read as a ranking of heads (``feature-attribution``: each kept
feature's |score| split over the heads by how much each writes along its atom). This
script scores four variants of that view and three head-level methods on the *same*
prompts:

* ``fa-zero-kept`` / ``fa-zero-all``: node = f * dm/df (the seed post's graph), the top-k
  features per layer or all of them;
* ``fa-corrupt-kept`` / ``fa-corrupt-all``: Marks et al.'s attribution patching,
  (f - f_corrupt) * dm/df against each prompt's paired negative;
* ``sae-codes`` (this project's main method), ``eap``, ``patching`` (exact, one forward per head).

SmolLM2 has no published IOI circuit, so ROC AUC over heads is measured against a PROXY:
the top 10% of heads by exact activation patching on these prompts (patching's own AUC is
1 by construction, and methods that approximate patching, EAP and the corrupt-baseline
graph, are favoured by it). Faithfulness (CPR / CMD, corrupt ablation) needs no ground truth.

Usage: .venv/bin/python studies/feature_heads_ioi_smollm2.py --saes SAE_DIR [--examples 16]
       [--top-k 10] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saes", required=True, help="SAE directory with attn.L sites")
    ap.add_argument("--examples", type=int, default=16, help="positive prompts (and as many negatives)")
    ap.add_argument("--top-k", type=int, default=10, help="features kept per layer (the *-kept variants)")
    ap.add_argument("--faithfulness-samples", type=int, default=3, help="random orders for the random baseline")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()

    import circuitscan as cs
    from circuitscan.evaluation.faithfulness import curve_sizes, faithfulness_curves
    from circuitscan.evaluation.ground_truth import evaluate_against
    from circuitscan.evaluation.intervention import CircuitEvaluator
    from circuitscan.features.graph import GraphConfig, graph_for_prompts
    from circuitscan.features.heads import scores_from_graph
    from circuitscan.features.saes import load_sublayer_saes
    from circuitscan.methods import get as get_method
    from circuitscan.methods.sae_codes import SAECodesConfig, run_sae_codes
    from circuitscan.types import GroundTruth

    model = cs.load_model("smollm2-135m")
    prompts = cs.build_task("ioi", model, args.examples, seed=0)
    saes = load_sublayer_saes(args.saes)
    attn = [s for s in saes.sites if s.kind == "attn"]
    print(f"IOI: {prompts.n_positive} + {prompts.n_negative} prompts x {prompts.seq_len} tokens; "
          f"attention SAEs at {len(attn)} layers", flush=True)

    scores = []
    for baseline in ("zero", "corrupt"):
        t = time.perf_counter()
        graph = graph_for_prompts(model, saes, prompts,
                                  GraphConfig(top_k=args.top_k, compute_edges=False, baseline=baseline),
                                  sites=attn)
        dt = time.perf_counter() - t
        for features in ("kept", "all"):
            s = scores_from_graph(graph, model.layout, features, "decoder", wall_time_s=dt)
            scores.append(dataclasses.replace(s, method=f"fa-{baseline}-{features}"))
        print(f"  feature graph ({baseline}): {dt:.1f}s", flush=True)
    t = time.perf_counter()
    scores.append(run_sae_codes(model, prompts, SAECodesConfig()).node)
    print(f"  sae-codes: {time.perf_counter() - t:.1f}s", flush=True)
    for name in ("eap", "patching"):
        t = time.perf_counter()
        scores.append(get_method(name).score(model, prompts, None))
        print(f"  {name}: {time.perf_counter() - t:.1f}s", flush=True)
    by = {s.method: s for s in scores}

    k = round(0.1 * model.layout.n_total)
    proxy = GroundTruth.from_heads([h.name for h in by["patching"].ranking()[:k]], name="patching-top-10%",
                                   model=model.family)
    ev = CircuitEvaluator.build(model, prompts, ablation="corrupt")
    curves = faithfulness_curves(ev, scores, sizes=curve_sizes(model.layout.n_total, 12),
                                 random_samples=args.faithfulness_samples)
    pat = by["patching"].node.flatten().double()

    def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
        ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
        return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])

    rows = []
    print()
    print(f"{'method':<16} {'time (s)':>8} {'AUC vs proxy':>12} {'proxy in top 27':>15} {'Spearman vs patching':>20} "
          f"{'CPR':>6} {'CMD':>6}")
    for s in scores:
        m = evaluate_against(s, proxy)
        top = {h.name for h in s.ranking()[:k]}
        hits = len(top & {h.name for h in proxy.heads})
        row = {"method": s.method, "seconds": s.wall_time_s, "auc_vs_proxy": m.auc, "proxy_heads_in_top_k": hits,
               "spearman_vs_patching": spearman(s.node.flatten().double(), pat),
               "cpr": curves[s.method].cpr, "cmd": curves[s.method].cmd, "top_heads": [h.name for h in s.ranking()[:10]]}
        rows.append(row)
        print(f"{s.method:<16} {s.wall_time_s:>8.1f} {m.auc:>12.3f} {hits:>12}/{k:<2} {row['spearman_vs_patching']:>20.2f} "
              f"{row['cpr']:>6.3f} {row['cmd']:>6.3f}")
    c0 = next(iter(curves.values()))
    print(f"random orders: CPR {c0.cpr_random:.3f}, CMD {c0.cmd_random:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"examples": args.examples, "top_k": args.top_k, "proxy": sorted(h.name for h in proxy.heads),
                       "random": {"cpr": c0.cpr_random, "cmd": c0.cmd_random}, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
