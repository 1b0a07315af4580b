"""float64 references of the conv ops: plain numpy, independent of :mod:`grurt.ops.conv`.

Convolutions and pools loop over output positions (ConvTranspose over input positions and
kernel taps), each step a small product or reduction written as the ONNX operator page states
it; padding sizes are derived again here from the auto_pad / ceil_mode rules."""
from __future__ import annotations

import itertools
import math

import numpy as np


def _ints(attrs, name, n, default):
    return list(attrs[name]) if attrs.get(name) is not None else [default] * n


def _pads(attrs, spatial, kernel, strides, dilations, ceil_mode=False):
    """(begin, end, output size) per spatial axis."""
    n = len(spatial)
    explicit = _ints(attrs, "pads", 2 * n, 0)
    result = []
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        if attrs["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
            out = math.ceil(spatial[i] / strides[i])
            total = max(0, (out - 1) * strides[i] + span - spatial[i])
            begin = total // 2 if attrs["auto_pad"] == "SAME_UPPER" else total - total // 2
            result.append((begin, total - begin, out))
            continue
        begin, end = (0, 0) if attrs["auto_pad"] == "VALID" else (explicit[i], explicit[i + n])
        length = spatial[i] + begin + end - span
        out = (math.ceil(length / strides[i]) if ceil_mode else length // strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= spatial[i] + begin:
            out -= 1
        result.append((begin, end, out))
    return result


def conv(attrs, inputs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros(w.shape[0])
    n = x.ndim - 2
    kernel = w.shape[2:]
    strides, dilations = _ints(attrs, "strides", n, 1), _ints(attrs, "dilations", n, 1)
    axes = _pads(attrs, x.shape[2:], kernel, strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(bg, en) for bg, en, _ in axes])
    groups = attrs["group"]
    cg, mg = w.shape[1], w.shape[0] // groups
    y = np.zeros((x.shape[0], w.shape[0]) + tuple(o for _, _, o in axes))
    for pos in itertools.product(*(range(o) for _, _, o in axes)):
        window = tuple(slice(p * s, p * s + (k - 1) * d + 1, d) for p, s, k, d in zip(pos, strides, kernel, dilations))
        for g in range(groups):
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + window]            # (N, C/g, kernel...)
            y[(slice(None), slice(g * mg, (g + 1) * mg)) + pos] = np.tensordot(
                patch, w[g * mg:(g + 1) * mg], axes=(list(range(1, n + 2)), list(range(1, n + 2))))
    return [y + b.reshape((-1,) + (1,) * n)]


def conv_transpose(attrs, inputs):
    """Every input position i adds x[i] · W[tap] at output position i·stride + tap·dilation of
    the full result; the output is the full result from pad-begin on (zeros past its end)."""
    x, w = inputs[0], inputs[1]
    groups = attrs["group"]
    cg, mg = x.shape[1] // groups, w.shape[1]
    b = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros(mg * groups)
    n = x.ndim - 2
    kernel = w.shape[2:]
    strides, dilations = _ints(attrs, "strides", n, 1), _ints(attrs, "dilations", n, 1)
    extra = _ints(attrs, "output_padding", n, 0)
    full = [(x.shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    y = np.zeros((x.shape[0], mg * groups) + tuple(f + e for f, e in zip(full, extra)))
    for pos in itertools.product(*(range(d) for d in x.shape[2:])):
        for tap in itertools.product(*(range(k) for k in kernel)):
            at = tuple(p * s + t * d for p, s, t, d in zip(pos, strides, tap, dilations))
            for g in range(groups):
                inputs_g = x[(slice(None), slice(g * cg, (g + 1) * cg)) + pos]          # (N, C/g)
                weights_g = w[(slice(g * cg, (g + 1) * cg), slice(None)) + tap]        # (C/g, M/g)
                y[(slice(None), slice(g * mg, (g + 1) * mg)) + at] += inputs_g @ weights_g
    explicit = _ints(attrs, "pads", 2 * n, 0)
    begins, outs = [], []
    for i in range(n):
        total_length = full[i] + extra[i]
        if attrs.get("output_shape") is not None or attrs["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
            out = attrs["output_shape"][i] if attrs.get("output_shape") is not None else x.shape[2 + i] * strides[i]
            total = total_length - out
            begins.append(total // 2 if attrs["auto_pad"] == "SAME_UPPER" else total - total // 2)
            outs.append(out)
        else:
            begins.append(explicit[i])
            outs.append(total_length - explicit[i] - explicit[i + n])
    crop = tuple(slice(bg, bg + o) for bg, o in zip(begins, outs))
    return [y[(slice(None), slice(None)) + crop] + b.reshape((-1,) + (1,) * n)]


def _pool(attrs, x, reduce):
    """``reduce(values inside the input, count of window positions the divisor counts)`` per window."""
    n = x.ndim - 2
    kernel = attrs["kernel_shape"]
    strides, dilations = _ints(attrs, "strides", n, 1), _ints(attrs, "dilations", n, 1)
    axes = _pads(attrs, x.shape[2:], kernel, strides, dilations, bool(attrs.get("ceil_mode")))
    y = np.zeros(x.shape[:2] + tuple(o for _, _, o in axes))
    for pos in itertools.product(*(range(o) for _, _, o in axes)):
        inside, padded = [], []   # per axis: input positions of the window; those within the padding too
        for i, p in enumerate(pos):
            begin, end, _ = axes[i]
            taps = [p * strides[i] - begin + j * dilations[i] for j in range(kernel[i])]
            inside.append([t for t in taps if 0 <= t < x.shape[2 + i]])
            padded.append([t for t in taps if -begin <= t < x.shape[2 + i] + end])
        values = x[np.ix_(range(x.shape[0]), range(x.shape[1]), *inside)].reshape(x.shape[:2] + (-1,))
        y[(slice(None), slice(None)) + pos] = reduce(values, math.prod(len(p) for p in padded))
    return y


def max_pool(attrs, inputs):
    return [_pool(attrs, inputs[0], lambda v, _: v.max(axis=-1))]


def average_pool(attrs, inputs):
    if attrs["count_include_pad"]:
        return [_pool(attrs, inputs[0], lambda v, count: v.sum(axis=-1) / count)]
    return [_pool(attrs, inputs[0], lambda v, _: v.mean(axis=-1))]


def lp_pool(attrs, inputs):
    p = attrs["p"]
    return [_pool(attrs, inputs[0], lambda v, _: (np.abs(v) ** p).sum(axis=-1) ** (1.0 / p))]


def global_average_pool(attrs, inputs):
    x = inputs[0]
    return [x.reshape(x.shape[:2] + (-1,)).mean(axis=-1).reshape(x.shape[:2] + (1,) * (x.ndim - 2))]


def global_max_pool(attrs, inputs):
    x = inputs[0]
    return [x.reshape(x.shape[:2] + (-1,)).max(axis=-1).reshape(x.shape[:2] + (1,) * (x.ndim - 2))]


REFERENCE = {"Conv": conv, "ConvTranspose": conv_transpose, "MaxPool": max_pool, "AveragePool": average_pool,
             "LpPool": lp_pool, "GlobalAveragePool": global_average_pool, "GlobalMaxPool": global_max_pool}
