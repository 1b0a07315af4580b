# Conv and ConvTranspose over (N, C, H, W) float32 tensors for the general graph (grurt.ops.conv);
# the C is _conv2d.h.

cdef extern from "_conv2d.h" nogil:
    ctypedef struct grurt_conv2d:
        int C, H, W, M, Ho, Wo, groups, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr
        const float* wt
        const float* bias
        grurt_act act
    size_t grurt_conv2d_scratch(const grurt_conv2d* c, int threads)
    void grurt_conv2d_run(const grurt_conv2d* c, int N, const float* x, float* y, void* scratch, int threads)
    bint grurt_conv2d_reads_history(const grurt_conv2d* c)
    void grurt_conv2d_run_history(const grurt_conv2d* c, int N, const float* hist, int Hh, const float* x, float* y,
                                  void* scratch, int threads)
    size_t grurt_conv_transpose2d_scratch(const grurt_conv2d* c)
    void grurt_conv_transpose2d_run(const grurt_conv2d* c, int N, const float* x, float* y, void* scratch)

#: Conv2d runs without the GIL from this many multiply-adds (below, releasing it costs more than it lets run).
cdef long CONV2D_NOGIL_FMAS = 100000
#: ... and on the threads it is given from this many (W10 at 20 frames: a (1, 3) Conv of 64 channels over
#: (20, 48), 3.9M, 1.6x faster on two threads; below about 1M the wake-up of a worker costs what it saves)
cdef long CONV2D_SPLIT_FMAS = 1000000


cdef class Conv2d:
    """A Conv (``transposed`` False) or ConvTranspose of constant weights over float32 inputs of one
    shape (N, C, H, W), 1-D ones as H = 1, with an optional fused activation (a code of
    ACTIVATION_CODES; not softmax). The caller (grurt.ops.conv) has checked the geometry:
    ``out_shape`` is the output's real shape (rank 3 or 4), ``pads`` (top, left, bottom, right)
    and for ConvTranspose ``pads[:2]`` the cropping before. Calling it with an array of that
    shape returns the output, a new array."""

    cdef grurt_conv2d c
    cdef object _wt, _bias
    cdef int nd, N
    cdef cnp.npy_intp dims[4]
    cdef bint transposed, nogil, splits

    def __init__(self, bint transposed, tuple x_shape, tuple out_shape, w, bias, int groups, tuple strides,
                 tuple dilations, tuple pads, int act=ACT_LINEAR, float alpha=0.0, float beta=0.0):
        w = np.asarray(w, dtype=np.float32)
        kh, kw = w.shape[2], w.shape[3]
        if transposed:
            self._wt = np.ascontiguousarray(w)
        else:       # per group, W transposed: (Cg·kh·kw, Mg)
            m = w.shape[0]
            self._wt = np.ascontiguousarray(w.reshape(groups, m // groups, w.shape[1] * kh * kw).transpose(0, 2, 1))
        self._bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).ravel()
        self.transposed = transposed
        self.N = x_shape[0]
        c = &self.c
        c.C, c.H, c.W = x_shape[1], x_shape[2], x_shape[3]
        c.M = w.shape[1] * groups if transposed else w.shape[0]
        c.Ho, c.Wo = (out_shape[2], out_shape[3]) if len(out_shape) == 4 else (1, out_shape[2])
        c.groups, c.kh, c.kw = groups, kh, kw
        c.sh, c.sw = strides
        c.dh, c.dw = dilations
        c.pt, c.pl, c.pb, c.pr = pads
        c.wt = <const float*>cnp.PyArray_DATA(self._wt)
        c.bias = NULL if self._bias is None else <const float*>cnp.PyArray_DATA(self._bias)
        c.act.kind, c.act.alpha, c.act.beta = act, alpha, beta
        self.nd = len(out_shape)
        for i in range(self.nd):
            self.dims[i] = out_shape[i]
        positions = c.H * c.W if transposed else c.Ho * c.Wo        # each times every weight
        self.nogil = self.N * positions * w.size >= CONV2D_NOGIL_FMAS
        self.splits = not transposed and self.N * positions * w.size >= CONV2D_SPLIT_FMAS

    def __call__(self, x, int threads=1):
        """The output for ``x``; a Conv of enough work on up to ``threads`` threads (1 to MAX_THREADS,
        checked by the caller) of the worker pool, the same bits."""
        cdef cnp.ndarray xa = x if cnp.PyArray_IS_C_CONTIGUOUS(x) else np.ascontiguousarray(x)
        cdef cnp.ndarray y = cnp.PyArray_EMPTY(self.nd, self.dims, cnp.NPY_FLOAT32, 0)
        cdef const float* xp = <const float*>cnp.PyArray_DATA(xa)
        cdef float* yp = <float*>cnp.PyArray_DATA(y)
        cdef void* scratch = NULL
        cdef size_t size
        if self.transposed:
            size = grurt_conv_transpose2d_scratch(&self.c)
            scratch = malloc(size)
            if scratch == NULL:
                raise MemoryError(f"ConvTranspose: {size} bytes of scratch")
            if self.nogil:
                with nogil:
                    grurt_conv_transpose2d_run(&self.c, self.N, xp, yp, scratch)
            else:
                grurt_conv_transpose2d_run(&self.c, self.N, xp, yp, scratch)
            free(scratch)
            return y
        if not self.splits:
            threads = 1
        size = grurt_conv2d_scratch(&self.c, threads)
        scratch = malloc(size)
        if scratch == NULL:
            raise MemoryError(f"Conv: {size} bytes of scratch")
        if self.nogil:
            with nogil:
                grurt_conv2d_run(&self.c, self.N, xp, yp, scratch, threads)
        else:
            grurt_conv2d_run(&self.c, self.N, xp, yp, scratch, threads)
        free(scratch)
        return y

    @property
    def reads_history(self):
        """Whether ``history`` can run this Conv (unpadded, column stride 1, not depthwise)."""
        return not self.transposed and grurt_conv2d_reads_history(&self.c)

    def history(self, hist, x, int threads=1):
        """The output for the concatenation of ``hist`` (N, C, Hh, W) and ``x`` (N, C, H - Hh, W) along H, without
        making it (the caller has checked the shapes and ``reads_history``); the same bits as ``self(...)`` of it."""
        cdef cnp.ndarray ha = hist if cnp.PyArray_IS_C_CONTIGUOUS(hist) else np.ascontiguousarray(hist)
        cdef cnp.ndarray xa = x if cnp.PyArray_IS_C_CONTIGUOUS(x) else np.ascontiguousarray(x)
        cdef cnp.ndarray y = cnp.PyArray_EMPTY(self.nd, self.dims, cnp.NPY_FLOAT32, 0)
        cdef const float* hp = <const float*>cnp.PyArray_DATA(ha)
        cdef const float* xp = <const float*>cnp.PyArray_DATA(xa)
        cdef float* yp = <float*>cnp.PyArray_DATA(y)
        cdef int Hh = ha.shape[2]
        if not self.splits:
            threads = 1
        cdef size_t size = grurt_conv2d_scratch(&self.c, threads)
        cdef void* scratch = malloc(size)
        if scratch == NULL:
            raise MemoryError(f"Conv: {size} bytes of scratch")
        if self.nogil:
            with nogil:
                grurt_conv2d_run_history(&self.c, self.N, hp, Hh, xp, yp, scratch, threads)
        else:
            grurt_conv2d_run_history(&self.c, self.N, hp, Hh, xp, yp, scratch, threads)
        free(scratch)
        return y
