# Included by _kernels.pyx. The layers of a Plan run in order, and the layers other than GRU.

cdef int run_layers(const LayerPlan* layers, int n_layers, int B, int T, const float* x,
                    float** states, const int* lengths, float* out, float* work,
                    int max_features, int threads, bint streaming) noexcept nogil:
    """Execute every layer, using ``work`` (workspace_floats(B, T)) as scratch. Returns the
    number of threads that ran the GRU layer with the most weights (the first of equals; 1
    without GRU layers).

    ``streaming`` (the calls of Stream and StreamPool, _serve.pxi): the output of every step,
    each GRU summing in forward order (run_gru), a GRU's last state and LastStep being the
    output of each step; T steps then give bit for bit what T calls of one step give.
    """
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
            used = run_gru(p, B, steps, src, dst, states[gru_index], lengths, scratch, threads, streaming)
            weights = <size_t>p.D * 3 * p.H * (p.n_in + p.H)
            if weights > largest:
                largest, threads_of_largest = weights, used
            gru_index += 1
            if not p.return_sequences and not streaming:
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
            if streaming:       # every step's output is its own last step
                memcpy(dst, src, <size_t>B * steps * p.n_out * sizeof(float))
            else:
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
    """y = f(x · Wᵀ + b) on grurt's panel kernels (W packed at plan time, b the initial value):
    every row the same sequence of operations, whatever the number of rows (BLAS sgemm's
    results change with it), so that a sequence gives the same bits alone or in a batch and
    a frame the same bits stepped alone or in a block. Whole panels go straight into y; the
    last partial panel goes through a tile of DENSE_TILE_ROWS rows and is copied out."""
    cdef int n_in = p.n_in, n_out = p.n_out, full = n_out // GRURT_PANEL, tail = n_out % GRURT_PANEL
    cdef size_t r, m
    cdef int i
    cdef float tile[DENSE_TILE_ROWS * GRURT_PANEL]
    cdef const float* tail_panel = p.W_panels + <size_t>full * n_in * GRURT_PANEL
    if full > 0:
        grurt_gemm(<int>rows, n_in, full, x, n_in, p.W_panels, p.bias, y, n_out, 0)
    if tail > 0:
        r = 0
        while r < rows:
            m = min(<size_t>DENSE_TILE_ROWS, rows - r)
            grurt_gemm(<int>m, n_in, 1, x + r * n_in, n_in, tail_panel, p.bias + full * GRURT_PANEL, tile,
                       GRURT_PANEL, 0)
            for i in range(<int>m):
                memcpy(y + (r + i) * n_out + full * GRURT_PANEL, tile + i * GRURT_PANEL, tail * sizeof(float))
            r += m
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
