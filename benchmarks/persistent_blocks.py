"""How many blocks should the persistent kernel use? Plans the same network for devices of fewer
SMs (so fewer, wider blocks) and times each on the real GPU (graph mode, median of 30).

    python benchmarks/persistent_blocks.py
"""

import cupy as cp
import numpy as np

import rnnplan as rp
from rnnplan.bench import median_ms
from rnnplan.persistent import DEFAULT_DEVICE, kernel_of

CONFIGS = [dict(cell="lstm", input_size=256, hidden_size=256, num_layers=1, seq_len=100, batch=1),
           dict(cell="lstm", input_size=256, hidden_size=256, num_layers=4, seq_len=100, batch=1),
           dict(cell="lstm", input_size=512, hidden_size=512, num_layers=2, seq_len=100, batch=1),
           dict(cell="lstm", input_size=512, hidden_size=512, num_layers=2, seq_len=100, batch=8)]

for kw in CONFIGS:
    for dtype in ("float32", "float16"):
        spec = rp.RNNSpec(**kw, dtype=dtype)
        w = rp.Weights.random(spec, seed=0)
        x = cp.asarray(np.random.default_rng(0).standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(dtype))
        row = []
        for sms in (132,):
            device = DEFAULT_DEVICE.model_copy(update={"sms": sms})
            try:
                plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", device=device))
            except ValueError:
                row.append(f"{sms} SMs: does not fit")
                continue
            ex = rp.Executor(plan, w, backend="cupy")
            r = kernel_of(plan.steps[-1].recurrence)
            row.append(f"{r.blocks:3d} blocks x {r.units_per_block:2d}u: {median_ms(lambda i: ex.run(x), 30):.3f}")
        print(f"{spec.short():<44} " + " | ".join(row), flush=True)
