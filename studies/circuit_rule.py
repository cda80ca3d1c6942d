"""Study (issue 13): which heads should the printed circuit hold? The null's set or the ranking's top?

For every cached result of the calibration study (studies/sae_codes_calibration.py, same
--cache) of the chosen variants it takes the FDR circuit (the heads significant at FDR 0.05
with effect >= min_effect, ``circuit="fdr"``) and the same number of heads from the top of the
variant's ranking (``circuit="fdr-top"``), and measures what each recovers (the task metric
with every other head corrupt-ablated, as the calibration study does) and how many heads the
two share. One JSON line per (testbed, seed) goes to OUT; ``--table OUT`` prints mean ± std.

    PYTHONPATH=src .venv/bin/python studies/circuit_rule.py --cache runs/study --testbeds toy,smollm2 \
        --variants sc-preset --out runs/study/circuit_rule.jsonl
    PYTHONPATH=src .venv/bin/python studies/circuit_rule.py --table docs/references/circuit_rule.jsonl

(The cached results must predate the default's switch to fdr-top, or come from a variant
with ``circuit="fdr"``, so that their ``heads`` are the null's set.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_codes_calibration as st  # noqa: E402


def measure(cache: Path, beds: list[str], variants: list[str], out: Path) -> None:
    from circuitscan.evaluation.performance import circuit_performance

    for p in sorted((cache / "results").glob("*/*.json")):
        r = json.loads(p.read_text())
        if r["testbed"] not in beds or r["method"] not in variants:
            continue
        k = r["size"]
        order = sorted(range(len(r["scores"])), key=lambda i: (-r["scores"][i], i))
        top = [r["head_names"][i] for i in order[:k]]
        ev = st.load_bed(r["testbed"], r["seed"], cache).evaluator()
        rec = circuit_performance(ev, {"top": top}, random_samples=0, complements=False).row("top")
        row = {"testbed": r["testbed"], "method": r["method"], "seed": r["seed"], "k": k,
               "overlap": len(set(top) & set(r["heads"])), "recovered_fdr": r["recovered"],
               "recovered_topk": rec.normalised[ev.metrics[0]]}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def table(path: Path) -> str:
    rows = defaultdict(list)
    for line in path.read_text().splitlines():
        r = json.loads(line)
        rows[(r["testbed"], r["method"])].append(r)

    def ms(v: list[float], d: int = 3) -> str:
        return f"{statistics.fmean(v):.{d}f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.{d}f}"

    lines = ["| testbed | variant | seeds | size | shared heads | recovered, fdr | recovered, fdr-top |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (tb, m), rs in sorted(rows.items(), key=lambda kv: list(st.TESTBEDS).index(kv[0][0])):
        lines.append(f"| {tb} | {m} | {len(rs)} | {ms([r['k'] for r in rs], 1)} | {ms([r['overlap'] for r in rs], 1)} "
                     f"| {ms([r['recovered_fdr'] for r in rs])} | {ms([r['recovered_topk'] for r in rs])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="runs/study")
    ap.add_argument("--testbeds", default="toy,smollm2")
    ap.add_argument("--variants", default="sc-preset")
    ap.add_argument("--out", default="runs/study/circuit_rule.jsonl")
    ap.add_argument("--table", default=None, metavar="JSONL", help="only print the table of a JSONL file")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    import torch

    torch.set_num_threads(1)
    beds = [b for t in args.testbeds.split(",") for b in st.GROUPS.get(t, [t])]
    measure(Path(args.cache), beds, args.variants.split(","), Path(args.out))
    print(table(Path(args.out)))


if __name__ == "__main__":
    main()
