"""float64 references of the shape ops: plain numpy, independent of :mod:`grurt.ops.shape`.

Index arithmetic is written out the way the ONNX operator pages state it (explicit index lists
per axis, loops over positions), so that the fast implementations' views, strides and
clamping are checked against something else."""
from __future__ import annotations

import itertools
import math

import numpy as np


def _ints(a):
    return [int(v) for v in np.asarray(a).ravel()]


def _given(inputs, i):
    return inputs[i] if i < len(inputs) and inputs[i] is not None else None


def _from(attrs, name, inputs, i):
    value = _given(inputs, i)
    return _ints(value) if value is not None else (list(attrs[name]) if attrs.get(name) is not None else None)


def shape(attrs, inputs):
    dims = inputs[0].shape
    end = len(dims) if attrs["end"] is None else attrs["end"]
    return [np.array(dims[attrs["start"]:end], dtype=np.int64)]  # Python slicing clamps as ONNX does


def size(attrs, inputs):
    return [np.array(inputs[0].size, dtype=np.int64)]


def transpose(attrs, inputs):
    x = inputs[0]
    perm = attrs["perm"] if attrs["perm"] is not None else list(range(x.ndim))[::-1]
    return [np.transpose(x, perm)]


def reshape(attrs, inputs):
    x, target = inputs[0], _ints(inputs[1])
    if not attrs["allowzero"]:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


def flatten(attrs, inputs):
    x = inputs[0]
    axis = attrs["axis"] if attrs["axis"] >= 0 else attrs["axis"] + x.ndim
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def squeeze(attrs, inputs):
    x = inputs[0]
    axes = _from(attrs, "axes", inputs, 1)
    if axes is None:
        axes = [a for a, d in enumerate(x.shape) if d == 1]
    keep = [d for a, d in enumerate(x.shape) if a not in [b % x.ndim for b in axes]]
    return [x.reshape(keep)]


def unsqueeze(attrs, inputs):
    x = inputs[0]
    axes = _from(attrs, "axes", inputs, 1)
    rank = x.ndim + len(axes)
    for a in sorted(b % rank for b in axes):
        x = np.expand_dims(x, a)
    return [x]


def concat(attrs, inputs):
    return [np.concatenate(inputs, axis=attrs["axis"])]


def split(attrs, inputs):
    x = inputs[0]
    axis = attrs["axis"] % x.ndim
    dim = x.shape[axis]
    sizes = _from(attrs, "split", inputs, 1)
    if sizes is None:
        n = attrs["num_outputs"]
        chunk = math.ceil(dim / n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    outs, start = [], 0
    for s in sizes:
        outs.append(np.take(x, np.arange(start, start + s), axis=axis))
        start += s
    return outs


def slice_(attrs, inputs):
    """Each axis's index list, stepping from the clamped start toward the clamped end."""
    x = inputs[0]
    starts, ends = _from(attrs, "starts", inputs, 1), _from(attrs, "ends", inputs, 2)
    axes = _from(attrs, "axes", inputs, 3) or list(range(len(starts)))
    steps = _ints(inputs[4]) if _given(inputs, 4) is not None else [1] * len(starts)
    index = [list(range(d)) for d in x.shape]
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step < 0 and end in (2**31 - 1, 2**63 - 1):   # INT_MAX: to the end, as onnxruntime reads it
            end = -1
        if step > 0:
            start, end = max(0, min(start, dim)), max(0, min(end, dim))
        else:
            start, end = max(0, min(start, dim - 1)), max(-1, min(end, dim - 1))
        picked, i = [], start
        while (i < end) if step > 0 else (i > end):
            picked.append(i)
            i += step
        index[axis % x.ndim] = picked
    return [x[np.ix_(*index)]]


def gather(attrs, inputs):
    x, indices = inputs
    axis = attrs["axis"] % x.ndim
    dim = x.shape[axis]
    parts = [np.take(x, [i + dim if i < 0 else i], axis=axis) for i in _ints(indices)]
    out = np.concatenate(parts, axis=axis)
    return [out.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])]


def gather_elements(attrs, inputs):
    x, indices = inputs
    axis = attrs["axis"] % x.ndim
    out = np.empty(indices.shape, dtype=x.dtype)
    for pos in np.ndindex(*indices.shape):
        i = int(indices[pos])
        source = list(pos)
        source[axis] = i + x.shape[axis] if i < 0 else i
        out[pos] = x[tuple(source)]
    return [out]


def gather_nd(attrs, inputs):
    x, indices = inputs
    k = indices.shape[-1]
    out = np.empty(indices.shape[:-1] + x.shape[k:], dtype=x.dtype)
    for pos in np.ndindex(*indices.shape[:-1]):
        out[pos] = x[tuple(int(i) + (d if i < 0 else 0) for i, d in zip(indices[pos], x.shape))]
    return [out]


def scatter_nd(attrs, inputs):
    x, indices, updates = inputs
    out = x.copy()
    for pos in np.ndindex(*indices.shape[:-1]):
        out[tuple(int(i) + (d if i < 0 else 0) for i, d in zip(indices[pos], x.shape))] = updates[pos]
    return [out]


def tile(attrs, inputs):
    x, repeats = inputs[0], _ints(inputs[1])
    return [x[np.ix_(*[np.arange(d * r) % d for d, r in zip(x.shape, repeats)])]]


def expand(attrs, inputs):
    x = inputs[0]
    return [np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(inputs[1])))).copy()]


def pad(attrs, inputs):
    """Per axis, the source index of each output position (-1: the constant), after cropping
    by the negative pads."""
    x = inputs[0]
    pads = _from(attrs, "pads", inputs, 1)
    axes = _ints(inputs[3]) if _given(inputs, 3) is not None else list(range(x.ndim))
    value = inputs[2].ravel()[0] if _given(inputs, 2) is not None else attrs["value"]
    begin, end = [0] * x.ndim, [0] * x.ndim
    for i, a in enumerate(axes):
        begin[a % x.ndim], end[a % x.ndim] = pads[i], pads[i + len(axes)]
    mode = attrs["mode"]
    sources = []
    for a, d in enumerate(x.shape):
        first, n = max(-begin[a], 0), d - max(-begin[a], 0) - max(-end[a], 0)  # the kept range
        source = []
        for j in range(n + max(begin[a], 0) + max(end[a], 0)):
            k = j - max(begin[a], 0)
            if 0 <= k < n:
                source.append(first + k)
            elif mode == "constant":
                source.append(-1)
            elif mode == "edge":
                source.append(first + min(max(k, 0), n - 1))
            elif mode == "reflect":
                source.append(first + (-k if k < 0 else 2 * (n - 1) - k))
            else:  # wrap
                source.append(first + k % n)
        sources.append(np.array(source))
    out = x[np.ix_(*[np.maximum(s, 0) for s in sources])].copy()
    outside = np.zeros(out.shape, dtype=bool)
    for a, s in enumerate(sources):
        outside |= (s < 0).reshape([-1 if b == a else 1 for b in range(x.ndim)])
    out[outside] = value
    return [out]


def constant_of_shape(attrs, inputs):
    value = attrs["value"] if attrs["value"] is not None else np.zeros(1, np.float32)
    fill = value.ravel()[0]
    return [np.full(_ints(inputs[0]), fill, dtype=np.float64 if value.dtype.kind == "f" else value.dtype)]


def range_(attrs, inputs):
    start, limit, delta = (v.ravel()[0] for v in inputs)
    count = max(math.ceil((limit - start) / delta), 0)
    return [np.array([start + i * delta for i in range(count)], dtype=np.asarray(start).dtype)]


def depth_to_space(attrs, inputs):
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    c_out = c // (b * b)
    out = np.empty((n, c_out, h * b, w * b), dtype=x.dtype)
    for co, i, j in itertools.product(range(c_out), range(b), range(b)):
        source = (i * b + j) * c_out + co if attrs["mode"] == "DCR" else co * b * b + i * b + j
        out[:, co, i::b, j::b] = x[:, source]
    return [out]


def space_to_depth(attrs, inputs):
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    out = np.empty((n, c * b * b, h // b, w // b), dtype=x.dtype)
    for ci, i, j in itertools.product(range(c), range(b), range(b)):
        out[:, (i * b + j) * c + ci] = x[:, ci, i::b, j::b]
    return [out]


REFERENCE = {
    "Shape": shape, "Size": size, "Transpose": transpose, "Reshape": reshape, "Flatten": flatten,
    "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Concat": concat, "Split": split, "Slice": slice_,
    "Gather": gather, "GatherElements": gather_elements, "GatherND": gather_nd, "ScatterND": scatter_nd,
    "Tile": tile, "Expand": expand, "Pad": pad, "ConstantOfShape": constant_of_shape, "Range": range_,
    "DepthToSpace": depth_to_space, "SpaceToDepth": space_to_depth,
}
