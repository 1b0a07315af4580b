"""float64 references of the reductions and normalizations: plain numpy and Python loops over
rows, independent of :mod:`grurt.ops.reduce`. Sums are exact (``math.fsum``); a max or min
with a NaN is NaN, and ArgMax/ArgMin/Hardmax take the first NaN as the extreme."""
from __future__ import annotations

import math

import numpy as np


def _axes(attrs, x):
    """The reduced axes (non-negative, sorted; empty: each value is a row of its own)."""
    rank = x[0].ndim
    axes = attrs["axes"]
    if axes is None and len(x) > 1 and x[1] is not None:
        axes = [int(a) for a in x[1].ravel()]
    if not axes:
        return [] if attrs["noop_with_empty_axes"] else list(range(rank))
    return sorted(a % rank for a in axes)


def _reduce(row_fn, dtype=None):
    """A Reduce* reference: ``row_fn`` of each row of values the reduction gathers (a list of
    Python numbers; with no axes, of each value alone: ReduceL1 still takes its abs)."""
    def reference(attrs, x):
        v = x[0]
        axes = _axes(attrs, x)
        kept = [a for a in range(v.ndim) if a not in axes]
        rows = np.transpose(v, kept + axes).reshape([v.shape[a] for a in kept] + [-1])
        out = np.empty(rows.shape[:-1], dtype or (np.float64 if v.dtype.kind == "f" else v.dtype))
        for index in np.ndindex(out.shape):
            out[index] = row_fn(rows[index].tolist())
        if attrs["keepdims"]:
            out = out.reshape([1 if a in axes else d for a, d in enumerate(v.shape)])
        return [out]
    return reference


def _wrap64(v: int) -> int:
    return (v + 2**63) % 2**64 - 2**63


def _sum(row):
    return math.fsum(row) if any(isinstance(r, float) for r in row) else _wrap64(sum(row))


def _mean(row):
    if row and isinstance(row[0], int):
        total = sum(row)
        q = abs(total) // len(row)  # an integer mean truncated toward zero
        return q if total >= 0 else -q
    return math.fsum(row) / len(row) if row else math.nan


def _extreme(largest):
    def fn(row):
        if any(isinstance(r, float) and math.isnan(r) for r in row):
            return math.nan
        if not row:
            return -math.inf if largest else math.inf
        return max(row) if largest else min(row)
    return fn


def _prod(row):
    return math.prod(row) if any(isinstance(r, float) for r in row) else _wrap64(math.prod(row))


def _log_sum_exp(row):
    if not row:
        return -math.inf
    if any(math.isnan(r) for r in row):
        return math.nan
    peak = max(row)
    if math.isinf(peak):
        return peak
    return peak + math.log(math.fsum(math.exp(r - peak) for r in row))


def _first_extreme(row, largest, last):
    """The index of the first (or last) max/min of ``row``, a NaN being the extreme."""
    order = range(len(row) - 1, -1, -1) if last else range(len(row))
    best = None
    for i in order:
        if isinstance(row[i], float) and math.isnan(row[i]):
            return i
        if best is None or (row[i] > row[best] if largest else row[i] < row[best]):
            best = i
    return best


def _along(v, axis, fn, out_len=None, dtype=np.float64):
    """fn(list of the values along ``axis``) -> list, for each position of the other axes."""
    moved = np.moveaxis(v, axis, -1)
    out = np.empty(moved.shape[:-1] + (moved.shape[-1] if out_len is None else out_len,), dtype)
    for index in np.ndindex(moved.shape[:-1]):
        out[index] = fn(moved[index].tolist())
    return np.moveaxis(out, -1, axis)


def _arg(largest):
    def reference(attrs, x):
        v, axis = x[0], attrs["axis"] % x[0].ndim
        out = _along(v, axis, lambda row: [_first_extreme(row, largest, attrs["select_last_index"])], 1, np.int64)
        return [out if attrs["keepdims"] else out.squeeze(axis)]
    return reference


def _topk(attrs, x):
    v, k = x[0], int(x[1].ravel()[0])
    axis = attrs["axis"] % v.ndim

    def key(row, i):  # NaN the largest; equal values by increasing index
        nan = isinstance(row[i], float) and math.isnan(row[i])
        if attrs["largest"]:
            return (0, 0, i) if nan else (1, -row[i], i)
        return (1, 0, i) if nan else (0, row[i], i)

    def order(row):
        return sorted(range(len(row)), key=lambda i: key(row, i))[:k]
    index = _along(v, axis, order, k, np.int64)
    return [np.take_along_axis(v, index, axis), index]


def _cumsum(attrs, x):
    v, axis = x[0], int(x[1].ravel()[0]) % x[0].ndim

    def running(row):
        if attrs["reverse"]:
            row = row[::-1]
        out, total = [], 0
        for r in row:
            if attrs["exclusive"]:
                out.append(total)
            total += r
            if not attrs["exclusive"]:
                out.append(total)
        out = out[::-1] if attrs["reverse"] else out
        return out if v.dtype.kind == "f" else [_wrap64(o) for o in out]
    return [_along(v, axis, running, dtype=v.dtype)]


def _softmax(attrs, x):
    def row_fn(row):
        row = np.array(row)
        e = np.exp(row - row.max())
        return e / e.sum()
    return [_along(x[0], attrs["axis"] % x[0].ndim, row_fn)]


def _log_softmax(attrs, x):
    def row_fn(row):
        row = np.array(row)
        shifted = row - row.max()
        return shifted - math.log(math.fsum(np.exp(shifted)))
    return [_along(x[0], attrs["axis"] % x[0].ndim, row_fn)]


def _hardmax(attrs, x):
    def row_fn(row):
        out = [0.0] * len(row)
        if row:
            out[_first_extreme(row, True, False)] = 1.0
        return out
    return [_along(x[0], attrs["axis"] % x[0].ndim, row_fn)]


def _standardized(values, epsilon):
    """(values - mean) / sqrt(var + epsilon), the mean and 1 / sqrt(var + epsilon)."""
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / len(values)
    inv_std = 1 / math.sqrt(var + epsilon)
    return [(v - mean) * inv_std for v in values], mean, inv_std


def _layer_norm(attrs, x):
    v, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 and x[2] is not None else 0.0
    axis = attrs["axis"] % v.ndim
    rows = v.reshape(math.prod(v.shape[:axis]), -1)
    y, mean, inv_std = np.empty(rows.shape), np.empty(len(rows)), np.empty(len(rows))
    for i, row in enumerate(rows):
        normalized, mean[i], inv_std[i] = _standardized(row.tolist(), attrs["epsilon"])
        y[i] = normalized
    stats = v.shape[:axis] + (1,) * (v.ndim - axis)
    return [y.reshape(v.shape) * scale + bias, mean.reshape(stats), inv_std.reshape(stats)]


def _batch_norm(attrs, x):
    v, scale, bias, mean, var = x
    per_channel = (-1,) + (1,) * (v.ndim - 2)
    return [(v - mean.reshape(per_channel)) / np.sqrt(var.reshape(per_channel) + attrs["epsilon"])
            * scale.reshape(per_channel) + bias.reshape(per_channel)]


def _instance_norm(attrs, x):
    v, scale, bias = x
    y = np.empty(v.shape)
    for n in range(v.shape[0]):
        for c in range(v.shape[1]):
            normalized = _standardized(v[n, c].ravel().tolist(), attrs["epsilon"])[0]
            y[n, c] = np.reshape(normalized, v.shape[2:]) * scale[c] + bias[c]
    return [y]


def _group_norm(attrs, x):
    v, scale, bias = x
    groups, channels = attrs["num_groups"], v.shape[1]
    size = channels // groups
    y = np.empty(v.shape)
    for n in range(v.shape[0]):
        for g in range(groups):
            block = v[n, g * size:(g + 1) * size]
            y[n, g * size:(g + 1) * size] = np.reshape(_standardized(block.ravel().tolist(), attrs["epsilon"])[0],
                                                       block.shape)
    for c in range(channels):  # scale and bias per channel (opset 21) or per group (opset 18)
        p = c if len(scale) == channels else c // size
        y[:, c] = y[:, c] * scale[p] + bias[p]
    return [y]


def _lp_norm(attrs, x):
    def row_fn(row):
        norm = math.fsum(abs(r) for r in row) if attrs["p"] == 1 else math.sqrt(math.fsum(r * r for r in row))
        return [r / norm if norm else 0.0 for r in row]
    return [_along(x[0], attrs["axis"] % x[0].ndim, row_fn)]


REFERENCE = {
    "ReduceSum": _reduce(_sum),
    "ReduceMean": _reduce(_mean),
    "ReduceMax": _reduce(_extreme(True)),
    "ReduceMin": _reduce(_extreme(False)),
    "ReduceProd": _reduce(_prod),
    "ReduceL1": _reduce(lambda row: _sum([abs(r) for r in row])),
    "ReduceL2": _reduce(lambda row: math.sqrt(math.fsum(r * r for r in row))),
    "ReduceSumSquare": _reduce(lambda row: _sum([r * r for r in row])),
    "ReduceLogSumExp": _reduce(_log_sum_exp),
    "ArgMax": _arg(True),
    "ArgMin": _arg(False),
    "TopK": _topk,
    "CumSum": _cumsum,
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "Hardmax": _hardmax,
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "GroupNormalization": _group_norm,
    "LpNormalization": _lp_norm,
}
