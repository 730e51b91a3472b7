"""Where a persistent run's time goes outside the recurrent steps: the whole `Executor.run` call, the
plan's CUDA graph alone, the persistent kernel alone (with its counter reset), and the kernel at
seq_len 2 and 100, whose difference gives the time per step and whose intercept the set-up (loading
weights on-chip, launch).

    python3 benchmarks/persistent_overhead.py
"""

import cupy as cp
import numpy as np

import rnnplan as rp
from rnnplan.bench import median_ms

CONFIGS = [
    dict(cell="lstm", input_size=512, hidden_size=512, num_layers=1, batch=8, dtype="float16"),
    dict(cell="lstm", input_size=256, hidden_size=256, num_layers=4, batch=1, dtype="float32"),
    dict(cell="lstm", input_size=256, hidden_size=256, num_layers=4, batch=8, dtype="float16"),
    dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=1, batch=8, dtype="float16"),
    dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, batch=64, dtype="float16"),
]


def times(kw: dict, seq_len: int) -> dict:
    spec = rp.RNNSpec(**kw, seq_len=seq_len)
    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent"))
    ex = rp.Executor(plan, rp.Weights.random(spec, seed=0), backend="cupy")
    x = cp.asarray(np.random.default_rng(0).standard_normal((spec.seq_len, spec.batch, spec.input_size)), spec.dtype)
    impl = ex.impl
    first = impl.streams[0]
    kernel = next(launch for (_w, _s, launch, _r), st in zip(impl.program, plan.steps) if st.kind == "recurrent")

    done = cp.cuda.Event(disable_timing=True)

    def joined():  # the timing events are on the current stream: make it wait for `first`
        done.record(first)
        cp.cuda.get_current_stream().wait_event(done)

    def graph_only(i):
        impl.graph.launch(stream=first)
        joined()

    def kernel_only(i):
        with first:
            kernel()
        joined()

    return dict(run=median_ms(lambda i: ex.run(x), 30), graph=median_ms(graph_only, 30),
                kernel=median_ms(kernel_only, 30))


for kw in CONFIGS:
    long, short = times(kw, 100), times(kw, 2)
    per_step = (long["kernel"] - short["kernel"]) / 98 * 1e3
    setup = short["kernel"] * 1e3 - 2 * per_step
    print(f"{rp.RNNSpec(**kw, seq_len=100).short()}: run {long['run']:.3f} ms, graph {long['graph']:.3f}, "
          f"kernel {long['kernel']:.3f}; kernel per step {per_step:.2f} us, set-up {setup:.1f} us", flush=True)
