// A torch PackedSequence in and out of a plan's buffers, one launch each way (backends/pointer_call.py,
// PointerCall.packed): the gathers, the mask and the padding that would otherwise take a dozen torch
// calls of host time a call. `layout` holds the packing's batch sizes and row offsets on the device
// ([steps] then [steps], int64: sequence j (the j-th longest) has step t iff j < sizes[t], and its row
// of the packed data is offsets[t] + j); `rank[b]` is sequence b's place j among them (torch's
// unsorted_indices), `order[j]` the sequence at place j (sorted_indices). Rows move in 16-byte words
// where every address and stride allows, else in 2-byte ones (every storage type is a multiple of 2).

// The plan's padded time-major input x (rows t*B + b, `plan_steps` >= steps of them: the padding of a
// bucket) and its (rows, 1) mask, in the storage type of `elem_bytes` bytes: 1 (`one` holds its
// bits) inside a sequence, 0 past its end, where x's row is zeros.
extern "C" __global__ void rnnplan_unpack(const unsigned char* data, unsigned char* x, unsigned char* mask,
                                          const long long* layout, const long long* rank, int steps, int plan_steps,
                                          int batch, unsigned long long row_bytes, unsigned int one, int elem_bytes) {
    const bool wide = (((unsigned long long)data | (unsigned long long)x | row_bytes) & 15) == 0;
    const unsigned long long unit = wide ? 16 : 2, per_row = row_bytes / unit;
    const unsigned long long n = per_row * (unsigned long long)plan_steps * batch;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long row = i / per_row, k = (i % per_row) * unit;
        const int t = (int)(row / batch), b = (int)(row % batch);
        const long long j = rank[b];
        const bool inside = t < steps && j < layout[t];
        const unsigned char* src = inside ? data + (layout[steps + t] + j) * row_bytes + k : nullptr;
        unsigned char* dst = x + row * row_bytes + k;
        if (wide) *(uint4*)dst = src ? *(const uint4*)src : make_uint4(0, 0, 0, 0);
        else *(unsigned short*)dst = src ? *(const unsigned short*)src : 0;
        if (k == 0) {
            if (elem_bytes == 4) ((unsigned int*)mask)[row] = inside ? one : 0u;
            else ((unsigned short*)mask)[row] = inside ? (unsigned short)one : 0;
        }
    }
}

// The plan's output sequence y (rows t*B + b, row stride y_ld bytes) into the packed rows torch returns:
// packed row r is step t, place j (the t with offsets[t] <= r < offsets[t] + sizes[t]), of sequence
// order[j].
extern "C" __global__ void rnnplan_repack(const unsigned char* y, unsigned char* packed, const long long* layout,
                                          const long long* order, int steps, int batch, long long rows,
                                          unsigned long long row_bytes, unsigned long long y_ld) {
    const bool wide = (((unsigned long long)y | (unsigned long long)packed | row_bytes | y_ld) & 15) == 0;
    const unsigned long long unit = wide ? 16 : 2, per_row = row_bytes / unit, n = per_row * (unsigned long long)rows;
    const long long* offsets = layout + steps;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const long long r = (long long)(i / per_row);
        const unsigned long long k = (i % per_row) * unit;
        int lo = 0, hi = steps - 1;  // the last step whose rows start at or before r
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= r) lo = mid; else hi = mid - 1;
        }
        const long long b = order[r - offsets[lo]];
        const unsigned char* src = y + ((unsigned long long)lo * batch + b) * y_ld + k;
        unsigned char* dst = packed + (unsigned long long)r * row_bytes + k;
        if (wide) *(uint4*)dst = *(const uint4*)src;
        else *(unsigned short*)dst = *(const unsigned short*)src;
    }
}
