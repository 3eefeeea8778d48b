#!/usr/bin/env bash
# Run the test suite (set-up included). Fails when a test fails and when no test ran
# (pytest exits 5 then, and that status is passed through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -n 2 -q "$@"
