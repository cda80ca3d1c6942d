"""Study (issue 14): does stopping the SAE once its codes settle change what sae-codes finds?

For each (testbed, seed) of studies/sae_codes_calibration.py (plus smollm2-ioi-250 of
studies/circuit_size.py) the default (``--compat circuitscan``, variant ``sc-preset``) is
fitted on the cached activations with the paper's fixed schedule (``stop="epochs"``,
``epochs`` steps) and with each stopping rule of SETTINGS (``stop="codes"``: look at the
argmax codes of the training rows every ``check_every`` epochs, stop once at most a
fraction ``stop_tol`` changed, ``stop_patience`` looks in a row; ``epochs`` stays the most).
Per fit it records the epochs run, the SAE training seconds, the node ROC AUC against the
testbed's ground truth, the default circuit (the preset's FDR rule), whether that circuit
equals the fixed schedule's, their Jaccard index, and the Spearman correlation of the
node scores with the fixed schedule's. One JSON line per fit is appended to OUT; the table
prints mean ± std over seeds (docs/CALIBRATION.md "Stopping rule (issue 14)").

    PYTHONPATH=src .venv/bin/python studies/early_stop.py toy 0-4 docs/references/early_stop.jsonl
    PYTHONPATH=src .venv/bin/python studies/early_stop.py smollm2-ioi 0-4 docs/references/early_stop.jsonl
    PYTHONPATH=src .venv/bin/python studies/early_stop.py --table docs/references/early_stop.jsonl

``--trace TESTBEDS SEEDS OUT [LR]`` instead fits the preset once for the full ``epochs``
and records how many of the training rows' argmax codes change over 5/10/25/50 epochs and
how many differ from the last epoch's (lines with ``"kind": "trace"`` in the same file;
the table skips them). ``--cache DIR`` (default runs/study) is where the calibration study
keeps its activations.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import circuit_size  # noqa: E402,F401  (registers the smollm2-ioi-250 testbed)
import sae_codes_calibration as st  # noqa: E402

# name -> SAEConfig overrides on top of the preset ("full" is the reference every other is compared to)
SETTINGS: dict[str, dict] = {
    "full": {"stop": "epochs"},
    "codes-25-1%-p2": {"stop": "codes", "check_every": 25, "stop_tol": 0.01, "stop_patience": 2},  # SAEConfig's
    "codes-25-2%-p1": {"stop": "codes", "check_every": 25, "stop_tol": 0.02, "stop_patience": 1},
    "codes-25-5%-p2": {"stop": "codes", "check_every": 25, "stop_tol": 0.05, "stop_patience": 2},
    "codes-25-10%-p2": {"stop": "codes", "check_every": 25, "stop_tol": 0.10, "stop_patience": 2},
    # the noise floor: the full schedule from another SAE seed (initialisation and training examples)
    "full-other-init": {"stop": "epochs", "_seed_offset": 1000},
}


def spearman(a, b) -> float:
    import torch

    from circuitscan.methods.sae_codes import rank_agreement

    return float(rank_agreement(torch.stack([torch.as_tensor(a), torch.as_tensor(b)])))


def fit_all(name: str, seed: int, cache: Path, settings: list[str]) -> list[dict]:
    from circuitscan.evaluation.ground_truth import evaluate_against
    from circuitscan.methods import discover_from_activations

    bed = st.load_bed(name, seed, cache)
    base = st.variant_config("sc-preset", seed)
    acts = bed.activations(base.aggregation)
    rows = []
    for label in settings:
        over = {k: v for k, v in SETTINGS[label].items() if not k.startswith("_")}
        sae_seed = seed + SETTINGS[label].get("_seed_offset", 0)
        cfg = replace(base, sae=replace(base.sae, **over, seed=sae_seed))
        t = time.perf_counter()
        d = discover_from_activations(acts, cfg, paired=bed.prompts.paired)
        wall = time.perf_counter() - t
        heads, _ = st.default_circuit(d.node, cfg)
        rows.append({"testbed": name, "seed": seed, "setting": label, **SETTINGS[label],
                     "epochs_max": cfg.sae.epochs, "epochs_run": d.train.epochs_run,
                     "sae_seconds": d.timings["sae_train"], "discover_seconds": wall,
                     "auc": evaluate_against(d.node, bed.gt).auc if bed.gt is not None else None,
                     "heads": sorted(heads), "scores": [round(float(v), 8) for v in d.node.flat.tolist()]})
    ref = rows[0]
    for r in rows:
        a, b = set(r["heads"]), set(ref["heads"])
        r["same_circuit"] = a == b
        r["jaccard"] = len(a & b) / len(a | b) if a | b else 1.0
        r["spearman_vs_full"] = spearman(r["scores"], ref["scores"])
    return rows


STRIDES = (5, 10, 25, 50)


def trace(name: str, seed: int, cache: Path, every: int = 5, lr: float | None = None) -> dict:
    """One full-length fit of the preset, the training rows' argmax codes looked at every ``every`` epochs.

    Per look: the fraction of rows whose code changed since the previous look, and the
    fraction that differs from the codes of the last epoch (what a rule stopping there gives up).
    """
    import circuitscan.sae.ensemble as ens
    from circuitscan.methods import discover_from_activations

    bed = st.load_bed(name, seed, cache)
    base = st.variant_config("sc-preset", seed)
    cfg = replace(base, sae=replace(base.sae, stop="codes", check_every=every, stop_tol=0.0, stop_patience=10**9,
                                    lr=lr or base.sae.lr))
    seen: list = []
    orig = ens._argmax_codes
    ens._argmax_codes = lambda z, n: seen.append(orig(z, n)) or seen[-1]
    try:
        discover_from_activations(bed.activations(cfg.aggregation), cfg, paired=bed.prompts.paired)
    finally:
        ens._argmax_codes = orig
    final = seen[-1]
    epochs = [every * (i + 1) for i in range(len(seen))]
    changed = {}  # stride -> at each look that is a multiple of it, the fraction changed since stride epochs earlier
    for stride in STRIDES:
        k = stride // every
        changed[stride] = {epochs[i]: float((seen[i] != seen[i - k]).float().mean()) if i >= k else 1.0
                           for i in range(k - 1, len(seen), k)}
    return {"kind": "trace", "testbed": name, "seed": seed, "every": every, "lr": cfg.sae.lr, "rows": int(final.numel()),
            "changed": changed, "vs_final": {e: float((c != final).float().mean()) for e, c in zip(epochs, seen,
                                                                                              strict=True)}}


def ms(xs: list[float], digits: int = 3) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.{digits}f} ± {sd:.{digits}f}"


def load(path: Path) -> dict[tuple[str, str], list[dict]]:
    """The last line per (testbed, seed, setting), grouped by (testbed, setting)."""
    last: dict[tuple[str, int, str], dict] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "trace":
            continue
        last[(r["testbed"], r["seed"], r["setting"])] = r
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for (tb, _, s), r in sorted(last.items()):
        groups[(tb, s)].append(r)
    return groups


def table(path: Path) -> str:
    groups = load(path)
    order = [t for t in st.TESTBEDS if any(k[0] == t for k in groups)]
    out = ["| testbed | setting | seeds | epochs run | SAE s | SAE s / full | node AUC | Δ AUC vs full | "
           "circuit size | same circuit | Jaccard | Spearman vs full |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tb in order:
        full = {r["seed"]: r for r in groups.get((tb, "full"), [])}
        for s in SETTINGS:
            rs = groups.get((tb, s))
            if not rs:
                continue
            base = [full[r["seed"]] for r in rs if r["seed"] in full]
            ratio = [r["sae_seconds"] / f["sae_seconds"] for r, f in zip(rs, base, strict=True)] if base else []
            delta = [r["auc"] - f["auc"] for r, f in zip(rs, base, strict=True)
                     if r["auc"] is not None and f["auc"] is not None]
            same = sum(r["same_circuit"] for r in rs)
            out.append(f"| {tb} | {s} | {len(rs)} | {ms([r['epochs_run'] for r in rs], 0)} | "
                       f"{ms([r['sae_seconds'] for r in rs], 2)} | {ms(ratio, 2)} | {ms([r['auc'] for r in rs])} | "
                       f"{ms(delta)} | {ms([len(r['heads']) for r in rs], 1)} | {same}/{len(rs)} | "
                       f"{ms([r['jaccard'] for r in rs], 2)} | {ms([r['spearman_vs_full'] for r in rs], 3)} |")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    cache = Path("runs/study")
    if "--cache" in argv:
        i = argv.index("--cache")
        cache = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    if argv[:1] == ["--table"]:
        print(table(Path(argv[1])))
        return
    if argv[:1] == ["--trace"]:
        argv = argv[1:]
        for name in [b for part in argv[0].split(",") for b in st.GROUPS.get(part, [part])]:
            for seed in st.parse_seeds(argv[1]):
                r = trace(name, seed, cache, lr=float(argv[3]) if len(argv) > 3 else None)
                with Path(argv[2]).open("a") as f:
                    f.write(json.dumps(r) + "\n")
                marks = {e: (round(c, 4), round(r["vs_final"][e], 4)) for e, c in r["changed"][25].items()}
                print(name, seed, f"lr {r['lr']:g}", r["rows"], "epoch: (changed in 25 epochs, differs from final)", marks, flush=True)
        return
    beds = [b for part in argv[0].split(",") for b in st.GROUPS.get(part, [part])]
    seeds, out = st.parse_seeds(argv[1]), Path(argv[2])
    settings = argv[3].split(",") if len(argv) > 3 else list(SETTINGS)
    if settings[0] != "full":
        settings = ["full", *[s for s in settings if s != "full"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in beds:
        for seed in seeds:
            for r in fit_all(name, seed, cache, settings):
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed} {r['setting']}: epochs {r['epochs_run']} "
                      f"SAE {r['sae_seconds']:.2f}s AUC {r['auc'] if r['auc'] is not None else float('nan'):.3f} "
                      f"size {len(r['heads'])} same {r['same_circuit']} J {r['jaccard']:.2f} "
                      f"rho {r['spearman_vs_full']:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
