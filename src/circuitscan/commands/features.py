"""``circuitscan features``: feature-level circuits (Marks et al. 2024) beside head-level codes.

``features train`` trains standard SAEs on chosen sublayers; ``features graph`` builds the
attribution graph of a prompt (or of a task's prompt set), checks it by ablation and maps
it to heads. docs/FEATURES.md describes both.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from .. import circuits
from ..errors import CircuitscanError
from ..features.corpus import build_corpus, parse_sources
from ..features.graph import GraphConfig
from ..features.interpret import token_text
from ..features.run import feature_graph_run, prompt_tokens, summary, target_token
from ..features.sae_train import train_sublayer_saes
from ..features.saes import SublayerSAEConfig, describe, load_many, save_sublayer_saes
from ..features.sites import check_sites_exist, parse_sites
from ..report.feature_figures import write_training_figure
from ..rundir import check_out_dir
from ..tasks import build_task
from .common import add_model_args, finite_float, load_model_from_args, positive_int, seed_int


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like 0,17,5, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="feature-level circuits: train sublayer SAEs, build attribution graphs",
        description="Feature-level circuits (Marks et al. 2024, 'Sparse Feature Circuits'): standard SAEs on the "
        "residual stream, attention and MLP outputs, and gradient attribution graphs over their features, with "
        "the double-counting correction, validated by ablation and mapped to heads. See docs/FEATURES.md.",
    )
    fsub = p.add_subparsers(dest="features_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    _add_train(fsub)
    _add_graph(fsub)


def _add_train(fsub: argparse._SubParsersAction) -> None:
    t = fsub.add_parser(
        "train", help="train SAEs on sublayers of a model (streamed, on an offline corpus)",
        description="Train one standard SAE per site on an offline corpus (the model's own generated text, text "
        "shipped with circuitscan, Python's documentation), streamed and batched; writes an SAE directory "
        "with weights, training curves, held-out metrics and top-activating contexts.",
    )
    add_model_args(t)
    t.add_argument("--sites", required=True,
                   help="sites: embed, attn.L, mlp.L, resid.L, ranges like attn.0-5, block.L (= resid.L-1, attn.L, "
                   "mlp.L, resid.L); comma-separated")
    t.add_argument("--out", "-o", required=True, help="SAE directory to write (new or empty)")
    t.add_argument("--overwrite", action="store_true", help="replace an --out that circuitscan wrote (never any other directory)")
    t.add_argument("--corpus", default="generated,package,python-docs",
                   help="comma-separated sources: generated, package, python-docs, file:PATH "
                   "(default: generated,package,python-docs)")
    t.add_argument("--generated-tokens", type=positive_int, default=4096,
                   help="tokens the model generates for the corpus (cached per model and seed; default 4096)")
    t.add_argument("--seq-len", type=positive_int, default=64, help="tokens per corpus chunk (default 64)")
    t.add_argument("--features", type=positive_int, default=1024, help="dictionary size per site (default 1024)")
    t.add_argument("--l1", type=finite_float, default=2.0,
                   help="sparsity weight, inputs scaled to mean squared norm d_model (default 2.0)")
    t.add_argument("--lr", type=finite_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--tokens", type=positive_int, default=262_144,
                   help="training rows per site, counting reuse (default 262144)")
    t.add_argument("--batch-rows", type=positive_int, default=128, help="rows per SAE step (default 128)")
    t.add_argument("--buffer-epochs", type=positive_int, default=4,
                   help="passes over each pool of activations (default 4)")
    t.add_argument("--model-batch", type=positive_int, default=16, help="corpus chunks per forward pass (default 16)")
    t.add_argument("--no-ce-eval", action="store_true", help="skip the spliced cross-entropy evaluation")
    t.add_argument("--seed", type=seed_int, default=0, help="seed of the corpus, sampling and training (default 0)")
    t.set_defaults(func=run_train)


def _add_graph(fsub: argparse._SubParsersAction) -> None:
    g = fsub.add_parser(
        "graph", help="attribution graph of a prompt or a task, checked by ablation",
        description="Build the attribution graph of a prompt's next token (or a task's metric over its prompts) "
        "over the SAEs' features: node = f * dm/df, edges between sites with the double-counting correction, "
        "error terms kept as nodes. Validates the strongest nodes and the strongest thread by ablation, "
        "measures the graph's faithfulness, and maps attention features to heads so that, for a task, the graph "
        "is scored against the ground truth beside sae-codes. Writes a run directory with features.html.",
    )
    add_model_args(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="a text prompt; the graph explains its next token")
    src.add_argument("--prompt-ids", type=_ids, help="a prompt as token ids (models without a tokenizer)")
    src.add_argument("--task", "-t", help="a task (see `circuitscan tasks`); the graph explains its metric")
    g.add_argument("--target", default=None,
                   help="with --prompt: the next token to explain, one token, e.g. ' Paris' (default: the model's "
                   "own top prediction); a token id for models without a tokenizer")
    g.add_argument("--examples", "-n", type=positive_int, default=16,
                   help="with --task: positive prompts (and as many negatives) to build (default 16)")
    g.add_argument("--metric", default=None, help="with --task: task metric (default: the task's own)")
    g.add_argument("--seed", type=seed_int, default=0, help="task seed (default 0)")
    g.add_argument("--saes", required=True,
                   help="SAE directory from `circuitscan features train` (several: comma-separated)")
    g.add_argument("--sites", default=None, help="use only these of the SAEs' sites (default: all)")
    g.add_argument("--out", "-o", required=True, help="run directory to write (new or empty)")
    g.add_argument("--overwrite", action="store_true", help="replace an --out that circuitscan wrote (never any other directory)")
    g.add_argument("--top-k", type=positive_int, default=10, help="features kept per site (default 10)")
    g.add_argument("--edges", choices=("corrected", "direct", "total"), default="corrected",
                   help="corrected: total minus the paths through intermediate sites (default); direct: the same "
                   "by stopping gradients; total: uncorrected (double counts)")
    g.add_argument("--baseline", choices=("zero", "corrupt"), default="zero",
                   help="zero: node = f * dm/df, against the feature switched off (default, as the seed post); "
                   "corrupt (with --task): Marks et al.'s attribution patching, (f - f_corrupt) * dm/df against "
                   "each prompt's paired negative, and ablations patch to the negative's values")
    g.add_argument("--no-edges", action="store_true",
                   help="node scores (and the head view) only: one backward pass per batch; without residual "
                   "sites between them, many sites make corrected edges expensive")
    g.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass (default 8)")
    g.add_argument("--validate", type=int, default=12,
                   help="ablate this many of the strongest nodes one by one (default 12; 0: none)")
    g.add_argument("--ablate", default=None, help="also ablate these nodes together, e.g. resid.3/f12,attn.4/error")
    g.add_argument("--no-sae-codes", action="store_true", help="with --task: skip sae-codes on the same prompts")
    g.add_argument("--faithfulness", action="store_true",
                   help="with --task: faithfulness curves of the head-level views (slower)")
    g.add_argument("--ground-truth", default=None,
                   help="registry name, JSON file or heads like L9H6,L9H9 (default: the task's canonical circuit)")
    g.set_defaults(func=run_graph)


def run_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out_dir(out, overwrite=args.overwrite)  # fail before any work
    sources = parse_sources(args.corpus)
    sites = parse_sites(args.sites)
    cfg = SublayerSAEConfig(n_features=args.features, l1=args.l1, lr=args.lr, train_tokens=args.tokens,
                            batch_rows=args.batch_rows, buffer_epochs=args.buffer_epochs, model_batch=args.model_batch,
                            ce_eval=not args.no_ce_eval,
                            seed=args.seed)
    t = time.perf_counter()
    model = load_model_from_args(args)
    sites = parse_sites(args.sites, model.layout.n_layers)
    check_sites_exist(sites, model.bridge.hook_dict, model.spec)
    print(f"model  {model.spec}  ({model.layout.n_layers} layers, d_model {model.d_model}), loaded in "
          f"{time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    corpus = build_corpus(model, sources, seq_len=args.seq_len, seed=args.seed, generated_tokens=args.generated_tokens)
    print(f"corpus {corpus.chunks.shape[0]} chunks x {corpus.chunks.shape[1]} tokens in {time.perf_counter() - t:.1f}s:")
    for name, s in corpus.summary.items():
        print(f"         {name:<12} {s['documents']:>5} documents {s['tokens']:>8} tokens  ({s['licence']})")
    print(f"train  {len(sites)} SAE(s) on {', '.join(s.name for s in sites)}: {cfg.n_features} features, "
          f"{cfg.train_tokens} tokens each")
    saes = train_sublayer_saes(model, corpus, sites, cfg)
    saes.info["argv"] = {k: v for k, v in vars(args).items() if k != "func"}
    path = save_sublayer_saes(saes, out, overwrite=args.overwrite)
    write_training_figure(path)
    print(describe(saes))
    tm = saes.info["timings_s"]
    print(f"time   model {tm['model_forward']:.1f}s  SAE steps {tm['sae_steps']:.1f}s  eval {tm['eval']:.1f}s  "
          f"contexts {tm['contexts']:.1f}s  (total {tm['total']:.1f}s)")
    print(f"wrote  {path}/")
    return 0


def run_graph(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out_dir(out, overwrite=args.overwrite)
    cfg = GraphConfig(top_k=args.top_k, edges=args.edges, batch_size=args.batch_size, compute_edges=not args.no_edges,
                      baseline=args.baseline)
    if args.baseline == "corrupt" and not args.task:
        raise CircuitscanError("--baseline corrupt needs --task (paired counterfactual prompts)")
    saes = load_many(args.saes)
    model = load_model_from_args(args)
    sites = parse_sites(args.sites, model.layout.n_layers) if args.sites else None
    saes.subset(sites or saes.sites).check_model(model)
    prompts = tokens = target = gt = None
    if args.task:
        prompts = build_task(args.task, model, args.examples, seed=args.seed)
        gt = circuits.for_model(args.ground_truth, model, prompts.task)
    else:
        tokens = prompt_tokens(model, args.prompt, args.prompt_ids)
        target = target_token(model, args.target)
        gt = circuits.for_model(args.ground_truth, model)
    argv = {k: v for k, v in vars(args).items() if k != "func"}
    argv.update(task_file=None, tokenizer=args.tokenizer)
    result = feature_graph_run(
        model, saes, tokens=tokens, target=target, prompts=prompts, metric=args.metric, cfg=cfg, sites=sites,
        validate=args.validate, ablate=args.ablate, sae_codes=not args.no_sae_codes, faithfulness=args.faithfulness,
        ground_truth=gt, out=out, overwrite=args.overwrite, extra_config={"argv": argv},
    )
    print_graph_summary(result, summary(result), model)
    return 0


def _f(v) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def print_graph_summary(result, s: dict, model) -> None:
    g = result.graph
    o = g.objective
    print(f"objective  {o['description']}: {_f(o['value'])} over {g.n_prompts} prompt(s)")
    if o.get("targets") and g.n_prompts == 1:
        print(f"target     {token_text(model, o['targets'][:1])!r} (token {o['targets'][0]})")
    print(f"graph      {s['nodes']} feature nodes on {', '.join(g.sites)}; {s['edges']} edges "
          f"({g.config['edges']}); {g.forward_passes} forward + {g.backward_passes} backward passes, {g.seconds:.1f}s")
    print("sites      share of each site's absolute attribution: kept features / other features / SAE error")
    for site, fr in s["explained_fractions"].items():
        print(f"  {site:<9} {_f(fr['kept']):>8} {_f(fr['rest']):>8} {_f(fr['error']):>8}")
    print("into the output (strongest direct edges):")
    for nid, w in s["proximal_nodes"]:
        card = result.cards.get(nid, {})
        prom = ", ".join(repr(t) for t, _ in card.get("promoted", [])[:4])
        print(f"  {nid:<16} {_f(w):>10}  {('promotes ' + prom) if prom else ''}")
    v = s["validation"]
    if v.get("n"):
        print(f"ablation   {v['n']} strongest nodes one by one: Pearson(predicted, measured) {_f(v.get('pearson'))}, "
              f"same sign {_f(v.get('same_sign'))}, median measured/predicted {_f(v.get('median_ratio'))}")
    th = result.ablations.get("thread", {})
    if th.get("thread"):
        print(f"thread     {' -> '.join(th['thread'])} -> output: ablated, objective {_f(th['objective_clean'])} -> "
              f"{_f(th['objective_ablated'])}")
    f = s["faithfulness"]
    if f:
        print(f"faithful   graph with errors {_f(f.get('faithfulness_with_errors'))}, kept features alone "
              f"{_f(f.get('faithfulness_features_only'))} (clean {_f(f.get('objective_clean'))}, empty "
              f"{_f(f.get('objective_empty'))})")
    for name, m in (result.metrics.get("ground_truth") or {}).items():
        print(f"heads      {name}: ROC AUC over heads {_f(m.get('auc'))}, best F1 {_f(m.get('best_f1'))}")
    if result.out is not None:
        print(f"wrote      {result.out}/ (features.html)")
