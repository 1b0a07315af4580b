# Included by _kernels.pyx: the native executor of grurt.tensor_native. A run of a plan's steps is one
# NativeProgram: its instructions (NativeStep objects, each a C struct and the C function that runs it) over
# buffers that are the run's inputs, arrays made for its outputs, one workspace of every other tensor (offsets
# worked out by the planner, who computed every size with Python ints and checked it) and the plan's constants.
# A call checks its inputs, allocates that memory, and runs every instruction without the GIL; nothing in the
# loop allocates, fails or touches a Python object. The C of the data movement and arithmetic is _native.h.
from libc.stddef cimport ptrdiff_t
from libc.string cimport memcmp

cdef extern from "numpy/arrayobject.h":
    object array_view "PyArray_View" (cnp.ndarray a, void* dtype, void* subtype)     # a view of a (NULL, NULL: its own)

cdef extern from "_native.h" nogil:
    enum: GRURT_NATIVE_DIMS
    ctypedef struct grurt_strided:
        int nd
        ptrdiff_t shape[GRURT_NATIVE_DIMS]
        ptrdiff_t a[GRURT_NATIVE_DIMS]
        ptrdiff_t b[GRURT_NATIVE_DIMS]
        ptrdiff_t y[GRURT_NATIVE_DIMS]
    void grurt_native_copy(const grurt_strided* s, size_t itemsize, const char* src, char* dst)
    void grurt_native_binary(const grurt_strided* s, int op, const char* a, const char* b, char* y)

#: The most dims of a strided instruction once the planner has merged what it can (more: the step stays Python's).
NATIVE_DIMS = GRURT_NATIVE_DIMS
#: The most dims of a tensor a NativeProgram takes in or gives out (grurt.tensor_graph.MAX_RANK).
cpdef enum:
    NATIVE_MAX_RANK = 32

ctypedef void (*native_fn)(const void* data, char** bases, char* scratch, int threads) noexcept nogil

cdef struct NativeOp:
    native_fn fn
    const void* data

cdef struct Ref:                # a tensor's first byte: buffer ``buf`` of the call's table, then ``offset`` bytes
    int buf
    Py_ssize_t offset

cdef inline char* at(char** bases, Ref r) noexcept nogil:
    return bases[r.buf] + r.offset

cdef Ref as_ref(tuple place) except *:
    cdef Ref r
    r.buf, r.offset = place
    return r

cdef void set_strided(grurt_strided* s, tuple shape, tuple a, tuple b, tuple y) except *:
    if not 1 <= len(shape) <= GRURT_NATIVE_DIMS or len(a) != len(shape) or len(b) != len(shape) \
            or len(y) != len(shape) or any(d < 1 for d in shape):
        raise ValueError(f"a strided instruction over {shape}: 1 to {GRURT_NATIVE_DIMS} dims, none empty")
    s.nd = len(shape)
    for i in range(s.nd):
        s.shape[i], s.a[i], s.b[i], s.y[i] = shape[i], a[i], b[i], y[i]


cdef class NativeStep:
    """One instruction: ``fn(data, ...)`` runs it, ``data`` a struct of the object (which keeps alive what it
    points into); ``scratch(threads)``: the bytes of scratch it needs for a call of ``threads``."""
    cdef native_fn fn
    cdef const void* data

    cdef size_t scratch(self, int threads):
        return 0


# ---- data movement ----

cdef struct CopyData:
    Ref src, dst
    size_t itemsize
    grurt_strided s

cdef void copy_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const CopyData* d = <const CopyData*>data
    grurt_native_copy(&d.s, d.itemsize, at(bases, d.src), at(bases, d.dst))


cdef class CopyStep(NativeStep):
    """dst[i] = src[i] over ``shape``, element ``i`` at the strides (bytes) given for each."""
    cdef CopyData d

    def __init__(self, tuple dst, tuple src, size_t itemsize, tuple shape, tuple src_strides, tuple dst_strides):
        self.d.dst, self.d.src, self.d.itemsize = as_ref(dst), as_ref(src), itemsize
        set_strided(&self.d.s, shape, src_strides, src_strides, dst_strides)
        self.fn, self.data = copy_fn, &self.d


cdef struct FillData:
    Ref dst
    size_t nbytes

cdef void zero_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const FillData* d = <const FillData*>data
    memset(at(bases, d.dst), 0, d.nbytes)


cdef class ZeroStep(NativeStep):
    """``nbytes`` zero bytes at dst."""
    cdef FillData d

    def __init__(self, tuple dst, size_t nbytes):
        self.d.dst, self.d.nbytes = as_ref(dst), nbytes
        self.fn, self.data = zero_fn, &self.d


# ---- elementwise ----

cdef struct ActData:
    Ref x, y
    size_t n
    grurt_act act

cdef void act_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const ActData* d = <const ActData*>data
    cdef float* y = <float*>at(bases, d.y)
    cdef const float* x = <const float*>at(bases, d.x)
    cdef size_t done = 0, chunk
    if <const float*>y != x:
        memcpy(y, x, d.n * sizeof(float))
    while done < d.n:
        chunk = min(d.n - done, <size_t>(1 << 30))
        grurt_activate(&d.act, y + done, <int>chunk)
        done += chunk


cdef class ActivationStep(NativeStep):
    """y = act(x) over ``n`` float32 values, ``act`` a code of ACTIVATION_CODES (not softmax); y may be x."""
    cdef ActData d

    def __init__(self, tuple y, tuple x, size_t n, int act):
        self.d.y, self.d.x, self.d.n = as_ref(y), as_ref(x), n
        self.d.act.kind, self.d.act.alpha, self.d.act.beta = act, 0.0, 0.0
        self.fn, self.data = act_fn, &self.d


cdef struct BinaryData:
    Ref a, b, y
    int op
    grurt_strided s

cdef void binary_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const BinaryData* d = <const BinaryData*>data
    grurt_native_binary(&d.s, d.op, at(bases, d.a), at(bases, d.b), at(bases, d.y))


cdef class BinaryStep(NativeStep):
    """y = a op b (0 Add, 1 Sub, 2 Mul, 3 Div) over float32 ``shape``, each at its strides (bytes; 0 along a
    broadcast dim); y may be a or b exactly."""
    cdef BinaryData d

    def __init__(self, tuple y, tuple a, tuple b, int op, tuple shape, tuple a_strides, tuple b_strides,
                 tuple y_strides):
        if not 0 <= op <= 3:
            raise ValueError(f"binary op {op}")
        self.d.y, self.d.a, self.d.b, self.d.op = as_ref(y), as_ref(a), as_ref(b), op
        set_strided(&self.d.s, shape, a_strides, b_strides, y_strides)
        self.fn, self.data = binary_fn, &self.d


cdef struct SoftmaxData:
    Ref x, y
    size_t rows, n
    bint log

cdef void softmax_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const SoftmaxData* d = <const SoftmaxData*>data
    grurt_softmax_rows(<const float*>at(bases, d.x), <float*>at(bases, d.y), d.rows, d.n, d.log)


cdef class SoftmaxStep(NativeStep):
    """Softmax (``log``: LogSoftmax) of each of ``rows`` rows of ``n`` float32 values of x into y, as
    ``softmax_rows``."""
    cdef SoftmaxData d

    def __init__(self, tuple y, tuple x, size_t rows, size_t n, bint log):
        self.d.y, self.d.x, self.d.rows, self.d.n, self.d.log = as_ref(y), as_ref(x), rows, n, log
        self.fn, self.data = softmax_fn, &self.d


# ---- the kernels of the ops ----

cdef struct ConvData:
    const grurt_conv2d* c
    int N, mode, Hh
    bint splits
    Ref x, hist, y

cdef void conv_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const ConvData* d = <const ConvData*>data
    cdef const float* x = <const float*>at(bases, d.x)
    cdef float* y = <float*>at(bases, d.y)
    if d.mode == 1:
        grurt_conv_transpose2d_run(d.c, d.N, x, y, scratch)
    elif d.mode == 2:
        grurt_conv2d_run_history(d.c, d.N, <const float*>at(bases, d.hist), d.Hh, x, y, scratch,
                                 threads if d.splits else 1)
    else:
        grurt_conv2d_run(d.c, d.N, x, y, scratch, threads if d.splits else 1)


cdef class ConvStep(NativeStep):
    """``conv`` (a Conv2d) on x into y, as its ``__call__`` (or, given ``hist`` and its ``rows``, its ``history``)
    runs it: the same C call, on the threads of the call when the Conv splits."""
    cdef ConvData d
    cdef Conv2d conv

    def __init__(self, tuple y, tuple x, Conv2d conv, tuple hist=None, int rows=0):
        self.conv = conv
        self.d.c, self.d.N, self.d.splits = &conv.c, conv.N, conv.splits
        self.d.mode = 1 if conv.transposed else 2 if hist is not None else 0
        self.d.y, self.d.x = as_ref(y), as_ref(x)
        if hist is not None:
            if conv.transposed or not conv.reads_history:
                raise ValueError("ConvStep: this Conv cannot read a history")
            self.d.hist, self.d.Hh = as_ref(hist), rows
        self.fn, self.data = conv_fn, &self.d

    cdef size_t scratch(self, int threads):
        if self.d.mode == 1:
            return grurt_conv_transpose2d_scratch(&self.conv.c)
        return grurt_conv2d_scratch(&self.conv.c, threads if self.d.splits else 1)


cdef struct GroupedData:
    const grurt_grouped* c
    size_t rows
    Ref x, y

cdef void grouped_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const GroupedData* d = <const GroupedData*>data
    grurt_grouped_run(d.c, d.rows, <const float*>at(bases, d.x), <float*>at(bases, d.y))


cdef class GroupedStep(NativeStep):
    """``kernel`` (a GroupedLinear) on x into y."""
    cdef GroupedData d
    cdef GroupedLinear kernel

    def __init__(self, tuple y, tuple x, GroupedLinear kernel):
        self.kernel = kernel
        self.d.c, self.d.rows, self.d.y, self.d.x = &kernel.c, kernel.rows, as_ref(y), as_ref(x)
        self.fn, self.data = grouped_fn, &self.d


cdef struct DenseData:
    const LayerPlan* p
    size_t rows
    Ref x, y

cdef void dense_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const DenseData* d = <const DenseData*>data
    dense(d.p, d.rows, <const float*>at(bases, d.x), <float*>at(bases, d.y))


cdef class DenseStep(NativeStep):
    """``linear`` (a Linear) on the ``rows`` rows of x into y."""
    cdef DenseData d
    cdef Linear linear

    def __init__(self, tuple y, tuple x, Linear linear, size_t rows):
        self.linear = linear
        self.d.p, self.d.rows, self.d.y, self.d.x = &linear.p, rows, as_ref(y), as_ref(x)
        self.fn, self.data = dense_fn, &self.d


cdef struct RecurrentData:
    const LayerPlan* layers
    int n_layers, B, T, n_states
    bint splits
    size_t ping, extra
    Ref x, y
    Ref states[MAX_GRU_LAYERS]

cdef void recurrent_fn(const void* data, char** bases, char* scratch, int threads) noexcept nogil:
    cdef const RecurrentData* d = <const RecurrentData*>data
    cdef float* states[MAX_GRU_LAYERS]
    cdef int i
    for i in range(d.n_states):
        states[i] = <float*>at(bases, d.states[i])
    run_layers(d.layers, d.n_layers, d.B, d.T, <const float*>at(bases, d.x), states, NULL, <float*>at(bases, d.y),
               <float*>scratch, d.ping, d.extra, NULL, threads if d.splits else 1, False)


cdef class RecurrentStep(NativeStep):
    """The layers of ``plan`` (a kernels' Plan) on x (B, T, I) into y, its GRU layers' states (D, B, H) at
    ``states`` updated in place (initialized by the steps before), as ``Plan.run`` runs them on a batch of at most
    ``slice_rows``; on the threads of the call when ``splits`` (more than one row: grurt.ops.recurrent.Direct)."""
    cdef RecurrentData d
    cdef Plan plan
    cdef size_t work_bytes

    def __init__(self, tuple y, tuple x, list states, Plan plan, int batch, int steps, bint splits):
        if len(states) > MAX_GRU_LAYERS or batch < 1 or steps < 1:
            raise ValueError(f"RecurrentStep: {len(states)} states, batch {batch}, {steps} steps")
        self.plan = plan
        self.d.layers, self.d.n_layers, self.d.B, self.d.T = plan.layers, plan.n_layers, batch, steps
        self.d.splits, self.d.n_states, self.d.y, self.d.x = splits, len(states), as_ref(y), as_ref(x)
        for i, place in enumerate(states):
            self.d.states[i] = as_ref(place)
        plan.layout(batch, steps, &self.d.ping, &self.d.extra)
        self.work_bytes = plan.workspace_floats(batch, steps) * sizeof(float)
        self.fn, self.data = recurrent_fn, &self.d

    cdef size_t scratch(self, int threads):
        return self.work_bytes


# ---- the program ----

cdef struct TensorShape:
    int typenum, nd
    cnp.npy_intp dims[NATIVE_MAX_RANK]

cdef void set_shape(TensorShape* s, tuple shape, int typenum) except *:
    if len(shape) > NATIVE_MAX_RANK:
        raise ValueError(f"a tensor of {len(shape)} dims")
    s.typenum, s.nd = typenum, len(shape)
    for i, d in enumerate(shape):
        s.dims[i] = d

cdef bint same_shape(cnp.ndarray a, const TensorShape* s) noexcept:
    return (cnp.PyArray_TYPE(a) == s.typenum and cnp.PyArray_NDIM(a) == s.nd
            and memcmp(cnp.PyArray_DIMS(a), s.dims, s.nd * sizeof(cnp.npy_intp)) == 0)


cdef class NativeProgram:
    """Instructions over a table of buffers: the run's ``inputs`` (arrays the caller passes, in order; (shape,
    type number, written) each: an instruction writes into it in place), ``roots`` (an array made per call for
    each tensor the run hands out, or that a tensor it hands out is a view of: (shape, type number)), one
    workspace of ``work_bytes`` (every other tensor, 64-byte aligned offsets), then ``constants`` (arrays kept
    here). ``outputs``: (buffer, byte offset, shape, type number) of each array ``run`` returns, in order.
    ``nodes``: the plan's steps it runs (messages, ``Plan.describe``); ``owners``: the index in ``nodes`` of the step
    each instruction is part of (profiles)."""
    cdef NativeOp* ops
    cdef int n_ops, n_inputs, n_roots, n_outputs, n_bases
    cdef TensorShape* shapes         # the inputs', the roots', then the outputs' shapes
    cdef bint* written
    cdef int* out_buf                # per output: its buffer,
    cdef Py_ssize_t* out_offset      # ... its byte offset there,
    cdef int* out_whole              # ... the root it is, whole (same shape), or -1: a view
    cdef char** constant_data
    cdef size_t work_bytes, scratch_one
    cdef list steps, constants, split_steps
    cdef readonly tuple nodes, owners
    cdef readonly bint fresh           # every output is an array made by the call, whole (no view)
    cdef readonly bint writes_inputs   # an instruction writes into an input (in place)

    def __cinit__(self):
        self.ops, self.shapes, self.written, self.out_buf, self.out_offset, self.out_whole = NULL, NULL, NULL, NULL, \
            NULL, NULL
        self.constant_data = NULL

    def __init__(self, list steps, list inputs, list roots, size_t work_bytes, list constants, list outputs,
                 tuple nodes, tuple owners):
        cdef NativeStep step
        cdef int k
        if len(owners) != len(steps):
            raise ValueError(f"{len(owners)} owners of {len(steps)} instructions")
        self.steps, self.nodes, self.owners, self.work_bytes = steps, nodes, owners, work_bytes
        self.constants = [np.ascontiguousarray(c) for c in constants]
        self.n_ops, self.n_inputs, self.n_roots, self.n_outputs = len(steps), len(inputs), len(roots), len(outputs)
        self.n_bases = self.n_inputs + self.n_roots + 1 + len(constants)
        self.ops = <NativeOp*>calloc(max(self.n_ops, 1), sizeof(NativeOp))
        self.shapes = <TensorShape*>calloc(max(self.n_inputs + self.n_roots + self.n_outputs, 1), sizeof(TensorShape))
        self.written = <bint*>calloc(max(self.n_inputs, 1), sizeof(bint))
        self.out_buf = <int*>calloc(max(self.n_outputs, 1), sizeof(int))
        self.out_offset = <Py_ssize_t*>calloc(max(self.n_outputs, 1), sizeof(Py_ssize_t))
        self.out_whole = <int*>calloc(max(self.n_outputs, 1), sizeof(int))
        self.constant_data = <char**>calloc(max(len(constants), 1), sizeof(char*))
        if (self.ops == NULL or self.shapes == NULL or self.written == NULL or self.out_buf == NULL
                or self.out_offset == NULL or self.out_whole == NULL or self.constant_data == NULL):
            raise MemoryError()
        for k, step in enumerate(steps):
            self.ops[k].fn, self.ops[k].data = step.fn, step.data
        self.scratch_one = max([step.scratch(1) for step in steps] + [0])
        self.split_steps = [step for step in steps if isinstance(step, ConvStep) and (<ConvStep>step).d.splits]
        for k, (shape, typenum, written) in enumerate(inputs):
            set_shape(&self.shapes[k], shape, typenum)
            self.written[k] = written
            self.writes_inputs = self.writes_inputs or written
        for k, (shape, typenum) in enumerate(roots):
            set_shape(&self.shapes[self.n_inputs + k], shape, typenum)
        for k, array in enumerate(self.constants):
            self.constant_data[k] = <char*>cnp.PyArray_DATA(array)
        first_root = self.n_inputs
        for k, (buf, offset, shape, typenum) in enumerate(outputs):
            if not 0 <= buf < self.n_bases or buf == self.n_inputs + self.n_roots:
                raise ValueError(f"output {k} in buffer {buf} of {self.n_bases} (the workspace is not handed out)")
            self.out_buf[k], self.out_offset[k] = buf, offset
            set_shape(&self.shapes[self.n_inputs + self.n_roots + k], shape, typenum)
            root = buf - first_root
            self.out_whole[k] = root if (0 <= root < self.n_roots and offset == 0 and roots[root] == (shape, typenum)) \
                else -1
        self.fresh = all(self.out_whole[k] >= 0 for k in range(self.n_outputs))

    def __dealloc__(self):
        free(self.ops)
        free(self.shapes)
        free(self.written)
        free(self.out_buf)
        free(self.out_offset)
        free(self.out_whole)
        free(self.constant_data)

    def run(self, list inputs, int threads):
        """The run's outputs (a list of arrays, in order) for ``inputs`` (arrays of the declared shapes and types;
        one that is not C-contiguous and aligned, or is written in place and read-only, is copied first), the
        kernels on up to ``threads`` threads where they split."""
        return self._call(inputs, threads, NULL)

    def profile(self, list inputs, int threads):
        """(the outputs, the nanoseconds each instruction took, the instructions' kinds) of one ``run``."""
        cdef long* ns = <long*>calloc(max(self.n_ops, 1), sizeof(long))
        if ns == NULL:
            raise MemoryError()
        try:
            outputs = self._call(inputs, threads, ns)
            return outputs, [ns[k] for k in range(self.n_ops)], [type(step).__name__ for step in self.steps]
        finally:
            free(ns)

    cdef list _call(self, list inputs, int threads, long* ns):
        cdef int k, n_in = self.n_inputs, n_roots = self.n_roots
        cdef long started
        cdef cnp.ndarray a
        cdef NativeStep step
        cdef const TensorShape* s
        if len(inputs) != n_in:
            raise ValueError(f"native run of {len(self.nodes)} steps: {len(inputs)} inputs, expected {n_in}")
        cdef size_t scratch = self.scratch_one
        if threads != 1:
            for step in self.split_steps:
                scratch = max(scratch, step.scratch(threads))
        cdef size_t table = (<size_t>self.n_bases * sizeof(char*) + 63) // 64 * 64
        cdef size_t work = (self.work_bytes + 63) // 64 * 64
        cdef char* raw = <char*>malloc(table + work + scratch + 64)
        if raw == NULL:
            raise out_of_memory(table + work + scratch + 64, f"the workspace of a native run of {len(self.nodes)} steps")
        cdef char* block = raw + (-(<size_t>raw)) % 64
        cdef char** bases = <char**>block
        arrays = list(inputs)           # the inputs as read, then the roots: what the outputs are views of
        try:
            for k in range(n_in):
                value = arrays[k]
                s = &self.shapes[k]
                if type(value) is not np.ndarray or not same_shape(<cnp.ndarray>value, s) \
                        or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>value):
                    raise AssertionError(f"native run of {len(self.nodes)} steps: input {k} is "
                                         f"{getattr(value, 'dtype', type(value))} {getattr(value, 'shape', '')}, "
                                         f"not type {s.typenum} {tuple(s.dims[i] for i in range(s.nd))}")
                a = value
                if not (cnp.PyArray_ISCARRAY(a) if self.written[k] else cnp.PyArray_ISCARRAY_RO(a)):
                    a = arrays[k] = np.array(a, order="C")
                bases[k] = <char*>cnp.PyArray_DATA(a)
            for k in range(n_roots):
                s = &self.shapes[n_in + k]
                try:
                    a = cnp.PyArray_EMPTY(s.nd, <cnp.npy_intp*>s.dims, s.typenum, 0)
                except MemoryError:
                    shape = tuple(s.dims[i] for i in range(s.nd))
                    raise out_of_memory(cnp.PyArray_DescrFromType(s.typenum).itemsize * int(np.prod(shape)),
                                        f"an output {shape} of a native run of {len(self.nodes)} steps") from None
                arrays.append(a)
                bases[n_in + k] = <char*>cnp.PyArray_DATA(a)
            bases[n_in + n_roots] = block + table
            for k in range(self.n_bases - n_in - n_roots - 1):
                bases[n_in + n_roots + 1 + k] = self.constant_data[k]
            with nogil:
                if ns == NULL:
                    for k in range(self.n_ops):
                        self.ops[k].fn(self.ops[k].data, bases, block + table + work, threads)
                else:
                    for k in range(self.n_ops):
                        started = grurt_now_ns()
                        self.ops[k].fn(self.ops[k].data, bases, block + table + work, threads)
                        ns[k] = grurt_now_ns() - started
            return [self._output(k, bases, arrays) for k in range(self.n_outputs)]
        finally:
            free(raw)

    cdef object _output(self, int k, char** bases, list arrays):
        cdef int buf = self.out_buf[k], n_in = self.n_inputs
        if self.out_whole[k] >= 0:
            return arrays[n_in + self.out_whole[k]]
        cdef object owner
        cdef bint writable = True
        if buf < n_in + self.n_roots:
            owner = arrays[buf]
            writable = buf >= n_in or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>owner)
        else:
            owner = self.constants[buf - n_in - self.n_roots - 1]
            writable = False
        cdef const TensorShape* s = &self.shapes[n_in + self.n_roots + k]
        cdef int flags = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED | (cnp.NPY_ARRAY_WRITEABLE if writable else 0)
        cdef cnp.ndarray view = cnp.PyArray_New(np.ndarray, s.nd, <cnp.npy_intp*>s.dims, s.typenum, NULL,
                                                bases[buf] + self.out_offset[k], 0, flags, None)
        cnp.set_array_base(view, owner)
        return view


cdef class InputSignature:
    """The inputs of one plan signature (``names``: the inputs' names in order; ``signature``: (shape, dtype) of
    each): ``frozen(inputs)`` gives them as ``TensorModel`` checks them (read-only views in input order) when
    they are exactly that signature, else None (the caller runs its full checks). A plan was made from checked
    inputs of that signature, so inputs of the same shapes and dtypes, C-contiguous, pass every check.
    ``program``: the plan's one native step from its inputs to its outputs, if it has one (``Plan.whole``: which
    inputs it takes, ``take``, and which of its outputs are the plan's, ``give``): ``outputs`` then runs it."""
    cdef tuple names, take, give
    cdef int n
    cdef TensorShape* shapes
    cdef NativeProgram program

    def __cinit__(self):
        self.shapes = NULL

    def __init__(self, tuple names, tuple signature, NativeProgram program=None, tuple take=(), tuple give=()):
        if len(names) != len(signature) or not names:
            raise ValueError(f"InputSignature: {len(names)} names for {len(signature)} inputs")
        if program is not None and (program.writes_inputs or not program.fresh or len(take) != program.n_inputs
                                    or any(not 0 <= k < program.n_outputs for k in give)
                                    or any(not 0 <= i < len(names) for i in take)):
            raise ValueError("InputSignature: a program that writes its inputs, hands out views, or does not match")
        self.names, self.n, self.program, self.take, self.give = names, len(names), program, take, give
        self.shapes = <TensorShape*>calloc(self.n, sizeof(TensorShape))
        if self.shapes == NULL:
            raise MemoryError()
        for k, (shape, dtype) in enumerate(signature):
            if not np.dtype(dtype).isnative:
                raise ValueError(f"InputSignature: dtype {dtype} is not in the machine's byte order")
            set_shape(&self.shapes[k], tuple(shape), np.dtype(dtype).num)

    def __dealloc__(self):
        free(self.shapes)

    cdef list _given(self, inputs):
        """``inputs`` in input order when each is an ndarray of the signature, C-contiguous and aligned; else None."""
        cdef int k
        cdef object value
        if type(inputs) is dict:
            if len(<dict>inputs) != self.n:
                return None
            given = [(<dict>inputs).get(name) for name in self.names]
        elif self.n == 1:
            given = [inputs]                # (a list is the one input's data: the full checks convert it)
        elif (type(inputs) is list or type(inputs) is tuple) and len(inputs) == self.n:
            given = list(inputs)
        else:
            return None
        for k in range(self.n):
            value = given[k]
            if (type(value) is not np.ndarray or not same_shape(<cnp.ndarray>value, &self.shapes[k])
                    or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>value) or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>value)):
                return None
        return given

    def frozen(self, inputs):
        """``inputs`` (a dict by name, a list or tuple in input order, or the one input's array) as read-only views in
        input order when each is an ndarray of the signature's dtype and shape, C-contiguous and aligned; else
        None."""
        cdef list given = self._given(inputs)
        cdef cnp.ndarray view
        if given is None:
            return None
        for k in range(self.n):
            view = array_view(<cnp.ndarray>given[k], NULL, NULL)
            cnp.PyArray_CLEARFLAGS(view, cnp.NPY_ARRAY_WRITEABLE)
            given[k] = view
        return given

    def outputs(self, inputs, int threads):
        """The plan's outputs (arrays of their own) for ``inputs`` of the signature by its one native program (which
        writes none of its inputs), on up to ``threads`` threads; None without such a program or for other inputs."""
        if self.program is None:
            return None
        cdef list given = self._given(inputs)
        if given is None:
            return None
        values = self.program._call([given[i] for i in self.take], threads, NULL)
        return [values[k] for k in self.give]
