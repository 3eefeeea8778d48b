#!/usr/bin/env bash
# The main job end to end on the bundled example: set up .venv/, then deploy the digits CNN
# (trained here on scikit-learn's load_digits) with its pre/post-processing through
# optimize -> quantize int8 -> encrypt -> package -> bench, and print every stage side by side.
# No network access needed after setup. Extra arguments go to `modelpress deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/modelpress deploy examples/digits/recipe.yaml "$@"
