"""The ``circuitscan`` command. Parses, calls the library, prints; no logic of its own.

Subcommands live in ``circuitscan.commands.<name>`` modules, each with ``register(sub)``
adding its parser (whose ``func`` runs it) so that commands can grow independently.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys

from ._version import __version__
from .errors import CircuitscanError, CircuitscanWarning

COMMANDS = ("discover", "models", "methods", "tasks", "evaluate", "compare", "report", "sweep", "features", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuitscan",
        description="Find circuits in language models with discrete sparse-autoencoder codes "
        "(O'Neill & Bui 2024).",
    )
    parser.add_argument("--version", action="version", version=f"circuitscan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"circuitscan.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 1 unexpected failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = _terminate_like_interrupt()
    try:
        return _run_showing_warnings(args)
    except CircuitscanError as exc:
        print(f"circuitscan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("circuitscan: interrupted; nothing was written", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except MemoryError:
        print("circuitscan: error: out of memory; use fewer --examples or --features (or a machine with more "
              "memory)", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"circuitscan: error: no space left on the device ({exc.filename or 'writing'}); free some "
                  "space and run this again; nothing half-written was kept", file=sys.stderr)
            return 2
        return _unexpected(exc)
    except Exception as exc:  # an unexpected failure: keep the traceback when asked
        return _unexpected(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _unexpected(exc: BaseException) -> int:
    if os.environ.get("CIRCUITSCAN_DEBUG"):
        raise exc
    print(f"circuitscan: unexpected error: {type(exc).__name__}: {exc} "
          "(set CIRCUITSCAN_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: partial directories are removed on the way out."""


def _terminate_like_interrupt():
    """Make SIGTERM raise :class:`Terminated` (main thread only); returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _run_showing_warnings(args: argparse.Namespace) -> int:
    """Run the command; circuitscan's own warnings become one plain line on stderr each."""
    import warnings

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CircuitscanWarning)
            return int(args.func(args) or 0)
    finally:
        # after the block: re-emitted inside it, each warning was recorded again and the
        # loop never ended (issue 16: "compare" at 100 % CPU after "wrote DIR")
        for w in caught:
            if issubclass(w.category, CircuitscanWarning):
                print(f"circuitscan: warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
