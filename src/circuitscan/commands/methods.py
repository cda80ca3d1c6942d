"""``circuitscan methods``: the registered circuit-finding methods, one line each."""

from __future__ import annotations

import argparse

from ..comparison.settings import method_registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the circuit-finding methods compare can run",
                       description="List every registered method: what it scores, whether compare runs it by "
                       "default, one line on it and its source.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:  # noqa: ARG001
    print(method_list())
    return 0


def method_list() -> str:
    """Every registered method: name, what it scores, one line on it, its source."""
    registry = method_registry()
    lines = []
    for spec in registry.specs():
        tags = ["edges" if spec.edges else "heads"] + (["threshold sweep"] if spec.threshold_sweep else [])
        tags += ["default"] if spec.default else []
        tags += [] if spec.in_all else ["not in 'all'"]
        lines.append(f"{spec.name:20s} [{', '.join(tags)}] {spec.summary}" + (f" ({spec.source})" if spec.source else ""))
    return "\n".join(lines)
