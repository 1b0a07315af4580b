# Typed nogil wrappers over scipy.linalg.cython_blas for row-major float32 arrays.
# blas_int is SciPy's BLAS integer (64-bit in some SciPy >= 1.18 builds, int before);
# setup.py writes _blas_config.pxi to match the SciPy it builds against.
include "_blas_config.pxi"
from scipy.linalg.cython_blas cimport sgemm, sgemv


cdef inline void matmul_t(int rows, int n_out, int n_in, const float* x, const float* w,
                          float beta, float* y) noexcept nogil:
    """y (rows, n_out) = x (rows, n_in) · wᵀ + beta·y, with w (n_out, n_in); all row-major.

    Row-major y is column-major yᵀ = w · xᵀ, so BLAS sees w transposed and x as is.
    """
    cdef char transa = b'T'
    cdef char transb = b'N'
    cdef blas_int m = n_out, n = rows, k = n_in
    cdef float one = 1.0
    cdef blas_int inc = 1
    if rows == 1:
        sgemv(&transa, &k, &m, &one, <float*>w, &k, <float*>x, &inc, &beta, y, &inc)
    else:
        sgemm(&transa, &transb, &m, &n, &k, &one, <float*>w, &k, <float*>x, &k, &beta, y, &m)

