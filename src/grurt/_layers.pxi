# Included by _kernels.pyx. The layers of a Plan run in order, and the layers other than GRU.

cdef int run_layers(const LayerPlan* layers, int n_layers, int B, int T, const float* x,
                    float** states, const int* lengths, float* out, float* work,
                    size_t ping, size_t time_scratch, float** histories, int threads) noexcept nogil:
    """Execute every layer, using ``work`` (workspace_floats(B, T)) as scratch: two buffers of
    ``ping`` floats for the layers' inputs and outputs, ``time_scratch`` floats for the layers
    over time, then the GRU scratch. Returns the number of threads that ran the GRU layer with
    the most weights (the first of equals; 1 without GRU layers). ``histories`` (a streaming
    step, T = 1): each Conv1D's history buffer, (B, span, C)."""
    cdef float* buffers[2]
    buffers[0] = work
    buffers[1] = work + ping
    cdef float* conv_scratch = work + 2 * ping
    cdef float* scratch = conv_scratch + time_scratch
    cdef const float* src = x
    cdef float* dst
    cdef int steps = T, i, gru_index = 0, conv_index = 0, used, threads_of_largest = 1, out_steps, b
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
        elif p.kind == CONV_LAYER:
            if histories != NULL:       # a streaming step: the frame joins the history, one output frame
                for b in range(B):
                    grurt_conv_step(&p.conv, histories[conv_index] + <size_t>b * p.span * p.n_in,
                                    src + <size_t>b * p.n_in, dst + <size_t>b * p.n_out, conv_scratch)
            else:
                out_steps = layer_steps(p, steps)
                for b in range(B):
                    grurt_conv_seq(&p.conv, steps, src + <size_t>b * steps * p.n_in,
                                   dst + <size_t>b * out_steps * p.n_out, conv_scratch)
                steps = out_steps
            conv_index += 1
        elif p.kind == POOL_LAYER:
            pool(p, B, steps, src, dst)
            steps = layer_steps(p, steps)
        elif p.kind == PAD_LAYER:
            for b in range(B):
                grurt_pad_frames(steps, p.n_out, p.pad_left, p.pad_right, src + <size_t>b * steps * p.n_out,
                                 dst + <size_t>b * (steps + p.pad_left + p.pad_right) * p.n_out)
            steps += p.pad_left + p.pad_right
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


cdef void pool(const LayerPlan* p, int B, int steps, const float* x, float* y) noexcept nogil:
    """Pool1D over each sequence of x (B, steps, F)."""
    cdef int left = p.pad_left, right = p.pad_right, b, out
    if p.pad_same:
        grurt_same_pads(steps, p.stride, p.span, p.pad_same == 2, &left, &right)
    out = grurt_window_steps(steps, left, right, p.span, p.stride)
    for b in range(B):
        grurt_pool_seq(steps, p.n_out, x + <size_t>b * steps * p.n_out, p.span, p.stride, left, out, p.pool_max,
                       p.pool_include_pad, y + <size_t>b * out * p.n_out)
