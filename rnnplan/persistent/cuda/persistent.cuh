// What both persistent kernels share: the storage type, conversions, and the profiling hooks.
// Everything that varies (sizes, layout offsets, switches, the cell update) arrives as #defines in
// config.h, which rnnplan/persistent/source.py writes from a PersistentKernel.

#if ST_HALF
typedef __half st;  // the storage type of weights, published h and the sequences
#elif ST_BF16
typedef __nv_bfloat16 st;
#else
typedef float st;
#endif

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void put(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
// The raw bits of v rounded to a 2-byte storage type (the tensor-core kernel's operand halves).
__device__ __forceinline__ unsigned int half_bits(float v) {
#if ST_BF16
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
#else
    return __half_as_ushort(__float2half_rn(v));
#endif
}

// Profiling (PROFILE 1): thread 0 of each block sums clock64() between the PROF(k) marks of its
// phases (slots 0-7) and stamps the GPU's global timer (ns) at its start, at the end of its set-up
// (PROF(7)) and at its end (slots 8-10: where a kernel's time goes outside its steps); at the end it
// writes the PROFILE_SLOTS words past the exchange buffer (PROFILE_OFFSET). Otherwise the marks are
// empty statements and cost nothing.
#if PROFILE
__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define PROF_START unsigned long long prof_acc[PROFILE_SLOTS] = {0}, prof_t = clock64(); \
    if (tid == 0) prof_acc[8] = global_ns();
#define PROF(k) if (tid == 0) { unsigned long long now = clock64(); prof_acc[k] += now - prof_t; prof_t = now; \
    if ((k) == 7) prof_acc[9] = global_ns(); }
#define PROF_END if (tid == 0) { prof_acc[10] = global_ns(); for (int k = 0; k < PROFILE_SLOTS; ++k) \
    ((unsigned long long*)((unsigned char*)xch + PROFILE_OFFSET))[blockIdx.x * PROFILE_SLOTS + k] = prof_acc[k]; }
#else
#define PROF_START
#define PROF(k)
#define PROF_END
#endif
