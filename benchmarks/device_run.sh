#!/usr/bin/env bash
# One device call: install the carried pydantic wheels, run the GPU tests twice, then the benchmark.
# Usage (repository root, on the GPU machine): bash benchmarks/device_run.sh [tests|bench|all] [--quick]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
what=${1:-all}; shift || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
  for run in 1 2; do
    python3 -m pytest -q -x -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests_$run.log" | tail -15
  done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benchmarks/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
fi
