#!/usr/bin/env bash
# The CUDA path checked in one command on the first machine with a GPU (about 5 minutes, plus gsplat's
# one-time kernel compile): CUDA tests, the demo on gsplat and on the CPU, segment and viewer frames on
# both; one JSON (bench/gpu_check.json) and a PASS/FAIL table. Details: bench/gpu_check.py.
#   bash bench/gpu_check.sh                      # on a GPU machine
#   bash bench/gpu_check.sh --rehearse-on-cpu    # anywhere: checks the script, not CUDA
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test,sam]"
exec python bench/gpu_check.py "$@"
