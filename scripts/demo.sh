#!/usr/bin/env bash
# The main job end to end on the bundled example: set up, build the example CNN, optimize it,
# verify it on onnxruntime and print the report. No network access needed after setup.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/modelpress demo --workdir build/demo "$@"
