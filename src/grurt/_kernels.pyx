# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Sequence kernels: a whole model runs in one call without the GIL.

``Plan`` packs a validated ModelSpec once (folded biases, weights in the panel layout of the
product kernels in _gru_math.h) and ``Plan.run`` executes every layer on contiguous float32
input.

What the kernels trust: ``Plan.run`` trusts its arguments (C-contiguous float32 arrays of
the right shapes, lengths within 1..T, a size that passed ``Plan.check_size``): model.py
checks them. ``Plan.run_plain`` checks the common call itself (type, dtype, layout, shape and
``check_size``) and returns None to hand anything else to model.py, whose full checks convert
the input or explain what is wrong. ``Stream`` and ``StreamPool`` (_serve.pxi) check their
common calls in C the same way, and anything else in their checked paths.

One module, split by job into files that Cython includes here:

    _plan.pxi      Plan: packing, folded biases, workspace sizes, size limits, the calls
    _gru_loop.pxi  the GRU time loop (one, for a whole layer or for a range of its units)
    _threads.pxi   a GRU layer spread over threads (directions, batch slices or units)
    _layers.pxi    running the layers in order, and the layers other than GRU
    _serve.pxi     Stream and StreamPool: states kept between calls, stepped in C

The C they call: _gru_math.h (activations, gate pass, products), _lowp.h (products over bf16
and int8 weights), _threads.h (the barrier) and _norm.h (layer and unit normalisation, global
pooling, flattening).
"""
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint16_t, int8_t, int32_t
cimport numpy as cnp
import numpy as np

from ._blas cimport matmul_t
from .errors import UnsupportedModelError
from .spec import ACTIVATION_DEFAULTS, MERGE_MODES

cnp.import_array()

cdef extern from "_gru_math.h" nogil:
    enum:
        ACT_LINEAR, ACT_SIGMOID, ACT_TANH, ACT_RELU, ACT_SOFTSIGN, ACT_SOFTPLUS,
        ACT_HARD_SIGMOID, ACT_LEAKY_RELU, ACT_ELU, ACT_AFFINE, ACT_SCALED_TANH,
        ACT_THRESHOLDED_RELU, ACT_SOFTMAX
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

cdef extern from "_threads.h" nogil:
    ctypedef struct grurt_barrier:
        pass
    void grurt_barrier_wait(grurt_barrier* b)
    void grurt_barrier_init(grurt_barrier* b, int parties)
    void grurt_barrier_destroy(grurt_barrier* b)
    int grurt_load_acquire(const int* p)
    void grurt_store_release(int* p, int v)

cdef extern from "_norm.h" nogil:
    enum: GRURT_POOL_AVERAGE, GRURT_POOL_MAX
    void grurt_layer_norm(const float* x, float* y, size_t rows, int n, const float* gamma, const float* beta,
                          float eps)
    void grurt_unit_norm(const float* x, float* y, size_t rows, int n, float eps)
    void grurt_global_pool(const float* x, float* y, int B, int T, int F, const int* lengths, int mode)
    void grurt_flatten(const float* x, float* y, int B, int T, int F, const int* lengths)

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

# The spec's activation names -> the C enum of _gru_math.h, and merge modes -> MergeMode.
ACTIVATION_CODES = {
    "linear": ACT_LINEAR, "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH, "relu": ACT_RELU,
    "softsign": ACT_SOFTSIGN, "softplus": ACT_SOFTPLUS, "hard_sigmoid": ACT_HARD_SIGMOID,
    "leaky_relu": ACT_LEAKY_RELU, "elu": ACT_ELU, "affine": ACT_AFFINE, "scaled_tanh": ACT_SCALED_TANH,
    "thresholded_relu": ACT_THRESHOLDED_RELU, "softmax": ACT_SOFTMAX,
}
cdef enum MergeMode:
    MERGE_SUM, MERGE_AVE, MERGE_MUL
MERGE_CODES = {"sum": MERGE_SUM, "ave": MERGE_AVE, "mul": MERGE_MUL}
if ACTIVATION_CODES.keys() != ACTIVATION_DEFAULTS.keys() or MERGE_CODES.keys() != set(MERGE_MODES):
    raise ImportError("grurt._kernels: ACTIVATION_CODES and MERGE_CODES must name every activation and merge "
                      "mode of grurt.spec")

# How GRU weights are stored (grurt.precision.WEIGHT_MODES)
cdef enum WeightMode:
    WEIGHTS_FLOAT32, WEIGHTS_BF16, WEIGHTS_INT8
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


# Limits, visible from Python (model.py checks ``threads`` against MAX_THREADS).
cpdef enum:
    MAX_THREADS = 64             # task and thread handles live on the stack
    MAX_GRU_LAYERS = 64          # state pointers live on the stack

# Plan.check_size: FITS, or the limit a call of that size exceeds.
cpdef enum:
    FITS = 0
    TOO_MANY_ROWS = 1            # batch × steps × features beyond 32-bit BLAS indexing
    TOO_MUCH_MEMORY = 2          # more bytes than the caller's memory limit

cdef enum:
    CHUNK_STEPS = 16             # time steps whose input projection is computed together
    DENSE_TILE_ROWS = 8          # rows of a Dense layer's last partial panel computed together (dense)
    ALIGN_FLOATS = 16            # 64 bytes: every buffer and packed weight starts on a cache line
    # Splitting one sequence's steps over threads by units (run_units) costs a barrier per
    # step: about 1 µs when the threads' cores are busy, but about 20 µs when a core was idle
    # before the call (measured here). H >= 1024 (R of 12 MB, about 140 µs per step) wins
    # either way: GRU(1024) over 50 steps 8.3 -> 5.3 ms after idle; H = 512 loses after idle.
    MIN_SPLIT_UNITS = 1024
    # bf16 R of fewer units (R of 48 KB or less in float32: it stays in L1) is multiplied as
    # float32 panels of its bf16 values, see Plan._plan_reduced
    BF16_MIN_RECURRENT_UNITS = 64

include "_plan.pxi"
include "_gru_loop.pxi"
include "_threads.pxi"
include "_layers.pxi"
include "_serve.pxi"
