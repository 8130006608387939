#!/usr/bin/env bash
# Create the environment (with the dev tools and the example plugin) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh dev
bash scripts/system-packages.sh
.venv/bin/ruff check src tests plugins benchmarks
# One pytest worker per CPU (pytest-xdist), one torch/OpenMP thread each, so the workers do not oversubscribe the
# cores: on this 2-core machine the suite took 278 s this way against 448 s in one process (same load).
# --durations=15 ends the report with the 15 slowest tests, so a test that grows slow is seen.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -n auto --durations=15 "$@"
