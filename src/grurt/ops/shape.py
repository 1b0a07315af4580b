"""Ops of the shape family: shape arithmetic and data movement (see :mod:`grurt.ops`).

Every op here works on float32, int64 and bool tensors alike: the planner folds shape
arithmetic (Shape -> Gather -> Concat -> Reshape) by calling ``run`` on int64 constants.
Sizes derived from attributes or constant inputs are Python ints, checked by
:func:`checked_shape` before ``infer`` returns them. ``Shape`` and ``Size`` never read their
input's data: ``run(ctx, [None])`` gives their value.

``run`` returns C-contiguous arrays; Reshape, Flatten, Squeeze and Unsqueeze return views of
their (contiguous) input.

How an op acts along a time axis depends on the axes it touches: their ``Op.time`` is None
and ``Op.time_of`` (:func:`_time`) says.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, ModelFormatError, UnsupportedModelError
from ..limits import MAX_PARAMETERS
from .registry import BOOL, FLOAT, INT, REGISTRY, Attr, Op, Value, broadcast_shapes, canonical_dtype, const_ints, \
    normalize_axis, register

#: The most axes a tensor may have (numpy's own bound is 64).
MAX_RANK = 32

#: The most inputs or outputs a variadic op (Concat, Split) may have.
VARIADIC = 1 << 16


def checked_shape(op: str, shape: Sequence[int], what: str = "output") -> Tuple[int, ...]:
    """``shape`` as a tuple of Python ints, no dim negative and the element count within
    :data:`grurt.limits.MAX_PARAMETERS`: a ModelFormatError naming the op otherwise. A 0 dim is
    allowed: shape arithmetic makes empty tensors (``x.shape[:0]``, an empty Concat part)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_RANK:
        raise UnsupportedModelError(f"{op}: the {what} would have {len(shape)} axes, more than grurt's {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise ModelFormatError(f"{op}: the {what} shape {shape} has a negative dim")
    size = math.prod(shape)
    if size > MAX_PARAMETERS:
        raise ModelFormatError(f"{op}: the {what} shape {shape} has {size} elements, more than "
                               f"grurt.limits.MAX_PARAMETERS = {MAX_PARAMETERS}")
    return shape


#: In a prepared context, in place of a packed constant: the input comes from the model's data
#: and is shaped at each run (a Conv's bias, a Gemm's C).
FROM_INPUT = "from input"


def contiguous(x) -> np.ndarray:
    """``x`` as a C-contiguous array, copied only when it is not one (a 0-d result stays 0-d, a
    numpy scalar becomes a 0-d array)."""
    return np.asarray(x, order="C")


def optional(items: Sequence, index: int):
    """Input ``index`` of a node, None when omitted (absent at the end, or None)."""
    return items[index] if index < len(items) else None


def attr_or_input(op: str, attrs: dict, name: str, values: Sequence[Optional[Value]], index: int,
                  what: str) -> Optional[Tuple[int, ...]]:
    """Integers an older opset gave as an attribute and a newer one as a constant input
    (Slice starts, Pad pads, Split split, Squeeze axes): either, never both."""
    value = optional(values, index)
    if attrs.get(name) is not None:
        if value is not None:
            raise ModelFormatError(f"{op}: {name} is given both as an attribute and as input {index}")
        return tuple(attrs[name])
    return const_ints(op, value, what)


def distinct_axes(op: str, axes: Sequence[int], rank: int) -> Tuple[int, ...]:
    """``axes`` normalized against ``rank``; a repeated axis is a ModelFormatError."""
    normalized = tuple(normalize_axis(op, a, rank) for a in axes)
    if len(set(normalized)) != len(normalized):
        raise ModelFormatError(f"{op}: axes {tuple(axes)} repeat an axis")
    return normalized


def checked_indices(op: str, indices: np.ndarray, dims, error=InputError) -> np.ndarray:
    """``indices`` with negative ones wrapped, checked against ``dims`` (one dim, or one per
    entry of the last axis); an index outside [-dim, dim) raises ``error``: InputError for
    indices from the model's inputs, ModelFormatError for constant ones."""
    bound = np.asarray(dims, dtype=np.int64)
    bad = (indices < -bound) | (indices >= bound)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        source = "constant indices" if error is ModelFormatError else "indices from the model's inputs"
        raise error(f"{op}: index {int(indices[first])} at {first} is out of range for an axis of "
                    f"{int(np.broadcast_to(bound, indices.shape)[first])} ({source})")
    return np.where(indices < 0, indices + bound, indices)


def _int_indices(op: str, value: Value) -> None:
    if np.dtype(value.dtype).kind not in "iu":
        raise ModelFormatError(f"{op}: indices must be integers, got {value.dtype}")


def _timed(name):
    """``Op.time_of`` of op ``name``: :func:`_time` (defined with the ops, below)."""
    return lambda attrs, values, time_axis: _time(name, attrs, values, time_axis)


# ---- Shape, Size ----

def _shape_range(attrs, rank):
    def clamp(i):
        return min(max(i + rank if i < 0 else i, 0), rank)
    end = rank if attrs["end"] is None else attrs["end"]
    return clamp(attrs["start"]), clamp(end)


def _shape_infer(attrs, values):
    start, end = _shape_range(attrs, len(values[0].shape))
    return [(checked_shape("Shape", (max(end - start, 0),)), INT)]


def _shape_prepare(attrs, values):
    start, end = _shape_range(attrs, len(values[0].shape))
    return np.array(values[0].shape[start:end], dtype=np.int64)


register(Op("Shape", {"start": Attr("int", 0), "end": Attr("int", None)}, _shape_infer,
            lambda ctx, inputs: [ctx.copy()], _shape_prepare, time="step"))


register(Op("Size", {}, lambda attrs, values: [((), INT)],
            lambda ctx, inputs: [ctx.copy()],
            lambda attrs, values: np.array(values[0].size, dtype=np.int64), time="step"))


# ---- Transpose ----

def _perm(attrs, rank):
    perm = tuple(reversed(range(rank))) if attrs["perm"] is None else attrs["perm"]
    if sorted(perm) != list(range(rank)):
        raise ModelFormatError(f"Transpose: perm {perm} is not a permutation of the {rank} axes")
    return perm


def _transpose_infer(attrs, values):
    shape = values[0].shape
    return [(tuple(shape[p] for p in _perm(attrs, len(shape))), canonical_dtype(values[0].dtype))]


register(Op("Transpose", {"perm": Attr("ints", None)}, _transpose_infer,
            lambda perm, inputs: [contiguous(inputs[0].transpose(perm))],
            lambda attrs, values: _perm(attrs, len(values[0].shape)), time=None, time_of=_timed("Transpose")))


# ---- Reshape, Flatten, Squeeze, Unsqueeze: the same data under another shape ----

def _reshape(x_shape, target, allowzero):
    if len(target) > MAX_RANK:
        raise UnsupportedModelError(f"Reshape: the shape {target} has more than {MAX_RANK} axes")
    out, inferred = [], None
    for i, d in enumerate(target):
        if d == -1:
            if inferred is not None:
                raise ModelFormatError(f"Reshape: the shape {target} has two -1 dims (only one can be inferred)")
            inferred = i
            out.append(1)
        elif d == 0 and not allowzero:
            if i >= len(x_shape):
                raise ModelFormatError(f"Reshape: the 0 at position {i} of the shape {target} copies a dim the "
                                       f"input {x_shape} does not have")
            out.append(x_shape[i])
        elif d < 0:
            raise ModelFormatError(f"Reshape: the shape {target} has the dim {d} (only -1 may be negative)")
        else:
            out.append(d)
    size, known = math.prod(x_shape), math.prod(out)
    if inferred is not None:
        if known == 0 or size % known:
            raise ModelFormatError(f"Reshape: cannot infer the -1 of {target} for an input {x_shape} "
                                   f"of {size} elements")
        out[inferred] = size // known
    elif known != size:
        raise ModelFormatError(f"Reshape: cannot reshape {x_shape} ({size} elements) to {tuple(out)} "
                               f"({known} elements)")
    return checked_shape("Reshape", out)


def _reshape_shape(attrs, values):
    target = const_ints("Reshape", values[1], "the shape (input 1)")
    return _reshape(values[0].shape, target, attrs["allowzero"])


def _flatten_shape(attrs, values):
    shape = values[0].shape
    axis = attrs["axis"]
    if not -len(shape) <= axis <= len(shape):
        raise ModelFormatError(f"Flatten: axis {axis} is out of range for a tensor of rank {len(shape)}")
    axis += len(shape) if axis < 0 else 0
    return (math.prod(shape[:axis]), math.prod(shape[axis:]))


def _squeeze_shape(attrs, values):
    shape = values[0].shape
    axes = attr_or_input("Squeeze", attrs, "axes", values, 1, "axes (input 1)")
    if axes is None:
        return tuple(d for d in shape if d != 1)
    axes = distinct_axes("Squeeze", axes, len(shape))
    for a in axes:
        if shape[a] != 1:
            raise ModelFormatError(f"Squeeze: axis {a} of the input {shape} has {shape[a]} elements, not 1")
    return tuple(d for a, d in enumerate(shape) if a not in axes)


def _unsqueeze_shape(attrs, values):
    shape = values[0].shape
    axes = attr_or_input("Unsqueeze", attrs, "axes", values, 1, "axes (input 1)")
    if axes is None:
        raise ModelFormatError("Unsqueeze needs its axes (input 1, or the attribute before opset 13)")
    rank = len(shape) + len(axes)
    axes = distinct_axes("Unsqueeze", axes, rank)
    rest = iter(shape)
    return checked_shape("Unsqueeze", [1 if a in axes else next(rest) for a in range(rank)])


def _view_op(name, attributes, shape_rule, inputs=(1, 1), const_inputs=()):
    register(Op(name, attributes,
                lambda attrs, values: [(shape_rule(attrs, values), canonical_dtype(values[0].dtype))],
                lambda shape, inputs: [inputs[0].reshape(shape)],
                shape_rule, time=None, time_of=_timed(name), inputs=inputs, const_inputs=const_inputs))


_view_op("Reshape", {"allowzero": Attr("int", 0, lambda v: None if v in (0, 1) else "must be 0 or 1")},
         _reshape_shape, inputs=(2, 2), const_inputs=(1,))
_view_op("Flatten", {"axis": Attr("int", 1)}, _flatten_shape)
_view_op("Squeeze", {"axes": Attr("ints", None)}, _squeeze_shape, inputs=(1, 2), const_inputs=(1,))
_view_op("Unsqueeze", {"axes": Attr("ints", None)}, _unsqueeze_shape, inputs=(1, 2), const_inputs=(1,))


# ---- Concat, Split ----

def _concat_infer(attrs, values):
    first = values[0].shape
    if not first:
        raise ModelFormatError("Concat: inputs must have at least one axis")
    axis = normalize_axis("Concat", attrs["axis"], len(first))
    dtype = canonical_dtype(values[0].dtype)
    for v in values:
        if v is None:
            raise ModelFormatError("Concat: an input is omitted")
        if len(v.shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(v.shape, first)) if i != axis):
            raise ModelFormatError(f"Concat: inputs {', '.join(str(w.shape) for w in values)} differ off axis {axis}")
        if canonical_dtype(v.dtype) != dtype:
            raise ModelFormatError(f"Concat: inputs of dtypes {dtype} and {v.dtype}")
    shape = list(first)
    shape[axis] = sum(v.shape[axis] for v in values)
    return [(checked_shape("Concat", shape), dtype)]


register(Op("Concat", {"axis": Attr("int")}, _concat_infer,
            lambda axis, inputs: [np.concatenate(inputs, axis=axis)],
            lambda attrs, values: normalize_axis("Concat", attrs["axis"], len(values[0].shape)),
            time=None, time_of=_timed("Concat"), inputs=(1, VARIADIC)))


def _split_sizes(attrs, values):
    shape = values[0].shape
    axis = normalize_axis("Split", attrs["axis"], len(shape))
    dim = shape[axis]
    split = attr_or_input("Split", attrs, "split", values, 1, "split (input 1)")
    count = attrs["num_outputs"]
    if split is not None:
        if count is not None and count != len(split):
            raise ModelFormatError(f"Split: num_outputs={count} but split has {len(split)} sizes")
        if sum(split) != dim or any(s < 0 for s in split):
            raise ModelFormatError(f"Split: sizes {split} do not split axis {axis} of {shape}")
    elif count is not None:
        if not 1 <= count <= min(dim, VARIADIC):
            raise ModelFormatError(f"Split: cannot split axis {axis} of {shape} in num_outputs={count} parts")
        chunk = -(-dim // count)
        split = (chunk,) * (count - 1) + (dim - chunk * (count - 1),)
    else:
        raise ModelFormatError("Split without split sizes needs num_outputs (an importer sets it to the "
                               "node's number of outputs)")
    return axis, split


def _split_infer(attrs, values):
    axis, split = _split_sizes(attrs, values)
    shape, dtype = list(values[0].shape), canonical_dtype(values[0].dtype)
    out = []
    for s in split:
        shape[axis] = s
        out.append((checked_shape("Split", shape), dtype))
    return out


def _split_prepare(attrs, values):
    axis, split = _split_sizes(attrs, values)
    return axis, np.cumsum(split[:-1]).tolist()


register(Op("Split", {"axis": Attr("int", 0), "num_outputs": Attr("int", None), "split": Attr("ints", None)},
            _split_infer,
            lambda ctx, inputs: [contiguous(p) for p in np.split(inputs[0], ctx[1], axis=ctx[0])],
            _split_prepare, time=None, time_of=_timed("Split"), inputs=(1, 2), outputs=(1, VARIADIC),
            const_inputs=(1,)))


# ---- Slice ----

#: Ends that mean "to the end of the axis" whatever the step: onnxruntime reads INT_MAX so (the
#: ONNX text clamps it to the last element, so that a negative step would give nothing).
END_OF_AXIS = (2**31 - 1, 2**63 - 1)


def _slices(attrs, values):
    """One slice per axis and the output shape, with ONNX's clamping of starts and ends."""
    shape = values[0].shape
    starts = attr_or_input("Slice", attrs, "starts", values, 1, "starts (input 1)")
    ends = attr_or_input("Slice", attrs, "ends", values, 2, "ends (input 2)")
    axes = attr_or_input("Slice", attrs, "axes", values, 3, "axes (input 3)")
    steps = const_ints("Slice", optional(values, 4), "steps (input 4)")
    if starts is None or ends is None:
        raise ModelFormatError("Slice needs starts and ends")
    axes = tuple(range(len(starts))) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ModelFormatError(f"Slice: starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    slices = [slice(None)] * len(shape)
    out = list(shape)
    for axis, start, end, step in zip(distinct_axes("Slice", axes, len(shape)), starts, ends, steps):
        dim = shape[axis]
        if step == 0:
            raise ModelFormatError(f"Slice: step 0 on axis {axis}")
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step < 0 and end in END_OF_AXIS:
            end = -1
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            out[axis] = max(0, -(-(end - start) // step))
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            out[axis] = max(0, -(-(start - end) // -step))
        slices[axis] = slice(start, end if end >= 0 else None, step)
    return tuple(slices), checked_shape("Slice", out)


register(Op("Slice", {"starts": Attr("ints", None), "ends": Attr("ints", None), "axes": Attr("ints", None)},
            lambda attrs, values: [(_slices(attrs, values)[1], canonical_dtype(values[0].dtype))],
            lambda slices, inputs: [contiguous(inputs[0][slices])],
            lambda attrs, values: _slices(attrs, values)[0],
            time=None, time_of=_timed("Slice"), inputs=(1, 5), const_inputs=(1, 2, 3, 4)))


# ---- Gather, GatherElements, GatherND, ScatterND ----
# Indices from the model's inputs are checked at each run (InputError); constant indices once,
# when the plan is made (ModelFormatError), and wrapped there.

def _gather_infer(attrs, values):
    data, indices = values
    _int_indices("Gather", indices)
    axis = normalize_axis("Gather", attrs["axis"], len(data.shape))
    if indices.const is not None:
        checked_indices("Gather", indices.const, data.shape[axis], ModelFormatError)
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    return [(checked_shape("Gather", shape), canonical_dtype(data.dtype))]


def _gather_prepare(attrs, values):
    data, indices = values
    axis = normalize_axis("Gather", attrs["axis"], len(data.shape))
    dim = data.shape[axis]
    const = None if indices.const is None else checked_indices("Gather", indices.const, dim, ModelFormatError)
    return axis, dim, const


def _gather_run(ctx, inputs):
    axis, dim, const = ctx
    indices = const if const is not None else checked_indices("Gather", inputs[1], dim)
    return [contiguous(np.take(inputs[0], indices, axis=axis))]


register(Op("Gather", {"axis": Attr("int", 0)}, _gather_infer, _gather_run, _gather_prepare,
            time=None, time_of=_timed("Gather"), inputs=(2, 2)))


def _gather_elements_check(attrs, values):
    data, indices = values
    _int_indices("GatherElements", indices)
    if len(indices.shape) != len(data.shape):
        raise ModelFormatError(f"GatherElements: indices {indices.shape} and data {data.shape} differ in rank")
    axis = normalize_axis("GatherElements", attrs["axis"], len(data.shape))
    if any(i > d for a, (i, d) in enumerate(zip(indices.shape, data.shape)) if a != axis):
        raise ModelFormatError(f"GatherElements: indices {indices.shape} exceed data {data.shape} off axis {axis}")
    const = None
    if indices.const is not None:
        const = checked_indices("GatherElements", indices.const, data.shape[axis], ModelFormatError)
    crop = tuple(slice(None) if a == axis else slice(0, i) for a, i in enumerate(indices.shape))
    return axis, data.shape[axis], crop, const


def _gather_elements_run(ctx, inputs):
    axis, dim, crop, const = ctx
    indices = const if const is not None else checked_indices("GatherElements", inputs[1], dim)
    return [np.take_along_axis(inputs[0][crop], indices, axis=axis)]


def _gather_elements_infer(attrs, values):
    _gather_elements_check(attrs, values)
    return [(checked_shape("GatherElements", values[1].shape), canonical_dtype(values[0].dtype))]


register(Op("GatherElements", {"axis": Attr("int", 0)}, _gather_elements_infer, _gather_elements_run,
            _gather_elements_check, time=None, time_of=_timed("GatherElements"), inputs=(2, 2)))


def _nd_check(op, attrs, data, indices):
    _int_indices(op, indices)
    if op == "GatherND" and attrs["batch_dims"] != 0:
        raise UnsupportedModelError(f"GatherND: batch_dims={attrs['batch_dims']} is not supported (only 0)")
    if op == "ScatterND" and attrs["reduction"] != "none":
        raise UnsupportedModelError(f"ScatterND: reduction={attrs['reduction']!r} is not supported (only 'none')")
    if not indices.shape or not 1 <= indices.shape[-1] <= len(data.shape):
        raise ModelFormatError(f"{op}: the last dim of indices {indices.shape} must be in [1, {len(data.shape)}] "
                               f"for data {data.shape}")
    k = indices.shape[-1]
    const = None
    if indices.const is not None:
        const = checked_indices(op, indices.const, data.shape[:k], ModelFormatError)
    return data.shape[:k], const, indices.shape[:-1] + data.shape[k:]


def _nd_index(op, ctx, indices):
    dims, const = ctx
    indices = const if const is not None else checked_indices(op, indices, dims)
    return tuple(np.moveaxis(indices, -1, 0))


def _gather_nd_infer(attrs, values):
    shape = _nd_check("GatherND", attrs, values[0], values[1])[2]
    return [(checked_shape("GatherND", shape), canonical_dtype(values[0].dtype))]


register(Op("GatherND", {"batch_dims": Attr("int", 0)}, _gather_nd_infer,
            lambda ctx, inputs: [contiguous(inputs[0][_nd_index("GatherND", ctx, inputs[1])])],
            lambda attrs, values: _nd_check("GatherND", attrs, values[0], values[1])[:2],
            time=None, time_of=_timed("GatherND"), inputs=(2, 2)))


def _scatter_nd_infer(attrs, values):
    data, indices, updates = values
    expected = _nd_check("ScatterND", attrs, data, indices)[2]
    if tuple(updates.shape) != expected:
        raise ModelFormatError(f"ScatterND: updates {updates.shape} must have the shape {expected} "
                               f"(indices {indices.shape}, data {data.shape})")
    if canonical_dtype(updates.dtype) != canonical_dtype(data.dtype):
        raise ModelFormatError(f"ScatterND: updates of dtype {updates.dtype} into data of dtype {data.dtype}")
    return [(data.shape, canonical_dtype(data.dtype))]


def _scatter_nd_run(ctx, inputs):
    out = inputs[0].copy()
    out[_nd_index("ScatterND", ctx, inputs[1])] = inputs[2]
    return [out]


register(Op("ScatterND", {"reduction": Attr("string", "none")}, _scatter_nd_infer, _scatter_nd_run,
            lambda attrs, values: _nd_check("ScatterND", attrs, values[0], values[1])[:2],
            time=None, time_of=_timed("ScatterND"), inputs=(3, 3)))


# ---- Tile, Expand ----

def _tile_shape(attrs, values):
    shape = values[0].shape
    repeats = const_ints("Tile", values[1], "repeats (input 1)")
    if len(repeats) != len(shape):
        raise ModelFormatError(f"Tile: {len(repeats)} repeats for an input of rank {len(shape)}")
    if any(r < 0 for r in repeats):
        raise ModelFormatError(f"Tile: negative repeats {repeats}")
    return checked_shape("Tile", [d * r for d, r in zip(shape, repeats)])


register(Op("Tile", {}, lambda attrs, values: [(_tile_shape(attrs, values), canonical_dtype(values[0].dtype))],
            lambda reps, inputs: [np.tile(inputs[0], reps)],
            lambda attrs, values: const_ints("Tile", values[1], "repeats"),
            time=None, time_of=_timed("Tile"), inputs=(2, 2), const_inputs=(1,)))


def _expand_shape(attrs, values):
    target = const_ints("Expand", values[1], "the shape (input 1)")
    if len(target) > MAX_RANK or any(d < 0 for d in target):
        raise ModelFormatError(f"Expand: invalid shape {target}")
    return checked_shape("Expand", broadcast_shapes("Expand", values[0].shape, checked_shape("Expand", target,
                                                                                               "target")))


register(Op("Expand", {}, lambda attrs, values: [(_expand_shape(attrs, values), canonical_dtype(values[0].dtype))],
            lambda shape, inputs: [np.broadcast_to(inputs[0], shape).copy()], _expand_shape,
            time=None, time_of=_timed("Expand"), inputs=(2, 2), const_inputs=(1,)))


# ---- Pad ----
# Negative pads crop; as in onnxruntime, the crop comes first and the other modes pad what is
# left (reflect needs pads below that dim; wrap repeats it as often as needed).

PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pads(attrs, values):
    shape = values[0].shape
    rank = len(shape)
    pads = attr_or_input("Pad", attrs, "pads", values, 1, "pads (input 1)")
    if pads is None:
        raise ModelFormatError("Pad needs its pads (input 1, or the attribute before opset 11)")
    axes = const_ints("Pad", optional(values, 3), "axes (input 3)")
    axes = tuple(range(rank)) if axes is None else distinct_axes("Pad", axes, rank)
    if len(pads) != 2 * len(axes):
        raise ModelFormatError(f"Pad: {len(pads)} pads for {len(axes)} axes (needs 2 per axis)")
    mode = attrs["mode"]
    begins, ends = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[i], pads[i + len(axes)]
    out = [d + b + e for d, b, e in zip(shape, begins, ends)]
    if any(d <= 0 for d in out):
        raise ModelFormatError(f"Pad: pads {pads} crop the input {shape} to nothing")
    for axis, (d, b, e) in enumerate(zip(shape, begins, ends)):
        kept = d + min(b, 0) + min(e, 0)
        if mode == "reflect" and max(b, e) >= kept:
            raise ModelFormatError(f"Pad: reflect padding of {max(b, e)} on axis {axis} needs an axis longer than "
                                   f"{max(b, e)} (it has {kept} after cropping)")
    crop = tuple(slice(-min(b, 0), d + min(e, 0)) for d, b, e in zip(shape, begins, ends))
    widths = tuple((max(b, 0), max(e, 0)) for b, e in zip(begins, ends))
    return checked_shape("Pad", out), crop, widths


def _pad_infer(attrs, values):
    value = optional(values, 2)
    if value is not None and value.size != 1:
        raise ModelFormatError(f"Pad: constant_value (input 2) must be one value, got shape {value.shape}")
    return [(_pads(attrs, values)[0], canonical_dtype(values[0].dtype))]


def _pad_prepare(attrs, values):
    shape, crop, widths = _pads(attrs, values)
    value = optional(values, 2)
    fill = attrs["value"] if value is None else None if value.const is None else value.const.ravel()[0]
    dtype = canonical_dtype(values[0].dtype)
    inner = tuple(slice(b, b + (s.stop - s.start)) for (b, _), s in zip(widths, crop))
    return attrs["mode"], shape, crop, widths, inner, fill, dtype


def _pad_run(ctx, inputs):
    mode, shape, crop, widths, inner, fill, dtype = ctx
    x = inputs[0][crop]
    if mode != "constant":
        return [np.pad(x, widths, mode=mode)]
    if fill is None:
        fill = inputs[2].ravel()[0]
    out = np.full(shape, fill, dtype=dtype)
    out[inner] = x
    return [out]


register(Op("Pad", {"mode": Attr("string", "constant",
                                  lambda v: None if v in PAD_MODES else f"must be one of {PAD_MODES}"),
                    "pads": Attr("ints", None), "value": Attr("float", 0.0)},
            _pad_infer, _pad_run, _pad_prepare, time=None, time_of=_timed("Pad"), inputs=(1, 4), const_inputs=(1, 3)))


# ---- ConstantOfShape, Range ----

def _constant_value(attrs):
    value = attrs["value"]
    return np.zeros(1, np.float32) if value is None else value.ravel()


def _constant_of_shape_infer(attrs, values):
    shape = const_ints("ConstantOfShape", values[0], "the shape (input 0)")
    if len(values[0].shape) != 1:
        raise ModelFormatError(f"ConstantOfShape: the shape input must be 1-D, got {values[0].shape}")
    return [(checked_shape("ConstantOfShape", shape), canonical_dtype(_constant_value(attrs).dtype))]


def _constant_of_shape_prepare(attrs, values):
    (shape, dtype), = _constant_of_shape_infer(attrs, values)
    return shape, _constant_value(attrs)[0], dtype


register(Op("ConstantOfShape",
            {"value": Attr("tensor", None, lambda v: None if v.size == 1 else f"has {v.size} values, not 1")},
            _constant_of_shape_infer, lambda ctx, inputs: [np.full(ctx[0], ctx[1], dtype=ctx[2])],
            _constant_of_shape_prepare, time="step", const_inputs=(0,)))


def _range_count(values):
    """Range's start, delta, element count (bounded: nothing is allocated yet) and dtype."""
    for name, v in zip(("start", "limit", "delta"), values):
        if v.const is None:
            raise UnsupportedModelError(f"Range: {name} is computed from the model's inputs; grurt needs it "
                                        "constant when the plan is made (it decides a shape)")
        if v.size != 1:
            raise ModelFormatError(f"Range: {name} must be a scalar, got shape {v.shape}")
    dtype = canonical_dtype(values[0].dtype)
    if {canonical_dtype(v.dtype) for v in values} != {dtype} or dtype == BOOL:
        raise ModelFormatError(f"Range: start, limit and delta must be numbers of one dtype, got "
                               f"{', '.join(str(v.dtype) for v in values)}")
    start, limit, delta = (v.const.ravel()[0].item() for v in values)
    if delta == 0:
        raise ModelFormatError("Range: delta is 0")
    if dtype == INT:
        count = -((start - limit) // delta)
    else:
        span = (limit - start) / delta
        if not math.isfinite(span):
            raise ModelFormatError(f"Range: ({limit} - {start}) / {delta} is not finite")
        count = math.ceil(span)
    return start, delta, checked_shape("Range", (max(count, 0),))[0], dtype


def _range_values(attrs, values):
    """The output, computed once from the constant inputs."""
    start, delta, count, dtype = _range_count(values)
    return (start + np.arange(count, dtype=np.float64 if dtype == FLOAT else np.int64) * delta).astype(dtype)


register(Op("Range", {}, lambda attrs, values: [(_range_count(values)[2:3], _range_count(values)[3])],
            lambda ctx, inputs: [ctx.copy()], _range_values, time="step", inputs=(3, 3), const_inputs=(0, 1, 2)))


# ---- DepthToSpace, SpaceToDepth (NCHW) ----

def _blocks(op, attrs, values):
    shape = values[0].shape
    if len(shape) != 4:
        raise ModelFormatError(f"{op}: the input must be 4-D (N, C, H, W), got {shape}")
    n, c, h, w = shape
    b = attrs["blocksize"]
    if op == "DepthToSpace":
        if c % (b * b):
            raise ModelFormatError(f"DepthToSpace: {c} channels are not a multiple of blocksize² = {b * b}")
        if attrs["mode"] == "DCR":
            return (n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2), (n, c // (b * b), h * b, w * b)
        return (n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3), (n, c // (b * b), h * b, w * b)
    if h % b or w % b:
        raise ModelFormatError(f"SpaceToDepth: H={h} and W={w} must be multiples of blocksize {b}")
    return (n, c, h // b, b, w // b, b), (0, 3, 5, 1, 2, 4), (n, c * b * b, h // b, w // b)


def _block_op(name, attributes):
    register(Op(name, attributes,
                lambda attrs, values: [(checked_shape(name, _blocks(name, attrs, values)[2]),
                                        canonical_dtype(values[0].dtype))],
                lambda ctx, inputs: [contiguous(inputs[0].reshape(ctx[0]).transpose(ctx[1]).reshape(ctx[2]))],
                lambda attrs, values: _blocks(name, attrs, values), time=None, time_of=_timed(name)))


_BLOCKSIZE = Attr("int", check=lambda v: None if v >= 1 else "must be positive")
_block_op("DepthToSpace", {"blocksize": _BLOCKSIZE, "mode": Attr("string", "DCR", lambda v: None if v in ("DCR", "CRD")
                                                                  else "must be DCR or CRD")})
_block_op("SpaceToDepth", {"blocksize": _BLOCKSIZE})


# ---- time ----

def keeps_time(in_shape, out_shape, time_axis) -> bool:
    """Whether an op that keeps the data's order maps each time step onto one output step at the
    same axis: the time dim and the elements before it are unchanged."""
    return (time_axis < len(out_shape) and out_shape[time_axis] == in_shape[time_axis]
            and math.prod(in_shape[:time_axis]) == math.prod(out_shape[:time_axis]))


def _time(op_name: str, attrs: dict, values: Sequence[Optional[Value]], time_axis: int) -> str:
    """How a shape op acts along the time axis ``time_axis`` of its input 0: ``"step"`` when
    each time step maps onto one output step at the same axis, ``"causal"`` for a Pad that adds
    constant or edge frames only before the first step, else ``"sequence"`` (the op moves, merges,
    reorders, slices, tiles or concatenates along time)."""
    in_shape = values[0].shape
    op = REGISTRY[op_name]
    if op_name == "Transpose":
        return "step" if _perm(attrs, len(in_shape))[time_axis] == time_axis else "sequence"
    if op_name in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return "step" if keeps_time(in_shape, op.infer(attrs, values)[0][0], time_axis) else "sequence"
    if op_name in ("Expand", "Tile"):
        out_shape = op.infer(attrs, values)[0][0]
        return "step" if len(out_shape) == len(in_shape) and out_shape[time_axis] == in_shape[time_axis] \
            else "sequence"
    if op_name in ("Concat", "Split", "Gather", "GatherElements"):
        axis = normalize_axis(op_name, attrs["axis"], len(in_shape))
        if op_name == "Gather" and axis < time_axis and len(values[1].shape) != 1:
            return "sequence"  # indices of another rank move the time axis
        return "sequence" if axis == time_axis else "step"
    if op_name == "Slice":
        dim = in_shape[time_axis]
        return "step" if _slices(attrs, values)[0][time_axis].indices(dim) == (0, dim, 1) else "sequence"
    if op_name == "Pad":
        _, crop, widths = _pads(attrs, values)
        begin, end = widths[time_axis]
        if crop[time_axis] != slice(0, in_shape[time_axis]) or end:
            return "sequence"
        return "step" if not begin else "causal" if attrs["mode"] in ("constant", "edge") else "sequence"
    if op_name in ("DepthToSpace", "SpaceToDepth"):
        return "step" if time_axis == 0 else "sequence"
    return "sequence"  # GatherND, ScatterND: indices address time

