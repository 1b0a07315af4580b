"""The native executor: runs of a plan's steps as one call of C without the GIL.

After :func:`grurt.tensor_passes.optimize`, :func:`native_runs` finds each maximal run of consecutive steps whose
ops have a C form (below) and replaces it by one step of a ``_kernels.NativeProgram``. Python's cost per step
(the plan's loop, the op's wrapper, numpy's allocation of its output: 1-2 µs) is paid once per run instead; on
a graph of small steps (DeepFilterNet at one frame: 73 steps of 0.1-15 µs besides its GRUs) that is most of what is
not arithmetic. A step without a C form stays a Python step between two runs.

The C forms, each computing what the Python step computes with the same kernel or the same IEEE operations
(the same bits):

* **views** (Reshape, Flatten, Squeeze, Unsqueeze; a Transpose, Slice or Split part that numpy would return as
  a view: C-contiguous) are another name for their input's bytes, at no cost;
* **copies** (Transpose, Slice, Split, Concat, the history rows of ``Concat+Slice``, a GRU's layout changes) are
  strided loops (``_native.h``), the planner having merged the dims that step as one;
* **arithmetic**: Add, Sub, Mul, Div of float32 tensors with broadcasting, in place where the Python step is;
  Relu, Sigmoid, Tanh (the kernels' activations, as the Python steps compute them); Softmax and LogSoftmax over
  contiguous rows (the kernels');
* **kernels**: a Conv or ConvTranspose on the C kernel (``Conv2d``, fused activation, on a history), a grouped
  linear (``GroupedLinear``), a packed Gemm of one product (``Linear``), a GRU or ``grurt.Chain`` that calls its
  kernels' plan directly (``ops.recurrent.Direct``, at most ``MAX_BATCH`` sequences).

Memory: every size and byte offset is computed here with Python ints. The tensors a run hands out (read by a
later step, or outputs of the plan: copied into an array of their own where they would be views) are arrays made
per call, as the Python steps' are; the others live in one
workspace allocated per call, their offsets packed by liveness (a tensor's bytes are reused once its last
reader has run), every offset 64-byte aligned; the kernels' scratch follows. A plan is shared by threads: no
buffer belongs to it. ``ENABLED`` (the environment's ``GRURT_NATIVE=0`` sets it off) decides when a plan is made
whether it gets native runs; the Python steps stay the fallback and the oracle (tests/test_tensor_native.py).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

import numpy as np

from . import _kernels
from ._kernels import _memory_limit
from .errors import InputError
from .ops import BOOL, FLOAT, INT, REGISTRY
from .ops.conv import ACTIVATIONS
from .ops.recurrent import CALL, Direct, _gru_run
from .tensor_graph import TensorNode
from .tensor_passes import (_binary_run, _grouped_run, _history_conv_run, _history_slice_run, _linear_run,
                            _unary_run)

#: Whether plans made from now on run their runs of C-form steps natively (tests compare both ways).
ENABLED = os.environ.get("GRURT_NATIVE", "1") != "0"
#: A run of fewer steps stays Python's (one step gains nothing from a native call).
MIN_STEPS = 2
#: A GRU or Chain of more sequences stays Python's (its kernels then run the batch in slices of 64: less memory).
MAX_BATCH = 64
#: Every tensor of the workspace starts on a cache line.
ALIGN = 64
_BINARY_CODES = {np.add: 0, np.subtract: 1, np.multiply: 2, np.divide: 3}
_DTYPES = (FLOAT, INT, BOOL)


def native_runs(steps, known: dict, results) -> tuple:
    """``steps`` (a plan's, after ``optimize``) with each maximal run of at least MIN_STEPS steps that have a C
    form as one step of a NativeProgram; ``known``: the Value of each slot; ``results``: the plan's output slots."""
    build = _Run(known)
    forms = [_form(step, build) for step in steps]
    result, i = [], 0
    while i < len(steps):
        j = i
        while j < len(steps) and forms[j] is not None:
            j += 1
        if j - i >= MIN_STEPS:
            result.append(build.step(steps[i:j], forms[i:j], set(results)))
        else:
            j = max(j, i + 1)
            result.extend(steps[i:j])
        i = j
    return tuple(result)


def _native_run(program, inputs):
    return program.run(inputs, CALL.threads)


# ---- the forms: a step as operations on tensors (slots, or temporaries of the run) ----

class _Op:
    """An operation of a run: the tensors it ``writes`` and ``reads``, and ``build(ref)`` its NativeStep (``ref``:
    a tensor -> (buffer, byte offset))."""

    __slots__ = ("writes", "reads", "build")

    def __init__(self, writes, reads, build):
        self.writes, self.reads, self.build = tuple(writes), tuple(reads), build


class _Alias:
    """Tensor ``out`` is the bytes of ``src`` from byte ``offset`` on (a view, an op in place)."""

    __slots__ = ("out", "src", "offset")

    def __init__(self, out, src, offset=0):
        self.out, self.src, self.offset = out, src, offset


def _c_strides(shape, itemsize) -> tuple:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def _contiguous(shape, strides, itemsize) -> bool:
    """Whether numpy flags an array of this shape and these strides C-contiguous (dims of 1 have any stride)."""
    step = itemsize
    for d, s in zip(reversed(shape), reversed(strides)):
        if d != 1:
            if s != step:
                return False
            step *= d
    return True


def _merged(shape, *strides):
    """``shape`` and the operands' ``strides`` with dims of 1 dropped and adjacent dims merged where every operand
    steps through the two as through one; (None, None) beyond the C loops' dims."""
    dims = [(d, [s[i] for s in strides]) for i, d in enumerate(shape) if d != 1] or [(1, [0] * len(strides))]
    merged = [dims[0]]
    for d, st in dims[1:]:
        outer, outer_st = merged[-1]
        if all(o == s * d for o, s in zip(outer_st, st)):
            merged[-1] = (outer * d, st)
        else:
            merged.append((d, st))
    if len(merged) > _kernels.NATIVE_DIMS:
        return None, None
    return tuple(d for d, _ in merged), tuple(tuple(st[k] for _, st in merged) for k in range(len(strides)))


class _Run:
    """What the forms ask while a plan is made: tensors' shapes and dtypes (slots and temporaries), new
    temporaries and constants; then :meth:`step` makes the native step of a run."""

    def __init__(self, known):
        self.known = known
        self.temps: Dict[tuple, tuple] = {}          # temporary -> (shape, dtype, constant array or None)

    def shape(self, key):
        return self.known[key].shape if type(key) is int else self.temps[key][0]

    def dtype(self, key):
        return self.known[key].dtype if type(key) is int else self.temps[key][1]

    def const(self, key):
        return self.known[key].const if type(key) is int else self.temps[key][2]

    def temp(self, shape, dtype, array=None):
        key = ("temp", len(self.temps))
        self.temps[key] = (tuple(shape), np.dtype(dtype), array)
        return key

    def nbytes(self, key) -> int:
        return math.prod(self.shape(key)) * self.dtype(key).itemsize

    # the operations

    def copy(self, dst, dst_offset, src, src_offset, shape, src_strides, dst_strides=None):
        """dst (at a byte offset) = src (at one) over ``shape`` at these strides (dst's: C order by default)."""
        item = self.dtype(src).itemsize
        dst_strides = _c_strides(shape, item) if dst_strides is None else dst_strides
        merged, (a, y) = _merged(shape, src_strides, dst_strides)
        if merged is None:
            return None
        return _Op((dst,), (src,), lambda ref: _kernels.CopyStep(ref(dst, dst_offset), ref(src, src_offset), item,
                                                                 merged, a, y))

    def zero(self, dst):
        size = self.nbytes(dst)
        return _Op((dst,), (), lambda ref: _kernels.ZeroStep(ref(dst), size))

    def step(self, steps, forms, results):
        """The native step of the run ``steps`` (their forms: lists of operations); ``results``: the plan's outputs."""
        return _Program(self, steps, forms, results).step(results)


def _out(outs, k):
    return next((slot for index, slot in outs if index == k), None)


def _view_form(shape, ins, outs, build):
    return [_Alias(outs[0][1], ins[0])]


def _transpose_form(perm, ins, outs, build):
    x, y = ins[0], outs[0][1]
    shape, item = build.shape(x), build.dtype(x).itemsize
    strides = _c_strides(shape, item)
    out_shape, src = tuple(shape[p] for p in perm), tuple(strides[p] for p in perm)
    if _contiguous(out_shape, src, item):              # numpy's transpose is a view, and contiguous() keeps it
        return [_Alias(y, x)]
    return [build.copy(y, 0, x, 0, out_shape, src)]


def _part(build, x, y, index):
    """y = x[index] (per axis a range) as numpy's ``contiguous(x[...])`` gives it: a view when C-contiguous."""
    item = build.dtype(x).itemsize
    strides = _c_strides(build.shape(x), item)
    offset = sum(r.start * s for r, s in zip(index, strides))
    shape, src = tuple(len(r) for r in index), tuple(r.step * s for r, s in zip(index, strides))
    if _contiguous(shape, src, item):
        return _Alias(y, x, offset)
    return build.copy(y, 0, x, offset, shape, src)


def _slice_form(slices, ins, outs, build):
    shape = build.shape(ins[0])
    return [_part(build, ins[0], outs[0][1], [range(*part.indices(d)) for part, d in zip(slices, shape)])]


def _split_form(ctx, ins, outs, build):
    axis, cuts = ctx
    shape = build.shape(ins[0])
    bounds = [0, *cuts, shape[axis]]
    ops = []
    for k, slot in outs:
        index = [range(d) for d in shape]
        index[axis] = range(bounds[k], bounds[k + 1])
        ops.append(_part(build, ins[0], slot, index))
    return ops


def _concat_form(axis, ins, outs, build):
    y = outs[0][1]
    out_shape, item = build.shape(y), build.dtype(y).itemsize
    strides = _c_strides(out_shape, item)
    ops, start = [], 0
    for x in ins:
        shape = build.shape(x)
        if shape[axis]:
            ops.append(build.copy(y, start * strides[axis], x, 0, shape, _c_strides(shape, item), strides))
        start += shape[axis]
    return ops


def _history_slice_form(ctx, ins, outs, build):
    """Rows [start, stop) along axis 2 of the concatenation of the history and the frames (``Concat+Slice``)."""
    hh, start, stop = ctx
    y = outs[0][1]
    out_shape = build.shape(y)
    strides = _c_strides(out_shape, 4)
    ops, row = [], 0
    for x, first, last in ((ins[0], start, min(stop, hh)), (ins[1], max(start, hh) - hh, stop - hh)):
        if last > first:
            shape = build.shape(x)
            src = _c_strides(shape, 4)
            ops.append(build.copy(y, row * strides[2], x, first * src[2], out_shape[:2] + (last - first, shape[3]),
                                  src, strides))
            row += last - first
    return ops


def _activation(build, y, x, code):
    n = math.prod(build.shape(y))
    return _Op((y,), (x,), lambda ref: _kernels.ActivationStep(ref(y), ref(x), n, code))


def _unary_form(ctx, ins, outs, build):
    code, _ = ctx
    y = outs[0][1]
    return [_Alias(y, ins[0]), _activation(build, y, y, code)]


def _activation_form(op):
    code = _kernels.ACTIVATION_CODES[ACTIVATIONS[op]]
    return lambda ctx, ins, outs, build: [_activation(build, outs[0][1], ins[0], code)]


def _binary(build, y, a, b, op):
    if any(build.dtype(k) != FLOAT for k in (y, a, b)):
        return None
    out_shape = build.shape(y)
    strides = []
    for x in (a, b):
        shape = build.shape(x)
        own = _c_strides(shape, 4)
        lead = len(out_shape) - len(shape)
        strides.append(tuple(0 if i < lead or shape[i - lead] == 1 else own[i - lead] for i in range(len(out_shape))))
    merged, (sa, sb, sy) = _merged(out_shape, *strides, _c_strides(out_shape, 4))
    if merged is None:
        return None
    return _Op((y,), (a, b), lambda ref: _kernels.BinaryStep(ref(y), ref(a), ref(b), op, merged, sa, sb, sy))


def _binary_form(op):
    return lambda ctx, ins, outs, build: [_binary(build, outs[0][1], ins[0], ins[1], op)]


def _in_place_form(ctx, ins, outs, build):
    ufunc, into = ctx
    y = outs[0][1]
    return [_Alias(y, ins[into]), _binary(build, y, ins[0], ins[1], _BINARY_CODES[ufunc])]


def _softmax_form(log):
    def form(axis, ins, outs, build):
        """A Softmax (LogSoftmax) whose rows are contiguous (only dims of 1 after its axis): the kernel's, as the
        Python step runs it."""
        shape = build.shape(ins[0])
        if any(d != 1 for d in shape[axis + 1:]):
            return None
        y, x, n = outs[0][1], ins[0], shape[axis]
        rows = math.prod(shape) // n
        return [_Op((y,), (x,), lambda ref: _kernels.SoftmaxStep(ref(y), ref(x), rows, n, log))]
    return form


def _conv_form(ctx, ins, outs, build):
    if ctx.native is None:
        return None
    y, x, conv = outs[0][1], ins[0], ctx.native
    return [_Op((y,), (x,), lambda ref: _kernels.ConvStep(ref(y), ref(x), conv))]


def _history_conv_form(conv, ins, outs, build):
    y, hist, x = outs[0][1], ins[0], ins[1]
    rows = build.shape(hist)[2]
    return [_Op((y,), (hist, x), lambda ref: _kernels.ConvStep(ref(y), ref(x), conv, ref(hist), rows))]


def _grouped_form(kernel, ins, outs, build):
    y, x = outs[0][1], ins[0]
    return [_Op((y,), (x,), lambda ref: _kernels.GroupedStep(ref(y), ref(x), kernel))]


def _linear_form(ctx, ins, outs, build):
    linear, blocks = ctx
    if len(blocks) != 1:
        return None
    y, x = outs[0][1], ins[0]
    rows = math.prod(build.shape(x)[:-1])
    return [_Op((y,), (x,), lambda ref: _kernels.DenseStep(ref(y), ref(x), linear, rows))]


def _recurrent(build, direct, x, given, y, states):
    """``Direct.run``: each state initialized (a copy of the given one, its learned start or zeros), then the kernels'
    plan on x into y, the states updated in place. ``given``: per GRU layer, a tensor (D, B, H) or None."""
    batch, rows = direct.out[0], direct.rows
    if batch > MAX_BATCH or len(states) > _kernels.MAX_GRU_LAYERS:
        return None
    ops = []
    for start, source, state in zip(direct.starts, given, states):
        if source is None and type(start) is tuple:
            ops.append(build.zero(state))
        else:
            source = build.temp(start.shape, FLOAT, start) if source is None else source
            shape = build.shape(state)
            ops.append(build.copy(state, 0, source, 0, shape, _c_strides(shape, 4)))
    kernels, splits = direct.kernels, rows > 1
    ops.append(_Op((y, *states), (x, *states), lambda ref: _kernels.RecurrentStep(
        ref(y), ref(x), [ref(s) for s in states], kernels, batch, rows // batch, splits)))
    return ops


def _gru_form(ctx, ins, outs, build):
    """An ONNX GRU on its Model's kernels (``Direct``): X (T, B, I) (layout 0) read as (B, T, I), the state (D, B, H)
    and Y (B, T, D·H) moved to and from ONNX's layouts by copies where that changes the bytes."""
    if type(ctx) is not Direct or len(ctx.out) != 3:
        return None
    layout, (batch, steps, width) = ctx.layout, ctx.out
    d = ctx.starts[0][0] if type(ctx.starts[0]) is tuple else ctx.starts[0].shape[0]
    hidden = width // d
    ops, x = [], ins[0]
    if layout == 0 and batch > 1 and steps > 1:             # (T, B, I) -> (B, T, I)
        shape = build.shape(x)
        x = build.temp((shape[1], shape[0], shape[2]), FLOAT)
        ops.append(build.copy(x, 0, ins[0], 0, build.shape(x), _permuted(shape, (1, 0, 2))))
    # the kernels' y (B, T, D, H) is Y (layout 1) or, permuted (1, 2, 0, 3), Y (T, D, B, H) (layout 0)
    y, y_out = _out(outs, 0), None
    kernel_y = (batch, steps, d, hidden)
    if y is None or (layout == 0 and not _contiguous(*_permutation(kernel_y, (1, 2, 0, 3)))):
        y, y_out = build.temp(kernel_y, FLOAT), y
    # the state (D, B, H) is Y_h (layout 0) or, permuted (1, 0, 2), Y_h (B, D, H) (layout 1)
    state, h_out = _out(outs, 1), None
    if state is None or (layout == 1 and not _contiguous(*_permutation((d, batch, hidden), (1, 0, 2)))):
        state, h_out = build.temp((d, batch, hidden), FLOAT), state
    h0 = ins[5] if len(ins) > 5 and ins[5] else None
    if h0 is not None and layout == 1:
        moved = build.temp((d, batch, hidden), FLOAT)
        ops.append(build.copy(moved, 0, h0, 0, (d, batch, hidden), _permuted(build.shape(h0), (1, 0, 2))))
        h0 = moved
    ops += _recurrent(build, ctx, x, [h0], y, [state]) or [None]
    if y_out is not None:
        ops.append(build.copy(y_out, 0, y, 0, build.shape(y_out), _permuted(kernel_y, (1, 2, 0, 3))))
    if h_out is not None:
        ops.append(build.copy(h_out, 0, state, 0, build.shape(h_out), _permuted((d, batch, hidden), (1, 0, 2))))
    return ops


def _permutation(shape, perm):
    """(shape, strides) of a C-contiguous float32 array of ``shape`` transposed by ``perm``, and the itemsize."""
    return tuple(shape[p] for p in perm), _permuted(shape, perm), 4


def _permuted(shape, perm):
    strides = _c_strides(shape, 4)
    return tuple(strides[p] for p in perm)


def _chain_form(ctx, ins, outs, build):
    """A grurt.Chain called on its kernels (the "direct" way, float32 frames): x (B, T, I), a state (D, B, H) per GRU
    layer in and out."""
    if ctx.way != "direct" or ctx.model._table is not None:
        return None
    grus = ctx.grus
    given = [slot if slot else None for slot in ins[2:2 + grus]] + [None] * (grus - len(ins[2:2 + grus]))
    y = _out(outs, 0)
    y = build.temp(ctx.direct.out, FLOAT) if y is None else y
    states = []
    for g, start in enumerate(ctx.direct.starts):
        state = _out(outs, 1 + g)
        states.append(build.temp(start if type(start) is tuple else start.shape, FLOAT) if state is None else state)
    return _recurrent(build, ctx.direct, ins[0], given, y, states)


def _forms() -> dict:
    forms = {REGISTRY[op].run: _view_form for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")}
    forms.update({REGISTRY["Transpose"].run: _transpose_form, REGISTRY["Slice"].run: _slice_form,
                  REGISTRY["Split"].run: _split_form, REGISTRY["Concat"].run: _concat_form,
                  _history_slice_run: _history_slice_form, _unary_run: _unary_form, _binary_run: _in_place_form,
                  REGISTRY["Conv"].run: _conv_form, REGISTRY["ConvTranspose"].run: _conv_form,
                  _history_conv_run: _history_conv_form, _grouped_run: _grouped_form, _linear_run: _linear_form,
                  _gru_run: _gru_form, REGISTRY["grurt.Chain"].run: _chain_form,
                  REGISTRY["Softmax"].run: _softmax_form(False), REGISTRY["LogSoftmax"].run: _softmax_form(True)})
    forms.update({REGISTRY[op].run: _activation_form(op) for op in ACTIVATIONS})
    forms.update({REGISTRY[op].run: _binary_form(code) for op, code in (("Add", 0), ("Sub", 1), ("Mul", 2),
                                                                        ("Div", 3))})
    return forms


FORMS = _forms()
_ELEMENTWISE = frozenset(REGISTRY[op].run for op in ("Add", "Sub", "Mul", "Div", "Softmax", "LogSoftmax",
                                                     *ACTIVATIONS)) | {_unary_run}


def _form(step, build) -> Optional[list]:
    """The operations of ``step``, or None when it has no C form (or a tensor it touches is empty, or not of a dtype
    the runs hold)."""
    run, ctx, ins, outs, _, _ = step
    form = FORMS.get(run)
    if form is None or not outs:
        return None
    for slot in (*ins, *(s for _, s in outs)):
        if slot and (build.known[slot].dtype not in _DTYPES or build.known[slot].size == 0):
            return None
    if run in _ELEMENTWISE and any(build.known[s].dtype != FLOAT for s in (*ins, *(s for _, s in outs))):
        return None
    ops = form(ctx, ins, outs, build)
    return None if ops is None or any(op is None for op in ops) else ops


# ---- a run as a NativeProgram ----

class _Program:
    """The buffers of a run's tensors: each tensor is bytes of a root (its own, or those of the tensor it is a
    view of, at an offset); a root is an input of the run (a slot it reads before any of its steps writes it), a
    constant, an array made per call (a root of a tensor the run hands out, its shape that of a tensor it hands
    out whole), or a place in the workspace. A plan output that would be a view (of an input, a constant, part of
    a tensor) is copied into an array of its own after the step that makes it: every output of the plan a run
    hands out is then an array of its own, as ``Plan.run`` gives them (the bytes of a live output are not written
    again: the in-place rewrites write only into a tensor no live one shares memory with)."""

    def __init__(self, build: _Run, steps, forms, results):
        self.build, self.steps = build, steps
        freed = {slot for step in steps for slot in step[4]}
        produced = [slot for step in steps for _, slot in step[3]]
        self.frees = tuple(sorted(slot for slot in freed if slot not in set(produced)))
        self.outputs = [slot for slot in produced if slot not in freed]
        self._analyze([(k, op) for k, form in enumerate(forms) for op in form])
        self.given = {}                            # a plan output copied -> its copy
        for slot in self.outputs:
            if slot in results and not self._whole(slot):
                self.given[slot] = build.temp(build.shape(slot), build.dtype(slot))
        if self.given:
            owned = []
            for k, (form, step) in enumerate(zip(forms, steps)):
                owned += [(k, op) for op in form]
                for _, slot in step[3]:
                    if slot in self.given:
                        shape = build.shape(slot)
                        owned.append((k, build.copy(self.given[slot], 0, slot, 0, shape,
                                                    _c_strides(shape, build.dtype(slot).itemsize))))
            self._analyze(owned)

    def _analyze(self, owned_ops):
        self.ops = [op for _, op in owned_ops]
        self.owners = tuple(k for k, op in owned_ops if not isinstance(op, _Alias))
        self.root: Dict[object, tuple] = {}        # tensor -> (root, byte offset)
        self.inputs: List[object] = []             # roots that are the run's inputs, in order
        self.constants: List[object] = []
        self.written = set()                       # inputs an operation writes into (in place)
        self.span: Dict[object, list] = {}         # internal root -> [first, last] operation touching it
        for index, op in enumerate(self.ops):
            if isinstance(op, _Alias):
                root, offset = self._read(op.src, index)
                self.root[op.out] = (root, offset + op.offset)
                continue
            for key in op.reads:
                self._read(key, index)
            for key in op.writes:
                if key not in self.root:
                    self.root[key] = (key, 0)
                    self.span[key] = [index, index]
                    continue
                root = self.root[key][0]
                if root in self.constants:
                    raise AssertionError(f"a native run writes into constant {root}")
                if root in self.span:
                    self.span[root][1] = index
                else:
                    self.written.add(root)

    def _read(self, key, index):
        if key not in self.root:
            if type(key) is int and self.build.const(key) is None:
                self.inputs.append(key)
            elif self.build.const(key) is not None:
                self.constants.append(key)
            else:
                raise AssertionError(f"a native run reads tensor {key} before it is written")
            self.root[key] = (key, 0)
        root = self.root[key][0]
        if root in self.span:
            self.span[root][1] = index
        return self.root[key]

    def _whole(self, key) -> bool:
        """Whether tensor ``key`` is the whole of an internal root (an array of its own when it is handed out)."""
        root, offset = self.root[key]
        return root in self.span and offset == 0 and self.build.nbytes(key) == self.build.nbytes(root)

    def step(self, results):
        build = self.build
        handed = [self.given.get(slot, slot) for slot in self.outputs]
        claim = {}                                 # an escaping root -> the tensor whose shape its array takes
        for key in sorted(handed, key=lambda k: k not in results):
            if self._whole(key):
                claim.setdefault(self.root[key][0], key)
        escaping = list(dict.fromkeys(self.root[key][0] for key in handed if self.root[key][0] in self.span))
        places, work = self._workspace(set(escaping))
        first_root, workspace = len(self.inputs), len(self.inputs) + len(escaping)
        buffers = {**{key: (k, 0) for k, key in enumerate(self.inputs)},
                   **{key: (first_root + k, 0) for k, key in enumerate(escaping)},
                   **{key: (workspace, offset) for key, offset in places.items()},
                   **{key: (workspace + 1 + k, 0) for k, key in enumerate(self.constants)}}

        def ref(key, offset=0):
            root, at = self.root[key]
            buf, base = buffers[root]
            return (buf, base + at + offset)

        native = [op.build(ref) for op in self.ops if not isinstance(op, _Alias)]
        typenum = lambda key: build.dtype(key).num        # noqa: E731
        program = _kernels.NativeProgram(
            native, [(build.shape(k), typenum(k), k in self.written) for k in self.inputs],
            [(build.shape(claim.get(r, r)), typenum(r)) for r in escaping], work,
            [build.const(k) for k in self.constants], [ref(k) + (build.shape(k), typenum(k)) for k in handed],
            tuple(step[5] for step in self.steps), self.owners)
        names = [step[5].name or "-" for step in self.steps]
        node = TensorNode("native", (), (), {}, _shortened(f"{len(self.steps)} steps, {names[0]} to {names[-1]}"))
        return (_native_run, program, tuple(self.inputs), tuple(enumerate(self.outputs)), self.frees, node)

    def _workspace(self, escaping):
        """{root: byte offset} of the internal roots that stay in the run, packed by liveness (two roots share bytes
        only when no operation touches both), and the workspace's bytes."""
        placed = []                                  # (offset, end, first, last)
        places = {}
        for root, (first, last) in sorted(self.span.items(), key=lambda item: item[1][0]):
            if root in escaping:
                continue
            size = -(-self.build.nbytes(root) // ALIGN) * ALIGN
            offset = 0
            for start, end, a, b in sorted(p for p in placed if not (p[3] < first or last < p[2])):
                if offset + size <= start:
                    break
                offset = max(offset, end)
            placed.append((offset, offset + size, first, last))
            places[root] = offset
        work = max((end for _, end, _, _ in placed), default=0)
        if work > _memory_limit():
            raise InputError(f"a native run of {len(self.steps)} steps needs a workspace of {work} bytes, more than "
                             f"the limit of {_memory_limit()} (grurt.model.MEMORY_LIMIT_BYTES)")
        return places, work


def _shortened(text: str, most: int = 200) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."
