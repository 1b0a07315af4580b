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

    _plan.pxi      Plan: packing, folded biases, workspace sizes, size limits, the calls (a large
                   batch in slices of 64 sequences, run_slices)
    _gru_loop.pxi  the GRU time loop (one, for a whole layer or for a range of its units)
    _threads.pxi   GRU layers spread over the worker pool (directions, batch slices, units,
                   or two stacked layers pipelined), and the measured choice to do so
    _layers.pxi    running the layers in order, and the layers other than GRU
    _serve.pxi     Stream and StreamPool: states kept between calls, stepped in C
    _conv2d.pxi    Conv2d: the general graph's Conv and ConvTranspose (grurt.ops.conv)
    _grouped.pxi   GroupedLinear: the general graph's grouped linears (Einsum "...gi,gih->...gh")
    _native.pxi    NativeProgram: a run of a plan's steps as one call without the GIL (grurt.tensor_native)

The C they call: _gru_math.h (activations, gate pass, products), _lowp.h (products over bf16
and int8 weights), _pool.h (the persistent worker pool and the atomic counters threads claim
work from), _norm.h (layer and unit normalisation, global pooling, flattening) and _conv.h
(convolution, pooling and zero padding over time, the causal streaming step), _conv2d.h (the general
graph's 2-D convolutions), _grouped.h (its grouped linears).
"""
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint16_t, int8_t, int32_t
cimport numpy as cnp
import sys

import numpy as np

from ._blas cimport matmul_t
from .errors import UnsupportedModelError
from .spec import ACTIVATION_DEFAULTS, MERGE_MODES

cnp.import_array()

cdef extern from "_gru_math.h" nogil:
    enum:
        ACT_LINEAR, ACT_SIGMOID, ACT_TANH, ACT_RELU, ACT_SOFTSIGN, ACT_SOFTPLUS,
        ACT_HARD_SIGMOID, ACT_LEAKY_RELU, ACT_ELU, ACT_AFFINE, ACT_SCALED_TANH,
        ACT_THRESHOLDED_RELU, ACT_SOFTMAX,
        ACT_GELU, ACT_SILU, ACT_MISH, ACT_SELU, ACT_HARD_SILU, ACT_CLIP
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
    ctypedef struct grurt_small_gru:
        const float* W
        const float* R
        const float* bias
        const float* rinit
        int n_in
    void* grurt_gru_small_kernel(int H)
    enum: GRURT_DENSE_FEW
    void grurt_dense_few(size_t rows, int n_in, int n_out, const float* x, const float* W, const float* b, float* y)
    void grurt_gru_small(void* fn, const grurt_small_gru* g, int steps, const float* x, long x_step, float* h,
                         float* y, long y_step)

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

cdef extern from "_pool.h" nogil:
    ctypedef void (*grurt_pool_fn)(void* arg, int slot) noexcept nogil
    int grurt_pool_run(int threads, grurt_pool_fn fn, void* arg)
    int grurt_pool_run_wait(int threads, grurt_pool_fn fn, void* arg, int wait)
    int grurt_pool_workers()
    int grurt_pool_cpus()
    long grurt_ticks()
    long grurt_now_ns()
    int grurt_claim(int* next)
    void grurt_cpu_relax()
    int grurt_load_acquire(const int* p)
    void grurt_store_release(int* p, int v)
    bint grurt_cas(int* p, int expected, int desired)
    ctypedef struct grurt_phased:
        pass
    void grurt_phased_init(grurt_phased* w, int per_phase, int phases)
    int grurt_phased_claim(grurt_phased* w, long* waited_ns)
    void grurt_phased_done(grurt_phased* w)

cdef extern from "_norm.h" nogil:
    enum: GRURT_POOL_AVERAGE, GRURT_POOL_MAX
    void grurt_layer_norm(const float* x, float* y, size_t rows, int n, const float* gamma, const float* beta,
                          float eps)
    void grurt_unit_norm(const float* x, float* y, size_t rows, int n, float eps)
    void grurt_global_pool(const float* x, float* y, int B, int T, int F, const int* lengths, int mode)
    void grurt_flatten(const float* x, float* y, int B, int T, int F, const int* lengths)

cdef extern from "_conv.h" nogil:
    # layers over time (grurt.timelayers.Conv1D, Pool1D, ZeroPad1D); see _conv.h
    ctypedef struct grurt_conv:
        int C, O, k, stride, dilation, groups
        int left, right, same, ldy
        const float* packed
        long tap_stride
        const float* bias_panels
        const float* Wg
        const float* bias
        grurt_act act
    void grurt_conv_seq(const grurt_conv* c, int T, const float* x, float* y, float* scratch)
    void grurt_conv_step(const grurt_conv* c, float* history, const float* frame, float* y, float* scratch)
    size_t grurt_conv_scratch(const grurt_conv* c, int T)
    void grurt_conv_pads(const grurt_conv* c, int T, int* left, int* right)
    int grurt_window_steps(int T, int left, int right, int span, int stride)
    void grurt_same_pads(int T, int stride, int span, int lower, int* left, int* right)
    void grurt_pool_seq(int T, int F, const float* x, int size, int stride, int left, int out, int is_max,
                        int include_pad, float* y)
    void grurt_pad_frames(int T, int C, int left, int right, const float* x, float* xp)

#: The kernels run Conv1D, Pool1D and ZeroPad1D (model.py checks).
TIME_LAYERS = True

cdef extern from "<sched.h>" nogil:
    int sched_yield()

# The spec's activation names -> the C enum of _gru_math.h, and merge modes -> MergeMode.
ACTIVATION_CODES = {
    "linear": ACT_LINEAR, "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH, "relu": ACT_RELU,
    "softsign": ACT_SOFTSIGN, "softplus": ACT_SOFTPLUS, "hard_sigmoid": ACT_HARD_SIGMOID,
    "leaky_relu": ACT_LEAKY_RELU, "elu": ACT_ELU, "affine": ACT_AFFINE, "scaled_tanh": ACT_SCALED_TANH,
    "thresholded_relu": ACT_THRESHOLDED_RELU, "softmax": ACT_SOFTMAX,
    "gelu": ACT_GELU, "silu": ACT_SILU, "mish": ACT_MISH, "selu": ACT_SELU, "hard_silu": ACT_HARD_SILU,
    "clip": ACT_CLIP,
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


cdef bint small_kernels = True     # use_small_kernels
cdef int slice_rows = 64           # Model.run: a larger batch runs in slices of at most this many sequences


def set_slice_rows(int rows):
    """Tests and measurements: the sequences per slice of a large batch (Plan.run, run_slices;
    default 64); 0 runs any batch in one pass. Affects every model of the process; returns
    the previous setting."""
    global slice_rows
    previous, slice_rows = slice_rows, max(rows, 0)
    return previous


def use_small_kernels(bint on):
    """Tests and measurements: run GRU layers of H = 8, 16, 24, 32 on their own kernels (on, the
    default) or on the general loop (off). Affects every model of the process; returns the
    previous setting."""
    global small_kernels
    previous, small_kernels = small_kernels, on
    return previous


def force_widening(bint on):
    """Tests: run the reduced-precision products on the portable widening path (on) or the
    fastest this CPU has (off). Affects every model of the process."""
    global grurt_lowp_force_widening
    grurt_lowp_force_widening = on


# Limits, visible from Python (model.py checks ``threads`` against MAX_THREADS).
cpdef enum:
    MAX_THREADS = 64             # task and thread handles live on the stack
    MAX_GRU_LAYERS = 64          # state pointers live on the stack
    MAX_CONV_LAYERS = 64         # conv history pointers (streaming) live on the stack

# Plan.check_size: FITS, or the limit a call of that size exceeds.
cpdef enum:
    FITS = 0
    TOO_MANY_ROWS = 1            # batch × steps × features beyond 32-bit BLAS indexing
    TOO_MUCH_MEMORY = 2          # more bytes than the caller's memory limit

cdef enum:
    CHUNK_STEPS = 16             # time steps whose input projection is computed together
    DENSE_TILE_ROWS = 8          # rows of a Dense layer's last partial panel computed together (dense)
    ALIGN_FLOATS = 16            # 64 bytes: every buffer and packed weight starts on a cache line
    # Below these sizes a layer never splits over threads (the split's cost would exceed its
    # gain even with warm workers); above them, whether it pays is measured (choose_split).
    MIN_SPLIT_UNITS = 128            # unit split: H of whole panels, at least this
    MIN_SPLIT_STEP_FMAS = 40000      # unit split: B·H·3H multiply-adds per step
    MIN_SPLIT_TASK_FMAS = 4000000    # tasks and pipelines: T·B·H·3H multiply-adds per layer
    # bf16 R of fewer units (R of 48 KB or less in float32: it stays in L1) is multiplied as
    # float32 panels of its bf16 values, see Plan._plan_reduced
    BF16_MIN_RECURRENT_UNITS = 64

include "_plan.pxi"
include "_gru_loop.pxi"
include "_threads.pxi"
include "_layers.pxi"
include "_serve.pxi"
include "_fused.pxi"
include "_conv2d.pxi"
include "_grouped.pxi"
include "_native.pxi"
