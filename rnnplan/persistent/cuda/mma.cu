// The tensor-core persistent kernel (rnnplan/persistent/kernel.py: `batch_tile > 0`): fp16 storage runs
// `mma.sync.m16n8k16` on fp16 operands, fp32 storage (PlanOptions(math="tf32")) `mma.sync.m16n8k8` on
// tf32 operands (weights rounded to tf32 once, h read as stored), both accumulating in fp32. One source
// for both: a k-step is 32 bytes of a staged row either way, so staging, ldmatrix and the work split
// are the same; what differs is the element type `st`, KSTEP and the fragment layout (`a_word`).
//
// Same work split as the FFMA kernel (one block per slice of a chain's hidden units, layers in a
// wavefront, c on-chip), different arithmetic and hand-off:
// - the block's weight rows (gates x units, padded to 16) over both reductions ([W_hh | W_ih], each
//   padded to the mma's K) are held on-chip as A fragments (`a_word` gives their layout), one of two
//   ways (REG_A, chosen by the planner where it fits):
//   - in registers: each warp owns a fixed job for the whole run, MG m-tiles x one part (h or layer
//     input) x one k-slice of it, and keeps those fragments in registers; no weight is read from
//     shared memory at any step, which leaves shared memory to the batch (tiles up to 64);
//   - in shared memory, in fragment order (one conflict-free 16-byte load per lane and mma); each warp
//     takes (m-tile, group of n-tiles) jobs and k is split only when jobs are fewer than warps;
// - h is published in rows of the storage type ([chain][t][b][H padded to 16 bytes]) and a per-(chain,
//   step) counter that each block bumps once its slice is written (barrier, then a release add). A
//   reader's thread 0 waits for the counters it needs (acquire loads): above layer 0 first the layer
//   below's, whose rows the block then copies into shared memory with cp.async (16 bytes a copy, all in
//   flight at once) while thread 0 waits for its own chain's; then h is copied the same way. At batch
//   1-2 the FFMA kernel's tagged words, which need one L2 round trip per hand-off instead of two,
//   measured faster or equal, and the planner uses that kernel there (FFMA_MAX_BATCH). Tried and
//   dropped: a flag per block instead of a shared counter (no atomics on one address; within noise at
//   32-64 blocks a chain, 17-20% slower at 128);
// - per step, the batch is processed in tiles of BT rows: the tile's gate sums start from the biases
//   (kept in shared memory) and, in layer 0, cuBLAS's input projection (prefetched into shared memory
//   during the previous step where the batch is one tile, XPRE, else loaded before the wait); the sums'
//   rows are padded (GS) so that accumulator writes do not collide; warps load B fragments with
//   ldmatrix, accumulate in fp32 and add into the gate sums they own alone, with no atomics; the later
//   k-slices of a split write partial sums of their own, which the cell update adds. The cell update
//   of the tile follows.
// CLUSTER: a chain's blocks (NBC <= 16) form one thread-block cluster and hand h over through
// distributed shared memory instead: after its cell update a block writes its units of h straight
// into the staging rows of every block of the cluster (16-byte st.async DSMEM stores,
// `hand_to_cluster`), into the other of two staging buffers (step parity); each store counts its bytes
// off the receiving block's mbarrier of that buffer, and a block waits at its own mbarrier, not at a
// barrier of the whole cluster, until the step's h has landed; no L2 round trip, no counter, no
// staging copy of h. The layer above still reads h from global memory by counters. Needs the batch in
// one tile and whole 16-byte runs of units. (Measured on an H200: a 16-block hand-off of 8 KiB a block
// and the cluster barrier that the mbarriers replaced 0.75 us a step, against 1.4-1.9 us for publish,
// wait and stage.)
// PROJ (LSTM projections): h is R = proj_size wide (the staged rows, the exchange, W_hh's columns).
// After the cell updates of every tile, a block hands its units of the cell's h (H wide) to its chain's
// other blocks (a second region of the exchange, with a second array of counters), waits for the whole
// of it, stages it and computes its rows [p0, p0 + np) of h = W_hr @ (the cell's h) on mma too
// (project_mma, W_hr's rows in shared memory); those go to y and to the exchange as h: a second
// hand-off a step. (It replaced the FFMA kernel's dot products, projection.cuh: at batch 8-16 those
// took most of a step, 5-8 of 7-11 us, in warps too few to hide their latency.)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "config.h"
#include "persistent.cuh"

#define NT (BT / 8)
#define MT (RP / 16)
#define KHT (KHP / KSTEP)
#define NPG (NT / NG)
#define MGROUPS (MT / MG)
#define RJOBS (MGROUPS * NPARTS * KSPLIT)  // warps with a job (REG_A)
#if ST_HALF || ST_BF16
typedef unsigned short st_bits;  // raw bits of one stored value
#else
typedef unsigned int st_bits;
#endif

// D (16x8, fp32) += A (16xKSTEP, row-major) * B (KSTEP x8, column-major), fp16 or tf32 operands (tf32: B
// is h as stored, fp32, whose low 13 mantissa bits the tensor cores do not read). Volatile on purpose:
// letting the compiler reorder the mma (a pure function of registers) measured 15% slower at batch 4.
__device__ __forceinline__ void mma_tc(float (&c)[4], const uint4& a, unsigned int b0, unsigned int b1) {
#if TF32
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
#elif ST_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
#endif
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

// The hand-off's two halves, as a release/acquire pair at GPU scope (the pattern of CUTLASS's
// semaphores): after a block barrier, thread 0 adds 1 to the step's counter with release semantics,
// which orders every write of the block before it; a reader's thread 0 spins with acquire loads until
// all NBC blocks have added, and its block barrier then orders the block's reads after that.
__device__ __forceinline__ void publish_count(unsigned int* counter) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" :: "l"(counter) : "memory");
}

__device__ __forceinline__ void await_count(const unsigned int* counter) {
    unsigned int seen;
    do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
    } while (seen < NBC);
}

// Stage `rows` batch rows (from b0) of one published h, src [b][XSTRIDE], into stage columns col0 ... col0+R.
// 16-byte rows go by cp.async (L2 -> shared memory, no registers, all in flight at once; .cg reads
// L2, where other SMs' writes are); the caller waits with `staged()`. Other widths copy one value at a time.
__device__ __forceinline__ void stage_part(st* stage, const st* src, int rows, int b0, int col0) {
    for (int i = threadIdx.x; i < rows * (R / CHUNK); i += blockDim.x) {
        const int bl = i / (R / CHUNK), c = i % (R / CHUNK);
        st* dst = stage + bl * KS + col0 + c * CHUNK;
        const st* from = src + (size_t)(b0 + bl) * XSTRIDE + c * CHUNK;
        if (CHUNK == VEC) {
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
                         :: "r"((unsigned int)__cvta_generic_to_shared(dst)), "l"(from));
        } else {
            *(st_bits*)dst = __ldcg((const st_bits*)from);
        }
    }
}

// XPRE: layer 0's input projection (cuBLAS's, [t][b][G*H]) at time t, this block's units, into
// xs[b][g*U + u], 16 bytes a cp.async; the caller waits with `staged()`.
__device__ __forceinline__ void prefetch_xproj(st* xs, const st* xproj, int t, int u0) {
#if XPRE  // (U / VEC is 0 otherwise)
    for (int i = threadIdx.x; i < B * G * (U / VEC); i += blockDim.x) {
        const int bl = i / (G * (U / VEC)), g = i / (U / VEC) % G, c = i % (U / VEC);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
                     :: "r"((unsigned int)__cvta_generic_to_shared(xs + bl * RP + g * U + c * VEC)),
                        "l"(xproj + ((size_t)t * B + bl) * (G * H) + g * H + u0 + c * VEC));
    }
#endif
}

__device__ __forceinline__ void staged() {
    asm volatile("cp.async.wait_all;\n" ::);
}

// cp.async groups: the copies issued since the last commit form one; staged_but_last waits for all
// but the last committed group (XPRE: the staging, not the next step's projection).
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

__device__ __forceinline__ void staged_but_last() {
    asm volatile("cp.async.wait_group 1;\n" ::);
}

#if CLUSTER
// The cluster barrier, in halves: every thread of every block arrives (release: its writes to shared
// memory, its own block's and its peers', are ordered before), and after the wait (acquire) they are
// visible to the cluster's threads. Used once before the first step (staging cleared, mbarriers made)
// and once after the last.
__device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// The hand-off's arrival count is one: this block's thread 0 arms a staging buffer's mbarrier for the
// bytes its peers will write there (one phase per step that reads the buffer); each peer's st.async
// counts its bytes off (complete_tx, release at cluster scope), and the phase completes when all
// have landed.
__device__ __forceinline__ void bar_init(unsigned int bar) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(bar) : "memory");
}

__device__ __forceinline__ void bar_arm(unsigned int bar, unsigned int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}

// Until the phase of parity `parity` has completed (acquire at cluster scope: the peers' bytes seen).
__device__ __forceinline__ void bar_wait(unsigned int bar, unsigned int parity) {
    unsigned int done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}

// This block's units of h (hs, [B][U]) into the staging rows `next` of every block of the cluster
// (block rank p is the chain's block p, so every block's rows take the slice at columns u0 ...), one
// 16-byte store per (block, batch row, run of VEC units): to a peer by st.async, which counts its
// bytes off that peer's mbarrier `bar` (the same offset in every block), to this block by a plain
// store (seen after the block barriers before the next step's mma). No block waits for the others
// here: each waits at its own mbarrier for the bytes it needs, when it needs them.
__device__ __forceinline__ void hand_to_cluster(const st* hs, st* next, unsigned int bar, int u0, int rank) {
    for (int i = threadIdx.x; i < NBC * B * (U / VEC); i += blockDim.x) {
        const int peer = i / (B * (U / VEC)), b = i / (U / VEC) % B, c = i % (U / VEC);
        const uint4 v = *(const uint4*)(hs + b * U + c * VEC);
        st* at = next + b * KS + u0 + c * VEC;
        if (peer == rank) {
            *(uint4*)at = v;
            continue;
        }
        const unsigned int local = (unsigned int)__cvta_generic_to_shared(at);
        unsigned int remote, remote_bar;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(peer));
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote_bar) : "r"(bar), "r"(peer));
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n"
                     :: "r"(remote), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(remote_bar) : "memory");
    }
}
#endif

__device__ __forceinline__ void stage_h0(st* stage, const st* h0, int rows, int b0, int chain) {
    for (int i = threadIdx.x; i < rows * R; i += blockDim.x)
        stage[(i / R) * KS + i % R] = h0[(size_t)(chain * B + b0 + i / R) * R + i % R];
}

// Stage batch rows b0 ... b0 + BT (those below B) of h of step s-1 (stage_h), of the layer below's h at
// time t (stage_x), or of both (stage_tile).
__device__ __forceinline__ void stage_h(st* stage, const st* hx, const st* h0, int b0, int s, int tprev, int T,
                                        int chain) {
    const int rows = min(BT, B - b0);
    if (s == 0) stage_h0(stage, h0, rows, b0, chain);
    else stage_part(stage, hx + ((size_t)chain * T + tprev) * B * XSTRIDE, rows, b0, 0);
}

__device__ __forceinline__ void stage_x(st* stage, const st* hx, int b0, int t, int layer, int T) {
    for (int d2 = 0; layer > 0 && d2 < D; ++d2)
        stage_part(stage, hx + ((size_t)((layer - 1) * D + d2) * T + t) * B * XSTRIDE, min(BT, B - b0), b0,
                   KHP + d2 * R);
}

__device__ __forceinline__ void stage_tile(st* stage, const st* hx, const st* h0, int b0, int s, int t, int tprev, int T,
                                           int chain, int layer) {
    stage_h(stage, hx, h0, b0, s, tprev, T, chain);
    stage_x(stage, hx, b0, t, layer, T);
}

// A gate's sum (which: 0 x-part, 1 h-part) over the first k-slice's slot and the others' partials.
// (Weights in registers split each part separately; a network of one layer has no layer-input part.)
__device__ __forceinline__ float gate_sum(const float* sums, const float* partial, int which, int at) {
    float v = sums[at];
    if (REG_A && NPARTS == 1 && which == 0) return v;
#pragma unroll
    for (int slice = 1; slice < KSPLIT; ++slice) v += partial[((slice - 1) * 2 + which) * BT * GS + at];
    return v;
}

// Word p (of 4) of lane ln's A fragment for k-step ks, m-tile mt, of the block's rows of [W_hh | W_ih]
// (gate-major rows padded to RP, each part's columns padded to KSTEP), as the mma reads it; PTX's layouts:
// - m16n8k16 (fp16): elements 2p and 2p + 1, packed low first: row mt*16 + ln/4 (+8 for odd p), columns
//   ks*16 + (ln%4)*2 (+1) (+8 for p >= 2), neighbours in one row (one 4-byte load where aligned);
// - m16n8k8 (tf32): element p: row mt*16 + ln/4 (+8 for odd p), column ks*8 + ln%4 (+4 for p >= 2),
//   rounded to tf32 once here (the weights stay in that form for the whole run).
// Where word p of lane ln's fragment (ks, mt) lies in the weights: its first element and how many of its
// elements lie inside the weight (0: a padding word).
struct ASrc {
    const st* src;
    int n;
};
__device__ __forceinline__ ASrc a_src(const st* whh, const st* first, int u0, int nu, int kin, int ks, int mt, int ln,
                                      int p) {
    const int row = mt * 16 + (ln >> 2) + (p & 1) * 8;
    const int k = TF32 ? ks * 8 + (ln & 3) + (p >> 1) * 4 : ks * 16 + (ln & 3) * 2 + (p >> 1) * 8;
    const int g = row / U, u = row % U;
    ASrc a = {whh, 0};
    if (g < G && u < nu) {
        if (k < KHP) a = {whh + (size_t)(g * H + u0 + u) * R + k, min(2, R - k)};
        else if (k - KHP < kin) a = {first + (size_t)(g * H + u0 + u) * kin + (k - KHP), min(2, kin - (k - KHP))};
    }
    if (a.n < 0) a.n = 0;
    return a;
}

__device__ __forceinline__ unsigned int a_word(const st* whh, const st* first, int u0, int nu, int kin, int ks, int mt,
                                               int ln, int p) {
    const ASrc a = a_src(whh, first, u0, nu, kin, ks, mt, ln, p);
#if TF32
    unsigned int w = 0u;
    if (a.n > 0) asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(w) : "f"(to_f(a.src[0])));
    return w;
#else
    if (a.n == 2 && ((size_t)a.src & 3) == 0) return *(const unsigned int*)a.src;
    const unsigned int lo = a.n > 0 ? half_bits(to_f(a.src[0])) : 0u;
    const unsigned int hi = a.n > 1 ? half_bits(to_f(a.src[1])) : 0u;
    return lo | (hi << 16);
#endif
}

// a_word for the common word (whole and aligned) with its load unconditional: a word not wanted, or a
// padding word, loads from an address that is always valid (the 4-byte word holding whh's start) and
// gives 0; a wanted word that is partial or unaligned sets `slow` (the caller takes it again with a_word).
// Why: a load behind a branch is issued only when the branch resolves, so a lane's weight loads went one
// after another; unconditional, they are all in flight at once (LSTM 1x512 B8: the kernel at T=2 took
// 57 us before, 24 us after, by ncu; BENCHMARKS.md, "Branch-free weight loads").
__device__ __forceinline__ unsigned int a_word_fast(const st* whh, const st* first, int u0, int nu, int kin, int ks,
                                                    int mt, int ln, int p, bool wanted, bool& slow) {
    const ASrc a = a_src(whh, first, u0, nu, kin, ks, mt, ln, p);
    const bool whole = wanted && (TF32 ? a.n > 0 : a.n == 2 && ((size_t)a.src & 3) == 0);
    slow |= wanted && a.n > 0 && !whole;
    const unsigned int* at = whole ? (const unsigned int*)a.src : (const unsigned int*)((size_t)whh & ~(size_t)3);
    unsigned int w = __ldg(at);
#if TF32
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(w) : "f"(__uint_as_float(w)));
#endif
    return whole ? w : 0u;
}

// Shared-memory address of this lane's row for ldmatrix over the staged rows from `rows`: lanes 8m..8m+7
// point at the 16-byte rows of 8x8 (b16) matrix m (n-tile m/2, second half of the k-step for odd m), so
// that lane l receives row l/4, bytes 4*(l%4) ... +3 of each: for fp16, columns 2*(l%4) and +1; for tf32,
// column l%4; PTX's B layouts of m16n8k16 and m16n8k8 (b0 from the first half, b1 from the second).
__device__ __forceinline__ unsigned int b_base(const st* rows, int lane) {
    const int mat = lane >> 3, row = lane & 7;
    return (unsigned int)__cvta_generic_to_shared(rows + ((mat >> 1) * 8 + row) * KS + (mat & 1) * VEC);
}

// The B fragments of NTILES n-tiles for k-step ks (columns ks*KSTEP ... from `base`, see b_base), by ldmatrix.
template <int NTILES>
__device__ __forceinline__ void load_b(unsigned int (&b)[NTILES][2], unsigned int base, int ks) {
#pragma unroll
    for (int n = 0; n + 1 < NTILES; n += 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(b[n][0]), "=r"(b[n][1]), "=r"(b[n + 1][0]), "=r"(b[n + 1][1])
                     : "r"(base + (n * 8 * KS + ks * KSTEP) * (int)sizeof(st)));
    if (NTILES % 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(b[NTILES - 1][0]), "=r"(b[NTILES - 1][1]) : "r"(base + ((NTILES - 1) * 8 * KS + ks * KSTEP) * (int)sizeof(st)));
}

// k-step ks of A fragment a against NTILES n-tiles, added into acc.
template <int NTILES>
__device__ __forceinline__ void mma_step(float (&acc)[NTILES][4], const uint4& a, unsigned int base, int ks) {
    unsigned int b[NTILES][2];
    load_b(b, base, ks);
#pragma unroll
    for (int n = 0; n < NTILES; ++n) mma_tc(acc[n], a, b[n][0], b[n][1]);
}

// A warp's sums of m-tile mt over NTILES n-tiles from n-tile n0 (C layout: row mt*16 + lane/4 (+8), batch
// column n*8 + (lane%4)*2 (+1)) added into `dst` (the warp alone owns those sums: no atomics) or, when
// !add, written into a partial-sum slot.
template <int NTILES>
__device__ __forceinline__ void put_sums(float* dst, bool add, const float (&acc)[NTILES][4], int mt, int n0, int lane) {
#pragma unroll
    for (int n = 0; n < NTILES; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = mt * 16 + (lane >> 2) + (e >> 1) * 8, bl = (n0 + n) * 8 + (lane & 3) * 2 + (e & 1);
            float* at = dst + bl * GS + row;
            *at = add ? *at + acc[n][e] : acc[n][e];
        }
}

#if PROJ
// The projection on tensor cores: this block's rows [p0, p0 + np) of h = W_hr @ (the cell's h), as
// D (rows x batch) = A (W_hr's rows, whr_s [row][PSTRIDE]) * B (the cell's h staged as hf_s
// [batch][PSTRIDE], column-major B as the recurrent mma reads `stage`). A warp takes one (m-tile,
// n-tile, k-slice) job at a time: A words from shared memory (rows past np read as 0), B by ldmatrix;
// the k-slices' sums meet in psum ([slice][row][PNT * 8]) and every thread then hands the sums of
// its (row, batch) pairs to emit(p, b, sum), which writes it where the next step and the layer above read it.
#define PKH ((H + KSTEP - 1) / KSTEP)  // the projection's k-steps
template <class Emit>
__device__ __forceinline__ void project_mma(const st* whr_s, const st* hf_s, float* psum, int np, int lane, int warp,
                                            int nwarps, Emit emit) {
    for (int job = warp; job < PMT * PNT * PKSL; job += nwarps) {
        const int mt = job % PMT, nt = job / PMT % PNT, slice = job / (PMT * PNT);
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        // ldmatrix x2: lanes 0-7 address batch rows nt*8 ... of the k-step's first half, lanes 8-15 the second's
        const unsigned int base = (unsigned int)__cvta_generic_to_shared(
            hf_s + (nt * 8 + (lane & 7)) * PSTRIDE + ((lane >> 3) & 1) * VEC);
        for (int ks = slice * PKH / PKSL; ks < (slice + 1) * PKH / PKSL; ++ks) {
            unsigned int b0, b1, a[4];
            asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                         : "=r"(b0), "=r"(b1) : "r"(base + ks * KSTEP * (int)sizeof(st)));
#pragma unroll
            for (int p = 0; p < 4; ++p) {  // a_word's layout, from whr_s
                const int row = mt * 16 + (lane >> 2) + (p & 1) * 8;
                const int k = TF32 ? ks * 8 + (lane & 3) + (p >> 1) * 4 : ks * 16 + (lane & 3) * 2 + (p >> 1) * 8;
                a[p] = row < np ? *(const unsigned int*)(whr_s + row * PSTRIDE + k) : 0u;
            }
            mma_tc(acc, make_uint4(a[0], a[1], a[2], a[3]), b0, b1);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e)  // C layout: row lane/4 (+8), batch column (lane%4)*2 (+1)
            psum[((slice * PMT + mt) * 16 + (lane >> 2) + (e >> 1) * 8) * (PNT * 8) + nt * 8 + (lane & 3) * 2 + (e & 1)] = acc[e];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < np * B; i += blockDim.x) {
        const int p = i / B, b = i % B;
        float sum = 0.0f;
        for (int slice = 0; slice < PKSL; ++slice) sum += psum[((slice * PMT + p / 16) * 16 + p % 16) * (PNT * 8) + b];
        emit(p, b, sum);
    }
}
#endif

// h to the other blocks: its row of the published h, in the storage type (PROJ: the cell's h, to the
// projection of this chain's blocks).
#if PROJ
#define HANDOFF(hv) (hfx[((size_t)(chain * T + t) * B + b) * HSTRIDE + u0 + u] = (hv))
#elif CLUSTER  // to the cluster through hs; to global memory only for the layer above
#define HANDOFF(hv) do { hs[b * U + u] = (hv); \
    if (layer < L - 1) hx[((size_t)(chain * T + t) * B + b) * XSTRIDE + u0 + u] = (hv); } while (0)
#else
#define HANDOFF(hv) (hx[((size_t)(chain * T + t) * B + b) * XSTRIDE + u0 + u] = (hv))
#endif
#define HCH ((H * (int)sizeof(st)) % 16 == 0 ? VEC : 1)  // elements a copy of the cell's h (PROJ)

#if CLUSTER
#define CLUSTER_DIMS __cluster_dims__(NBC, 1, 1)
#else
#define CLUSTER_DIMS
#endif
extern "C" __global__ void CLUSTER_DIMS __launch_bounds__(NTHREADS, 1) KERNEL_NAME(
    const unsigned long long* __restrict__ ptrs, unsigned long long* xch, const int T)
{
#include "prologue.cuh"
    PROF_START
    unsigned int* counters = (unsigned int*)xch;  // [chain][t]: blocks that have published h
    // [chain][t][b][XSTRIDE]: h in the storage type, after a counter per chain and step (16-byte aligned;
    // PROJ: two such arrays, the second of blocks that handed over the cell's h)
    const size_t counter_bytes = ((L * D * T * 4 + 15) / 16) * 16;
    st* hx = (st*)((unsigned char*)xch + counter_bytes * (1 + PROJ));
#if PROJ
    // The projection: the cell's h ([chain][t][b][HSTRIDE], after the projected h), this block's rows
    // of W_hr and the chain's whole cell h of a step in shared memory (storage type).
    unsigned int* cell_counters = (unsigned int*)((unsigned char*)xch + counter_bytes);
    st* hfx = hx + (size_t)L * D * T * B * XSTRIDE;
    st* whr_s = (st*)(smem + OFF_WHR);
    st* hf_s = (st*)(smem + OFF_HFULL);
    const int p0 = (blockIdx.x % NBC) * PU, np = max(0, min(PU, R - p0));
    float* psum_s = (float*)(smem + OFF_PROJSUM);
    {  // rows PSTRIDE apart, zero past H (the mma's K padding); tf32: rounded once here, as W_hh is
        const st* whr = (const st*)cp[PER_CHAIN - 1];
        for (int i = tid; i < np * PSTRIDE; i += blockDim.x) {
            const int row = i / PSTRIDE, k = i % PSTRIDE;
            float v = k < H ? to_f(whr[(size_t)(p0 + row) * H + k]) : 0.0f;
#if TF32
            unsigned int w;
            asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(w) : "f"(v));
            v = __uint_as_float(w);
#endif
            put(&whr_s[i], v);
        }
        // the staged cell h: zero where staging never writes (K padding, batch rows up to the n-tiles)
        for (int i = tid; i < (B + 7) / 8 * 8 * PSTRIDE; i += blockDim.x) put(&hf_s[i], 0.0f);
    }
#endif
    const uint4* wf = (const uint4*)(smem + OFF_WEIGHTS);
    // [h | layer input] of the batch tile being worked on (CLUSTER: two such buffers, by step parity)
    st* const stage0 = (st*)(smem + OFF_STAGE);
#if CLUSTER
    st* hs = (st*)(smem + OFF_HSLICE);  // this block's units of h of the step, [B][U], for hand_to_cluster
    // handbar + 8 * p: the mbarrier of staging buffer p, whose phase k completes when the peers' h of the
    // step before its (k+1)-th reader has landed; (NBC - 1) slices of B x U values a phase
    const unsigned int handbar = (unsigned int)__cvta_generic_to_shared(smem + OFF_HANDBAR);
    const unsigned int hand_bytes = (NBC - 1) * B * U * (unsigned int)sizeof(st);
    const int rank = blockIdx.x % NBC;
    if (tid == 0) {
        bar_init(handbar);
        bar_init(handbar + 8);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        bar_arm(handbar, hand_bytes);
        bar_arm(handbar + 8, hand_bytes);
    }
#endif
    float* gx_s = (float*)(smem + OFF_GX);
    float* gh_s = (float*)(smem + OFF_GH);
    float* partial = (float*)(smem + OFF_PARTIAL);  // [KSPLIT - 1][gx, gh][BT][GS]
    const int kt = KHT + (layer == 0 ? 0 : KXP / KSTEP);  // k-steps this block runs

    // W_hh | W_ih rows of this block as A fragments (`a_word` gives their layout): in shared memory,
    // fragment (ks, mt) as 32 lanes x 4 words; or, with weights in registers, each warp's own.
    // IN_FLIGHT loads a thread in flight before their stores.
    if (!REG_A) {
        unsigned int* wsm = (unsigned int*)(smem + OFF_WEIGHTS);
        const int words = kt * MT * 128;
        for (int w0 = tid; w0 < words; w0 += IN_FLIGHT * NTHREADS) {
            unsigned int v[IN_FLIGHT];
            bool slow = false;
#pragma unroll
            for (int q = 0; q < IN_FLIGHT; ++q) {
                const int w = w0 + q * NTHREADS, f = w >> 7;
                v[q] = a_word_fast(whh, first, u0, nu, kin, f / MT, f % MT, (w >> 2) & 31, w & 3, w < words, slow);
            }
            if (slow)
#pragma unroll
                for (int q = 0; q < IN_FLIGHT; ++q) {
                    const int w = w0 + q * NTHREADS, f = w >> 7;
                    if (w < words) v[q] = a_word(whh, first, u0, nu, kin, f / MT, f % MT, (w >> 2) & 31, w & 3);
                }
#pragma unroll
            for (int q = 0; q < IN_FLIGHT; ++q)
                if (w0 + q * NTHREADS < words) wsm[w0 + q * NTHREADS] = v[q];
        }
    }
    // With weights in registers a warp's job is fixed: m-tile rmt, part rpart (0: h, 1: layer input), k-steps
    // [rk0, rk0 + rkn) of that part; warps past the jobs (or with an empty part, layer 0's input) hold none.
    const int rmt = warp % MGROUPS * MG, rpart = (warp / MGROUPS) % NPARTS, rslice = warp / (MGROUPS * NPARTS);
    const int rkp = rpart == 0 ? KHT : (layer == 0 ? 0 : KXP / KSTEP);
    const int rk0 = rslice * rkp / KSPLIT, rkn = warp < RJOBS ? (rslice + 1) * rkp / KSPLIT - rk0 : 0;
    // As a_word_fast says why: where all of a warp's words lie whole and aligned inside its part (`plain`),
    // each is one unconditional load from a valid address (a padding row reads unit u0's row) and a
    // select, a k-step's loads in flight together; otherwise a_word word by word.
    uint4 areg[MG][KREG];
#pragma unroll
    for (int m = 0; m < MG; ++m)
#pragma unroll
        for (int j = 0; j < KREG; ++j) areg[m][j] = make_uint4(0u, 0u, 0u, 0u);
    const st* const pbase = rpart == 0 ? whh : first;
    const int pstride = rpart == 0 ? R : kin;
    const bool plain = (rk0 + rkn) * KSTEP <= pstride && (TF32 || (pstride % 2 == 0 && ((size_t)pbase & 3) == 0));
    if (REG_A && rkn > 0 && plain) {
#pragma unroll
        for (int m = 0; m < MG; ++m) {
            const st* rowp[2];
            bool rowok[2];
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = (rmt + m) * 16 + (lane >> 2) + half * 8, g = row / U, u = row % U;
                rowok[half] = g < G && u < nu;
                rowp[half] = pbase + (size_t)(rowok[half] ? g * H + u0 + u : u0) * pstride;
            }
#pragma unroll
            for (int j = 0; j < KREG; ++j) {
                // A k-step past the job is skipped by one warp-uniform branch around its 4 x MG loads
                // (issuing those too, clamped to valid addresses, spilled registers in some kernels).
                if (j >= rkn) continue;
                const int k0 = (rk0 + j) * KSTEP + (TF32 ? (lane & 3) : (lane & 3) * 2);
                unsigned int packed[4];
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    const int k = k0 + (p >> 1) * (TF32 ? 4 : 8);
                    unsigned int w = __ldg((const unsigned int*)(rowp[p & 1] + k));
#if TF32
                    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(w) : "f"(__uint_as_float(w)));
#endif
                    packed[p] = rowok[p & 1] ? w : 0u;
                }
                areg[m][j] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
            }
        }
    } else if (REG_A && rkn > 0) {
#pragma unroll
        for (int m = 0; m < MG; ++m)
#pragma unroll
            for (int j = 0; j < KREG; ++j) {
                unsigned int packed[4] = {0u, 0u, 0u, 0u};
                if (j < rkn)
#pragma unroll
                    for (int p = 0; p < 4; ++p)
                        packed[p] = a_word(whh, first, u0, nu, kin, rpart * KHT + rk0 + j, rmt + m, lane, p);
                areg[m][j] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
            }
    }
    float* bias_s = (float*)(smem + OFF_BIAS);  // [b_ih | b_hh] of this block's rows, fp32
    for (int i = tid; i < 2 * RP; i += blockDim.x) {
        const int row = i % RP, g = row / U, u = row % U;
        const st* b = i < RP ? bih : bhh;
        bias_s[i] = BIAS && g < G && u < nu ? to_f(b[g * H + u0 + u]) : 0.0f;
    }
    for (int i = tid; i < (1 + CLUSTER) * BT * KS; i += blockDim.x) put(&stage0[i], 0.0f);
    st* xs = (st*)(smem + OFF_XPROJ);  // XPRE: layer 0's input projection of the coming step
    if (XPRE && layer == 0) prefetch_xproj(xs, first, dir == 0 ? 0 : T - 1, u0);
    staged();
    __syncthreads();
#if CLUSTER
    cluster_arrive();  // every block's staging cleared and mbarriers armed before any peer writes h into it
    cluster_wait();
#endif

    PROF(7);  // set-up: weights on-chip, biases, staging cleared
    for (int s = 0; s < T; ++s) {
        const int t = dir == 0 ? s : T - 1 - s;
        const int tprev = dir == 0 ? t - 1 : t + 1;
        st* const stage = stage0 + (CLUSTER ? (s & 1) * BT * KS : 0);
        for (int b0 = 0; b0 < B; b0 += BT) {
            PROF(0);
            // Gate sums start from what does not depend on h: the biases (kept in shared memory) and, in
            // layer 0, the input projection (cuBLAS's, in global memory), loaded before the wait hides it.
            {
                float fx[FILL], fh[FILL];  // all loads in flight before the first store
#pragma unroll
                for (int q = 0; q < FILL; ++q) {
                    const int i = tid + q * NTHREADS, bl = i / RP, row = i % RP, g = row / U, u = row % U;
                    fx[q] = 0.0f;
                    if (layer == 0 && i < BT * RP && g < G && u < nu && b0 + bl < B)
                        fx[q] = XPRE ? to_f(xs[bl * RP + row])
                                     : to_f(first[((size_t)t * B + b0 + bl) * (G * H) + g * H + u0 + u]);
                    fx[q] += bias_s[row];
                    fh[q] = bias_s[RP + row];
                }
#pragma unroll
                for (int q = 0; q < FILL; ++q)
                    if (tid + q * NTHREADS < BT * RP) {
                        const int at = (tid + q * NTHREADS) / RP * GS + (tid + q * NTHREADS) % RP;
                        gx_s[at] = fx[q];
                        gh_s[at] = fh[q];
                    }
            }
            PROF(1);
            // Stage [h | layer input] of the tile's batch rows in the storage type (a last, partial tile's rows past
            // B keep stale data, whose sums are never read). Cells that do not read h_prev had the
            // tiles after the first staged during the previous tile's cell update.
            if (b0 == 0) {  // above layer 0, wait until the layer below published time t in every
                if (tid == 0)  // direction and copy that in while waiting for this chain's step s-1
                    for (int d2 = 0; layer > 0 && d2 < D; ++d2) await_count(&counters[((layer - 1) * D + d2) * T + t]);
                __syncthreads();
            PROF(2);
                stage_x(stage, hx, b0, t, layer, T);
#if CLUSTER
                if (s > 0) {  // the cluster's blocks wrote h of step s-1 into `stage` (buffer s & 1)
                    const unsigned int bar = handbar + 8 * (s & 1);
                    bar_wait(bar, ((s - 1) >> 1) & 1);
                    // arm the buffer's next phase: its peers write it again only after this block's h of
                    // step s reached them, which is after this (block barriers below)
                    if (tid == 0) bar_arm(bar, hand_bytes);
                }
#else
                if (tid == 0 && s > 0) await_count(&counters[chain * T + tprev]);
                __syncthreads();
#endif
            PROF(3);
                if (!CLUSTER || s == 0) stage_h(stage, hx, h0, b0, s, tprev, T, chain);
                cp_async_commit();  // the staging copies, then (XPRE) the next step's projection
                // every thread has filled from `xs` (barriers above): bring the next step's projection,
                // waited for at the end of this step, so that its latency hides behind the whole step
                if (XPRE && layer == 0 && s + 1 < T) prefetch_xproj(xs, first, dir == 0 ? t + 1 : t - 1, u0);
                cp_async_commit();
            } else if (READS_HPREV) stage_tile(stage, hx, h0, b0, s, t, tprev, T, chain, layer);
            if (XPRE) staged_but_last();  // (XPRE: one tile) the staging copies, not the prefetch
            else staged();
            __syncthreads();
            PROF(4);
            if (REG_A) {  // this warp's fixed job, A fragments from registers, NC n-tiles at a time
                // slice 0 owns the part's gate sums; later slices write their own partial slots
                float* sums = rslice == 0 ? (rpart ? gx_s : gh_s) : partial + ((rslice - 1) * 2 + 1 - rpart) * BT * GS;
                for (int nc = 0; warp < RJOBS && nc < NT; nc += NC) {
                    // NACC sets of accumulators, k-steps taken round-robin and summed at the end: a warp
                    // with few tiles (MG x NC) would otherwise wait out each mma's latency on the last
                    float acc[NACC][MG][NC][4];
#pragma unroll
                    for (int a = 0; a < NACC; ++a)
#pragma unroll
                    for (int m = 0; m < MG; ++m)
#pragma unroll
                        for (int n = 0; n < NC; ++n)
#pragma unroll
                            for (int e = 0; e < 4; ++e) acc[a][m][n][e] = 0.0f;
                    const unsigned int base = b_base(stage + nc * 8 * KS + rpart * KHP, lane);
                    // One B fragment per n-tile feeds MG mma; k-step j + 1's are loaded before k-step j's
                    // mma are issued, so that the ldmatrix latency hides behind them.
                    unsigned int b[2][NC][2];
                    if (rkn > 0) load_b(b[0], base, rk0);
#pragma unroll
                    for (int j = 0; j < KREG; ++j) {
                        if (j >= rkn) break;
                        if (j + 1 < rkn) load_b(b[(j + 1) & 1], base, rk0 + j + 1);
#pragma unroll
                        for (int m = 0; m < MG; ++m)
#pragma unroll
                            for (int n = 0; n < NC; ++n)
                                mma_tc(acc[j % NACC][m][n], areg[m][j], b[j & 1][n][0], b[j & 1][n][1]);
                    }
#pragma unroll
                    for (int a = 1; a < NACC; ++a)
#pragma unroll
                        for (int m = 0; m < MG; ++m)
#pragma unroll
                            for (int n = 0; n < NC; ++n)
#pragma unroll
                                for (int e = 0; e < 4; ++e) acc[0][m][n][e] += acc[a][m][n][e];
#pragma unroll
                    for (int m = 0; m < MG; ++m) put_sums(sums, rslice == 0, acc[0][m], rmt + m, nc, lane);
                }
            } else for (int job = warp; job < MT * NG * KSPLIT; job += nwarps) {
                const int mt = job % MT, ng = (job / MT) % NG, slice = job / (MT * NG);
                const int k0 = slice * kt / KSPLIT, k1 = (slice + 1) * kt / KSPLIT;
                float ah[NPG][4], ax[NPG][4];
#pragma unroll
                for (int n = 0; n < NPG; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) { ah[n][e] = 0.0f; ax[n][e] = 0.0f; }
                const unsigned int base = b_base(stage + ng * NPG * 8 * KS, lane);
                for (int ks = k0; ks < min(k1, KHT); ++ks) mma_step(ah, wf[(ks * MT + mt) * 32 + lane], base, ks);
                for (int ks = max(k0, KHT); ks < k1; ++ks) mma_step(ax, wf[(ks * MT + mt) * 32 + lane], base, ks);
                float* px = partial + (slice - 1) * 2 * BT * GS;  // slices after the first: own slots
                put_sums(slice == 0 ? gh_s : px + BT * GS, slice == 0, ah, mt, ng * NPG, lane);
                put_sums(slice == 0 ? gx_s : px, slice == 0, ax, mt, ng * NPG, lane);
            }
            __syncthreads();
            if (!READS_HPREV && b0 + BT < B) stage_tile(stage, hx, h0, b0 + BT, s, t, tprev, T, chain, layer);
            PROF(5);
            for (int i = tid; i < BT * nu; i += blockDim.x) {
                const int bl = i / nu, u = i % nu, b = b0 + bl;
                if (b >= B) break;
#define GX(g) gate_sum(gx_s, partial, 0, bl * GS + (g) * U + u)
#define GH(g) gate_sum(gh_s, partial, 1, bl * GS + (g) * U + u)
                const float hprev = READS_HPREV && !PROJ ? to_f(stage[bl * KS + u0 + u]) : 0.0f;  // (PROJ: LSTM)
#include "cell_step.cuh"
#undef GX
#undef GH
            }
            if (XPRE) staged();  // the next step's projection, which the next fill reads (barrier below)
            __syncthreads();  // the next tile restages `stage` and the gate sums
            PROF(6);
        }
#if PROJ
        // The projection: the cell's h of step s handed over (barrier above), wait for the chain's whole
        // of it, stage it, and this block's rows of h = W_hr @ h_cell (project_mma) go to y and the
        // exchange, where this chain's next step and the layer above read them.
        if (tid == 0) {
            publish_count(&cell_counters[chain * T + t]);
            await_count(&cell_counters[chain * T + t]);
        }
        __syncthreads();
        for (int i = tid; i < B * (H / HCH); i += blockDim.x) {
            const int b = i / (H / HCH), c = i % (H / HCH);
            st* dst = hf_s + b * PSTRIDE + c * HCH;
            const st* from = hfx + ((size_t)(chain * T + t) * B + b) * HSTRIDE + c * HCH;
            if (HCH == VEC) {
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
                             :: "r"((unsigned int)__cvta_generic_to_shared(dst)), "l"(from));
            } else {
                *(st_bits*)dst = __ldcg((const st_bits*)from);
            }
        }
        staged();
        __syncthreads();  // (profiled with the publish and the loop, slot 0)
        project_mma(whr_s, hf_s, psum_s, np, lane, warp, nwarps, [&](int p, int b, float sum) {
            st hv;
            put(&hv, sum);
            st* to = &hx[((size_t)(chain * T + t) * B + b) * XSTRIDE + p0 + p];
#if MASKED  // past a sequence's end: the previous projected h kept (this block's own rows), y 0, the last layer's y only
            const bool live = to_f(mask[(size_t)t * B + b]) != 0.0f;
            if (!live) hv = s == 0 ? h0[(size_t)(chain * B + b) * R + p0 + p]
                                   : hx[((size_t)(chain * T + tprev) * B + b) * XSTRIDE + p0 + p];
            if (layer == L - 1) put(&y[((size_t)t * B + b) * (D * R) + dir * R + p0 + p], live ? to_f(hv) : 0.0f);
            if (s == T - 1) hn[(size_t)(chain * B + b) * R + p0 + p] = hv;
#else
            y[((size_t)t * B + b) * (D * R) + dir * R + p0 + p] = hv;
#endif
            *to = hv;
        });
        __syncthreads();
#endif
#if CLUSTER
        // h of step s (hs, complete after the barrier above) into every block's other staging buffer,
        // whose mbarrier each block waits at in step s + 1 (none after the last step: no one reads it).
        // No peer still reads that buffer: it did in step s - 1, before it handed over the h of step
        // s - 1 that this block needed for step s.
        if (s + 1 < T) hand_to_cluster(hs, stage0 + ((s + 1) & 1) * BT * KS, handbar + 8 * ((s + 1) & 1), u0, rank);
        if (tid == 0 && layer < L - 1) publish_count(&counters[chain * T + t]);  // for the layer above (barrier above)
#else
        if (tid == 0) publish_count(&counters[chain * T + t]);  // every thread's h of step s is written (barrier above)
#endif
    }
#if CLUSTER
    cluster_arrive();  // no block leaves while a peer's stores into it may be in flight
    cluster_wait();
#endif
    PROF_END
}
