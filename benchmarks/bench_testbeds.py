"""What the testbed caches save: building once vs loading from the cache, measured in one run.

Builds every testbed into a fresh temporary cache (tracr compile + conversion; the
toy-induction training), then loads each again from that cache, and prints the ratio.
Needs the tracr extra for the tracr rows (they are left out, saying so, without it).

    .venv/bin/python benchmarks/bench_testbeds.py [--skip-induction]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-induction", action="store_true", help="leave out the toy-induction training")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CIRCUITSCAN_CACHE"] = tmp
        from circuitscan.models import load_model

        load_model("toy-planted")  # pay the import costs before timing anything
        specs = ["tracr-reverse", "tracr-frac_prev", "tracr-sort", "tracr-sort_freq"]
        try:
            import tracr.compiler.compiling  # noqa: F401
        except ImportError as exc:
            print(f"tracr rows left out: {exc} (pip install 'circuitscan[tracr]')")
            specs = []
        if not args.skip_induction:
            specs.append("toy-induction")
        print(f"{'spec':<18} {'build (s)':>10} {'cached load (s)':>16} {'ratio':>8}")
        for spec in specs:
            t = time.perf_counter()
            load_model(spec)
            build = time.perf_counter() - t
            t = time.perf_counter()
            load_model(spec)
            cached = time.perf_counter() - t
            print(f"{spec:<18} {build:>10.2f} {cached:>16.3f} {build / cached:>7.0f}x")


if __name__ == "__main__":
    main()
