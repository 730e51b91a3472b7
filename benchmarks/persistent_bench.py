"""Persistent lowering against the graph lowering and cuDNN (eager and CUDA graph), same run, on
small-batch configurations (where the FFMA persistent kernel is meant to win) and ANCHORS.md's rows.

    python benchmarks/persistent_bench.py [OUT.json]
"""

import json
import sys

import cupy as cp
import numpy as np
import torch

import rnnplan as rp
from rnnplan.bench import ROWS, _median_ms, _reference, _torch_setup, cudnn_times

SMALL = [
    ("LSTM 1x256 B1 T100", dict(cell="lstm", input_size=256, hidden_size=256, num_layers=1, seq_len=100, batch=1)),
    ("LSTM 4x256 B1 T100", dict(cell="lstm", input_size=256, hidden_size=256, num_layers=4, seq_len=100, batch=1)),
    ("LSTM 1x1024 B1 T100", dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=1, seq_len=100, batch=1)),
    ("LSTM 2x512 B8 T100", dict(cell="lstm", input_size=512, hidden_size=512, num_layers=2, seq_len=100, batch=8)),
    ("LSTM 2x256 B4 T100 bidir", dict(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=100,
                                      batch=4, bidirectional=True)),
    ("GRU 2x256 B4 T100", dict(cell="gru", input_size=256, hidden_size=256, num_layers=2, seq_len=100, batch=4)),
    ("RNN-tanh 2x512 B1 T100", dict(cell="rnn_tanh", input_size=512, hidden_size=512, num_layers=2, seq_len=100,
                                    batch=1)),
]
results = []

for label, kw in SMALL + ROWS:
    for precision in ("fp32", "fp16"):
        spec = rp.RNNSpec(**kw, dtype="float16" if precision == "fp16" else "float32")
        try:
            plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent"))
        except ValueError as e:
            print(f"{label:<30} {precision}: persistent lowering not possible: {e}")
            continue
        module = _torch_setup(torch, spec, precision)
        w = rp.Weights.from_torch(module, spec)
        x = np.random.default_rng(0).standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype)
        want = _reference(torch, module, x)
        torch.backends.cudnn.allow_tf32 = False
        ex = rp.Executor(plan, w, backend="cupy")
        got = ex.run(x)[0].get().astype(np.float32)
        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        xc = cp.asarray(x)
        ours = _median_ms(lambda i: ex.run(xc), 30)
        graph_ex = rp.Executor(rp.build_plan(spec), w, backend="cupy")
        theirs_plan = _median_ms(lambda i: graph_ex.run(xc), 30)
        eager, cudnn_graph = cudnn_times(torch, module, [torch.as_tensor(x, device="cuda")], 30)
        r = next(st.recurrence for st in plan.steps if st.recurrence)
        results.append(dict(row=label, precision=precision, persistent_ms=ours, graph_lowering_ms=theirs_plan,
                            cudnn_eager_ms=eager, cudnn_graph_ms=cudnn_graph, rel_err=err,
                            blocks=r.blocks, units=r.units_per_block))
        print(f"{label:<30} {precision}: persistent {ours:8.3f} ms | graph lowering {theirs_plan:8.3f} | cuDNN eager {eager:8.3f}"
              f" | cuDNN graph {cudnn_graph:8.3f} | x{cudnn_graph / ours:.2f} vs cuDNN graph | err {err:.1e} | "
              f"{r.blocks} blocks x {r.units_per_block} units", flush=True)

if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)
