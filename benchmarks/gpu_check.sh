#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a lent GPU machine: the project's venv if it is there,
# else the Python on PATH; the figures go to stdout and, with $OUT set, to $OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=venv/bin/python
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
