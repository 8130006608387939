#!/usr/bin/env bash
# Create the environment (with the dev tools and the example plugin) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh dev
.venv/bin/ruff check src tests plugins benchmarks
.venv/bin/python -m pytest "$@"
