# Included by _kernels.pyx. The GRU time loop: one function, gru_loop, for every way a layer
# runs. A task (GruTask) is the units u0 .. u0+U-1 of one direction of a layer over B
# sequences:
#
#   whole_layer_task   all H units of direction d for a slice of the batch, with a private
#                      state it updates in place: one thread, or one of the tasks of a
#                      direction/batch split (run_gru)
#   unit_range_task    whole panels of units of a one-direction layer over the whole batch
#                      (the unit split, run_units): the state is shared by the tasks and
#                      double-buffered; step s of any task starts once every task has
#                      finished step s - 1 (_threads.pxi)
#
# gru_loop runs a task's whole loop. Its parts, for the threaded ways that interleave tasks:
# gru_begin, then per chunk of CHUNK_STEPS steps gru_project and gru_step for each step, then
# gru_end. A layer with a small kernel (H = 8, 16, 24, 32: LayerPlan.small) runs its whole-layer
# tasks on it instead, a sequence at a time (gru_small; run_task chooses), and never as a unit
# range or in a pipeline: its bits are not gru_loop's.
#
# Per step s (gate order z, r, h; see the equations in spec.py):
#
#   xp = x_t · Wᵀ + Wb (+ Rb_z, Rb_r; + Rb_h when lbr=0)   precomputed for CHUNK_STEPS steps
#   hr = h · R_zrhᵀ + [0 0 Rb_h]                             lbr=1
#   hr = h · R_zrᵀ,  hn = (r⊙h) · R_hᵀ                       lbr=0 (whole layer only)
#   h' = gate pass(xp, hr[, hn], h)                          _gru_math.h
#
# A task's products and gate pass cover its own units only. Its xp and hr rows hold [z r h] of
# those units, U apart (the gate pass finds r at U and h at 2U): for a whole layer, the layer's
# 3H columns padded to whole panels, in one product; for a unit range, three products, one per
# gate, each a range of whole panels of the layer's packed weights (the products of a range of
# panels are bit for bit those of all panels). So every unit's arithmetic is the same however
# the layer is split.

cdef struct GruTask:
    const LayerPlan* p
    int d, B, T              # direction, sequences, steps
    int u0, U                # the task's units: u0 .. u0+U-1
    const float* x           # (B, T, I): this task's sequences
    float* y                 # (B, T, D*H) or NULL: outputs go to columns d*H + u0 ..
    const int* lengths       # (B,) or NULL
    float* h                 # (B, H): the state, copied in and out, if private; NULL if shared
    # the state before and after a step: B rows of ldh floats (the same buffer twice when the
    # task owns every unit and updates the state in place)
    float* states[2]
    int ldh
    # the products of x and h with the packed weights, in n_parts parts (1 or 3) of whole
    # panels: part g starts at panel part_panel[g] and goes to column part_out[g] of xp or hr
    int n_parts
    int part_panel[3]
    int part_out[3]
    int w_panels, r_panels   # panels per part of Wᵀ and of R_zrhᵀ (lbr=1) or R_zrᵀ (lbr=0)
    # scratch: xp (B rows × CHUNK_STEPS steps of xs floats) and hr (B rows of hs floats), each
    # followed by GRURT_UNIT_BLOCK floats of zeros that the gate pass may read past its last row;
    # a whole layer also has hn (lbr=0: B rows of (r⊙h)·R_hᵀ), rh (B, H) and gates (B, 3H)
    float* xp
    float* hr
    float* hn
    float* rh
    float* gates
    int xs, hs
    void* work               # the reduced-precision products' scratch (p.lowp_work_floats)
    # 1: odd steps sum the recurrent product backwards (model.run, see GRURT_K in _gru_math.h);
    # 0: every step forwards, as a stream's one-step calls do (streaming calls, run_layers)
    int alternate


cdef inline int padded_units(int H) noexcept nogil:
    """H rounded up to whole blocks of the gate pass."""
    return (H + GRURT_UNIT_BLOCK - 1) // GRURT_UNIT_BLOCK * GRURT_UNIT_BLOCK


cdef size_t step_scratch_floats(const LayerPlan* p) noexcept nogil:
    """Scratch of one batch row of a whole-layer task (whole_layer_task): its state, its input
    projection for CHUNK_STEPS steps, then hr, hn, rh and gates, and the gate pass's read slack."""
    return aligned(padded_units(p.H) + <size_t>CHUNK_STEPS * p.xp_stride
                   + <size_t>(p.panels_per_gate_set + p.panels_h) * GRURT_PANEL + 4 * p.H
                   + 2 * GRURT_UNIT_BLOCK + p.lowp_work_floats)


cdef inline size_t unit_scratch_floats(int units) noexcept nogil:
    """Scratch of one batch row of a unit-range task (unit_range_task): its projections of
    CHUNK_STEPS steps and its products, each followed by the gate pass's read slack. (Its
    reduced-precision products' scratch, p.lowp_work_floats per task, comes on top.)"""
    return <size_t>(CHUNK_STEPS + 1) * 3 * units + 2 * GRURT_UNIT_BLOCK


cdef inline void* lowp_work(float* after) noexcept nogil:
    """The reduced-precision products' scratch: the first cache line at or after ``after``."""
    return <void*>(after + (-(<size_t>after) // 4) % ALIGN_FLOATS)


cdef void whole_layer_task(GruTask* t, const LayerPlan* p, int d, int B, int T, const float* x, float* h,
                           float* y, const int* lengths, float* scratch) noexcept nogil:
    """Direction d of the layer, all units, for B sequences; h (B, H) is updated. ``scratch``:
    B × step_scratch_floats(p)."""
    cdef int H = p.H, Hp = padded_units(H)
    t.p, t.d, t.B, t.T, t.u0, t.U = p, d, B, T, 0, H
    t.x, t.y, t.lengths, t.h = x, y, lengths, h
    # the state, B rows of Hp (the gate pass computes whole blocks of units)
    t.states[0] = t.states[1] = scratch
    t.ldh = Hp
    t.n_parts, t.part_panel[0], t.part_out[0] = 1, 0, 0
    t.w_panels, t.r_panels = p.xp_stride // GRURT_PANEL, p.panels_per_gate_set
    t.xs, t.hs = p.xp_stride, p.panels_per_gate_set * GRURT_PANEL
    t.xp = scratch + <size_t>B * Hp
    t.hr = t.xp + <size_t>B * CHUNK_STEPS * t.xs + GRURT_UNIT_BLOCK
    t.hn = t.hr + <size_t>B * t.hs + GRURT_UNIT_BLOCK
    t.rh = t.hn + <size_t>B * p.panels_h * GRURT_PANEL
    t.gates = t.rh + <size_t>B * H
    t.work = lowp_work(t.gates + <size_t>B * 3 * H)
    t.alternate = 1


cdef void unit_range_task(GruTask* t, const LayerPlan* p, int u0, int u1, int B, int T, const float* x,
                          float* y, const int* lengths, float* states0, float* states1, float* scratch,
                          void* work) noexcept nogil:
    """Units u0 .. u1-1 (whole panels) of a one-direction layer, sigmoid/tanh, no clip,
    linear_before_reset = 1, over the whole batch; the state (B, H) is shared: step s reads
    states[s % 2] and writes the task's units of the other. ``scratch``: B ×
    unit_scratch_floats(u1 - u0); ``work``: p.lowp_work_floats, 64-byte aligned."""
    cdef int H = p.H, U = u1 - u0, g
    t.p, t.d, t.B, t.T, t.u0, t.U = p, 0, B, T, u0, U
    t.x, t.y, t.lengths, t.h = x, y, lengths, NULL
    t.states[0], t.states[1] = states0, states1
    t.ldh = H
    t.n_parts = 3
    for g in range(3):
        t.part_panel[g] = (g * H + u0) // GRURT_PANEL
        t.part_out[g] = g * U
    t.w_panels = t.r_panels = U // GRURT_PANEL
    t.xs = t.hs = 3 * U
    t.xp = scratch
    t.hr = t.xp + <size_t>B * CHUNK_STEPS * t.xs + GRURT_UNIT_BLOCK
    t.hn = t.rh = t.gates = NULL
    t.work = work
    t.alternate = 1


cdef inline void gru_product(const LayerPlan* p, bint recurrent, int d, int first_panel, int rows, int n_in,
                             int count, const float* x, int ldx, const float* init, float* y, int ldy,
                             int backward, void* work) noexcept nogil:
    """y = init + x · Aᵀ over ``count`` panels of A = W (recurrent false) or R of direction d
    from panel ``first_panel`` on, in the way the plan stores them: float32 (_gru_math.h,
    grurt_gemm), bf16 or int8 (_lowp.h; ``work``: p.lowp_work_floats)."""
    cdef size_t panel = <size_t>d * (p.R_dir_panels if recurrent else p.W_dir_panels) + first_panel
    cdef const char* base = (<const char*>(p.R_panels if recurrent else p.W_panels)
                             + panel * <size_t>(p.R_panel_bytes if recurrent else p.W_panel_bytes))
    cdef int mode = p.R_mode if recurrent else p.W_mode
    if mode == WEIGHTS_FLOAT32:
        grurt_gemm(rows, n_in, count, x, ldx, <const float*>base, init, y, ldy, backward)
    elif mode == WEIGHTS_BF16:
        grurt_gemm_bf16(rows, n_in, count, x, ldx, <const uint16_t*>base, init, y, ldy, backward, work)
    else:
        grurt_gemm_i8(rows, n_in, count, x, ldx, <const int8_t*>base,
                      (p.R_scale if recurrent else p.W_scale) + panel * GRURT_PANEL,
                      (p.R_colsum if recurrent else p.W_colsum) + panel * GRURT_PANEL,
                      init, y, ldy, backward, work)


cdef inline void product(const GruTask* t, bint recurrent, int rows, int n_in, int panels, const float* x,
                         int ldx, const float* init, float* y, int ldy, int backward) noexcept nogil:
    """y[:, part] = init[part] + x · A[part]ᵀ for each of the task's parts, A = W or R of the
    task's direction (gru_product)."""
    cdef int g
    cdef const float* part_init = NULL
    for g in range(t.n_parts):
        if init != NULL:
            part_init = init + <size_t>t.part_panel[g] * GRURT_PANEL
        gru_product(t.p, recurrent, t.d, t.part_panel[g], rows, n_in, panels, x, ldx, part_init,
                    y + t.part_out[g], ldy, backward, t.work)


cdef inline bint runs_small(const LayerPlan* p) noexcept nogil:
    """Whether the layer runs on its small kernel (LayerPlan.small; use_small_kernels)."""
    return p.small != NULL and small_kernels


cdef void run_task(const GruTask* t) noexcept nogil:
    """A whole-layer task, on the layer's small kernel where it has one, else by gru_loop."""
    if runs_small(t.p):
        gru_small(t.p, t.d, t.B, t.T, t.x, t.h, t.y, t.lengths)
    else:
        gru_loop(t)


cdef void gru_small(const LayerPlan* p, int d, int B, int T, const float* x, float* h, float* y,
                    const int* lengths) noexcept nogil:
    """Direction d of a layer on its small kernel (LayerPlan.small) for B sequences x (B, T, I):
    each sequence's steps in one call, the state h (B, H) in registers, no scratch; outputs to
    y (B, T, D*H) columns d*H.. unless NULL, zero past a sequence's length (as gru_begin)."""
    cdef int H = p.H, I = p.n_in, DH = p.D * H, b, L, first, ts
    cdef bint reverse = p.reverse_only or d == 1
    cdef grurt_small_gru g
    g.W = p.W_panels + <size_t>d * p.W_panel_stride
    g.R = p.R_panels + <size_t>d * p.panel_stride
    g.bias = p.bias + <size_t>d * p.xp_stride
    g.rinit = p.R_init + <size_t>d * p.panels_per_gate_set * GRURT_PANEL
    g.n_in = I
    cdef float* yb = NULL
    for b in range(B):
        L = T if lengths == NULL else lengths[b]
        first = L - 1 if reverse else 0
        if y != NULL:
            yb = y + (<size_t>b * T + first) * DH + d * H
            for ts in range(L, T):
                memset(y + (<size_t>b * T + ts) * DH + d * H, 0, H * sizeof(float))
        grurt_gru_small(p.small, &g, L, x + (<size_t>b * T + first) * I, -I if reverse else I, h + <size_t>b * H,
                        yb, -DH if reverse else DH)


cdef void gru_loop(const GruTask* t) noexcept nogil:
    """The time loop of a task (see GruTask) over x (B, T, I): outputs into y (zero past each
    sequence's length; a reverse direction reads and writes each sequence back to front within
    its length), the state updated.

    The input projection x · Wᵀ + biases, which does not depend on the state, is computed
    for CHUNK_STEPS steps of every sequence at once before those steps run: one large product
    instead of one per step, with a buffer small enough to stay in cache.
    """
    cdef int s0 = 0, s
    gru_begin(t)
    while s0 < t.T:
        gru_project(t, s0)
        for s in range(s0, min(s0 + CHUNK_STEPS, t.T)):
            gru_step(t, s0, s)
        s0 += CHUNK_STEPS
    gru_end(t)


cdef void gru_begin(const GruTask* t) noexcept nogil:
    """Before the first step: a private state copied in (padded rows, the padding zero), the
    gate pass's read slack zeroed, outputs past each sequence's length zeroed."""
    cdef int B = t.B, T = t.T, H = t.p.H, DH = t.p.D * H, b, ts
    if t.h != NULL:
        memset(t.states[0], 0, <size_t>B * t.ldh * sizeof(float))
        for b in range(B):
            memcpy(t.states[0] + b * t.ldh, t.h + b * H, H * sizeof(float))
    memset(t.xp + <size_t>B * CHUNK_STEPS * t.xs, 0, GRURT_UNIT_BLOCK * sizeof(float))
    memset(t.hr + <size_t>B * t.hs, 0, GRURT_UNIT_BLOCK * sizeof(float))
    if t.rh != NULL:
        memset(t.rh, 0, <size_t>B * H * sizeof(float))      # rows of finished sequences stay defined
    if t.y != NULL and t.lengths != NULL:
        for b in range(B):
            for ts in range(t.lengths[b], T):
                memset(t.y + (<size_t>b * T + ts) * DH + t.d * H + t.u0, 0, t.U * sizeof(float))


cdef void gru_project(const GruTask* t, int s0) noexcept nogil:
    """xp[b, i] = x[b, t] · Wᵀ + bias for the steps s0 .. s0+n-1 of sequence b (n up to
    CHUNK_STEPS), in time order: t = s0 + i forward, t = L - s0 - m + i in reverse (m steps
    left in b)."""
    cdef const LayerPlan* p = t.p
    cdef int B = t.B, T = t.T, I = p.n_in, xs = t.xs, n = min(CHUNK_STEPS, T - s0), b, ts, L, m
    cdef bint reverse = p.reverse_only or t.d == 1
    cdef const float* bias = p.bias + <size_t>t.d * p.xp_stride
    for b in range(B):
        L = T if t.lengths == NULL else t.lengths[b]
        if s0 < L:
            m = min(n, L - s0)
            ts = L - s0 - m if reverse else s0
            product(t, False, m, I, t.w_panels, t.x + (<size_t>b * T + ts) * I, I, bias,
                    t.xp + <size_t>b * CHUNK_STEPS * xs, xs, 0)
            if m < CHUNK_STEPS:     # the gate pass may read into the first row left unset
                memset(t.xp + (<size_t>b * CHUNK_STEPS + m) * xs, 0, GRURT_UNIT_BLOCK * sizeof(float))


cdef void gru_step(const GruTask* t, int s0, int s) noexcept nogil:
    """Step s (in the chunk that starts at s0) of the task's units: reads states[s % 2],
    writes states[1 - s % 2] (the same buffer for a private state) and the outputs."""
    cdef const LayerPlan* p = t.p
    cdef int B = t.B, T = t.T, H = p.H, DH = p.D * H, u0 = t.u0, U = t.U
    cdef int xs = t.xs, hs = t.hs, ldh = t.ldh, hn_stride = p.panels_h * GRURT_PANEL, b, ts, L
    cdef bint reverse = p.reverse_only or t.d == 1
    cdef const float* hr_init = NULL if p.R_init == NULL else p.R_init + <size_t>t.d * p.panels_per_gate_set * GRURT_PANEL
    cdef const int* lengths = t.lengths
    cdef float* cur = t.states[s % 2]
    cdef float* nxt = t.states[1 - s % 2]
    cdef float* hr = t.hr
    cdef float* h
    cdef const float* xrow
    # hr = h · R_zrhᵀ + [0 0 Rb_h] (lbr=1) or h · R_zrᵀ (lbr=0)
    # odd steps read R backwards (see GRURT_K in _gru_math.h), unless streaming
    cdef int backward = s % 2 if t.alternate else 0
    product(t, True, B, H, t.r_panels, cur, ldh, hr_init, hr, hs, backward)
    if not p.lbr:
        for b in range(B):
            L = T if lengths == NULL else lengths[b]
            if s < L:
                xrow = t.xp + (<size_t>b * CHUNK_STEPS + chunk_row(s, s0, L, reverse)) * xs
                grurt_gates_lbr0_zr(U, xrow, hr + b * hs, cur + b * ldh, t.gates + b * 3 * U,
                                    t.rh + b * H, &p.f, p.clip)
        # hn = (r⊙h) · R_hᵀ
        gru_product(p, True, t.d, p.panels_per_gate_set, B, H, p.panels_h, t.rh, H, NULL, t.hn, hn_stride,
                    backward, t.work)
    for b in range(B):
        h = nxt + b * ldh + u0
        if nxt != cur:      # shared state: carry this task's units over, then update them
            memcpy(h, cur + b * ldh + u0, U * sizeof(float))
        L = T if lengths == NULL else lengths[b]
        if s >= L:
            continue
        xrow = t.xp + (<size_t>b * CHUNK_STEPS + chunk_row(s, s0, L, reverse)) * xs
        if p.lbr:
            if p.fast_gates:
                grurt_gates_lbr1_fast(U, xrow, hr + b * hs, h)
            else:
                grurt_gates_lbr1(U, xrow, hr + b * hs, h, t.gates + b * 3 * U, &p.f, &p.g, p.clip)
        else:
            grurt_gates_lbr0_h(U, xrow, t.hn + b * hn_stride, h, t.gates + b * 3 * U, &p.g, p.clip)
        if t.y != NULL:
            ts = L - 1 - s if reverse else s
            memcpy(t.y + (<size_t>b * T + ts) * DH + t.d * H + u0, h, U * sizeof(float))


cdef void gru_end(const GruTask* t) noexcept nogil:
    """After the last step: a private state copied out."""
    cdef int b
    if t.h != NULL:
        for b in range(t.B):
            memcpy(t.h + b * t.p.H, t.states[0] + b * t.ldh, t.p.H * sizeof(float))


cdef inline int chunk_row(int s, int s0, int L, bint reverse) noexcept nogil:
    """The projection row of step s in a chunk that starts at step s0 (sequence length L)."""
    return min(CHUNK_STEPS, L - s0) - 1 - (s - s0) if reverse else s - s0
