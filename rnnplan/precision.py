"""Precision, decided once: what a plan stores, what its products multiply, what they accumulate in,
and whether exponentials may use the hardware's fast approximation. Read by cuBLAS calls, the cost
model and the persistent kernels; nothing else decides it.

Two inputs decide it: the spec's storage dtype and `PlanOptions.math`. fp16 (bf16) storage multiplies
fp16 (bf16) operands (cuBLAS and tensor cores) and accumulates in fp32 whatever `math` says; fp32 storage
multiplies in fp32 with `math="fp32"`, or lets tensor cores round operands to tf32 with "tf32".
Elementwise math (activations, the state update) is fp32 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Storage = Literal["float32", "float16", "bfloat16"]
Math = Literal["fp32", "tf32"]
Operands = Literal["fp32", "tf32", "fp16", "bf16"]
HALF_STORAGE = {"float16": "fp16", "bfloat16": "bf16"}  # 2-byte storages and the operands they multiply

# Dense GEMM ceilings measured on the H200 (ANCHORS.md), TFLOP/s, by operand type (bf16: fp16's rate,
# as Hopper's tensor cores run both at one rate; not measured here).
GEMM_TFLOPS: dict[str, float] = {"fp32": 51.0, "tf32": 398.0, "fp16": 751.0, "bf16": 751.0}


@dataclass(frozen=True, slots=True)
class Precision:
    storage: Storage
    math: Math = "fp32"

    @classmethod
    def of(cls, dtype: str, math: str = "fp32") -> Precision:
        return cls(dtype, math)  # type: ignore[arg-type]

    @property
    def element_bytes(self) -> int:
        """Bytes per stored value (weights, activations, published h)."""
        return 2 if self.storage in HALF_STORAGE else 4

    @property
    def tensor_cores(self) -> bool:
        """May products run on tensor cores: 2-byte storage always, fp32 storage with tf32 math."""
        return self.storage in HALF_STORAGE or self.math == "tf32"

    @property
    def operands(self) -> Operands:
        """What GEMMs and mma multiply: fp16 (bf16) with fp16 (bf16) storage, tf32 or fp32 with fp32."""
        if self.storage in HALF_STORAGE:
            return HALF_STORAGE[self.storage]  # type: ignore[return-value]
        return "tf32" if self.math == "tf32" else "fp32"

    @property
    def accumulate(self) -> Literal["fp32"]:
        """Every product accumulates in fp32 (cuBLAS compute type 32F, mma's fp32 accumulators)."""
        return "fp32"

    @property
    def fast_exponentials(self) -> bool:
        """The persistent kernel's cell may take exponentials from the hardware ex2 (error about 1e-7)
        where precision is already reduced to 2^-11 or less: 2-byte storage, or tf32 products. (The graph
        lowering's fused kernels keep the accurate library functions in every precision.)"""
        return self.storage in HALF_STORAGE or self.math == "tf32"

    @property
    def cublas_compute(self) -> Literal["32F", "32F_FAST_TF32"]:
        """cuBLAS's compute type: fp32 accumulation, with tf32 operands only when math allows it."""
        return "32F_FAST_TF32" if self.operands == "tf32" else "32F"

    @property
    def gemm_tflops(self) -> float:
        """The measured dense ceiling for these operands (the cost model's GEMM rate)."""
        return GEMM_TFLOPS[self.operands]

    def on_tensor_cores(self) -> Precision:
        """This precision as tensor cores run it: fp32 storage there means tf32 operands."""
        return Precision(self.storage, "tf32") if self.storage == "float32" else self
