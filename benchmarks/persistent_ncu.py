"""One persistent plan's calls for Nsight Compute to time: five warm `Executor.run` calls, then five
between `cudaProfilerStart`/`Stop`, so that ncu with `--profile-from-start off` sees only those.

    ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \\
        python3 benchmarks/persistent_ncu.py CONFIG SEQ_LEN

The kernel's durations at two lengths give its time a step and its set-up free of the host's launch
gaps that CUDA events around a call include (BENCHMARKS.md, "Branch-free weight loads").
"""

import sys

import cupy as cp
import numpy as np

import rnnplan as rp

CONFIGS = {
    "1x512b8": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=1, batch=8, dtype="float16"),
    "1x1024b8": dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=1, batch=8, dtype="float16"),
    "2x256b8": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=2, batch=8, dtype="float16"),
    "gru1x512b8": dict(cell="gru", input_size=512, hidden_size=512, num_layers=1, batch=8, dtype="float16"),
    "paper16": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, batch=64, dtype="float16"),
}

name, seq_len = sys.argv[1], int(sys.argv[2])
spec = rp.RNNSpec(**CONFIGS[name], seq_len=seq_len)
plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent"))
ex = rp.Executor(plan, rp.Weights.random(spec, seed=0), backend="cupy")
x = cp.asarray(np.random.default_rng(0).standard_normal((seq_len, spec.batch, spec.input_size)), spec.dtype)
for _ in range(5):
    ex.run(x)
cp.cuda.Device().synchronize()
cp.cuda.profiler.start()
for _ in range(5):
    ex.run(x)
cp.cuda.Device().synchronize()
cp.cuda.profiler.stop()
