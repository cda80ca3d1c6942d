"""``circuitscan models``: the model specs that work here without network."""

from __future__ import annotations

import argparse

from ..models.loading import cache_dir, describe_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model specs", description="List the model specs circuitscan knows.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:  # noqa: ARG001

    print("offline model specs:")
    for name, text in describe_models():
        print(f"  {name:<14} {text}")
    print("also: a local Hugging Face directory, a .gguf file, or a hub name such as gpt2 (needs network)")
    print(f"cache: {cache_dir()}  (set CIRCUITSCAN_CACHE to move it)")
    return 0
