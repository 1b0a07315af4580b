# The grouped linear of constant weights (an Einsum "...gi,gih->...gh": DeepFilterNet's grouped linears)
# for grurt.tensor_passes; the C is _grouped.h.

cdef extern from "_grouped.h" nogil:
    ctypedef struct grurt_grouped:
        int groups, n_in, n_out, padded
        const float* w
        grurt_act act
    void grurt_grouped_run(const grurt_grouped* c, size_t rows, const float* x, float* y)

#: The most dims of a GroupedLinear's output (its shape lives in the object).
cpdef enum:
    GROUPED_MAX_DIMS = 32

#: A grouped linear runs without the GIL from this many multiply-adds (below, releasing it costs more).
cdef long GROUPED_NOGIL_FMAS = 100000


cdef class GroupedLinear:
    """``y[r, g, h] = act(Σ_i x[r, g, i] · w[g, i, h])`` for constant ``w`` (G, I, H), an activation code
    of ACTIVATION_CODES (not softmax), over float32 inputs of ``rows · G · I`` elements in C order
    (any shape: the caller has checked the size); the output is a new array of ``out_shape``
    (``rows · G · H`` elements, at most GROUPED_MAX_DIMS dims)."""

    cdef grurt_grouped c
    cdef object _w
    cdef size_t rows
    cdef int nd
    cdef cnp.npy_intp dims[GROUPED_MAX_DIMS]
    cdef bint nogil

    def __init__(self, w, size_t rows, tuple out_shape, int act=ACT_LINEAR):
        w = np.asarray(w, dtype=np.float32)
        groups, n_in, n_out = w.shape
        padded = (n_out + 15) // 16 * 16
        self._w = np.zeros((groups, n_in, padded), np.float32)
        self._w[:, :, :n_out] = w
        self.c.groups, self.c.n_in, self.c.n_out, self.c.padded = groups, n_in, n_out, padded
        self.c.w = <const float*>cnp.PyArray_DATA(self._w)
        self.c.act.kind, self.c.act.alpha, self.c.act.beta = act, 0.0, 0.0
        self.rows = rows
        self.nd = len(out_shape)
        for i in range(self.nd):
            self.dims[i] = out_shape[i]
        self.nogil = rows * w.size >= GROUPED_NOGIL_FMAS

    def __call__(self, x):
        """The output for ``x`` (a new array)."""
        cdef cnp.ndarray xa = x if cnp.PyArray_IS_C_CONTIGUOUS(x) else np.ascontiguousarray(x)
        cdef cnp.ndarray y = cnp.PyArray_EMPTY(self.nd, self.dims, cnp.NPY_FLOAT32, 0)
        cdef const float* xp = <const float*>cnp.PyArray_DATA(xa)
        cdef float* yp = <float*>cnp.PyArray_DATA(y)
        if self.nogil:
            with nogil:
                grurt_grouped_run(&self.c, self.rows, xp, yp)
        else:
            grurt_grouped_run(&self.c, self.rows, xp, yp)
        return y
