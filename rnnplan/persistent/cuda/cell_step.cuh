// The cell update of batch row b, unit u (included inside both kernels' cell loops): with GX(g) and
// GH(g) the gates' pre-activations (biases included) and hprev the previous h, CELL_UPDATE (written
// from the cell's equations, rnnplan/ir/cells.py) declares h and updates c; then h goes to y and, by
// the kernel's HANDOFF, to the other blocks, and c to c_n at the last step. MASKED (variable lengths):
// the masked cell keeps h and c past a sequence's end (mval 0) and outputs yout (0 there), the last
// layer into y; h_n is written apart at the last step. PROJ: y, h_n and the hand-off to the next step
// are the projected h, written by the projection phase after the cell (which, MASKED, keeps the
// projected h past a sequence's end); HANDOFF passes the cell's h to it.
            float c = HAS_C ? c_s[b * U + u] : 0.0f;
            (void)hprev; (void)c;
#if MASKED
            const float mval = to_f(mask[(size_t)t * B + b]);
#endif
            CELL_UPDATE
            if (HAS_C) c_s[b * U + u] = c;
            st hv;
            put(&hv, h);  // rounded to the storage type: what the reference and the readers see
#if PROJ && MASKED
            (void)yout;  // y and h_n are the projected h: the projection phase writes them
#elif PROJ
#elif MASKED
            if (layer == L - 1) put(&y[((size_t)t * B + b) * (D * H) + dir * H + u0 + u], yout);
            if (s == T - 1) hn[(size_t)(chain * B + b) * H + u0 + u] = hv;
#else
            y[((size_t)t * B + b) * (D * H) + dir * H + u0 + u] = hv;
#endif
            HANDOFF(hv);
            if (HAS_C && s == T - 1) put(&cn[(size_t)(chain * B + b) * H + u0 + u], c);
