"""``circuitscan report``: figures and a self-contained HTML page from a run directory."""

from __future__ import annotations

import argparse

from ..report import write_report
from ..rundir import ACTIVATIONS, lock_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="draw figures and write RUN_DIR/report.html",
        description="Read a run directory (written by discover or compare) and write RUN_DIR/report.html, "
        "one self-contained page that opens from disk, with its figures as PNG and SVG in "
        "RUN_DIR/figures/. Sections whose data the run lacks are left out.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory to report on")
    p.add_argument("--tsne", action="store_true",
                   help="also draw a t-SNE of the SAE features (needs discover --save-activations; slower)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    with lock_run(args.run_dir):
        out = write_report(args.run_dir, tsne=args.tsne)
    if args.tsne and not (Path(args.run_dir) / ACTIVATIONS).is_file():
        print(f"note: no t-SNE: the run has no {ACTIVATIONS} (run discover with --save-activations)",
              file=sys.stderr)
    n = len(list((out.parent / "figures").glob("*.png")))
    print(f"wrote  {out}  ({n} figures, PNG and SVG in {out.parent / 'figures'}/)")
    return 0
