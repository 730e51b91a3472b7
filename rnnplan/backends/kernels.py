"""CUDA C source for pointwise and fused steps, generated from their expressions and the ops' C forms
(`ir/ops.py`), after the shared loads and stores of `cuda/pointwise.cuh`.

One kernel per distinct (expression, which inputs broadcast a row or a column, dtype, vector
width). Every
operand is a row-major view with its own row stride (`ld`), so a kernel reads gate columns straight
out of a combined GEMM result and writes h straight into the layer's output sequence. Math is fp32
whatever the storage dtype; with vector width 4 each thread moves 4 neighbouring elements per
operand in one 16-byte (fp32) or 8-byte (fp16, bf16) access.

Pure Python: no CuPy needed, so `rnnplan kernels --out DIR` and the nvcc compile test run anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

from rnnplan.ir.ops import POINTWISE_OPS
from rnnplan.lowering.plan import Plan, Step
from rnnplan.persistent.source import kernel_name
from rnnplan.persistent.source import kernel_source as persistent_source

CTYPE = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
THREADS = 256
PRELUDE = (files("rnnplan.backends") / "cuda" / "pointwise.cuh").read_text()


@dataclass(frozen=True, slots=True)
class KernelKey:
    """What makes two steps share a compiled kernel."""

    expr: tuple[tuple[str, str, tuple[str, ...]], ...]
    expr_outputs: tuple[str, ...]
    broadcast: tuple[bool, ...]  # per input: one row read by every output row (a bias)
    n_outputs: int
    dtype: str
    vec: int
    column: tuple[bool, ...] = ()  # per input: one column read by every output column (a mask)

    @property
    def name(self) -> str:
        text = repr(self)
        if not self.column:  # named as before column broadcasts existed: the same kernels keep their names
            text = text.replace(", column=()", "")
        return f"rnnplan_pw_{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def step_expression(step: Step) -> tuple[tuple, tuple[str, ...]]:
    """A pointwise step as a one-instruction expression, a fused step as its own."""
    if step.kind == "pointwise":
        args = tuple(f"in{i}" for i in range(len(step.inputs)))
        return (("t0", step.op, args),), ("t0",)
    return tuple((e.out, e.op, tuple(e.args)) for e in step.expr), tuple(step.expr_outputs)


def _columns(step: Step) -> tuple[bool, ...]:
    cols = step.outputs[0].cols
    return tuple(v.cols == 1 and cols > 1 for v in step.inputs)


def vector_width(step: Step) -> int:
    """4 when every operand's columns, row stride and start allow aligned 4-element accesses (a
    column read by every output column is loaded as one value)."""
    views = [v for v, col in zip(step.inputs, _columns(step)) if not col] + list(step.outputs)
    ok = step.outputs[0].cols % 4 == 0 and all(
        v.offset % 4 == 0 and (v.ld % 4 == 0 or v.rows == 1) and v.cols % 4 == 0 for v in views)
    return 4 if ok else 1


def kernel_key(step: Step, dtype: str) -> KernelKey:
    expr, outs = step_expression(step)
    rows = step.outputs[0].rows
    column = _columns(step)
    return KernelKey(expr, outs, tuple(v.rows == 1 and rows > 1 for v in step.inputs), len(step.outputs),
                     dtype, vector_width(step), column if any(column) else ())


def kernel_source(key: KernelKey) -> str:
    t = CTYPE[key.dtype]
    params = [f"const {t}* __restrict__ in{i}, const int ld_in{i}" for i in range(len(key.broadcast))]
    params += [f"{t}* __restrict__ out{i}, const int ld_out{i}" for i in range(key.n_outputs)]
    params += ["const int rows", "const int cols"]
    v = key.vec
    column = key.column or (False,) * len(key.broadcast)
    loads = [f"        float a{i}[{v}]; load<1>(in{i} + r * (long long)ld_in{i}, a{i}); "
             f"for (int j = 1; j < {v}; ++j) a{i}[j] = a{i}[0];" if col else
             f"        float a{i}[{v}]; load<{v}>(in{i} + {'0' if b else 'r * (long long)ld_in' + str(i)} + c, a{i});"
             for i, (b, col) in enumerate(zip(key.broadcast, column))]
    body = [f"            const float in{i} = a{i}[j];" for i in range(len(key.broadcast))]
    body += [f"            const float {out} = {POINTWISE_OPS[op].c_expr(*args)};" for out, op, args in key.expr]
    body += [f"            o{i}[j] = {name};" for i, name in enumerate(key.expr_outputs)]
    stores = [f"        store<{v}>(out{i} + r * (long long)ld_out{i} + c, o{i});" for i in range(key.n_outputs)]
    outs = " ".join(f"float o{i}[{v}];" for i in range(key.n_outputs))
    signature = ",\n    ".join(params)
    return f"""{PRELUDE}
// {len(key.expr)} fused operation(s): {'; '.join(f'{o}={op}({",".join(a)})' for o, op, a in key.expr)}
extern "C" __global__ void __launch_bounds__({THREADS}) {key.name}(
    {signature})
{{
    const long long groups = cols / {v};
    const long long total = (long long)rows * groups;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {{
        const long long r = idx / groups;
        const long long c = (idx % groups) * {v};
{chr(10).join(loads)}
        {outs}
        #pragma unroll
        for (int j = 0; j < {v}; ++j) {{
{chr(10).join(body)}
        }}
{chr(10).join(stores)}
    }}
}}
"""


def plan_kernels(plan: Plan) -> dict[str, str]:
    """name -> CUDA source of every distinct kernel the plan needs: its pointwise and fused steps,
    and the persistent kernel of a recurrent step. GEMMs are cuBLAS calls and have no source."""
    found = {}
    for s in plan.steps:
        if s.kind == "recurrent":
            found.setdefault(kernel_name(s.recurrence), persistent_source(s.recurrence))
        elif s.kind != "gemm":
            key = kernel_key(s, plan.spec.dtype)
            found.setdefault(key.name, kernel_source(key))
    return found


def launch_grid(rows: int, cols: int, vec: int, max_blocks: int = 132 * 16) -> int:
    work = rows * (cols // vec)
    return max(1, min(max_blocks, -(-work // THREADS)))


def compiled_pointwise(cp, device_id: int, step: Step, dtype: str, cache: dict):
    """(the CuPy RawKernel of a pointwise or fused step, its vector width), compiled once per device
    and kernel into `cache` ((device, kernel name) -> kernel)."""
    key = kernel_key(step, dtype)
    if (device_id, key.name) not in cache:
        cache[(device_id, key.name)] = cp.RawKernel(kernel_source(key), key.name, options=("-std=c++17",))
    return cache[(device_id, key.name)], key.vec
