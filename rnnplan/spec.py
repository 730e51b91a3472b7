"""The user-facing configuration models: what network to run (`RNNSpec`), how to plan it
(`PlanOptions`) and the GPU to plan for (`DeviceShape`); and `PASSES`, the one list of pass names.
All are frozen pydantic models, so they validate at the edge, name the offending field on error,
hash (they key the plan cache) and round-trip through JSON. This module imports nothing of rnnplan:
the cells (`rnnplan.ir.cells`) say what a cell's gates and states are, the passes
(`rnnplan.passes`) what each pass does."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The cells a spec may name; each is defined in rnnplan/ir/cells.py (a test checks the two agree).
Cell = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]
# torch.nn.RNNBase.mode -> the cell (torch's Elman modes carry the nonlinearity).
TORCH_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def torch_cell(module, caller: str, error: type[ValueError] = ValueError) -> str:
    """The cell of a `torch.nn.LSTM` / `GRU` / `RNN`; `error`, naming `caller`, for any other module."""
    mode = getattr(module, "mode", None)
    if mode not in TORCH_MODES:
        raise error(f"{caller} takes a torch.nn.LSTM, GRU or RNN, got {type(module).__name__}"
                    + (f" of mode {mode!r}" if mode else ""))
    return TORCH_MODES[mode]


# The passes, by name, in canonical order: the order `build_plan` runs any subset in. Each pass is a
# record in its own module of rnnplan/passes/ (what it needs to follow, whether it is step-local);
# the pass manager checks that this order keeps every pass after the ones it must follow.
PASSES: tuple[str, ...] = ("combine_gates", "pretranspose", "batch_input_gemms", "fuse_pointwise",
                           "wavefront_streams")


def check_pass_names(names: tuple[str, ...]) -> None:
    """ValueError unless every one of `names` is a pass of `PASSES` and none repeats."""
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ValueError(f"unknown pass name(s) {unknown}; known passes, in canonical order: {list(PASSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"pass names repeat in {list(names)}")


# Sizes and switches validate strictly: a bool is no size (True is not batch 1), a string no number.
Size = Annotated[int, Field(strict=True, gt=0)]
Switch = Annotated[bool, Field(strict=True)]


class RNNSpec(BaseModel):
    """A stacked recurrent network and the shape of one inference call, with PyTorch's semantics."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cell: Cell
    input_size: Size
    hidden_size: Size
    num_layers: Size
    seq_len: Size
    batch: Size
    bidirectional: Switch = False
    bias: Switch = True
    batch_first: Switch = False
    # bfloat16: ml_dtypes' NumPy dtype on the host (CuPy holds its bits as int16)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Each sequence of the batch has its own length (1..seq_len), given with every call: its outputs
    # past it are zero and its final state is the one at its last step, as for a torch PackedSequence.
    variable_lengths: Switch = False
    # LSTM projections (torch's LSTMP): h = W_hr (o * tanh(c)) of proj_size, c of hidden_size; the
    # layers above read the projected h. 0: none.
    proj_size: Annotated[int, Field(strict=True, ge=0)] = 0

    @model_validator(mode="after")
    def _projection_fits(self) -> RNNSpec:
        if self.proj_size and self.cell != "lstm":
            raise ValueError(f"proj_size={self.proj_size}: projections exist for cell='lstm' only, not {self.cell!r}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size={self.proj_size} must be smaller than hidden_size={self.hidden_size} "
                             "(as torch requires)")
        return self

    @field_validator("dtype")
    @classmethod
    def _numpy_has_it(cls, dtype: str) -> str:
        if dtype == "bfloat16":  # NumPy's bfloat16 is ml_dtypes' (importing it registers the name)
            try:
                import ml_dtypes  # noqa: F401
            except ModuleNotFoundError:
                raise ValueError("dtype='bfloat16' needs ml_dtypes (NumPy's bfloat16): pip install "
                                 "'rnnplan[bf16]'") from None
        return dtype

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The width of h, of the layer's output and of what the layer above reads."""
        return self.proj_size or self.hidden_size

    def state_size(self, state: str) -> int:
        """The width of a state: h is `output_size`, c is `hidden_size`."""
        return self.output_size if state == "h" else self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size * self.directions

    @classmethod
    def from_torch(cls, module, seq_len: int, batch: int, **overrides) -> RNNSpec:
        """The spec of a `torch.nn.LSTM` / `GRU` / `RNN` for calls of `seq_len` steps and `batch`
        sequences (its dtype from its parameters; `overrides` for any other field)."""
        cell = torch_cell(module, "RNNSpec.from_torch")
        dtype = str(next(module.parameters()).dtype).replace("torch.", "")
        fields = dict(cell=cell, input_size=module.input_size, hidden_size=module.hidden_size,
                      num_layers=module.num_layers, seq_len=seq_len, batch=batch,
                      bidirectional=module.bidirectional, bias=module.bias, batch_first=module.batch_first,
                      dtype=dtype, proj_size=getattr(module, "proj_size", 0))
        return cls(**{**fields, **overrides})

    def to_torch(self, device=None, dtype=None, state_dict=None):
        """The `torch.nn.LSTM` / `GRU` / `RNN` of this spec's network, in eval mode (`from_torch`'s
        inverse), on `device` in `dtype` (default: the spec's): with fresh weights, drawn in float32 on
        the CPU (so that one seed gives one set of weights in every dtype, on every device), or with
        `state_dict`'s (then made where they go, with no weights drawn: tens of milliseconds fewer)."""
        import torch

        kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(self.cell, torch.nn.RNN)
        extra = {"nonlinearity": self.cell[4:]} if self.cell.startswith("rnn") else {}
        extra |= {"proj_size": self.proj_size} if self.proj_size else {}
        dtype = dtype or getattr(torch, self.dtype)
        where = {} if state_dict is None else {"device": "meta", "dtype": dtype}
        module = kind(self.input_size, self.hidden_size, num_layers=self.num_layers, bias=self.bias,
                      batch_first=self.batch_first, bidirectional=self.bidirectional, **extra, **where)
        if state_dict is not None:  # storage where it goes, then the given values (no initialization)
            module = module.to_empty(device=device or "cpu")
            module.load_state_dict(state_dict)
        return module.to(device=device, dtype=dtype).eval()

    def short(self) -> str:
        """One line for summaries and logs."""
        return (f"{self.cell} {self.num_layers}x{self.hidden_size}{f' proj={self.proj_size}' if self.proj_size else ''} "
                f"in={self.input_size} "
                f"B={self.batch} T={self.seq_len}{' bidir' if self.bidirectional else ''}"
                f"{'' if self.bias else ' nobias'}{' varlen' if self.variable_lengths else ''} {self.dtype}")


# The paper's configuration (Appleyard et al. 2016, section 4): the CLI default.
PAPER_SPEC = RNNSpec(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64)


class DeviceShape(BaseModel):
    """What planning needs to know of a GPU. The planner never probes hardware: `rnnplan.build_plan`
    fills `PlanOptions.device` with the local GPU (`rnnplan.backends.describe_device()`), or a caller
    describes the GPU to plan for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sms: Size
    smem_per_block: Size  # opt-in dynamic shared memory per block, bytes
    cooperative_launch: Switch = True
    # Thread-block clusters (compute capability 9.0 and later): the most blocks one cluster may hold
    # (non-portable sizes included; 0: no clusters), and how many clusters of that size, one block
    # an SM, are resident at once (cuOccupancyMaxActiveClusters; a launch checks it again).
    cluster_blocks: Annotated[int, Field(strict=True, ge=0)] = 0
    max_clusters: Annotated[int, Field(strict=True, ge=0)] = 0


# What `lowering="persistent"` sizes its blocks for when no device is described and no GPU is found.
# Clusters: 16 blocks (non-portable), 7 resident at once at one block an SM (measured on an H200 with
# cuOccupancyMaxActiveClusters at 200 KiB of shared memory a block; 14 at 100 KiB).
H200 = DeviceShape(name="NVIDIA H200", sms=132, smem_per_block=232_448, cluster_blocks=16, max_clusters=7)


class PlanOptions(BaseModel):
    """How to plan: which passes run, how many streams, the input-GEMM chunk and the GEMM math mode.

    `passes=None` (or "all") means every pass in canonical order (`rnnplan.PASSES`); `()` (or "none")
    gives the naive plan.
    `num_streams=None` means one stream per layer and direction. `input_chunk=None` lets the planner
    choose the number of steps merged into one input GEMM for layers above the first.
    `lowering="persistent"` runs the whole recurrence as one persistent GPU kernel
    (`rnnplan.persistent`); "graph" keeps one kernel per GEMM and cell-step; "auto" (the default)
    picks persistent where it fits the device and is measured to win, else graph (always graph
    without a device, or when `passes` selects a subset). `device` describes the GPU to plan for:
    `rnnplan.build_plan` fills in the local GPU when it is None; the planner itself plans "auto"
    without a device as graph, and "persistent" without one for an H200.
    `math` applies to fp32 storage: "fp32" keeps every product in fp32 (cuBLAS without TF32, the
    persistent lowering's FFMA kernel); "tf32" lets cuBLAS use TF32 tensor cores and the persistent
    lowering its tensor-core kernel on tf32 operands (above batch 2; measured relative errors 2e-5 to
    5e-4, BENCHMARKS.md), and at batch 1-2 its FFMA kernel the hardware's fast exponentials in the cell.
    With fp16 storage `math` does not apply (every path accumulates in fp32).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    passes: tuple[Annotated[str, Field(strict=True)], ...] | None = None
    num_streams: Size | None = None
    input_chunk: Annotated[int, Field(strict=True)] | None = None
    math: Literal["fp32", "tf32"] = "fp32"
    lowering: Literal["graph", "persistent", "auto"] = "auto"
    device: DeviceShape | None = None

    @field_validator("passes", mode="before")
    @classmethod
    def _all_or_none(cls, passes):
        """"all" and "none" name every pass and none; any other string is an error, not its letters."""
        if isinstance(passes, str):
            if passes in ("all", "none"):
                return None if passes == "all" else ()
            raise ValueError(f"passes must be pass names (a list or tuple), 'all' or 'none'; got the string "
                             f"{passes!r} (known passes: {list(PASSES)})")
        return passes

    @field_validator("passes")
    @classmethod
    def _known_passes(cls, passes: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if passes is None:
            return None
        check_pass_names(passes)
        return tuple(p for p in PASSES if p in passes)  # canonical order, whatever order was given

    @field_validator("input_chunk")
    @classmethod
    def _positive_chunk(cls, chunk: int | None) -> int | None:
        if chunk is not None and chunk < 1:
            raise ValueError(f"input_chunk must be >= 1 (steps per merged input GEMM), got {chunk}")
        return chunk

    def check_against(self, spec: RNNSpec) -> None:
        """Raise ValueError for options that contradict the spec, naming the option and its range."""
        if self.input_chunk is not None and self.input_chunk > spec.seq_len:
            raise ValueError(f"input_chunk must be in 1..seq_len={spec.seq_len}, got {self.input_chunk}")
