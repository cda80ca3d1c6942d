"""Study (issue 13): sae-codes variants and the baselines on every known-answer testbed, over seeds.

For each (testbed, seed): the task's prompts are built with that seed, the per-head
activations are cached, every sae-codes VARIANT is fitted with SAE seed = that seed, and
every baseline is scored on the same prompts. Each result is scored against the
testbed's ground truth (node ROC AUC over heads), its default circuit (sae-codes: its
own rule; baselines, which have none: the top 10 % of heads) is measured by the
fraction of the clean-vs-ablated metric it keeps with every other head corrupt-ablated
(``recovered``, :func:`circuitscan.evaluation.performance.circuit_performance`), and,
with ``--faithfulness``, CPR/CMD over the MIB sizes. The table prints mean ± std over
seeds per (testbed, method).

Everything expensive is cached under ``--cache`` (default ``runs/study/``): activations
per (testbed, seed, aggregation), one JSON per (testbed, method/variant, seed) result.
A result is reused when its variant definition is unchanged, so the study can run in
pieces (``--testbeds``, ``--variants``, ``--seeds``) and ``--table`` prints everything
cached so far.

    PYTHONPATH=src .venv/bin/python studies/sae_codes_calibration.py --testbeds toy --seeds 0-4
    PYTHONPATH=src .venv/bin/python studies/sae_codes_calibration.py --testbeds smollm2-ioi --seeds 0-4
    PYTHONPATH=src .venv/bin/python studies/sae_codes_calibration.py --table

Testbeds, prompt counts and variants are the tables TESTBEDS and VARIANTS below
(docs/CALIBRATION.md records the measured table). One torch thread per process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REFS = HERE.parent / "docs" / "references"


@dataclass(frozen=True)
class Testbed:
    model: str
    task: str
    n: int  # positive prompts (and as many negatives) sae-codes and norm-diff see
    gt: str | None  # --ground-truth spec (None: the task's default)
    n_examples: int | None = None  # prompts the intervention/gradient baselines use (None: all)
    baselines: tuple[str, ...] = ("eap", "eap-ig", "norm-diff", "patching")
    faith_examples: int | None = None


SMOL_BASE = ("eap", "eap-ig", "norm-diff")
TESTBEDS: dict[str, Testbed] = {
    "planted": Testbed("toy-planted", "planted", 100, None),
    "toy-induction": Testbed("toy-induction", "induction", 100, None),
    **{f"tracr-{p}": Testbed(f"tracr-{p}", "tracr", 100, None, n_examples=50)
       for p in ("reverse", "frac_prev", "sort", "sort_freq")},
    "smollm2-induction": Testbed("smollm2-135m", "induction", 50, "induction-scores", 16, SMOL_BASE, 16),
    **{f"smollm2-{t}": Testbed("smollm2-135m", t, 50, str(REFS / f"smollm2-135m-{t}-patching.json"), 16,
                               SMOL_BASE, 16)
       for t in ("ioi", "greater-than", "docstring")},
    # the demo's prompt count (make demo), for how the circuit and the AUC grow with -n
    "smollm2-ioi-250": Testbed("smollm2-135m", "ioi", 250, str(REFS / "smollm2-135m-ioi-patching.json"), 16,
                               SMOL_BASE, 16),
}
GROUPS = {"toy": [k for k in TESTBEDS if not k.startswith("smollm2")],
          "smollm2": [k for k in TESTBEDS if k.startswith("smollm2") and not k.endswith("-250")],
          "all": list(TESTBEDS)}

# sae-codes variants: overrides of SAECodesConfig's parts. A variant whose fields this
# tree's config does not have yet is skipped (the issue-13 mechanisms land in pieces).
_S = {"input_scale": "d_model"}
_ENS = {**_S, "n_seeds": 5}
_C = {**_S, "head_norm": "center"}
_TV = {"statistic": "tv"}
_Z = {"permutations": 200, "node_score": "z", "circuit": "fdr"}
_ONE = {"n_seeds": 1, "batch_rows": None}  # one full-batch SAE
_B256 = {"batch_rows": 256, "epochs": 200, "lr_schedule": "cosine"}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "sc-paper": {},  # today's default (the paper's SAE and scoring, mean aggregation)
    "sc-pairs": {"_edge": {}},  # today's head score from head pairs (sae-codes-pairs)
    "sc-scaled": {"sae": _S},  # l1 0.02 on rows scaled to mean ||x||^2 = d_model
    "sc-l0-4": {"sae": {**_S, "target_l0": 4.0}},
    "sc-l0-8": {"sae": {**_S, "target_l0": 8.0}},
    "sc-l0-16": {"sae": {**_S, "target_l0": 16.0}},
    "sc-ens5": {"sae": _ENS, "scoring": {"combine": "mean"}},  # 5 SAEs, counts combined
    "sc-ens5-z": {"sae": _ENS, "scoring": {"combine": "mean", **_Z}},  # + label-swap null, z score, FDR circuit
    "sc-last": {"sae": _S, "top": {"aggregation": "last"}},
    "sc-ens5-last-z": {"sae": _ENS, "scoring": {"combine": "mean", **_Z}, "top": {"aggregation": "last"}},
    "sc-center": {"sae": _C},  # + each head's mean output subtracted before the SAE
    "sc-center-tv": {"sae": _C, "scoring": _TV},  # + total-variation distance instead of the count
    "sc-center-tv-fdr": {"sae": _C, "scoring": {**_TV, "permutations": 1000, "circuit": "fdr"}},
    "sc-center-tv-ens5-fdr": {"sae": {**_C, "n_seeds": 5}, "scoring": {**_TV, "permutations": 1000, "circuit": "fdr"}},
    "sc-center-tv-last-fdr": {"sae": _C, "scoring": {**_TV, "permutations": 1000, "circuit": "fdr"},
                              "top": {"aggregation": "last"}},
    "sc-center-tv-all-fdr": {"sae": _C, "scoring": {**_TV, "permutations": 1000, "circuit": "fdr"},
                             "top": {"aggregation": "all"}},
    "sc-center-tvz-fdr": {"sae": _C, "scoring": {**_TV, "permutations": 1000, "circuit": "fdr", "node_score": "z"}},
    "sc-center-tvz-last-fdr": {"sae": _C, "scoring": {**_TV, "permutations": 1000, "circuit": "fdr", "node_score": "z"},
                               "top": {"aggregation": "last"}},
    "sc-preset": {"_compat": {}},  # --compat circuitscan (config.CIRCUITSCAN_COMPAT as the tree has it)
    "sc-preset-last": {"_compat": {}, "top": {"aggregation": "last"}},
    "sc-preset-ml": {"_compat": {}, "top": {"aggregation": "mean+last"}},  # two codes per head, one test
    **{f"sc-preset-l0-{k}": {"_compat": {}, "sae": {"target_l0": float(k)}} for k in (16, 32, 64)},
    # issue 14: a decaying step size and/or minibatch steps (fewer full-batch matmuls), one SAE
    # (``_ONE`` pins what the preset has set since: 5 SAEs of 256-row steps). sc-preset-e200-cos
    # is the preset before the ensemble, sc-preset-e500-const the one before the schedule.
    "sc-preset-e500-const": {"_compat": {}, "sae": {**_ONE, "epochs": 500, "lr_schedule": "constant"}},
    **{f"sc-preset-e{e}-cos": {"_compat": {}, "sae": {**_ONE, "epochs": e, "lr_schedule": "cosine"}} for e in (100, 200)},
    "sc-preset-e150-cos-lr2x": {"_compat": {}, "sae": {**_ONE, "epochs": 150, "lr_schedule": "cosine", "lr": 2e-3}},
    **{f"sc-preset-b{b}-cos": {"_compat": {}, "sae": {"n_seeds": 1, "batch_rows": b, "epochs": 500,
                                                      "lr_schedule": "cosine"}}
       for b in (256, 512)},
    **{f"sc-preset-b{b}-e{e}-cos": {"_compat": {}, "sae": {"n_seeds": 1, "batch_rows": b, "epochs": e,
                                                           "lr_schedule": "cosine"}}
       for b, e in ((512, 250), (256, 250), (128, 500), (512, 200), (256, 200), (256, 300))},
    # issues 13 and 14: an ensemble of minibatch SAEs (the preset since: ens5), and what was tried on it
    **{f"sc-preset-b256-e200-cos-ens{k}": {"_compat": {}, "sae": {**_B256, "n_seeds": k}} for k in (3, 5)},
    # cheaper ensembles (issue 14: sae-codes <= EAP at 12 + 12 prompts): half the rows or half the steps
    "sc-preset-b128-e200-cos-ens5": {"_compat": {}, "sae": {**_B256, "batch_rows": 128, "n_seeds": 5}},
    "sc-preset-b256-e100-cos-ens5": {"_compat": {}, "sae": {**_B256, "epochs": 100, "n_seeds": 5}},
    # issue 14: the preset's SAE matmuls in bfloat16 (float32 accumulation, float32 Adam state)
    "sc-preset-bf16": {"_compat": {}, "sae": {"precision": "bf16"}},
    # issue 13: the node score = mean rank by the TV statistic and by the paired feature change
    "sc-preset-rank-change": {"_compat": {}, "sae": {"precision": "bf16"}, "scoring": {"node_score": "rank-change"}},
    # issue 13: the paired feature change in the SAE's units (one scale for all heads), not per head
    "sc-preset-change-rel": {"_compat": {}, "scoring": {"node_score": "rank-change", "feature_change": "relative"}},
    "sc-preset-change-abs": {"_compat": {}, "scoring": {"node_score": "rank-change", "feature_change": "absolute"}},
    "sc-preset-b256-e200-cos-ens5-me10": {"_compat": {}, "sae": {**_B256, "n_seeds": 5}, "scoring": {"min_effect": 0.1}},
    "sc-preset-b256-e200-cos-ens5-fdr01": {"_compat": {}, "sae": {**_B256, "n_seeds": 5}, "scoring": {"fdr": 0.01}},
    # issue 13 item 4: the edge level's rule, on the preset with the ensemble default (5 SAEs, 256-row steps)
    **{f"sc-preset-pairs-{r}": {"_compat": {}, "_edge": {}, "sae": {"n_seeds": 5, "batch_rows": 256},
                                "scoring": {"edge_rule": r}} for r in ("top-k", "fdr", "tv", "top-k-tv")},
    "sc-preset-pairs-node": {"_compat": {}, "sae": {"n_seeds": 5, "batch_rows": 256}},  # their node level
}


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    return out


def variant_config(name: str, seed: int):
    """The SAECodesConfig of a variant at a seed, or None when this tree lacks a field it sets."""
    from circuitscan.config import SAEConfig, ScoringConfig
    from circuitscan.methods import SAECodesConfig

    spec = dict(VARIANTS[name])
    if "_compat" in spec:
        from circuitscan import config

        if not hasattr(config, "CIRCUITSCAN_COMPAT"):
            return None
        spec.update({k: {**v, **spec.get(k, {})} for k, v in config.CIRCUITSCAN_COMPAT.items()})  # variant wins
    parts = {"sae": SAEConfig, "scoring": ScoringConfig, "top": SAECodesConfig}
    for part, cls in parts.items():
        have = {f.name for f in fields(cls)}
        if set(spec.get(part, {})) - have:
            return None
    sae = SAEConfig(**{**spec.get("sae", {}), "seed": seed})
    scoring = ScoringConfig(**spec.get("scoring", {}))
    level = "both" if "_edge" in spec else "node"
    return SAECodesConfig(sae=sae, scoring=scoring, level=level, **spec.get("top", {}))


def key_of(obj: Any) -> str:
    return hashlib.sha1(repr(obj).encode()).hexdigest()[:10]


@dataclass
class Bed:
    """One loaded testbed at one seed: model, prompts, ground truth, lazily an evaluator."""

    name: str
    tb: Testbed
    seed: int
    cache: Path
    model: Any
    prompts: Any
    gt: Any
    _ev: Any = None
    _acts: dict[str, Any] = field(default_factory=dict)

    def evaluator(self):
        if self._ev is None:
            from circuitscan.evaluation.intervention import CircuitEvaluator
            from circuitscan.evaluation.metrics import default_metric

            n = self.tb.faith_examples or self.tb.n_examples
            self._ev = CircuitEvaluator.build(self.model, self.prompts, ablation="corrupt",
                                              metrics=[default_metric(self.prompts)], n_examples=n, batch_size=32)
        return self._ev

    def activations(self, aggregation: str):
        import torch

        from circuitscan.activations import head_outputs

        if aggregation not in self._acts:
            path = self.cache / "acts" / self.name / f"seed{self.seed}-n{self.tb.n}-{aggregation}.pt"
            if path.exists():
                self._acts[aggregation] = torch.load(path, weights_only=False)
            elif aggregation == "mean+last":  # the two cached aggregations side by side (what the hook computes)
                from circuitscan.types import HeadActivations

                m, last = self.activations("mean"), self.activations("last")
                self._acts[aggregation] = HeadActivations(x=torch.stack([m.x, last.x], 1), labels=m.labels,
                                                          layout=m.layout, aggregation=aggregation)
            else:
                acts = head_outputs(self.model, self.prompts, aggregation=aggregation, batch_size=64)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(acts, path)
                self._acts[aggregation] = acts
        return self._acts[aggregation]


_MODELS: dict[str, Any] = {}


def load_bed(name: str, seed: int, cache: Path) -> Bed:
    import circuitscan as cs
    from circuitscan import circuits

    tb = TESTBEDS[name]
    if tb.model not in _MODELS:
        _MODELS[tb.model] = cs.load_model(tb.model)
    model = _MODELS[tb.model]
    prompts = cs.build_task(tb.task, model, tb.n, seed=seed)
    gt_key = ("gt", name)
    if gt_key not in _MODELS:  # a reference file not computed yet: AUCs are filled in at table time
        missing = tb.gt is not None and tb.gt.endswith(".json") and not Path(tb.gt).exists()
        _MODELS[gt_key] = None if missing else circuits.for_model(tb.gt, model, task=tb.task)
    return Bed(name, tb, seed, cache, model, prompts, _MODELS[gt_key])


def default_circuit(s, cfg) -> tuple[list[str], str]:
    """The circuit a user would be shown: sae-codes' own rule; top 10 % for baselines."""
    from circuitscan.run import predicted_circuit

    if cfg is None:  # a baseline: no rule of its own
        k = max(1, round(0.1 * s.layout.n_total))
        return [h.name for h in s.ranking()[:k]], "top 10%"
    c = predicted_circuit(s, cfg.scoring.threshold, None, cfg.scoring)
    return c["heads"], c["rule"]


def measure(bed: Bed, s, cfg, seconds: float, faith: bool, extra: dict[str, Any]) -> dict[str, Any]:
    from circuitscan.evaluation.faithfulness import faithfulness_curves
    from circuitscan.evaluation.ground_truth import evaluate_against
    from circuitscan.evaluation.performance import circuit_performance

    row: dict[str, Any] = {"seconds": seconds, **extra, "scores": [round(float(v), 8) for v in s.flat.tolist()],
                           "head_names": s.layout.names()}
    if bed.gt is not None:
        row["auc"] = evaluate_against(s, bed.gt).auc
    else:
        row["auc"] = None
    heads, rule = default_circuit(s, cfg)
    row["size"], row["rule"], row["heads"] = len(heads), rule, heads
    ev = bed.evaluator()
    top = default_circuit(s, None)[0]  # the baselines' rule, to tell the ranking from the circuit rule
    perf = circuit_performance(ev, {"c": heads, "top": top}, random_samples=0, complements=False)
    metric = ev.metrics[0]
    row["recovered"] = perf.row("c").normalised[metric]
    row["recovered_top10"] = perf.row("top").normalised[metric]
    if ev.corrupted_input is not None:  # the same, normalised by the corrupted INPUT instead of all heads ablated
        ci = perf.row("corrupted input").metrics[metric]
        clean, got = perf.row("clean model").metrics[metric], perf.row("c").metrics[metric]
        row["recovered_vs_input"] = (got - ci) / (clean - ci) if clean != ci else math.nan
    if faith:
        c = faithfulness_curves(ev, [s], sizes=[0], random_samples=0)[s.method]
        row["cpr"], row["cmd"] = c.cpr, c.cmd
    return row


def run_variant(bed: Bed, name: str, faith: bool) -> list[tuple[str, dict[str, Any]]]:
    from circuitscan.methods import discover_from_activations

    cfg = variant_config(name, bed.seed)
    if cfg is None:
        print(f"  {name}: not available in this tree (config fields missing), skipped", flush=True)
        return []
    acts = bed.activations(cfg.aggregation)
    t = time.perf_counter()
    d = discover_from_activations(acts, cfg, paired=bed.prompts.paired)
    secs = time.perf_counter() - t
    tr = d.train
    extra = {"l0": float(getattr(tr, "final_l0", math.nan)), "l1": float(getattr(tr, "l1", cfg.sae.l1)),
             "dead": getattr(tr, "dead_features", None), "config_key": key_of(cfg),
             "sae_seconds": float(d.timings.get("sae_train", getattr(tr, "seconds", math.nan)))}
    ra = d.node.stats.get("rank_agreement")
    if ra is not None:
        extra["rank_agreement"] = float(ra)
    s = d.edge if "_edge" in VARIANTS[name] else d.node
    import torch

    from circuitscan.methods.sae_codes_edge import tie_fraction

    extra["head_ties"] = tie_fraction(s.flat)  # at full precision ("scores" are rounded)
    extra["head_largest_tie"] = int(torch.unique(s.flat, return_counts=True)[1].max())
    if "pair_ties" in s.stats:
        extra["pair_ties"] = float(s.stats["pair_ties"])
    return [(name, measure(bed, s, cfg, secs, faith, extra))]


def run_baseline(bed: Bed, method: str, faith: bool) -> list[tuple[str, dict[str, Any]]]:
    from circuitscan.comparison import CompareSettings, method_configs
    from circuitscan.methods import get

    settings = CompareSettings(n_examples=bed.tb.n_examples, batch_size=32)
    cfg = method_configs(settings, [method])[method]
    t = time.perf_counter()
    s = get(method).score(bed.model, bed.prompts, cfg)
    return [(method, measure(bed, s, None, time.perf_counter() - t, faith, {"config_key": key_of(cfg)}))]


def result_path(cache: Path, testbed: str, method: str, seed: int) -> Path:
    return cache / "results" / testbed / f"{method}-seed{seed}.json"


def run(testbeds: list[str], methods: list[str], seeds: list[int], cache: Path, faith: bool, force: bool) -> None:
    from circuitscan.errors import CircuitscanError

    for name in testbeds:
        tb = TESTBEDS[name]
        for seed in seeds:
            bed = None
            for m in methods:
                if m not in VARIANTS and m not in tb.baselines:
                    continue
                path = result_path(cache, name, m, seed)
                vcfg = variant_config(m, seed) if m in VARIANTS else None
                if m in VARIANTS and vcfg is None:
                    continue  # this tree's config lacks a field the variant sets
                want = key_of(vcfg) if vcfg is not None else None
                if path.exists() and not force:
                    old = json.loads(path.read_text())
                    if want is None or old.get("config_key") == want:
                        continue
                bed = bed or load_bed(name, seed, cache)
                t = time.perf_counter()
                try:
                    got = run_variant(bed, m, faith) if m in VARIANTS else run_baseline(bed, m, faith)
                except CircuitscanError as exc:  # a setting this testbed refuses (e.g. an unreachable target L0)
                    print(f"  [{time.strftime('%H:%M:%S')}] {name} seed {seed} {m}: REFUSED: {exc}", flush=True)
                    continue
                for label, row in got:
                    row.update(testbed=name, method=label, seed=seed, n=tb.n, n_examples=tb.n_examples)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(row) + "\n")
                    print(f"  [{time.strftime('%H:%M:%S')}] {name} seed {seed} {label}: AUC {row['auc'] if row['auc'] is not None else math.nan:.3f}"
                          f" size {row['size']} recovered {row['recovered']:.3f} L0 {row.get('l0', math.nan):.1f}"
                          f" ({time.perf_counter() - t:.1f}s)", flush=True)


def ms(vals: list[float], digits: int = 3) -> str:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    m = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def late_auc(testbed: str, row: dict[str, Any]) -> float | None:
    """AUC against a reference FILE computed after the row was (the row keeps its scores)."""
    import torch

    from circuitscan.evaluation.ground_truth import evaluate_scores

    gt = TESTBEDS[testbed].gt
    if not gt or not gt.endswith(".json") or not Path(gt).exists() or "scores" not in row:
        return None
    heads = set(json.loads(Path(gt).read_text())["heads"])
    truth = torch.tensor([h in heads for h in row["head_names"]])
    return evaluate_scores(torch.tensor(row["scores"]), truth).auc


def fill_top10(cache: Path, testbeds: list[str]) -> None:
    """Add ``recovered_top10`` (the top 10 % of heads by score) to cached rows written before it existed."""
    from circuitscan.evaluation.performance import circuit_performance

    for p in sorted((cache / "results").glob("*/*.json")):
        r = json.loads(p.read_text())
        if r["testbed"] not in testbeds or "recovered_top10" in r or "scores" not in r:
            continue
        if r["method"] not in VARIANTS:  # a baseline's circuit already is its top 10 %
            r["recovered_top10"] = r["recovered"]
            p.write_text(json.dumps(r) + "\n")
            continue
        bed = load_bed(r["testbed"], r["seed"], cache)
        k = max(1, round(0.1 * len(r["scores"])))
        order = sorted(range(len(r["scores"])), key=lambda i: (-r["scores"][i], i))
        top = [r["head_names"][i] for i in order[:k]]
        ev = bed.evaluator()
        r["recovered_top10"] = circuit_performance(ev, {"top": top}, random_samples=0,
                                                   complements=False).row("top").normalised[ev.metrics[0]]
        p.write_text(json.dumps(r) + "\n")
        print(f"  {r['testbed']} seed {r['seed']} {r['method']}: recovered by the top {k} {r['recovered_top10']:.3f}",
              flush=True)


def table(cache: Path, testbeds: list[str], methods: list[str] | None) -> str:
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in sorted((cache / "results").glob("*/*.json")):
        r = json.loads(p.read_text())
        if r["testbed"] in testbeds and (methods is None or r["method"] in methods):
            if r.get("auc") is None:
                r["auc"] = late_auc(r["testbed"], r)
            rows.setdefault((r["testbed"], r["method"]), []).append(r)
    order = list(VARIANTS) + ["eap", "eap-ig", "norm-diff", "patching"]
    lines = ["| testbed | method | seeds | node AUC | size | recovered | rec. top 10 % | rec. vs input | CPR | CMD | L0 "
             "| rank agr. | time (s) | SAE (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (tbn, m), rs in sorted(rows.items(), key=lambda kv: (list(TESTBEDS).index(kv[0][0]), order.index(kv[0][1]))):
        def col(k: str, rs: list[dict[str, Any]] = rs) -> list[Any]:
            return [r.get(k) for r in rs]

        lines.append(f"| {tbn} | {m} | {len(rs)} | {ms(col('auc'))} | {ms([float(x) for x in col('size')], 1)} | "
                     f"{ms(col('recovered'))} | {ms(col('recovered_top10'))} | {ms(col('recovered_vs_input'))} | {ms(col('cpr'))} | {ms(col('cmd'))} | {ms(col('l0'), 1)} | {ms(col('rank_agreement'), 2)} | "
                     f"{ms(col('seconds'), 1)} | {ms(col('sae_seconds'), 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="sae-codes calibration study (issue 13)")
    ap.add_argument("--testbeds", default="toy", help=f"comma list of {', '.join(TESTBEDS)} or groups "
                    f"{', '.join(GROUPS)}")
    ap.add_argument("--variants", default="all", help=f"comma list of {', '.join(VARIANTS)}, "
                    "'none', or 'all'")
    ap.add_argument("--baselines", default="all", help="comma list of eap, eap-ig, norm-diff, patching; 'none'")
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--cache", default="runs/study")
    ap.add_argument("--faithfulness", action="store_true", help="also CPR/CMD (MIB sizes)")
    ap.add_argument("--force", action="store_true", help="recompute cached results")
    ap.add_argument("--table", action="store_true", help="only print the table of cached results")
    ap.add_argument("--fill-top10", action="store_true",
                    help="add the top-10 %% circuit's recovery to cached rows that lack it, then print the table")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    beds: list[str] = []
    for t in args.testbeds.split(","):
        beds.extend(GROUPS.get(t, [t]))
    bad = [t for t in beds if t not in TESTBEDS]
    if bad:
        sys.exit(f"unknown testbed(s) {bad}; known: {', '.join(TESTBEDS)}; groups: {', '.join(GROUPS)}")
    pick = lambda text, known: [] if text == "none" else list(known) if text == "all" else text.split(",")  # noqa: E731
    variants = pick(args.variants, VARIANTS)
    baselines = pick(args.baselines, ("eap", "eap-ig", "norm-diff", "patching"))
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        sys.exit(f"unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
    cache = Path(args.cache)
    if args.fill_top10:
        fill_top10(cache, beds)
    elif not args.table:
        import torch

        torch.set_num_threads(args.threads)
        run(beds, variants + baselines, parse_seeds(args.seeds), cache, args.faithfulness, args.force)
    print(table(cache, beds, None))


if __name__ == "__main__":
    main()
