"""Study (issue 14): SAE training schedules against sc-preset, from sae_codes_calibration.py's cache.

The fits themselves are sae_codes_calibration.py's variants ``sc-preset-e*-cos*`` and
``sc-preset-b*-cos`` (a cosine step size, fewer steps, minibatch steps) and the preset
before them, ``sc-preset-e500-const``; this script reads their cached per-seed results,
prints mean ± std per (testbed, variant) with the SAE seconds, marks whether each variant
qualifies as the default on each testbed (node AUC and recovered each at least the old
preset's mean minus its seed std), and writes the raw rows as JSON lines.

    PYTHONPATH=src .venv/bin/python studies/sae_codes_calibration.py --testbeds all \\
        --variants sc-preset-e500-const,sc-preset-e200-cos,... --baselines none --seeds 0-4 --cache CACHE
    PYTHONPATH=src .venv/bin/python studies/sae_schedule.py --cache CACHE \\
        --out docs/references/sae_schedule.jsonl
    # the ensemble (issues 13 and 14) against the preset before it:
    PYTHONPATH=src .venv/bin/python studies/sae_schedule.py --cache CACHE --against sc-preset-e200-cos \
        --only sc-preset-e200-cos,sc-preset-b256-e200-cos-ens3,sc-preset-b256-e200-cos-ens5 \
        --out docs/references/sae_ensemble.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sae_codes_calibration import TESTBEDS, VARIANTS, late_auc

BASE = "sc-preset-e500-const"  # the preset before issue 14 (sc-preset is now sc-preset-e200-cos)
SCHEDULES = [v for v in VARIANTS if v == BASE or (v.startswith("sc-preset-") and ("-cos" in v))]
KEEP = ("testbed", "method", "seed", "n", "auc", "recovered", "size", "heads", "l0", "dead", "sae_seconds",
        "seconds", "config_key")


def load(cache: Path, methods: list[str] = SCHEDULES) -> dict[tuple[str, str], list[dict]]:
    rows: dict[tuple[str, str], list[dict]] = {}
    for p in sorted((cache / "results").glob("*/*.json")):
        r = json.loads(p.read_text())
        if r["method"] in methods and r["testbed"] in TESTBEDS:
            if r.get("auc") is None:
                r["auc"] = late_auc(r["testbed"], r)
            rows.setdefault((r["testbed"], r["method"]), []).append(r)
    for rs in rows.values():
        rs.sort(key=lambda r: r["seed"])
    return rows


def _ms(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def verdict(rows, testbed: str, method: str, against: str = BASE) -> str:
    """'yes' when AUC and recovered are each >= the base's mean - its seed std (same seeds)."""
    base = {r["seed"]: r for r in rows.get((testbed, against), [])}
    mine = [r for r in rows[(testbed, method)] if r["seed"] in base]
    if method == against or not mine:
        return ""
    fails = []
    for key in ("auc", "recovered"):
        if any(base[r["seed"]].get(key) is None or r.get(key) is None for r in mine):
            continue  # e.g. no reference to score the AUC against yet
        m, s = _ms([base[r["seed"]][key] for r in mine])
        if _ms([r[key] for r in mine])[0] < m - s - 1e-9:
            fails.append(key)
    return "yes" if not fails else "no (" + ", ".join(fails) + ")"


def table(rows, against: str = BASE, order: list[str] = SCHEDULES) -> str:
    out = [f"| testbed | variant | seeds | node AUC | recovered | size | SAE s | vs {against} SAE s | qualifies |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (tb, m), rs in sorted(rows.items(), key=lambda kv: (list(TESTBEDS).index(kv[0][0]),
                                                            order.index(kv[0][1]))):
        def f(key: str, digits: int, rs=rs) -> str:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return "-"
            m_, s_ = _ms(vals)
            return f"{m_:.{digits}f} ± {s_:.{digits}f}"

        base = rows.get((tb, against))
        ratio = "-"
        if base and all("sae_seconds" in r for r in rs + base):
            ratio = f"{statistics.fmean(r['sae_seconds'] for r in rs) / statistics.fmean(r['sae_seconds'] for r in base):.2f}"
        out.append(f"| {tb} | {m} | {len(rs)} | {f('auc', 3)} | {f('recovered', 3)} | {f('size', 1)} | "
                   f"{f('sae_seconds', 2)} | {ratio} | {verdict(rows, tb, m, against)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="runs/study")
    ap.add_argument("--out", default=None, help="write the raw per-seed rows here (JSON lines)")
    ap.add_argument("--against", default=BASE, help=f"the variant the others must match (default {BASE})")
    ap.add_argument("--only", default=None, help="comma-separated variants to show (default: the schedules)")
    args = ap.parse_args()
    order = args.only.split(",") if args.only else list(SCHEDULES)
    unknown = [v for v in order + [args.against] if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.against not in order:
        order.insert(0, args.against)
    rows = load(Path(args.cache), order)
    print(table(rows, args.against, order))
    every = {m for (_, m) in rows}
    beds = {tb for (tb, _) in rows}
    for m in sorted(every - {args.against}, key=order.index):
        v = [verdict(rows, tb, m, args.against) for tb in beds if (tb, m) in rows]
        missing = sorted(tb for tb in beds if (tb, m) not in rows)
        print(f"{m}: qualifies on {sum(x == 'yes' for x in v)} of {len(v)} testbeds run"
              + (f"; not run on {', '.join(missing)}" if missing else ""))
    if args.out:
        with open(args.out, "w") as fh:
            for key in sorted(rows, key=lambda k: (list(TESTBEDS).index(k[0]), order.index(k[1]))):
                for r in rows[key]:
                    fh.write(json.dumps({k: r.get(k) for k in KEEP}) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
