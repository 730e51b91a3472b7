"""Where a drop-in call's host time goes (issue 17, item 4): the median wall time of pieces of a
call of `rnnplan.compile` at LSTM 2x256, batch 1, one step (persistent lowering, by pointers), and
a cProfile of many calls, on the device machine. Pieces are timed by `rnnplan.timing.host_us` (the
GPU kept busy ahead of the calls, so that none waits for it).

    python3 benchmarks/host_profile.py
"""

import cProfile
import pstats

import torch

import rnnplan as rp
from rnnplan.timing import host_us
from rnnplan.torch_calls import raw_stream


def main() -> None:
    torch.manual_seed(0)
    m = torch.nn.LSTM(256, 256, num_layers=2).cuda().eval()
    fast = rp.compile(m, autotune=False)
    x = torch.randn(1, 1, 256, device="cuda")
    with torch.no_grad():
        out, state = fast(x)
        h, c = state
        (choice,) = fast._executors.values()
        run = choice.chosen.run
        out2, h2, c2 = run(x, h, c, None)
        outs = (out2.data_ptr(), h2.data_ptr(), c2.data_ptr())
        pieces = {
            "whole call fast(x, state)": lambda: fast(x, state),
            "CompiledRNN.run (below forward)": lambda: fast.run(x, h, c, None),
            "the candidate's run (pointers)": lambda: run(x, h, c, None),
            "the candidate's call (PointerCall)": lambda: run.call(raw_stream(x.device), x.data_ptr(), (h.data_ptr(), c.data_ptr()), outs, False),
        "torch.cuda.current_stream(dev)": lambda: torch.cuda.current_stream(x.device),
        "raw_stream(dev)": lambda: raw_stream(x.device),
            "x.new_empty": lambda: x.new_empty((1, 1, 256)),
            "x.data_ptr()": lambda: x.data_ptr(),
            "torch.cuda.is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
            "torch.compiler.is_compiling": torch.compiler.is_compiling,
            "module attribute (weight_hh_l0)": lambda: fast.weight_hh_l0,
            "cuDNN eager m(x, state)": lambda: m(x, state),
        }
        for name, fn in pieces.items():
            print(f"{name:<40} {host_us(fn):7.2f} us", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3000):
            fast(x, state)
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
