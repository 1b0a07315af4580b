"""Reductions and normalization: Reduce*, ArgMax/ArgMin, TopK, CumSum, Softmax/LogSoftmax/
Hardmax and the normalizations (see :mod:`grurt.ops`; the table is docs/ops.md).

How these act along time depends on their axes (``time=None``, ``time_of``): an op that mixes
values along the time axis mixes the sequence ("sequence"), except CumSum forward in time, which
carries a running sum ("causal"). Axes given by an input (Reduce*'s axes, CumSum's axis, TopK's
K) must be constants at plan time, as the output's shape depends on them; where an older opset
took the axes as an attribute, the attribute is accepted as well (never both).

NaN: a reduction's max/min propagates NaN, ArgMax/ArgMin/Hardmax take the first NaN as the
extreme (numpy's rule); onnxruntime's answer there depends on where the NaN is (docs/ops.md).
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .. import _kernels
from ..errors import ModelFormatError, UnsupportedModelError
from .registry import BOOL, FLOAT, INT, Attr, Op, const_ints, normalize_axis, register
from .elementwise import ANY, NUMERIC, as_array, common_dtype, flag, trunc_divide, unidirectional

_FLOATS = (FLOAT,)


def _epsilon(value):
    return None if value >= 0 else f"must be >= 0 (it is added to a variance), got {value}"


def _float_type(value):
    return None if value in (1, 10, 11, 16) else f"must name a float type (1, 10, 11 or 16), got {value}"


def _axis_time(rank, axes, time_axis) -> str:
    return "sequence" if time_axis % rank in axes else "step"


def _sliced(axis, part):
    """An index taking ``part`` (a slice) along ``axis`` and everything along the other axes."""
    return (slice(None),) * axis + (part,)


# ---- Reduce* ----

def reduce_axes(name: str, attrs: dict, values) -> tuple:
    """The reduced axes, sorted and non-negative (empty: nothing is reduced), from the
    attribute (opsets < 18) or the constant input; ModelFormatError naming the op for an axis
    out of range or named twice."""
    rank = len(values[0].shape)
    axes = const_ints(name, values[1] if len(values) > 1 else None, "axes")
    if attrs["axes"] is not None:
        if axes is not None:
            raise ModelFormatError(f"{name}: axes given both as an attribute and as an input")
        axes = attrs["axes"]
    if not axes:
        return () if attrs["noop_with_empty_axes"] else tuple(range(rank))
    resolved = [normalize_axis(name, axis, rank) for axis in axes]
    if len(set(resolved)) != len(resolved):
        raise ModelFormatError(f"{name}: axes {tuple(axes)} name an axis twice")
    return tuple(sorted(resolved))


def _reduce_infer(name, allowed, attrs, values):
    dtype = common_dtype(name, values[:1], allowed)
    axes = reduce_axes(name, attrs, values)
    shape = values[0].shape
    if attrs["keepdims"]:
        shape = tuple(1 if axis in axes else d for axis, d in enumerate(shape))
    else:
        shape = tuple(d for axis, d in enumerate(shape) if axis not in axes)
    return [(shape, dtype)]


def _reduce_prepare(name, attrs, values):
    axes = reduce_axes(name, attrs, values)
    count = 1
    for axis in axes:
        count *= values[0].shape[axis]
    return axes, bool(attrs["keepdims"]), count


def _reduce_time(name, attrs, values, time_axis):
    return _axis_time(len(values[0].shape), reduce_axes(name, attrs, values), time_axis)


def _sum(x, axes, keepdims, count):
    return np.add.reduce(x, axis=axes, keepdims=keepdims)


def _mean(x, axes, keepdims, count):
    total = as_array(np.add.reduce(x, axis=axes, keepdims=keepdims))
    if total.dtype == INT:  # onnxruntime truncates an integer mean toward zero
        return trunc_divide("ReduceMean", total, np.int64(count))
    total /= np.float32(count)
    return total


#: the identity of max and min, so that an empty reduction gives -inf / +inf as ONNX says
_LOWEST = {FLOAT: -np.inf, INT: np.iinfo(np.int64).min, BOOL: False}
_HIGHEST = {FLOAT: np.inf, INT: np.iinfo(np.int64).max, BOOL: True}


def _max(x, axes, keepdims, count):
    return np.maximum.reduce(x, axis=axes, keepdims=keepdims, initial=_LOWEST[x.dtype])


def _min(x, axes, keepdims, count):
    return np.minimum.reduce(x, axis=axes, keepdims=keepdims, initial=_HIGHEST[x.dtype])


def _prod(x, axes, keepdims, count):
    return np.multiply.reduce(x, axis=axes, keepdims=keepdims)


def _l1(x, axes, keepdims, count):
    return np.add.reduce(np.abs(x), axis=axes, keepdims=keepdims)


def _sum_square(x, axes, keepdims, count):
    return np.add.reduce(np.square(x), axis=axes, keepdims=keepdims)


def _l2(x, axes, keepdims, count):
    total = as_array(_sum_square(x, axes, keepdims, count))
    return np.sqrt(total, out=total)


def _log_sum_exp(x, axes, keepdims, count):
    peak = np.maximum.reduce(x, axis=axes, keepdims=True, initial=-np.inf)
    np.copyto(peak, np.float32(0), where=~np.isfinite(peak))  # all -inf (or an inf): shift by nothing
    shifted = np.subtract(x, peak)
    total = as_array(np.add.reduce(np.exp(shifted, out=shifted), axis=axes, keepdims=keepdims))
    np.log(total, out=total)
    total += peak if keepdims else peak.reshape(total.shape)
    return total


def _reduce_run(kernel, ctx, xs):
    axes, keepdims, count = ctx
    # no axes (noop_with_empty_axes): numpy reduces over none, still applying ReduceL1's abs,
    # ReduceSumSquare's square..., as the newest ONNX says
    return [as_array(kernel(xs[0], axes, keepdims, count))]


_REDUCE_ATTRIBUTES = {"axes": Attr("ints", None), "keepdims": Attr("int", 1, flag),
                      "noop_with_empty_axes": Attr("int", 0, flag)}

for _name, _kernel, _allowed in (("ReduceSum", _sum, NUMERIC), ("ReduceMean", _mean, NUMERIC),
                                 ("ReduceMax", _max, ANY), ("ReduceMin", _min, ANY), ("ReduceProd", _prod, NUMERIC),
                                 ("ReduceL1", _l1, NUMERIC), ("ReduceL2", _l2, _FLOATS),
                                 ("ReduceSumSquare", _sum_square, NUMERIC), ("ReduceLogSumExp", _log_sum_exp, _FLOATS)):
    register(Op(_name, _REDUCE_ATTRIBUTES, partial(_reduce_infer, _name, _allowed), partial(_reduce_run, _kernel),
                prepare=partial(_reduce_prepare, _name), time=None, time_of=partial(_reduce_time, _name),
                inputs=(1, 2), const_inputs=(1,)))


# ---- ops along one axis ----

def _one_axis_time(attrs, values, time_axis):
    rank = len(values[0].shape)
    return _axis_time(rank, (normalize_axis("", attrs["axis"], rank),), time_axis)


def _arg_infer(name, attrs, values):
    common_dtype(name, values, NUMERIC)
    shape = values[0].shape
    axis = normalize_axis(name, attrs["axis"], len(shape))
    if shape[axis] == 0:
        raise ModelFormatError(f"{name} over axis {attrs['axis']} of size 0 (shape {tuple(shape)})")
    kept = (1,) if attrs["keepdims"] else ()
    return [(shape[:axis] + kept + shape[axis + 1:], INT)]


def _arg_run(fn, ctx, xs):
    axis, keepdims, last = ctx
    x = xs[0]
    if last:  # the last extreme: the first one of the reversed axis
        index = fn(np.flip(x, axis), axis=axis, keepdims=keepdims)
        return [as_array(np.subtract(x.shape[axis] - 1, index, dtype=np.int64))]
    return [as_array(fn(x, axis=axis, keepdims=keepdims)).astype(np.int64, copy=False)]


for _name, _fn in (("ArgMax", np.argmax), ("ArgMin", np.argmin)):
    register(Op(_name, {"axis": Attr("int", 0), "keepdims": Attr("int", 1, flag),
                        "select_last_index": Attr("int", 0, flag)},
                partial(_arg_infer, _name), partial(_arg_run, _fn),
                prepare=lambda attrs, values: (normalize_axis("", attrs["axis"], len(values[0].shape)),
                                               bool(attrs["keepdims"]), bool(attrs["select_last_index"])),
                time=None, time_of=_one_axis_time))


def _topk_k(values, axis) -> int:
    k = const_ints("TopK", values[1], "K")
    if len(k) != 1:
        raise ModelFormatError(f"TopK: K must be a single integer, got {len(k)} values")
    size = values[0].shape[axis]
    if not 0 <= k[0] <= size:
        raise ModelFormatError(f"TopK: K={k[0]} for an axis of size {size} (shape {tuple(values[0].shape)})")
    return k[0]


def _topk_infer(attrs, values):
    dtype = common_dtype("TopK", values[:1], NUMERIC)
    shape = values[0].shape
    axis = normalize_axis("TopK", attrs["axis"], len(shape))
    shape = shape[:axis] + (_topk_k(values, axis),) + shape[axis + 1:]
    return [(shape, dtype), (shape, INT)]


def _topk_prepare(attrs, values):
    axis = normalize_axis("TopK", attrs["axis"], len(values[0].shape))
    k, size = _topk_k(values, axis), values[0].shape[axis]
    if attrs["largest"]:  # the last k of an ascending order, read backwards
        stop = size - 1 - k
        return axis, True, size, _sliced(axis, slice(size - 1, stop if stop >= 0 else None, -1))
    return axis, False, size, _sliced(axis, slice(0, k))


def _topk(ctx, xs):
    # equal values come by increasing index and NaN is the largest, as in onnxruntime; with
    # sorted=0 the order is still sorted (ONNX leaves it open)
    axis, largest, size, first_k = ctx
    x = xs[0]
    if largest:  # a stable sort of the reversed axis: read backwards, equal values keep increasing indices
        index = np.subtract(size - 1, np.argsort(np.flip(x, axis), axis=axis, kind="stable")[first_k],
                            dtype=np.int64)
    else:
        index = np.argsort(x, axis=axis, kind="stable")[first_k].astype(np.int64, copy=False)
    return [np.take_along_axis(x, index, axis), index]


register(Op("TopK", {"axis": Attr("int", -1), "largest": Attr("int", 1, flag), "sorted": Attr("int", 1, flag)},
            _topk_infer, _topk, prepare=_topk_prepare, time=None, time_of=_one_axis_time,
            inputs=(2, 2), outputs=(2, 2), const_inputs=(1,)))


def _cumsum_axis(values) -> int:
    axis = const_ints("CumSum", values[1], "axis")
    if len(axis) != 1:
        raise ModelFormatError(f"CumSum: axis must be a single integer, got {len(axis)} values")
    return normalize_axis("CumSum", axis[0], len(values[0].shape))


def _cumsum_infer(attrs, values):
    dtype = common_dtype("CumSum", values[:1], NUMERIC)
    _cumsum_axis(values)
    return [(values[0].shape, dtype)]


def _cumsum_prepare(attrs, values):
    axis = _cumsum_axis(values)
    parts = (slice(0, 1), slice(1, None), slice(0, max(values[0].shape[axis] - 1, 0)))
    return (axis, bool(attrs["exclusive"]), bool(attrs["reverse"])) + tuple(_sliced(axis, p) for p in parts)


def _cumsum(ctx, xs):
    axis, exclusive, reverse, first, rest, head = ctx
    x = xs[0]
    out = np.empty_like(x)
    source, target = (np.flip(x, axis), np.flip(out, axis)) if reverse else (x, out)
    if exclusive:  # the sum of the values before each one
        target[first] = 0
        np.cumsum(source[head], axis=axis, out=target[rest])
    else:
        np.cumsum(source, axis=axis, out=target)
    return [out]


def _cumsum_time(attrs, values, time_axis):
    if _axis_time(len(values[0].shape), (_cumsum_axis(values),), time_axis) == "step":
        return "step"
    return "sequence" if attrs["reverse"] else "causal"


register(Op("CumSum", {"exclusive": Attr("int", 0, flag), "reverse": Attr("int", 0, flag)},
            _cumsum_infer, _cumsum, prepare=_cumsum_prepare, time=None, time_of=_cumsum_time,
            inputs=(2, 2), const_inputs=(1,)))


# ---- Softmax, LogSoftmax, Hardmax (opset 13: along one axis) ----

def _softmax_infer(name, attrs, values):
    dtype = common_dtype(name, values, _FLOATS)
    normalize_axis(name, attrs["axis"], len(values[0].shape))
    return [(values[0].shape, dtype)]


def _shifted(x, axis):
    """x minus its max along axis (a row with NaN or +inf gives NaN, as in onnxruntime)."""
    return np.subtract(x, np.maximum.reduce(x, axis=axis, keepdims=True, initial=-np.inf), out=np.empty_like(x))


def _last_axis_rows(axis, x, log_softmax):
    """Softmax (LogSoftmax) over the last axis of a C-contiguous float32 ``x`` (or over an axis only dims of 1
    follow: its rows are as contiguous) by the C kernel (_softmax.h: within ~5e-7 relative of float64); None for
    any other axis or layout (numpy's)."""
    if any(d != 1 for d in x.shape[axis + 1:]) or x.dtype != FLOAT or not x.flags.c_contiguous:
        return None
    y = np.empty_like(x)
    _kernels.softmax_rows(x.reshape(x.shape[:axis + 1]), y.reshape(x.shape[:axis + 1]), log_softmax)
    return y


def _softmax(axis, xs):
    y = _last_axis_rows(axis, xs[0], False)
    if y is not None:
        return [y]
    y = _shifted(xs[0], axis)
    np.exp(y, out=y)
    y /= np.add.reduce(y, axis=axis, keepdims=True)
    return [y]


def _log_softmax(axis, xs):
    y = _last_axis_rows(axis, xs[0], True)
    if y is not None:
        return [y]
    y = _shifted(xs[0], axis)
    total = np.add.reduce(np.exp(y), axis=axis, keepdims=True)
    y -= np.log(total, out=total)
    return [y]


def _hardmax(axis, xs):
    x = xs[0]
    y = np.zeros_like(x)
    if x.shape[axis]:  # one-hot of the first max (the first NaN, if any)
        np.put_along_axis(y, np.argmax(x, axis=axis, keepdims=True), np.float32(1), axis)
    return [y]


for _name, _fn in (("Softmax", _softmax), ("LogSoftmax", _log_softmax), ("Hardmax", _hardmax)):
    register(Op(_name, {"axis": Attr("int", -1)}, partial(_softmax_infer, _name), _fn,
                prepare=lambda attrs, values: normalize_axis("", attrs["axis"], len(values[0].shape)),
                time=None, time_of=_one_axis_time))


# ---- normalization ----

def _standardize(x, axes, count, epsilon):
    """(x - mean) / sqrt(var + epsilon) over ``axes`` (a new array), with the mean and
    1 / sqrt(var + epsilon), their axes kept."""
    mean = np.add.reduce(x, axis=axes, keepdims=True)
    mean /= count
    centered = np.subtract(x, mean)
    y = np.square(centered)
    inv_std = np.add.reduce(y, axis=axes, keepdims=True)
    inv_std /= count
    inv_std += epsilon
    np.sqrt(inv_std, out=inv_std)
    np.reciprocal(inv_std, out=inv_std)
    return np.multiply(centered, inv_std, out=y), mean, inv_std


def _optional(xs, i):
    return xs[i] if i < len(xs) else None


def _layer_norm_infer(attrs, values):
    dtype = common_dtype("LayerNormalization", values, _FLOATS)
    shape = values[0].shape
    axis = normalize_axis("LayerNormalization", attrs["axis"], len(shape))
    for i, what in ((1, "Scale"), (2, "B")):
        if _optional(values, i) is not None:
            unidirectional("LayerNormalization", values[i].shape, shape[axis:], what)
    stats = shape[:axis] + (1,) * (len(shape) - axis)
    return [(shape, dtype), (stats, FLOAT), (stats, FLOAT)]


def _layer_norm_prepare(attrs, values):
    shape = values[0].shape
    axis = normalize_axis("LayerNormalization", attrs["axis"], len(shape))
    count = 1
    for d in shape[axis:]:
        count *= d
    return tuple(range(axis, len(shape))), np.float32(count), np.float32(attrs["epsilon"])


def _layer_norm(ctx, xs):
    y, mean, inv_std = _standardize(xs[0], *ctx)
    y *= xs[1]
    bias = _optional(xs, 2)
    if bias is not None:
        y += bias
    return [y, mean, inv_std]


def _layer_norm_time(attrs, values, time_axis):
    rank = len(values[0].shape)
    return _axis_time(rank, range(normalize_axis("", attrs["axis"], rank), rank), time_axis)


register(Op("LayerNormalization", {"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5, _epsilon),
                                   "stash_type": Attr("int", 1, _float_type)},
            _layer_norm_infer, _layer_norm, prepare=_layer_norm_prepare, time=None, time_of=_layer_norm_time,
            inputs=(2, 3), outputs=(1, 3)))


def _channels(name, values, min_rank, params=None) -> int:
    """C of an (N, C, ...) input with per-channel parameters: checks the rank, the dtypes and
    the parameters' shapes (``params``: the shapes allowed, default (C,))."""
    common_dtype(name, values, _FLOATS)
    shape = values[0].shape
    if len(shape) < min_rank:
        raise ModelFormatError(f"{name} needs an input of rank >= {min_rank} (N, C, ...), got shape {tuple(shape)}")
    channels = shape[1]
    allowed = params or [(channels,)]
    for value in values[1:]:
        if tuple(value.shape) not in allowed:
            raise ModelFormatError(f"{name}: a parameter of shape {tuple(value.shape)} for an input of shape "
                                   f"{tuple(shape)} (expected {' or '.join(str(a) for a in allowed)})")
    return channels


def _per_channel(a, rank):
    """A (C,) parameter shaped to broadcast along axis 1 of a rank-``rank`` tensor."""
    return a.reshape((-1,) + (1,) * (rank - 2))


def _batch_norm_infer(attrs, values):
    if attrs["training_mode"]:
        raise UnsupportedModelError("BatchNormalization with training_mode=1 (statistics of the batch) is not "
                                    "supported: export the model for inference")
    _channels("BatchNormalization", values, 2)
    return [(values[0].shape, FLOAT)]


def _batch_norm_params(scale, bias, mean, var, epsilon, rank):
    """y = x * a + b per channel."""
    a = scale / np.sqrt(var + epsilon)
    return _per_channel(a, rank), _per_channel(bias - mean * a, rank)


def _batch_norm_prepare(attrs, values):
    rank = len(values[0].shape)
    if all(v.const is not None for v in values[1:]):  # the usual case: folded once
        params = _batch_norm_params(*(v.const.astype(np.float64) for v in values[1:]), attrs["epsilon"], rank)
        return tuple(p.astype(np.float32) for p in params), None, rank
    return None, np.float32(attrs["epsilon"]), rank


def _batch_norm(ctx, xs):
    folded, epsilon, rank = ctx
    a, b = folded if folded is not None else _batch_norm_params(*xs[1:], epsilon, rank)
    y = np.multiply(xs[0], a)
    y += b
    return [y]


register(Op("BatchNormalization", {"epsilon": Attr("float", 1e-5, _epsilon), "momentum": Attr("float", 0.9),
                                   "training_mode": Attr("int", 0, flag)},
            _batch_norm_infer, _batch_norm, prepare=_batch_norm_prepare, inputs=(5, 5)))


def _instance_norm_prepare(attrs, values):
    shape = values[0].shape
    count = 1
    for d in shape[2:]:
        count *= d
    return tuple(range(2, len(shape))), np.float32(count), np.float32(attrs["epsilon"])


def _instance_norm(ctx, xs):
    x, scale, bias = xs
    y = _standardize(x, *ctx)[0]
    y *= _per_channel(scale, x.ndim)
    y += _per_channel(bias, x.ndim)
    return [y]


def _spatial_time(attrs, values, time_axis):
    return "sequence" if time_axis % len(values[0].shape) >= 2 else "step"


def _instance_norm_infer(attrs, values):
    _channels("InstanceNormalization", values, 3)
    return [(values[0].shape, FLOAT)]


register(Op("InstanceNormalization", {"epsilon": Attr("float", 1e-5, _epsilon)}, _instance_norm_infer, _instance_norm,
            prepare=_instance_norm_prepare, time=None, time_of=_spatial_time, inputs=(3, 3)))


def _group_norm_infer(attrs, values):
    shape = values[0].shape
    groups = attrs["num_groups"]
    channels = shape[1] if len(shape) >= 2 else 0
    if channels % groups:
        raise ModelFormatError(f"GroupNormalization: num_groups={groups} does not divide the {channels} channels "
                               f"of shape {tuple(shape)}")
    # scale and bias per channel (opset 21) or per group (opset 18, deprecated)
    _channels("GroupNormalization", values, 2, [(channels,), (groups,)])
    if values[1].shape != values[2].shape:
        raise ModelFormatError(f"GroupNormalization: scale of shape {tuple(values[1].shape)} and bias of shape "
                               f"{tuple(values[2].shape)}")
    return [(shape, FLOAT)]


def _group_norm_prepare(attrs, values):
    shape = values[0].shape
    groups, channels = attrs["num_groups"], shape[1]
    count = 1
    for d in shape[1:]:
        count *= d
    per_group = values[1].shape[0] != channels
    return groups, count // groups, np.float32(attrs["epsilon"]), channels // groups if per_group else 1


def _group_norm(ctx, xs):
    groups, count, epsilon, repeat = ctx
    x, scale, bias = xs
    y = _standardize(x.reshape(x.shape[0], groups, count), (2,), np.float32(count), epsilon)[0].reshape(x.shape)
    if repeat > 1:
        scale, bias = np.repeat(scale, repeat), np.repeat(bias, repeat)
    y *= _per_channel(scale, x.ndim)
    y += _per_channel(bias, x.ndim)
    return [y]


def _positive(value):
    return None if value > 0 else f"must be > 0, got {value}"


register(Op("GroupNormalization", {"num_groups": Attr("int", check=_positive),
                                   "epsilon": Attr("float", 1e-5, _epsilon), "stash_type": Attr("int", 1, _float_type)},
            _group_norm_infer, _group_norm, prepare=_group_norm_prepare, time=None,
            time_of=lambda attrs, values, time_axis: "sequence" if time_axis % len(values[0].shape) else "step",
            inputs=(3, 3)))


def _lp_norm_infer(attrs, values):
    dtype = common_dtype("LpNormalization", values, _FLOATS)
    normalize_axis("LpNormalization", attrs["axis"], len(values[0].shape))
    return [(values[0].shape, dtype)]


def _lp_norm(ctx, xs):
    axis, p = ctx
    x = xs[0]
    norm = np.add.reduce(np.abs(x) if p == 1 else np.square(x), axis=axis, keepdims=True)
    if p == 2:
        np.sqrt(norm, out=norm)
    np.copyto(norm, np.float32(1), where=norm == 0)  # a zero vector stays zero, as in onnxruntime
    return [np.divide(x, norm)]


register(Op("LpNormalization", {"axis": Attr("int", -1), "p": Attr("int", 2, lambda v: None if v in (1, 2)
                                                                     else f"must be 1 or 2, got {v}")},
            _lp_norm_infer, _lp_norm,
            prepare=lambda attrs, values: (normalize_axis("", attrs["axis"], len(values[0].shape)), attrs["p"]),
            time=None, time_of=_one_axis_time))
