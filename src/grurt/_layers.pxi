# Included by _kernels.pyx. The layers of a Plan run in order, and the layers other than GRU.

cdef int run_layers(const LayerPlan* layers, int n_layers, int B, int T, const float* x,
                    float** states, const int* lengths, float* out, float* work,
                    size_t ping, size_t time_scratch, float** histories, int threads,
                    bint streaming) noexcept nogil:
    """Execute every layer, using ``work`` (workspace_floats(B, T)) as scratch: two buffers of
    ``ping`` floats for the layers' inputs and outputs, ``time_scratch`` floats for the layers
    over time, then the GRU scratch (Plan.layout gives both sizes). Returns the number of
    threads that ran the GRU layer with the most weights (the first of equals; 1 without GRU
    layers).

    ``streaming`` (the calls of Stream and StreamPool, _serve.pxi): the output of every step,
    each GRU summing in forward order (run_gru), a GRU's last state and LastStep being the
    output of each step; T steps then give bit for bit what T calls of one step give.
    ``histories`` (streaming, every Conv1D causal): each Conv1D's history buffer, (B, span, C),
    its last span − 1 input frames in rows 1 ..; each of the T frames of each sequence goes
    through grurt_conv_step in order, so a block gives the bits of T single steps.
    """
    cdef float* buffers[2]
    buffers[0] = work
    buffers[1] = work + ping
    cdef float* conv_scratch = work + 2 * ping
    cdef float* scratch = conv_scratch + time_scratch
    cdef const float* src = x
    cdef float* dst
    cdef int steps = T, i, gru_index = 0, conv_index = 0, used, threads_of_largest = 1, out_steps, b, t
    cdef size_t weights, largest = 0
    cdef const LayerPlan* p
    cdef const LayerPlan* q
    cdef float* dst2
    i = 0
    while i < n_layers:
        p = &layers[i]
        dst = out if i == n_layers - 1 else buffers[i % 2]
        q = &layers[i + 1] if i + 1 < n_layers else NULL
        if p.kind == GRU_LAYER and q != NULL and q.kind == GRU_LAYER and pipelines(p, q, B, steps, threads, streaming):
            # two stacked GRU layers, pipelined over the threads (_threads.pxi)
            dst2 = out if i + 1 == n_layers - 1 else buffers[(i + 1) % 2]
            used = run_gru_pair(p, q, B, steps, src, dst, dst2, states[gru_index], states[gru_index + 1],
                                lengths, scratch, threads)
            weights = max(<size_t>3 * p.H * (p.n_in + p.H), <size_t>3 * q.H * (q.n_in + q.H))
            if weights > largest:
                largest, threads_of_largest = weights, used
            gru_index += 2
            if not q.return_sequences:
                steps = 1
            src = dst2
            i += 2
            continue
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
        elif p.kind == CONV_LAYER:
            if histories != NULL:       # streaming: each frame joins the history, one output frame each
                for b in range(B):
                    for t in range(steps):
                        grurt_conv_step(&p.conv, histories[conv_index] + <size_t>b * p.span * p.n_in,
                                        src + (<size_t>b * steps + t) * p.n_in,
                                        dst + (<size_t>b * steps + t) * p.n_out, conv_scratch)
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
        i += 1
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
    last partial panel goes through a tile of DENSE_TILE_ROWS rows and is copied out. Fewer
    than GRURT_DENSE_FEW outputs: a dot product per row and output (grurt_dense_few, W row-major)."""
    cdef int n_in = p.n_in, n_out = p.n_out, full = n_out // GRURT_PANEL, tail = n_out % GRURT_PANEL
    cdef size_t r, m
    cdef int i
    cdef float tile[DENSE_TILE_ROWS * GRURT_PANEL]
    cdef const float* tail_panel = p.W_panels + <size_t>full * n_in * GRURT_PANEL
    if full > 0:
        grurt_gemm(<int>rows, n_in, full, x, n_in, p.W_panels, p.bias, y, n_out, 0)
    if n_out < GRURT_DENSE_FEW:
        grurt_dense_few(rows, n_in, n_out, x, p.W, p.bias, y)
    elif tail > 0:
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


cdef void pool(const LayerPlan* p, int B, int steps, const float* x, float* y) noexcept nogil:
    """Pool1D over each sequence of x (B, steps, F)."""
    cdef int left = p.pad_left, right = p.pad_right, b, out
    if p.pad_same:
        grurt_same_pads(steps, p.stride, p.span, p.pad_same == 2, &left, &right)
    out = grurt_window_steps(steps, left, right, p.span, p.stride)
    for b in range(B):
        grurt_pool_seq(steps, p.n_out, x + <size_t>b * steps * p.n_out, p.span, p.stride, left, out, p.pool_max,
                       p.pool_include_pad, y + <size_t>b * out * p.n_out)
