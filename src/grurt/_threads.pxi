# Included by _kernels.pyx. GRU layers spread over the worker pool of _pool.h: threads created
# once per process, which a call takes when they are free and which claim work from atomic
# counters, so that no thread ever waits for one that has not started, and a thread that is
# slow (its core is busy) simply does less. Every way runs the parts of gru_loop
# (_gru_loop.pxi) with the same arithmetic per unit as one thread:
#
#   tasks      the directions and slices of the batch of a layer: independent recurrences,
#              claimed one at a time (run_gru)
#   unit split the units of each step of a one-direction layer, in groups: a group of step s
#              starts once every group of step s - 1 is done (run_units, grurt_phased)
#   pipeline   two stacked forward layers: the second runs chunk c of CHUNK_STEPS steps once
#              the first has written it (run_gru_pair)
#
# Whether a split pays depends on the machine at that moment (free cores scale; a core that
# another process keeps busy does not): each layer measures its calls both ways and runs the
# faster (choose_split).

cdef int split_policy = 0   # 0: measured (choose_split); 1: always split; -1: never (set_split_policy)


def set_split_policy(policy):
    """"auto" (the default: each layer measures whether its split over threads pays), "always"
    or "never": for tests, which must run the split paths whatever the machine, and for
    measurements. "always" also splits layers below the size thresholds and has each call
    wait for the workers it took to start (so that they take part) instead of withdrawing
    their job. Returns the previous policy."""
    global split_policy
    names = {"auto": 0, "always": 1, "never": -1}
    previous = {v: k for k, v in names.items()}[split_policy]
    split_policy = names[policy]
    return previous


def pool_workers():
    """Worker threads the pool has created in this process (they live until it exits)."""
    return grurt_pool_workers()


# ---- the measured choice ---------------------------------------------------------------------

cdef float median_ratio(const ThreadChoice* c) noexcept nogil:
    """The median of the recent ratios (1 when none)."""
    cdef int n = min(c.n_ratios, CHOICE_SAMPLES), i, j
    cdef float v[CHOICE_SAMPLES]
    cdef float key
    if n == 0:
        return 1.0
    for i in range(n):
        key = c.ratios[i]
        j = i
        while j > 0 and v[j - 1] > key:
            v[j] = v[j - 1]
            j -= 1
        v[j] = key
    return v[n // 2]


cdef enum:
    CHOICE_WARM_UP = 6       # calls alternating the two ways when a shape is new
    CHOICE_MAX_INTERVAL = 16 # at most this many calls between two tries of the other way


cdef bint choose_split(ThreadChoice* c, long shape) noexcept nogil:
    """Whether this call runs split over threads. The two ways are compared by pairs of
    consecutive calls, one each way (the machine changes slowly next to a call, so a pair
    sees the same conditions: free cores, or a core that another process keeps busy), and the
    decision is the median of the latest ratios: split while it is at least 5% faster. The
    other way is tried again every 4 calls, then 8, up to 16 while the choice holds, with the
    call before it timed as its partner. A median, because a split call that waits for a
    preempted worker is rare but long. Calls from several threads update these numbers
    without a lock: a lost update only delays the choice."""
    if split_policy != 0:
        return split_policy > 0
    if c.shape != shape:
        memset(c, 0, sizeof(ThreadChoice))
        c.shape, c.interval, c.last_way = shape, 4, -1
    c.calls += 1
    if c.calls <= CHOICE_WARM_UP:
        return c.calls % 2 == 1          # split, one thread, split, ...
    if c.calls == CHOICE_WARM_UP + 1:
        c.next_probe = c.calls + c.interval
    if c.calls == c.next_probe:
        return not c.best
    return c.best


cdef inline bint timed_call(const ThreadChoice* c) noexcept nogil:
    """Whether to time this call (after choose_split): in the warm-up, a try of the other way
    and the call before it; no other (reading the clock costs 0.1-0.2 µs here)."""
    return split_policy == 0 and (c.calls <= CHOICE_WARM_UP or c.calls >= c.next_probe - 1)


cdef void record_split(ThreadChoice* c, long shape, bint split, long ticks) noexcept nogil:
    """A timed call's duration: with the timed call just before it, run the other way, it
    makes a ratio; after a try of the other way, the next try comes sooner if the choice
    changed, later if not."""
    cdef bint was_best = c.best
    if c.shape != shape:
        return
    if c.last_way >= 0 and c.last_way != split and c.last_ticks > 0 and ticks > 0:
        c.ratios[c.n_ratios % CHOICE_SAMPLES] = (<float>ticks / c.last_ticks if split
                                                 else <float>c.last_ticks / ticks)
        c.n_ratios += 1
        c.best = median_ratio(c) < 0.95
    c.last_way, c.last_ticks = split, ticks
    if c.calls > CHOICE_WARM_UP and c.calls >= c.next_probe:
        c.interval = 4 if c.best != was_best else min(2 * c.interval, CHOICE_MAX_INTERVAL)
        c.next_probe = c.calls + c.interval


# ---- one layer: tasks or the unit split ------------------------------------------------------

cdef struct TaskJob:
    # independent recurrences (directions × batch slices), claimed one at a time
    GruTask* tasks
    int n, next


cdef void tasks_job(void* arg, int slot) noexcept nogil:
    cdef TaskJob* job = <TaskJob*>arg
    cdef int i
    while True:
        i = grurt_claim(&job.next)
        if i >= job.n:
            return
        run_task(&job.tasks[i])


cdef enum Split:
    ONE_THREAD, SPLIT_TASKS, SPLIT_UNITS


cdef int run_gru(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                 const int* lengths, float* scratch, int threads, bint streaming) noexcept nogil:
    """One GRU layer over x (B, T, I) into y: (B, T, D*H) sequences or (B, D*H) last states.
    Returns the number of threads that ran it.

    ``streaming`` (Stream and StreamPool calls): every step sums its recurrent product in
    forward order, and y is always the sequence of states, so that a block of steps gives bit
    for bit what the same steps give one call at a time.

    ``scratch`` holds D × B row scratches. With ``threads`` > 1 (capped at the usable CPUs)
    the layer runs on the worker pool: its directions and slices of the batch as tasks that
    the threads claim one at a time, or, for fewer sequences than threads in a one-direction
    layer, the units of each step (run_units), when choose_split measures that it pays.
    """
    cdef int H = p.H, DH = p.D * H
    cdef int d, b0, b1, chunk, chunks, used = 1
    cdef GruTask tasks[MAX_THREADS]
    cdef TaskJob job
    cdef size_t row_scratch = step_scratch_floats(p)
    cdef float* seq_out = y if p.return_sequences or streaming else NULL
    cdef int usable = min(min(threads, MAX_THREADS), grurt_pool_cpus()) if threads > 1 else 1
    cdef int split = ONE_THREAD
    # the sizes below which a split never pays; policy "always" (tests) splits whatever can be
    cdef bint any_size = split_policy > 0
    cdef bint units = (p.D == 1 and p.fast_gates and H % GRURT_PANEL == 0 and H >= 2 * GRURT_PANEL
                       and (any_size or H >= MIN_SPLIT_UNITS and <long>B * H * 3 * H >= MIN_SPLIT_STEP_FMAS))
    if usable > 1:
        if p.D * B >= usable or (p.D * B >= 2 and not units):
            if any_size or <long>T * B * H * 3 * H >= MIN_SPLIT_TASK_FMAS:
                split = SPLIT_TASKS
        elif units:
            split = SPLIT_UNITS
    cdef long shape = (<long>B << 32) + T
    cdef bint use_split = split != ONE_THREAD and choose_split(<ThreadChoice*>&p.choice, shape)
    cdef bint timed = split != ONE_THREAD and timed_call(&p.choice)
    cdef long start = grurt_ticks() if timed else 0
    if use_split and split == SPLIT_UNITS:
        used = run_units(p, B, T, x, seq_out, state, lengths, scratch, usable, streaming)
        if used == 0:           # no memory for the groups' reduced-precision scratch
            use_split, timed, split, used = False, False, ONE_THREAD, 1
    if not use_split and runs_small(p):         # one thread on the small kernel: no tasks
        for d in range(p.D):
            gru_small(p, d, B, T, x, state + <size_t>d * B * H, seq_out, lengths)
    elif not (use_split and split == SPLIT_UNITS):
        # per direction, the batch in slices of at least 8 rows (an AVX-512 tile), up to four
        # tasks per thread, so that a thread that is slowed down holds back a small part
        chunks = 1
        if use_split:
            chunks = max(1, min(B, min(max(1, 4 * usable // p.D), max((usable + p.D - 1) // p.D, B // 8))))
        job.n, job.next, job.tasks = 0, 0, tasks
        for d in range(p.D):
            for chunk in range(chunks):
                b0, b1 = B * chunk // chunks, B * (chunk + 1) // chunks
                whole_layer_task(&tasks[job.n], p, d, b1 - b0, T, x + <size_t>b0 * T * p.n_in,
                                 state + (<size_t>d * B + b0) * H,
                                 NULL if seq_out == NULL else seq_out + <size_t>b0 * T * DH,
                                 NULL if lengths == NULL else lengths + b0,
                                 scratch + (<size_t>d * B + b0) * row_scratch)
                tasks[job.n].alternate = not streaming
                job.n += 1
        if use_split:
            used = grurt_pool_run_wait(usable, tasks_job, &job, split_policy > 0)
        else:           # one thread: the tasks in order, no atomic claims
            for chunk in range(job.n):
                run_task(&tasks[chunk])
    if timed:
        record_split(<ThreadChoice*>&p.choice, shape, use_split, grurt_ticks() - start)
    if not p.return_sequences and not streaming:
        final_states(p, B, state, y)
    return used


cdef void final_states(const LayerPlan* p, int B, const float* state, float* y) noexcept nogil:
    """y (B, D*H) = the final states (D, B, H) of a GRU that hands over no sequence."""
    cdef int b, d
    for b in range(B):
        for d in range(p.D):
            memcpy(y + (<size_t>b * p.D + d) * p.H, state + (<size_t>d * B + b) * p.H, p.H * sizeof(float))


cdef struct UnitsJob:
    # the unit split: one unit-range task per group, sharing the double-buffered state
    GruTask* groups
    int n_groups, T
    grurt_phased work


cdef void units_job(void* arg, int slot) noexcept nogil:
    """Claims items until none are left: phase q is the input projection of a chunk of
    CHUNK_STEPS steps (q = c·(CHUNK_STEPS + 1)) or one step of it; item g of a phase is
    group g. An item starts when every item of the phases before it is done."""
    cdef UnitsJob* job = <UnitsJob*>arg
    cdef long waited = 0
    cdef int t, q, g, c, r
    while True:
        t = grurt_phased_claim(&job.work, &waited)
        if t < 0:
            return
        q, g = t // job.n_groups, t % job.n_groups
        c, r = q // (CHUNK_STEPS + 1), q % (CHUNK_STEPS + 1)
        if r == 0:
            if c == 0:
                gru_begin(&job.groups[g])
            gru_project(&job.groups[g], c * CHUNK_STEPS)
        else:
            gru_step(&job.groups[g], c * CHUNK_STEPS, c * CHUNK_STEPS + r - 1)
        grurt_phased_done(&job.work)


cdef int run_units(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                   const int* lengths, float* scratch, int threads, bint streaming) noexcept nogil:
    """A one-direction GRU (sigmoid/tanh, no clip, linear_before_reset = 1) with the units of
    each step in groups that the threads claim: a thread takes the next group, and a group of
    step s starts once every group of step s - 1 is done. There is no barrier: a thread that
    is late or slow holds back only the groups it has claimed, and the caller runs whatever no
    worker takes. Returns the number of threads that ran."""
    cdef int H = p.H, P = H // GRURT_PANEL, g, u0, u1
    # groups of at least two panels per gate (the one-row product runs two panels per pass),
    # about two per thread
    cdef int n_groups = max(1, min(min(P // 2, 2 * threads), MAX_THREADS))
    cdef GruTask groups[MAX_THREADS]
    cdef UnitsJob job
    cdef float* states0 = scratch
    cdef float* states1 = states0 + <size_t>B * H
    cdef float* local = states1 + <size_t>B * H
    # each group's reduced-precision product scratch (a group's items never run at once)
    cdef float* works = NULL
    if p.lowp_work_floats:
        works = <float*>malloc(n_groups * p.lowp_work_floats * sizeof(float))
        if works == NULL:
            return 0            # nothing computed: the caller runs the layer on one thread
    memcpy(states0, state, <size_t>B * H * sizeof(float))
    for g in range(n_groups):
        u0, u1 = P * g // n_groups * GRURT_PANEL, P * (g + 1) // n_groups * GRURT_PANEL
        unit_range_task(&groups[g], p, u0, u1, B, T, x, y, lengths, states0, states1, local,
                        NULL if works == NULL else lowp_work(works + g * p.lowp_work_floats))
        groups[g].alternate = not streaming
        local += aligned(<size_t>B * unit_scratch_floats(u1 - u0))
    job.groups, job.n_groups, job.T = groups, n_groups, T
    grurt_phased_init(&job.work, n_groups, (T + CHUNK_STEPS - 1) // CHUNK_STEPS + T)
    cdef int used = grurt_pool_run_wait(threads, units_job, &job, split_policy > 0)
    free(works)
    # step s reads states[s % 2] and writes the other one
    memcpy(state, states1 if T % 2 else states0, <size_t>B * H * sizeof(float))
    return used


# ---- two stacked layers pipelined ------------------------------------------------------------

cdef struct PipeJob:
    # lane 0: the first layer, lane 1: the second, each a whole-layer task run chunk by chunk
    GruTask lanes[2]
    int chunks
    int claimed[2]           # chunks of each lane claimed (atomic)
    int done[2]              # chunks of each lane finished (atomic)


cdef void pipe_chunk(PipeJob* job, int lane, int c) noexcept nogil:
    cdef GruTask* t = &job.lanes[lane]
    cdef int s0 = c * CHUNK_STEPS, s
    if c == 0:
        gru_begin(t)
    gru_project(t, s0)
    for s in range(s0, min(s0 + CHUNK_STEPS, t.T)):
        gru_step(t, s0, s)
    if c == job.chunks - 1:
        gru_end(t)


cdef void pipe_job(void* arg, int slot) noexcept nogil:
    """Runs chunks of either lane while any is left: chunk c of a lane once its chunk c - 1 is
    done, and for the second lane once the first has done chunk c (its input). A thread keeps
    to the lane it ran last (its weights are in that core's cache); the caller starts on the
    first lane, a worker on the second, and either takes the other lane's chunk when its own
    has none ready: a worker that arrives late, or never, leaves the caller running both."""
    cdef PipeJob* job = <PipeJob*>arg
    cdef int lane = slot % 2, k, l, c, idle = 0
    cdef bint ran
    while True:
        ran = False
        for k in range(2):
            l = (lane + k) % 2
            c = grurt_load_acquire(&job.claimed[l])
            if (c >= job.chunks or grurt_load_acquire(&job.done[l]) != c
                    or (l == 1 and grurt_load_acquire(&job.done[0]) <= c)
                    or not grurt_cas(&job.claimed[l], c, c + 1)):
                continue
            pipe_chunk(job, l, c)
            grurt_store_release(&job.done[l], c + 1)
            lane, ran = l, True
            break
        if ran:
            idle = 0
            continue
        if (grurt_load_acquire(&job.claimed[0]) >= job.chunks
                and grurt_load_acquire(&job.claimed[1]) >= job.chunks):
            return
        idle += 1
        if idle < 2000:
            grurt_cpu_relax()
        else:
            sched_yield()        # the thread we wait for lost its core: let it have ours


cdef bint pipelines(const LayerPlan* p, const LayerPlan* q, int B, int T, int threads,
                    bint streaming) noexcept nogil:
    """Whether GRU layers p then q may run as a pipeline: both one-direction forward layers,
    p handing q its sequence, fewer sequences than threads (else batch tasks split better),
    and enough work; not in streaming calls, nor with a layer on its small kernel (a pipeline
    runs the general loop, whose bits differ)."""
    return (threads > 1 and not streaming and not runs_small(p) and not runs_small(q)
            and p.D == 1 and q.D == 1 and not p.reverse_only and not q.reverse_only
            and p.return_sequences and B < min(threads, grurt_pool_cpus()) and T > CHUNK_STEPS
            and (split_policy > 0 or <long>T * B * (p.H * 3 * p.H + q.H * 3 * q.H) >= MIN_SPLIT_TASK_FMAS))


cdef int run_gru_pair(const LayerPlan* p, const LayerPlan* q, int B, int T, const float* x, float* mid,
                      float* y, float* state_p, float* state_q, const int* lengths, float* scratch,
                      int threads) noexcept nogil:
    """GRU layers p then q (pipelines() holds) over x (B, T, I): p's sequence into mid, q's
    output into y. Either pipelined on the pool, or layer after layer (each by run_gru, which
    may split it), as choose_split measures faster for the pair. Returns the threads that ran."""
    cdef long shape = (<long>B << 32) + T
    cdef ThreadChoice* choice = <ThreadChoice*>&p.pair_choice
    cdef bint use_pipe = choose_split(choice, shape)
    cdef bint timed = timed_call(choice)
    cdef long start = grurt_ticks() if timed else 0
    cdef int used
    cdef PipeJob job
    if use_pipe:
        # each layer's scratch: B rows of its own size, side by side (workspace_floats has room
        # for 2 B rows of the largest)
        whole_layer_task(&job.lanes[0], p, 0, B, T, x, state_p, mid, lengths, scratch)
        whole_layer_task(&job.lanes[1], q, 0, B, T, mid, state_q, y if q.return_sequences else NULL, lengths,
                         scratch + <size_t>B * step_scratch_floats(p))
        job.chunks = (T + CHUNK_STEPS - 1) // CHUNK_STEPS
        job.claimed[0] = job.claimed[1] = job.done[0] = job.done[1] = 0
        used = grurt_pool_run_wait(min(threads, 2), pipe_job, &job, split_policy > 0)
        if not q.return_sequences:
            final_states(q, B, state_q, y)
    else:
        # two statements: Cython evaluates the arguments of max() last to first
        used = run_gru(p, B, T, x, mid, state_p, lengths, scratch, threads, False)
        used = max(used, run_gru(q, B, T, mid, y, state_q, lengths, scratch, threads, False))
    if timed:
        record_split(choice, shape, use_pipe, grurt_ticks() - start)
    return used
