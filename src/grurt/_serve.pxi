# Included by _kernels.pyx. Streams and stream pools: running sequences whose states stay in
# place between calls.
#
#   Stream       one stream (or ``batch`` streams in lockstep): step(frame) advances by one
#                frame, run(frames) by a block of frames
#   StreamPool   the states of up to ``capacity`` sessions; step(ids, frames) gathers the
#                states of any subset, runs one batched step and writes them back
#
# Streaming calls run the layers with streaming=True (run_layers): every GRU sums its
# recurrent product in forward order at every step (model.run alternates the order from step
# to step, see GRURT_K in _gru_math.h), and writes the output of every step (a GRU that hands
# over its last state, and LastStep, then give the output of each frame). Every kernel treats
# the rows of a batch alike, so a frame's output and the new state do not depend on how the
# frames are split into calls, nor on which other sessions share a step: a session in a pool,
# a Stream stepped frame by frame and a Stream fed blocks all give the same bits.
#
# A causal Conv1D's last (k - 1)·dilation input frames are state too: a Stream keeps one
# (batch, span, C) history per Conv1D, a pool one slot per Conv1D per session, and run_layers
# pushes every frame of a block through grurt_conv_step in order (so a block's first frames
# read the history, and a block gives the bits of single steps).
#
# The common calls (C-contiguous float32 frames and ``out``, int64 ids) are checked here in C
# and allocate nothing with ``out``; anything else goes through the checked path, which
# converts the input or raises an InputError that says what is wrong. (This file is compiled
# with wraparound=False, as the rest of the module: no negative indices, in Python code too.)
import time as _time

from .errors import InputError

cdef enum:
    BLOCK_FRAMES = 256       # Stream.run computes at most this many frames per pass (bounded workspace)
    # Releasing and taking back the GIL costs about 0.1 µs: a call whose layers do fewer
    # multiply-adds than this (about 1 µs of work) keeps it. Nothing else could run in
    # that time anyway (the interpreter switches threads every 5 ms).
    NOGIL_MIN_MACS = 16384


cdef inline bint plain_float32(cnp.ndarray a) noexcept:
    """C-contiguous native float32: what the kernels read and write as is."""
    return (cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32 and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISNOTSWAPPED(a))


cdef inline bint plain_out(object out, cnp.npy_intp size) noexcept:
    """``out`` is a writeable plain float32 ndarray of ``size`` elements."""
    if type(out) is not np.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>out
    return plain_float32(a) and cnp.PyArray_ISWRITEABLE(a) and cnp.PyArray_SIZE(a) == size


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _real_array(value, what):
    """``value`` as a C-contiguous float32 array, or an InputError."""
    try:
        value = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what} must be a rectangular array of numbers ({exc})") from None
    if value.dtype.kind not in "fiub":
        raise InputError(f"{what} must be real numbers, got dtype {value.dtype}")
    return np.ascontiguousarray(value, dtype=np.float32)


def _out_array(out, shape):
    """A new float32 array of ``shape``, or ``out`` if it can take the result."""
    size = 1
    for n in shape:
        size *= n
    if out is None:
        return np.empty(shape, np.float32)
    if not plain_out(out, size):
        raise InputError(f"out must be a writeable C-contiguous float32 array of {size} elements")
    return out


cdef size_t macs_per_row(Plan plan) noexcept:
    """Multiply-adds of one frame of one sequence through every layer (GRU and Dense)."""
    cdef size_t macs = 0
    cdef int i
    cdef const LayerPlan* p
    for i in range(plan.n_layers):
        p = &plan.layers[i]
        if p.kind == GRU_LAYER:
            macs += <size_t>p.D * 3 * p.H * (p.n_in + p.H)
        elif p.kind == DENSE_LAYER:
            macs += <size_t>p.n_in * p.n_out
        elif p.kind == CONV_LAYER:
            macs += <size_t>p.conv.k * (p.n_in // p.conv.groups) * p.n_out
    return macs


cdef float* aligned_malloc(size_t floats, void** raw) except NULL:
    """``floats`` floats on a cache line boundary; ``raw`` receives the pointer to free."""
    raw[0] = malloc((floats + ALIGN_FLOATS) * sizeof(float))
    if raw[0] == NULL:
        raise out_of_memory((floats + ALIGN_FLOATS) * sizeof(float), "a stream's workspace")
    return <float*>raw[0] + (-(<size_t>raw[0]) // 4) % ALIGN_FLOATS


cdef class Stream:
    """Runs a model one frame, or one block of frames, at a time; the GRU states live inside.

    ``step(frame)`` for T frames gives the same outputs as ``run`` on the sequence of those
    frames (each step returns the output for the last frame, as ``run`` on the prefix
    would) and leaves the same final ``state``. ``run(frames)`` takes a block of frames and
    gives bit for bit what stepping them one by one gives. A Stream belongs to one caller
    at a time (a call while another thread's call runs raises InputError); the Model it came
    from can be shared.
    """
    cdef readonly object model
    cdef readonly int batch
    cdef Plan plan
    cdef int n_states, input_size, output_size
    cdef float* state_ptrs[MAX_GRU_LAYERS]
    cdef object states_buffer         # every GRU layer's (D, batch, H) state, one after the other
    cdef list state_views
    cdef tuple state_shapes
    cdef object step_buffer           # the workspace of one step
    cdef float* step_work
    cdef void* block_raw              # the workspace of run(), for block_frames frames (grown on demand)
    cdef float* block_work
    cdef int block_frames
    cdef size_t macs                  # multiply-adds of one frame of the batch
    cdef int busy
    cdef readonly int threads         # as Model.run's threads, for every call
    # Conv1D (causal): each one's (batch, span, C) history, span = (k - 1)·dilation + 1, its last
    # span - 1 input frames in rows 1 .. (row 0 is spare, see grurt_conv_step), oldest first
    cdef int n_convs
    cdef float* history_ptrs[MAX_CONV_LAYERS]
    cdef float** histories            # history_ptrs, or NULL without Conv1D
    cdef object history_buffer        # every history, one after the other
    cdef list history_views           # (batch, span, C) each
    cdef size_t step_ping, step_extra # run_layers' layout of one step (Plan.layout)

    def __cinit__(self):
        self.block_raw = NULL

    def __init__(self, model, batch=1, threads=1):
        batch = _positive_int(batch, "batch")
        if type(threads) is not int or not 1 <= threads <= MAX_THREADS:
            raise InputError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
        self.threads = threads
        model._check_streamable()
        model._check_stream(batch)          # the sizes below, before anything is allocated
        self.batch = batch
        self.model = model
        self.plan = model._plan
        self.input_size, self.output_size = self.plan.input_size, self.plan.output_size
        shapes = [(d, self.batch, h) for d, h in model._state_shapes]
        self.state_shapes = tuple(shapes)
        self.n_states = len(shapes)
        self.states_buffer = aligned_empty(max(1, self.batch * self.plan.state_width))
        self.states_buffer[...] = 0
        self.state_views = []
        cdef size_t offset = 0
        cdef int i
        for i, shape in enumerate(shapes):
            view = self.states_buffer[offset:offset + shape[0] * shape[1] * shape[2]].reshape(shape)
            self.state_views.append(view)
            self.state_ptrs[i] = <float*>cnp.PyArray_DATA(view)
            offset += view.size
        self.step_buffer = aligned_empty(self.plan.workspace_floats(self.batch, 1))
        self.step_work = <float*>cnp.PyArray_DATA(self.step_buffer)
        self.plan.layout(self.batch, 1, &self.step_ping, &self.step_extra)
        self.macs = self.batch * macs_per_row(self.plan)
        cdef const LayerPlan* p
        history_shapes = []
        for i in range(self.plan.n_layers):
            p = &self.plan.layers[i]
            if p.kind == CONV_LAYER:
                history_shapes.append((self.batch, p.span, p.n_in))
        self.n_convs = len(history_shapes)
        self.history_buffer = aligned_empty(max(1, sum(b * k * c for b, k, c in history_shapes)))
        self.history_buffer[...] = 0
        self.history_views = []
        offset = 0
        for i, shape in enumerate(history_shapes):
            view = self.history_buffer[offset:offset + shape[0] * shape[1] * shape[2]].reshape(shape)
            self.history_views.append(view)
            self.history_ptrs[i] = <float*>cnp.PyArray_DATA(view)
            offset += view.size
        self.histories = self.history_ptrs if self.n_convs else NULL

    def __dealloc__(self):
        free(self.block_raw)

    # ---- state ----

    def reset(self):
        """Zero every state, as at the start of a new stream."""
        self._claim()
        self.states_buffer[...] = 0
        self.history_buffer[...] = 0
        self.busy = 0

    @property
    def state(self):
        """Copies of the state: one (directions, batch, hidden) array per GRU layer, then, for a
        model with Conv1D layers, one (batch, (k-1)·dilation, in_channels) array per Conv1D: the
        last input frames it has seen, oldest first (zeros at the start of a stream)."""
        return [view.copy() for view in self.state_views] + [h[:, 1:].copy() for h in self.history_views]

    @property
    def live_state(self):
        """The state itself, as ``state`` lists it but not copied: views that every step writes into (a
        stream graph's node keeps its states there between steps, :mod:`grurt.ops.chain`)."""
        return self.state_views + [h[:, 1:] for h in self.history_views]

    @state.setter
    def state(self, values):
        """Set the state from a list as ``state`` returns it. A list of the GRU states alone (as
        ``run(return_state=True)`` returns) zeros the Conv1D histories, as at the start of a
        sequence; None zeros everything."""
        cdef int i
        cdef cnp.ndarray a
        cdef cnp.npy_intp* dims
        self._claim()
        try:
            # the common call: float32 arrays of the right shapes, copied in without conversion
            if type(values) is list or type(values) is tuple:
                if len(values) == self.n_states:
                    for i in range(self.n_states):
                        if type(values[i]) is not np.ndarray:
                            break
                        a = <cnp.ndarray>values[i]
                        dims = cnp.PyArray_DIMS(a)
                        shape = self.state_shapes[i]
                        if (cnp.PyArray_NDIM(a) != 3 or not plain_float32(a) or dims[0] != shape[0]
                                or dims[1] != shape[1] or dims[2] != shape[2]):
                            break
                    else:
                        for i in range(self.n_states):
                            a = <cnp.ndarray>values[i]
                            memcpy(self.state_ptrs[i], cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(a))
                        if self.n_convs:
                            self.history_buffer[...] = 0
                        return
            histories = None
            if (isinstance(values, (list, tuple)) and self.n_convs
                    and len(values) == self.n_states + self.n_convs):
                values, histories = list(values[:self.n_states]), list(values[self.n_states:])
                for i in range(self.n_convs):
                    value = _real_array(histories[i], f"state[{self.n_states + i}] (Conv1D history)")
                    expected = self.history_views[i][:, 1:].shape
                    if value.shape != expected:
                        raise InputError(f"state[{self.n_states + i}] (Conv1D history) must be of shape "
                                         f"{expected}, got {value.shape}")
                    histories[i] = value
            checked = self.model._initial_states(values, self.batch, single=False, name="state")
            for view, value in zip(self.state_views, checked):
                view[...] = value
            self.history_buffer[...] = 0
            if histories is not None:
                for view, value in zip(self.history_views, histories):
                    view[:, 1:] = value
        finally:
            self.busy = 0

    cdef int _claim(self) except -1:
        if self.busy:
            raise InputError("this Stream is in use by another thread: a Stream takes one caller at a time")
        self.busy = 1
        return 0

    # ---- one frame ----

    def step(self, frame, out=None):
        """Advance every stream by one frame: (I,) when batch is 1, or (batch, I).

        Returns the output for this frame, (F,) or (batch, F). With ``out`` (a C-contiguous
        float32 array of batch × F elements) the result is written there and nothing is
        allocated.
        """
        cdef cnp.ndarray a, result
        cdef int ndim
        cdef cnp.npy_intp shape[2]
        if type(frame) is np.ndarray:
            a = <cnp.ndarray>frame
            ndim = cnp.PyArray_NDIM(a)
            if (1 <= ndim <= 2 and plain_float32(a) and cnp.PyArray_DIMS(a)[ndim - 1] == self.input_size
                    and (cnp.PyArray_DIMS(a)[0] == self.batch if ndim == 2 else self.batch == 1)):
                if out is None:
                    shape[0], shape[1] = self.batch, self.output_size
                    result = cnp.PyArray_EMPTY(ndim, &shape[2 - ndim], cnp.NPY_FLOAT32, 0)
                    self._step(<float*>cnp.PyArray_DATA(a), <float*>cnp.PyArray_DATA(result))
                    return result
                if plain_out(out, <cnp.npy_intp>self.batch * self.output_size):
                    self._step(<float*>cnp.PyArray_DATA(a), <float*>cnp.PyArray_DATA(<cnp.ndarray>out))
                    return out
        return self._step_checked(frame, out)

    cdef int _step(self, const float* x, float* out) except -1:
        self._claim()
        cdef Plan plan = self.plan
        if self.macs >= NOGIL_MIN_MACS:
            with nogil:
                run_layers(plan.layers, plan.n_layers, self.batch, 1, x, self.state_ptrs, NULL, out,
                           self.step_work, self.step_ping, self.step_extra, self.histories, self.threads, True)
        else:
            run_layers(plan.layers, plan.n_layers, self.batch, 1, x, self.state_ptrs, NULL, out,
                       self.step_work, self.step_ping, self.step_extra, self.histories, self.threads, True)
        self.busy = 0
        return 0

    def _step_checked(self, frame, out):
        if type(frame) is dict:                 # {input name: frame}, as a graph's stream takes it
            frame = self.model._graph_input(frame)
        if self.model._table is not None:       # token ids: their embedding rows are the frame
            frame = self.model._token_frames(frame)
        frame = _real_array(frame, "frame")
        I = self.input_size
        single = frame.ndim == 1
        if (frame.ndim not in (1, 2) or frame.shape[frame.ndim - 1] != I or (single and self.batch != 1)
                or (not single and frame.shape[0] != self.batch)):
            raise InputError(f"frame must be ({self.batch}, {I})" + (f" or ({I},)" if self.batch == 1 else "")
                             + f", got shape {frame.shape}")
        if single:
            result = _out_array(out, (self.output_size,))
        else:
            result = _out_array(out, (self.batch, self.output_size))
        self._step(<float*>cnp.PyArray_DATA(frame), <float*>cnp.PyArray_DATA(<cnp.ndarray>result))
        return result

    # ---- a block of frames ----

    def run(self, frames, out=None):
        """Advance by a block of n frames: (n, I) when batch is 1, or (batch, n, I).

        Returns the output of every frame, (n, F) or (batch, n, F): frame t's output is what
        ``step`` returns at frame t (for a model ending in LastStep or a GRU's last state,
        the head applied to the state after frame t). The states carry on, as
        ``scipy.signal.sosfilt`` with ``zi``: stepping frame by frame and ``run`` on any
        split of the same frames give bit for bit the same outputs and states. With ``out``
        (C-contiguous float32, batch × n × F elements) nothing is allocated after the first
        call.
        """
        cdef cnp.ndarray a
        cdef int ndim
        cdef cnp.npy_intp* dims
        cdef cnp.npy_intp shape[3]
        if type(frames) is np.ndarray:
            a = <cnp.ndarray>frames
            ndim = cnp.PyArray_NDIM(a)
            dims = cnp.PyArray_DIMS(a)
            if (2 <= ndim <= 3 and plain_float32(a) and dims[ndim - 1] == self.input_size
                    and (dims[0] == self.batch if ndim == 3 else self.batch == 1)
                    and dims[ndim - 2] <= self.plan.max_rows):
                if out is None:
                    shape[0], shape[1], shape[2] = dims[0], dims[1], self.output_size
                    if ndim == 2:
                        shape[0] = dims[0]
                        shape[1] = self.output_size
                    out = cnp.PyArray_EMPTY(ndim, shape, cnp.NPY_FLOAT32, 0)
                elif not plain_out(out, self.batch * dims[ndim - 2] * self.output_size):
                    return self._run_checked(frames, out)
                self._run(<float*>cnp.PyArray_DATA(a), <int>dims[ndim - 2],
                          <float*>cnp.PyArray_DATA(<cnp.ndarray>out))
                return out
        return self._run_checked(frames, out)

    def _run_checked(self, frames, out):
        if type(frames) is dict:
            frames = self.model._graph_input(frames)
        if self.model._table is not None:
            frames = self.model._token_frames(frames)
        frames = _real_array(frames, "frames")
        B, I = self.batch, self.input_size
        single = frames.ndim == 2
        if (frames.ndim not in (2, 3) or frames.shape[frames.ndim - 1] != I or (single and B != 1)
                or (not single and frames.shape[0] != B)):
            raise InputError(f"frames must be ({B}, n, {I})" + (f" or (n, {I})" if B == 1 else "")
                             + f", got shape {frames.shape}")
        n = frames.shape[frames.ndim - 2]
        if n > self.plan.max_rows:
            raise InputError(f"a block of {n} frames is too large; pass fewer frames per call")
        result = _out_array(out, frames.shape[:frames.ndim - 1] + (self.output_size,))
        self._run(<float*>cnp.PyArray_DATA(frames), n, <float*>cnp.PyArray_DATA(<cnp.ndarray>result))
        return result

    cdef int _run(self, const float* x, int n, float* out) except -1:
        """n frames of every stream, x (batch, n, I) -> out (batch, n, F), in passes of at most
        BLOCK_FRAMES frames through a workspace kept for the next call."""
        if n == 0:
            return 0
        cdef int B = self.batch, I = self.input_size, F = self.output_size
        cdef int block = min(n, BLOCK_FRAMES), t0, m, b
        cdef bint staged = B > 1 and block < n      # a pass's frames are not contiguous in x and out
        cdef size_t work_floats = self.plan.workspace_floats(B, block)
        cdef void* raw
        self._claim()
        try:
            if block > self.block_frames:
                self.block_work = aligned_malloc(work_floats + (<size_t>B * block * (I + F) if B > 1 else 0), &raw)
                free(self.block_raw)
                self.block_raw, self.block_frames = raw, block
            self._run_passes(x, n, out, block, staged, work_floats)
        finally:
            self.busy = 0
        return 0

    cdef void _run_passes(self, const float* x, int n, float* out, int block, bint staged,
                          size_t work_floats) noexcept:
        cdef int B = self.batch, I = self.input_size, F = self.output_size, t0, m, b
        cdef Plan plan = self.plan
        cdef float* stage_x = self.block_work + work_floats
        cdef float* stage_y = stage_x + <size_t>B * block * I
        cdef bint release = self.macs * block >= NOGIL_MIN_MACS
        cdef size_t ping, extra
        plan.layout(B, block, &ping, &extra)      # the workspace is workspace_floats(B, block)
        cdef PyThreadState* saved = NULL
        if release:
            saved = PyEval_SaveThread()
        t0 = 0
        while t0 < n:
            m = min(block, n - t0)
            if staged:
                for b in range(B):
                    memcpy(stage_x + <size_t>b * m * I, x + (<size_t>b * n + t0) * I, <size_t>m * I * sizeof(float))
                run_layers(plan.layers, plan.n_layers, B, m, stage_x, self.state_ptrs, NULL, stage_y,
                           self.block_work, ping, extra, self.histories, self.threads, True)
                for b in range(B):
                    memcpy(out + (<size_t>b * n + t0) * F, stage_y + <size_t>b * m * F, <size_t>m * F * sizeof(float))
            else:
                run_layers(plan.layers, plan.n_layers, B, m, x + <size_t>t0 * I, self.state_ptrs, NULL,
                           out + <size_t>t0 * F, self.block_work, ping, extra, self.histories, self.threads, True)
            t0 += m
        if release:
            PyEval_RestoreThread(saved)

    def _kernel_ns(self, frame, long reps):
        """Benchmark helper: the mean time in ns of ``reps`` steps on ``frame`` (a plain
        float32 frame of this stream) called from a C loop, without Python in between. The
        state advances."""
        cdef cnp.ndarray a = np.ascontiguousarray(frame, dtype=np.float32).reshape(self.batch, self.input_size)
        out = np.empty((self.batch, self.output_size), np.float32)
        cdef const float* x = <float*>cnp.PyArray_DATA(a)
        cdef float* y = <float*>cnp.PyArray_DATA(<cnp.ndarray>out)
        cdef Plan plan = self.plan
        cdef long r
        start = _time.perf_counter_ns()
        with nogil:
            for r in range(reps):
                run_layers(plan.layers, plan.n_layers, self.batch, 1, x, self.state_ptrs, NULL, y,
                           self.step_work, self.step_ping, self.step_extra, self.histories, self.threads, True)
        return (_time.perf_counter_ns() - start) / reps


cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    PyThreadState* PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState*) nogil


cdef enum IdProblem:
    ID_OK, ID_OUT_OF_RANGE, ID_NOT_OPEN, ID_REPEATED


cdef class StreamPool:
    """The states of up to ``capacity`` streaming sessions of one model, any subset of which
    steps together as one batch.

    ``open()`` hands out a session id (an int from 0 to capacity - 1, the lowest free one)
    with zero states; ``step(ids, frames)`` gathers those sessions' states, runs one batched
    step in C without the GIL and writes them back in place; ``close(sid)`` frees the id
    for a later ``open()``. A session stepped through the pool gives bit for bit what a
    ``Stream`` of its own gives, whatever other sessions share its steps.

    A pool takes one caller at a time (the loop that batches the frames): a call made while
    another thread's call on the same pool runs raises InputError, never waits and never
    corrupts a state. Threads that share a pool take a lock of their own around its calls.
    The Model it came from can be shared.
    """
    cdef readonly object model
    cdef readonly int capacity
    cdef Plan plan
    # A session's states are one row of ``store``: its slots one after the other. A slot is
    # (parts, width) floats that the kernels take as (parts, n, width) for n sessions: a GRU
    # layer's state is (D, H); a causal Conv1D's input history is (1, span·C), which the
    # kernels take as (n, span, C) (its last span - 1 input frames in rows 1 .., row 0 spare,
    # as in Stream). The n_slots - n_convs GRU slots come first, then one per Conv1D.
    cdef int n_slots, n_convs
    cdef size_t slot_offset[MAX_GRU_LAYERS + MAX_CONV_LAYERS]
    cdef int slot_parts[MAX_GRU_LAYERS + MAX_CONV_LAYERS]
    cdef int slot_width[MAX_GRU_LAYERS + MAX_CONV_LAYERS]
    cdef int history_span[MAX_CONV_LAYERS]
    cdef size_t row_floats
    cdef object store                 # (capacity, row_floats) float32
    cdef float* rows
    cdef unsigned char* open_flags
    cdef int* free_ids                # a stack: the lowest free id on top
    cdef int n_free
    cdef unsigned long long* seen     # the call in which each id was last stepped (repeats)
    cdef unsigned long long calls
    cdef void* work_raw               # gathered states and step workspace, for work_rows sessions
    cdef float* work
    cdef int work_rows
    cdef size_t macs_per_session
    cdef int input_size, output_size
    cdef int busy

    def __cinit__(self):
        self.open_flags = NULL
        self.free_ids = NULL
        self.seen = NULL
        self.work_raw = NULL

    def __init__(self, model, capacity):
        capacity = _positive_int(capacity, "capacity")
        model._check_streamable()
        self.model, self.plan = model, model._plan
        self.input_size, self.output_size = self.plan.input_size, self.plan.output_size
        self.n_slots = 0
        cdef size_t offset = 0
        for d, h in model._state_shapes:
            self.slot_offset[self.n_slots], self.slot_parts[self.n_slots], self.slot_width[self.n_slots] = offset, d, h
            self.n_slots += 1
            offset += d * h
        cdef const LayerPlan* p
        cdef int i
        self.n_convs = 0
        for i in range(self.plan.n_layers):
            p = &self.plan.layers[i]
            if p.kind == CONV_LAYER:
                self.history_span[self.n_convs] = p.span
                self.slot_offset[self.n_slots], self.slot_parts[self.n_slots] = offset, 1
                self.slot_width[self.n_slots] = p.span * p.n_in
                self.n_slots += 1
                self.n_convs += 1
                offset += <size_t>p.span * p.n_in
        self.row_floats = offset
        if capacity > 2**31 - 1 or capacity * (offset * 4 + 16) > _memory_limit():
            raise InputError(f"a pool of {capacity} sessions would need more memory than the limit "
                             "(grurt.model.MEMORY_LIMIT_BYTES)")
        self.capacity = capacity
        self.store = np.zeros((capacity, max(1, offset)), np.float32)
        self.rows = <float*>cnp.PyArray_DATA(self.store)
        self.open_flags = <unsigned char*>calloc(capacity, 1)
        self.free_ids = <int*>malloc(capacity * sizeof(int))
        self.seen = <unsigned long long*>calloc(capacity, sizeof(unsigned long long))
        if self.open_flags == NULL or self.free_ids == NULL or self.seen == NULL:
            raise out_of_memory(<size_t>capacity * (1 + sizeof(int) + sizeof(unsigned long long)),
                                f"the session table of a pool of {capacity} sessions")
        for i in range(capacity):
            self.free_ids[i] = capacity - 1 - i
        self.n_free = capacity
        self.macs_per_session = macs_per_row(self.plan)

    def __dealloc__(self):
        free(self.open_flags)
        free(self.free_ids)
        free(self.seen)
        free(self.work_raw)

    def __len__(self):
        """The number of open sessions."""
        return self.capacity - self.n_free

    cdef int _claim(self) except -1:
        if self.busy:
            raise InputError("this StreamPool is in use by another thread: a pool takes one caller at a time")
        self.busy = 1
        return 0

    cdef int _session(self, sid) except -1:
        if isinstance(sid, bool) or not isinstance(sid, (int, np.integer)):
            raise InputError(f"a session id must be an integer, got {sid!r}")
        if not 0 <= sid < self.capacity:
            raise InputError(f"session id {sid} is out of range (0 to {self.capacity - 1})")
        if not self.open_flags[<int>sid]:
            raise InputError(f"session {sid} is not open")
        return <int>sid

    # ---- sessions ----

    def open(self):
        """Open a session with zero states and return its id."""
        self._claim()
        try:
            if self.n_free == 0:
                raise InputError(f"all {self.capacity} sessions of this pool are open: close one first")
            self.n_free -= 1
            sid = self.free_ids[self.n_free]
            self.open_flags[sid] = 1
            memset(self.rows + <size_t>sid * self.row_floats, 0, self.row_floats * sizeof(float))
            return sid
        finally:
            self.busy = 0

    def close(self, sid):
        """Close session ``sid``: its id may be handed out again by ``open()``."""
        self._claim()
        try:
            s = self._session(sid)
            self.open_flags[s] = 0
            # keep the free ids sorted, lowest on top, so that open() hands out the lowest
            i = self.n_free
            while i > 0 and self.free_ids[i - 1] < s:
                self.free_ids[i] = self.free_ids[i - 1]
                i -= 1
            self.free_ids[i] = s
            self.n_free += 1
        finally:
            self.busy = 0

    def is_open(self, sid):
        """Whether ``sid`` is the id of an open session."""
        return (not isinstance(sid, bool) and isinstance(sid, (int, np.integer)) and 0 <= sid < self.capacity
                and self.open_flags[<int>sid] != 0)

    def reset(self, sid):
        """Zero the states of session ``sid``."""
        self._claim()
        try:
            s = self._session(sid)
            memset(self.rows + <size_t>s * self.row_floats, 0, self.row_floats * sizeof(float))
        finally:
            self.busy = 0

    def _history(self, row, int c):
        """Conv1D c's history in a store row, a (span, C) view (row 0 spare)."""
        cdef int i = self.n_slots - self.n_convs + c
        span = self.history_span[c]
        return row[self.slot_offset[i]:self.slot_offset[i] + self.slot_width[i]].reshape(span, self.slot_width[i] // span)

    def state(self, sid):
        """Copies of session ``sid``'s states: one (directions, hidden) array per GRU layer, then,
        for a model with Conv1D layers, one ((k-1)·dilation, in_channels) array per Conv1D, the
        last input frames it has seen, oldest first (a Stream's state without the batch axis)."""
        self._claim()
        try:
            s = self._session(sid)
            row = self.store[s]
            n_grus = self.n_slots - self.n_convs
            return ([row[self.slot_offset[i]:self.slot_offset[i] + self.slot_parts[i] * self.slot_width[i]]
                     .reshape(self.slot_parts[i], self.slot_width[i]).copy() for i in range(n_grus)]
                    + [self._history(row, c)[1:].copy() for c in range(self.n_convs)])
        finally:
            self.busy = 0

    def set_state(self, sid, states):
        """Set session ``sid``'s states from a list as ``state(sid)`` returns it; a list of the GRU
        states alone (one (directions, hidden) array per GRU layer) zeros the Conv1D histories."""
        self._claim()
        try:
            s = self._session(sid)
            n_grus = self.n_slots - self.n_convs
            histories = None
            if isinstance(states, (list, tuple)) and self.n_convs and len(states) == n_grus + self.n_convs:
                states, histories = list(states[:n_grus]), list(states[n_grus:])
                for c in range(self.n_convs):
                    value = _real_array(histories[c], f"states[{n_grus + c}] (Conv1D history)")
                    expected = self._history(self.store[s], c)[1:].shape
                    if value.shape != expected:
                        raise InputError(f"states[{n_grus + c}] (Conv1D history) must be of shape {expected}, "
                                         f"got {value.shape}")
                    histories[c] = value
            values = self.model._initial_states(states, 1, single=True, name="states")
            row = self.store[s]
            for i in range(n_grus):
                row[self.slot_offset[i]:self.slot_offset[i] + self.slot_parts[i] * self.slot_width[i]] = values[i].ravel()
            for c in range(self.n_convs):
                history = self._history(row, c)
                history[...] = 0
                if histories is not None:
                    history[1:] = histories[c]
        finally:
            self.busy = 0

    # ---- stepping ----

    def step(self, ids, frames, out=None):
        """Advance the sessions ``ids`` ((n,) integers: open sessions, none twice) by one frame
        each: ``frames`` (n, I) -> outputs (n, F), row k for session ids[k].

        Their states are gathered into one batch, stepped in C without the GIL and written
        back in place. With int64 ids, C-contiguous float32 frames and ``out`` (C-contiguous
        float32 of n × F elements) nothing is allocated (after the first call with this many
        sessions, which sizes the workspace).
        """
        cdef cnp.ndarray i_arr, x_arr
        cdef cnp.npy_intp n
        cdef cnp.npy_intp shape[2]
        if type(ids) is np.ndarray and type(frames) is np.ndarray:
            i_arr, x_arr = <cnp.ndarray>ids, <cnp.ndarray>frames
            if (cnp.PyArray_NDIM(i_arr) == 1 and cnp.PyArray_TYPE(i_arr) == cnp.NPY_INT64
                    and cnp.PyArray_IS_C_CONTIGUOUS(i_arr) and cnp.PyArray_ISNOTSWAPPED(i_arr)
                    and cnp.PyArray_NDIM(x_arr) == 2 and plain_float32(x_arr)):
                n = cnp.PyArray_DIMS(i_arr)[0]
                if cnp.PyArray_DIMS(x_arr)[0] == n and cnp.PyArray_DIMS(x_arr)[1] == self.input_size:
                    if out is None:
                        shape[0], shape[1] = n, self.output_size
                        out = cnp.PyArray_EMPTY(2, shape, cnp.NPY_FLOAT32, 0)
                    elif not plain_out(out, n * self.output_size):
                        return self._step_checked(ids, frames, out)
                    self._step(<long long*>cnp.PyArray_DATA(i_arr), <int>n, <float*>cnp.PyArray_DATA(x_arr),
                               <float*>cnp.PyArray_DATA(<cnp.ndarray>out))
                    return out
        return self._step_checked(ids, frames, out)

    def _step_checked(self, ids, frames, out):
        try:
            ids = np.asarray(ids)
        except (ValueError, TypeError):
            ids = None
        if ids is None or ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise InputError("ids must be a 1-D array of integer session ids, got "
                             + (f"{ids.dtype} {ids.shape}" if ids is not None else "something else"))
        n = ids.shape[0]
        if ids.dtype.kind == "u" and n and ids.max() > 2**62:
            raise InputError(f"session id {ids.max()} is out of range (0 to {self.capacity - 1})")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.model._table is not None:       # token ids: their embedding rows are the frames
            frames = self.model._token_frames(frames)
        frames = _real_array(frames, "frames")
        if frames.shape != (n, self.input_size):
            raise InputError(f"frames must be ({n}, {self.input_size}) for {n} session ids, got shape {frames.shape}")
        result = _out_array(out, (n, self.output_size))
        self._step(<long long*>cnp.PyArray_DATA(<cnp.ndarray>ids), n, <float*>cnp.PyArray_DATA(<cnp.ndarray>frames),
                   <float*>cnp.PyArray_DATA(<cnp.ndarray>result))
        return result

    cdef int _check_ids(self, const long long* ids, int n) except -1:
        """InputError naming the first id that is out of range, not open, or repeated."""
        cdef int k
        cdef long long sid
        cdef int problem = ID_OK
        self.calls += 1
        for k in range(n):
            sid = ids[k]
            if sid < 0 or sid >= self.capacity:
                problem = ID_OUT_OF_RANGE
            elif not self.open_flags[sid]:
                problem = ID_NOT_OPEN
            elif self.seen[sid] == self.calls:
                problem = ID_REPEATED
            else:
                self.seen[sid] = self.calls
                continue
            break
        if problem == ID_OK:
            return 0
        if problem == ID_OUT_OF_RANGE:
            raise InputError(f"session id {sid} is out of range (0 to {self.capacity - 1})")
        if problem == ID_NOT_OPEN:
            raise InputError(f"session {sid} is not open")
        raise InputError(f"session {sid} appears more than once in ids")

    cdef int _step(self, const long long* ids, int n, const float* x, float* out) except -1:
        self._claim()
        try:
            self._check_ids(ids, n)
            if n == 0:
                return 0
            if n > self.work_rows:
                self._grow(n)
            if self.macs_per_session * n >= NOGIL_MIN_MACS:
                with nogil:
                    self._step_nogil(ids, n, x, out)
            else:
                self._step_nogil(ids, n, x, out)
        finally:
            self.busy = 0
        return 0

    cdef int _grow(self, int n) except -1:
        cdef void* raw
        cdef size_t floats = <size_t>n * self.row_floats + self.plan.workspace_floats(n, 1)
        self.work = aligned_malloc(floats, &raw)
        free(self.work_raw)
        self.work_raw, self.work_rows = raw, n
        return 0

    cdef void _step_nogil(self, const long long* ids, int n, const float* x, float* out) noexcept nogil:
        """Gather the sessions' slots into (parts, n, width) arrays, step, scatter them back."""
        cdef float* slot_ptrs[MAX_GRU_LAYERS + MAX_CONV_LAYERS]
        cdef float* gathered = self.work
        cdef size_t ping, extra
        cdef int n_grus = self.n_slots - self.n_convs
        self.plan.layout(n, 1, &ping, &extra)
        cdef float* step_work = self.work + <size_t>n * self.row_floats
        cdef int i, k, part, W
        cdef float* row
        for i in range(self.n_slots):
            slot_ptrs[i] = gathered
            gathered += <size_t>n * self.slot_parts[i] * self.slot_width[i]
        for k in range(n):
            row = self.rows + <size_t>ids[k] * self.row_floats
            for i in range(self.n_slots):
                W = self.slot_width[i]
                for part in range(self.slot_parts[i]):
                    memcpy(slot_ptrs[i] + (<size_t>part * n + k) * W, row + self.slot_offset[i] + part * W,
                           W * sizeof(float))
        run_layers(self.plan.layers, self.plan.n_layers, n, 1, x, slot_ptrs, NULL, out, step_work,
                   ping, extra, &slot_ptrs[n_grus] if self.n_convs else NULL, 1, True)
        for k in range(n):
            row = self.rows + <size_t>ids[k] * self.row_floats
            for i in range(self.n_slots):
                W = self.slot_width[i]
                for part in range(self.slot_parts[i]):
                    memcpy(row + self.slot_offset[i] + part * W, slot_ptrs[i] + (<size_t>part * n + k) * W,
                           W * sizeof(float))


def _memory_limit():
    """grurt.model.MEMORY_LIMIT_BYTES as it is now (the knob users set, in the module above the kernels); read
    through sys.modules on every call, which an import statement would make cost a microsecond more."""
    model = sys.modules.get("grurt.model")
    if model is None:
        from . import model
    return model.MEMORY_LIMIT_BYTES
