"""Where a persistent kernel spends a step: clock64 marks between its phases, read by thread 0 of
each block and summed over the steps, for the first block of layer 0 and of the last layer.

    python3 benchmarks/persistent_profile.py [--weights chosen|registers|shared] [--precision fp16|tf32|fp32]
                                             [--config paper 4x256b8 1x1024b8 1x256b1 ...]

The kernel is the one the planner picks (math="tf32" for the tf32 precision). Phases of the
tensor-core kernel: set-up (once: weights on-chip, biases), publish/loop (the previous step's publish
and loop overhead), fill (gate sums from biases and layer 0's input projection), wait x (for the
layer below's counters), wait h (issuing the layer input's copy, then waiting for this chain's
counter), stage (the copy of h and waiting for all copies), mma (tensor cores and writing the gate
sums), cell (the cell update). Of the FFMA kernel (batch 1-2, or fp32 math): barrier/loop (the end of
the previous step, issuing layer 0's projection loads), wait h+x (polling this chain's exchange words,
then the layer input's, or both at once with MERGED_WAIT), barrier (layer 0's prefetched projection into
the gate sums, a block barrier), dot+barrier (the dot products, their
warp reductions, the gate sums, a barrier), cell+publish (the cell update, writing y and the exchange
words). The marks are inserted into the generated source by text anchors, so this tool fails loudly
(AssertionError) when the kernel's text changes under it. The kernel's own barriers make thread 0's
view the block's.
"""

import dataclasses

import numpy as np

import rnnplan as rp
from rnnplan.backends import cupy_backend, persistent_kernel
from rnnplan.ir import recurrence

CONFIGS = {
    "paper": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64),
    "4x256b8": dict(cell="lstm", input_size=256, hidden_size=256, num_layers=4, seq_len=100, batch=8),
    "1x1024b8": dict(cell="lstm", input_size=1024, hidden_size=1024, num_layers=1, seq_len=100, batch=8),
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
}
# Per kernel: phase names, the source lines before which mark k is inserted (phase k ends there), the
# line after which the last mark goes, and the line before which the counters start.
KERNELS = {
    "mma": dict(
        phases=("publish/loop", "fill", "wait x", "wait h", "stage", "mma", "cell"),
        before=("            // Gate sums start from", "            // Stage [h | layer input]",
                "                stage_x(stage, hx, b0, t, layer);",
                "                stage_h(stage, hx, h0, b0, s, tprev, chain);",
                "            if (REG_A) {  // this warp's fixed job",
                "            for (int i = tid; i < BT * nu; i += blockDim.x) {"),
        after="            __syncthreads();  // the next tile restages `stage` and the gate sums\n",
        start="    unsigned int* counters = (unsigned int*)xch;"),
    "ffma": dict(
        phases=("barrier/loop", "wait h+x", "barrier", "dot+barrier", "cell+publish"),
        before=("        // Where h's words come from", "        // Layer 0: the prefetched projection, plus b_ih",
                "        // Each warp takes RW weight rows",
                "        for (int i = tid; i < B * nu; i += blockDim.x) {\n            const int b = i / nu, u = i % nu;\n#define GX"),
        after="#undef GH\n        }\n",
        start="    st* wh_s = (st*)(smem + OFF_WEIGHTS);"),
}
START = "    for (int s = 0; s < T; ++s) {\n"
plain_source = persistent_kernel.recurrent_source
plain_exchange = recurrence.Recurrence.exchange_bytes


def profile_offset(r) -> int:
    return (plain_exchange.fget(r)[0] + 15) // 16 * 16


def instrumented_source(r) -> str:
    src = plain_source(r)
    kernel = KERNELS["mma" if r.batch_tile else "ffma"]
    for k, anchor in enumerate(kernel["before"]):
        assert src.count(anchor) == 1, anchor
        src = src.replace(anchor, f"            PROF({k});\n" + anchor)
    assert src.count(kernel["after"]) == 1 and src.count(START) == 1 and src.count(kernel["start"]) == 1
    src = src.replace(kernel["after"], kernel["after"] + f"            PROF({len(kernel['before'])});\n")
    src = src.replace(kernel["start"], "    unsigned long long acc_[8] = {0}, t_ = clock64();\n"
                      "#define PROF(k) if (tid == 0) { unsigned long long n_ = clock64(); acc_[k] += n_ - t_; t_ = n_; }\n"
                      + kernel["start"])
    src = src.replace(START, "    PROF(7);  // set-up: weights on-chip, biases, staging cleared\n" + START)
    body = src.rstrip()
    assert body.endswith("}")
    return body[:-1] + (f"    if (tid == 0) for (int k = 0; k < 8; ++k)\n"
                        f"        ((unsigned long long*)((unsigned char*)xch + {profile_offset(r)}))[blockIdx.x * 8 + k] = acc_[k];\n}}\n")


def main() -> None:
    import argparse

    import cupy as cp

    from rnnplan.backends import describe_device
    from rnnplan.scheduler.persistent import tensor_core_recurrence

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", choices=["chosen", "registers", "shared"], default="chosen",
                    help="profile the planner's kernel or the variant of it holding weights so")
    ap.add_argument("--precision", choices=["fp16", "tf32", "fp32"], default="fp16")
    ap.add_argument("--config", nargs="*", choices=sorted(CONFIGS), default=["paper", "4x256b8"])
    args = ap.parse_args()

    persistent_kernel.recurrent_source = cupy_backend.recurrent_source = instrumented_source
    recurrence.Recurrence.exchange_bytes = property(  # room for 8 clock sums per block after the exchange
        lambda r: (profile_offset(r) + r.blocks * 64, plain_exchange.fget(r)[1]))
    clock_hz = cp.cuda.runtime.getDeviceProperties(0)["clockRate"] * 1e3
    for name in args.config:
        spec = rp.RNNSpec(**CONFIGS[name], dtype="float16" if args.precision == "fp16" else "float32")
        plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math=args.precision.replace("fp16", "fp32")))
        r = next(s.recurrence for s in plan.steps if s.recurrence)
        if args.weights != "chosen" and r.weights_in_registers != (args.weights == "registers"):
            r = (tensor_core_recurrence(spec, r.units_per_block, describe_device(), args.weights == "registers")
                 if r.batch_tile else dataclasses.replace(r, weights_in_registers=args.weights == "registers"))
            plan = plan.with_recurrence(r)
        ex = rp.Executor(plan, rp.Weights.random(spec, seed=1), backend="cupy", mode="streams")
        x = np.random.default_rng(0).standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype)
        for _ in range(3):
            ex.run(x)
        cp.cuda.Device().synchronize()
        exchange = ex.impl._keep_alive[-1]  # the launch keeps [pointer table, exchange buffer]
        start = profile_offset(r)
        cycles = exchange.view(np.uint8)[start:start + r.blocks * 64].view(np.uint64).get().reshape(r.blocks, 8)
        held = "registers" if r.weights_in_registers else "shared memory"
        kernel = f"tensor cores, batch tiles of {r.batch_tile}" if r.batch_tile else "FFMA"
        kernel += f", weights in {held}"
        print(f"{spec.short()} ({args.precision}): {r.blocks} blocks x {r.units_per_block} units, {kernel}")
        for block in sorted({0, r.blocks_per_chain * (len(r.chains) - 1)}):
            phases = KERNELS["mma" if r.batch_tile else "ffma"]["phases"]
            us = cycles[block, :len(phases)] / clock_hz * 1e6 / spec.seq_len
            print(f"  block {block:3d} (layer {block // r.blocks_per_chain // r.directions}), us per step: "
                  + ", ".join(f"{n} {u:.2f}" for n, u in zip(phases, us)) + f"; total {us.sum():.2f}; "
                  f"set-up before the first step {cycles[block, 7] / clock_hz * 1e6:.1f} us")


if __name__ == "__main__":
    main()
