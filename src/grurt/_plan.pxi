# Included by _kernels.pyx. Plan: a ModelSpec packed once (weights in panels, biases folded,
# workspace sizes and size limits worked out), and the calls that run it.

cdef enum LayerKind:
    GRU_LAYER, DENSE_LAYER, ACTIVATION_LAYER, SCALE_LAYER, REVERSE_LAYER, LAST_STEP_LAYER, MERGE_LAYER,
    LAYER_NORM_LAYER, UNIT_NORM_LAYER, GLOBAL_POOL_LAYER, FLATTEN_LAYER,
    CONV_LAYER, POOL_LAYER, PAD_LAYER

cdef enum:
    CHOICE_SAMPLES = 5       # choose_split decides on the median of this many recent ratios

cdef struct ThreadChoice:
    # whether a layer's calls with threads > 1 pay (choose_split, _threads.pxi), for the last
    # shape seen: ratios (split time / one-thread time) of pairs of consecutive calls, one
    # each way, in a ring buffer
    long shape
    float ratios[CHOICE_SAMPLES]
    int n_ratios             # ratios taken (the ring position is n_ratios % CHOICE_SAMPLES)
    long last_ticks          # the duration of the last timed call, and its way
    int last_way, calls, next_probe, interval
    bint best                # whether the split wins, as of the last ratio


cdef struct LayerPlan:
    int kind
    int n_in, n_out          # features in and out
    grurt_act f, g           # GRU: gate and candidate activations; Dense/Activation: f
    int merge_mode           # Merge: a MergeMode
    float eps                # LayerNorm, UnitNorm: epsilon
    int pool_mode            # GlobalPool: GRURT_POOL_AVERAGE or GRURT_POOL_MAX
    float* W                 # Scale: a; LayerNorm: γ; Dense of fewer than GRURT_DENSE_FEW outputs: W row-major
    float* bias              # GRU: per direction, folded biases of the projection (xp_stride); Dense: b padded
                             # to whole panels; Scale: c; LayerNorm: β
    # GRU
    int D, H, lbr, reverse_only, return_sequences, fast_gates
    float clip               # 0 when off
    float* W_panels          # GRU, per direction: packed Wᵀ, the input projection; Dense: packed Wᵀ
    long W_panel_stride      # floats of packed input panels per direction
    int xp_stride            # floats per row of the projection: 3H padded to whole panels
    float* R_panels          # per direction: packed Rᵀ (lbr=1) or packed R_zrᵀ then R_hᵀ (lbr=0)
    float* R_init            # lbr=1, per direction: [0, 0, Rb_h] padded, the start of h·Rᵀ + Rb_h
    int panels_per_gate_set  # lbr=1: panels of 3H; lbr=0: panels of 2H
    int panels_h             # lbr=0: panels of H
    long panel_stride        # floats of packed recurrent panels per direction (float32)
    ThreadChoice choice      # threads > 1: whether splitting this layer pays (mutable, shared by callers)
    ThreadChoice pair_choice # threads > 1: whether pipelining it with the next GRU layer pays
    # layers over time
    grurt_conv conv          # Conv1D: packed weights and geometry (_conv.h)
    int span, stride         # Conv1D, Pool1D: input frames one output reads, frames between outputs
    int pad_left, pad_right  # Pool1D, ZeroPad1D: zero frames (Pool1D: unless pad_same)
    int pad_same             # Pool1D: 0 explicit, 1 same_upper, 2 same_lower
    int pool_max, pool_include_pad
    # how W_panels and R_panels are stored (a WeightMode; _lowp.h for bf16 and int8), in panels
    # of *_panel_bytes bytes, *_dir_panels per direction; int8: per packed column, a scale and
    # 128 · Σ q (the VNNI path's offset)
    int W_mode, R_mode
    long W_panel_bytes, R_panel_bytes
    int W_dir_panels, R_dir_panels
    float* W_scale
    float* R_scale
    int32_t* W_colsum
    int32_t* R_colsum
    size_t lowp_work_floats  # scratch of the reduced-precision products, per task (0 for float32)
    # GRU of H = 8, 16, 24, 32, fast gates, float32 panels: its kernel on this CPU (_gru_math.h,
    # grurt_gru_small_kernel), which runs a whole sequence with the state in registers; else NULL
    void* small


cdef inline size_t aligned(size_t floats) noexcept nogil:
    """``floats`` rounded up to whole cache lines."""
    return (floats + ALIGN_FLOATS - 1) // ALIGN_FLOATS * ALIGN_FLOATS


def out_of_memory(size_t nbytes, what):
    """The InputError for a failed allocation of ``nbytes`` bytes for ``what``: the call passed the
    size checks (grurt.model.MEMORY_LIMIT_BYTES), but the memory is not there."""
    from .errors import InputError
    from . import model
    return InputError(f"could not allocate {nbytes / 2**20:.1f} MiB for {what} (the machine or the process's "
                      f"limit has less free memory; grurt.model.MEMORY_LIMIT_BYTES is "
                      f"{model.MEMORY_LIMIT_BYTES / 2**30:.1f} GiB)")


cdef inline int n_panels(int n_out):
    return (n_out + GRURT_PANEL - 1) // GRURT_PANEL


def pack_groups(a, group):
    """(n_out, n_in) bf16 bits or int8 → the panel layout of _lowp.h: per panel of GRURT_PANEL
    rows, per group of ``group`` inputs (n_in padded with zeros), two halves of 16 lanes, each
    lane the group's ``group`` consecutive weights of one row."""
    n_out, n_in = a.shape
    groups = (n_in + group - 1) // group
    padded = np.zeros((n_panels(n_out) * GRURT_PANEL, groups * group), a.dtype)
    padded[:n_out, :n_in] = a
    return padded.reshape(-1, 2, GRURT_PANEL // 2, groups, group).transpose(0, 3, 1, 2, 4).ravel()


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
    # the size limits of a call (check_size): rows = batch × (steps + extra_frames) within
    # 32-bit BLAS indexing, and the bytes a call allocates per row and per sequence
    cdef readonly size_t max_rows, bytes_per_row, bytes_per_sequence
    # frames a buffer may hold beyond a call's input steps (layers over time: their padding and
    # a Conv1D's window), so that every frame count of a call is at most steps + extra_frames
    cdef readonly size_t extra_frames
    cdef readonly bint time_layers   # Conv1D, Pool1D or ZeroPad1D: frame counts change from layer to layer
    cdef readonly int n_convs

    def __cinit__(self):
        self.layers = NULL

    def __init__(self, spec, weights="float32", stored=None):
        """``weights``: the mode of the GRU weights (grurt.precision); ``stored`` maps (layer
        index, "W"/"R") to the arrays the mode stores, computed here when absent."""
        from .spec import GRU, Dense, Activation, Scale, Reverse, LastStep, Merge
        from .spec import LayerNorm, UnitNorm, GlobalPool, Flatten
        steps_folded = 1     # after a Flatten of T steps, B rows hold what B·T rows held
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
                p.W_panels = self._keep(pack_panels(np.asarray(layer.W, np.float32)))
                if p.n_out < GRURT_DENSE_FEW:     # dense(): W row-major for grurt_dense_few
                    p.W = self._keep(np.asarray(layer.W, np.float32))
                p.bias = self._keep(pad_rows(np.asarray(layer.b, np.float32), n_panels(p.n_out) * GRURT_PANEL))
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
                p.merge_mode = MERGE_CODES[layer.mode]
            elif isinstance(layer, LayerNorm):
                p.kind = LAYER_NORM_LAYER
                p.n_out = features
                p.W = self._keep(layer.gamma)
                p.bias = self._keep(layer.beta)
                p.eps = layer.epsilon
            elif isinstance(layer, UnitNorm):
                p.kind = UNIT_NORM_LAYER
                p.n_out = features
                p.eps = layer.epsilon
            elif isinstance(layer, GlobalPool):
                p.kind = GLOBAL_POOL_LAYER
                p.n_out = features
                p.pool_mode = GRURT_POOL_MAX if layer.mode == "max" else GRURT_POOL_AVERAGE
            elif isinstance(layer, Flatten):
                p.kind = FLATTEN_LAYER
                p.n_out = features * layer.steps
                steps_folded = layer.steps
            else:
                self._plan_time_layer(p, layer)
            features = p.n_out
            # buffers hold B·T rows of max_features: after a Flatten of T steps, B rows of T·F fit
            self.max_features = max(self.max_features, -(-features // steps_folded))
        self.input_size, self.output_size = spec.input_size, spec.output_size
        self.returns_sequence = spec.returns_sequence
        self.max_rows = (2**31 - 1) // max(self.max_features, 1)
        if not self.time_layers:
            # input copy, workspace and output per row; workspace per sequence (states, step scratch)
            self.bytes_per_row = 4 * (spec.input_size + self.workspace_floats(1, 1) - self.workspace_floats(1, 0)
                                      + spec.output_size)
            self.bytes_per_sequence = 4 * self.workspace_floats(1, 0)
            return
        # frame counts vary from layer to layer but never exceed the input's plus the padding the
        # layers add (spec.added_frames, bounded by grurt.limits.MAX_PADDING_FRAMES) and one
        # window (a Conv1D's scratch for a streaming step): bounds computed here with Python ints,
        # so that check_size bounds every size _sizes computes in C ints, before any of them
        from .spec import added_frames
        convs = [i for i in range(self.n_layers) if self.layers[i].kind == CONV_LAYER]
        self.extra_frames = added_frames(spec.layers) + max([self.layers[i].span for i in convs], default=0)
        # per row: input copy, two buffers of the widest layer, a Conv1D's padded input and product rows, output
        conv_row = max([self.layers[i].conv.C + 2 * self.layers[i].conv.ldy for i in convs], default=0)
        self.bytes_per_row = 4 * (spec.input_size + 2 * self.max_features + conv_row + spec.output_size)
        # per sequence: states, step scratch, alignment of each buffer
        self.bytes_per_sequence = 4 * (2 * self.max_step_scratch + self.state_width + 8 * ALIGN_FLOATS + 64)

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
        p.small = (grurt_gru_small_kernel(H) if p.fast_gates and p.W_mode == WEIGHTS_FLOAT32
                   and p.R_mode == WEIGHTS_FLOAT32 else NULL)
        self.max_step_scratch = max(self.max_step_scratch, step_scratch_floats(p))
        self.state_width += D * H

    cdef _plan_time_layer(self, LayerPlan* p, layer):
        """Conv1D, Pool1D, ZeroPad1D (anything else is not a layer the spec lets through)."""
        from .spec import Conv1D, Pool1D, ZeroPad1D
        self.time_layers = True
        if isinstance(layer, ZeroPad1D):
            p.kind = PAD_LAYER
            p.n_out = p.n_in
            p.pad_left, p.pad_right = layer.left, layer.right
            return
        p.span, p.stride = layer.span, layer.stride
        if isinstance(layer.padding, str):
            p.pad_same = 1 if layer.padding == "same_upper" else 2
        else:
            p.pad_left, p.pad_right = layer.padding
        if isinstance(layer, Pool1D):
            p.kind = POOL_LAYER
            p.n_out = p.n_in
            p.pool_max = layer.mode == "max"
            p.pool_include_pad = layer.count_include_pad
            return
        if not isinstance(layer, Conv1D):
            raise UnsupportedModelError(f"the kernels do not run {type(layer).__name__} layers")
        if self.n_convs == MAX_CONV_LAYERS:
            raise UnsupportedModelError(f"grurt supports at most {MAX_CONV_LAYERS} Conv1D layers per model")
        self.n_convs += 1
        p.kind = CONV_LAYER
        O, Cg, k = layer.W.shape
        G, d = layer.groups, layer.dilation
        p.n_out = O
        c = &p.conv
        c.C, c.O, c.k, c.stride, c.dilation, c.groups = p.n_in, O, k, layer.stride, d, G
        c.left, c.right, c.same = p.pad_left, p.pad_right, p.pad_same
        c.act = make_act(layer.activation)
        if G == 1:
            # products over the packed panels of _gru_math.h: rows of y as wide as whole panels
            c.ldy = n_panels(O) * GRURT_PANEL
            if d == 1:       # one product over the k·C floats of each window: W (O, k, C) -> (O, k·C)
                c.packed = self._keep(pack_panels(np.ascontiguousarray(layer.W.transpose(0, 2, 1)).reshape(O, k * Cg)))
                c.tap_stride = 0
            else:            # one product per tap j: W[:, :, j] (O, C)
                taps = [pack_panels(np.ascontiguousarray(layer.W[:, :, j])) for j in range(k)]
                c.packed = self._keep(np.concatenate(taps))
                c.tap_stride = taps[0].size
            c.bias_panels = self._keep(pad_rows(layer.b, c.ldy))
        else:
            # Wg[g][j][c][o'] = W[g·Og + o', c, j]: the loop runs over the output channels o' of group g
            c.ldy = O
            if Cg == 1 and O == G:       # depthwise: Wg[j][c] = W[c, 0, j], the loop runs over the channels
                c.Wg = self._keep(layer.W[:, 0, :].T)
            else:
                c.Wg = self._keep(layer.W.reshape(G, O // G, Cg, k).transpose(0, 3, 2, 1))
            c.bias = self._keep(layer.b)

    cdef void _sizes(self, int B, int T, size_t* frames, size_t* extra) noexcept nogil:
        """For a call on B sequences of T frames: ``frames``, the floats of the largest layer
        input or output (B × frames × features); ``extra``, the scratch of the layers over time
        (a padded sequence and product rows for Conv1D, also for a streaming step)."""
        cdef int i, steps = T, out
        cdef const LayerPlan* p
        frames[0] = <size_t>B * T * self.input_size
        extra[0] = 0
        for i in range(self.n_layers):
            p = &self.layers[i]
            out = layer_steps(p, steps)
            if p.kind == CONV_LAYER:
                extra[0] = max(extra[0], max(grurt_conv_scratch(&p.conv, steps), grurt_conv_scratch(&p.conv, p.span)))
            steps = out
            frames[0] = max(frames[0], <size_t>B * max(steps, 0) * p.n_out)

    cdef void layout(self, int B, int T, size_t* ping, size_t* time_scratch) noexcept nogil:
        """run_layers' ``ping`` and ``time_scratch`` for B sequences of T frames (the workspace
        of workspace_floats(B, T)); a workspace for more frames serves fewer with the same layout."""
        cdef size_t frames = <size_t>B * T * self.max_features, extra = 0
        if self.time_layers:
            self._sizes(B, T, &frames, &extra)
        ping[0], time_scratch[0] = aligned(frames), aligned(extra)

    cdef int output_steps(self, int T) noexcept nogil:
        """Frames of the output for T input frames (1 once the time axis is gone); < 1 when an
        input is too short for a window (Model.run explains which)."""
        cdef int i, steps = T
        for i in range(self.n_layers):
            steps = layer_steps(&self.layers[i], steps)
            if steps < 1:
                return steps
        return steps

    cdef _plan_reduced(self, LayerPlan* p, layer, int mode, int index, dict stored):
        """W_panels and R_panels (packed as float32 by _plan_gru) repacked in mode ``mode``.

        bf16 only pays where a product streams its weights from L2 or L3: AVX512_BF16 does as
        many multiply-adds per cycle as float32 FMAs (bench/lowp_bench.c). So bf16 weights that
        a product reads from L1 or reuses over many rows (the input projection, computed for 16
        steps at once; R of H < 64) are held as float32 panels of their bf16 values: the same
        numbers, multiplied exactly, at float32 speed. int8 (VNNI: three times the float32
        multiply-adds per cycle) is used everywhere."""
        from .precision import stored as stored_parts, from_bf16, WEIGHT_MODES
        cdef void* data
        cdef float* panels
        cdef float* scale
        cdef int32_t* colsum
        D, H = layer.num_directions, layer.hidden_size
        group = 2 if mode == WEIGHTS_BF16 else 4
        for which in ("W", "R"):
            parts = stored.get((index, which))
            if parts is None:
                parts = stored_parts(getattr(layer, which), WEIGHT_MODES[mode])
            splits = [(0, 3 * H)] if which == "W" or p.lbr else [(0, 2 * H), (2 * H, 3 * H)]
            if mode == WEIGHTS_BF16 and (which == "W" or H < BF16_MIN_RECURRENT_UNITS):
                values = from_bf16(parts[0])
                panels = self._keep(np.concatenate([pack_panels(values[d, lo:hi])
                                                    for d in range(D) for lo, hi in splits]))
                if which == "W":
                    p.W_panels = panels
                else:
                    p.R_panels = panels
                continue
            packed, scales, sums = [], [], []
            for d in range(D):
                for lo, hi in splits:
                    rows = parts[0][d, lo:hi]
                    packed.append(pack_groups(rows, group))
                    if mode == WEIGHTS_INT8:
                        width = n_panels(hi - lo) * GRURT_PANEL
                        scales.append(pad_rows(parts[1][d, lo:hi], width))
                        sums.append(np.pad(128 * rows.astype(np.int32).sum(axis=1), (0, width - (hi - lo))))
            data = self._keep_bytes(np.concatenate(packed))
            n_in = layer.input_size if which == "W" else H
            panel_bytes = (n_in + group - 1) // group * 128      # groups of 128 bytes per panel
            scale, colsum = NULL, NULL
            if mode == WEIGHTS_INT8:
                scale = self._keep(np.concatenate(scales))
                colsum = <int32_t*>self._keep_bytes(np.concatenate(sums).astype(np.int32))
            if which == "W":
                p.W_mode, p.W_panels, p.W_panel_bytes, p.W_scale, p.W_colsum = mode, <float*>data, panel_bytes, scale, colsum
            else:
                p.R_mode, p.R_panels, p.R_panel_bytes, p.R_scale, p.R_colsum = mode, <float*>data, panel_bytes, scale, colsum
        p.lowp_work_floats = (GRURT_LOWP_WORK_BYTES(max(layer.input_size, H)) + 4 * ALIGN_FLOATS) // 4

    def __dealloc__(self):
        free(self.layers)

    cpdef size_t workspace_floats(self, int batch, int steps):
        """Floats of scratch memory one ``run`` of this shape needs (beside input and output).

        The last batch * state_width floats hold the GRU states when the caller passes none.
        """
        cdef size_t rows = <size_t>batch * steps
        cdef size_t frames = rows * self.max_features, extra = 0
        if self.time_layers:
            self._sizes(batch, steps, &frames, &extra)
        return (2 * aligned(frames) + aligned(extra) + 2 * <size_t>batch * self.max_step_scratch
                + <size_t>batch * self.state_width)

    cdef size_t _bytes_needed(self, size_t batch, size_t steps) noexcept nogil:
        return batch * (steps + self.extra_frames) * self.bytes_per_row + batch * self.bytes_per_sequence

    cdef int _check_size(self, size_t batch, size_t steps, size_t memory_limit) noexcept nogil:
        # batch and steps each within max_rows first (extra_frames < 2**31), so that no product overflows
        if (batch > self.max_rows or steps > self.max_rows
                or batch * (steps + self.extra_frames) > self.max_rows):
            return TOO_MANY_ROWS
        if self._bytes_needed(batch, steps) > memory_limit:
            return TOO_MUCH_MEMORY
        return FITS

    def check_size(self, size_t batch, size_t steps, size_t memory_limit):
        """FITS if a call on ``batch`` sequences of ``steps`` steps (both >= 1) is within the
        limits, else the limit it exceeds: TOO_MANY_ROWS (batch × steps rows of features beyond
        32-bit BLAS indexing) or TOO_MUCH_MEMORY (bytes_needed beyond ``memory_limit``). The one
        statement of the limits: run_plain applies it, and so does Model._check_size."""
        return self._check_size(batch, steps, memory_limit)

    def split_ratios(self):
        """Per GRU layer, the recent ratios (split time / one-thread time, of pairs of
        consecutive calls) behind choose_split, for the last shape that layer ran with
        threads > 1, and whether it splits now."""
        result = []
        for i in range(self.n_layers):
            if self.layers[i].kind == GRU_LAYER:
                c = &self.layers[i].choice
                result.append(([c.ratios[k] for k in range(min(c.n_ratios, CHOICE_SAMPLES))], bool(c.best)))
        return result

    def small_kernels(self):
        """Per GRU layer, whether it has a small kernel on this CPU (LayerPlan.small)."""
        return [self.layers[i].small != NULL for i in range(self.n_layers) if self.layers[i].kind == GRU_LAYER]

    def bytes_needed(self, size_t batch, size_t steps):
        """The bytes a call allocates: its float32 input copy, workspace and output (for
        ``batch`` × ``steps`` within max_rows)."""
        return self._bytes_needed(batch, steps)

    def run(self, cnp.ndarray x, list states, cnp.ndarray lengths, cnp.ndarray out, int threads=1):
        """Run all layers on x (B, T, I) into out; GRU states (D, B, H) are updated in place.

        states is None (zero initial states, final states discarded) or one array per GRU
        layer; lengths is None or int32 (B,). All arrays are C-contiguous float32 of the right
        shapes.
        ``threads`` > 1 lets each GRU layer run on up to that many threads of the worker pool
        (run_gru, _threads.pxi): its directions and batch slices, the units of its steps, or
        two stacked layers pipelined, whichever applies, when that is measured to pay.

        Returns the number of threads that ran the GRU layer with the most weights (the first
        of equals; 1 without GRU layers): less than asked when the layer has fewer tasks, the
        machine fewer CPUs, other calls hold the workers, the split was measured not to pay,
        or the caller finished the work before a worker woke up. A batch of more than
        slice_rows (64) sequences runs in slices, each through every layer (run_slices): then
        the number of threads that took slices.
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
                or self._check_size(<size_t>B, <size_t>T, memory_limit) != FITS):
            return None
        # (B, T, F) or (B, F); without the batch axis for one (T, I) sequence
        cdef cnp.npy_intp out_shape[3]
        cdef int out_ndim = 0
        if ndim == 3:
            out_shape[out_ndim] = B
            out_ndim += 1
        if self.returns_sequence:
            out_shape[out_ndim] = T if not self.time_layers else self.output_steps(<int>T)
            if out_shape[out_ndim] < 1:
                return None          # too short for a window: Model.run names the layer
            out_ndim += 1
        elif self.time_layers and self.output_steps(<int>T) < 1:
            return None
        out_shape[out_ndim] = self.output_size
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(out_ndim + 1, out_shape, cnp.NPY_FLOAT32, 0)
        self._run(<int>B, <int>T, a, None, None, out, threads)
        return out

    cdef int _run(self, int B, int T, cnp.ndarray x, list states, cnp.ndarray lengths, cnp.ndarray out,
                  int threads) except -1:
        """Every layer on x into out, with a workspace allocated for the call; returns run's
        thread count. A batch of more than slice_rows sequences runs in slices (run_slices)."""
        cdef float* state_ptrs[MAX_GRU_LAYERS]
        cdef int i, n_grus = 0
        if states is not None:
            for i in range(len(states)):
                state_ptrs[i] = <float*>cnp.PyArray_DATA(states[i])
        cdef const int* length_ptr = NULL if lengths is None else <int*>cnp.PyArray_DATA(lengths)
        cdef const float* x_ptr = <float*>cnp.PyArray_DATA(x)
        cdef float* out_ptr = <float*>cnp.PyArray_DATA(out)
        cdef float** given = NULL if states is None else state_ptrs
        cdef int used
        if 0 < slice_rows < B:
            used = run_slices(self, B, T, x_ptr, given, length_ptr, out_ptr, <size_t>cnp.PyArray_SIZE(out) // B,
                              threads)
            if used == 0:
                raise out_of_memory(self.workspace_floats(slice_rows, T) * sizeof(float),
                                    f"the workspace of a slice of {slice_rows} sequences of {T} steps")
            return used
        cdef size_t work_floats = self.workspace_floats(B, T) + ALIGN_FLOATS
        cdef float* raw
        cdef float* work
        cdef float* own_states
        cdef size_t ping, extra
        with nogil:
            raw = <float*>malloc(work_floats * sizeof(float))
        if raw == NULL:
            raise out_of_memory(work_floats * sizeof(float), f"the workspace of a call on {B} sequences of {T} steps")
        work = raw + (-(<size_t>raw) // 4) % ALIGN_FLOATS
        self.layout(B, T, &ping, &extra)
        if states is None:      # zero initial states, in the workspace's last B·state_width floats
            own_states = work + self.workspace_floats(B, T) - <size_t>B * self.state_width
            memset(own_states, 0, <size_t>B * self.state_width * sizeof(float))
            for i in range(self.n_layers):
                if self.layers[i].kind == GRU_LAYER:
                    state_ptrs[n_grus] = own_states
                    own_states += <size_t>B * self.layers[i].D * self.layers[i].H
                    n_grus += 1
        try:
            with nogil:
                used = run_layers(self.layers, self.n_layers, B, T, x_ptr, state_ptrs, length_ptr, out_ptr,
                                  work, ping, extra, NULL, threads, False)
        finally:
            free(raw)
        return used


# ---- large batches, in slices ----------------------------------------------------------------

cdef struct SliceJob:
    # a batch of B sequences (B > slice_rows) cut into n_slices slices of `rows` (the last one
    # fewer), each run through every layer before the next; slices are claimed one at a time
    const LayerPlan* layers
    int n_layers, B, T, n_in, n_slices, rows, next
    const float* x
    float** states           # the caller's (D, B, H) state per GRU layer, or NULL: zero states
    const int* lengths
    float* out
    size_t out_per_sequence
    float* work              # per thread: `slot_floats` (workspace_floats(rows, T), then the slice's states)
    size_t slot_floats, work_floats, ping, extra
    int n_grus
    int D[MAX_GRU_LAYERS]
    int H[MAX_GRU_LAYERS]


cdef void run_slice(SliceJob* job, int slot, int k) noexcept nogil:
    """Slice k of the batch on the workspace of `slot`: its states gathered into (D, n, H)
    arrays (zeros without states), every layer on one thread, the states scattered back."""
    cdef int b0 = k * job.rows, b1 = min(job.B, (k + 1) * job.rows)
    cdef int n = b1 - b0, g, d
    cdef float* work = job.work + <size_t>slot * job.slot_floats
    cdef float* ptrs[MAX_GRU_LAYERS]
    cdef float* state = work + job.work_floats
    cdef size_t size
    for g in range(job.n_grus):
        ptrs[g] = state
        size = <size_t>n * job.H[g]
        for d in range(job.D[g]):
            if job.states == NULL:
                memset(state + d * size, 0, size * sizeof(float))
            else:
                memcpy(state + d * size, job.states[g] + (<size_t>d * job.B + b0) * job.H[g], size * sizeof(float))
        state += job.D[g] * size
    run_layers(job.layers, job.n_layers, n, job.T, job.x + <size_t>b0 * job.T * job.n_in, ptrs,
               NULL if job.lengths == NULL else job.lengths + b0, job.out + b0 * job.out_per_sequence,
               work, job.ping, job.extra, NULL, 1, False)
    if job.states != NULL:
        for g in range(job.n_grus):
            size = <size_t>n * job.H[g]
            for d in range(job.D[g]):
                memcpy(job.states[g] + (<size_t>d * job.B + b0) * job.H[g], ptrs[g] + d * size, size * sizeof(float))


cdef void slices_job(void* arg, int slot) noexcept nogil:
    cdef SliceJob* job = <SliceJob*>arg
    cdef int k
    while True:
        k = grurt_claim(&job.next)
        if k >= job.n_slices:
            return
        run_slice(job, slot, k)


cdef int run_slices(Plan plan, int B, int T, const float* x, float** states, const int* lengths, float* out,
                    size_t out_per_sequence, int threads) noexcept:
    """A batch of B > slice_rows sequences in slices of at most slice_rows, each run through
    every layer before the next: the workspace of a slice (its rows between layers, its input
    projections) stays in cache whatever B is, and the memory a call takes does not grow with
    it. Rows are independent (every kernel treats each row alike), so the results are bit for
    bit those of one pass. With ``threads`` > 1 the threads of the worker pool claim slices,
    each with a workspace of its own. Returns the threads that ran, 0 if out of memory."""
    cdef SliceJob job
    cdef int i, used = 1
    job.layers, job.n_layers, job.B, job.T, job.n_in = plan.layers, plan.n_layers, B, T, plan.input_size
    # whole slices of slice_rows (a multiple of the products' 8-row tiles by default: a slice of
    # 63 rows ran 40% slower per row than one of 64), the last one what is left
    job.rows = slice_rows
    job.n_slices = (B + slice_rows - 1) // slice_rows
    job.next = 0
    job.x, job.states, job.lengths, job.out, job.out_per_sequence = x, states, lengths, out, out_per_sequence
    job.n_grus = 0
    for i in range(plan.n_layers):
        if plan.layers[i].kind == GRU_LAYER:
            job.D[job.n_grus], job.H[job.n_grus] = plan.layers[i].D, plan.layers[i].H
            job.n_grus += 1
    job.work_floats = aligned(plan.workspace_floats(job.rows, T))
    job.slot_floats = aligned(job.work_floats + <size_t>job.rows * plan.state_width)
    plan.layout(job.rows, T, &job.ping, &job.extra)
    cdef int workers = 1 if threads <= 1 else min(min(threads, MAX_THREADS), min(job.n_slices, grurt_pool_cpus()))
    cdef void* raw
    with nogil:
        raw = malloc((job.slot_floats * workers + ALIGN_FLOATS) * sizeof(float))
        if raw != NULL:
            job.work = <float*>raw + (-(<size_t>raw) // 4) % ALIGN_FLOATS
            if workers > 1:
                used = grurt_pool_run_wait(workers, slices_job, &job, split_policy > 0)
            else:
                for i in range(job.n_slices):
                    run_slice(&job, 0, i)
            free(raw)
    return used if raw != NULL else 0


cdef int layer_steps(const LayerPlan* p, int steps) noexcept nogil:
    """Frames out of layer ``p`` for ``steps`` frames in (0 when the input is shorter than its window)."""
    cdef int left = p.pad_left, right = p.pad_right
    if p.kind == CONV_LAYER or p.kind == POOL_LAYER:
        if p.pad_same:
            grurt_same_pads(steps, p.stride, p.span, p.pad_same == 2, &left, &right)
        return grurt_window_steps(steps, left, right, p.span, p.stride)
    if p.kind == PAD_LAYER:
        return steps + left + right
    if (p.kind == LAST_STEP_LAYER or p.kind == GLOBAL_POOL_LAYER or p.kind == FLATTEN_LAYER
            or (p.kind == GRU_LAYER and not p.return_sequences)):
        return 1
    return steps
