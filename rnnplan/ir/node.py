"""IR data: regions, values, nodes and the fixed table of pointwise operations.

Every value is a 2-D matrix (rows, cols). A value either owns storage of its own (`region=None`: a
temporary that lowering gives a buffer) or lives in a rectangle of a named storage (`Region`): the
input sequence `x`, the initial states `h0`/`c0`, a weight tensor, a layer's output sequence `y{l}`,
or another value (a gate's columns of a combined GEMM's output). Nodes of kind `view` produce such
values without computing anything: they are the input slices, state slices, weight-gate slices and
the time chunks that batched GEMMs read; their inputs are the values that cover the rectangles, so
that the DAG carries exactly the dependencies of the data they expose. A view may expose several
rectangles (the gate columns of one GEMM's output: one node, a value per gate), each covered by
the inputs that live in its storage.

Nodes are immutable: passes build new nodes (`node._replace(...)`), never mutate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from rnnplan.ir.recurrence import Recurrence

NodeKind = Literal["input", "state", "param", "view", "gemm", "pointwise", "fused", "recurrent", "output"]
KERNEL_KINDS = frozenset({"gemm", "pointwise", "fused", "recurrent"})  # kinds that launch work on a device


class Region(NamedTuple):
    """A rectangle rows[0]:rows[1], cols[0]:cols[1] of the storage named `storage`.

    Region and Value are NamedTuples, as Node is: immutable all the same, and made twice as fast,
    which matters when planning makes one per node of a long sequence's graph."""

    storage: str
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows[1] - self.rows[0], self.cols[1] - self.cols[0])

    def __str__(self) -> str:
        return f"{self.storage}[{self.rows[0]}:{self.rows[1]},{self.cols[0]}:{self.cols[1]}]"


class Value(NamedTuple):
    name: str
    shape: tuple[int, int]
    region: Region | None = None  # None: the value owns a temporary storage of its own


@dataclass(frozen=True, slots=True)
class Gemm:
    """out (M, N) = A (M, K) @ W^T, W stored (N, K) ("nk", PyTorch's layout) or (K, N) ("kn")."""

    m: int
    n: int
    k: int
    weight_layout: Literal["nk", "kn"] = "nk"

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


class Instr(NamedTuple):
    """One operation of a fused expression: `out = op(*args)`; args name node inputs or earlier outs.

    A NamedTuple so that plans carry the IR's expressions as they are (`Step.expr`), unconverted."""

    out: str
    op: str
    args: tuple[str, ...]


class Node(NamedTuple):
    """One node of the unrolled network.

    `inputs` are value names (in operand order); `outputs` the values it defines. `op` is the
    pointwise operation name (kind pointwise, see `ir/ops.py`), `gemm` the GEMM shape (kind gemm), `expr` the fused
    expression (kind fused: the i-th input is called `in{i}`; outputs map to instruction outs by
    `expr_outputs`); `recurrence` the parameters of a whole-network recurrent kernel (kind
    recurrent, see `ir/recurrence.py`). `source` names the tensor a param/input/state node stands for
    and `transform` the one-time change of layout applied when it is loaded. Names are made by
    `ir/names.py`. `layer`, `direction`, `step` (processing
    order), `time` (index into the sequence) and `gate` place the node in the network; `level` and
    `stream` are set by scheduling.

    A NamedTuple rather than a frozen dataclass: equally immutable (passes make new nodes with
    `node._replace(...)`), but built about 3x faster, which matters when planning creates
    millions of nodes (see BENCHMARKS.md, planner).
    """

    name: str
    kind: NodeKind
    inputs: tuple[str, ...] = ()
    outputs: tuple[Value, ...] = ()
    op: str | None = None
    gemm: Gemm | None = None
    expr: tuple[Instr, ...] = ()
    expr_outputs: tuple[str, ...] = ()
    recurrence: Recurrence | None = None
    source: str | None = None
    transform: Literal["none", "transpose"] = "none"
    role: str = ""
    layer: int | None = None
    direction: int | None = None
    step: int | None = None
    time: int | None = None
    gate: str | None = None
    level: int | None = None
    stream: int | None = None
    extra: tuple[tuple[str, object], ...] = ()

    def scheduled(self, level: int | None, stream: int | None) -> Node:
        """This node with a wavefront level and a stream (built as a tuple: 3x faster than
        `_replace`, and scheduling does it for every node)."""
        return tuple.__new__(Node, (*self[:_LEVEL], level, stream, *self[_LEVEL + 2:]))

    @property
    def is_kernel(self) -> bool:
        return self.kind in KERNEL_KINDS

    @property
    def cell_step(self) -> tuple[int, int, int] | None:
        """(layer, direction, step) when the node belongs to one cell-step."""
        if self.layer is None or self.direction is None or self.step is None:
            return None
        return (self.layer, self.direction, self.step)


_LEVEL = Node._fields.index("level")
assert Node._fields[_LEVEL:_LEVEL + 2] == ("level", "stream")
