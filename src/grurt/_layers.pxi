# Included by _kernels.pyx. The layers of a Plan run in order, and the layers other than GRU.

cdef int run_layers(const LayerPlan* layers, int n_layers, int B, int T, const float* x,
                    float** states, const int* lengths, float* out, float* work,
                    int max_features, int threads) noexcept nogil:
    """Execute every layer, using ``work`` (workspace_floats(B, T)) as scratch. Returns the
    number of threads that ran the GRU layer with the most weights (the first of equals; 1
    without GRU layers)."""
    cdef size_t rows = <size_t>B * T
    cdef size_t ping = aligned(rows * max_features)
    cdef float* buffers[2]
    buffers[0] = work
    buffers[1] = work + ping
    cdef float* scratch = work + 2 * ping
    cdef const float* src = x
    cdef float* dst
    cdef int steps = T, i, gru_index = 0, used, threads_of_largest = 1
    cdef size_t weights, largest = 0
    cdef const LayerPlan* p
    for i in range(n_layers):
        p = &layers[i]
        dst = out if i == n_layers - 1 else buffers[i % 2]
        if p.kind == GRU_LAYER:
            used = run_gru(p, B, steps, src, dst, states[gru_index], lengths, scratch, threads)
            weights = <size_t>p.D * 3 * p.H * (p.n_in + p.H)
            if weights > largest:
                largest, threads_of_largest = weights, used
            gru_index += 1
            if not p.return_sequences:
                steps = 1
        elif p.kind == DENSE_LAYER:
            dense(p, <size_t>B * steps, src, dst)
        elif p.kind == ACTIVATION_LAYER:
            memcpy(dst, src, <size_t>B * steps * p.n_out * sizeof(float))
            activate_rows(&p.f, dst, <size_t>B * steps, p.n_out)
        elif p.kind == SCALE_LAYER:
            scale(p, <size_t>B * steps, src, dst)
        elif p.kind == REVERSE_LAYER:
            reverse_time(B, steps, p.n_out, lengths, src, dst)
        elif p.kind == LAST_STEP_LAYER:
            last_step(B, steps, p.n_out, lengths, src, dst)
            steps = 1
        elif p.kind == MERGE_LAYER:
            merge(p, <size_t>B * steps, src, dst)
        elif p.kind == LAYER_NORM_LAYER:
            grurt_layer_norm(src, dst, <size_t>B * steps, p.n_out, p.W, p.bias, p.eps)
        elif p.kind == UNIT_NORM_LAYER:
            grurt_unit_norm(src, dst, <size_t>B * steps, p.n_out, p.eps)
        elif p.kind == GLOBAL_POOL_LAYER:     # mean / max over each sequence's valid steps
            grurt_global_pool(src, dst, B, steps, p.n_out, lengths, p.pool_mode)
            steps = 1
        elif p.kind == FLATTEN_LAYER:         # (B, T, F) → (B, T·F), padding steps zero
            grurt_flatten(src, dst, B, steps, p.n_in, lengths)
            steps = 1
        src = dst
    if lengths != NULL and steps > 1:
        zero_padding(B, steps, layers[n_layers - 1].n_out, lengths, out)
    return threads_of_largest


cdef void activate_rows(const grurt_act* act, float* y, size_t rows, int n) noexcept nogil:
    cdef size_t r
    if act.kind == ACT_SOFTMAX:
        for r in range(rows):
            grurt_activate(act, y + r * n, n)
    else:
        grurt_activate(act, y, <int>(rows * n))


cdef void dense(const LayerPlan* p, size_t rows, const float* x, float* y) noexcept nogil:
    cdef size_t r
    # y = x · Wᵀ + b
    for r in range(rows):
        memcpy(y + r * p.n_out, p.bias, p.n_out * sizeof(float))
    matmul_t(<int>rows, p.n_out, p.n_in, x, p.W, 1.0, y)
    activate_rows(&p.f, y, rows, p.n_out)


cdef void scale(const LayerPlan* p, size_t rows, const float* x, float* y) noexcept nogil:
    cdef size_t r
    cdef int j, n = p.n_out
    for r in range(rows):
        for j in range(n):
            y[r * n + j] = x[r * n + j] * p.W[j] + p.bias[j]


cdef void merge(const LayerPlan* p, size_t rows, const float* x, float* y) noexcept nogil:
    cdef size_t r
    cdef int j, n = p.n_out
    cdef const float* first
    for r in range(rows):
        first = x + r * 2 * n
        for j in range(n):
            if p.merge_mode == MERGE_SUM:
                y[r * n + j] = first[j] + first[n + j]
            elif p.merge_mode == MERGE_AVE:
                y[r * n + j] = (first[j] + first[n + j]) * 0.5
            else:     # MERGE_MUL
                y[r * n + j] = first[j] * first[n + j]


cdef void reverse_time(int B, int T, int F, const int* lengths, const float* x, float* y) noexcept nogil:
    cdef int b, t, L
    for b in range(B):
        L = T if lengths == NULL else lengths[b]
        for t in range(T):
            memcpy(y + (<size_t>b * T + t) * F,
                   x + (<size_t>b * T + (L - 1 - t if t < L else t)) * F, F * sizeof(float))


cdef void last_step(int B, int T, int F, const int* lengths, const float* x, float* y) noexcept nogil:
    """Each sequence's last valid step; T = 1 when a forward GRU already gave its final state."""
    cdef int b
    for b in range(B):
        memcpy(y + <size_t>b * F, x + (<size_t>b * T + (T if lengths == NULL else min(lengths[b], T)) - 1) * F,
               F * sizeof(float))


cdef void zero_padding(int B, int T, int F, const int* lengths, float* y) noexcept nogil:
    cdef int b
    for b in range(B):
        if lengths[b] < T:
            memset(y + (<size_t>b * T + lengths[b]) * F, 0, <size_t>(T - lengths[b]) * F * sizeof(float))
