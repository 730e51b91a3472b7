"""The `recurrent` node: the whole recurrence of the network (every layer's recurrent GEMM and cell
update, every step, both directions) as one kernel, for the persistent lowering.

Operands, in order (`operand_shapes`): per chain (layer l, direction d, in layer-major order)
- l = 0: `xproj`, layer 0's input projection x @ W_ih^T for every step, (T*B, G*H), no bias;
  l > 0: `w_ih`, (G*H, D*H) in PyTorch's layout (the projection is computed inside the kernel);
- `w_hh` (G*H, H) in PyTorch's layout; with bias, `b_ih` and `b_hh` (1, G*H);
then `h0` (and `c0` for LSTM), (L*D*B, H). Outputs: every layer's output sequence `y{l}`
(T*B, D*H), then `c_n` (L*D*B, H) for LSTM. `run_recurrence` is the reference semantics: plain
loops over layers, directions and steps with PyTorch's cell equations; h is rounded to the storage
dtype each step (it is re-read from memory), c stays in fp32 (it stays on-chip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnplan.spec import GATES

KERNEL_WARPS = 8  # warps per block of the persistent kernels (256 threads)
# Registers per thread for weights held in registers and the accumulators, of the 255 a thread of a
# 256-thread block may use; checked with `nvcc -Xptxas -v` (no spills) on the configurations in tests.
REGISTER_BUDGET = 168
# The FFMA kernel needs fewer registers besides (no B fragments or mma addresses): 192 held (128 weights
# and 64 accumulators at LSTM 1x1024 batch 8) compiled to 245-249 registers a thread, no spills.
FFMA_REGISTER_BUDGET = 192


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def _round_up(n: int, multiple: int) -> int:
    return _ceil_div(n, multiple) * multiple


@dataclass(frozen=True, slots=True)
class Recurrence:
    cell: str
    num_layers: int
    directions: int
    seq_len: int
    batch: int
    hidden: int
    input_size: int
    bias: bool
    dtype: str
    units_per_block: int  # hidden units of one chain that one GPU block owns (its weight slice)
    # 0: the FFMA kernel (fp32 dot products); > 0: the tensor-core kernel (mma.sync: fp16 operands
    # with fp16 storage, tf32 operands with fp32 storage), which works through the batch in tiles of
    # this many rows (a multiple of 8, the mma's N).
    batch_tile: int = 0
    # Each warp keeps its share of the weights in registers for the whole sequence, instead of reading
    # them from shared memory at every step; shared memory then holds no weights. Tensor-core kernel:
    # A fragments (`register_ksteps` of them), which leaves room for wider batch tiles; FFMA kernel:
    # its fixed rows' k-slices as fp32 (`ffma_row_rounds` x `ffma_rows_per_warp` rows a warp).
    weights_in_registers: bool = False
    # PlanOptions.math the plan was made with. "tf32" (fp32 storage): products may be rounded to tf32,
    # so the cell may use the hardware's fast exponentials (`fast_cell`) in the FFMA kernel as well.
    math: str = "fp32"

    @property
    def fast_cell(self) -> bool:
        """The cell's exponentials by the hardware ex2 (error about 1e-7) rather than the accurate library
        functions: where precision is already reduced to about 2^-11 (fp16 storage, tf32 math)."""
        return self.dtype == "float16" or self.batch_tile > 0 or self.math == "tf32"

    @property
    def gates(self) -> int:
        return len(GATES[self.cell])

    @property
    def chains(self) -> list[tuple[int, int]]:
        return [(l, d) for l in range(self.num_layers) for d in range(self.directions)]

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
        return self.directions * self.hidden if self.num_layers > 1 else 0

    # ---- shared memory: one definition of each kernel's layout, read by the fit check, the launch
    # and the generated source (backends/persistent_kernel.py, backends/persistent_mma.py).

    @property
    def element_bytes(self) -> int:
        """Bytes per stored value (weights, staged and published h): 2 for fp16, 4 for fp32."""
        return 2 if self.dtype == "float16" else 4

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
        """(recurrent, layer-input) reduction lengths padded to the mma's K (`mma_kstep`)."""
        return _round_up(self.hidden, self.mma_kstep), _round_up(self.input_width, self.mma_kstep)

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
            per_row = 4 * (_ceil_div(self.hidden, 128) + _ceil_div(self.input_width, 128))
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
        return jobs <= KERNEL_WARPS and self.weight_registers + 4 * group * self.mma_nchunk <= REGISTER_BUDGET

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
            parts = [("weights", held), ("stage", bt * self.stage_stride * size),
                     ("gx", bt * self.sum_stride * 4), ("gh", bt * self.sum_stride * 4),
                     ("partial", extra * 2 * bt * self.sum_stride * 4),
                     ("bias", 2 * rows * 4), ("c", B * U * 4),
                     ("xproj", bt * rows * size if self.prefetches_xproj else 0)]
        else:  # weights in the storage dtype, fp32 staging of h and the layer input for the whole batch
            held = 0 if self.weights_in_registers else G * U * (H + K) * self.element_bytes
            parts = [("weights", held), ("h", B * H * 4),
                     ("x", B * K * 4), ("gx", B * G * U * 4), ("gh", B * G * U * 4), ("c", B * U * 4),
                     ("bias", 2 * G * U * 4)]
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
        """Tensor-core kernel: elements per published row of h (rows 16-byte aligned)."""
        return _round_up(self.hidden, 16 // self.element_bytes)

    @property
    def exchange_counter_bytes(self) -> int:
        """Tensor-core kernel: one counter per chain and step, of blocks that published h."""
        return _round_up(len(self.chains) * self.seq_len * 4, 16)

    @property
    def exchange_bytes(self) -> tuple[int, int]:
        """(bytes to allocate, leading bytes to zero before each run). FFMA kernel: a tagged 8-byte
        word per value, all zeroed; tensor-core kernel: counters (zeroed), then h in the storage type."""
        values = len(self.chains) * self.seq_len * self.batch
        if self.batch_tile:
            return (self.exchange_counter_bytes + values * self.exchange_stride * self.element_bytes,
                    self.exchange_counter_bytes)
        return values * self.hidden * 8, values * self.hidden * 8


def operand_shapes(r) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(input shapes, output shapes) of a recurrent node or step, in operand order."""
    G, H, T, B, D, L = r.gates, r.hidden, r.seq_len, r.batch, r.directions, r.num_layers
    ins = []
    for layer in range(L):
        for _ in range(D):
            ins.append((T * B, G * H) if layer == 0 else (G * H, D * H))
            ins.append((G * H, H))
            if r.bias:
                ins += [(1, G * H), (1, G * H)]
    ins += [(L * D * B, H)] * (2 if r.cell == "lstm" else 1)
    outs = [(T * B, D * H)] * L + ([(L * D * B, H)] if r.cell == "lstm" else [])
    return ins, outs


def wavefront(r) -> dict[tuple[int, int, int], int]:
    """(layer, direction, step) -> the earliest round at which the persistent kernel can run that
    cell-step: one round after its own previous step and after the layer below produced its time
    step in every direction. The largest value + 1 is the kernel's dependent depth."""
    T, D = r.seq_len, r.directions
    level: dict[tuple[int, int, int], int] = {}
    for layer in range(r.num_layers):
        for d in range(D):
            for s in range(T):
                t = s if d == 0 else T - 1 - s
                ready = level[(layer, d, s - 1)] + 1 if s else 0
                if layer:
                    ready = max([ready] + [level[(layer - 1, d2, t if d2 == 0 else T - 1 - t)] + 1
                                           for d2 in range(D)])
                level[(layer, d, s)] = ready
    return level


def _cell(cell: str, gx: np.ndarray, gh: np.ndarray, h: np.ndarray, c: np.ndarray | None):
    from rnnplan.ir.node import POINTWISE_OPS  # node.py imports this module for the Recurrence type

    sig, tanh = POINTWISE_OPS["sigmoid"].numpy, POINTWISE_OPS["tanh"].numpy
    if cell == "lstm":
        i, f, g, o = np.split(gx + gh, 4, axis=1)
        c = sig(f) * c + sig(i) * tanh(g)
        return sig(o) * tanh(c), c
    if cell == "gru":
        xr, xz, xn = np.split(gx, 3, axis=1)
        hr, hz, hn = np.split(gh, 3, axis=1)
        r, z = sig(xr + hr), sig(xz + hz)
        n = tanh(xn + r * hn)
        return (np.float32(1) - z) * n + z * h, None
    return POINTWISE_OPS[cell[4:]].numpy(gx + gh), None


def run_recurrence(r, args) -> list[np.ndarray]:
    """Reference semantics of the recurrent node (float32 math, `r.dtype` storage for h)."""
    f32 = np.float32
    dtype = np.dtype(r.dtype)
    T, B, H, D, L = r.seq_len, r.batch, r.hidden, r.directions, r.num_layers
    args = list(args)
    per_chain = 4 if r.bias else 2
    ys = [np.empty((T * B, D * H), dtype) for _ in range(L)]
    c_n = np.empty((L * D * B, H), dtype)
    h0 = args[L * D * per_chain]
    c0 = args[L * D * per_chain + 1] if r.cell == "lstm" else None
    for ci, (layer, d) in enumerate(r.chains):
        ops = [a.astype(f32) for a in args[ci * per_chain:(ci + 1) * per_chain]]
        rows = slice(ci * B, (ci + 1) * B)
        h = h0[rows].astype(f32)
        c = c0[rows].astype(f32) if c0 is not None else None
        for s in range(T):
            t = s if d == 0 else T - 1 - s
            here = slice(t * B, (t + 1) * B)
            gx = ops[0][here] if layer == 0 else ys[layer - 1][here].astype(f32) @ ops[0].T
            gh = h @ ops[1].T
            if r.bias:
                gx, gh = gx + ops[2], gh + ops[3]
            h, c = _cell(r.cell, gx, gh, h, c)
            ys[layer][here, d * H:(d + 1) * H] = h
            h = ys[layer][here, d * H:(d + 1) * H].astype(f32)  # as the kernel re-reads it
        if c is not None:
            c_n[rows] = c
    return ys + ([c_n] if r.cell == "lstm" else [])
