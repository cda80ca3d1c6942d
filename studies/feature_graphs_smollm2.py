"""Study: do feature attribution graphs explain naturalistic forward passes of smollm2-135m?

The seed post (Udell et al. 2025, a replication of Marks et al.'s sparse feature circuits on
GPT-2 small) argues they do not: the graph's single strongest "proximal cause" of the next
token was often not a feature that promotes that token, and its upstream nodes were not
illuminating. This script puts numbers on the testable half of that claim for the SAEs
you give it (``circuitscan features train``), prompt by prompt:

* the model's next token and its probability;
* how well each SAE reconstructs this forward pass (FVU over positions 1.., the attention
  sink at position 0 left out, as in training);
* the share of each site's absolute attribution carried by the kept features, the other
  features and the SAE error (``explained_fractions``), averaged over sites;
* the **proximal cause**: the node with the largest edge into the output. Is it a feature
  or an SAE error? For the strongest proximal *feature*: zero-ablate it alone and ask
  whether the model's top token is among the 5 tokens whose log-probability fell most
  (what it promoted in this forward pass, the seed post's criterion), and the token's rank
  among the feature's weight-based promoted tokens (logit lens on the atom);
* **local linearity**: the 12 strongest feature nodes ablated one by one, measured change of
  the loss against the graph's prediction ``-score`` (Pearson r, sign agreement, median
  measured / predicted);
* the strongest **thread** ablated at once (saved in the JSON; the sum of its node scores is
  no prediction of it: along a chain the same effect is counted at every node);
* **faithfulness** of the kept features as a circuit, with and without the error nodes, at
  the graph's ``--top-k`` and at other numbers of kept features per site; and of each
  site's full reconstruction spliced in alone (every feature kept, the error removed).

Usage: .venv/bin/python studies/feature_graphs_smollm2.py --saes SAE_DIR [--top-k 10]
       [--json OUT.json] [--prompt TEXT ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from circuitscan.features.ablate import Ablation, ablation_effect, graph_faithfulness
from circuitscan.features.corpus import build_corpus
from circuitscan.features.graph import GraphConfig, attribution_graph, explained_fractions
from circuitscan.features.interpret import token_strings, unembedding_directions
from circuitscan.features.run import feature_graph_run, prompt_tokens
from circuitscan.features.sae_train import evaluate_saes
from circuitscan.features.saes import SublayerSAEConfig, load_many
from circuitscan.features.sites import capture_sites, parse_sites
from circuitscan.models import load_model

# the seed post's five prompts, then three of ours (a fact, IOI, code: the corpus is mostly Python docs)
PROMPTS = [
    "Copyright (C",
    "The biggest name in basketball is Michael",
    "Make America Great",
    "To be or not to be, that is the",
    "Good morning starshine, the Earth says",
    "The Eiffel Tower is located in the city of",
    "When Mary and John went to the store, John gave a drink to",
    "for i in range(10):\n    print(",
]


def corpus_means(model, saes, n_chunks: int = 48) -> dict[str, tuple[torch.Tensor, float]]:
    """Per site: the mean activation over corpus chunks (positions 1..) and the FVU there."""
    corpus = build_corpus(model, seq_len=64, seed=0)
    idx = torch.linspace(0, corpus.chunks.shape[0] - 1, n_chunks).long()
    sites = parse_sites(list(saes.saes))
    out = {}
    with torch.no_grad():
        xs = {}
        for lo in range(0, n_chunks, 16):
            for name, x in capture_sites(model, corpus.chunks[idx[lo:lo + 16]], sites).items():
                xs.setdefault(name, []).append(x[:, 1:].reshape(-1, x.shape[-1]).float())
        for name, parts in xs.items():
            x = torch.cat(parts)
            mu = x.mean(0)
            xh, _ = saes[name](x)
            out[name] = (mu, float(((x - xh) ** 2).sum() / ((x - mu) ** 2).sum()))
    return out


def held_out_metrics(model, saes) -> dict[str, dict]:
    """The training run's held-out metrics, recomputed (same held-out chunks, current code)."""
    cfg = SublayerSAEConfig.from_dict(saes.info.get("config") or {})
    corpus = build_corpus(model, seq_len=64, seed=cfg.seed)
    _, held = corpus.split(cfg.eval_chunks)
    with torch.no_grad():
        return evaluate_saes(model, saes, held, cfg)


def reconstruction_fvu(model, saes, tokens, means) -> dict[str, float]:
    """FVU on the prompt (positions 1..) against the *corpus* mean, comparable to training FVU."""
    sites = parse_sites(list(saes.saes))
    with torch.no_grad():
        out = {}
        for name, x in capture_sites(model, tokens, sites).items():
            x = x[0, 1:].float()
            xh, _ = saes[name](x)
            out[name] = float(((x - xh) ** 2).sum() / ((x - means[name][0]) ** 2).sum())
    return out


def study_prompt(model, saes, text: str, top_k: int, means, faith_ks: list[int]) -> dict:
    tokens = prompt_tokens(model, text)
    t0 = time.perf_counter()
    res = feature_graph_run(model, saes, tokens=tokens, target=None, cfg=GraphConfig(top_k=top_k), validate=12)
    g = res.graph
    target = res.objective.targets[0]
    top_text = token_strings(model, torch.tensor([target]))[0]
    row: dict = {"prompt": text, "top_token": top_text, "top_prob": math.exp(-g.objective["value"])}
    row["fvu"] = reconstruction_fvu(model, saes, tokens, means)
    fr = explained_fractions(g)
    row["share_error_mean"] = statistics.fmean(v["error"] for v in fr.values())
    row["share_kept_mean"] = statistics.fmean(v["kept"] for v in fr.values())
    row["shares"] = fr

    into_out = sorted(g.incoming("output").items(), key=lambda kv: -abs(kv[1]))
    prox_id, prox_w = into_out[0]
    row["proximal"] = {"node": prox_id, "kind": g.nodes[prox_id].kind, "edge": prox_w,
                       "edge_share": abs(prox_w) / sum(abs(w) for _, w in into_out)}
    feats = [(i, w) for i, w in into_out if g.nodes[i].kind == "feature"]
    if feats:
        fid, fw = feats[0]
        node = g.nodes[fid]
        eff = ablation_effect(model, saes, tokens, res.objective, Ablation({node.site: (int(node.feature),)}), top=5)
        promoted_here = [t for t, _ in eff["promoted_here"]]
        with torch.no_grad():
            lens = unembedding_directions(model, saes[node.site].W_D[int(node.feature)][None])[0]
        lens_rank = int((lens > lens[target]).sum()) + 1
        lens_top5 = token_strings(model, lens.topk(5).indices)
        row["proximal_feature"] = {
            "node": fid, "edge": fw, "rank_among_output_edges": [i for i, _ in into_out].index(fid) + 1,
            "top_token_in_promoted_here_top5": top_text in promoted_here,
            "promoted_here": promoted_here,
            "top_token_rank_in_logit_lens": lens_rank,
            "logit_lens_top5": lens_top5,
            "delta_loss": eff["delta"], "target_prob_ablated": eff.get("target_prob_ablated"),
        }
    row["validation"] = res.ablations["single_nodes"]["summary"]
    row["validation_nodes"] = [{k: r[k] for k in ("node", "predicted_delta", "delta")}
                               for r in res.ablations["single_nodes"]["nodes"]]
    th = res.ablations["thread"]
    row["thread"] = {"nodes": th.get("thread", []), "measured_delta": th.get("delta"),
                     "predicted_delta": th.get("naive_predicted_delta")}
    row["faithfulness"] = {k: v for k, v in res.ablations["faithfulness"].items() if k.startswith("faithfulness")}
    row["faithfulness_by_k"] = {}
    for k in faith_ks:  # node scores only: the kept set is all faithfulness needs
        gk = attribution_graph(model, saes, tokens, res.objective, GraphConfig(top_k=k, compute_edges=False))
        fk = graph_faithfulness(model, saes, tokens, res.objective, gk)
        row["faithfulness_by_k"][k] = {key: v for key, v in fk.items() if key.startswith("faithfulness")}
    # each site alone with every feature kept and its error removed: the SAE's reconstruction
    # spliced in at that one site (faithfulness 1: the reconstruction carries what the model needs)
    row["spliced_alone"] = {}
    for site in parse_sites(list(saes.saes)):
        one = saes.subset([site])
        g1 = attribution_graph(model, one, tokens, res.objective,
                               GraphConfig(top_k=one[site].n_features, compute_edges=False))
        row["spliced_alone"][site.name] = graph_faithfulness(model, one, tokens, res.objective, g1)[
            "faithfulness_features_only"]
    row["seconds"] = time.perf_counter() - t0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saes", required=True, help="SAE directory (or several, comma-separated)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--prompt", action="append", help="prompts (default: the seed post's five and three more)")
    ap.add_argument("--faithfulness-k", default="3,10,30,100,300",
                    help="also measure faithfulness keeping this many features per site (comma-separated)")
    ap.add_argument("--json", help="write all rows here")
    args = ap.parse_args()

    model = load_model(args.model)
    saes = load_many(args.saes)
    faith_ks = [int(k) for k in args.faithfulness_k.split(",") if k.strip()]
    means = corpus_means(model, saes)
    print("FVU on 48 corpus chunks (mostly seen in training): "
          + ", ".join(f"{k} {v[1]:.2f}" for k, v in means.items()))
    held_out = held_out_metrics(model, saes)
    for name, m in held_out.items():
        print(f"  held out {name:<9} FVU {m['fvu']:.3f}  L0 {m['l0']:.1f}  CE {m['ce_clean']:.3f} -> "
              f"{m['ce_spliced']:.3f} spliced ({m['ce_mean_ablated']:.3f} mean-ablated), loss recovered "
              f"{m['loss_recovered']:.2f}")
    rows = []
    for text in args.prompt or PROMPTS:
        row = study_prompt(model, saes, text, args.top_k, means, faith_ks)
        rows.append(row)
        pf = row.get("proximal_feature", {})
        print(f"{text!r:<62} -> {row['top_token']!r} p={row['top_prob']:.2f} | FVU mean "
              f"{statistics.fmean(row['fvu'].values()):.2f} | error share {row['share_error_mean']:.2f} | "
              f"proximal {row['proximal']['node']} ({row['proximal']['edge_share']:.0%} of |output edges|) | "
              f"top proximal feature {pf.get('node')}: token in its ablation's top-5 fallen "
              f"{pf.get('top_token_in_promoted_here_top5')}, lens rank {pf.get('top_token_rank_in_logit_lens')} | "
              f"r={row['validation'].get('pearson', math.nan):.2f} sign={row['validation'].get('same_sign', math.nan):.2f} "
              f"ratio={row['validation'].get('median_ratio', math.nan):.2f} | faith "
              f"{row['faithfulness']['faithfulness_with_errors']:.2f} / {row['faithfulness']['faithfulness_features_only']:.2f} | {row['seconds']:.0f}s", flush=True)

    n = len(rows)
    print()
    print(f"prompts: {n}; SAEs: {', '.join(saes.saes)}")
    print(f"  proximal cause is an SAE error node: {sum(r['proximal']['kind'] == 'error' for r in rows)}/{n}")
    hit = sum(bool(r.get("proximal_feature", {}).get("top_token_in_promoted_here_top5")) for r in rows)
    print(f"  strongest proximal feature promotes the top token (top-5 fallen when ablated): {hit}/{n}")
    print(f"  mean FVU on these prompts (against the corpus mean): "
          f"{statistics.fmean(statistics.fmean(r['fvu'].values()) for r in rows):.3f}; on the corpus: "
          f"{statistics.fmean(v[1] for v in means.values()):.3f}")
    print(f"  mean error share of |attribution|: {statistics.fmean(r['share_error_mean'] for r in rows):.3f}")
    rs = [r["validation"]["pearson"] for r in rows if math.isfinite(r["validation"].get("pearson", math.nan))]
    print(f"  single-node ablation vs prediction: median Pearson r {statistics.median(rs):.2f}, "
          f"sign agreement {statistics.fmean(r['validation']['same_sign'] for r in rows):.2f}, "
          f"median ratio {statistics.median(r['validation']['median_ratio'] for r in rows):.2f}")
    for k in ("faithfulness_with_errors", "faithfulness_features_only"):
        vals = [r["faithfulness"][k] for r in rows]
        print(f"  {k}: median {statistics.median(vals):.2f} (range {min(vals):.2f} .. {max(vals):.2f})")
    print("  one site's reconstruction spliced in alone (all features, no error), faithfulness: "
          + ", ".join(f"{site} {statistics.median(r['spliced_alone'][site] for r in rows):.2f}"
                      for site in rows[0]["spliced_alone"]) + " (medians)")
    for k in faith_ks:
        for key in ("faithfulness_with_errors", "faithfulness_features_only"):
            vals = [r["faithfulness_by_k"][k][key] for r in rows]
            print(f"  k={k:<4} {key}: median {statistics.median(vals):.2f} (range {min(vals):.2f} .. {max(vals):.2f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"saes": args.saes, "sites": list(saes.saes), "top_k": args.top_k, "held_out": held_out,
                   "rows": rows}, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
