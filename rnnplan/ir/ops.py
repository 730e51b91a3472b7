"""The pointwise operations: the one fixed table that cells, graphs, plans and every backend use.

Each op is defined once, with its interpretations side by side: its arity, its NumPy form (the
reference: float32 arrays, rows of shape (1, N) broadcast, NaN propagates as in PyTorch) and its C
form (a CUDA expression over float operands `{0}`, `{1}`, which the generated kernels paste in: the
graph lowering's fused kernels and the persistent kernels' cell update). A C form's operands are
always names, so an operand written twice is evaluated once. `FAST_EXP` is a macro each kernel
defines from its `Precision` (0 in the fused kernels; see `Precision.fast_exponentials`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Written with exp(-|x|) so that large |x| neither overflows nor loses precision.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


@dataclass(frozen=True, slots=True)
class PointwiseOp:
    name: str
    arity: int
    numpy: Callable[..., np.ndarray]
    c: str  # a C expression over the operands {0}, {1}

    def c_expr(self, *args: str) -> str:
        return self.c.format(*args)


POINTWISE_OPS: dict[str, PointwiseOp] = {
    op.name: op
    for op in (
        PointwiseOp("add", 2, np.add, "({0} + {1})"),
        PointwiseOp("mul", 2, np.multiply, "({0} * {1})"),
        # Accurate expf unless FAST_EXP: fp32 strict results must stay within 1e-5 of PyTorch.
        PointwiseOp("sigmoid", 1, _sigmoid,
                    "(FAST_EXP ? __fdividef(1.0f, 1.0f + __expf(-{0})) : 1.0f / (1.0f + expf(-{0})))"),
        PointwiseOp("tanh", 1, np.tanh,
                    "(FAST_EXP ? 1.0f - __fdividef(2.0f, 1.0f + __expf(2.0f * {0})) : tanhf({0}))"),
        # np.maximum keeps NaN, as torch does; fmaxf drops it, hence the NaN test in C.
        PointwiseOp("relu", 1, lambda a: np.maximum(a, np.float32(0)), "({0} != {0} ? {0} : fmaxf({0}, 0.0f))"),
        PointwiseOp("one_minus", 1, lambda a: np.float32(1) - a, "(1.0f - {0})"),
        # Variable lengths: `select(m, a, b)` keeps a where the step is inside a sequence (m = 1) and b
        # past its end; `masked(m, a)` is a inside, 0 past the end. Exact: no arithmetic on a or b.
        PointwiseOp("select", 3, lambda m, a, b: np.where(m != 0, a, b).astype(a.dtype, copy=False),
                    "({0} != 0.0f ? {1} : {2})"),
        PointwiseOp("masked", 2, lambda m, a: np.where(m != 0, a, np.float32(0)).astype(a.dtype, copy=False),
                    "({0} != 0.0f ? {1} : 0.0f)"),
    )
}
