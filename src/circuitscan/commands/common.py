"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..models import load_model
from ..tasks import build_prompts


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def seed_int(text: str) -> int:
    """A seed torch and numpy both take: a whole number in 0 .. 2**32 - 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{2**32 - 1}, got {v}")
    return v


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="model spec: smollm2-135m, gpt2-random, toy-planted, "
                   "a local HF directory, a .gguf file or a hub name (see `circuitscan models`)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory for gpt2-random")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


# circuitscan.tasks.custom.UNEQUAL, spelt out so that building the parser imports no task code
UNEQUAL_LENGTHS = ("pad", "reject")


def add_unequal_lengths_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unequal-lengths",
        choices=UNEQUAL_LENGTHS,
        default="pad",
        help="--task-file prompts that tokenise to different lengths: left-pad and mask them "
        "(default) or reject the file, naming the lines",
    )


def add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", "-t", default=None, help="task name (see `circuitscan tasks`)")
    p.add_argument("--task-file", default=None, help="a custom task file (JSONL or CSV)")
    add_unequal_lengths_arg(p)
    p.add_argument("--examples", "-n", type=positive_int, default=250,
                   help="positive prompts, and as many negatives (default 250)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for prompts and the SAE (default 0)")


def load_model_from_args(args: argparse.Namespace):
    return load_model(args.model, device=args.device, tokenizer=args.tokenizer, seed=args.seed)


def build_prompts_from_args(args: argparse.Namespace, model) -> Any:
    if args.task_file and not args.task:
        # stored absolute in config.json, so evaluate reads this file from any directory
        args.task_file = str(Path(args.task_file).resolve())
    return build_prompts(model, task=args.task, task_file=args.task_file, n=args.examples, seed=args.seed,
                         unequal=args.unequal_lengths if args.task_file else "pad")
