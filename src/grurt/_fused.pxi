# Included by _kernels.pyx: the C of grurt.tensor_plan's own steps (grurt.ops, grurt.tensor_passes):
#
#   softmax_rows  Softmax/LogSoftmax over the last axis (_softmax.h)
#   attention     the fused step softmax(scale · a @ b) @ c: per matrix of the batch, BLAS sgemm reads
#                 a, b and c where they are (any layout whose last two axes have a unit stride: the
#                 transposes around an attention are strides here, not copies), the scores live in
#                 one scratch block of M × N floats, the result goes where y's strides say
#   activate      an activation in place (the kernels' own, as a Dense layer or a Conv applies it)
#   Linear        x · W + c of constant weights on the panel kernels of grurt's Dense layers
from scipy.linalg.cython_blas cimport sgemm as _sgemm, sgemv as _sgemv
from ._blas cimport blas_int

cdef extern from "_softmax.h" nogil:
    void grurt_softmax_rows(const float* x, float* y, size_t rows, size_t n, int log_softmax)


def softmax_rows(cnp.ndarray x, cnp.ndarray y, bint log_softmax):
    """Softmax (LogSoftmax) of ``x`` over its last axis into ``y``: C-contiguous float32 arrays of one
    shape (trusted: grurt.ops.reduce checks); ``y`` may be ``x``."""
    cdef size_t size = <size_t>cnp.PyArray_SIZE(x)
    cdef size_t n = <size_t>x.shape[x.ndim - 1] if x.ndim else 1
    cdef const float* src = <const float*>cnp.PyArray_DATA(x)
    cdef float* dst = <float*>cnp.PyArray_DATA(y)
    if size == 0:
        return
    with nogil:
        grurt_softmax_rows(src, dst, size // n, n, log_softmax)


cdef bint _blas_layout(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t row_step, Py_ssize_t col_step,
                       char* trans, blas_int* ld) noexcept nogil:
    """The sgemm view of a row-major (rows, cols) matrix of these strides (in floats), as the
    transposed operand of a column-major product: 'N' and its leading dim when its rows are
    contiguous, 'T' when its columns are; False when neither (or the strides overlap)."""
    if (cols == 1 or col_step == 1) and (rows == 1 or row_step >= cols):
        trans[0] = b'N'
        ld[0] = row_step if rows > 1 else cols
        return True
    if (rows == 1 or row_step == 1) and (cols == 1 or col_step >= rows):
        trans[0] = b'T'
        ld[0] = col_step if cols > 1 else rows
        return True
    return False


cdef bint _blas_ready(cnp.ndarray x):
    cdef int nd = x.ndim
    cdef char trans
    cdef blas_int ld
    if x.strides[nd - 1] % 4 or x.strides[nd - 2] % 4:
        return False
    return _blas_layout(x.shape[nd - 2], x.shape[nd - 1], x.strides[nd - 2] // 4, x.strides[nd - 1] // 4, &trans, &ld)


def attention(a, b, c, cnp.ndarray y, float scale, bint mean_rows=False):
    """``y[g] = softmax(scale · a[g] @ b[g]) @ c[g]`` for each index ``g`` of the batch dims: a (…, M, K),
    b (…, K, N), c (…, N, P), y (…, M, P), float32 arrays of one rank and one batch shape, no dim 0
    (trusted: the rewrite checks), any strides (an operand BLAS cannot read is copied first); y's
    last axis of unit stride. ``mean_rows``: y (…, 1, P) gets the mean of those M rows, as the mean
    of the softmax's rows times c (two BLAS sgemv instead of the second product)."""
    cdef cnp.ndarray[float, ndim=2] scratch
    cdef cnp.ndarray[float, ndim=1] ones, weights
    cdef cnp.ndarray operand
    cdef int q, k, nd = y.ndim
    ops = [x if _blas_ready(x) else np.ascontiguousarray(x) for x in (a, b, c)] + [y]
    cdef Py_ssize_t M = a.shape[nd - 2], P = y.shape[nd - 1], K = a.shape[nd - 1], N = b.shape[nd - 1]
    cdef Py_ssize_t rows_out = 1 if mean_rows else M
    if y.shape[nd - 2] != rows_out or y.strides[nd - 1] != 4 or (rows_out > 1 and y.strides[nd - 2] < 4 * P) \
            or y.strides[nd - 2] % 4:
        raise ValueError(f"attention: y of shape {(<object>y).shape} and strides {(<object>y).strides} is not a "
                         f"row-major matrix of {rows_out} rows per batch index")
    scratch = np.empty((M, N), np.float32)
    ones = np.full(M, 1.0 / M, np.float32)
    weights = np.empty(N, np.float32)
    cdef float* scores = &scratch[0, 0]
    cdef float* column_means = &weights[0]
    cdef float* by_rows = &ones[0]
    cdef char* data[4]
    cdef char trans[4]
    cdef blas_int ld[4]
    cdef const cnp.npy_intp* strides[4]
    cdef const cnp.npy_intp* dims = cnp.PyArray_DIMS(y)
    cdef Py_ssize_t batch = 1, g, rest, index
    cdef Py_ssize_t offset[4]
    for q in range(4):
        operand = ops[q]
        data[q] = <char*>cnp.PyArray_DATA(operand)
        strides[q] = cnp.PyArray_STRIDES(operand)
        _blas_layout(operand.shape[nd - 2], operand.shape[nd - 1], strides[q][nd - 2] // 4, strides[q][nd - 1] // 4,
                     &trans[q], &ld[q])
    for k in range(nd - 2):
        batch *= dims[k]
    cdef blas_int m = M, n = N, kk = K, p = P, unit = 1
    cdef float one = 1.0, zero = 0.0
    cdef char plain = b'N'
    with nogil:
        for g in range(batch):
            rest = g
            offset[0] = offset[1] = offset[2] = offset[3] = 0
            for k in range(nd - 3, -1, -1):
                index = rest % dims[k]
                rest = rest // dims[k]
                for q in range(4):
                    offset[q] += index * strides[q][k]
            # row-major scores (M, N) = a @ b is column-major scoresᵀ = bᵀ · aᵀ
            _sgemm(&trans[1], &trans[0], &n, &m, &kk, &scale, <float*>(data[1] + offset[1]), &ld[1],
                   <float*>(data[0] + offset[0]), &ld[0], &zero, scores, &n)
            grurt_softmax_rows(scores, scores, M, N, 0)
            if mean_rows:
                # the rows' mean (N) = scoresᵀ · (1/M, …): column-major scoresᵀ as it is; then y (P) = cᵀ · it
                _sgemv(&plain, &n, &m, &one, scores, &n, by_rows, &unit, &zero, column_means, &unit)
                if trans[2] == b'N':        # cᵀ column-major (P, N)
                    _sgemv(&plain, &p, &n, &one, <float*>(data[2] + offset[2]), &ld[2], column_means, &unit,
                           &zero, <float*>(data[3] + offset[3]), &unit)
                else:                       # c column-major (N, P)
                    _sgemv(&trans[2], &n, &p, &one, <float*>(data[2] + offset[2]), &ld[2], column_means, &unit,
                           &zero, <float*>(data[3] + offset[3]), &unit)
            else:
                # y (M, P) = scores @ c: column-major yᵀ = cᵀ · scoresᵀ
                _sgemm(&trans[2], &plain, &p, &m, &n, &one, <float*>(data[2] + offset[2]), &ld[2], scores, &n,
                       &zero, <float*>(data[3] + offset[3]), &ld[3])


def activate(cnp.ndarray x, int act):
    """x = act(x) in place, ``act`` a code of ACTIVATION_CODES (not softmax); x C-contiguous float32
    (checked by the caller)."""
    cdef grurt_act f
    cdef float* data = <float*>cnp.PyArray_DATA(x)
    cdef size_t n = x.size, done = 0, chunk
    f.kind, f.alpha, f.beta = act, 0.0, 0.0
    while done < n:
        chunk = min(n - done, <size_t>(1 << 30))
        grurt_activate(&f, data + done, <int>chunk)
        done += chunk


cdef class Linear:
    """``y = x · W + c`` for constant ``W`` (K, N) and ``c`` (N,), on the panel kernels of grurt's Dense
    layers (``dense`` of _layers.pxi: W packed once, here; every row the same operations). For small
    products of a plan (an attention's projections) it beats BLAS sgemm, which packs W on every call."""
    cdef LayerPlan p
    cdef list arrays            # owns the memory p points into
    cdef readonly int n_in, n_out

    def __cinit__(self):
        self.arrays = []
        memset(&self.p, 0, sizeof(LayerPlan))

    def __init__(self, W, c):
        W = np.asarray(W, np.float32)
        self.n_in, self.n_out = W.shape
        transposed = np.ascontiguousarray(W.T)                  # (N, K): a Dense layer's W
        self.p.kind = DENSE_LAYER
        self.p.f.kind = ACT_LINEAR
        self.p.n_in, self.p.n_out = self.n_in, self.n_out
        self.p.W_panels = self._keep(pack_panels(transposed))
        if self.n_out < GRURT_DENSE_FEW:
            self.p.W = self._keep(transposed)
        self.p.bias = self._keep(pad_rows(np.asarray(c, np.float32).reshape(-1), n_panels(self.n_out) * GRURT_PANEL))

    def activated(self, int act):
        """This product followed by activation ``act`` (a code of ACTIVATION_CODES, not softmax), applied to
        each row as it is made: a new Linear on the same packed weights."""
        cdef Linear other = Linear.__new__(Linear)
        other.p = self.p
        other.p.f.kind = act
        other.arrays = self.arrays
        other.n_in, other.n_out = self.n_in, self.n_out
        return other

    cdef float* _keep(self, array) except NULL:
        kept = aligned_empty(np.size(array))
        kept[...] = np.ravel(array)
        self.arrays.append(kept)
        return <float*>cnp.PyArray_DATA(kept)

    def run(self, x):
        """x (M, K) → a new (M, N) array."""
        cdef cnp.ndarray a = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        cdef cnp.ndarray y = np.empty((a.shape[0], self.n_out), np.float32)
        cdef size_t rows = a.shape[0]
        with nogil:
            dense(&self.p, rows, <const float*>cnp.PyArray_DATA(a), <float*>cnp.PyArray_DATA(y))
        return y
