"""Benchmark: sae-codes against every baseline on smollm2-135m IOI, same prompts, one process.

Prints, from one run on this machine:
  * each method's wall time, its ratio to sae-codes, forward/backward passes;
  * ACDC at edge level: the tries it made within --acdc-edge-seconds, the time per try,
    and the time a full run would take (extrapolated: every edge it did not reach costs
    one try; disconnected receivers, which ACDC skips, would make it shorter);
  * AUC over heads against a PROXY ground truth (SmolLM2 has no published IOI circuit):
    the top 10% of heads by exact activation patching (27 heads; the IOI circuit of
    GPT-2 has 26). Patching's own AUC against it is 1 by construction;
  * CPR and CMD of every method's faithfulness curve (no ground truth needed).

Usage: .venv/bin/python benchmarks/bench_compare.py [--examples 16] [--threads 1]
       [--acdc-edge-seconds 600] [--sp-steps 50] [--out RUN_DIR]
       .venv/bin/python benchmarks/bench_compare.py --from-runs RUN_DIR [RUN_DIR ...]

``--from-runs`` runs nothing: it prints the same table from ``circuitscan compare`` run
directories made on the same prompts (one of them with ``patching``, which gives the proxy),
e.g. the new methods run separately from the rest.
"""

from __future__ import annotations

import argparse
import math
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=16, help="positive prompts (and as many negatives)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--acdc-edge-seconds", type=float, default=600.0)
    ap.add_argument("--acdc-thresholds", type=int, default=3, help="thresholds in ACDC's node-level sweep")
    ap.add_argument("--sp-steps", type=int, default=50)
    ap.add_argument("--faithfulness-samples", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the comparison run directory here")
    ap.add_argument("--scale-examples", type=int, default=0,
                    help="also time sae-codes and eap alone on this many IOI prompts (0: skip)")
    ap.add_argument("--from-runs", nargs="+", default=None, metavar="RUN_DIR",
                    help="print the table from these compare runs (same prompts, one with patching); run nothing")
    args = ap.parse_args()
    if args.from_runs:
        table_from_runs(args.from_runs)
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import circuitscan as cs
    from circuitscan.comparison import CompareSettings, _evaluate, compare
    from circuitscan.methods import ACDCConfig, SAECodesConfig, SPConfig
    from circuitscan.types import GroundTruth

    t = time.perf_counter()
    model = cs.load_model("smollm2-135m")
    prompts = cs.build_task("ioi", model, args.examples, seed=0)
    print(f"smollm2-135m IOI: {prompts.n_positive} + {prompts.n_negative} prompts x {prompts.seq_len} tokens, "
          f"{torch.get_num_threads()} torch threads (model load + task {time.perf_counter() - t:.1f}s)")

    n = args.examples
    settings = CompareSettings(batch_size=n, sp_steps=args.sp_steps)
    rel = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    node_rel = tuple(rel[1 : 1 + args.acdc_thresholds])
    configs = {
        "sae-codes": SAECodesConfig(level="both", batch_size=64),
        "acdc": ACDCConfig(level="node", relative_thresholds=node_rel, batch_size=n),
        # one edge-level ACDC run (one threshold): what "ACDC takes hours" is about
        "acdc-edge": ACDCConfig(level="edge", relative_thresholds=(0.01,), batch_size=n,
                                max_seconds=args.acdc_edge_seconds, edge_rows=n),
        "sp": SPConfig(steps=args.sp_steps, lambdas=(0.1, 1.0, 3.0), batch_size=n),
    }
    methods = ["sae-codes", "eap", "eap-ig", "patching", "acdc", "hisp", "sp", "norm-diff", "acdc-edge"]
    result = compare(model, prompts, methods, None, args.out, settings=settings, configs=configs,
                     faithfulness_samples=args.faithfulness_samples, faithfulness_points=12,
                     log=lambda m: print(f"  [{time.strftime('%H:%M:%S')}] {m}", flush=True))
    scores = {s.method: s for s in result.scores}

    # proxy ground truth: top 10% of heads by exact patching
    k = round(0.1 * model.layout.n_total)
    proxy = GroundTruth.from_heads([h.name for h in scores["patching"].ranking()[:k]], name="patching-top-10%",
                                   model=model.family)
    ev = _evaluate(model, prompts, result.scores, proxy, None, None)["ground_truth"]
    faith = result.metrics.get("faithfulness") or {}

    base = scores["sae-codes"].wall_time_s
    print()
    print(f"{'method':<16} {'time (s)':>9} {'x sae-codes':>11} {'fwd':>5} {'bwd':>5} {'AUC vs proxy':>12} "
          f"{'ROC from':>16} {'CPR':>6} {'CMD':>6}")
    for s in result.scores:
        g = ev.get(s.method, {})
        sweep = g.get("sweep")
        auc = sweep["auc"] if sweep else g.get("auc", math.nan)
        src = "sweep" if sweep else "ranking"
        if s.method == "sae-codes-pairs":
            src = "ranking (pairs)"
        note = " (stopped at limit)" if s.stats.get("stopped_early") else ""
        print(f"{s.method:<16} {s.wall_time_s:>9.1f} {s.wall_time_s / base:>11.2f} {s.forward_passes:>5} "
              f"{s.backward_passes:>5} {auc:>12.3f} {src:>16} {faith.get('cpr', {}).get(s.method, math.nan):>6.3f} "
              f"{faith.get('cmd', {}).get(s.method, math.nan):>6.3f}{note}")

    st = scores["acdc-edge"].stats
    print()
    print(f"acdc-edge: {st['tries']} tries ({st['visited']} of {st['to_visit']} edges visited, "
          f"{st['skipped_disconnected']} skipped as disconnected) in {st['loop_seconds']:.0f}s of trying")
    if st.get("stopped_early"):
        full = st["extrapolated_seconds_if_every_remaining_edge_is_tried"] + (
            scores["acdc-edge"].wall_time_s - st["loop_seconds"])
        setup = scores["acdc-edge"].wall_time_s - st["loop_seconds"]
        rate = st["extrapolated_seconds_at_the_rate_so_far"] + setup
        print(f"  {st['seconds_per_try']:.2f}s per try -> a full run would take ~{full / 3600:.1f} h "
              f"= {full / base:.0f}x sae-codes if every remaining edge needed a try (upper bound), "
              f"~{rate / 3600:.1f} h = {rate / base:.0f}x sae-codes at the rate so far (disconnected "
              "receivers skipped as often as in the part it ran)")
    else:
        print(f"  full run: {scores['acdc-edge'].wall_time_s:.0f}s = "
              f"{scores['acdc-edge'].wall_time_s / base:.0f}x sae-codes")
    stages = scores["sae-codes"].stats.get("stage_seconds", {})
    print("sae-codes stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    print(f"sae-codes vs eap: {base:.1f}s vs {scores['eap'].wall_time_s:.1f}s "
          f"(ratio eap / sae-codes = {scores['eap'].wall_time_s / base:.2f}; target >= 1); {_peak()}")
    print(f"proxy ground truth ({k} heads): {', '.join(sorted(h.name for h in proxy.heads))}")
    if result.out:
        print(f"wrote {result.out}/")
    if args.scale_examples:
        from circuitscan.methods import EAPConfig, get

        big = cs.build_task("ioi", model, args.scale_examples, seed=1)
        sae = get("sae-codes").score(model, big, SAECodesConfig(batch_size=64))
        eap = get("eap").score(model, big, EAPConfig(batch_size=32))
        print(f"at {big.n_positive} + {big.n_negative} prompts: sae-codes {sae.wall_time_s:.1f}s, eap "
              f"{eap.wall_time_s:.1f}s (ratio eap / sae-codes = {eap.wall_time_s / sae.wall_time_s:.2f}; "
              f"target >= 1); {_peak()}")


def table_from_runs(run_dirs: list[str]) -> None:
    """The benchmark's table from compare run directories on the same prompts (AUC vs the
    proxy: the top 10 % of heads by the ``patching`` scores found among them)."""
    import torch

    from circuitscan.evaluation.ground_truth import evaluate_scores
    from circuitscan.runfiles import read_run

    runs = [read_run(d) for d in run_dirs]
    shas = {r.config["task"]["prompts_sha256"] for r in runs}
    if len(shas) != 1:
        raise SystemExit(f"the runs were made on different prompts ({len(shas)} prompt hashes)")
    rows = [(r, name, entry) for r in runs for name, entry in r.methods.items()]
    patching = [entry for _, name, entry in rows if name == "patching"]
    if not patching:
        raise SystemExit("no run among them has 'patching' (the proxy's source)")
    layout = runs[0].layout
    k = round(0.1 * layout.n_total)
    top = torch.tensor(patching[0]["scores"], dtype=torch.float64).argsort(descending=True)[:k]
    truth = torch.zeros(layout.n_total, dtype=torch.bool)
    truth[top] = True
    print(f"{'method':<16} {'time (s)':>9} {'fwd':>5} {'bwd':>5} {'AUC vs proxy':>12} {'CPR':>6} {'CMD':>6}  run")
    for r, name, entry in rows:
        faith = r.metrics.get("faithfulness") or {}
        auc = evaluate_scores(torch.tensor(entry["scores"], dtype=torch.float64), truth, name="proxy").auc
        print(f"{name:<16} {entry.get('wall_time_s', math.nan):>9.1f} {entry['forward_passes']:>5} "
              f"{entry['backward_passes']:>5} {auc:>12.3f} {faith.get('cpr', {}).get(name, math.nan):>6.3f} "
              f"{faith.get('cmd', {}).get(name, math.nan):>6.3f}  {r.path.name}")
    print(f"proxy: top {k} heads by patching: {', '.join(sorted(layout.names()[i] for i in top.tolist()))}")


def _peak() -> str:
    import resource

    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


if __name__ == "__main__":
    main()
