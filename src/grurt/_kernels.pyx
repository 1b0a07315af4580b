# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Sequence kernels: a whole model runs in one call without the GIL.

``Plan`` packs a validated ModelSpec once (folded biases, weights in the panel layout of the
product kernels in _gru_math.h) and ``Plan.run`` executes every layer on contiguous float32
input.
The kernels trust their input: shapes and dtypes are checked in model.py.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
cimport numpy as cnp
import numpy as np

from ._blas cimport matmul_t
from .errors import UnsupportedModelError

cnp.import_array()

cdef extern from "_gru_math.h" nogil:
    ctypedef struct grurt_act:
        int kind
        float alpha
        float beta
    enum: GRURT_PANEL
    enum: GRURT_UNIT_BLOCK
    void grurt_activate(const grurt_act* act, float* y, int n)
    void grurt_gates_lbr1_fast(int H, const float* xp, const float* hr, float* h)
    void grurt_gates_lbr1(int H, const float* xp, const float* hr, float* h, float* gates,
                          const grurt_act* f, const grurt_act* g, float clip)
    void grurt_gates_lbr0_zr(int H, const float* xp, const float* hr, const float* h, float* gates,
                             float* rh, const grurt_act* f, float clip)
    void grurt_gates_lbr0_h(int H, const float* xp, const float* hn, float* h, float* gates,
                            const grurt_act* g, float clip)
    void grurt_gemm(int rows, int n_in, int n_panels, const float* x, int ldx, const float* packed,
                    const float* init, float* y, int ldy, int backward)

# Must match the enum in _gru_math.h.
ACTIVATION_CODES = {
    "linear": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "softsign": 4, "softplus": 5,
    "hard_sigmoid": 6, "leaky_relu": 7, "elu": 8, "affine": 9, "scaled_tanh": 10,
    "thresholded_relu": 11, "softmax": 12,
}
cdef int ACT_SIGMOID = 1, ACT_TANH = 2, ACT_SOFTMAX = 12

cdef enum:
    CHUNK_STEPS = 16             # time steps whose input projection is computed together
    ALIGN_FLOATS = 16            # 64 bytes: every buffer and packed weight starts on a cache line
    MAX_GRU_LAYERS = 64          # state pointers and thread handles live on the stack
    MAX_THREADS = 64
    # Below these sizes a layer never splits over threads (measured: the split's cost exceeds
    # its gain even with warm workers); above them, whether it pays is measured (choose_split).
    MIN_SPLIT_UNITS = 128            # units split: H of whole panels, at least this
    MIN_SPLIT_STEP_FMAS = 40000      # units split: B·H·3H multiply-adds per step
    MIN_SPLIT_TASK_FMAS = 4000000    # tasks: T·B·H·3H multiply-adds in the layer

cdef extern from "_pool.h" nogil:
    ctypedef void (*grurt_pool_fn)(void* arg, int slot) noexcept nogil
    int grurt_pool_run(int threads, grurt_pool_fn fn, void* arg)
    int grurt_pool_workers()
    int grurt_pool_cpus()
    long grurt_ticks()
    int grurt_claim(int* next)
    long grurt_now_ns()
    ctypedef struct grurt_phased:
        pass
    void grurt_phased_init(grurt_phased* w, int per_phase, int phases)
    int grurt_phased_claim(grurt_phased* w, long* waited_ns)
    void grurt_phased_done(grurt_phased* w)

cdef enum:
    CHOICE_SAMPLES = 9       # choose_split compares the median of this many recent calls each way

cdef struct ThreadChoice:
    # whether a layer's calls with threads > 1 pay (choose_split), for the last shape seen: the
    # durations (grurt_ticks) of the latest calls on one thread [0] and split [1], ring buffers
    long shape
    long ticks[2][CHOICE_SAMPLES]
    int count[2]             # samples taken each way (the ring position is count % CHOICE_SAMPLES)
    int interval, countdown, probing

cdef enum LayerKind:
    GRU_LAYER, DENSE_LAYER, ACTIVATION_LAYER, SCALE_LAYER, REVERSE_LAYER, LAST_STEP_LAYER, MERGE_LAYER

cdef struct LayerPlan:
    int kind
    int n_in, n_out          # features in and out
    grurt_act f, g           # GRU: gate and candidate activations; Dense/Activation: f
    int merge_mode           # Merge: index in MERGE_MODES (sum, ave, mul)
    float* W                 # Dense: (out, in); Scale: a
    float* bias              # GRU: per direction, folded biases of the projection (xp_stride); Dense: b; Scale: c
    # GRU
    int D, H, lbr, reverse_only, return_sequences, fast_gates
    float clip               # 0 when off
    float* W_panels          # per direction: packed Wᵀ, the input projection
    long W_panel_stride      # floats of packed input panels per direction
    int xp_stride            # floats per row of the projection: 3H padded to whole panels
    float* R_panels          # per direction: packed Rᵀ (lbr=1) or packed R_zrᵀ then R_hᵀ (lbr=0)
    float* R_init            # lbr=1, per direction: [0, 0, Rb_h] padded, the start of h·Rᵀ + Rb_h
    int panels_per_gate_set  # lbr=1: panels of 3H; lbr=0: panels of 2H
    int panels_h             # lbr=0: panels of H
    long panel_stride        # floats of packed recurrent panels per direction
    ThreadChoice choice      # threads > 1: whether splitting this layer pays (mutable, shared by callers)


cdef inline size_t aligned(size_t floats) noexcept nogil:
    """``floats`` rounded up to whole cache lines."""
    return (floats + ALIGN_FLOATS - 1) // ALIGN_FLOATS * ALIGN_FLOATS


cdef inline int n_panels(int n_out):
    return (n_out + GRURT_PANEL - 1) // GRURT_PANEL


def pack_panels(a):
    """(n_out, n_in) → (panels, n_in, GRURT_PANEL) with row k of panel p = a[p*P:(p+1)*P, k]."""
    n_out, n_in = a.shape
    return pad_rows(a, n_panels(n_out) * GRURT_PANEL).reshape(-1, GRURT_PANEL, n_in).transpose(0, 2, 1).ravel()


def aligned_empty(size):
    """A float32 array of ``size`` elements starting on a 64-byte boundary (a cache line), so
    that the kernels' vector loads never straddle two lines."""
    raw = np.empty(size + ALIGN_FLOATS, np.float32)
    start = (-raw.ctypes.data % (4 * ALIGN_FLOATS)) // 4
    return raw[start:start + size]


def pad_rows(a, rows):
    """``a`` with zero rows appended up to ``rows``."""
    padded = np.zeros((rows,) + a.shape[1:], np.float32)
    padded[:a.shape[0]] = a
    return padded


cdef grurt_act make_act(fn):
    cdef grurt_act act
    act.kind = ACTIVATION_CODES[fn.kind]
    act.alpha = 0.0 if fn.alpha is None else fn.alpha
    act.beta = 0.0 if fn.beta is None else fn.beta
    return act


cdef class Plan:
    """The packed, ready-to-run form of a ModelSpec."""
    cdef LayerPlan* layers
    cdef int n_layers
    cdef list arrays         # owns the memory the LayerPlans point into
    cdef readonly int max_features, max_step_scratch
    cdef readonly int state_width    # sum of D*H over GRU layers: the states of one sequence
    cdef readonly int input_size, output_size
    cdef readonly bint returns_sequence
    # the size limits a call is checked against (Model._check_size): rows = batch × steps
    # within 32-bit BLAS indexing, and the bytes a call allocates per row and per sequence
    cdef readonly size_t max_rows, bytes_per_row, bytes_per_sequence

    def __cinit__(self):
        self.layers = NULL

    def __init__(self, spec):
        from .spec import GRU, Dense, Activation, Scale, Reverse, LastStep, Merge, MERGE_MODES
        cdef LayerPlan* p
        if len(spec.gru_layers) > MAX_GRU_LAYERS:
            raise UnsupportedModelError(f"grurt supports at most {MAX_GRU_LAYERS} GRU layers per model")
        self.n_layers = len(spec.layers)
        self.layers = <LayerPlan*>malloc(self.n_layers * sizeof(LayerPlan))
        if self.layers == NULL:
            raise MemoryError()
        memset(self.layers, 0, self.n_layers * sizeof(LayerPlan))
        self.arrays = []
        features = spec.input_size
        self.max_features = features
        self.max_step_scratch = 0
        for i, layer in enumerate(spec.layers):
            p = &self.layers[i]
            p.n_in = features
            if isinstance(layer, GRU):
                self._plan_gru(p, layer)
                following = spec.layers[i + 1] if i + 1 < len(spec.layers) else None
                if isinstance(following, LastStep) and layer.direction == "forward":
                    # the last output of a forward GRU is its final state: skip writing the sequence
                    p.return_sequences = 0
            elif isinstance(layer, Dense):
                p.kind = DENSE_LAYER
                p.n_out = layer.output_size
                p.W = self._keep(layer.W)
                p.bias = self._keep(layer.b)
                p.f = make_act(layer.activation)
            elif isinstance(layer, Activation):
                p.kind = ACTIVATION_LAYER
                p.n_out = features
                p.f = make_act(layer.function)
            elif isinstance(layer, Scale):
                p.kind = SCALE_LAYER
                p.n_out = features
                p.W = self._keep(layer.a)
                p.bias = self._keep(layer.c)
            elif isinstance(layer, Reverse):
                p.kind = REVERSE_LAYER
                p.n_out = features
            elif isinstance(layer, LastStep):
                p.kind = LAST_STEP_LAYER
                p.n_out = features
            elif isinstance(layer, Merge):
                p.kind = MERGE_LAYER
                p.n_out = features // 2
                p.merge_mode = MERGE_MODES.index(layer.mode)
            features = p.n_out
            self.max_features = max(self.max_features, features)
        self.input_size, self.output_size = spec.input_size, spec.output_size
        self.returns_sequence = spec.returns_sequence
        self.max_rows = (2**31 - 1) // max(self.max_features, 1)
        # input copy, workspace and output per row; workspace per sequence (states, step scratch)
        self.bytes_per_row = 4 * (spec.input_size + self.workspace_floats(1, 1) - self.workspace_floats(1, 0)
                                  + spec.output_size)
        self.bytes_per_sequence = 4 * self.workspace_floats(1, 0)

    cdef float* _keep(self, array) except NULL:
        kept = aligned_empty(np.size(array))
        kept[...] = np.ravel(array)
        self.arrays.append(kept)
        return <float*>cnp.PyArray_DATA(kept)

    cdef _plan_gru(self, LayerPlan* p, layer):
        D, H = layer.num_directions, layer.hidden_size
        p.kind = GRU_LAYER
        p.D, p.H = D, H
        p.n_out = D * H
        p.lbr = layer.linear_before_reset
        p.reverse_only = layer.direction == "reverse"
        p.return_sequences = layer.return_sequences
        p.clip = 0.0 if layer.clip is None else layer.clip
        p.f = make_act(layer.gate_activation)
        p.g = make_act(layer.candidate_activation)
        p.fast_gates = (p.lbr and p.clip == 0.0 and p.f.kind == ACT_SIGMOID and p.g.kind == ACT_TANH
                        and p.f.alpha == 0.0 and p.g.alpha == 0.0)
        # the input projection x · Wᵀ + biases folded in, per direction
        input_panels = [pack_panels(layer.W[d]) for d in range(D)]
        p.W_panels = self._keep(np.concatenate(input_panels))
        p.W_panel_stride = input_panels[0].size
        p.xp_stride = n_panels(3 * H) * GRURT_PANEL
        B = layer.B.reshape(D, 6, H)
        recurrent = B[:, 3:].copy()
        if p.lbr:
            recurrent[:, 2] = 0      # Rb_h stays inside r⊙(h·Rhᵀ + Rb_h)
        p.bias = self._keep(np.concatenate([pad_rows((B[d, :3] + recurrent[d]).ravel(), p.xp_stride)
                                            for d in range(D)]))
        if p.lbr:
            p.panels_per_gate_set = n_panels(3 * H)
            p.panels_h = 0
            packed = [pack_panels(layer.R[d]) for d in range(D)]
            p.R_init = self._keep(np.concatenate(
                [pad_rows(np.concatenate([np.zeros(2 * H, np.float32), B[d, 5]]), p.panels_per_gate_set * GRURT_PANEL)
                 for d in range(D)]))
        else:
            p.panels_per_gate_set = n_panels(2 * H)
            p.panels_h = n_panels(H)
            packed = [np.concatenate([pack_panels(layer.R[d, :2 * H]), pack_panels(layer.R[d, 2 * H:])])
                      for d in range(D)]
            p.R_init = NULL
        p.panel_stride = packed[0].size
        p.R_panels = self._keep(np.concatenate(packed))
        self.max_step_scratch = max(self.max_step_scratch, step_scratch_floats(p))
        self.state_width += D * H

    def __dealloc__(self):
        free(self.layers)

    def split_times(self):
        """Per GRU layer, the median durations (grurt_ticks: time-stamp counter ticks on
        x86-64) of its recent calls on one thread and split (None: not measured), behind
        choose_split, for the last shape that layer ran with threads > 1."""
        result = []
        for i in range(self.n_layers):
            if self.layers[i].kind == GRU_LAYER:
                c = &self.layers[i].choice
                result.append(tuple(choice_median(c, k) or None for k in range(2)))
        return result

    cpdef size_t workspace_floats(self, int batch, int steps):
        """Floats of scratch memory one ``run`` of this shape needs (beside input and output).

        The last batch * state_width floats hold the GRU states when the caller passes none.
        """
        cdef size_t rows = <size_t>batch * steps
        return (2 * aligned(rows * self.max_features) + 2 * <size_t>batch * self.max_step_scratch
                + <size_t>batch * self.state_width)

    def run(self, cnp.ndarray x, list states, cnp.ndarray lengths, cnp.ndarray out, int threads=1):
        """Run all layers on x (B, T, I) into out; GRU states (D, B, H) are updated in place.

        states is None (zero initial states, final states discarded) or one array per GRU
        layer; lengths is None or int32 (B,). All arrays are C-contiguous float32 of the right
        shapes.
        ``threads`` > 1 lets each GRU layer run on up to that many threads of the worker pool
        (run_gru). Returns the largest number of threads that ran a layer.
        """
        return self._run(x.shape[0], x.shape[1], x, states, lengths, out, threads)

    def run_plain(self, x, size_t memory_limit, int threads=1):
        """The output for x with zero initial states, on up to ``threads`` threads, if x is a C-contiguous
        float32 ndarray of shape (B, T, input_size), or (T, input_size) for one sequence (the
        output then has no batch axis), with B, T >= 1 within the size limits; None otherwise
        (the caller then runs its full checks, which convert x or explain what is wrong).
        The common call, checked and allocated without Python-level work."""
        if type(x) is not np.ndarray:
            return None
        cdef cnp.ndarray a = <cnp.ndarray>x
        cdef int ndim = cnp.PyArray_NDIM(a)
        if (ndim < 2 or ndim > 3 or cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32
                or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISNOTSWAPPED(a)):
            return None
        cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(a)
        cdef cnp.npy_intp B = 1 if ndim == 2 else shape[0], T = shape[ndim - 2]
        if (shape[ndim - 1] != self.input_size or B < 1 or T < 1
                or <size_t>B > self.max_rows or <size_t>T > self.max_rows):
            return None
        cdef size_t rows = <size_t>B * <size_t>T
        if rows > self.max_rows or rows * self.bytes_per_row + B * self.bytes_per_sequence > memory_limit:
            return None
        # (B, T, F) or (B, F); without the batch axis for one (T, I) sequence
        cdef cnp.npy_intp out_shape[3]
        cdef int out_ndim = 0
        if ndim == 3:
            out_shape[out_ndim] = B
            out_ndim += 1
        if self.returns_sequence:
            out_shape[out_ndim] = T
            out_ndim += 1
        out_shape[out_ndim] = self.output_size
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(out_ndim + 1, out_shape, cnp.NPY_FLOAT32, 0)
        self._run(<int>B, <int>T, a, None, None, out, threads)
        return out

    cdef _run(self, int B, int T, cnp.ndarray x, list states, cnp.ndarray lengths, cnp.ndarray out, int threads):
        """_execute with a workspace allocated for the call."""
        cdef size_t work_floats = self.workspace_floats(B, T) + ALIGN_FLOATS
        cdef float* raw
        with nogil:
            raw = <float*>malloc(work_floats * sizeof(float))
        if raw == NULL:
            raise MemoryError("grurt: could not allocate the workspace for this input")
        try:
            return self._execute(B, T, x, states, lengths, out, raw + (-(<size_t>raw) // 4) % ALIGN_FLOATS, threads)
        finally:
            free(raw)

    def step(self, cnp.ndarray frame, list states, cnp.ndarray out, cnp.ndarray workspace, int batch,
             int threads=1):
        """One time step of ``batch`` streams: like run with T = 1, allocating nothing.

        ``workspace`` is float32 of at least workspace_floats(batch, 1) elements, from
        aligned_empty.
        """
        self._execute(batch, 1, frame, states, None, out, <float*>cnp.PyArray_DATA(workspace), threads)

    def step_plain(self, frame, out, list states, cnp.ndarray workspace, int batch, int threads=1):
        """step() for the common call, checked in C: a C-contiguous float32 frame of shape
        (batch, input_size), or (input_size,) when batch is 1, and ``out`` None or a
        C-contiguous float32 array of batch × output_size elements. Returns the output ((F,)
        for a 1-D frame without ``out``), or None when the call needs the full checks."""
        if type(frame) is not np.ndarray or not (out is None or type(out) is np.ndarray):
            return None
        cdef cnp.ndarray a = <cnp.ndarray>frame
        cdef int ndim = cnp.PyArray_NDIM(a)
        if (ndim < 1 or ndim > 2 or cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
                or not cnp.PyArray_ISNOTSWAPPED(a) or cnp.PyArray_DIMS(a)[ndim - 1] != self.input_size
                or not (ndim == 2 and cnp.PyArray_DIMS(a)[0] == batch or ndim == 1 and batch == 1)):
            return None
        cdef cnp.ndarray result
        cdef cnp.npy_intp shape[2]
        if out is None:
            shape[0], shape[1] = batch, self.output_size
            result = cnp.PyArray_EMPTY(2, shape, cnp.NPY_FLOAT32, 0)
        else:
            result = <cnp.ndarray>out
            if (cnp.PyArray_TYPE(result) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(result)
                    or not cnp.PyArray_ISNOTSWAPPED(result) or not cnp.PyArray_ISWRITEABLE(result)
                    or cnp.PyArray_SIZE(result) != <cnp.npy_intp>batch * self.output_size):
                return None
        self._execute(batch, 1, a, states, None, result, <float*>cnp.PyArray_DATA(workspace), threads)
        return result[0] if out is None and ndim == 1 else result

    cdef _execute(self, int B, int T, cnp.ndarray x, list states, cnp.ndarray lengths, cnp.ndarray out,
                  float* work, int threads):
        cdef float* state_ptrs[MAX_GRU_LAYERS]
        cdef float* own_states
        cdef int i, n_grus = 0
        if states is None:
            own_states = work + self.workspace_floats(B, T) - <size_t>B * self.state_width
            memset(own_states, 0, <size_t>B * self.state_width * sizeof(float))
            for i in range(self.n_layers):
                if self.layers[i].kind == GRU_LAYER:
                    state_ptrs[n_grus] = own_states
                    own_states += <size_t>B * self.layers[i].D * self.layers[i].H
                    n_grus += 1
        else:
            for i in range(len(states)):
                state_ptrs[i] = <float*>cnp.PyArray_DATA(states[i])
        cdef const int* length_ptr = NULL if lengths is None else <int*>cnp.PyArray_DATA(lengths)
        cdef const float* x_ptr = <float*>cnp.PyArray_DATA(x)
        cdef float* out_ptr = <float*>cnp.PyArray_DATA(out)
        cdef int ran
        with nogil:
            ran = run_layers(self.layers, self.n_layers, B, T, x_ptr, state_ptrs, length_ptr, out_ptr, work,
                       self.max_features, threads)
        return ran


cdef int run_layers(const LayerPlan* layers, int n_layers, int B, int T, const float* x,
                    float** states, const int* lengths, float* out, float* work,
                    int max_features, int threads) noexcept nogil:
    """Execute every layer, using ``work`` (workspace_floats(B, T)) as scratch. Returns the
    largest number of threads that ran a layer."""
    cdef size_t rows = <size_t>B * T
    cdef size_t ping = aligned(rows * max_features)
    cdef float* buffers[2]
    buffers[0] = work
    buffers[1] = work + ping
    cdef float* scratch = work + 2 * ping
    cdef const float* src = x
    cdef float* dst
    cdef int steps = T, i, gru_index = 0, ran = 1
    cdef const LayerPlan* p
    for i in range(n_layers):
        p = &layers[i]
        dst = out if i == n_layers - 1 else buffers[i % 2]
        if p.kind == GRU_LAYER:
            ran = max(ran, run_gru(p, B, steps, src, dst, states[gru_index], lengths, scratch, threads))
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
        src = dst
    if lengths != NULL and steps > 1:
        zero_padding(B, steps, layers[n_layers - 1].n_out, lengths, out)
    return ran


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
            if p.merge_mode == 0:
                y[r * n + j] = first[j] + first[n + j]
            elif p.merge_mode == 1:
                y[r * n + j] = (first[j] + first[n + j]) * 0.5
            else:
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


cdef inline int padded_units(int H) noexcept nogil:
    """H rounded up to whole blocks of the gate pass."""
    return (H + GRURT_UNIT_BLOCK - 1) // GRURT_UNIT_BLOCK * GRURT_UNIT_BLOCK


cdef size_t step_scratch_floats(const LayerPlan* p) noexcept nogil:
    """Scratch of one batch row of one direction (see gru_direction): its state, its input
    projection for CHUNK_STEPS steps, then hr, hn, rh and gates, and the gate pass's read slack."""
    return aligned(padded_units(p.H) + <size_t>CHUNK_STEPS * p.xp_stride
                   + <size_t>(p.panels_per_gate_set + p.panels_h) * GRURT_PANEL + 4 * p.H
                   + 2 * GRURT_UNIT_BLOCK)


cdef struct GruTask:
    # one direction of a GRU layer over a slice of the batch
    const LayerPlan* p
    int d, B, T
    const float* x
    float* h
    float* y
    const int* lengths
    float* scratch


cdef void run_direction_task(GruTask* task) noexcept nogil:
    gru_direction(task.p, task.d, task.B, task.T, task.x, task.h, task.y, task.lengths, task.scratch)


cdef struct TaskJob:
    # independent recurrences (directions × batch slices), claimed one at a time by the threads
    GruTask* tasks
    int n, next


cdef void tasks_job(void* arg, int slot) noexcept nogil:
    cdef TaskJob* job = <TaskJob*>arg
    cdef int i
    while True:
        i = grurt_claim(&job.next)
        if i >= job.n:
            return
        run_direction_task(&job.tasks[i])


cdef enum Split:
    ONE_THREAD, SPLIT_TASKS, SPLIT_UNITS


cdef int run_gru(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                 const int* lengths, float* scratch, int threads) noexcept nogil:
    """One GRU layer over x (B, T, I) into y: (B, T, D*H) sequences or (B, D*H) last states.
    Returns the number of threads that ran it.

    ``scratch`` holds D × B row scratches. With ``threads`` > 1 (capped at the usable CPUs)
    the layer runs on the worker pool (_pool.h): the directions and slices of the batch
    (independent recurrences) as tasks that the threads claim one at a time, or, for one
    sequence of a one-direction layer, the units of each step (run_units). Whether the split
    pays is measured (choose_split): on cores that another process is using, or for a layer
    too small, the layer runs on one thread.
    """
    cdef int H = p.H, DH = p.D * H
    cdef int d, i, b0, b1, chunk, chunks, n_tasks, ran = 1
    cdef GruTask tasks[MAX_THREADS]
    cdef TaskJob job
    cdef size_t row_scratch = step_scratch_floats(p)
    cdef float* seq_out = y if p.return_sequences else NULL
    cdef int usable = min(min(threads, MAX_THREADS), grurt_pool_cpus()) if threads > 1 else 1
    cdef int split = ONE_THREAD
    cdef bint units = (p.D == 1 and p.fast_gates and H % GRURT_PANEL == 0 and H >= MIN_SPLIT_UNITS
                       and <long>B * H * 3 * H >= MIN_SPLIT_STEP_FMAS)
    if usable > 1:
        if p.D * B >= usable or (p.D * B >= 2 and not units):
            if <long>T * B * H * 3 * H >= MIN_SPLIT_TASK_FMAS:
                split = SPLIT_TASKS
        elif units:
            split = SPLIT_UNITS
    cdef long shape = (<long>B << 32) + T
    cdef bint use_split = split != ONE_THREAD and choose_split(<ThreadChoice*>&p.choice, shape)
    cdef long start = grurt_ticks() if split != ONE_THREAD else 0
    if use_split and split == SPLIT_UNITS:
        ran = run_units(p, B, T, x, seq_out, state, lengths, scratch, usable)
    else:
        # tasks: per direction, the batch in slices of at least 8 rows (an AVX-512 tile), up to
        # four tasks per thread, so that a thread that is slowed down holds back a small part
        chunks = 1
        if use_split:
            chunks = max(1, min(B, min(max(1, 4 * usable // p.D), max((usable + p.D - 1) // p.D, B // 8))))
        n_tasks = 0
        for d in range(p.D):
            for chunk in range(chunks):
                b0, b1 = B * chunk // chunks, B * (chunk + 1) // chunks
                i = n_tasks
                tasks[i].p, tasks[i].d, tasks[i].B, tasks[i].T = p, d, b1 - b0, T
                tasks[i].x = x + <size_t>b0 * T * p.n_in
                tasks[i].h = state + (<size_t>d * B + b0) * H
                tasks[i].y = NULL if seq_out == NULL else seq_out + <size_t>b0 * T * DH
                tasks[i].lengths = NULL if lengths == NULL else <const int*>(lengths + b0)
                tasks[i].scratch = scratch + (<size_t>d * B + b0) * row_scratch
                n_tasks += 1
        job.tasks, job.n, job.next = tasks, n_tasks, 0
        if use_split:
            ran = grurt_pool_run(usable, tasks_job, &job)
        else:
            tasks_job(&job, 0)
    if split != ONE_THREAD:
        record_split(<ThreadChoice*>&p.choice, shape, use_split, grurt_ticks() - start)
    if not p.return_sequences:
        final_states(p, B, state, y)
    return ran


cdef int split_policy = 0   # 0: measured (choose_split); 1: always split; -1: never (set_split_policy)


def set_split_policy(policy):
    """"auto" (the default: each layer measures whether its split over threads pays), "always"
    or "never": for tests, which must run the split paths whatever the machine, and for
    measurements. Returns the previous policy."""
    global split_policy
    names = {"auto": 0, "always": 1, "never": -1}
    previous = {v: k for k, v in names.items()}[split_policy]
    split_policy = names[policy]
    return previous


def pool_workers():
    """Worker threads the pool has created in this process (they live until it exits)."""
    return grurt_pool_workers()


cdef long choice_median(const ThreadChoice* c, int way) noexcept nogil:
    """The median of the recent durations of one way (0 when none)."""
    cdef int n = min(c.count[way], CHOICE_SAMPLES), i, j
    cdef long v[CHOICE_SAMPLES]
    cdef long key
    if n == 0:
        return 0
    for i in range(n):
        key = c.ticks[way][i]
        j = i
        while j > 0 and v[j - 1] > key:
            v[j] = v[j - 1]
            j -= 1
        v[j] = key
    return v[n // 2]


cdef inline bint split_wins(const ThreadChoice* c) noexcept nogil:
    """Whether the split's median is at least 5% below one thread's."""
    return choice_median(c, 1) * 20 < choice_median(c, 0) * 19


cdef bint choose_split(ThreadChoice* c, long shape) noexcept nogil:
    """Whether this call of a layer runs split over threads: the faster of the two ways by the
    median of their latest calls of the same shape (a split must win by 5%; a median, because
    a split call that waits for a preempted worker is rare but long), with the other way tried
    again now and then (after 4 calls, then 8, ... up to 64 while it keeps losing) so that the
    choice follows the machine: cores that scale when they are free, a core that another
    process keeps busy. Calls from several threads update these numbers without a lock: a lost
    update only delays the choice."""
    if split_policy != 0:
        return split_policy > 0
    if c.shape != shape:
        memset(c, 0, sizeof(ThreadChoice))
        c.shape, c.interval, c.countdown = shape, 4, 4
    if c.count[1] < 2:           # measure each way twice first (the first call wakes things up)
        return True
    if c.count[0] < 2:
        return False
    cdef bint best = split_wins(c)
    c.countdown -= 1
    if c.countdown <= 0:
        c.countdown = c.interval
        c.probing = 1
        return not best
    return best


cdef void record_split(ThreadChoice* c, long shape, bint split, long ticks) noexcept nogil:
    """Adds one call's duration to the samples of the way it ran."""
    if c.shape != shape:
        return
    c.ticks[split][c.count[split] % CHOICE_SAMPLES] = ticks
    c.count[split] += 1
    if c.probing:
        c.probing = 0
        if split_wins(c) == split:
            c.interval = 4                          # the way tried is now the faster one
        else:
            c.interval = min(2 * c.interval, 64)    # still the slower: try it less often


cdef void final_states(const LayerPlan* p, int B, const float* state, float* y) noexcept nogil:
    """y (B, D*H) = the final states (D, B, H) of a GRU that hands over no sequence."""
    cdef int b, d
    for b in range(B):
        for d in range(p.D):
            memcpy(y + (<size_t>b * p.D + d) * p.H, state + (<size_t>d * B + b) * p.H, p.H * sizeof(float))


cdef struct UnitsJob:
    # a one-direction GRU layer with the units of every step split into groups (run_units)
    const LayerPlan* p
    int B, T, groups, panels          # panels: of one gate, H / GRURT_PANEL
    const float* x
    float* y
    const int* lengths
    float* scratch                    # group g's projections and products: scratch + g * group_floats
    size_t group_floats
    float* states[2]                  # the state before and after a step, B rows of H
    grurt_phased work


cdef void units_job(void* arg, int slot) noexcept nogil:
    """Claims items until none are left: phase q is the input projection of a chunk of
    CHUNK_STEPS steps, or one step; item g of a phase is unit group g."""
    cdef UnitsJob* job = <UnitsJob*>arg
    cdef long waited = 0
    cdef int t, q, g, c, r
    while True:
        t = grurt_phased_claim(&job.work, &waited)
        if t < 0:
            return
        q, g = t // job.groups, t % job.groups
        c, r = q // (CHUNK_STEPS + 1), q % (CHUNK_STEPS + 1)
        if r == 0:
            units_project(job, g, c * CHUNK_STEPS)
        else:
            units_step(job, g, c * CHUNK_STEPS, c * CHUNK_STEPS + r - 1)
        grurt_phased_done(&job.work)


cdef int run_units(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                   const int* lengths, float* scratch, int threads) noexcept nogil:
    """A one-direction GRU (sigmoid/tanh, no clip, linear_before_reset = 1) with the units of
    each step split into groups that the threads claim: a thread takes the next group, and a
    group of step s starts once every group of step s - 1 is done (grurt_phased). There is no
    barrier: a thread that is late or slow holds back only the groups it has claimed, and the
    caller runs everything that no worker takes. Every unit's arithmetic is that of one
    thread. Returns the number of threads that ran."""
    cdef int H = p.H, P = H // GRURT_PANEL
    # groups of at least two panels per gate (the one-row product runs two panels per pass)
    # and about two per thread
    cdef int groups = max(1, min(P // 2, 2 * threads))
    cdef UnitsJob job
    job.p, job.B, job.T, job.groups, job.panels = p, B, T, groups, P
    job.x, job.y, job.lengths = x, y, lengths
    job.states[0] = scratch
    job.states[1] = scratch + <size_t>B * H
    job.scratch = scratch + 2 * <size_t>B * H
    job.group_floats = aligned(<size_t>B * unit_scratch_floats((P + groups - 1) // groups * GRURT_PANEL))
    memcpy(job.states[0], state, <size_t>B * H * sizeof(float))
    grurt_phased_init(&job.work, groups, (T + CHUNK_STEPS - 1) // CHUNK_STEPS + T)
    cdef int ran = grurt_pool_run(threads, units_job, &job)
    # step s reads states[s % 2] and writes the other one
    memcpy(state, job.states[T % 2], <size_t>B * H * sizeof(float))
    return ran


cdef inline size_t unit_scratch_floats(int units) noexcept nogil:
    """Per batch row, a unit group's projections of CHUNK_STEPS steps and its products, each
    followed by the gate pass's read slack."""
    return <size_t>(CHUNK_STEPS + 1) * 3 * units + 2 * GRURT_UNIT_BLOCK


cdef inline void unit_group(const UnitsJob* job, int g, int* u0, int* U) noexcept nogil:
    cdef int first = job.panels * g // job.groups, last = job.panels * (g + 1) // job.groups
    u0[0], U[0] = first * GRURT_PANEL, (last - first) * GRURT_PANEL


cdef void units_project(UnitsJob* job, int g, int s0) noexcept nogil:
    """Group g's rows of the input projection for the steps s0 .. s0+CHUNK_STEPS-1: [z r h] of
    its units, three panel ranges of the layer's packed weights, one per gate."""
    cdef const LayerPlan* p = job.p
    cdef int B = job.B, T = job.T, H = p.H, I = p.n_in, u0, U, G, b, t, L, m, gate
    unit_group(job, g, &u0, &U)
    G = 3 * U
    cdef int panels = U // GRURT_PANEL, n = min(CHUNK_STEPS, T - s0)
    cdef float* xp = job.scratch + g * job.group_floats
    cdef float* hr = xp + <size_t>B * CHUNK_STEPS * G + GRURT_UNIT_BLOCK
    cdef size_t first_panel
    cdef bint reverse = p.reverse_only
    if s0 == 0:
        memset(xp + <size_t>B * CHUNK_STEPS * G, 0, GRURT_UNIT_BLOCK * sizeof(float))
        memset(hr + <size_t>B * G, 0, GRURT_UNIT_BLOCK * sizeof(float))
        if job.y != NULL and job.lengths != NULL:
            for b in range(B):
                for t in range(job.lengths[b], T):
                    memset(job.y + (<size_t>b * T + t) * H + u0, 0, U * sizeof(float))
    for b in range(B):
        L = T if job.lengths == NULL else job.lengths[b]
        if s0 < L:
            m = min(n, L - s0)
            t = L - s0 - m if reverse else s0
            for gate in range(3):
                first_panel = (gate * H + u0) // GRURT_PANEL
                grurt_gemm(m, I, panels, job.x + (<size_t>b * T + t) * I, I,
                           p.W_panels + first_panel * I * GRURT_PANEL, p.bias + gate * H + u0,
                           xp + <size_t>b * CHUNK_STEPS * G + gate * U, G, 0)
            if m < CHUNK_STEPS:
                memset(xp + (<size_t>b * CHUNK_STEPS + m) * G, 0, GRURT_UNIT_BLOCK * sizeof(float))


cdef void units_step(UnitsJob* job, int g, int s0, int s) noexcept nogil:
    """Step s for group g's units: their rows of h·R_zrhᵀ + [0 0 Rb_h], their gates, the new
    state's units and their outputs."""
    cdef const LayerPlan* p = job.p
    cdef int B = job.B, T = job.T, H = p.H, u0, U, G, b, t, L, gate
    unit_group(job, g, &u0, &U)
    G = 3 * U
    cdef int panels = U // GRURT_PANEL
    cdef float* xp = job.scratch + g * job.group_floats
    cdef float* hr = xp + <size_t>B * CHUNK_STEPS * G + GRURT_UNIT_BLOCK
    cdef float* cur = job.states[s % 2]
    cdef float* nxt = job.states[1 - s % 2]
    cdef size_t first_panel
    cdef bint reverse = p.reverse_only
    cdef const float* xrow
    for gate in range(3):
        first_panel = (gate * H + u0) // GRURT_PANEL
        grurt_gemm(B, H, panels, cur, H, p.R_panels + first_panel * H * GRURT_PANEL,
                   p.R_init + gate * H + u0, hr + gate * U, G, s % 2)
    for b in range(B):
        memcpy(nxt + b * H + u0, cur + b * H + u0, U * sizeof(float))
        L = T if job.lengths == NULL else job.lengths[b]
        if s >= L:
            continue
        xrow = xp + (<size_t>b * CHUNK_STEPS + chunk_row(s, s0, L, reverse)) * G
        grurt_gates_lbr1_fast(U, xrow, hr + b * G, nxt + b * H + u0)
        if job.y != NULL:
            t = L - 1 - s if reverse else s
            memcpy(job.y + (<size_t>b * T + t) * H + u0, nxt + b * H + u0, U * sizeof(float))


cdef void gru_direction(const LayerPlan* p, int d, int B, int T, const float* x, float* h,
                        float* y, const int* lengths, float* scratch) noexcept nogil:
    """The time loop of one direction over x (B, T, I). h (B, H) is updated in place; y may be NULL.

    The input projection x · Wᵀ + biases, which does not depend on the state, is computed
    for CHUNK_STEPS steps of every sequence at once before those steps run: one large product
    instead of one per step, with a buffer small enough to stay in cache.
    """
    cdef int H = p.H, G = 3 * H, DH = p.D * H, I = p.n_in
    cdef bint reverse = p.reverse_only or d == 1
    cdef const float* W = p.W_panels + d * p.W_panel_stride
    cdef const float* bias = p.bias + <size_t>d * p.xp_stride
    cdef const float* panels = p.R_panels + d * p.panel_stride
    cdef const float* panels_h = panels + <size_t>p.panels_per_gate_set * GRURT_PANEL * H
    cdef int xs = p.xp_stride, n_w_panels = p.xp_stride // GRURT_PANEL
    cdef int hr_stride = p.panels_per_gate_set * GRURT_PANEL
    cdef int hn_stride = p.panels_h * GRURT_PANEL
    cdef const float* hr_init = NULL if p.R_init == NULL else p.R_init + <size_t>d * hr_stride
    # scratch: state (B rows of Hp: the gate pass computes whole blocks of units), xp (B rows ×
    # CHUNK_STEPS steps of the projection), hr (B rows of the recurrent product), hn (lbr=0: B
    # rows of (r⊙h)·Rhᵀ), rh (B, H) and gates (B, 3H); xp and hr are followed by GRURT_UNIT_BLOCK
    # floats of zeros that the gate pass may read past its last row
    cdef int Hp = padded_units(H)
    cdef float* state = scratch
    cdef float* xp = state + <size_t>B * Hp
    cdef float* hr = xp + <size_t>B * CHUNK_STEPS * xs + GRURT_UNIT_BLOCK
    cdef float* hn = hr + <size_t>B * hr_stride + GRURT_UNIT_BLOCK
    cdef float* rh = hn + <size_t>B * hn_stride
    cdef float* gates = rh + <size_t>B * H
    cdef int s, s0, n, b, t, L, m
    cdef const float* xrow
    memset(state, 0, <size_t>B * Hp * sizeof(float))
    for b in range(B):
        memcpy(state + b * Hp, h + b * H, H * sizeof(float))
    memset(xp + <size_t>B * CHUNK_STEPS * xs, 0, GRURT_UNIT_BLOCK * sizeof(float))
    memset(hr + <size_t>B * hr_stride, 0, GRURT_UNIT_BLOCK * sizeof(float))
    memset(rh, 0, <size_t>B * H * sizeof(float))     # rows of finished sequences stay defined
    if y != NULL and lengths != NULL:
        for b in range(B):
            for t in range(lengths[b], T):
                memset(y + (<size_t>b * T + t) * DH + d * H, 0, H * sizeof(float))
    s0 = 0
    while s0 < T:
        n = min(CHUNK_STEPS, T - s0)
        # xp[b, i] = x[b, t] · Wᵀ + bias for the steps s0 .. s0+n-1 of sequence b, in time
        # order: t = s0 + i forward, t = L - s0 - m + i in reverse (m steps left in b)
        for b in range(B):
            L = T if lengths == NULL else lengths[b]
            if s0 < L:
                m = min(n, L - s0)
                t = L - s0 - m if reverse else s0
                grurt_gemm(m, I, n_w_panels, x + (<size_t>b * T + t) * I, I, W, bias,
                                  xp + <size_t>b * CHUNK_STEPS * xs, xs, 0)
                if m < CHUNK_STEPS:     # the gate pass may read into the first row left unset
                    memset(xp + (<size_t>b * CHUNK_STEPS + m) * xs, 0, GRURT_UNIT_BLOCK * sizeof(float))
        for s in range(s0, s0 + n):
            # hr = h · R_zrhᵀ + [0 0 Rb_h] (lbr=1) or h · R_zrᵀ (lbr=0)
            # odd steps read R backwards (see GRURT_K in _gru_math.h)
            grurt_gemm(B, H, p.panels_per_gate_set, state, Hp, panels, hr_init, hr, hr_stride, s % 2)
            if not p.lbr:
                for b in range(B):
                    L = T if lengths == NULL else lengths[b]
                    if s < L:
                        xrow = xp + (<size_t>b * CHUNK_STEPS + chunk_row(s, s0, L, reverse)) * xs
                        grurt_gates_lbr0_zr(H, xrow, hr + b * hr_stride, state + b * Hp, gates + b * G, rh + b * H,
                                            &p.f, p.clip)
                # hn = (r⊙h) · R_hᵀ
                grurt_gemm(B, H, p.panels_h, rh, H, panels_h, NULL, hn, hn_stride, s % 2)
            for b in range(B):
                L = T if lengths == NULL else lengths[b]
                if s >= L:
                    continue
                xrow = xp + (<size_t>b * CHUNK_STEPS + chunk_row(s, s0, L, reverse)) * xs
                if p.lbr:
                    if p.fast_gates:
                        grurt_gates_lbr1_fast(H, xrow, hr + b * hr_stride, state + b * Hp)
                    else:
                        grurt_gates_lbr1(H, xrow, hr + b * hr_stride, state + b * Hp, gates + b * G, &p.f, &p.g,
                                         p.clip)
                else:
                    grurt_gates_lbr0_h(H, xrow, hn + b * hn_stride, state + b * Hp, gates + b * G, &p.g, p.clip)
                if y != NULL:
                    t = L - 1 - s if reverse else s
                    memcpy(y + (<size_t>b * T + t) * DH + d * H, state + b * Hp, H * sizeof(float))
        s0 += CHUNK_STEPS
    for b in range(B):
        memcpy(h + b * H, state + b * Hp, H * sizeof(float))

cdef inline int chunk_row(int s, int s0, int L, bint reverse) noexcept nogil:
    """The projection row of step s in a chunk that starts at step s0 (sequence length L)."""
    return min(CHUNK_STEPS, L - s0) - 1 - (s - s0) if reverse else s - s0
