"""The ``circuitscan`` command. Parses, calls the library, prints; no logic of its own.

Subcommands live in ``circuitscan.commands.<name>`` modules, each with ``register(sub)``
adding its parser (whose ``func`` runs it) so that commands can grow independently.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

COMMANDS = ("discover", "models", "tasks", "evaluate", "compare", "report", "sweep", "features", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuitscan",
        description="Find circuits in language models with discrete sparse-autoencoder codes "
        "(O'Neill & Bui 2024).",
    )
    parser.add_argument("--version", action="version", version=f"circuitscan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"circuitscan.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"circuitscan.commands.{name}":
                continue  # a command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 1 unexpected failure)."""
    from .errors import CircuitscanError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CircuitscanError as exc:
        print(f"circuitscan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitscan: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: keep the traceback when asked
        if os.environ.get("CIRCUITSCAN_DEBUG"):
            raise
        print(f"circuitscan: unexpected error: {type(exc).__name__}: {exc} "
              "(set CIRCUITSCAN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
