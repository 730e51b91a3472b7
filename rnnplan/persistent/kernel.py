"""The persistent kernel's configuration, as one object: `PersistentKernel`, a `Recurrence` (the IR's
payload of a recurrent node) read by the kernel. It owns everything that follows from the kernel's
choices: work split (FFMA rows per warp, mma tiles and k-split), register budgets, the shared-memory
layout, the exchange buffer through which blocks hand h to each other, and `fit(device)`, which says
whether the kernel fits a device and why. The planner asks it (`persistent/select.py`), the source
writer turns it into `#define`s (`persistent/source.py`), the CuPy backend launches by it.

Two kernels share the layout code (CUDA in `persistent/cuda/`):
- FFMA (`batch_tile == 0`): fp32 dot products by warps, weights in the storage dtype in shared
  memory or as fp32 in registers, h handed over as tagged 8-byte words; with LSTM projections, W_hr's
  rows (`proj_rows_per_block` a block) in shared memory and a second hand-off a step (the cell's h to
  the projection);
- tensor cores (`batch_tile > 0`): mma.sync on fp16 operands (fp16 storage) or tf32 operands (fp32
  storage), weights as A fragments in shared memory or registers, h handed over in the storage type
  with one counter per chain and step; with projections, W_hr's rows in shared memory and the
  projection on mma too (`proj_mma_split`), the cell's h handed over with counters of its own; or
  (`cluster`) each chain's blocks in one thread-block cluster, h through distributed shared memory.
"""

from __future__ import annotations

import dataclasses
import functools
from math import prod
from typing import NamedTuple

from rnnplan.ir.recurrence import Recurrence
from rnnplan.spec import DeviceShape

KERNEL_WARPS = 8  # warps per block of the persistent kernels
THREADS = 32 * KERNEL_WARPS
# Registers per thread for weights held in registers and the accumulators, of the 255 a thread of a
# 256-thread block may use; checked with `nvcc -Xptxas -v` (no spills) on the configurations in tests.
REGISTER_BUDGET = 168
# The FFMA kernel needs fewer registers besides (no B fragments or mma addresses): 192 held (128 weights
# and 64 accumulators at LSTM 1x1024 batch 8) compiled to 245-249 registers a thread, no spills.
FFMA_REGISTER_BUDGET = 192
IN_FLIGHT = 8  # global loads a thread issues before it waits on the first
XPF_MAX = 8  # FFMA kernel: prefetch layer 0's input projection into registers when it needs at most this many a thread
PROFILE_SLOTS = 11  # profiling, 8-byte words a block: 8 clock sums (phases), 3 global-timer stamps (persistent.cuh)


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def _round_up(n: int, multiple: int) -> int:
    return _ceil_div(n, multiple) * multiple


class Fit(NamedTuple):
    """Whether a kernel fits a device, and why (or why not), in words."""

    ok: bool
    why: str


@dataclasses.dataclass(frozen=True, slots=True)
class PersistentKernel(Recurrence):
    """A Recurrence as the persistent kernel sees it (`kernel_of(r)`); no fields of its own."""

    @property
    def recurrence(self) -> Recurrence:
        return Recurrence(*(getattr(self, f.name) for f in dataclasses.fields(Recurrence)))

    @property
    def fast_cell(self) -> bool:
        """The cell's exponentials by the hardware ex2 rather than the accurate library functions
        (`Precision.fast_exponentials`)."""
        return self.precision.fast_exponentials

    @property
    def blocks_per_chain(self) -> int:
        return _ceil_div(self.hidden, self.units_per_block)

    @property
    def blocks(self) -> int:
        """Blocks of the persistent kernel: every chain's hidden units, `units_per_block` a block."""
        return len(self.chains) * self.blocks_per_chain

    @property
    def input_width(self) -> int:
        """Widest layer input the kernel stages (0 for one layer: layer 0's projection is cuBLAS's)."""
        return self.directions * self.h_width if self.num_layers > 1 else 0

    @property
    def proj_rows_per_block(self) -> int:
        """With projections (either kernel): rows of W_hr each block of a chain holds and computes (the
        chain's proj_size rows over its blocks), 0 without."""
        return _ceil_div(self.proj_size, self.blocks_per_chain) if self.proj_size else 0

    # ---- the tensor-core kernel's projection: W_hr (this block's rows) @ the cell's h, on mma
    @property
    def proj_stride(self) -> int:
        """Tensor-core kernel with projections: elements per row of W_hr and of the staged cell h in
        shared memory: H padded to the mma's K, plus 16 bytes, so that the 8 rows an mma operand load
        reads start 4 banks apart (conflict-free, as `stage_stride`)."""
        return _round_up(self.hidden, self.mma_kstep) + 16 // self.element_bytes if self.proj_size else 0

    @property
    def proj_mma_split(self) -> tuple[int, int, int]:
        """Tensor-core kernel with projections: (m-tiles of 16 W_hr rows, n-tiles of 8 batch rows,
        k-slices): the projection's work, one (m-tile, n-tile, k-slice) job a warp, the reduction split
        into enough slices to give every warp a job (their partial sums added through shared memory),
        at most one slice a k-step."""
        if not self.proj_size:
            return 0, 0, 0
        mt, nt = _ceil_div(self.proj_rows_per_block, 16), _ceil_div(self.batch, 8)
        return mt, nt, max(1, min(KERNEL_WARPS // (mt * nt), _ceil_div(self.hidden, self.mma_kstep)))

    # ---- shared memory: one definition of each kernel's layout, read by the fit check, the launch
    # and the generated source (`#define OFF_<ARRAY>`, persistent/source.py).

    @property
    def element_bytes(self) -> int:
        """Bytes per stored value (weights, staged and published h): 2 for fp16, 4 for fp32."""
        return self.precision.element_bytes

    @property
    def mma_kstep(self) -> int:
        """The mma's K: 16 for fp16 operands (m16n8k16), 8 for tf32 (m16n8k8); either way one k-step of
        a staged row is 32 bytes, and an A fragment 4 registers a lane."""
        return 32 // self.element_bytes

    @property
    def mma_rows(self) -> int:
        """The block's weight rows (gates x units) padded to the mma's M of 16."""
        return _round_up(self.gates * self.units_per_block, 16)

    @property
    def mma_k(self) -> tuple[int, int]:
        """(recurrent, layer-input) reduction lengths padded to the mma's K (`mma_kstep`): h's width
        (proj_size with projections) and the layer input's."""
        return _round_up(self.h_width, self.mma_kstep), _round_up(self.input_width, self.mma_kstep)

    @property
    def mma_split(self) -> tuple[int, int]:
        """(n_groups, k_split): how the tensor-core kernel's KERNEL_WARPS warps share a batch tile.
        Each warp owns one m-tile and one group of the tile's 8-row n-tiles, so that it adds its sums
        into the gate sums alone (no atomics); k is split (into extra partial-sum slots) only when
        there are fewer (m-tile, n-group) jobs than warps. With weights in registers a warp's job is
        fixed for the whole run: `mma_mgroup` m-tiles, one part (h or layer input), one k-slice of
        that part, every n-tile."""
        m_tiles, n_tiles = self.mma_rows // 16, self.batch_tile // 8
        if self.weights_in_registers:
            return 1, max(1, KERNEL_WARPS // (m_tiles // self.mma_mgroup * self.mma_parts))
        groups = max(d for d in range(1, n_tiles + 1) if n_tiles % d == 0 and d * m_tiles <= max(KERNEL_WARPS, m_tiles))
        return groups, max(1, KERNEL_WARPS // (m_tiles * groups))

    @property
    def mma_parts(self) -> int:
        """Reductions per step: h (W_hh) and, with more than one layer, the layer input (W_ih)."""
        return 2 if self.input_width else 1

    @property
    def mma_mgroup(self) -> int:
        """Weights in registers: m-tiles one warp holds. Two where the tile is wide (4 or 8 n-tiles), so
        that each B fragment loaded from shared memory feeds two mma instead of one (half the B loads;
        measured at the paper configuration: mma phase 4.3 -> 4.1 us a step)."""
        m_tiles, n_tiles = self.mma_rows // 16, self.batch_tile // 8
        return 2 if self.weights_in_registers and m_tiles % 2 == 0 and n_tiles % 4 == 0 else 1

    @property
    def mma_nchunk(self) -> int:
        """Weights in registers: n-tiles accumulated at once (accumulators: mgroup x nchunk x 4 floats)."""
        return 4 if self.mma_mgroup == 2 else self.batch_tile // 8

    @property
    def mma_accumulator_sets(self) -> int:
        """Weights in registers: sets of accumulators a warp's k-steps take round-robin (summed at the
        end), so that consecutive mma do not wait on each other's result: 4 where a warp holds one
        tile (mgroup x nchunk = 1), 2 for two, else 1 (enough tiles in flight already)."""
        tiles = self.mma_mgroup * self.mma_nchunk
        return 4 if tiles == 1 else 2 if tiles == 2 else 1

    @property
    def ffma_rows_per_warp(self) -> int:
        """FFMA kernel: weight rows a warp works on at once (RW): up to 4, but never so many that warps
        sit idle."""
        return max(1, min(4, self.gates * self.units_per_block // KERNEL_WARPS))

    @property
    def ffma_row_rounds(self) -> int:
        """FFMA kernel: how many sets of RW rows each warp takes per step (the block's gates x units rows
        over KERNEL_WARPS warps)."""
        return _ceil_div(self.gates * self.units_per_block, KERNEL_WARPS * self.ffma_rows_per_warp)

    @property
    def register_ksteps(self) -> int:
        """Weights in registers: A fragments (16 x mma_kstep, 4 registers a lane) one warp holds per
        m-tile: its k-slice of the longer part."""
        return _ceil_div(max(self.mma_k) // self.mma_kstep, self.mma_split[1])

    @property
    def weight_registers(self) -> int:
        """Weights in registers: registers a thread holds weights in. Tensor-core kernel: 4 per fragment,
        per m-tile. FFMA kernel: per row a lane holds every 32nd value of W_hh's and W_ih's row, counted
        in whole runs of 4 (the kernel's 4-value loads need them; 1-value loads need at most as many)."""
        if not self.batch_tile:
            per_row = 4 * (_ceil_div(self.h_width, 128) + _ceil_div(self.input_width, 128))
            return self.ffma_row_rounds * self.ffma_rows_per_warp * per_row
        return 4 * self.mma_mgroup * self.register_ksteps

    @property
    def registers_fit(self) -> bool:
        """Weights in registers fit a warp's register budget: the weight registers and the accumulators
        within REGISTER_BUDGET (the rest of the 255 a thread may have go to addresses, operands and the
        cell update). Tensor-core kernel: 4 registers per accumulator tile (mgroup x nchunk), and every
        job has a warp; FFMA kernel: RW x BT accumulators for each of the two sums, within
        FFMA_REGISTER_BUDGET."""
        if not self.batch_tile:
            return self.weight_registers + 2 * self.ffma_rows_per_warp * min(self.batch, 8) <= FFMA_REGISTER_BUDGET
        group = self.mma_mgroup
        jobs = self.mma_rows // 16 // group * self.mma_parts
        accumulators = 4 * group * self.mma_nchunk * self.mma_accumulator_sets
        return jobs <= KERNEL_WARPS and self.weight_registers + accumulators <= REGISTER_BUDGET

    @property
    def stage_stride(self) -> int:
        """Elements per staged batch row ([h | layer input]): padded so that the 8 rows one mma reads
        start 4 banks (16 bytes) apart, which makes its operand loads conflict-free."""
        per_16_bytes = 16 // self.element_bytes
        return _round_up(sum(self.mma_k), 8 * per_16_bytes) + per_16_bytes

    @property
    def sum_stride(self) -> int:
        """Tensor-core kernel: floats per batch row of the gate sums, padded by 4 so that the 4 batch
        columns (2 apart) a warp's accumulators write at once fall in different banks (unpadded, a
        multiple of 16 rows put them all in one)."""
        return self.mma_rows + 4

    @property
    def prefetches_xproj(self) -> bool:
        """Tensor-core kernel: layer 0 copies the next step's input projection (cuBLAS's) into shared
        memory with cp.async while it stages this step, instead of loading it into registers at the
        start of the step, where at the paper configuration it cost 4.5 us a step. Needs the whole
        batch in one tile and whole 16-byte runs of units (units a multiple of 16 bytes, dividing H)."""
        U = self.units_per_block
        return (self.batch_tile > 0 and self.batch <= self.batch_tile and U * self.element_bytes % 16 == 0
                and self.hidden % U == 0)

    def smem_layout(self) -> dict[str, int]:
        """Byte offsets of each shared-memory array, and "end", the bytes one block needs."""
        G, H, B, U, K = self.gates, self.hidden, self.batch, self.units_per_block, self.input_width
        parts: list[tuple[str, int]]
        if self.batch_tile:  # weights as mma fragments, staging in the storage type, a batch tile at a time
            bt, rows, size = self.batch_tile, self.mma_rows, self.element_bytes
            extra = self.mma_split[1] - 1  # partial sums of the k-slices after the first
            held = 0 if self.weights_in_registers else rows * sum(self.mma_k) * size
            stages = 2 if self.cluster else 1  # (by step parity: peers write the next step's h into the other)
            parts = [("weights", held), ("stage", stages * bt * self.stage_stride * size),
                     ("gx", bt * self.sum_stride * 4), ("gh", bt * self.sum_stride * 4),
                     ("partial", extra * 2 * bt * self.sum_stride * 4),
                     ("bias", 2 * rows * 4), ("c", B * U * 4),
                     ("xproj", bt * rows * size if self.prefetches_xproj else 0),
                     # projections: this block's rows of W_hr, the chain's whole cell h (storage type;
                     # batch rows padded to the n-tiles), the k-slices' partial sums of the projection
                     ("whr", self.proj_rows_per_block * self.proj_stride * size),
                     ("hfull", _round_up(B, 8) * self.proj_stride * size if self.proj_size else 0),
                     ("projsum", prod(self.proj_mma_split) * 16 * 8 * 4),
                     # cluster: this block's h of a step, an mbarrier per staging buffer
                     ("hslice", B * U * size if self.cluster else 0), ("handbar", 16 if self.cluster else 0)]
        else:  # weights in the storage dtype, fp32 staging of h and the layer input for the whole batch
            R, P = self.h_width, self.proj_rows_per_block  # with projections h is R = proj_size wide
            held = 0 if self.weights_in_registers else G * U * (R + K) * self.element_bytes
            parts = [("weights", held), ("h", B * R * 4),
                     ("x", B * K * 4), ("gx", B * G * U * 4), ("gh", B * G * U * 4), ("c", B * U * 4),
                     ("bias", 2 * G * U * 4),
                     # projections: this block's rows of W_hr, and the chain's whole unprojected h
                     ("whr", P * H * self.element_bytes), ("hfull", B * H * 4 if P else 0)]
        layout, at = {}, 0
        for name, size in parts:
            layout[name] = at
            at += _round_up(size, 16)
        layout["end"] = at
        return layout

    @property
    def shared_memory_bytes(self) -> int:
        return self.smem_layout()["end"]

    # ---- the exchange buffer through which blocks hand h to each other (global memory)

    @property
    def exchange_stride(self) -> int:
        """Tensor-core kernel: elements per published row of h (R wide; rows 16-byte aligned)."""
        return _round_up(self.h_width, 16 // self.element_bytes)

    @property
    def cell_stride(self) -> int:
        """Tensor-core kernel with projections: elements per handed-over row of the cell's h (H wide,
        16-byte aligned), which the projection reads."""
        return _round_up(self.hidden, 16 // self.element_bytes) if self.proj_size else 0

    @property
    def exchange_counter_bytes(self) -> int:
        """Tensor-core kernel: one counter per chain and step, of blocks that published h, and with
        projections a second such array, of blocks that handed over the cell's h (mma.cu computes the
        same from its length argument, to find h after them)."""
        return _round_up(len(self.chains) * self.seq_len * 4, 16) * (2 if self.proj_size else 1)

    @property
    def exchange_bytes(self) -> tuple[int, int]:
        """(bytes to allocate, leading bytes to zero before each run). FFMA kernel: a tagged 8-byte
        word per value, all zeroed (with projections the projected h, then the cell's h, H wide, that
        the projection reads); tensor-core kernel: counters (zeroed), then h in the storage type (with
        projections the projected h, then the cell's h)."""
        values = len(self.chains) * self.seq_len * self.batch
        if self.batch_tile:
            stride = self.exchange_stride + self.cell_stride
            return self.exchange_counter_bytes + values * stride * self.element_bytes, self.exchange_counter_bytes
        words = self.h_width + (self.hidden if self.proj_size else 0)
        return values * words * 8, values * words * 8

    @property
    def profile_offset(self) -> int:
        """Profiling (`PROFILE`): where each block's PROFILE_SLOTS clock sums start in the exchange
        buffer, past the exchange itself; the buffer is then `profile_offset + blocks * 64` bytes."""
        return _round_up(self.exchange_bytes[0], 16)

    # ---- FFMA kernel code-generation choices, each measured (BENCHMARKS.md)

    @property
    def vector_dot(self) -> bool:
        """FFMA kernel: dot products by 4-value vector loads (rows must be whole runs of 4). Measured on
        an H200 (BENCHMARKS.md, third round): faster with several batch rows a warp (LSTM 1x1024 B8
        1.36 -> 1.05 ms) or one weight row a warp (LSTM 1x256 B1 dot phase 0.40 -> 0.32 us a step),
        slower with one batch row and 4 weight rows a warp (LSTM 1x1024 B1 dot phase 1.28 -> 1.90 us),
        where it is not used."""
        return self.h_width % 4 == 0 and (min(self.batch, 8) >= 4 or self.ffma_rows_per_warp == 1)

    @property
    def merged_wait(self) -> bool:
        """FFMA kernel, above layer 0: wait for h and the layer input at once (their loads in flight
        together, one L2 round trip instead of two) where each part alone takes the general polling loop
        (more words than threads) and both fit one round of IN_FLIGHT words a thread. Measured on an
        H200: faster there (RNN-tanh 2x512 B1 0.223 -> 0.200 ms), slower where either part has a word a
        thread or fewer (the plain spin) or the parts need several rounds (LSTM 2x256 B1, 4x256 B8:
        BENCHMARKS.md, fourth round)."""
        h_words, x_words = self.batch * self.h_width, self.batch * self.input_width
        return min(h_words, x_words) > THREADS and h_words + x_words <= IN_FLIGHT * THREADS

    @property
    def xproj_prefetch(self) -> int:
        """FFMA kernel: layer 0's input projection values a thread loads into registers before it waits
        for h (so that their latency hides behind the wait); 0 where that would be more than XPF_MAX."""
        per_thread = _ceil_div(self.batch * self.gates * self.units_per_block, THREADS)
        return per_thread if per_thread <= XPF_MAX else 0

    # ---- the cluster hand-off (tensor-core kernel, `cluster`)

    def cluster_refusal(self, device: DeviceShape) -> str | None:
        """Why a chain's blocks cannot hand h over within one thread-block cluster on `device` (None:
        they can): a cluster holds them, enough clusters are resident, the batch is one tile (peers
        write it into one staging buffer), a block's units are whole 16-byte runs (DSMEM stores)."""
        U, nb = self.units_per_block, self.blocks_per_chain
        if not self.batch_tile:
            return "the cluster hand-off is the tensor-core kernel's"
        if self.proj_size:
            return "projections hand the cell's h over through global memory"
        if self.batch > self.batch_tile:
            return f"batch {self.batch} is more than one tile of {self.batch_tile}"
        if self.hidden % U or U * self.element_bytes % 16:
            return f"{U} units a block are not whole 16-byte runs of {self.hidden}"
        if nb > device.cluster_blocks:
            return f"{nb} blocks a chain; {device.name} clusters hold {device.cluster_blocks}"
        if len(self.chains) > device.max_clusters:
            return f"{len(self.chains)} chains; {device.name} keeps {device.max_clusters} clusters of {nb} resident"
        return None

    def fit(self, device: DeviceShape, smem_per_sm: int | None = None) -> Fit:
        """Does the kernel fit `device`: every layer-direction gets blocks, each block's shared memory
        fits, and (given the device's shared memory per SM, as a backend knows it) all blocks are
        resident at once, which they must be, since they wait on each other; with the cluster
        hand-off, its clusters (`cluster_refusal`)."""
        chains, smem, blocks = len(self.chains), self.shared_memory_bytes, self.blocks
        if self.cluster and (refusal := self.cluster_refusal(device)) is not None:
            return Fit(False, f"no cluster hand-off: {refusal}")
        if chains > device.sms:
            return Fit(False, f"{chains} layer-directions need more blocks than the {device.sms} SMs of {device.name}")
        if smem > device.smem_per_block:
            return Fit(False, f"{smem / 1024:.0f} KiB of shared memory per block over {blocks} blocks; "
                              f"{device.name} has {device.smem_per_block / 1024:.0f} KiB")
        if smem_per_sm is not None:
            per_sm = min(2048 // THREADS, smem_per_sm // (smem + 1024))
            if blocks > per_sm * device.sms:
                return Fit(False, f"{blocks} resident blocks with {smem / 1024:.0f} KiB of shared memory each; "
                                  f"{device.name} holds {per_sm * device.sms} such blocks")
        return Fit(True, f"{blocks} blocks{f' in {chains} clusters' if self.cluster else ''} x {smem / 1024:.0f} KiB "
                         f"shared memory on {device.name}")


@functools.lru_cache(maxsize=1024)
def kernel_of(r: Recurrence) -> PersistentKernel:
    """The persistent kernel that runs `r`."""
    if isinstance(r, PersistentKernel):
        return r
    return PersistentKernel(*(getattr(r, f.name) for f in dataclasses.fields(Recurrence)))

