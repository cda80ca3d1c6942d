# The README names these targets; .ci/run calls them.
.PHONY: setup demo test test-fast lint bench bench-quick
PY := .venv/bin/python

setup:
	scripts/setup.sh

demo:
	.venv/bin/circuitscan discover --model smollm2-135m --task ioi --examples 250 --out runs/ioi-smollm2 --overwrite

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

lint:
	.venv/bin/ruff check src tests benchmarks studies

bench:
	$(PY) benchmarks/bench_targets.py --before

bench-quick:
	$(PY) benchmarks/bench_targets.py --quick --before
