"""Study (issue 13): the FDR circuit's size and what it recovers, against an effect-size floor.

For each (testbed, seed) of studies/sae_codes_calibration.py it fits the default
(``--compat circuitscan``, mean-aggregated codes) and the same with last-position codes once,
then forms the circuit "significant at FDR 0.05 and effect >= delta" for every delta in
DELTAS (effect = the head's TV minus its label-swap null mean), plus the union of the two
aggregations' circuits, and measures each circuit's size and ``recovered`` (the task metric
with every other head corrupt-ablated, as in the calibration study). One JSON line per
(testbed, seed) is appended to OUT; docs/CALIBRATION.md "Round 3" is its summary.

    PYTHONPATH=src .venv/bin/python studies/circuit_size.py toy 0-4 runs/study/circuit_size.jsonl
    PYTHONPATH=src .venv/bin/python studies/circuit_size.py smollm2-ioi,smollm2-ioi-250 0-2 runs/study/circuit_size.jsonl
    PYTHONPATH=src .venv/bin/python studies/circuit_size.py --table runs/study/circuit_size.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_codes_calibration as st  # noqa: E402

DELTAS = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
AGGREGATIONS = {"mean": "sc-preset", "last": "sc-center-tv-last-fdr"}


def circuits_of(bed) -> dict[str, list[str]]:
    from circuitscan.methods import discover_from_activations

    sets: dict[str, list[str]] = {}
    for agg, variant in AGGREGATIONS.items():
        cfg = st.variant_config(variant, bed.seed)
        d = discover_from_activations(bed.activations(cfg.aggregation), cfg, paired=bed.prompts.paired)
        stats = d.node.stats
        effect = (stats["code_distance"] - stats["null_mean"]).reshape(-1).tolist()
        # significance alone (the preset's own floor is in stats["significant"]): from the q-values
        sig = (stats["q_value"].reshape(-1) <= cfg.scoring.fdr).tolist()
        names = d.node.layout.names()
        for delta in DELTAS:
            sets[f"{agg}@{delta}"] = [n for n, s, e in zip(names, sig, effect, strict=True) if s and e >= delta]
    for delta in DELTAS:
        sets[f"union@{delta}"] = sorted(set(sets[f"mean@{delta}"]) | set(sets[f"last@{delta}"]))
    return sets


def measure(name: str, seed: int, cache: Path) -> dict:
    from circuitscan.evaluation.performance import circuit_performance

    bed = st.load_bed(name, seed, cache)
    t = time.perf_counter()
    sets = circuits_of(bed)
    ev = bed.evaluator()
    metric = ev.metrics[0]
    distinct = {tuple(sorted(h)) for h in sets.values()}
    index = {h: f"c{i}" for i, h in enumerate(sorted(distinct))}
    perf = circuit_performance(ev, {index[h]: list(h) for h in distinct}, random_samples=0, complements=False)
    rec = {k: {"size": len(h), "recovered": perf.row(index[tuple(sorted(h))]).normalised[metric]}
           for k, h in sets.items()}
    return {"testbed": name, "seed": seed, "n_heads": bed.model.layout.n_total, "circuits": rec,
            "seconds": time.perf_counter() - t}


def table(path: Path) -> str:
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for line in path.read_text().splitlines():
        r = json.loads(line)
        for k, v in r["circuits"].items():
            groups[r["testbed"]][k].append((v["size"], v["recovered"]))

    def ms(xs, digits=3):
        return f"{statistics.mean(xs):.{digits}f} ± {statistics.pstdev(xs):.{digits}f}"

    out = ["| testbed | circuit | seeds | size | recovered |", "|---|---|---:|---:|---:|"]
    for tb, d in groups.items():
        for k, v in d.items():
            out.append(f"| {tb} | {k} | {len(v)} | {ms([a for a, _ in v], 1)} | {ms([b for _, b in v])} |")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    if argv[:1] == ["--table"]:
        print(table(Path(argv[1])))
        return
    beds = [b for part in argv[0].split(",") for b in st.GROUPS.get(part, [part])]
    seeds, out = st.parse_seeds(argv[1]), Path(argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in beds:
        for seed in seeds:
            row = measure(name, seed, out.parent)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(name, seed, {k: (v["size"], round(v["recovered"], 3)) for k, v in row["circuits"].items()
                               if k.startswith("mean@")}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
