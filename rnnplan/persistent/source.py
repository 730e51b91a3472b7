"""The persistent kernels' CUDA source: the static `.cu`/`.cuh` files in `persistent/cuda/`, and the
short `config.h` of `#define`s that Python writes from a `PersistentKernel` (sizes, shared-memory
offsets, switches, and the cell update derived from the cell's equations). Python decides, CUDA
computes: nothing here is kernel code but the definitions' values.

`kernel_source(r)` returns one self-contained translation unit: the kernel's `.cu` file with its
`#include "..."` lines of package files replaced by those files (each once) and `config.h` by the
generated definitions, so that NVRTC (CuPy), `nvcc` and `rnnplan kernels --out DIR` all compile the
same text. With `profile=True` the kernel also sums clock cycles per phase (`PROF` marks in the
source; `PersistentKernel.profile_offset` says where they go).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import cache
from importlib.resources import files

from rnnplan.ir.recurrence import Recurrence
from rnnplan.persistent.kernel import (
    IN_FLIGHT,
    PROFILE_SLOTS,
    THREADS,
    PersistentKernel,
    kernel_of,
)

_INCLUDE = re.compile(r'^#include "([^"]+)"[ \t]*$', re.MULTILINE)


@cache
def _package_file(name: str) -> str:
    return (files("rnnplan.persistent") / "cuda" / name).read_text()


# Fields a kernel's code does not depend on: only layer 0's cuBLAS projection reads input_size, and
# the sequence length is the kernel's argument, so that a new length compiles nothing.
NOT_IN_THE_CODE = ("input_size", "seq_len")


def kernel_name(r: Recurrence, profile: bool = False) -> str:
    """Named by every field of the Recurrence but those NOT_IN_THE_CODE (a profiled kernel: but
    input_size), so that a field added later cannot let two different kernels share a name in a
    kernel cache."""
    skip = NOT_IN_THE_CODE if not profile else ("input_size",)  # (the profile's sums go past the exchange)
    key = repr(tuple(getattr(r, f.name) for f in dataclasses.fields(Recurrence) if f.name not in skip))
    return "rnnplan_recurrent_" + hashlib.sha1(key.encode()).hexdigest()[:12] + ("_prof" if profile else "")


def _common(k: PersistentKernel, profile: bool) -> dict[str, object]:
    cell = k.cell_def
    defines: dict[str, object] = {
        "KERNEL_NAME": kernel_name(k, profile), "NTHREADS": THREADS,
        "G": k.gates, "H": k.hidden, "B": k.batch, "U": k.units_per_block, "D": k.directions,
        "L": k.num_layers, "NBC": k.blocks_per_chain, "KMAX": k.input_width,
        "R": k.h_width, "PROJ": int(bool(k.proj_size)), "PU": max(1, k.proj_rows_per_block),
        "BIAS": int(k.bias), "HAS_C": int("c" in cell.states), "PER_CHAIN": (4 if k.bias else 2) + bool(k.proj_size),
        "NSTATE": len(cell.states), "IN_FLIGHT": IN_FLIGHT, "ST_HALF": int(k.dtype == "float16"),
        "ST_BF16": int(k.dtype == "bfloat16"),
        "FAST_EXP": int(k.fast_cell), "CELL_UPDATE": " ".join(cell.c_statements()),
        "MASKED": int(k.variable_lengths),
        "PROFILE": int(profile), "PROFILE_SLOTS": PROFILE_SLOTS,
    }
    if profile:  # past the exchange, whose size follows the length: profiled kernels are per length
        defines["PROFILE_OFFSET"] = k.profile_offset
    defines |= {f"OFF_{name.upper()}": at for name, at in k.smem_layout().items() if name != "end"}
    return defines


def _ffma(k: PersistentKernel) -> dict[str, object]:
    vw, held = (4 if k.vector_dot else 1), k.weights_in_registers
    return {
        "BT": min(k.batch, 8), "RW": k.ffma_rows_per_warp, "NIT": k.ffma_row_rounds, "XPF": k.xproj_prefetch,
        "VEC4": int(vw == 4), "SPLIT_SUMS": int(not k.cell_def.sums_only), "WREG": int(held),
        "KIN_ABOVE": max(1, k.input_width), "MERGED_WAIT": int(k.merged_wait),
        "KHR": -(-k.h_width // (32 * vw)) * vw if held else 1,  # registers a row of W_hh takes (WREG)
        "KXR": max(1, -(-k.input_width // (32 * vw)) * vw) if held else 1,  # ... a row of W_ih
    }


def _mma(k: PersistentKernel) -> dict[str, object]:
    khp, kxp = k.mma_k
    held = k.weights_in_registers
    return {
        "BT": k.batch_tile, "RP": k.mma_rows, "GS": k.sum_stride, "KHP": khp, "KXP": kxp, "KSTEP": k.mma_kstep,
        "TF32": int(k.precision.on_tensor_cores().operands == "tf32"), "VEC": 16 // k.element_bytes,
        "KS": k.stage_stride, "XSTRIDE": k.exchange_stride,
        "NG": k.mma_split[0], "KSPLIT": k.mma_split[1], "READS_HPREV": int(k.cell_def.reads_h_prev),
        "FILL": -(-k.batch_tile * k.mma_rows // THREADS),  # gate sums each thread fills
        "CHUNK": 16 // k.element_bytes if k.h_width * k.element_bytes % 16 == 0 else 1,  # elements a staging copy
        "HSTRIDE": max(1, k.cell_stride),
        # PROJ: the projection on mma (m-tiles, n-tiles, k-slices; its rows' stride in shared memory)
        "PMT": max(1, k.proj_mma_split[0]), "PNT": max(1, k.proj_mma_split[1]), "PKSL": max(1, k.proj_mma_split[2]),
        "PSTRIDE": max(1, k.proj_stride),
        "REG_A": int(held), "XPRE": int(k.prefetches_xproj), "NPARTS": k.mma_parts, "CLUSTER": int(k.cluster),
        "KREG": k.register_ksteps if held else 1, "MG": k.mma_mgroup, "NC": k.mma_nchunk if held else 1,
        "NACC": k.mma_accumulator_sets if held else 1,
    }


def config_header(r: Recurrence, profile: bool = False) -> str:
    """`config.h`: the `#define`s that parameterize the kernel for `r`."""
    k = kernel_of(r)
    defines = _common(k, profile) | (_mma(k) if k.batch_tile else _ffma(k))
    return "".join(f"#define {name} {value}\n" for name, value in defines.items())


def _amalgamate(name: str, config: str, seen: set[str]) -> str:
    def include(m: re.Match) -> str:
        inner = m.group(1)
        if inner in seen:
            return ""
        seen.add(inner)
        return config if inner == "config.h" else _amalgamate(inner, config, seen)
    return _INCLUDE.sub(include, _package_file(name))


def kernel_source(r: Recurrence, profile: bool = False) -> str:
    """The persistent kernel for `r` as one translation unit: tensor-core mma when `r.batch_tile`
    is set, else FFMA."""
    return _amalgamate("mma.cu" if r.batch_tile else "ffma.cu", config_header(r, profile), set())
