// The FFMA persistent kernel (rnnplan/persistent/kernel.py: `batch_tile == 0`).
//
// Block b owns hidden units [u0, u0+U) of one chain (layer, direction): it loads its rows of W_hh
// (and, above layer 0, of W_ih) on-chip once, then walks the chain's steps. Where they fit the
// register budget (WREG), each warp holds its fixed rows' k-slices in registers as fp32 (measured on an
// H200: up to 1.4x faster at batch 1, 1.02-1.1x at batch 4-8, 2-4% slower at RNN-tanh 2x512 batch 1),
// else the block's rows sit in shared memory. Blocks hand h to each other through an exchange buffer
// (one slot per chain and time step, zeroed before each run) of 8-byte words holding the value and the
// tag of the step that produced it: a reader polls the words it needs until their tags say they are
// written (each thread all of its words at once), so the data is its own flag (no fence, no counter,
// one L2 round trip per hand-off; above layer 0, h's and the layer input's words in one wait where
// MERGED_WAIT says it pays), and layers overlap in a wavefront with no grid barrier. Layer 0 loads its
// step's input projection (cuBLAS's) into registers before it waits for h, so that the load's latency
// hides behind the wait (XPF values a thread); the biases are copied into shared memory once, so that
// no global load sits on a step's critical path. Gate pre-activations are warp-level dot products in
// fp32 (FFMA), a warp taking up to RW weight rows and BT batch rows at once with the products
// accumulated in registers, against h and the layer input staged in shared memory (4 values a load
// where VEC4); cells that read only gate sums add the x and h parts before the warp's reduction
// (SPLIT_SUMS 0); c never leaves the block. The outputs `y` are written alongside and read only after
// the kernel.
// PROJ (LSTM projections): h is R = proj_size wide. After the cell a block hands its units of the cell's
// h (H wide) to its chain's other blocks through a second region of the exchange (`hfx`), waits for the
// whole of it, and computes its rows [p0, p0 + np) of h = W_hr @ (the cell's h), W_hr's rows held in
// shared memory; those go to y and to the exchange as h: a second hand-off a step.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "config.h"
#include "persistent.cuh"
#include "projection.cuh"

// An 8-byte exchange word: the fp32 value (already rounded to the storage type) and, above it, the
// producing step + 1. One aligned 8-byte access is atomic, so a reader never sees a torn pair.
__device__ __forceinline__ unsigned long long load_word(const unsigned long long* p) {
    return *((volatile const unsigned long long*)p);
}
// put(i, the value of the exchange word at(i, tag)) once its tag is `tag`, for i < n (this thread's
// share, IN_FLIGHT words at a time): every pass reloads all the words still pending at once, so
// a thread's words cost one L2 round trip after they are written, not one each.
template <class At, class Put>
__device__ __forceinline__ void await_words(int n, At at, Put put) {
    unsigned int tag;
    if (n <= (int)blockDim.x) {  // one word a thread at most: a plain spin
        if ((int)threadIdx.x < n) {
            const unsigned long long* p = at(threadIdx.x, tag);
            unsigned long long v;
            while ((unsigned int)((v = load_word(p)) >> 32) != tag) { }
            put(threadIdx.x, __uint_as_float((unsigned int)(v & 0xffffffffull)));
        }
        return;
    }
    for (int i0 = threadIdx.x; i0 < n; i0 += IN_FLIGHT * blockDim.x) {
        unsigned long long w[IN_FLIGHT];
        unsigned int pending = 0;
#pragma unroll
        for (int q = 0; q < IN_FLIGHT; ++q)
            if (i0 + q * blockDim.x < n) pending |= 1u << q;
        while (pending) {
#pragma unroll
            for (int q = 0; q < IN_FLIGHT; ++q)
                if (pending >> q & 1u) w[q] = load_word(at(i0 + q * blockDim.x, tag));
#pragma unroll
            for (int q = 0; q < IN_FLIGHT; ++q)
                if (pending >> q & 1u) {
                    at(i0 + q * blockDim.x, tag);
                    if ((unsigned int)(w[q] >> 32) == tag) {
                        put(i0 + q * blockDim.x, __uint_as_float((unsigned int)(w[q] & 0xffffffffull)));
                        pending &= ~(1u << q);
                    }
                }
        }
    }
}
// dst[(g * U + u) * len + k] = src[(g * H + u0 + u) * len + k]: this block's rows of one weight (gate-major,
// `len` long) into shared memory, IN_FLIGHT loads a thread in flight before their stores.
__device__ __forceinline__ void load_rows(st* dst, const st* src, int len, int u0, int nu) {
    const int n = G * nu * len;
    for (int i0 = threadIdx.x; i0 < n; i0 += IN_FLIGHT * blockDim.x) {
        st v[IN_FLIGHT];
#pragma unroll
        for (int q = 0; q < IN_FLIGHT; ++q) {
            const int i = i0 + q * blockDim.x, g = i / (nu * len), u = (i / len) % nu, k = i % len;
            if (i < n) v[q] = src[(size_t)(g * H + u0 + u) * len + k];
        }
#pragma unroll
        for (int q = 0; q < IN_FLIGHT; ++q) {
            const int i = i0 + q * blockDim.x, g = i / (nu * len), u = (i / len) % nu, k = i % len;
            if (i < n) dst[(g * U + u) * len + k] = v[q];
        }
    }
}
// WREG: the k of register i of a lane's share of a weight row: 4 consecutive values a lane, 128 apart
// (VEC4), or every 32nd value.
__device__ __forceinline__ int kreg(int i, int lane) {
    return VEC4 ? 128 * (i / 4) + 4 * lane + i % 4 : 32 * i + lane;
}
// acc[q][j] += sum over k of w[q][k] * v[b0 + j][k] with the weights in registers (w[q][i]: value
// kreg(i, lane) of row q; zero past the row's end) and v staged in shared memory, `len` long.
template <int NK>
__device__ __forceinline__ void dot_regs(float (&acc)[RW][BT], const float (&w)[RW][NK], const float* v, int len,
                                         int b0, int lane) {
#pragma unroll
    for (int i = 0; i < NK; i += VEC4 ? 4 : 1) {
        const int k = kreg(i, lane);
        if (k >= len) break;  // len is a multiple of 4 with VEC4
        if (VEC4) {
            float4 vk[BT];
#pragma unroll
            for (int j = 0; j < BT; ++j) vk[j] = b0 + j < B ? *(const float4*)(v + (b0 + j) * len + k) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int q = 0; q < RW; ++q)
#pragma unroll
                for (int j = 0; j < BT; ++j)
                    acc[q][j] += w[q][i] * vk[j].x + w[q][i + 1] * vk[j].y + w[q][i + 2] * vk[j].z + w[q][i + 3] * vk[j].w;
        } else {
            float vk[BT];
#pragma unroll
            for (int j = 0; j < BT; ++j) vk[j] = b0 + j < B ? v[(b0 + j) * len + k] : 0.0f;
#pragma unroll
            for (int q = 0; q < RW; ++q)
#pragma unroll
                for (int j = 0; j < BT; ++j) acc[q][j] += w[q][i] * vk[j];
        }
    }
}
// acc[q][j] += sum over k of w[row0 + q][k] * v[b0 + j][k], for RW weight rows and BT batch rows
// (w: the block's rows of one weight, gate-major, `len` long; v: staged rows of h or the layer
// input). Lanes split k, 4 consecutive values at a time where rows allow (VEC4: one 16-byte load of
// v and one 16- or 8-byte load of w per row, a quarter of the shared-memory loads); the caller
// reduces across lanes.
__device__ __forceinline__ void dot_rows(float (&acc)[RW][BT], const st* w, const float* v, int len, int row0, int b0,
                                         int nu, int lane) {
    if (VEC4) {
        for (int k = 4 * lane; k < len; k += 128) {
            float4 vk[BT];
#pragma unroll
            for (int j = 0; j < BT; ++j) vk[j] = b0 + j < B ? load4(v + (b0 + j) * len + k) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int q = 0; q < RW; ++q) {
                const int row = row0 + q;
                if (row < G * nu) {
                    const float4 wk = load4(w + ((row / nu) * U + row % nu) * len + k);
#pragma unroll
                    for (int j = 0; j < BT; ++j)
                        acc[q][j] += wk.x * vk[j].x + wk.y * vk[j].y + wk.z * vk[j].z + wk.w * vk[j].w;
                }
            }
        }
    } else {
        for (int k = lane; k < len; k += 32) {
            float vk[BT];
#pragma unroll
            for (int j = 0; j < BT; ++j) vk[j] = b0 + j < B ? v[(b0 + j) * len + k] : 0.0f;
#pragma unroll
            for (int q = 0; q < RW; ++q) {
                const int row = row0 + q;
                if (row < G * nu) {
                    const float wk = to_f(w[((row / nu) * U + row % nu) * len + k]);
#pragma unroll
                    for (int j = 0; j < BT; ++j) acc[q][j] += wk * vk[j];
                }
            }
        }
    }
}

// A tagged exchange word: the value (already rounded to the storage type) and the producing step + 1.
__device__ __forceinline__ unsigned long long tagged(float v, int s) {
    return ((unsigned long long)(s + 1) << 32) | __float_as_uint(v);
}
// h to the other blocks (PROJ: the cell's h, to the projection of this chain's blocks).
#if PROJ
#define HANDOFF_REGION hfx
#else
#define HANDOFF_REGION xch
#endif
#define HANDOFF(hv) __stcg(&HANDOFF_REGION[((size_t)chain * T + t) * (B * H) + b * H + u0 + u], tagged(to_f(hv), s))

extern "C" __global__ void __launch_bounds__(NTHREADS, 1) KERNEL_NAME(
    const unsigned long long* __restrict__ ptrs, unsigned long long* xch, const int T)
{
#include "prologue.cuh"
    PROF_START
    st* wh_s = (st*)(smem + OFF_WEIGHTS);
    st* wi_s = wh_s + G * U * R;
    float* h_s = (float*)(smem + OFF_H);
    float* x_s = (float*)(smem + OFF_X);
    float* gx_s = (float*)(smem + OFF_GX);
    float* gh_s = (float*)(smem + OFF_GH);
    float* bias_s = (float*)(smem + OFF_BIAS);  // [b_ih | b_hh] of this block's rows (g * U + u), fp32
#if PROJ
    // The projection: this block's rows of W_hr (storage type), the chain's cell h (fp32), and where the
    // cell's h is handed over (after the projected h's words of every chain and step).
    st* whr_s = (st*)(smem + OFF_WHR);
    float* hf_s = (float*)(smem + OFF_HFULL);
    unsigned long long* hfx = xch + (size_t)L * D * T * B * R;
    const int p0 = (blockIdx.x % NBC) * PU, np = max(0, min(PU, R - p0));
    {
        const st* whr = (const st*)cp[PER_CHAIN - 1];
        for (int i = tid; i < np * H; i += blockDim.x) whr_s[i] = whr[(size_t)p0 * H + i];
    }
#endif

    // WREG: warp w's rows are fixed for the run (set it: rows (it * nwarps + w) * RW + q); lane l holds
    // values k = kreg(i, l) of each, i < KHR (W_hh) or KXR (W_ih), as fp32.
    float wh_r[NIT][RW][KHR], wx_r[NIT][RW][KXR];
    if (WREG) {
#pragma unroll
        for (int it = 0; it < NIT; ++it)
#pragma unroll
            for (int q = 0; q < RW; ++q) {
                const int row = (it * nwarps + warp) * RW + q, g = row / nu, u = row % nu;
                const bool mine = row < G * nu;
#pragma unroll
                for (int i = 0; i < KHR; ++i) {
                    const int k = kreg(i, lane);
                    wh_r[it][q][i] = mine && k < R ? to_f(whh[(size_t)(g * H + u0 + u) * R + k]) : 0.0f;
                }
#pragma unroll
                for (int i = 0; i < KXR; ++i) {
                    const int k = kreg(i, lane);
                    wx_r[it][q][i] = mine && k < kin ? to_f(first[(size_t)(g * H + u0 + u) * kin + k]) : 0.0f;
                }
            }
    } else {
        load_rows(wh_s, whh, R, u0, nu);
        load_rows(wi_s, first, kin, u0, nu);
    }
    for (int i = tid; i < 2 * G * U; i += blockDim.x) {
        const int g = i % (G * U) / U, u = i % U;
        bias_s[i] = BIAS && u < nu ? to_f((i < G * U ? bih : bhh)[g * H + u0 + u]) : 0.0f;
    }
    __syncthreads();

    PROF(7);  // set-up: weights on-chip, biases
    for (int s = 0; s < T; ++s) {
        const int t = dir == 0 ? s : T - 1 - s;
        const int tprev = dir == 0 ? t - 1 : t + 1;
        // Layer 0: this step's input projection (cuBLAS's), loaded into registers before the wait for h
        // and not used until after it, so that the loads' latency hides behind the wait.
        st xpre[XPF > 0 ? XPF : 1];
#pragma unroll
        for (int q = 0; q < XPF; ++q) {
            const int i = tid + q * NTHREADS, b = i / (G * nu), g = i / nu % G, u = i % nu;
            if (layer == 0 && i < B * G * nu) xpre[q] = first[((size_t)t * B + b) * (G * H) + g * H + u0 + u];
        }
        PROF(0);
        // Where h's words come from: this chain's previous step; the layer input's: the layer below, this
        // step (kin is KIN_ABOVE there: a compile-time divisor, so that polling does no division).
        auto h_word = [&](int i, unsigned int& tag) {
            tag = s;
            return &xch[((size_t)chain * T + tprev) * (B * R) + i];
        };
        auto x_word = [&](int i, unsigned int& tag) {
            const int b = i / KIN_ABOVE, j = i % KIN_ABOVE, d2 = j / R, k = j % R;
            tag = (d2 == 0 ? t : T - 1 - t) + 1;  // the producing step + 1
            return &xch[((size_t)((layer - 1) * D + d2) * T + t) * (B * R) + b * R + k];
        };
        if (s == 0)
            for (int i = tid; i < B * R; i += blockDim.x) h_s[i] = to_f(h0[(size_t)chain * B * R + i]);
        if (MERGED_WAIT && s > 0 && layer > 0) {  // one wait for both: their loads in flight together
            await_words(B * R + B * kin, [&](int i, unsigned int& tag) {
                return i < B * R ? h_word(i, tag) : x_word(i - B * R, tag);
            }, [&](int i, float v) {
                if (i < B * R) h_s[i] = v;
                else x_s[i - B * R] = v;
            });
        } else {
            if (s > 0) await_words(B * R, h_word, [&](int i, float v) { h_s[i] = v; });
            await_words(B * kin, x_word, [&](int i, float v) { x_s[i] = v; });
        }
        PROF(1);
        // Layer 0: the prefetched projection, plus b_ih, is this step's x part of the gate sums.
#pragma unroll
        for (int q = 0; q < XPF; ++q) {
            const int i = tid + q * NTHREADS, b = i / (G * nu), g = i / nu % G, u = i % nu;
            if (layer == 0 && i < B * G * nu) gx_s[(b * G + g) * U + u] = to_f(xpre[q]) + bias_s[g * U + u];
        }
        __syncthreads();
        PROF(2);
        // Each warp takes RW weight rows (gate g, unit u) at a time; lanes split k, and RW x BT
        // accumulators (rows x batch rows of the tile) live in registers, so every h value loaded
        // from shared memory feeds RW rows and every weight value feeds BT batch rows.
        // With WREG the loop over sets of rows is unrolled, so that each set's registers are named.
#pragma unroll
        for (int it = 0; it < NIT; ++it) {
            const int row0 = (it * nwarps + warp) * RW;
            if (row0 >= G * nu) break;
            for (int b0 = 0; b0 < B; b0 += BT) {
                float ah[RW][BT], ax[RW][BT];
#pragma unroll
                for (int q = 0; q < RW; ++q)
#pragma unroll
                    for (int j = 0; j < BT; ++j) { ah[q][j] = 0.0f; ax[q][j] = 0.0f; }
                if (WREG) {
                    dot_regs(ah, wh_r[it], h_s, R, b0, lane);
                    dot_regs(ax, wx_r[it], x_s, kin, b0, lane);
                } else {
                    dot_rows(ah, wh_s, h_s, R, row0, b0, nu, lane);
                    dot_rows(ax, wi_s, x_s, kin, row0, b0, nu, lane);
                }
                // LSTM and Elman cells read only GX + GH: one sum (in ah) to reduce across lanes, not two
#pragma unroll
                for (int q = 0; q < RW; ++q)
#pragma unroll
                    for (int j = 0; j < BT; ++j) {
                        if (!SPLIT_SUMS) { ah[q][j] += ax[q][j]; ax[q][j] = 0.0f; }
                        for (int o = 16; o > 0; o >>= 1) {
                            ah[q][j] += __shfl_xor_sync(0xffffffffu, ah[q][j], o);
                            if (SPLIT_SUMS) ax[q][j] += __shfl_xor_sync(0xffffffffu, ax[q][j], o);
                        }
                    }
                if (lane == 0) {
#pragma unroll
                    for (int q = 0; q < RW; ++q) {
                        const int row = row0 + q;
                        if (row >= G * nu) break;
                        const int g = row / nu, u = row % nu, col = g * H + u0 + u;
#pragma unroll
                        for (int j = 0; j < BT; ++j) {
                            const int b = b0 + j;
                            if (b >= B) break;
                            float h_part = ah[q][j];
                            h_part += bias_s[G * U + g * U + u];
                            if (layer > 0 || !XPF) {  // else prefetched
                                // (without SPLIT_SUMS the layer input's part is already in ah)
                                float x_part = layer == 0 ? to_f(first[((size_t)t * B + b) * (G * H) + col]) : ax[q][j];
                                gx_s[(b * G + g) * U + u] = x_part + bias_s[g * U + u];
                            }
                            gh_s[(b * G + g) * U + u] = h_part;
                        }
                    }
                }
            }
        }
        __syncthreads();
        PROF(3);
        for (int i = tid; i < B * nu; i += blockDim.x) {
            const int b = i / nu, u = i % nu;
#define GX(g) gx_s[(b * G + (g)) * U + u]
#define GH(g) gh_s[(b * G + (g)) * U + u]
            const float hprev = PROJ ? 0.0f : h_s[b * R + u0 + u];  // (projections: LSTM, which reads no hprev)
#include "cell_step.cuh"
#undef GX
#undef GH
        }
        PROF(4);
#if PROJ
        // The projection: wait for the chain's whole cell h of this step, then this block's rows of
        // h = W_hr @ h_cell (projection.cuh) go to y and, tagged, to the exchange, where this chain's
        // next step and the layer above read them.
        await_words(B * H, [&](int i, unsigned int& tag) {
            tag = s + 1;
            return &hfx[((size_t)chain * T + t) * (B * H) + i];
        }, [&](int i, float v) { hf_s[i] = v; });
        __syncthreads();
        project_rows(whr_s, hf_s, np, lane, warp, nwarps, [&](int p, int b, float sum) {
            st hv;
            put(&hv, sum);
#if MASKED  // past a sequence's end: h kept (h_s holds this step's previous h), y 0, the last layer's y only
            const bool live = to_f(mask[(size_t)t * B + b]) != 0.0f;
            if (!live) put(&hv, h_s[b * R + p0 + p]);
            if (layer == L - 1) put(&y[((size_t)t * B + b) * (D * R) + dir * R + p0 + p], live ? to_f(hv) : 0.0f);
            if (s == T - 1) hn[(size_t)(chain * B + b) * R + p0 + p] = hv;
#else
            y[((size_t)t * B + b) * (D * R) + dir * R + p0 + p] = hv;
#endif
            __stcg(&xch[((size_t)chain * T + t) * (B * R) + b * R + p0 + p], tagged(to_f(hv), s));
        });
        PROF(5);
#endif
        __syncthreads();
    }
    PROF_END
}
