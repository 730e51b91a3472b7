"""`Plan`: what a backend executes, as pydantic models that serialize to versioned JSON.

A plan is a list of steps in host issue order. Each step is one kernel (a GEMM, a pointwise op or a
fused pointwise expression) on one stream; before it the stream waits on `waits` (event ids), after
it the stream records `record`. Operands are `BufferView`s: a rectangle (rows x cols, row stride
`ld`, starting `offset` elements in) of one buffer of the buffer table. `deps` lists the steps whose
outputs the step reads, so that `verify_plan` can prove every dependency is ordered.

A pure schema: checking (`lowering/verify_plan.py`, `rnnplan.load_plan`), summarizing and drawing
(`rnnplan.viz`) are functions of a Plan, not methods, so that the schema depends on nothing else.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from rnnplan.ir.node import Instr
from rnnplan.ir.recurrence import Recurrence
from rnnplan.spec import PlanOptions, RNNSpec

SCHEMA_VERSION = 1

BufferRole = Literal["input", "state", "param", "seq", "output", "temp"]
HOST_WRITTEN: frozenset[str] = frozenset({"input", "state", "param"})  # filled before steps run
DEVICE_WRITTEN: frozenset[str] = frozenset({"seq", "output", "temp"})  # written by the steps


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BufferView(NamedTuple):
    """A rows x cols rectangle of one buffer, row stride `ld`, starting `offset` elements in.

    A NamedTuple rather than a model: plans hold one per operand (10^5 and more for long
    sequences), and pydantic validates and serializes it all the same (as a 5-element array)."""

    buffer: int
    offset: int
    rows: int
    cols: int
    ld: int

    @property
    def end(self) -> int:
        """One past the last element touched."""
        return self.offset + (self.rows - 1) * self.ld + self.cols


class Buffer(_Frozen):
    """A flat device allocation of `size` elements of the spec's dtype.

    For params, `source` names the PyTorch tensor and `transform` the one-time layout change;
    `shape` is the 2-D layout the buffer holds (after the transform). Temp buffers are shared by
    values whose lifetimes do not overlap; `values` lists them (for dumps).
    """

    id: int
    name: str
    role: BufferRole
    size: int
    shape: tuple[int, int]
    source: str | None = None
    transform: Literal["none", "transpose"] = "none"
    values: int = 1


class GemmParams(_Frozen):
    m: int
    n: int
    k: int
    weight_layout: Literal["nk", "kn"]


FusedInstr = Instr  # one operation of a fused step's expression: the IR's, carried over as it is


class Step(_Frozen):
    name: str
    kind: Literal["gemm", "pointwise", "fused", "recurrent"]
    stream: int
    level: int
    inputs: tuple[BufferView, ...]
    outputs: tuple[BufferView, ...]
    deps: tuple[int, ...] = ()
    waits: tuple[int, ...] = ()
    record: int | None = None
    op: str | None = None
    gemm: GemmParams | None = None
    expr: tuple[FusedInstr, ...] = ()
    expr_outputs: tuple[str, ...] = ()
    recurrence: Recurrence | None = None  # the IR's parameters, serialized field by field
    layer: int | None = None
    direction: int | None = None
    step: int | None = None

    @property
    def flops(self) -> int:
        if self.gemm is not None:
            return 2 * self.gemm.m * self.gemm.n * self.gemm.k
        if self.recurrence is not None:  # the recurrent GEMMs, the upper layers' input GEMMs, projections
            r = self.recurrence
            R = r.h_width
            per_step = sum(r.gates * r.hidden * (R + (r.directions * R if layer else 0)) + r.proj_size * r.hidden
                           for layer, _ in r.chains)
            return 2 * r.seq_len * r.batch * per_step
        o = self.outputs[0]
        return o.rows * o.cols * max(1, len(self.expr))


class PlanStats(_Frozen):
    nodes: int
    kernels: int
    gemms: int
    pointwise: int
    fused: int
    events: int
    waits: int
    streams: int
    flops: int
    critical_path: int
    peak_bytes: int
    bytes_without_reuse: int


class Plan(_Frozen):
    schema_version: Literal[1] = SCHEMA_VERSION
    spec: RNNSpec
    options: PlanOptions
    passes: tuple[str, ...]
    lowering: Literal["graph", "persistent"] = "graph"
    lowering_reason: str = ""
    num_streams: int
    num_events: int
    buffers: tuple[Buffer, ...]
    steps: tuple[Step, ...]
    inputs: dict[str, BufferView]
    outputs: dict[str, tuple[BufferView, ...]]
    stats: PlanStats

    def to_json(self, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent)

    def __repr__(self) -> str:
        s = self.stats
        return (f"<Plan {self.spec.short()} passes={list(self.passes)} kernels={s.kernels} "
                f"streams={s.streams} events={s.events}>")
