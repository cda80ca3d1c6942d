"""``circuitscan export RUN_DIR --format F``: a run's scores and circuits in the field's formats."""

from __future__ import annotations

import argparse

from ..interop.export import export_run

# circuitscan.interop.export.FORMATS, spelt out so that building the parser imports no torch
FORMATS = ("eap-ig", "mib", "mib-circuits", "auto-circuit", "neuronpedia")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's scores and circuits as EAP-IG / MIB graphs or auto-circuit prune scores",
        description="Write every method of a run directory in another tool's format: eap-ig (one EAP-IG graph "
        "JSON per method: node and edge scores, the run's circuit as in_graph), mib (the same graphs in MIB's "
        "submission layout, METHOD/TASK_MODEL/importances.json), mib-circuits (MIB's other form: nine binary edge "
        "circuits of at most 0.1 ... 50 % of the edges per method that scores edges), auto-circuit (prune scores per destination "
        "module, safetensors) or neuronpedia (a `circuitscan features` run's feature graph as circuit-tracer / "
        "Neuronpedia graph JSON). Names map as docs/INTEROP.md describes (L3H2->L5H1.q is a3.h2->a5.h1<q>); MLPs, "
        "which circuitscan's graph keeps as wiring, are written in the graph with score 0.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by discover or compare")
    p.add_argument("--format", "-f", required=True, choices=FORMATS, help="the format to write")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/export-FORMAT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in export_run(args.run_dir, args.format, args.out):
        print(f"wrote  {path}")
    return 0
