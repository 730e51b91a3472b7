"""Memory, checked before it is taken: how much a plan or a set of weights needs, what the machine
has, and an error that says both and which spec fields drive the need."""

from __future__ import annotations

import os
from math import prod

from rnnplan.ir.build import param_shapes
from rnnplan.precision import Precision


class NotEnoughMemory(MemoryError):
    """A plan or its weights need more memory than is available; the message gives the bytes needed
    and available, and the spec fields that drive the need. Raised before anything is allocated."""


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def available_host_bytes() -> int | None:
    """The memory this machine can still give a process (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weight_count(spec) -> int:
    return sum(prod(s) for s in param_shapes(spec).values())


def plan_breakdown(plan) -> dict[str, int]:
    """Bytes of a plan's buffers by what drives their size: sequences (x and every layer's output,
    seq_len x batch rows), temporaries (batch rows, or chunks of steps), weights (hidden_size)."""
    itemsize = Precision.of(plan.spec.dtype).element_bytes
    parts = {"sequences": 0, "temporaries": 0, "weights": 0, "states": 0}
    kind = {"input": "sequences", "seq": "sequences", "output": "sequences", "temp": "temporaries",
            "param": "weights", "state": "states"}
    for b in plan.buffers:
        parts[kind[b.role]] += b.size * itemsize
    return parts


def drivers(spec, part: str) -> str:
    """The spec fields that drive one part of the memory, with their values."""
    if part == "sequences":
        return (f"seq_len={spec.seq_len} x batch={spec.batch} x (input_size={spec.input_size} + num_layers="
                f"{spec.num_layers} x directions={spec.directions} x hidden_size={spec.hidden_size})")
    if part == "weights":
        return (f"num_layers={spec.num_layers} x directions={spec.directions} x gates x hidden_size="
                f"{spec.hidden_size} x (input_size={spec.input_size} + hidden_size={spec.hidden_size})")
    return (f"batch={spec.batch} x hidden_size={spec.hidden_size} (x seq_len={spec.seq_len} for layer 0's input "
            "projection, x the input chunk above it)")


def check_fits(what: str, need: int, available: int | None, where: str, spec, parts: dict[str, int],
               error: type[NotEnoughMemory] = NotEnoughMemory) -> None:
    """Raise `error` when `need` bytes exceed `available` (None: unknown, not checked)."""
    if available is None or need <= available:
        return
    largest = max((k for k in parts if k in ("sequences", "temporaries", "weights")), key=parts.get)
    detail = ", ".join(f"{k} {human(v)}" for k, v in parts.items() if v)
    raise error(f"{what} needs {human(need)} of {where} memory ({detail}), and {human(available)} is "
                          f"available; the {largest} grow with {drivers(spec, largest)}")
