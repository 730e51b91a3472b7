"""CUDA C source for pointwise and fused steps, generated from their expressions.

One kernel per distinct (expression, which inputs broadcast a row, dtype, vector width). Every
operand is a row-major view with its own row stride (`ld`), so a kernel reads gate columns straight
out of a combined GEMM result and writes h straight into the layer's output sequence. Math is fp32
whatever the storage dtype; with vector width 4 each thread moves 4 neighbouring elements per
operand in one 16-byte (fp32) or 8-byte (fp16) access.

Pure Python: no CuPy needed, so `rnnplan kernels --out DIR` and the nvcc compile test run anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rnnplan.scheduler.plan import Plan, Step

# One C expression per pointwise op of rnnplan.ir.POINTWISE_OPS (a test checks both tables agree).
C_OPS = {
    "add": "({0} + {1})",
    "mul": "({0} * {1})",
    # expf, not __expf: fp32 strict results must stay within 1e-5 of PyTorch.
    "sigmoid": "(1.0f / (1.0f + expf(-{0})))",
    "tanh": "tanhf({0})",
    "relu": "({0} != {0} ? {0} : fmaxf({0}, 0.0f))",  # fmaxf drops NaN; PyTorch keeps it
    "one_minus": "(1.0f - {0})",
}

CTYPE = {"float32": "float", "float16": "__half"}
THREADS = 256

PRELUDE = r"""#include <cuda_fp16.h>

// Loads and stores of V neighbouring elements, converted to and from fp32.
template <int V> __device__ __forceinline__ void load(const float* p, float* v) {
    if constexpr (V == 4) { float4 q = *reinterpret_cast<const float4*>(p); v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w; }
    else { v[0] = *p; }
}
template <int V> __device__ __forceinline__ void store(float* p, const float* v) {
    if constexpr (V == 4) { *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]); }
    else { *p = v[0]; }
}
template <int V> __device__ __forceinline__ void load(const __half* p, float* v) {
    if constexpr (V == 4) {
        uint2 q = *reinterpret_cast<const uint2*>(p);
        float2 a = __half22float2(*reinterpret_cast<__half2*>(&q.x));
        float2 b = __half22float2(*reinterpret_cast<__half2*>(&q.y));
        v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
    } else { v[0] = __half2float(*p); }
}
template <int V> __device__ __forceinline__ void store(__half* p, const float* v) {
    if constexpr (V == 4) {
        __half2 a = __floats2half2_rn(v[0], v[1]), b = __floats2half2_rn(v[2], v[3]);
        uint2 q; q.x = *reinterpret_cast<unsigned int*>(&a); q.y = *reinterpret_cast<unsigned int*>(&b);
        *reinterpret_cast<uint2*>(p) = q;
    } else { *p = __float2half_rn(v[0]); }
}
"""


@dataclass(frozen=True, slots=True)
class KernelKey:
    """What makes two steps share a compiled kernel."""

    expr: tuple[tuple[str, str, tuple[str, ...]], ...]
    expr_outputs: tuple[str, ...]
    broadcast: tuple[bool, ...]  # per input: one row read by every output row (a bias)
    n_outputs: int
    dtype: str
    vec: int

    @property
    def name(self) -> str:
        digest = hashlib.sha1(repr(self).encode()).hexdigest()[:12]
        return f"rnnplan_pw_{digest}"


def step_expression(step: Step) -> tuple[tuple, tuple[str, ...]]:
    """A pointwise step as a one-instruction expression, a fused step as its own."""
    if step.kind == "pointwise":
        args = tuple(f"in{i}" for i in range(len(step.inputs)))
        return (("t0", step.op, args),), ("t0",)
    return tuple((e.out, e.op, tuple(e.args)) for e in step.expr), tuple(step.expr_outputs)


def vector_width(step: Step) -> int:
    """4 when every operand's columns, row stride and start allow aligned 4-element accesses."""
    views = step.inputs + step.outputs
    ok = step.outputs[0].cols % 4 == 0 and all(
        v.offset % 4 == 0 and (v.ld % 4 == 0 or v.rows == 1) and v.cols % 4 == 0 for v in views)
    return 4 if ok else 1


def kernel_key(step: Step, dtype: str) -> KernelKey:
    expr, outs = step_expression(step)
    rows = step.outputs[0].rows
    return KernelKey(expr, outs, tuple(v.rows == 1 and rows > 1 for v in step.inputs), len(step.outputs),
                     dtype, vector_width(step))


def kernel_source(key: KernelKey) -> str:
    t = CTYPE[key.dtype]
    params = [f"const {t}* __restrict__ in{i}, const int ld_in{i}" for i in range(len(key.broadcast))]
    params += [f"{t}* __restrict__ out{i}, const int ld_out{i}" for i in range(key.n_outputs)]
    params += ["const int rows", "const int cols"]
    v = key.vec
    loads = [f"        float a{i}[{v}]; load<{v}>(in{i} + {'0' if b else 'r * (long long)ld_in' + str(i)} + c, a{i});"
             for i, b in enumerate(key.broadcast)]
    body = [f"            const float in{i} = a{i}[j];" for i in range(len(key.broadcast))]
    body += [f"            const float {out} = {C_OPS[op].format(*args)};" for out, op, args in key.expr]
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
    from rnnplan.backends.persistent_kernel import kernel_name, recurrent_source

    found = {}
    for s in plan.steps:
        if s.kind == "recurrent":
            found.setdefault(kernel_name(s.recurrence), recurrent_source(s.recurrence))
        elif s.kind != "gemm":
            key = kernel_key(s, plan.spec.dtype)
            found.setdefault(key.name, kernel_source(key))
    return found


def launch_grid(rows: int, cols: int, vec: int, max_blocks: int = 132 * 16) -> int:
    work = rows * (cols // vec)
    return max(1, min(max_blocks, -(-work // THREADS)))
