"""The benchmark harness every GPU benchmark shares (`rnnplan bench` and the scripts in benchmarks/):
the benchmark rows and precisions, torch modules set up as cuDNN runs them, the strict-fp32
reference, relative errors, and timing (CUDA events on the caller's stream around one full forward,
after warm-up, median of `repeats`; cuDNN eager and captured in a CUDA graph). Needs PyTorch with
CUDA at call time (and CuPy, for rnnplan's GPU backend); importing it needs neither, and it imports
no CuPy itself: inputs go to rnnplan as torch CUDA tensors.
"""

from __future__ import annotations

import re
import subprocess
import time
from importlib import metadata

import numpy as np

import rnnplan as rp
from rnnplan.timing import median_ms  # the one timing method; bench re-exports it

CELL_LABELS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN-tanh", "rnn_relu": "RNN-ReLU"}


def config(cell: str, layers: int, hidden: int, batch: int, seq_len: int = 100, bidirectional: bool = False,
           note: str = "", proj: int = 0) -> tuple[str, dict]:
    """(label, RNNSpec keywords) of a benchmark row (input size = hidden size; `proj`: an LSTM's
    proj_size); the label is made from the keywords, so the two cannot disagree."""
    label = (f"{CELL_LABELS[cell]} {layers}x{hidden}{f' proj {proj}' if proj else ''} B{batch} T{seq_len}"
             + (" bidir" if bidirectional else ""))
    kw = dict(cell=cell, input_size=hidden, hidden_size=hidden, num_layers=layers, seq_len=seq_len, batch=batch)
    kw |= ({"bidirectional": True} if bidirectional else {}) | ({"proj_size": proj} if proj else {})
    return label + (f" ({note})" if note else ""), kw


def config_of_label(label: str) -> dict:
    """The RNNSpec keywords of a row label `config` made (its note dropped): results files name their
    rows by label alone."""
    m = re.fullmatch(r"(\S+) (\d+)x(\d+)(?: proj (\d+))? B(\d+) T(\d+)( bidir)?(?: \(.*\))?", label)
    if m is None:
        raise ValueError(f"not a benchmark row label: {label!r}")
    cell, layers, hidden, proj, batch, seq_len, bidir = m.groups()
    cells = {v: k for k, v in CELL_LABELS.items()}
    return config(cells[cell], int(layers), int(hidden), int(batch), int(seq_len), bool(bidir), proj=int(proj or 0))[1]


ROWS = [  # ANCHORS.md's configurations
    config("lstm", 4, 512, 64, note="paper"),
    config("lstm", 2, 256, 1),
    config("lstm", 4, 1024, 1),
    config("lstm", 4, 1024, 256),
    config("lstm", 1, 2048, 32, seq_len=200),
    config("gru", 4, 512, 64),
    config("lstm", 1, 512, 8, note="cuDNN persistent in fp16"),  # ANCHORS.md's single-layer bf16 rows
    config("lstm", 1, 1024, 8, note="cuDNN persistent in fp16"),
    config("lstm", 3, 1024, 1, proj=256),  # issue 18's projection rows: FFMA (1, 4), tensor cores (8, 16)
    config("lstm", 3, 1024, 4, proj=256),
    config("lstm", 3, 1024, 8, proj=256),
    config("lstm", 3, 1024, 16, proj=256),
]
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
TOL = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 5e-3, "bf16": 1e-2}
DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # storage of each
MATHS = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp32", "bf16": "fp32"}  # PlanOptions.math of each


def rel_err(got, want) -> float:
    """Relative error by norm, in float32."""
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def captured_call(torch, module, *args):
    """(CUDA graph, its outputs) of `module(*args)` captured once, after three warm-up calls on a side
    stream (cuDNN picks and allocates its workspace outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            module(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(*args)
    return graph, out


def cudnn_replay(torch, module, xs_t: list):
    """A function of the call index replaying torch's call of `module`, captured once in a CUDA graph
    on a static input: each replay first copies the call's input (rotated among `xs_t`) into it, and
    leaves its outputs in the graph's static buffers."""
    static_x = xs_t[0].clone()
    with torch.no_grad():
        graph, _ = captured_call(torch, module, static_x)

    def replay(i):
        static_x.copy_(xs_t[i % len(xs_t)])
        graph.replay()
    return replay


def cudnn_times(torch, module, xs_t: list, repeats: int) -> tuple[float, float]:
    """(eager ms, CUDA-graph ms) of the torch module over the rotated inputs (`cudnn_replay`)."""
    with torch.no_grad():
        eager = median_ms(lambda i: module(xs_t[i % len(xs_t)]), repeats)
        return eager, median_ms(cudnn_replay(torch, module, xs_t), repeats)


def interleaved_ms(fns: dict, repeats: int, rounds: int = 3) -> dict[str, list[float]]:
    """Each function's median ms (`median_ms` of `repeats` calls) in each of `rounds` rounds, the
    functions taking turns within a round: two versions compared so share the GPU's drift, and the
    spread of one version's rounds is the noise a difference must exceed (METHOD.md)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, repeats))
    return times


def cudnn_module(torch, spec: rp.RNNSpec, precision: str, seed: int = 0):
    """The torch module of `spec` on the GPU as cuDNN runs it in `precision` ("fp32" strict, "tf32",
    "fp16"), weights flattened; it also sets torch's TF32 switches for that precision."""
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.manual_seed(seed)
    m = spec.to_torch(device="cuda", dtype=getattr(torch, DTYPES[precision]))
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
        out = ref(torch.as_tensor(np.asarray(x, dtype=np.float32), device="cuda"))[0].cpu().numpy()
    return out


def device_tensor(torch, x: np.ndarray):
    """A host array as a torch CUDA tensor of its dtype (bfloat16, ml_dtypes' on the host, by its bits)."""
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).cuda()
    return torch.as_tensor(x, device="cuda")


def host_float32(torch, a) -> np.ndarray:
    """A result (a CuPy array, int16 bits for bfloat16; or a torch tensor) as float32 on the host."""
    if hasattr(a, "get"):  # CuPy
        a = torch.from_dlpack(a)
        if a.dtype == torch.int16:
            a = a.view(torch.bfloat16)
    return a.float().cpu().numpy()


def environment(torch) -> dict:
    """The device and library versions, and the date, for a results table."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    cupy = next((v for v in map(_version, ("cupy-cuda13x", "cupy-cuda12x", "cupy")) if v), "not installed")
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip() or "unknown"
    except OSError:
        driver = "unknown"
    return dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                cudnn=torch.backends.cudnn.version(), cupy=cupy, cuda=torch.version.cuda, driver=driver,
                rnnplan=rp.__version__, date=time.strftime("%Y-%m-%d"))


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
