"""Sweep planner options (input_chunk, num_streams) on a few configurations; GPU, graph mode.

    python benchmarks/sweep.py
"""

import itertools

import cupy as cp
import numpy as np

import rnnplan as rp
from rnnplan.bench import median_ms

CONFIGS = {
    "paper tf32": (dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64), "tf32"),
    "2x256 B1 fp32": (dict(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=100, batch=1), "fp32"),
    "4x1024 B1 tf32": (dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=4, seq_len=100, batch=1), "tf32"),
    "4x1024 B256 tf32": (dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=4, seq_len=100, batch=256), "tf32"),
}

for name, (kw, math) in CONFIGS.items():
    spec = rp.RNNSpec(**kw)
    w = rp.Weights.random(spec, seed=0)
    x = cp.asarray(np.random.default_rng(0).standard_normal((spec.seq_len, spec.batch, spec.input_size)), dtype=np.float32)
    chains = spec.num_layers * spec.directions
    for chunk, streams in itertools.product((1, 2, 5, 10, 25), (chains, 2 * chains)):
        plan = rp.build_plan(spec, options=rp.PlanOptions(math=math, input_chunk=chunk, num_streams=streams,
                                                          lowering="graph"))
        ex = rp.Executor(plan, w, backend="cupy")
        ms = median_ms(lambda i: ex.run(x), 20)
        print(f"{name:<18} chunk {chunk:3d} streams {streams:2d}: {ms:7.3f} ms  critical path {plan.stats.critical_path:4d}"
              f"  kernels {plan.stats.kernels}", flush=True)
        ex.impl.close()
