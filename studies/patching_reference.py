"""Exact-patching reference circuits for SmolLM2-135M (IOI, greater-than, docstring).

SmolLM2 has no published circuit. As a reference that needs no circuitscan method beyond
exact intervention, every head is corrupt-ablated alone (its output replaced by its
output on the task's paired corrupted prompt) and scored by the size of the change of
the task's metric (:mod:`circuitscan.methods.patching`). This is done on two DISJOINT
prompt sets (seeds ``A`` and ``B``); the reference circuit is the top ``--top`` fraction
of heads by the mean effect over both sets (every prompt used), and its stability is
reported as the overlap of the two sets' own top sets and the Spearman correlation of
their effects.

Writes ``<out>/<task>.json`` loadable with ``--ground-truth FILE`` ({"heads": [...]},
plus how it was computed), e.g.

    .venv/bin/python studies/patching_reference.py --tasks ioi,greater-than,docstring \
        --examples 24 --out docs/references

Usage: see --help. One torch thread by default (the study machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def one_set(model, task: str, n: int, seed: int, batch: int, cache: Path) -> dict:
    """Patching effects of every head on one prompt set (cached as JSON under ``cache``)."""
    import circuitscan as cs
    from circuitscan.methods import PatchingConfig, get

    path = cache / f"{model.family}-{task}-n{n}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    prompts = cs.build_task(task, model, n, seed=seed)
    t = time.perf_counter()
    s = get("patching").score(model, prompts, PatchingConfig(batch_size=batch, max_rows=256))
    out = {"seed": seed, "n_positive": prompts.n_positive, "seq_len": prompts.seq_len,
           "metric": s.stats["metric"], "clean_metric": s.stats["clean_metric"],
           "seconds": time.perf_counter() - t, "effects": s.flat.tolist(),
           "positives": prompts.positive.tolist()}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    print(f"  {task} seed {seed}: {prompts.n_positive} prompts x {prompts.seq_len} tokens, metric "
          f"{out['metric']} clean {out['clean_metric']:.3f}, {out['seconds']:.0f}s", flush=True)
    return out


def reference_for(model, task: str, n: int, seeds: tuple[int, int], top: float, batch: int, cache: Path) -> dict:
    import torch
    from scipy.stats import spearmanr

    k = max(1, round(top * model.layout.n_total))
    effects, per_set, rows = [], [], []
    for seed in seeds:
        got = one_set(model, task, n, seed, batch, cache)
        eff = torch.tensor(got["effects"], dtype=torch.float64)
        effects.append(eff)
        rows.append({tuple(r) for r in got["positives"]})
        top_heads = [model.layout.head(i).name for i in torch.argsort(eff, descending=True)[:k].tolist()]
        per_set.append({key: v for key, v in got.items() if key not in ("effects", "positives")}
                       | {"top_heads": top_heads})
    mean = (effects[0] + effects[1]) / 2
    order = torch.argsort(mean, descending=True).tolist()
    heads = [model.layout.head(i).name for i in order[:k]]
    a, b = set(per_set[0]["top_heads"]), set(per_set[1]["top_heads"])
    rho = float(spearmanr(effects[0].numpy(), effects[1].numpy()).statistic)
    # AUC of one set's effects against the other set's top-k: how well the reference reproduces itself
    from circuitscan.evaluation.ground_truth import evaluate_scores

    truth_b = torch.zeros(model.layout.n_total, dtype=torch.bool)
    truth_b[[model.layout.index(h) for h in per_set[1]["top_heads"]]] = True
    truth_a = torch.zeros(model.layout.n_total, dtype=torch.bool)
    truth_a[[model.layout.index(h) for h in per_set[0]["top_heads"]]] = True
    auc_ab = evaluate_scores(effects[0], truth_b).auc
    auc_ba = evaluate_scores(effects[1], truth_a).auc
    return {
        "heads": heads,
        "name": f"patching-ref/{task}",
        "model": model.family,
        "task": task,
        "how": (f"exact activation patching, one head at a time, corrupt ablation (each head's output from the "
                f"paired corrupted prompt), task metric, |mean change|; two disjoint prompt sets of {n} prompts "
                f"(seeds {seeds[0]}, {seeds[1]}); reference = top {top:.0%} of heads ({k}) by the mean effect"),
        "top_fraction": top,
        "k": k,
        "effects": [round(float(x), 6) for x in mean.tolist()],
        "sets": per_set,
        "shared_positive_prompts": len(rows[0] & rows[1]),
        "stability": {"top_k_overlap": len(a & b), "top_k_jaccard": len(a & b) / len(a | b),
                      "spearman": rho, "auc_set_a_vs_top_of_b": auc_ab, "auc_set_b_vs_top_of_a": auc_ba},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="ioi,greater-than,docstring")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=24, help="positive prompts per prompt set (two sets)")
    ap.add_argument("--seeds", default="1000,2000", help="seeds of the two prompt sets")
    ap.add_argument("--top", type=float, default=0.10, help="fraction of heads in the reference")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/references")
    ap.add_argument("--cache", default="runs/study/patching", help="per-set effects (reused)")
    ap.add_argument("--combine", default=None, metavar="LxH",
                    help="only combine cached sets (e.g. 30x9 for smollm2-135m) without loading the model")
    ap.add_argument("--only-seed", type=int, default=None, help="compute one prompt set's effects and stop "
                    "(to run the two sets as two processes)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import circuitscan as cs

    seeds = tuple(int(s) for s in args.seeds.split(","))
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise SystemExit("--seeds: two different seeds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.combine:  # both sets cached: no model needed, only its layout
        from types import SimpleNamespace

        from circuitscan.types import HeadLayout

        n_layers, n_heads = (int(v) for v in args.combine.split("x"))
        model = SimpleNamespace(layout=HeadLayout(n_layers, n_heads), family=args.model)
    else:
        model = cs.load_model(args.model)
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if args.only_seed is not None:
            one_set(model, task, args.examples, args.only_seed, args.batch, Path(args.cache))
            continue
        ref = reference_for(model, task, args.examples, seeds, args.top, args.batch, Path(args.cache))
        path = out / f"{args.model}-{task}-patching.json"
        path.write_text(json.dumps(ref, indent=1) + "\n")
        st = ref["stability"]
        print(f"{task}: wrote {path}; top-{ref['k']} overlap of the two sets {st['top_k_overlap']}/{ref['k']}, "
              f"Spearman {st['spearman']:.3f}, AUC A vs top(B) {st['auc_set_a_vs_top_of_b']:.3f}, "
              f"B vs top(A) {st['auc_set_b_vs_top_of_a']:.3f}", flush=True)


if __name__ == "__main__":
    main()
