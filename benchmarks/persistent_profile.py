"""Where a persistent kernel spends a step: clock64 marks between its phases, read by thread 0 of
each block and summed over the steps, for the first block of layer 0 and of the last layer.

    python3 benchmarks/persistent_profile.py [--weights chosen|registers|shared] [--precision fp16|tf32|fp32]
                                             [--config paper 4x256b8 1x1024b8 1x256b1 ...] [--units N]
                                             [--seq-len T]

The kernel is the one the planner picks (math="tf32" for the tf32 precision). Phases of the
tensor-core kernel: set-up (once: weights on-chip, biases), publish/loop (the previous step's
publish and loop overhead; with projections, the projection's wait, staging and dot products), fill
(gate sums from biases and layer 0's input projection), wait x (for the layer below's counters),
wait h (issuing the layer input's copy, then waiting for this chain's counter), stage (the copy of h
and waiting for all copies), mma (tensor cores and writing the gate sums), cell (the cell update);
with the cluster hand-off publish/loop holds the DSMEM stores, wait h the wait at the mbarrier.
Then the kernel's timeline by the GPU's global timer: when the blocks started, when all were set
up, the steps, when the last block left (what a kernel's time holds outside its steps). Of the FFMA kernel (batch 1-2, or fp32 math): barrier/loop (the end of
the previous step, issuing layer 0's projection loads), wait h+x (polling this chain's exchange words,
then the layer input's, or both at once with MERGED_WAIT), barrier (layer 0's prefetched projection into
the gate sums, a block barrier), dot+barrier (the dot products, their
warp reductions, the gate sums, a barrier), cell+publish (the cell update, writing y and the exchange
words), proj (with projections: waiting for the chain's cell h, W_hr's dot products, publishing the
projected h). The marks are PROF(k) macros in the kernels' source (persistent/cuda/ffma.cu, mma.cu), empty unless
the executor is built with `profile=True`, which compiles them in and reads the sums back
(`CupyExecutor.persistent_profile`). The kernel's own barriers make thread 0's view the block's.
"""

import dataclasses

import numpy as np

import rnnplan as rp
from rnnplan.lowering.recurrent import with_recurrence
from rnnplan.persistent import kernel_of

CONFIGS = {
    "paper": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64),
    "4x256b8": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=4, seq_len=100, batch=8),
    "1x1024b8": dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=1, seq_len=100, batch=8),
    "1x512b8": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=1, seq_len=100, batch=8),
    "gru4x512b64": dict(cell="gru", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64),
    # batch 1: the FFMA kernel
    "1x256b1": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=1, seq_len=100, batch=1),
    "4x256b1": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=4, seq_len=100, batch=1),
    "1x1024b1": dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=1, seq_len=100, batch=1),
    "rnn2x512b1": dict(cell="rnn_tanh", input_size=512, hidden_size=512, num_layers=2, seq_len=100, batch=1),
    "2x256b1": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=100, batch=1),
    # batch 4-8: tensor cores for tf32 and fp16, FFMA for strict fp32
    "2x256b4bidir": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=100, batch=4,
                         bidirectional=True),
    "gru2x256b4": dict(cell="gru", input_size=256, hidden_size=256, num_layers=2, seq_len=100, batch=4),
    "2x512b8": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=2, seq_len=100, batch=8),
    "3x256b1": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=3, seq_len=100, batch=1),
    # projections (the projection phase: slot 0 of the tensor-core kernel, the last of the FFMA one)
    "3x1024p256b1": dict(cell="lstm", input_size=1024, hidden_size=1024, proj_size=256, num_layers=3, seq_len=100,
                         batch=1),
    "3x1024p256b8": dict(cell="lstm", input_size=1024, hidden_size=1024, proj_size=256, num_layers=3, seq_len=100,
                         batch=8),
    "3x1024p256b4": dict(cell="lstm", input_size=1024, hidden_size=1024, proj_size=256, num_layers=3, seq_len=100,
                         batch=4),
    "3x1024p256b16": dict(cell="lstm", input_size=1024, hidden_size=1024, proj_size=256, num_layers=3, seq_len=100,
                          batch=16),
}
# Per kernel: the phases between its PROF(k) marks (persistent/cuda/*.cu), in slot order; slot 7 is the
# set-up before the first step.
PHASES = {
    "mma": ("publish/loop (+ proj)", "fill", "wait x", "wait h", "stage", "mma", "cell"),
    "ffma": ("barrier/loop", "wait h+x", "barrier", "dot+barrier", "cell+publish", "proj (wait, dot, publish)"),
}


def main() -> None:
    import argparse

    import cupy as cp

    from rnnplan.backends import describe_device
    from rnnplan.persistent import tensor_core_recurrence

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", choices=["chosen", "registers", "shared"], default="chosen",
                    help="profile the planner's kernel or the variant of it holding weights so")
    ap.add_argument("--precision", choices=["fp16", "tf32", "fp32"], default="fp16")
    ap.add_argument("--config", nargs="*", choices=sorted(CONFIGS), default=["paper", "4x256b8"])
    ap.add_argument("--units", type=int, help="hidden units per block instead of the planner's (FFMA kernel)")
    ap.add_argument("--seq-len", type=int, help="the sequence's length instead of the configuration's")
    args = ap.parse_args()

    clock_hz = cp.cuda.runtime.getDeviceProperties(0)["clockRate"] * 1e3
    for name in args.config:
        spec = rp.RNNSpec(**CONFIGS[name] | ({"seq_len": args.seq_len} if args.seq_len else {}),
                          dtype="float16" if args.precision == "fp16" else "float32")
        plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math=args.precision.replace("fp16", "fp32")))
        r = next(s.recurrence for s in plan.steps if s.recurrence)
        if args.weights != "chosen" and r.weights_in_registers != (args.weights == "registers"):
            r = (tensor_core_recurrence(spec, r.units_per_block, describe_device(), args.weights == "registers")
                 if r.batch_tile else dataclasses.replace(r, weights_in_registers=args.weights == "registers"))
            plan = with_recurrence(plan, r)
        if args.units and not r.batch_tile:
            r = dataclasses.replace(r, units_per_block=args.units)
            plan = with_recurrence(plan, r)
        ex = rp.Executor(plan, rp.Weights.random(spec, seed=1), backend="cupy", mode="streams", profile=True)
        x = np.random.default_rng(0).standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype)
        for _ in range(3):
            ex.run(x)
        (cycles,) = ex.impl.persistent_profile()  # the last run's
        k = kernel_of(r)
        held = "registers" if k.weights_in_registers else "shared memory"
        kernel = f"tensor cores, batch tiles of {k.batch_tile}" if k.batch_tile else "FFMA"
        kernel += f", weights in {held}"
        print(f"{spec.short()} ({args.precision}): {k.blocks} blocks x {k.units_per_block} units, {kernel}")
        for block in sorted({0, k.blocks_per_chain * (len(k.chains) - 1)}):
            phases = PHASES["mma" if k.batch_tile else "ffma"]
            us = cycles[block, :len(phases)] / clock_hz * 1e6 / spec.seq_len
            print(f"  block {block:3d} (layer {block // k.blocks_per_chain // k.directions}), us per step: "
                  + ", ".join(f"{n} {u:.2f}" for n, u in zip(phases, us)) + f"; total {us.sum():.2f}; "
                  f"set-up before the first step {cycles[block, 7] / clock_hz * 1e6:.1f} us")
        entry, ready, leave = (cycles[:, 8:11].astype(np.int64) - int(cycles[:, 8].min())).T / 1e3
        print(f"  timeline (global timer, us from the first block's start): blocks start within {entry.max():.1f}; "
              f"all set up at {ready.max():.1f} (each block's own set-up {(ready - entry).min():.1f}-"
              f"{(ready - entry).max():.1f}); steps {leave.max() - ready.max():.1f} "
              f"({(leave.max() - ready.max()) / spec.seq_len:.2f} a step); last block leaves at {leave.max():.1f}")


if __name__ == "__main__":
    main()
