"""CUDA source for the tensor-core persistent kernel (fp16 storage; `Recurrence.batch_tile` > 0).

Same protocol as the FFMA kernel (`persistent_kernel.py`: one block per slice of a chain's hidden
units, h handed over as tagged exchange words, layers in a wavefront), different arithmetic:

- the block's weight rows (gates x units, padded to 16) and both reductions ([W_hh | W_ih], each
  padded to 16) are copied once into shared memory in the order of `mma.sync.m16n8k16` A fragments,
  so a warp fetches one fragment with one conflict-free 16-byte load per lane;
- per step, the batch is processed in tiles of `batch_tile` rows: [h | layer input] of the tile is
  staged in fp16 (8 exchange words in flight per thread, so the L2 round trips overlap), then each
  warp runs the k-steps of one m-tile against every 8-row n-tile of the batch tile, accumulating in
  fp32, and adds its partial sums into the tile's gate pre-activations (split-K over the warps when
  there are fewer m-tiles than warps); the cell update of the tile follows.

Pure Python: generates source; the CuPy executor compiles and launches it.
"""

from __future__ import annotations

from rnnplan.backends.persistent_kernel import cell_update, prelude


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
#define HX {r.exchange_stride}
#define CNT_BYTES {r.exchange_counter_bytes}
#define E {8 if r.hidden % 8 == 0 else 1}
"""
    return prelude(r, defines + MMA_HELPERS) + f"""    unsigned int* counters = (unsigned int*)xch;  // [chain][t]: blocks that have published h
    __half* hx = (__half*)((unsigned char*)xch + CNT_BYTES);  // [chain][t][b][HX]: h in fp16
    const uint4* wf = (const uint4*)(smem + OFF_WEIGHTS);
    __half* stage = (__half*)(smem + OFF_STAGE);
    float* gx_s = (float*)(smem + OFF_GX);
    float* gh_s = (float*)(smem + OFF_GH);
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
    for (int i = tid; i < BT * KS; i += blockDim.x) stage[i] = __float2half_rn(0.0f);
    __syncthreads();
    const int ksplit = MT >= nwarps ? 1 : nwarps / MT;
    const int grp = lane >> 2, tig = lane & 3;

    for (int s = 0; s < T; ++s) {{
        const int t = dir == 0 ? s : T - 1 - s;
        const int tprev = dir == 0 ? t - 1 : t + 1;
        for (int b0 = 0; b0 < B; b0 += BT) {{
            if (b0 == 0) {{  // wait until every block of this chain published step s-1 and, above
                if (tid == 0) {{  // layer 0, the layer below published time t in every direction
                    if (s > 0) await_count(&counters[chain * T + tprev]);
                    for (int d2 = 0; layer > 0 && d2 < D; ++d2) await_count(&counters[((layer - 1) * D + d2) * T + t]);
                    __threadfence();
                }}
                __syncthreads();
            }}
            // Stage [h | layer input] of the tile's batch rows in fp16 (rows past B stay zero).
            const int rows = min(BT, B - b0);
            if (s == 0) stage_h0(stage, h0, rows, b0, chain);
            else stage_part(stage, hx + ((size_t)chain * T + tprev) * B * HX, rows, b0, 0);
            for (int d2 = 0; layer > 0 && d2 < D; ++d2)
                stage_part(stage, hx + ((size_t)((layer - 1) * D + d2) * T + t) * B * HX, rows, b0, KHP + d2 * H);
            for (int i = tid; i < BT * RP; i += blockDim.x) {{ gx_s[i] = 0.0f; gh_s[i] = 0.0f; }}
            staged();
            __syncthreads();
            for (int job = warp; job < MT * ksplit; job += nwarps) {{
                const int mt = job % MT, slice = job / MT;
                const int k0 = slice * kt / ksplit, k1 = (slice + 1) * kt / ksplit;
                float ah[NT][4], ax[NT][4];
#pragma unroll
                for (int n = 0; n < NT; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {{ ah[n][e] = 0.0f; ax[n][e] = 0.0f; }}
                mma_steps(ah, wf, stage, mt, k0, min(k1, KHT), grp, tig, lane);
                mma_steps(ax, wf, stage, mt, max(k0, KHT), k1, grp, tig, lane);
#pragma unroll
                for (int n = 0; n < NT; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {{  // C: row mt*16 + grp (+8), batch column n*8 + tig*2 (+1)
                        const int row = mt * 16 + grp + (e >> 1) * 8, bl = n * 8 + tig * 2 + (e & 1);
                        atomicAdd(&gh_s[bl * RP + row], ah[n][e]);
                        if (layer > 0) atomicAdd(&gx_s[bl * RP + row], ax[n][e]);
                    }}
            }}
            __syncthreads();
            for (int i = tid; i < BT * nu; i += blockDim.x) {{
                const int bl = i / nu, u = i % nu, b = b0 + bl;
                if (b >= B) break;
                float gx[G], gh[G];
#pragma unroll
                for (int g = 0; g < G; ++g) {{
                    const int col = g * H + u0 + u;
                    gx[g] = layer == 0 ? to_f(first[((size_t)t * B + b) * (G * H) + col]) : gx_s[bl * RP + g * U + u];
                    gh[g] = gh_s[bl * RP + g * U + u];
                    if (BIAS) {{ gx[g] += to_f(bih[col]); gh[g] += to_f(bhh[col]); }}
                }}
#define GX(g) gx[g]
#define GH(g) gh[g]
                const float hprev = __half2float(stage[bl * KS + u0 + u]);
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


HANDOFF = """            hx[((size_t)(chain * T + t) * B + b) * HX + u0 + u] = hv;"""


MMA_HELPERS = """// D (16x8, fp32) += A (16x16, fp16, row-major) * B (16x8, fp16, column-major).
__device__ __forceinline__ void mma16816(float (&c)[4], const uint4& a, unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void await_count(const unsigned int* counter) {
    while (*((volatile const unsigned int*)counter) < NBC) { }
}

// Stage `rows` batch rows (from b0) of one published h, src [b][HX], into stage columns col0 ... col0+H.
// 16-byte rows go by cp.async (L2 -> shared memory, no registers, all in flight at once; .cg reads
// L2, where other SMs' writes are); the caller waits with `staged()`. Odd widths copy halves.
__device__ __forceinline__ void stage_part(__half* stage, const __half* src, int rows, int b0, int col0) {
    for (int i = threadIdx.x; i < rows * (H / E); i += blockDim.x) {
        const int bl = i / (H / E), c = i % (H / E);
        __half* dst = stage + bl * KS + col0 + c * E;
        const __half* from = src + (size_t)(b0 + bl) * HX + c * E;
        if (E == 8) {
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

// k-steps [ks0, ks1) of m-tile mt against every n-tile of the staged batch tile, added into acc.
// B fragment: lane holds batch row n*8 + grp, columns ks*16 + tig*2 (+1) and (+8, +9).
template <int NTILES>
__device__ __forceinline__ void mma_steps(float (&acc)[NTILES][4], const uint4* wf, const __half* stage, int mt,
                                          int ks0, int ks1, int grp, int tig, int lane) {
    for (int ks = ks0; ks < ks1; ++ks) {
        const uint4 a = wf[(ks * MT + mt) * 32 + lane];
#pragma unroll
        for (int n = 0; n < NTILES; ++n) {
            const __half* p = stage + (n * 8 + grp) * KS + ks * 16 + tig * 2;
            mma16816(acc[n], a, *(const unsigned int*)p, *(const unsigned int*)(p + 8));
        }
    }
}

"""
