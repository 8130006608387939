#!/usr/bin/env bash
# Create (or reuse) .venv and install dlmi into it. Idempotent: a second run installs nothing new.
# Usage: bash scripts/setup-env.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "dlmi needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
extra=""
[ "${1:-}" = "dev" ] && extra="[dev,dicom-seg,ray]"
stamp=".venv/.dlmi-installed${extra:+-dev}"
digest=$(cat pyproject.toml plugins/*/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && "$PY" -c 'import dlmi, torch' 2>/dev/null; then
  exit 0
fi
"$PY" -m pip install --quiet --upgrade pip
# torch and torchvision first, as a matched pair (a newer torch next to an older torchvision fails to import).
if [ "$(uname -m)" = "x86_64" ]; then
  "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" \
    || "$PY" -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
else
  "$PY" -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
fi
"$PY" -m pip install --quiet -e ".${extra}"
if [ -n "$extra" ]; then
  for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && "$PY" -m pip install --quiet -e "$plugin"
  done
fi
echo "$digest" > "$stamp"
