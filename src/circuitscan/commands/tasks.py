"""``circuitscan tasks``: list tasks, show example pairs with their tokens, export a task file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import CircuitscanError
from ..tasks import COMMON_OPTIONS, TASKS, build_task, parse_options, parse_task_spec, task_options
from ..tasks.custom import load_task_file, write_task_file
from .common import (
    add_model_args,
    add_unequal_lengths_arg,
    load_model_from_args,
    positive_int,
    seed_int,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tasks",
        help="list tasks, show example prompts, export a task file",
        description="Without a subcommand: list the tasks and their options. Options go after the "
        "task name (greater-than:negative=year) or in --option key=value; `discover --task` takes "
        "the same syntax.",
    )
    p.set_defaults(func=run_list)
    tsub = p.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")

    ls = tsub.add_parser("list", help="list tasks and their options (the default)")
    ls.set_defaults(func=run_list)

    show = tsub.add_parser(
        "show",
        help="print example positive/negative pairs with their tokenisation",
        description="Build a task (or read a task file) for a model and print its first pairs: "
        "text, tokens, answers, and where each negative differs from its positive.",
    )
    show.add_argument("task", nargs="?", default=None, help="task name, with options: greater-than:negative=year")
    show.add_argument("--task-file", default=None, help="show a custom task file (JSONL or CSV) instead")
    add_unequal_lengths_arg(show)
    _add_build_args(show, default_n=5)
    show.set_defaults(func=run_show)

    export = tsub.add_parser(
        "export",
        help="write a task as a custom task file (JSONL or CSV)",
        description="Build a task for a model and write it in the format --task-file reads "
        "(CSV for a .csv name, else JSONL); edit it and read it back with discover --task-file.",
    )
    export.add_argument("task", help="task name, with options: greater-than:negative=year")
    export.add_argument("--out", "-o", required=True, help="file to write (.jsonl or .csv)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing file")
    _add_build_args(export, default_n=250)
    export.set_defaults(func=run_export)


def _add_build_args(p: argparse.ArgumentParser, *, default_n: int) -> None:
    add_model_args(p)
    p.add_argument("--examples", "-n", type=positive_int, default=default_n,
                   help=f"pairs to build (default {default_n})")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for the prompts (default 0)")
    p.add_argument("--option", "-O", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option (repeatable), e.g. -O negative=year")


def run_list(args: argparse.Namespace) -> int:  # noqa: ARG001

    print("tasks (options with their defaults; pass them as TASK:key=value,... or -O key=value):")
    for name, (_, text) in TASKS.items():
        print(f"  {name:<13} {text}")
        opts = [o.describe() for o in task_options(name) if o.name not in COMMON_OPTIONS]
        if opts:
            print(f"  {'':<13} options: {', '.join(opts)}")
    for name, text in COMMON_OPTIONS.items():
        print(f"every task also takes {name}=K: {text}")
    print("custom tasks: --task-file FILE (JSONL or CSV with positive, negative[, answer, wrong_answer]); "
          "see docs/TASKS.md")
    return 0


def _build(args: argparse.Namespace, model: Any) -> Any:
    name, _ = parse_task_spec(args.task)
    options = parse_options(name, args.option)
    return build_task(args.task, model, args.examples, seed=args.seed, **options)


def _piece(model: Any, tid: int) -> str:
    if model.tokenizer is None:
        return str(tid)
    text = model.tokenizer.decode([tid])
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _token_line(model: Any, ids: list[int], mask: list[int] | None) -> str:
    parts = []
    for i, t in enumerate(ids):
        parts.append("<pad>" if mask is not None and not mask[i] else _piece(model, t))
    return "|" + "|".join(parts) + "|"


def _answers(model: Any, prompts: Any, attr: str, key: str, i: int) -> str | None:
    t = getattr(prompts, attr)
    ids = t[i].tolist() if t is not None else (prompts.metadata.get(key) or [None] * (i + 1))[i]
    if ids is None:
        return None
    shown = [repr(_piece(model, a)) if model.tokenizer is not None else str(a) for a in ids[:6]]
    more = f" (+{len(ids) - 6} more)" if len(ids) > 6 else ""
    return ", ".join(shown) + more


def print_pairs(model: Any, prompts: Any, k: int) -> None:
    meta = prompts.metadata
    scalars = {key: v for key, v in meta.items() if isinstance(v, int | float | str | bool) and key != "metric"}
    print(f"task {prompts.task} for {model.spec}: {prompts.n_positive} positive + {prompts.n_negative} negative "
          f"prompts of {prompts.seq_len} tokens; metric: {meta.get('metric', '?')}")
    if scalars:
        print("  " + ", ".join(f"{key}={v}" for key, v in scalars.items()))
    for i in range(min(k, prompts.n_positive)):
        pos = prompts.positive[i].tolist()
        pmask = None if prompts.positive_mask is None else prompts.positive_mask[i].tolist()
        print(f"\n[{i}] positive: {prompts.positive_text[i]!r}" if prompts.positive_text else f"\n[{i}] positive:")
        print(f"    {_token_line(model, pos, pmask)}")
        for label, attr, key in (("answer", "answers", "answer_sets"), ("wrong", "wrong_answers", "wrong_answer_sets")):
            shown = _answers(model, prompts, attr, key, i)
            if shown is not None:
                print(f"    {label}: {shown}")
        if "yy" in meta:
            print(f"    start year YY = {meta['yy'][i]:02d}: answers are YY' > {meta['yy'][i]:02d}")
        if i < prompts.n_negative:
            neg = prompts.negative[i].tolist()
            nmask = None if prompts.negative_mask is None else prompts.negative_mask[i].tolist()
            text = f" {prompts.negative_text[i]!r}" if prompts.negative_text else ""
            print(f"    negative:{text}")
            print(f"    {_token_line(model, neg, nmask)}")
            diff = [j for j in range(len(pos)) if pos[j] != neg[j]]
            print(f"    differs at token position(s) {diff}" if diff else "    identical to the positive")
    extra = prompts.n_negative - prompts.n_positive
    if extra > 0:
        j = prompts.n_positive
        print(f"\n{extra} unpaired negatives, e.g.: {_token_line(model, prompts.negative[j].tolist(), None)}")


def run_show(args: argparse.Namespace) -> int:
    if bool(args.task) == bool(args.task_file):
        raise CircuitscanError("give a task name (see `circuitscan tasks`) or --task-file FILE, not both")
    model = load_model_from_args(args)
    if args.task_file:
        prompts = load_task_file(
            Path(args.task_file), model, n=args.examples, unequal=args.unequal_lengths
        )
    else:
        prompts = _build(args, model)
    print_pairs(model, prompts, args.examples)
    return 0


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CircuitscanError(f"{str(out)!r} exists; choose another name or pass --overwrite")
    model = load_model_from_args(args)
    prompts = _build(args, model)
    rows = write_task_file(prompts, out, model)
    print(f"wrote {rows} pairs of task {prompts.task} for {model.spec} to {out}")
    return 0
