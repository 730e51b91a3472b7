// The start of both persistent kernels' bodies (included inside them): where this block is (its
// chain, layer, direction and units), its operand pointers (see `operand_shapes`), and c staged
// into shared memory. Block b owns hidden units [u0, u0 + nu) of chain b / NBC (and, PROJ, rows
// [p0, p0 + np) of its projection). h is R wide (R = proj_size with projections, else H).
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const int chain = blockIdx.x / NBC, layer = chain / D, dir = chain % D;
    const int u0 = (blockIdx.x % NBC) * U, nu = min(U, H - u0);
    const int kin = layer == 0 ? 0 : D * R;
    const unsigned long long* cp = ptrs + chain * PER_CHAIN;
    const st* first = (const st*)cp[0];  // layer 0: x @ W_ih^T for every step; above: W_ih
    const st* whh = (const st*)cp[1];
    const st* bih = BIAS ? (const st*)cp[2] : nullptr;
    const st* bhh = BIAS ? (const st*)cp[3] : nullptr;
    const st* h0 = (const st*)ptrs[L * D * PER_CHAIN];
    const st* c0 = HAS_C ? (const st*)ptrs[L * D * PER_CHAIN + 1] : nullptr;
    // The outputs' pointers follow the inputs': every layer's y, or MASKED the last layer's only (y is
    // 0 past a sequence's end, so h_n is written apart and no one reads the lower layers' y).
    const int outs = L * D * PER_CHAIN + NSTATE + MASKED, nseq = MASKED ? 1 : L;
    st* y = (st*)ptrs[outs + (MASKED ? 0 : layer)];
    st* cn = HAS_C ? (st*)ptrs[outs + nseq] : nullptr;
#if MASKED
    const st* mask = (const st*)ptrs[L * D * PER_CHAIN + NSTATE];  // (T*B): 1 inside a sequence
    st* hn = (st*)ptrs[outs + nseq + HAS_C];
#endif
    float* c_s = (float*)(smem + OFF_C);
    if (HAS_C) for (int i = tid; i < B * nu; i += blockDim.x) {
        const int b = i / nu, u = i % nu;
        c_s[b * U + u] = to_f(c0[(size_t)(chain * B + b) * H + u0 + u]);
    }
