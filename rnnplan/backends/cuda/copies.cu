// A call's copies in one launch (backends/pointer_call.py): each job copies `rows` rows of
// `row_bytes` bytes between a plan buffer (fixed at set-up) and one of the caller's tensors (a
// kernel argument, different every call), with row strides in bytes. A caller's pointer of 0 as the
// source means zeros (a state left out). Blocks of blockIdx.y take job y; 16-byte words where every
// address and stride allows, else 2-byte ones (every storage type is a multiple of 2 bytes). A job
// whose rows lie back to back on both sides (the input, a layer's output sequence, the states) is
// one run of words: no row arithmetic (a 64-bit division a word cost more than the copy's memory
// traffic at 10-50 MB), four loads in flight a thread before their stores.
//
// The relay (one launch a call, backends/pointer_call.between_copies): the copy-in node of a graph
// writes the caller's output pointers r0..r2 to `relay_out`, and the copy-out node, launched after
// the plan in the same graph, reads its pointers from `relay_in`; so a call sets one node's
// arguments, not two. Launches of one graph are ordered behind each other, so one relay serves all.

struct CopyJob {  // 7 words, as backends/pointer_call.py writes them
    unsigned long long fixed;  // the plan buffer's address
    unsigned long long fixed_ld, user_offset, user_ld, rows, row_bytes;  // bytes
    unsigned long long which;  // the caller's pointer (0 to 3) + 4 if the copy goes to the caller
};

template <typename Word>
__device__ void copy_run(unsigned char* dst, const unsigned char* src, unsigned long long n, unsigned long long i,
                         unsigned long long stride) {
    Word* d = (Word*)dst;
    const Word* s = (const Word*)src;
    const Word zero{};
    for (; i + 3 * stride < n; i += 4 * stride) {
        const Word a = s ? s[i] : zero, b = s ? s[i + stride] : zero;
        const Word c = s ? s[i + 2 * stride] : zero, e = s ? s[i + 3 * stride] : zero;
        d[i] = a;
        d[i + stride] = b;
        d[i + 2 * stride] = c;
        d[i + 3 * stride] = e;
    }
    for (; i < n; i += stride) d[i] = s ? s[i] : zero;
}

extern "C" __global__ void rnnplan_copy_jobs(const CopyJob* jobs, unsigned long long* relay_out,
                                             const unsigned long long* relay_in, unsigned long long p0,
                                             unsigned long long p1, unsigned long long p2, unsigned long long p3,
                                             unsigned long long r0, unsigned long long r1, unsigned long long r2) {
    if (relay_out != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
        relay_out[0] = r0;
        relay_out[1] = r1;
        relay_out[2] = r2;
    }
    if (relay_in != nullptr) {
        p0 = relay_in[0];
        p1 = relay_in[1];
        p2 = relay_in[2];
        p3 = 0;
    }
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
    const unsigned long long first = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (j.rows == 1 || (dst_ld == j.row_bytes && (src == nullptr || src_ld == j.row_bytes))) {
        if (wide)
            copy_run<uint4>(dst, src, n, first, stride);
        else
            copy_run<unsigned short>(dst, src, n, first, stride);
        return;
    }
    for (unsigned long long i = first; i < n; i += stride) {
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
