"""Where a packed call's time goes beyond the padded one (issue 17, item 3), on the device machine:
CUDA-event times (median of 30) of the compiled padded call, the packed call, the masked call on an
already padded batch (no packing), the packing's index computation on the host, and the two
gathers; LSTM 4x512 B64 T100, lengths 50-100.

    python3 benchmarks/packed_profile.py
"""

import torch

import rnnplan as rp
from rnnplan.packing import packed_layout
from rnnplan.timing import median_ms


def main() -> None:
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        m = torch.nn.LSTM(512, 512, num_layers=4).cuda().eval().to(dtype)
        fast = rp.compile(m, autotune=False)
        x = torch.randn(100, 64, 512, device="cuda", dtype=dtype)
        lengths = torch.randint(50, 101, (64,))
        lengths[0] = 100
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        rows = packed_layout(packed, dtype)[1].cuda()
        with torch.no_grad():
            fast(x), fast(packed)
            times = {
                "padded call": median_ms(lambda i: fast(x), 30),
                "packed call": median_ms(lambda i: fast(packed), 30),
                "masked call, padded input (CompiledRNN.run)": median_ms(
                    lambda i: fast.run(x, None, None, lengths.tolist()), 30),
                "packed_layout (host, and the permutation on the GPU)": median_ms(
                    lambda i: packed_layout(packed, dtype), 30),
                "gather of x (index_select)": median_ms(lambda i: packed.data.index_select(0, rows), 30),
            }
        for name, ms in times.items():
            print(f"{str(dtype):<14} {name:<46} {ms:7.3f} ms", flush=True)


if __name__ == "__main__":
    main()
