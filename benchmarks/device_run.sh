#!/usr/bin/env bash
# One device call: install the carried pydantic wheels (.whl/), build the drop-in's compiled call path,
# run the whole GPU suite twice, then what is asked for.
# Usage (repository root, on the GPU machine): bash benchmarks/device_run.sh [tests|matrix|dropin|all]
#   tests: the GPU suite twice; matrix: `rnnplan bench` into $OUT/matrix; dropin: the drop-in's host
#   time, chunk latency and packed calls (dropin_bench.py) and cudnn_gap.py; all: every one.
# At the end everything under $OUT is packed into $OUT/results.tgz: the device tool brings back at most
# 8 files a call (a matrix alone writes three).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_ext}
OUT=${OUT:-/tmp/out}
what=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
python3 -m rnnplan.cli build-calls | tee "$OUT/build_calls.log"
if [ "$what" = tests ] || [ "$what" = all ]; then
  for run in 1 2; do
    start=$(date +%s)
    python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -15 > "$OUT/gpu_tests_$run.log"
    echo "GPU suite, run $run: $(( $(date +%s) - start )) s"; tail -2 "$OUT/gpu_tests_$run.log"
  done
fi
if [ "$what" = matrix ] || [ "$what" = all ]; then
  python3 -m rnnplan.cli bench --out "$OUT/matrix" > "$OUT/matrix.log" 2>&1; echo "matrix rc $?"
  grep "\[" "$OUT/matrix.log" | tail -48 | cut -c1-200
fi
if [ "$what" = dropin ] || [ "$what" = all ]; then
  python3 benchmarks/dropin_bench.py --only host chunk packed --out "$OUT/dropin.json" 2>&1 | tee "$OUT/dropin.log" | tail -30
  python3 benchmarks/cudnn_gap.py 2>&1 | grep -v Warning | tee "$OUT/cudnn_gap.log"
fi
(cd "$OUT" && tar czf /tmp/results.tgz . && find . -mindepth 1 -delete && mv /tmp/results.tgz .)
