"""CUDA source for the tensor-core persistent kernel (fp16 storage; `Recurrence.batch_tile` > 0).

Same work split as the FFMA kernel (`persistent_kernel.py`: one block per slice of a chain's hidden
units, layers in a wavefront, c on-chip), different arithmetic and hand-off:

- the block's weight rows (gates x units, padded to 16) over both reductions ([W_hh | W_ih], each
  padded to 16) are copied once into shared memory in the order of `mma.sync.m16n8k16` A fragments,
  so a warp fetches one fragment with one conflict-free 16-byte load per lane;
- h is published in fp16 rows ([chain][t][b][H padded to 8]) and a per-(chain, step) counter that
  each block bumps once its slice is written (barrier, fence, atomic add). A reader's thread 0 waits
  for the counters it needs; then the whole block copies the rows into shared memory with cp.async
  (16 bytes a copy, all in flight at once). At batch 1-2 the FFMA kernel's tagged words, which
  need one L2 round trip per hand-off instead of two, are faster, and the planner uses that kernel;
- per step, the batch is processed in tiles of `batch_tile` rows: the tile's gate sums start from
  the biases (kept in shared memory) and, in layer 0, cuBLAS's input projection, loaded before the
  wait; each warp owns one m-tile and one group of the tile's 8-row n-tiles (`Recurrence.mma_split`),
  loads B fragments with ldmatrix, accumulates in fp32 and adds into the gate sums alone, with no
  atomics; where there are fewer such jobs than warps, k is split and the later slices write
  partial sums of their own, which the cell update adds. The cell update of the tile follows.

Pure Python: generates source; the CuPy executor compiles and launches it.
"""

from __future__ import annotations

from rnnplan.backends.persistent_kernel import THREADS, cell_update, prelude


def mma_source(r) -> str:
    khp, kxp = r.mma_k
    defines = f"""#define BT {r.batch_tile}
#define NT (BT / 8)
#define RP {r.mma_rows}
#define MT (RP / 16)
#define KHP {khp}
#define KXP {kxp}
#define KHT (KHP / 16)
#define KS {r.stage_stride}
#define XSTRIDE {r.exchange_stride}  // halves per published row of h
#define CNT_BYTES {r.exchange_counter_bytes}
#define NG {r.mma_split[0]}
#define NPG (NT / NG)
#define KSPLIT {r.mma_split[1]}
#define NTHREADS {THREADS}
#define READS_HPREV {int(r.cell == "gru")}  // the cell update reads h of the previous step
#define FILL {-(-r.batch_tile * r.mma_rows // THREADS)}  // gate sums each thread fills
#define CHUNK {8 if r.hidden % 8 == 0 else 1}  // halves per staging copy (16 bytes when rows allow)
"""
    return prelude(r, defines + MMA_HELPERS) + f"""    unsigned int* counters = (unsigned int*)xch;  // [chain][t]: blocks that have published h
    __half* hx = (__half*)((unsigned char*)xch + CNT_BYTES);  // [chain][t][b][XSTRIDE]: h in fp16
    const uint4* wf = (const uint4*)(smem + OFF_WEIGHTS);
    __half* stage = (__half*)(smem + OFF_STAGE);
    float* gx_s = (float*)(smem + OFF_GX);
    float* gh_s = (float*)(smem + OFF_GH);
    float* partial = (float*)(smem + OFF_PARTIAL);  // [KSPLIT - 1][gx, gh][BT][RP]
    const int kt = KHT + (layer == 0 ? 0 : KXP / 16);  // k-steps this block runs

    // W_hh | W_ih rows of this block as A fragments: fragment (ks, mt) is 32 lanes x 8 halves.
    // Lane l holds rows mt*16 + l/4 (+8) and columns ks*16 + (l%4)*2 (+1) (+8), PTX's layout.
    __half* wsm = (__half*)(smem + OFF_WEIGHTS);
    for (int i = tid; i < kt * MT * 256; i += blockDim.x) {{
        const int j = i & 7, ln = (i >> 3) & 31, f = i >> 8, mt = f % MT, ks = f / MT, q = j >> 1;
        const int row = mt * 16 + (ln >> 2) + (q & 1) * 8;
        const int k = ks * 16 + (ln & 3) * 2 + (q >> 1) * 8 + (j & 1);
        const int g = row / U, u = row % U;
        float w = 0.0f;
        if (g < G && u < nu) {{
            if (k < KHP) {{ if (k < H) w = to_f(whh[(size_t)(g * H + u0 + u) * H + k]); }}
            else if (k - KHP < kin) w = to_f(first[(size_t)(g * H + u0 + u) * kin + (k - KHP)]);
        }}
        wsm[i] = __float2half_rn(w);
    }}
    float* bias_s = (float*)(smem + OFF_BIAS);  // [b_ih | b_hh] of this block's rows, fp32
    for (int i = tid; i < 2 * RP; i += blockDim.x) {{
        const int row = i % RP, g = row / U, u = row % U;
        const st* b = i < RP ? bih : bhh;
        bias_s[i] = BIAS && g < G && u < nu ? to_f(b[g * H + u0 + u]) : 0.0f;
    }}
    for (int i = tid; i < BT * KS; i += blockDim.x) stage[i] = __float2half_rn(0.0f);
    __syncthreads();
    const int grp = lane >> 2, tig = lane & 3;

    for (int s = 0; s < T; ++s) {{
        const int t = dir == 0 ? s : T - 1 - s;
        const int tprev = dir == 0 ? t - 1 : t + 1;
        for (int b0 = 0; b0 < B; b0 += BT) {{
            // Gate sums start from what does not depend on h: the biases (kept in shared memory) and, in
            // layer 0, the input projection (cuBLAS's, in global memory), loaded before the wait hides it.
            {{
                float fx[FILL], fh[FILL];  // all loads in flight before the first store
#pragma unroll
                for (int q = 0; q < FILL; ++q) {{
                    const int i = tid + q * NTHREADS, bl = i / RP, row = i % RP, g = row / U, u = row % U;
                    fx[q] = 0.0f;
                    if (layer == 0 && i < BT * RP && g < G && u < nu && b0 + bl < B)
                        fx[q] = to_f(first[((size_t)t * B + b0 + bl) * (G * H) + g * H + u0 + u]);
                    fx[q] += bias_s[row];
                    fh[q] = bias_s[RP + row];
                }}
#pragma unroll
                for (int q = 0; q < FILL; ++q)
                    if (tid + q * NTHREADS < BT * RP) {{ gx_s[tid + q * NTHREADS] = fx[q]; gh_s[tid + q * NTHREADS] = fh[q]; }}
            }}
            if (b0 == 0) {{  // wait until every block of this chain published step s-1 and, above
                if (tid == 0) {{  // layer 0, the layer below published time t in every direction
                    if (s > 0) await_count(&counters[chain * T + tprev]);
                    for (int d2 = 0; layer > 0 && d2 < D; ++d2) await_count(&counters[((layer - 1) * D + d2) * T + t]);
                    __threadfence();
                }}
                __syncthreads();
            }}
            // Stage [h | layer input] of the tile's batch rows in fp16 (a last, partial tile's rows past
            // B keep stale data, whose sums are never read). Cells that do not read h_prev had the
            // tiles after the first staged during the previous tile's cell update.
            if (b0 == 0 || READS_HPREV) stage_tile(stage, hx, h0, b0, s, t, tprev, chain, layer);
            staged();
            __syncthreads();
            for (int job = warp; job < MT * NG * KSPLIT; job += nwarps) {{
                const int mt = job % MT, ng = (job / MT) % NG, slice = job / (MT * NG);
                const int k0 = slice * kt / KSPLIT, k1 = (slice + 1) * kt / KSPLIT;
                float ah[NPG][4], ax[NPG][4];
#pragma unroll
                for (int n = 0; n < NPG; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {{ ah[n][e] = 0.0f; ax[n][e] = 0.0f; }}
                const __half* rows_of_group = stage + ng * NPG * 8 * KS;
                mma_steps(ah, wf, rows_of_group, mt, k0, min(k1, KHT), lane);
                mma_steps(ax, wf, rows_of_group, mt, max(k0, KHT), k1, lane);
                float* px = partial + (slice - 1) * 2 * BT * RP;  // slices after the first: own slots
#pragma unroll
                for (int n = 0; n < NPG; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {{  // C: row mt*16 + grp (+8), batch column n*8 + tig*2 (+1)
                        const int row = mt * 16 + grp + (e >> 1) * 8, bl = (ng * NPG + n) * 8 + tig * 2 + (e & 1);
                        const int at = bl * RP + row;
                        if (slice == 0) {{  // this warp alone owns these sums: no atomics
                            gh_s[at] += ah[n][e];
                            gx_s[at] += ax[n][e];
                        }} else {{
                            px[BT * RP + at] = ah[n][e];
                            px[at] = ax[n][e];
                        }}
                    }}
            }}
            __syncthreads();
            if (!READS_HPREV && b0 + BT < B) stage_tile(stage, hx, h0, b0 + BT, s, t, tprev, chain, layer);
            for (int i = tid; i < BT * nu; i += blockDim.x) {{
                const int bl = i / nu, u = i % nu, b = b0 + bl;
                if (b >= B) break;
#define GX(g) gate_sum(gx_s, partial, 0, bl * RP + (g) * U + u)
#define GH(g) gate_sum(gh_s, partial, 1, bl * RP + (g) * U + u)
                const float hprev = READS_HPREV ? __half2float(stage[bl * KS + u0 + u]) : 0.0f;
{cell_update(r, HANDOFF)}
#undef GX
#undef GH
            }}
            __syncthreads();  // the next tile restages `stage` and the gate sums
        }}
        if (tid == 0) {{  // every thread's h of step s is written (barrier above): publish them
            __threadfence();
            atomicAdd(&counters[chain * T + t], 1u);
        }}
    }}
}}
"""


HANDOFF = """            hx[((size_t)(chain * T + t) * B + b) * XSTRIDE + u0 + u] = hv;"""


MMA_HELPERS = """// D (16x8, fp32) += A (16x16, fp16, row-major) * B (16x8, fp16, column-major). Volatile on purpose:
// letting the compiler reorder the mma (a pure function of registers) measured 15% slower at batch 4.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint4& a, unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void await_count(const unsigned int* counter) {
    while (*((volatile const unsigned int*)counter) < NBC) { }
}

// Stage `rows` batch rows (from b0) of one published h, src [b][XSTRIDE], into stage columns col0 ... col0+H.
// 16-byte rows go by cp.async (L2 -> shared memory, no registers, all in flight at once; .cg reads
// L2, where other SMs' writes are); the caller waits with `staged()`. Odd widths copy halves.
__device__ __forceinline__ void stage_part(__half* stage, const __half* src, int rows, int b0, int col0) {
    for (int i = threadIdx.x; i < rows * (H / CHUNK); i += blockDim.x) {
        const int bl = i / (H / CHUNK), c = i % (H / CHUNK);
        __half* dst = stage + bl * KS + col0 + c * CHUNK;
        const __half* from = src + (size_t)(b0 + bl) * XSTRIDE + c * CHUNK;
        if (CHUNK == 8) {
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\\n"
                         :: "r"((unsigned int)__cvta_generic_to_shared(dst)), "l"(from));
        } else {
            *(unsigned short*)dst = __ldcg((const unsigned short*)from);
        }
    }
}

__device__ __forceinline__ void staged() {
    asm volatile("cp.async.wait_all;\\n" ::);
}

__device__ __forceinline__ void stage_h0(__half* stage, const st* h0, int rows, int b0, int chain) {
    for (int i = threadIdx.x; i < rows * H; i += blockDim.x)
        stage[(i / H) * KS + i % H] = h0[(size_t)(chain * B + b0 + i / H) * H + i % H];
}

// Stage batch rows b0 ... b0 + BT (those below B) of [h of step s-1 | the layer below's h at time t].
__device__ __forceinline__ void stage_tile(__half* stage, const __half* hx, const st* h0, int b0, int s, int t, int tprev,
                                           int chain, int layer) {
    const int rows = min(BT, B - b0);
    if (s == 0) stage_h0(stage, h0, rows, b0, chain);
    else stage_part(stage, hx + ((size_t)chain * T + tprev) * B * XSTRIDE, rows, b0, 0);
    for (int d2 = 0; layer > 0 && d2 < D; ++d2)
        stage_part(stage, hx + ((size_t)((layer - 1) * D + d2) * T + t) * B * XSTRIDE, rows, b0, KHP + d2 * H);
}

// A gate's sum (which: 0 x-part, 1 h-part) over the first k-slice's slot and the others' partials.
__device__ __forceinline__ float gate_sum(const float* sums, const float* partial, int which, int at) {
    float v = sums[at];
#pragma unroll
    for (int slice = 1; slice < KSPLIT; ++slice) v += partial[((slice - 1) * 2 + which) * BT * RP + at];
    return v;
}

// k-step ks of m-tile mt against NTILES n-tiles of the staged rows at `base`, added into acc.
// B fragments come by ldmatrix: lanes 8m..8m+7 point at the rows of 8x8 matrix m (n-tile n + m/2,
// columns ks*16 + (m%2)*8), and lane l receives row l/4, columns 2*(l%4) and +1, PTX's B layout.
template <int NTILES>
__device__ __forceinline__ void mma_step(float (&acc)[NTILES][4], const uint4* wf, unsigned int base, int mt, int ks,
                                         int lane) {
    const uint4 a = wf[(ks * MT + mt) * 32 + lane];
#pragma unroll
    for (int n = 0; n + 1 < NTILES; n += 2) {
        unsigned int b0, b1, b2, b3;
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\\n"
                     : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3) : "r"(base + (n * 8 * KS + ks * 16) * 2));
        mma16816(acc[n], a, b0, b1);
        mma16816(acc[n + 1], a, b2, b3);
    }
    if (NTILES % 2) {
        unsigned int b0, b1;
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\\n"
                     : "=r"(b0), "=r"(b1) : "r"(base + ((NTILES - 1) * 8 * KS + ks * 16) * 2));
        mma16816(acc[NTILES - 1], a, b0, b1);
    }
}

// k-steps [ks0, ks1) of m-tile mt against NTILES n-tiles of staged rows from `stage`, added into acc.
template <int NTILES>
__device__ __forceinline__ void mma_steps(float (&acc)[NTILES][4], const uint4* wf, const __half* stage, int mt,
                                          int ks0, int ks1, int lane) {
    const int mat = lane >> 3, row = lane & 7;
    const unsigned int base = (unsigned int)__cvta_generic_to_shared(stage + ((mat >> 1) * 8 + row) * KS + (mat & 1) * 8);
    for (int ks = ks0; ks < ks1; ++ks) mma_step(acc, wf, base, mt, ks, lane);
}

"""
