// The FFMA kernel's LSTM projection (PROJ; the tensor-core kernel's is on mma, mma.cu's project_mma):
// 4-value loads of shared memory (16 bytes of fp32, 8 of a 2-byte storage type), and the projection's
// dot products: this block's rows [p0, p0 + np) of h = W_hr @ h_cell for every batch row, with W_hr's
// rows (np x H, storage type) in whr and the chain's cell h (B x H, fp32; any type HT the load4
// overloads take) staged in shared memory. A warp takes one row of W_hr and PB batch rows at a time
// (every weight value loaded feeds PB rows), its lanes 4 consecutive k each where H allows (H % 4 ==
// 0), then reduces across lanes; lane 0 hands each sum to emit(p, b, sum), which writes it where the
// kernel's next step and the layer above read it.

__device__ __forceinline__ float4 load4(const float* p) { return *(const float4*)p; }
__device__ __forceinline__ float4 load4(const __half* p) {
    const uint2 u = *(const uint2*)p;
    const float2 lo = __half22float2(*(const __half2*)&u.x), hi = __half22float2(*(const __half2*)&u.y);
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
    const uint2 u = *(const uint2*)p;
    const float2 lo = __bfloat1622float2(*(const __nv_bfloat162*)&u.x), hi = __bfloat1622float2(*(const __nv_bfloat162*)&u.y);
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}

#if PROJ
#define PB (B < 8 ? B : 8)  // batch rows a warp's W_hr row feeds at once
template <class HT, class Emit>
__device__ __forceinline__ void project_rows(const st* whr, const HT* hf, int np, int lane, int warp, int nwarps,
                                             Emit emit) {
    for (int job = warp; job < np * ((B + PB - 1) / PB); job += nwarps) {
        const int p = job % np, b0 = job / np * PB;
        float acc[PB];
#pragma unroll
        for (int j = 0; j < PB; ++j) acc[j] = 0.0f;
        if (H % 4 == 0) {
            for (int k = 4 * lane; k < H; k += 128) {
                const float4 w = load4(whr + p * H + k);
#pragma unroll
                for (int j = 0; j < PB; ++j)
                    if (b0 + j < B) {
                        const float4 v = load4(hf + (b0 + j) * H + k);
                        acc[j] += w.x * v.x + w.y * v.y + w.z * v.z + w.w * v.w;
                    }
            }
        } else {
            for (int k = lane; k < H; k += 32) {
                const float w = to_f(whr[p * H + k]);
#pragma unroll
                for (int j = 0; j < PB; ++j)
                    if (b0 + j < B) acc[j] += w * to_f(hf[(b0 + j) * H + k]);
            }
        }
#pragma unroll
        for (int j = 0; j < PB; ++j)
            for (int o = 16; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
#pragma unroll
        for (int j = 0; j < PB; ++j)
            if (lane == 0 && b0 + j < B) emit(p, b0 + j, acc[j]);
    }
}
#endif
