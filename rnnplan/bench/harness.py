"""The benchmark harness every GPU benchmark shares (`rnnplan bench` and the scripts in benchmarks/):
the benchmark rows and precisions, torch modules set up as cuDNN runs them, the strict-fp32
reference, relative errors, and timing (CUDA events on the caller's stream around one full forward,
after warm-up, median of `repeats`; cuDNN eager and captured in a CUDA graph). Needs CuPy and
PyTorch with CUDA at call time; importing it needs neither.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import rnnplan as rp

CELL_LABELS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN-tanh", "rnn_relu": "RNN-ReLU"}


def config(cell: str, layers: int, hidden: int, batch: int, seq_len: int = 100, bidirectional: bool = False,
           note: str = "") -> tuple[str, dict]:
    """(label, RNNSpec keywords) of a benchmark row (input size = hidden size); the label is made from
    the keywords, so the two cannot disagree."""
    label = f"{CELL_LABELS[cell]} {layers}x{hidden} B{batch} T{seq_len}" + (" bidir" if bidirectional else "")
    kw = dict(cell=cell, input_size=hidden, hidden_size=hidden, num_layers=layers, seq_len=seq_len, batch=batch)
    return label + (f" ({note})" if note else ""), kw | ({"bidirectional": True} if bidirectional else {})


ROWS = [  # ANCHORS.md's configurations
    config("lstm", 4, 512, 64, note="paper"),
    config("lstm", 2, 256, 1),
    config("lstm", 4, 1024, 1),
    config("lstm", 4, 1024, 256),
    config("lstm", 1, 2048, 32, seq_len=200),
    config("gru", 4, 512, 64),
]
PRECISIONS = ("fp32", "tf32", "fp16")
TOL = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 5e-3}


def rel_err(got, want) -> float:
    """Relative error by norm, in float32."""
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    import cupy as cp

    for i in range(warmup):
        fn(i)
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for i in range(repeats):
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def cudnn_times(torch, module, xs_t: list, repeats: int) -> tuple[float, float]:
    """(eager ms, CUDA-graph ms) of the torch module over the rotated inputs; the graph is captured
    once on a static input, and each replay first copies the call's input into it."""
    with torch.no_grad():
        eager = median_ms(lambda i: module(xs_t[i % len(xs_t)]), repeats)
        static_x = xs_t[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                module(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            module(static_x)

        def replay(i):
            static_x.copy_(xs_t[i % len(xs_t)])
            graph.replay()
        return eager, median_ms(replay, repeats)


def cudnn_module(torch, spec: rp.RNNSpec, precision: str, seed: int = 0):
    """The torch module of `spec` on the GPU as cuDNN runs it in `precision` ("fp32" strict, "tf32",
    "fp16"), weights flattened; it also sets torch's TF32 switches for that precision."""
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.manual_seed(seed)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}[spec.cell]
    kw = {"nonlinearity": spec.cell[4:]} if spec.cell.startswith("rnn") else {}
    m = cls(spec.input_size, spec.hidden_size, num_layers=spec.num_layers, bidirectional=spec.bidirectional,
            **kw).cuda().eval()
    if precision == "fp16":
        m = m.half()
    m.flatten_parameters()
    return m


def strict_reference(torch, module, x: np.ndarray) -> np.ndarray:
    """Strict fp32 torch on the same (possibly fp16-rounded) weights and input."""
    import copy

    ref = copy.deepcopy(module).float()
    ref.flatten_parameters()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        out = ref(torch.as_tensor(x.astype(np.float32), device="cuda"))[0].cpu().numpy()
    return out


def environment(torch, cp) -> dict:
    """The device and library versions, and the date, for a results table."""
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    return dict(device=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                sms=props["multiProcessorCount"], torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                cupy=cp.__version__, cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                driver=cp.cuda.runtime.driverGetVersion(), rnnplan=rp.__version__,
                date=time.strftime("%Y-%m-%d"))
