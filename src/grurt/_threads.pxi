# Included by _kernels.pyx. A GRU layer spread over threads: its directions and slices of its
# batch (independent recurrences), or the units of a large one-direction layer (the unit
# split). Every way runs gru_loop (_gru_loop.pxi) on tasks, with the same arithmetic per unit.

cdef int run_gru(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                 const int* lengths, float* scratch, int threads, bint streaming) noexcept nogil:
    """One GRU layer over x (B, T, I) into y: (B, T, D*H) sequences or (B, D*H) last states.
    Returns the number of threads that ran it.

    ``streaming`` (Stream and StreamPool calls): every step sums its recurrent product in
    forward order, and y is always the sequence of states, so that a block of steps gives bit
    for bit what the same steps give one call at a time.

    ``scratch`` holds D × B row scratches; ``threads`` > 1 runs the directions and slices of
    the batch on threads of their own, or, when that leaves threads idle, the units of a large
    one-direction layer (run_units).
    """
    cdef int H = p.H, DH = p.D * H
    cdef int d, i, b0, b1, chunk, chunks, n_tasks, used = 0
    cdef GruTask tasks[MAX_THREADS]
    cdef size_t row_scratch = step_scratch_floats(p)
    cdef float* seq_out = y if p.return_sequences or streaming else NULL
    chunks = max(1, min(B, min(threads, MAX_THREADS) // p.D))
    if not streaming and p.D == 1 and chunks < threads and p.fast_gates and H >= MIN_SPLIT_UNITS and H % GRURT_PANEL == 0:
        used = run_units(p, B, T, x, seq_out, state, lengths, scratch, min(threads, MAX_THREADS))
    if used == 0:
        n_tasks = 0
        for d in range(p.D):
            for chunk in range(chunks):
                b0, b1 = B * chunk // chunks, B * (chunk + 1) // chunks
                whole_layer_task(&tasks[n_tasks], p, d, b1 - b0, T, x + <size_t>b0 * T * p.n_in,
                                 state + (<size_t>d * B + b0) * H,
                                 NULL if seq_out == NULL else seq_out + <size_t>b0 * T * DH,
                                 NULL if lengths == NULL else lengths + b0,
                                 scratch + (<size_t>d * B + b0) * row_scratch)
                tasks[n_tasks].alternate = not streaming
                n_tasks += 1
        if n_tasks > threads:       # one after the other
            for i in range(n_tasks):
                gru_loop(&tasks[i])
            used = 1
        else:
            used = run_tasks(tasks, n_tasks, False)
    if not p.return_sequences and not streaming:
        final_states(p, B, state, y)
    return used


cdef void final_states(const LayerPlan* p, int B, const float* state, float* y) noexcept nogil:
    """y (B, D*H) = the final states (D, B, H) of a GRU that hands over no sequence."""
    cdef int b, d
    for b in range(B):
        for d in range(p.D):
            memcpy(y + (<size_t>b * p.D + d) * p.H, state + (<size_t>d * B + b) * p.H, p.H * sizeof(float))


cdef void* gru_thread(void* arg) noexcept nogil:
    cdef GruTask* task = <GruTask*>arg
    while grurt_load_acquire(task.go) == 0:
        sched_yield()
    if grurt_load_acquire(task.go) == 1:
        gru_loop(task)
    return NULL


cdef int run_tasks(GruTask* tasks, int n, bint together) noexcept nogil:
    """Run the n tasks, the first here and each other on a thread of its own; returns the
    number of threads that ran them. Tasks that meet at a barrier (``together``) all run or
    none does (0 returned, nothing computed) if a thread cannot be started; other tasks whose
    thread cannot be started run here."""
    cdef pthread_t handles[MAX_THREADS]
    cdef bint started[MAX_THREADS]
    cdef int i, threads = 1, go = 0 if together else 1
    cdef bint complete = True
    for i in range(n):
        tasks[i].go = &go
    for i in range(1, n):
        started[i] = complete and pthread_create(&handles[i], NULL, gru_thread, &tasks[i]) == 0
        if started[i]:
            threads += 1
        elif together:
            complete = False
        else:
            gru_loop(&tasks[i])
    grurt_store_release(&go, 1 if complete else -1)
    if complete:
        gru_loop(&tasks[0])
    for i in range(1, n):
        if started[i]:
            pthread_join(handles[i], NULL)
    return threads if complete else 0


cdef int run_units(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                   const int* lengths, float* scratch, int threads) noexcept nogil:
    """A one-direction GRU with its units split over ``threads`` threads, for batches too
    small to split: each thread computes its units' rows of the products and their gates,
    and the threads meet at a barrier after every step, when the new state is complete.
    Every unit's arithmetic is the same as on one thread. At most one thread per online CPU:
    threads that meet at every step gain nothing from sharing a core. Returns the number of
    threads, or 0, having computed nothing, when that leaves one thread or a thread cannot be
    started."""
    cdef int H = p.H, n = <int>min(<long>min(threads, H // GRURT_PANEL), sysconf(_SC_NPROCESSORS_ONLN))
    cdef int i, used
    if n < 2:
        return 0
    cdef GruTask tasks[MAX_THREADS]
    cdef grurt_barrier barrier
    grurt_barrier_init(&barrier, n)
    # shared: the state before and after a step; then each thread's scratch
    cdef float* states0 = scratch
    cdef float* states1 = states0 + <size_t>B * H
    cdef float* local = states1 + <size_t>B * H
    cdef float* works = NULL     # each thread's reduced-precision product scratch
    if p.lowp_work_floats:
        works = <float*>malloc(n * p.lowp_work_floats * sizeof(float))
        if works == NULL:
            grurt_barrier_destroy(&barrier)
            return 0
    memcpy(states0, state, <size_t>B * H * sizeof(float))
    for i in range(n):
        # whole panels of units per thread
        unit_range_task(&tasks[i], p, H // GRURT_PANEL * i // n * GRURT_PANEL,
                        H // GRURT_PANEL * (i + 1) // n * GRURT_PANEL, B, T, x, y, lengths, states0, states1,
                        local, NULL if works == NULL else lowp_work(works + i * p.lowp_work_floats), &barrier)
        local += <size_t>B * unit_scratch_floats(tasks[i].U)
    used = run_tasks(tasks, n, True)
    grurt_barrier_destroy(&barrier)
    free(works)
    if used:
        # step s reads states[s % 2] and writes the other one
        memcpy(state, states1 if T % 2 else states0, <size_t>B * H * sizeof(float))
    return used
