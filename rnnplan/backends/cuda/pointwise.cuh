// What every generated pointwise / fused kernel shares (rnnplan/backends/kernels.py writes the rest
// from the ops' C forms, rnnplan/ir/ops.py): loads and stores of V neighbouring elements, converted
// to and from fp32, and the accurate exponentials (FAST_EXP 0) in every precision.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define FAST_EXP 0

// Loads and stores of V neighbouring elements, converted to and from fp32.
template <int V> __device__ __forceinline__ void load(const float* p, float* v) {
    if constexpr (V == 4) { float4 q = *reinterpret_cast<const float4*>(p); v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w; }
    else { v[0] = *p; }
}
template <int V> __device__ __forceinline__ void store(float* p, const float* v) {
    if constexpr (V == 4) { *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]); }
    else { *p = v[0]; }
}
template <int V> __device__ __forceinline__ void load(const __half* p, float* v) {
    if constexpr (V == 4) {
        uint2 q = *reinterpret_cast<const uint2*>(p);
        float2 a = __half22float2(*reinterpret_cast<__half2*>(&q.x));
        float2 b = __half22float2(*reinterpret_cast<__half2*>(&q.y));
        v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
    } else { v[0] = __half2float(*p); }
}
template <int V> __device__ __forceinline__ void store(__half* p, const float* v) {
    if constexpr (V == 4) {
        __half2 a = __floats2half2_rn(v[0], v[1]), b = __floats2half2_rn(v[2], v[3]);
        uint2 q; q.x = *reinterpret_cast<unsigned int*>(&a); q.y = *reinterpret_cast<unsigned int*>(&b);
        *reinterpret_cast<uint2*>(p) = q;
    } else { *p = __float2half_rn(v[0]); }
}
template <int V> __device__ __forceinline__ void load(const __nv_bfloat16* p, float* v) {
    if constexpr (V == 4) {
        uint2 q = *reinterpret_cast<const uint2*>(p);
        float2 a = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&q.x));
        float2 b = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&q.y));
        v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
    } else { v[0] = __bfloat162float(*p); }
}
template <int V> __device__ __forceinline__ void store(__nv_bfloat16* p, const float* v) {
    if constexpr (V == 4) {
        __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
        uint2 q; q.x = *reinterpret_cast<unsigned int*>(&a); q.y = *reinterpret_cast<unsigned int*>(&b);
        *reinterpret_cast<uint2*>(p) = q;
    } else { *p = __float2bfloat16_rn(v[0]); }
}
