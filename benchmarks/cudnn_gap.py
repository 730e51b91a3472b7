"""Where the compiled module's cuDNN candidate loses to a bare replay of cuDNN's graph (issue 17,
item 6: the rows where autotuning keeps torch's call run 0.96-0.99x cuDNN graph). For each row, in
one process, median ms from an idle GPU over rotated inputs (`rnnplan.bench.median_ms`):

- bare: the matrix's cuDNN graph (captured on a static input without a state; each replay copies the
  call's input in by torch and returns the graph's own outputs);
- bare + clone: the same, with the outputs copied out (what a caller keeping them must do);
- bare, state given: captured with zero states passed, as the candidate captures it;
- candidate replay: the compiled module's CudnnGraph, its graph alone (no copies);
- candidate call: the whole call through the compiled module (its copies, the compiled call path);
- copies: the candidate's copy-in and copy-out kernels alone (backends/cuda/copies.cu), against
  torch's copy of the input alone (what the bare replay does before it).

    python3 benchmarks/cudnn_gap.py
"""

import torch

import rnnplan as rp
import rnnplan.compiled_calls as compiled_calls
from rnnplan.bench import captured_call, median_ms
from rnnplan.bench.harness import cudnn_module

ROWS = [("paper fp32", dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64), "fp32"),
        ("paper tf32", dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64), "tf32"),
        ("GRU 4x512 B64 fp32", dict(cell="gru", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64),
         "fp32"),
        ("LSTM 1x1024 B8 fp16", dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=1, seq_len=100, batch=8),
         "fp16"),
        ("LSTM 1x2048 B32 T200 tf32", dict(cell="lstm", input_size=2048, hidden_size=2048, num_layers=1, seq_len=200,
                                           batch=32), "tf32"),
        ("LSTM 4x512 B1 T4 tf32", dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=4, batch=1),
         "tf32")]


def main() -> None:
    compiled_calls.load()
    for label, kw, precision in ROWS:
        spec = rp.RNNSpec(**kw, dtype="float16" if precision == "fp16" else "float32")
        m = cudnn_module(torch, spec, precision)
        lstm = spec.cell == "lstm"
        xs = [torch.randn(spec.seq_len, spec.batch, spec.input_size, device="cuda", dtype=m.weight_hh_l0.dtype)
              for _ in range(4)]
        with torch.no_grad():
            static_x = xs[0].clone()
            bare, (out, st) = captured_call(torch, m, static_x, None)

            def replay(i, clone=False):
                static_x.copy_(xs[i % 4])
                bare.replay()
                if clone:
                    [t.clone() for t in (out, *(st if lstm else (st,)))]
            h0 = torch.zeros(spec.num_layers, spec.batch, spec.hidden_size, device="cuda", dtype=static_x.dtype)
            given, _ = captured_call(torch, m, static_x, (h0, torch.zeros_like(h0)) if lstm else h0)

            def replay_given(i):
                static_x.copy_(xs[i % 4])
                given.replay()
            fast = rp.compile(m)
            fast(xs[0])
            choice = next(iter(fast._executors.values())).chosen
            times = {"bare": median_ms(replay, 30), "bare + clone": median_ms(lambda i: replay(i, True), 30),
                     "bare, state given": median_ms(replay_given, 30)}
            if choice.name == "cudnn":
                times["candidate replay"] = median_ms(lambda i: choice.run.graph.replay(), 30)
            times["candidate call"] = median_ms(lambda i: fast(xs[i % 4]), 30)
            times["torch's input copy"] = median_ms(lambda i: static_x.copy_(xs[i % 4]), 30)
            copies = getattr(choice.run, "copies", None)
            if choice.name == "cudnn" and copies is not None:
                stream = torch.cuda.current_stream().cuda_stream
                outs = [t.clone() for t in (out, *(st if lstm else (st, st[:0])))]
                pointers = [t.data_ptr() for t in outs]
                times["copy-in"] = median_ms(lambda i: copies[0](stream, xs[i % 4].data_ptr(), 0, 0, 0), 30)
                times["copy-out"] = median_ms(lambda i: copies[1](stream, *pointers, 0), 30)
        path = "compiled" if fast._fast is not None else "Python"
        print(f"{label:<22} ({choice.name}, {path} path) " + "  ".join(f"{k} {v:.3f}" for k, v in times.items()),
              flush=True)


if __name__ == "__main__":
    main()
