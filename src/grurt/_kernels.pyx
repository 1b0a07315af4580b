# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Sequence kernels: a whole model runs in one call without the GIL.

``Plan`` packs a validated ModelSpec once (folded biases, weights in the panel layout of the
product kernels in _gru_math.h) and ``Plan.run`` executes every layer on contiguous float32
input.
The kernels trust their input: shapes and dtypes are checked in model.py.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint16_t, int8_t, int32_t
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

cdef extern from "_lowp.h" nogil:
    size_t GRURT_LOWP_WORK_BYTES(int n_in)
    int grurt_lowp_force_widening
    int grurt_bf16_uses_dot()
    int grurt_i8_uses_dot()
    void grurt_gemm_bf16(int rows, int n_in, int n_panels, const float* x, int ldx, const uint16_t* packed,
                         const float* init, float* y, int ldy, int backward, void* work)
    void grurt_gemm_i8(int rows, int n_in, int n_panels, const float* x, int ldx, const int8_t* packed,
                       const float* scale, const int32_t* colsum, const float* init, float* y, int ldy,
                       int backward, void* work)

# Weight modes (grurt.precision.WEIGHT_MODES order)
cdef enum:
    WEIGHTS_FLOAT32 = 0
    WEIGHTS_BF16 = 1
    WEIGHTS_INT8 = 2
WEIGHT_CODES = {"float32": WEIGHTS_FLOAT32, "bf16": WEIGHTS_BF16, "int8": WEIGHTS_INT8}


def lowp_paths():
    """How this CPU runs the reduced-precision products: {"bf16": "dot" or "widening", "int8": ...}."""
    return {"bf16": "dot" if grurt_bf16_uses_dot() else "widening",
            "int8": "dot" if grurt_i8_uses_dot() else "widening"}


def force_widening(bint on):
    """Tests: run the reduced-precision products on the portable widening path (on) or the
    fastest this CPU has (off). Affects every model of the process."""
    global grurt_lowp_force_widening
    grurt_lowp_force_widening = on


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
    # Splitting one sequence's steps over threads by units (run_units) costs a barrier per
    # step: about 1 µs when the threads' cores are busy, but about 20 µs when a core was idle
    # before the call (measured here). H >= 1024 (R of 12 MB, about 140 µs per step) wins
    # either way: GRU(1024) over 50 steps 8.3 -> 5.3 ms after idle; H = 512 loses after idle.
    MIN_SPLIT_UNITS = 1024
    # bf16 R of fewer units (R of 48 KB or less in float32: it stays in L1) is multiplied as
    # float32 panels of its bf16 values, see Plan._plan_reduced
    BF16_MIN_RECURRENT_UNITS = 64

cdef extern from *:
    """
    #include <pthread.h>
    #include <sched.h>
    /* A reusable barrier for the threads of one call. A thread that arrives early spins for
     * a few microseconds (the usual wait when the threads have cores of their own), then
     * sleeps, so that a thread that lost its core to another process can get one back. */
    typedef struct {
        int arrived, generation, parties;
        pthread_mutex_t lock;
        pthread_cond_t wake;
    } grurt_barrier;
    static void grurt_barrier_wait(grurt_barrier *b) {
        int generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
        if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->parties) {
            __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
            pthread_mutex_lock(&b->lock);
            __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
            pthread_cond_broadcast(&b->wake);
            pthread_mutex_unlock(&b->lock);
            return;
        }
        for (int spins = 0; spins < 200000; ++spins)
            if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) != generation)
                return;
        pthread_mutex_lock(&b->lock);
        while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation)
            pthread_cond_wait(&b->wake, &b->lock);
        pthread_mutex_unlock(&b->lock);
    }
    static void grurt_barrier_init(grurt_barrier *b, int parties) {
        b->arrived = b->generation = 0;
        b->parties = parties;
        pthread_mutex_init(&b->lock, NULL);
        pthread_cond_init(&b->wake, NULL);
    }
    static void grurt_barrier_destroy(grurt_barrier *b) {
        pthread_mutex_destroy(&b->lock);
        pthread_cond_destroy(&b->wake);
    }
    static inline int grurt_load_acquire(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void grurt_store_release(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    ctypedef struct grurt_barrier:
        pass
    void grurt_barrier_wait(grurt_barrier* b) nogil
    void grurt_barrier_init(grurt_barrier* b, int parties) nogil
    void grurt_barrier_destroy(grurt_barrier* b) nogil
    int grurt_load_acquire(const int* p) nogil
    void grurt_store_release(int* p, int v) nogil

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<unistd.h>" nogil:
    long sysconf(int name)
    int _SC_NPROCESSORS_ONLN

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_t:
        pass
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** retval)

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
    long panel_stride        # floats of packed recurrent panels per direction (float32)
    # how W_panels and R_panels are stored (WEIGHTS_*; _lowp.h for bf16 and int8), in panels of
    # *_panel_bytes bytes, *_dir_panels per direction; int8: per packed column, a scale and
    # 128 · Σ q (the VNNI path's offset)
    int W_mode, R_mode
    long W_panel_bytes, R_panel_bytes
    int W_dir_panels, R_dir_panels
    float* W_scale
    float* R_scale
    int32_t* W_colsum
    int32_t* R_colsum
    size_t lowp_work_floats  # scratch of the reduced-precision products (0 for float32)


cdef inline size_t aligned(size_t floats) noexcept nogil:
    """``floats`` rounded up to whole cache lines."""
    return (floats + ALIGN_FLOATS - 1) // ALIGN_FLOATS * ALIGN_FLOATS


cdef inline int n_panels(int n_out):
    return (n_out + GRURT_PANEL - 1) // GRURT_PANEL


def pack_panels(a):
    """(n_out, n_in) → (panels, n_in, GRURT_PANEL) with row k of panel p = a[p*P:(p+1)*P, k]."""
    n_out, n_in = a.shape
    return pad_rows(a, n_panels(n_out) * GRURT_PANEL).reshape(-1, GRURT_PANEL, n_in).transpose(0, 2, 1).ravel()


def pack_groups(a, group):
    """(n_out, n_in) bf16 bits or int8 → the panel layout of _lowp.h: per panel of GRURT_PANEL
    rows, per group of ``group`` inputs (n_in padded with zeros), two halves of 16 lanes, each
    lane the group's ``group`` consecutive weights of one row."""
    n_out, n_in = a.shape
    groups = (n_in + group - 1) // group
    padded = np.zeros((n_panels(n_out) * GRURT_PANEL, groups * group), a.dtype)
    padded[:n_out, :n_in] = a
    return padded.reshape(-1, 2, GRURT_PANEL // 2, groups, group).transpose(0, 3, 1, 2, 4).ravel()


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

    def __init__(self, spec, weights="float32", stored=None):
        """``weights``: the mode of the GRU weights; ``stored`` maps (layer index, "W"/"R") to
        the arrays the mode stores (grurt.precision.stored), computed here when absent."""
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
                self._plan_gru(p, layer, WEIGHT_CODES[weights], i, stored or {})
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

    cdef void* _keep_bytes(self, array) except NULL:
        """A 64-byte aligned copy of ``array``'s bytes (packed bf16 or int8 weights, int32 sums)."""
        raw = np.ascontiguousarray(array).view(np.uint8).ravel()
        kept = aligned_empty((raw.size + 3) // 4).view(np.uint8)
        kept[:raw.size] = raw
        self.arrays.append(kept)
        return cnp.PyArray_DATA(kept)

    cdef _pack_reduced(self, int mode, parts_list, splits):
        """Pack one GRU matrix (W or R) in a reduced mode: ``parts_list`` per direction (the
        stored arrays), each cut into row ranges ``splits`` packed one after the other.
        Returns the addresses of the packed weights, scales and sums (0 when unused)."""
        group = 2 if mode == WEIGHTS_BF16 else 4
        packed, scales, sums = [], [], []
        for parts in parts_list:
            for lo, hi in splits:
                rows = parts[0][lo:hi]
                packed.append(pack_groups(rows, group))
                if mode == WEIGHTS_INT8:
                    scales.append(pad_rows(parts[1][lo:hi], n_panels(hi - lo) * GRURT_PANEL))
                    sums.append(np.pad(128 * rows.astype(np.int32).sum(axis=1), (0, n_panels(hi - lo) * GRURT_PANEL - (hi - lo))).astype(np.int32))
        data = self._keep_bytes(np.concatenate(packed))
        if mode == WEIGHTS_INT8:
            scale = self._keep(np.concatenate(scales))
            colsum = <int32_t*>self._keep_bytes(np.concatenate(sums))
        else:
            scale, colsum = NULL, NULL
        return <size_t>data, <size_t>scale, <size_t>colsum

    cdef _plan_gru(self, LayerPlan* p, layer, int mode, int index, dict stored):
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
        p.W_mode = p.R_mode = WEIGHTS_FLOAT32
        p.W_dir_panels = n_panels(3 * H)
        p.R_dir_panels = p.panels_per_gate_set + p.panels_h
        p.W_panel_bytes = <long>layer.input_size * GRURT_PANEL * 4
        p.R_panel_bytes = <long>H * GRURT_PANEL * 4
        p.lowp_work_floats = 0
        if mode != WEIGHTS_FLOAT32:
            self._plan_reduced(p, layer, mode, index, stored)
        self.max_step_scratch = max(self.max_step_scratch, step_scratch_floats(p))
        self.state_width += D * H

    cdef _plan_reduced(self, LayerPlan* p, layer, int mode, int index, dict stored):
        """W_panels and R_panels (packed as float32 above) repacked in mode ``mode``.

        bf16 only pays where a product streams its weights from L2 or L3: AVX512_BF16 does as
        many multiply-adds per cycle as float32 FMAs (bench/lowp_bench.c). So bf16 weights that
        a product reads from L1 or reuses over many rows (the input projection, computed for 16
        steps at once; R of H < 64) are held as float32 panels of their bf16 values: the same
        numbers, multiplied exactly, at float32 speed. int8 (VNNI: three times the float32
        multiply-adds per cycle) is used everywhere."""
        from .precision import stored as stored_parts, from_bf16, WEIGHT_MODES
        D, H = layer.num_directions, layer.hidden_size
        name_of = WEIGHT_MODES[mode]
        group = 2 if mode == WEIGHTS_BF16 else 4
        for which in ("W", "R"):
            parts = stored.get((index, which))
            if parts is None:
                parts = stored_parts(getattr(layer, which), name_of)
            per_direction = [tuple(part[d] for part in parts) for d in range(D)]
            splits = [(0, 3 * H)] if which == "W" or p.lbr else [(0, 2 * H), (2 * H, 3 * H)]
            if mode == WEIGHTS_BF16 and (which == "W" or H < BF16_MIN_RECURRENT_UNITS):
                values = from_bf16(parts[0])
                if which == "W":
                    p.W_panels = self._keep(np.concatenate([pack_panels(values[d]) for d in range(D)]))
                else:
                    p.R_panels = self._keep(np.concatenate([np.concatenate([pack_panels(values[d, lo:hi])
                                                                            for lo, hi in splits]) for d in range(D)]))
                continue
            data, scale, colsum = self._pack_reduced(mode, per_direction, splits)
            n_in = layer.input_size if which == "W" else H
            # one panel: groups of 2 (bf16) or 4 (int8) inputs, 128 bytes each
            panel_bytes = (n_in + group - 1) // group * 128
            if which == "W":
                p.W_mode = mode
                p.W_panels, p.W_scale = <float*><size_t>data, <float*><size_t>scale
                p.W_colsum, p.W_panel_bytes = <int32_t*><size_t>colsum, panel_bytes
            else:
                p.R_mode = mode
                p.R_panels, p.R_scale = <float*><size_t>data, <float*><size_t>scale
                p.R_colsum, p.R_panel_bytes = <int32_t*><size_t>colsum, panel_bytes
        # the float32 panels packed by _plan_gru are no longer referenced: let them go
        p.lowp_work_floats = (GRURT_LOWP_WORK_BYTES(max(layer.input_size, H)) + 4 * ALIGN_FLOATS) // 4

    def __dealloc__(self):
        free(self.layers)

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
        ``threads`` > 1 splits each GRU layer's directions and batch across that many threads.
        """
        self._run(x.shape[0], x.shape[1], x, states, lengths, out, threads)

    def run_plain(self, x, size_t memory_limit):
        """The output for x with zero initial states, on one thread, if x is a C-contiguous
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
        self._run(<int>B, <int>T, a, None, None, out, 1)
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
            self._execute(B, T, x, states, lengths, out, raw + (-(<size_t>raw) // 4) % ALIGN_FLOATS, threads)
        finally:
            free(raw)

    def step(self, cnp.ndarray frame, list states, cnp.ndarray out, cnp.ndarray workspace, int batch):
        """One time step of ``batch`` streams: like run with T = 1, allocating nothing.

        ``workspace`` is float32 of at least workspace_floats(batch, 1) elements, from
        aligned_empty.
        """
        self._execute(batch, 1, frame, states, None, out, <float*>cnp.PyArray_DATA(workspace), 1)

    def step_plain(self, frame, out, list states, cnp.ndarray workspace, int batch):
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
        self._execute(batch, 1, a, states, None, result, <float*>cnp.PyArray_DATA(workspace), 1)
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
        with nogil:
            run_layers(self.layers, self.n_layers, B, T, x_ptr, state_ptrs, length_ptr, out_ptr, work,
                       self.max_features, threads)


cdef void run_layers(const LayerPlan* layers, int n_layers, int B, int T, const float* x,
                     float** states, const int* lengths, float* out, float* work,
                     int max_features, int threads) noexcept nogil:
    """Execute every layer, using ``work`` (workspace_floats(B, T)) as scratch."""
    cdef size_t rows = <size_t>B * T
    cdef size_t ping = aligned(rows * max_features)
    cdef float* buffers[2]
    buffers[0] = work
    buffers[1] = work + ping
    cdef float* scratch = work + 2 * ping
    cdef const float* src = x
    cdef float* dst
    cdef int steps = T, i, gru_index = 0
    cdef const LayerPlan* p
    for i in range(n_layers):
        p = &layers[i]
        dst = out if i == n_layers - 1 else buffers[i % 2]
        if p.kind == GRU_LAYER:
            run_gru(p, B, steps, src, dst, states[gru_index], lengths, scratch, threads)
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


cdef inline void gru_product(const LayerPlan* p, bint recurrent, int d, int first_panel, int rows, int n_in,
                             int count, const float* x, int ldx, const float* init, float* y, int ldy,
                             int backward, void* work) noexcept nogil:
    """y = init + x · Aᵀ over ``count`` panels of A = W (recurrent false) or R of direction d
    from panel ``first_panel`` on, in the layer's weight mode; ``work``: its lowp_work_floats."""
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


cdef inline void* lowp_work(float* after) noexcept nogil:
    """The reduced-precision products' scratch: the first cache line at or after ``after``."""
    return <void*>(after + (-(<size_t>after) // 4) % ALIGN_FLOATS)


cdef size_t step_scratch_floats(const LayerPlan* p) noexcept nogil:
    """Scratch of one batch row of one direction (see gru_direction): its state, its input
    projection for CHUNK_STEPS steps, then hr, hn, rh and gates, and the gate pass's read slack."""
    return aligned(padded_units(p.H) + <size_t>CHUNK_STEPS * p.xp_stride
                   + <size_t>(p.panels_per_gate_set + p.panels_h) * GRURT_PANEL + 4 * p.H
                   + 2 * GRURT_UNIT_BLOCK + p.lowp_work_floats)


cdef struct GruTask:
    # one direction of a GRU layer over a slice of the batch
    const LayerPlan* p
    int d, B, T
    const float* x
    float* h
    float* y
    const int* lengths
    float* scratch


cdef void* run_direction_task(void* arg) noexcept nogil:
    cdef GruTask* task = <GruTask*>arg
    gru_direction(task.p, task.d, task.B, task.T, task.x, task.h, task.y, task.lengths, task.scratch)
    return NULL


cdef void run_parallel(void* (*work)(void*) noexcept nogil, GruTask* tasks, int n_tasks,
                       int threads) noexcept nogil:
    """Run the tasks, on threads of their own when ``threads`` allows one per task (the first
    task runs here; a thread that cannot start runs inline), one after the other otherwise."""
    cdef pthread_t handles[MAX_THREADS]
    cdef bint started[MAX_THREADS]
    cdef int i
    if n_tasks > threads:
        for i in range(n_tasks):
            work(&tasks[i])
        return
    for i in range(1, n_tasks):
        started[i] = pthread_create(&handles[i], NULL, work, &tasks[i]) == 0
        if not started[i]:
            work(&tasks[i])
    work(&tasks[0])
    for i in range(1, n_tasks):
        if started[i]:
            pthread_join(handles[i], NULL)


cdef void run_gru(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                  const int* lengths, float* scratch, int threads) noexcept nogil:
    """One GRU layer over x (B, T, I) into y: (B, T, D*H) sequences or (B, D*H) last states.

    ``scratch`` holds D × B row scratches; ``threads`` > 1 runs the directions and slices of
    the batch (independent recurrences) on threads of their own, or, when that leaves threads
    idle, the units of a large one-direction layer (run_units).
    """
    cdef int H = p.H, DH = p.D * H
    cdef int d, i, b0, b1, chunk, chunks
    cdef GruTask tasks[MAX_THREADS]
    cdef size_t row_scratch = step_scratch_floats(p)
    cdef float* seq_out = y if p.return_sequences else NULL
    chunks = max(1, min(B, min(threads, MAX_THREADS) // p.D))
    if (p.D == 1 and chunks < threads and p.fast_gates and H >= MIN_SPLIT_UNITS and H % GRURT_PANEL == 0
            and run_units(p, B, T, x, seq_out, state, lengths, scratch, min(threads, MAX_THREADS))):
        if not p.return_sequences:
            final_states(p, B, state, y)
        return
    i = 0
    for d in range(p.D):
        for chunk in range(chunks):
            b0, b1 = B * chunk // chunks, B * (chunk + 1) // chunks
            tasks[i].p, tasks[i].d, tasks[i].B, tasks[i].T = p, d, b1 - b0, T
            tasks[i].x = x + <size_t>b0 * T * p.n_in
            tasks[i].h = state + (<size_t>d * B + b0) * H
            tasks[i].y = NULL if seq_out == NULL else seq_out + <size_t>b0 * T * DH
            tasks[i].lengths = NULL if lengths == NULL else <const int*>(lengths + b0)
            tasks[i].scratch = scratch + (<size_t>d * B + b0) * row_scratch
            i += 1
    run_parallel(run_direction_task, tasks, p.D * chunks, threads)
    if not p.return_sequences:
        final_states(p, B, state, y)


cdef void final_states(const LayerPlan* p, int B, const float* state, float* y) noexcept nogil:
    """y (B, D*H) = the final states (D, B, H) of a GRU that hands over no sequence."""
    cdef int b, d
    for b in range(B):
        for d in range(p.D):
            memcpy(y + (<size_t>b * p.D + d) * p.H, state + (<size_t>d * B + b) * p.H, p.H * sizeof(float))


cdef struct UnitTask:
    # the units u0 .. u1-1 of a one-direction GRU layer over the whole batch (run_units)
    const LayerPlan* p
    int B, T, u0, u1
    const float* x
    float* y
    const int* lengths
    float* scratch          # this task's projections and products
    void* work              # this task's reduced-precision product scratch (lowp_work_floats)
    float* states[2]        # shared: the state before and after a step, B rows of H
    grurt_barrier* barrier
    int* go                 # 1: run, -1: do nothing (another thread could not start)


cdef void* run_units_task(void* arg) noexcept nogil:
    cdef UnitTask* task = <UnitTask*>arg
    while grurt_load_acquire(task.go) == 0:
        sched_yield()
    if grurt_load_acquire(task.go) == 1:
        gru_units(task)
    return NULL


cdef bint run_units(const LayerPlan* p, int B, int T, const float* x, float* y, float* state,
                    const int* lengths, float* scratch, int threads) noexcept nogil:
    """A one-direction GRU with its units split over ``threads`` threads, for batches too
    small to split: each thread computes its units' rows of the products and their gates,
    and the threads meet at a barrier after every step, when the new state is complete.
    Every unit's arithmetic is the same as on one thread. At most one thread per online CPU:
    threads that meet at every step gain nothing from sharing a core. Returns False, having
    computed nothing, when that leaves one thread or a thread cannot be started."""
    cdef int H = p.H, n = <int>min(<long>min(threads, H // GRURT_PANEL), sysconf(_SC_NPROCESSORS_ONLN))
    cdef int t, started = 1, go = 0
    if n < 2:
        return False
    cdef UnitTask tasks[MAX_THREADS]
    cdef pthread_t handles[MAX_THREADS]
    cdef grurt_barrier barrier
    grurt_barrier_init(&barrier, n)
    # shared: the state before and after a step; then each thread's scratch
    cdef float* states0 = scratch
    cdef float* states1 = states0 + <size_t>B * H
    cdef float* local = states1 + <size_t>B * H
    cdef float* works = NULL
    if p.lowp_work_floats:
        works = <float*>malloc(n * p.lowp_work_floats * sizeof(float))
        if works == NULL:
            grurt_barrier_destroy(&barrier)
            return False
    memcpy(states0, state, <size_t>B * H * sizeof(float))
    for t in range(n):
        tasks[t].p, tasks[t].B, tasks[t].T = p, B, T
        # whole panels of units per thread
        tasks[t].u0 = H // GRURT_PANEL * t // n * GRURT_PANEL
        tasks[t].u1 = H // GRURT_PANEL * (t + 1) // n * GRURT_PANEL
        tasks[t].x, tasks[t].y, tasks[t].lengths = x, y, lengths
        tasks[t].scratch = local
        tasks[t].work = NULL if works == NULL else lowp_work(works + t * p.lowp_work_floats)
        local += <size_t>B * unit_scratch_floats(tasks[t].u1 - tasks[t].u0)
        tasks[t].states[0], tasks[t].states[1] = states0, states1
        tasks[t].barrier, tasks[t].go = &barrier, &go
    for t in range(1, n):
        if pthread_create(&handles[t], NULL, run_units_task, &tasks[t]) != 0:
            break
        started += 1
    grurt_store_release(&go, 1 if started == n else -1)
    if started == n:
        gru_units(&tasks[0])
    for t in range(1, started):
        pthread_join(handles[t], NULL)
    grurt_barrier_destroy(&barrier)
    free(works)
    if started < n:
        return False
    # step s reads states[s % 2] and writes the other one
    memcpy(state, states1 if T % 2 else states0, <size_t>B * H * sizeof(float))
    return True


cdef inline size_t unit_scratch_floats(int units) noexcept nogil:
    """Per batch row, a run_units thread's projections of CHUNK_STEPS steps and its products,
    each followed by the gate pass's read slack."""
    return <size_t>(CHUNK_STEPS + 1) * 3 * units + 2 * GRURT_UNIT_BLOCK


cdef void gru_units(UnitTask* task) noexcept nogil:
    """gru_direction for the units u0 .. u1-1 of every sequence (sigmoid/tanh, no clip,
    linear_before_reset = 1), the state shared with the other threads of run_units. Its
    projections and products hold [z r h] of its units only: three panel ranges of the layer's
    packed weights, one per gate."""
    cdef const LayerPlan* p = task.p
    cdef int B = task.B, T = task.T, H = p.H, I = p.n_in, u0 = task.u0, U = task.u1 - task.u0
    cdef int G = 3 * U, panels = U // GRURT_PANEL
    cdef bint reverse = p.reverse_only
    cdef float* xp = task.scratch
    cdef float* hr = xp + <size_t>B * CHUNK_STEPS * G + GRURT_UNIT_BLOCK
    cdef int s, s0, n, b, t, L, m, g
    cdef size_t first_panel
    cdef float* cur
    cdef float* nxt
    cdef const float* xrow
    memset(xp + <size_t>B * CHUNK_STEPS * G, 0, GRURT_UNIT_BLOCK * sizeof(float))
    memset(hr + <size_t>B * G, 0, GRURT_UNIT_BLOCK * sizeof(float))
    if task.y != NULL and task.lengths != NULL:
        for b in range(B):
            for t in range(task.lengths[b], T):
                memset(task.y + (<size_t>b * T + t) * H + u0, 0, U * sizeof(float))
    s0 = 0
    while s0 < T:
        n = min(CHUNK_STEPS, T - s0)
        for b in range(B):
            L = T if task.lengths == NULL else task.lengths[b]
            if s0 < L:
                m = min(n, L - s0)
                t = L - s0 - m if reverse else s0
                for g in range(3):
                    first_panel = (g * H + u0) // GRURT_PANEL
                    gru_product(p, False, 0, first_panel, m, I, panels, task.x + (<size_t>b * T + t) * I, I,
                                p.bias + g * H + u0, xp + <size_t>b * CHUNK_STEPS * G + g * U, G, 0, task.work)
                if m < CHUNK_STEPS:
                    memset(xp + (<size_t>b * CHUNK_STEPS + m) * G, 0, GRURT_UNIT_BLOCK * sizeof(float))
        for s in range(s0, s0 + n):
            cur, nxt = task.states[s % 2], task.states[1 - s % 2]
            for g in range(3):
                first_panel = (g * H + u0) // GRURT_PANEL
                gru_product(p, True, 0, first_panel, B, H, panels, cur, H, p.R_init + g * H + u0, hr + g * U, G,
                            s % 2, task.work)
            for b in range(B):
                memcpy(nxt + b * H + u0, cur + b * H + u0, U * sizeof(float))
                L = T if task.lengths == NULL else task.lengths[b]
                if s >= L:
                    continue
                xrow = xp + (<size_t>b * CHUNK_STEPS + chunk_row(s, s0, L, reverse)) * G
                grurt_gates_lbr1_fast(U, xrow, hr + b * G, nxt + b * H + u0)
                if task.y != NULL:
                    t = L - 1 - s if reverse else s
                    memcpy(task.y + (<size_t>b * T + t) * H + u0, nxt + b * H + u0, U * sizeof(float))
            grurt_barrier_wait(task.barrier)     # every unit of the new state is written
        s0 += CHUNK_STEPS


cdef void gru_direction(const LayerPlan* p, int d, int B, int T, const float* x, float* h,
                        float* y, const int* lengths, float* scratch) noexcept nogil:
    """The time loop of one direction over x (B, T, I). h (B, H) is updated in place; y may be NULL.

    The input projection x · Wᵀ + biases, which does not depend on the state, is computed
    for CHUNK_STEPS steps of every sequence at once before those steps run: one large product
    instead of one per step, with a buffer small enough to stay in cache.
    """
    cdef int H = p.H, G = 3 * H, DH = p.D * H, I = p.n_in
    cdef bint reverse = p.reverse_only or d == 1
    cdef const float* bias = p.bias + <size_t>d * p.xp_stride
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
    cdef void* work = lowp_work(gates + <size_t>B * G)     # the reduced-precision products' scratch
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
                gru_product(p, False, d, 0, m, I, n_w_panels, x + (<size_t>b * T + t) * I, I, bias,
                            xp + <size_t>b * CHUNK_STEPS * xs, xs, 0, work)
                if m < CHUNK_STEPS:     # the gate pass may read into the first row left unset
                    memset(xp + (<size_t>b * CHUNK_STEPS + m) * xs, 0, GRURT_UNIT_BLOCK * sizeof(float))
        for s in range(s0, s0 + n):
            # hr = h · R_zrhᵀ + [0 0 Rb_h] (lbr=1) or h · R_zrᵀ (lbr=0)
            # odd steps read R backwards (see GRURT_K in _gru_math.h)
            gru_product(p, True, d, 0, B, H, p.panels_per_gate_set, state, Hp, hr_init, hr, hr_stride, s % 2, work)
            if not p.lbr:
                for b in range(B):
                    L = T if lengths == NULL else lengths[b]
                    if s < L:
                        xrow = xp + (<size_t>b * CHUNK_STEPS + chunk_row(s, s0, L, reverse)) * xs
                        grurt_gates_lbr0_zr(H, xrow, hr + b * hr_stride, state + b * Hp, gates + b * G, rh + b * H,
                                            &p.f, p.clip)
                # hn = (r⊙h) · R_hᵀ
                gru_product(p, True, d, p.panels_per_gate_set, B, H, p.panels_h, rh, H, NULL, hn, hn_stride, s % 2,
                            work)
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
