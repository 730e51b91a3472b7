// A call's copies in one launch (backends/pointer_call.py): each job copies `rows` rows of
// `row_bytes` bytes between a plan buffer (fixed at set-up) and one of the caller's tensors (a
// kernel argument, different every call), with row strides in bytes. A caller's pointer of 0 as the
// source means zeros (a state left out). Blocks of blockIdx.y take job y; 16-byte words where every
// address and stride allows, else 2-byte ones (every storage type is a multiple of 2 bytes).

struct CopyJob {  // 7 words, as backends/pointer_call.py writes them
    unsigned long long fixed;  // the plan buffer's address
    unsigned long long fixed_ld, user_offset, user_ld, rows, row_bytes;  // bytes
    unsigned long long which;  // the caller's pointer (0 to 3) + 4 if the copy goes to the caller
};

extern "C" __global__ void rnnplan_copy_jobs(const CopyJob* jobs, unsigned long long p0, unsigned long long p1,
                                             unsigned long long p2, unsigned long long p3) {
    const CopyJob j = jobs[blockIdx.y];
    const unsigned long long which = j.which & 3;
    const unsigned long long base = which == 0 ? p0 : (which == 1 ? p1 : (which == 2 ? p2 : p3));
    const unsigned long long user = base ? base + j.user_offset : 0;
    const bool to_user = j.which & 4;
    unsigned char* dst = (unsigned char*)(to_user ? user : j.fixed);
    const unsigned char* src = (const unsigned char*)(to_user ? j.fixed : user);
    const unsigned long long dst_ld = to_user ? j.user_ld : j.fixed_ld, src_ld = to_user ? j.fixed_ld : j.user_ld;
    if (dst == nullptr) return;  // an output the caller does not take
    const bool wide = (((unsigned long long)dst | (unsigned long long)src | dst_ld | src_ld | j.row_bytes) & 15) == 0;
    const unsigned long long unit = wide ? 16 : 2, per_row = j.row_bytes / unit, n = per_row * j.rows;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long r = i / per_row, k = (i % per_row) * unit;
        if (wide) {
            const uint4 v = src ? *(const uint4*)(src + r * src_ld + k) : make_uint4(0, 0, 0, 0);
            *(uint4*)(dst + r * dst_ld + k) = v;
        } else {
            const unsigned short v = src ? *(const unsigned short*)(src + r * src_ld + k) : 0;
            *(unsigned short*)(dst + r * dst_ld + k) = v;
        }
    }
}
