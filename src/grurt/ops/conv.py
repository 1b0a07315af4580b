"""Ops of the conv family: Conv, ConvTranspose, MaxPool, AveragePool, LpPool,
GlobalAveragePool, GlobalMaxPool over (N, C, spatial...) float32 tensors, 1 to 3 spatial axes
(see :mod:`grurt.ops`).

A Conv or ConvTranspose of constant weights over 1 or 2 spatial axes runs on grurt's C kernel
(``_conv2d.h``: register tiles over the input's rows in place or gathered, depthwise rows, the
transposed scatter; on W10's convolutions 2-8x the numpy path below), with the activation that
reads it fused when ``tensor_passes`` finds one (``ACTIVATIONS``); beyond ``KERNEL_MAX_TAPS``
products per output or ``KERNEL_MAX_FMAS`` in all, BLAS's blocking wins and numpy runs it.

Otherwise (3 spatial axes, weights computed at run time, large products) Conv is im2col: the
padded input seen through a strided window view, copied once to
(N, groups, C/groups · kernel, positions), and one batched ``np.matmul`` with the weights packed
in ``prepare`` as (groups, M/groups, C/groups · kernel). Measured against a loop over kernel
taps accumulating one matmul per tap, and (depthwise) a multiply-add per tap, on DeepFilterNet
sizes (input (1, 64, T, 32), kernel (1, 3) or (3, 3), groups 1/8/64, T = 1, 20, 100): im2col
was as fast or faster everywhere except the smallest (1, 3) kernels at T = 1 (within 20%), and
2-5x faster at T >= 20. A kernel along the first spatial axis only ((k, 1): DeepFilterNet's
pathway convs) needs no copy per tap: each tap's slab of the padded input is a view, and from
``SLABS_FROM`` columns on, one product per tap beats im2col (1.8x on (1, 64, 24, 96), k = 5).
ConvTranspose is the transposed product (one matmul; a broadcast multiply when each group has one
input channel) and a scatter-add per kernel tap; pools loop over kernel taps.

Padding sizes, SAME padding and output sizes are computed with Python ints in :func:`geometry`
and checked before ``infer`` returns.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .._kernels import ACTIVATION_CODES, Conv2d
from ..errors import ModelFormatError, UnsupportedModelError
from ..limits import MAX_PARAMETERS
from .recurrent import CALL
from .registry import FLOAT, Attr, Op, Value, canonical_dtype, register
from .shape import FROM_INPUT, checked_shape, optional

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
#: The spatial ranks a Conv of constant weights runs on the C kernel (_conv2d.h) for
KERNEL_AXES = (1, 2)
#: ... when each output sums at most this many products (or one input channel per group): the kernel keeps
#: 32 positions of them in L1; beyond, BLAS's blocking wins (a 3x3 Conv of 256 channels over 32x32: 3x faster)
KERNEL_MAX_TAPS = 512
#: ... and at most this many multiply-adds in all (BLAS's blocking wins on large products: a 1x1 Conv of 256
#: channels over 64x64, 2.7e8 of them, 1.6x faster)
KERNEL_MAX_FMAS = 2**26
#: A ConvTranspose of constant weights runs on the C kernel's direct scatter when C/groups · M/groups is at most
#: this (depthwise: 1); beyond, one matmul of every tap and input channel wins
TRANSPOSED_MAX_CHANNELS = 4
#: The activation ops a Conv or ConvTranspose on the C kernel applies itself (tensor_passes fuses them): their
#: names in grurt.spec's activations (the C of _gru_math.h: within 3e-7 of the elementwise ops)
ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}
#: im2col columns of at least this many elements make a Conv with a kernel along its first spatial axis
#: only run one product per tap instead (below, im2col's one call is cheaper: 15 vs 26 us at 30K elements)
SLABS_FROM = 2**16


def _timed(name):
    """``Op.time_of`` of op ``name``: :func:`_time` (defined with the ops, below)."""
    return lambda attrs, values, time_axis: _time(name, attrs, values, time_axis)


def _positive(v):
    return None if all(i >= 1 for i in v) else "must be positive"


def _not_negative(v):
    return None if all(i >= 0 for i in v) else "must not be negative"


def _flag(v):
    return None if v in (0, 1) else "must be 0 or 1"


_WINDOW = {"auto_pad": Attr("string", "NOTSET", lambda v: None if v in AUTO_PADS else f"must be one of {AUTO_PADS}"),
           "kernel_shape": Attr("ints", None, _positive), "strides": Attr("ints", None, _positive),
           "dilations": Attr("ints", None, _positive), "pads": Attr("ints", None, _not_negative)}


def _spatial(op: str, x: Value) -> Tuple[int, ...]:
    if canonical_dtype(x.dtype) != FLOAT:   # ONNX's Conv and pools are float-only but for int8 MaxPool
        error = UnsupportedModelError if op == "MaxPool" else ModelFormatError
        raise error(f"{op}: X must be a float tensor, got {x.dtype}")
    if not 3 <= len(x.shape) <= 5:
        raise UnsupportedModelError(f"{op}: X {x.shape} must be (N, C, spatial...) with 1 to 3 spatial axes")
    return tuple(x.shape[2:])


def _per_axis(op, attrs, name, n, default):
    value = attrs[name]
    if value is None:
        return (default,) * n
    if len(value) != n:
        raise ModelFormatError(f"{op}: {name} {value} for {n} spatial axes")
    return tuple(value)


def geometry(op: str, attrs: dict, spatial: Sequence[int], kernel: Sequence[int], ceil_mode: bool = False):
    """Per spatial axis: (pad before, pad after, output size) with ONNX's rules for explicit pads,
    SAME_UPPER / SAME_LOWER (``ceil(in / stride)`` outputs, the odd padding after / before),
    VALID, and ``ceil_mode`` (a last window may start in the padding after, never after it)."""
    n = len(spatial)
    strides = _per_axis(op, attrs, "strides", n, 1)
    dilations = _per_axis(op, attrs, "dilations", n, 1) if "dilations" in attrs else (1,) * n
    mode = attrs["auto_pad"]
    if mode != "NOTSET" and attrs["pads"] is not None and any(attrs["pads"]):
        raise ModelFormatError(f"{op}: pads {attrs['pads']} together with auto_pad={mode}")
    pads = _per_axis(op, {"pads": attrs["pads"]}, "pads", 2 * n, 0) if mode == "NOTSET" else (0,) * (2 * n)
    result = []
    for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations)):
        span = (k - 1) * d + 1
        if mode in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // s)
            total = max((out - 1) * s + span - size, 0)
            small = total // 2
            before = small if mode == "SAME_UPPER" else total - small
            result.append((before, total - before, out))
            continue
        before, after = pads[i], pads[i + n]
        room = size + before + after - span
        if room < 0:
            raise ModelFormatError(f"{op}: a kernel spanning {span} (kernel {k}, dilation {d}) does not fit axis {i} "
                                   f"of {size} padded by {before} + {after}")
        out = (-(-room // s) if ceil_mode else room // s) + 1
        if ceil_mode and (out - 1) * s >= size + before:
            out -= 1   # the last window would start in the padding after
        result.append((before, after, out))
    return result, strides, dilations


class _Padding:
    """A float32 (N, C, spatial...) input of ``shape`` padded by (before, after) on each spatial
    axis: the shape and the place of the input in it, computed once."""

    def __init__(self, shape, pads):
        self.none = not any(b or a for b, a in pads)
        self.shape = tuple(shape[:2]) + tuple(d + b + a for d, (b, a) in zip(shape[2:], pads))
        self.inside = (Ellipsis,) + tuple(slice(b, b + d) for d, (b, _) in zip(shape[2:], pads))

    def __call__(self, x: np.ndarray, fill=0.0) -> np.ndarray:
        if self.none:
            return np.ascontiguousarray(x)
        xp = np.full(self.shape, fill, dtype=np.float32) if fill else np.zeros(self.shape, dtype=np.float32)
        xp[self.inside] = x
        return xp


def window_view(padded_shape, channel_shape, kernel, dilations, out, strides):
    """(shape, strides in bytes) of the view (N, *channel_shape, *kernel, *out) of a C-contiguous
    float32 array of ``padded_shape`` (N, C, spatial...): element ``[n, c..., j..., o...]`` is
    ``xp[n, c, o·stride + j·dilation]`` (c... the channel's index split as channel_shape)."""
    item = np.dtype(np.float32).itemsize
    step = tuple(item * math.prod(padded_shape[i + 1:]) for i in range(len(padded_shape)))
    channel = tuple(step[1] * math.prod(channel_shape[i + 1:]) for i in range(len(channel_shape)))
    shape = tuple(padded_shape[:1]) + tuple(channel_shape) + tuple(kernel) + tuple(out)
    strides = step[:1] + channel + tuple(s * d for s, d in zip(step[2:], dilations)) \
        + tuple(s * t for s, t in zip(step[2:], strides))
    return shape, strides


def _c_ints(*groups) -> bool:
    """Whether strides, dilations and pads fit the C kernel's ints (sizes do: MAX_PARAMETERS bounds them, but
    a stride or dilation that never steps, over one position, is any number)."""
    return all(0 <= v < 2**31 for group in groups for v in group)


def _bias_of(values, shape_bias):
    """The bias input (2) shaped by ``shape_bias`` when constant, FROM_INPUT when not, None when omitted."""
    b = optional(values, 2)
    return None if b is None else FROM_INPUT if b.const is None else shape_bias(b.const)


def _workspace(op: str, what: str, shape) -> None:
    """A buffer ``run`` allocates besides its output (the padded input, im2col's columns, the
    full transposed product) is bounded as an output is: attributes (pads, strides) decide it."""
    size = math.prod(shape)
    if size > MAX_PARAMETERS:
        raise ModelFormatError(f"{op}: {what} {tuple(shape)} would have {size} elements, more than "
                               f"grurt.limits.MAX_PARAMETERS = {MAX_PARAMETERS}")


def _padded_shape(x_shape, axes):
    """The input padded by each axis's (before, after, ...) pads."""
    return tuple(x_shape[:2]) + tuple(d + a[0] + a[1] for d, a in zip(x_shape[2:], axes))


# ---- Conv ----

def _conv_check(attrs, values):
    x, w = values[0], values[1]
    spatial = _spatial("Conv", x)
    if len(w.shape) != len(x.shape):
        raise ModelFormatError(f"Conv: W {w.shape} and X {x.shape} differ in rank")
    group = attrs["group"]
    m, cg, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
    if x.shape[1] != cg * group or m % group:
        raise ModelFormatError(f"Conv: X {x.shape} and W {w.shape} with group={group}: X needs {cg * group} "
                               f"channels and W's {m} outputs a multiple of {group}")
    if attrs["kernel_shape"] is not None and tuple(attrs["kernel_shape"]) != kernel:
        raise ModelFormatError(f"Conv: kernel_shape {attrs['kernel_shape']} but W {w.shape}")
    b = optional(values, 2)
    if b is not None and tuple(b.shape) != (m,):
        raise ModelFormatError(f"Conv: B {b.shape} for {m} output channels")
    axes, strides, dilations = geometry("Conv", attrs, spatial, kernel)
    out = checked_shape("Conv", (x.shape[0], m) + tuple(o for _, _, o in axes))
    _workspace("Conv", "the padded input", _padded_shape(x.shape, axes))
    _workspace("Conv", "the im2col columns", (x.shape[0], x.shape[1] * math.prod(kernel), math.prod(out[2:])))
    return out, axes, strides, dilations


class _ConvPlan:
    """A Conv's packed weights, (groups, M/groups, C/groups · kernel), and its geometry."""

    def __init__(self, attrs, values):
        self.out, axes, strides, dilations = _conv_check(attrs, values)
        x, w = values[0].shape, values[1].shape
        self.group = attrs["group"]
        kernel = tuple(w[2:])
        self.padding = _Padding(x, [(b, a) for b, a, _ in axes])
        self.pointwise = self.padding.none and all(k == 1 for k in kernel) and all(s == 1 for s in strides)
        self.view = window_view(self.padding.shape, (self.group, x[1] // self.group), kernel, dilations,
                                self.out[2:], strides)
        self.cols = (x[0], self.group, x[1] // self.group * math.prod(kernel), math.prod(self.out[2:]))
        self.weights = None if values[1].const is None else self._pack(values[1].const)
        self.bias = _bias_of(values, self._bias)
        self.slabs = None
        if (self.group == 1 and kernel[0] > 1 and all(k == 1 for k in kernel[1:]) and all(s == 1 for s in strides)
                and not any(b or a for b, a, _ in axes[1:]) and values[1].const is not None
                and math.prod(self.cols) >= SLABS_FROM):
            # a kernel along the first spatial axis only: one product per tap with a slab of the padded
            # input, each a view (N, C, positions), instead of im2col's copy (a (5, 1) kernel over
            # (1, 64, 24, 96): 615 -> 342 us)
            w = np.asarray(values[1].const, np.float32)
            self.slabs = [(j * dilations[0], np.ascontiguousarray(w[:, :, j].reshape(w.shape[0], w.shape[1])))
                          for j in range(kernel[0])]
            self.slab_shape = (x[0], x[1], math.prod(self.out[2:]))

        self.native = None
        if (len(kernel) in KERNEL_AXES and values[1].const is not None and self.bias is not FROM_INPUT
                and _c_ints(strides, dilations, [a for b, a, _ in axes], [b for b, _, _ in axes])
                and (values[1].shape[1] * math.prod(kernel) <= KERNEL_MAX_TAPS or values[1].shape[1] == 1)
                and math.prod(self.out) * values[1].shape[1] * math.prod(kernel) <= KERNEL_MAX_FMAS):
            # constant weights over 1 or 2 spatial axes: the C kernel (_conv2d.h), a 1-D conv as one row
            b = optional(values, 2)
            flat = len(kernel) == 1
            self.native_args = (False, x if not flat else x[:2] + (1,) + x[2:], self.out,
                                values[1].const if not flat else values[1].const[:, :, None],
                                None if b is None else b.const, self.group, ((1,) if flat else ()) + strides,
                                ((1,) if flat else ()) + dilations,
                                (0, axes[0][0], 0, axes[0][1]) if flat
                                else (axes[0][0], axes[1][0], axes[0][1], axes[1][1]))
            self.native = Conv2d(*self.native_args)

    def _pack(self, w):
        # sizes spelled out, not -1: W may have no outputs
        return np.ascontiguousarray(w, dtype=np.float32).reshape(self.group, w.shape[0] // self.group,
                                                                 math.prod(w.shape[1:]))

    def _by_slabs(self, x):
        xp = self.padding(x)
        steps = self.out[2]
        (first, w), *rest = self.slabs
        y = np.matmul(w, xp[:, :, first:first + steps].reshape(self.slab_shape))
        term = np.empty_like(y)
        for offset, w in rest:
            y += np.matmul(w, xp[:, :, offset:offset + steps].reshape(self.slab_shape), out=term)
        return y

    def _bias(self, b):
        return np.asarray(b, dtype=np.float32).reshape(self.group, b.shape[0] // self.group, 1)

    def fused(self, activation: str):
        """A plan of this Conv followed by ``activation`` (a name of ``ACTIVATIONS``) in one kernel call, or None
        when this Conv does not run on the kernel."""
        if self.native is None:
            return None
        fused = object.__new__(type(self))
        fused.__dict__.update(self.__dict__)
        fused.native = Conv2d(*self.native_args, ACTIVATION_CODES[ACTIVATIONS[activation]])
        return fused

    def __call__(self, inputs):
        x = inputs[0]
        if self.native is not None:
            return [self.native(x, CALL.threads)]
        if self.slabs is not None:
            y = self._by_slabs(x)
        else:
            if self.pointwise:
                cols = x.reshape(self.cols)
            else:
                xp = self.padding(x)
                cols = np.ndarray(self.view[0], np.float32, xp, strides=self.view[1]).reshape(self.cols)  # im2col
            y = np.matmul(self.weights if self.weights is not None else self._pack(inputs[1]), cols)
        if self.bias is not None:
            y += self.bias if self.bias is not FROM_INPUT else self._bias(inputs[2])
        return [y.reshape(self.out)]


register(Op("Conv", dict(_WINDOW, group=Attr("int", 1, lambda v: None if v >= 1 else "must be positive")),
            lambda attrs, values: [(_conv_check(attrs, values)[0], FLOAT)],
            lambda plan, inputs: plan(inputs), _ConvPlan, time=None, time_of=_timed("Conv"), inputs=(2, 3)))


# ---- ConvTranspose ----

def _conv_transpose_check(attrs, values):
    x, w = values[0], values[1]
    spatial = _spatial("ConvTranspose", x)
    n = len(spatial)
    group = attrs["group"]
    if len(w.shape) != len(x.shape) or w.shape[0] != x.shape[1] or x.shape[1] % group:
        raise ModelFormatError(f"ConvTranspose: X {x.shape} and W {w.shape} with group={group}: W must be "
                               "(C, M/group, kernel...) with C a multiple of group")
    m, kernel = w.shape[1] * group, tuple(w.shape[2:])
    if attrs["kernel_shape"] is not None and tuple(attrs["kernel_shape"]) != kernel:
        raise ModelFormatError(f"ConvTranspose: kernel_shape {attrs['kernel_shape']} but W {w.shape}")
    b = optional(values, 2)
    if b is not None and tuple(b.shape) != (m,):
        raise ModelFormatError(f"ConvTranspose: B {b.shape} for {m} output channels")
    strides = _per_axis("ConvTranspose", attrs, "strides", n, 1)
    dilations = _per_axis("ConvTranspose", attrs, "dilations", n, 1)
    extra = _per_axis("ConvTranspose", attrs, "output_padding", n, 0)
    mode = attrs["auto_pad"]
    if mode != "NOTSET" and attrs["pads"] is not None and any(attrs["pads"]):
        raise ModelFormatError(f"ConvTranspose: pads {attrs['pads']} together with auto_pad={mode}")
    pads = _per_axis("ConvTranspose", attrs, "pads", 2 * n, 0) if mode == "NOTSET" else (0,) * (2 * n)
    target = attrs["output_shape"]
    if target is not None and len(target) != n:
        raise ModelFormatError(f"ConvTranspose: output_shape {target} for {n} spatial axes")
    axes = []
    for i, (size, k, s, d, e) in enumerate(zip(spatial, kernel, strides, dilations, extra)):
        if e >= max(s, d):
            raise ModelFormatError(f"ConvTranspose: output_padding {e} on axis {i} must be below the stride {s} "
                                   f"or the dilation {d}")
        full = (size - 1) * s + (k - 1) * d + 1 + e
        if target is not None or mode in ("SAME_UPPER", "SAME_LOWER"):
            out = target[i] if target is not None else size * s
            total = full - out
            if total < 0:
                raise ModelFormatError(f"ConvTranspose: output size {out} on axis {i} exceeds the {full} the input "
                                       "gives")
            small = total // 2
            before = small if mode == "SAME_UPPER" else total - small
        else:
            before, out = pads[i], full - pads[i] - pads[i + n]
        if out < 1:
            raise ModelFormatError(f"ConvTranspose: pads ({pads[i]}, {pads[i + n]}) leave no output on axis {i} "
                                   f"of {full}")
        axes.append((before, out, full - e))
    shape = checked_shape("ConvTranspose", (x.shape[0], m) + tuple(o for _, o, _ in axes))
    _workspace("ConvTranspose", "the taps' products", (x.shape[0], m * math.prod(kernel), math.prod(spatial)))
    _workspace("ConvTranspose", "the full product", (x.shape[0], m) + tuple(max(full, b + o) for b, o, full in axes))
    return shape, axes, strides, dilations


class _ConvTransposePlan:
    """W packed as (groups, M/groups · kernel, C/groups): one matmul gives every tap's
    contribution of every input position; each tap is added at its place in the output."""

    def __init__(self, attrs, values):
        self.out, axes, self.strides, self.dilations = _conv_transpose_check(attrs, values)
        x, w = values[0].shape, values[1].shape
        self.group = attrs["group"]
        self.kernel, self.spatial = tuple(w[2:]), tuple(x[2:])
        self.x_shape = (x[0], self.group, x[1] // self.group, math.prod(self.spatial))
        self.taps_shape = (x[0], self.group, w[1], math.prod(self.kernel)) + self.spatial
        # the full product lands in a buffer covering the output's window [before, before + out)
        self.buffer = x[:1] + (self.group, w[1]) + tuple(max(full, b + o) for b, o, full in axes)
        self.crop = (Ellipsis,) + tuple(slice(b, b + o) for b, o, _ in axes)
        self.places = [(Ellipsis,) + tuple(slice(j * d, j * d + (n - 1) * s + 1, s) for j, d, s, n in
                                           zip(tap, self.dilations, self.strides, self.spatial))
                       for tap in itertools.product(*map(range, self.kernel))]
        self.weights = None if values[1].const is None else self._pack(values[1].const)
        self.bias = _bias_of(values, self._bias)
        self.native = None
        if (len(self.kernel) in KERNEL_AXES and values[1].const is not None and self.bias is not FROM_INPUT
                and _c_ints(self.strides, self.dilations, [b for b, _, _ in axes])
                and x[1] // self.group * w[1] <= TRANSPOSED_MAX_CHANNELS):
            # few channels per group (depthwise): the direct scatter of the C kernel (_conv2d.h)
            b = optional(values, 2)
            flat = len(self.kernel) == 1
            self.native_args = (True, x if not flat else x[:2] + (1,) + x[2:], self.out,
                                values[1].const if not flat else values[1].const[:, :, None],
                                None if b is None else b.const, self.group, ((1,) if flat else ()) + self.strides,
                                ((1,) if flat else ()) + self.dilations,
                                (0, axes[0][0], 0, 0) if flat else (axes[0][0], axes[1][0], 0, 0))
            self.native = Conv2d(*self.native_args)

    fused = _ConvPlan.fused

    def _pack(self, w):
        g = self.group
        w = np.asarray(w, dtype=np.float32).reshape((g, w.shape[0] // g) + tuple(w.shape[1:]))
        return np.ascontiguousarray(w.reshape(g, w.shape[1], math.prod(w.shape[2:])).transpose(0, 2, 1))

    def _bias(self, b):
        return np.asarray(b, dtype=np.float32).reshape((-1,) + (1,) * len(self.kernel))

    def __call__(self, inputs):
        if self.native is not None:
            return [self.native(inputs[0])]
        w = self.weights if self.weights is not None else self._pack(inputs[1])
        # one input channel per group (depthwise): each tap is a product, and a broadcast multiply gives the
        # bits of the matmul without its one call per group (4x faster on (1, 64, 20, 16))
        product = np.multiply if self.x_shape[2] == 1 else np.matmul
        taps = product(w, inputs[0].reshape(self.x_shape)).reshape(self.taps_shape)
        y = np.zeros(self.buffer, dtype=np.float32)
        for t, place in enumerate(self.places):
            y[place] += taps[:, :, :, t]
        y = np.ascontiguousarray(y[self.crop]).reshape(self.out)
        if self.bias is not None:
            y += self.bias if self.bias is not FROM_INPUT else self._bias(inputs[2])
        return [y]


register(Op("ConvTranspose", dict(_WINDOW, group=Attr("int", 1, lambda v: None if v >= 1 else "must be positive"),
                                  output_padding=Attr("ints", None, _not_negative),
                                  output_shape=Attr("ints", None, _positive)),
            lambda attrs, values: [(_conv_transpose_check(attrs, values)[0], FLOAT)],
            lambda plan, inputs: plan(inputs), _ConvTransposePlan, time=None, time_of=_timed("ConvTranspose"),
            inputs=(2, 3)))


# ---- MaxPool, AveragePool, LpPool ----

def _pool_check(op, attrs, values):
    spatial = _spatial(op, values[0])
    kernel = attrs["kernel_shape"]
    if kernel is None:
        raise ModelFormatError(f"{op} needs kernel_shape")
    if len(kernel) != len(spatial):
        raise ModelFormatError(f"{op}: kernel_shape {kernel} for {len(spatial)} spatial axes")
    if op == "MaxPool" and attrs["storage_order"] != 0:
        raise UnsupportedModelError("MaxPool: storage_order=1 is not supported (it orders the Indices output)")
    axes, strides, dilations = geometry(op, attrs, spatial, kernel, bool(attrs.get("ceil_mode")))
    for i, (k, (before, after, _)) in enumerate(zip(kernel, axes)):
        if max(before, after) >= k:
            raise ModelFormatError(f"{op}: pads ({before}, {after}) on axis {i} must be smaller than the kernel {k}")
    out = checked_shape(op, values[0].shape[:2] + tuple(o for _, _, o in axes))
    overhang = [(0, max(0, (o - 1) * s + (k - 1) * d + 1 - n - b - a))
                for (b, a, o), s, d, k, n in zip(axes, strides, dilations, kernel, spatial)]
    _workspace(op, "the padded input", _padded_shape(_padded_shape(values[0].shape, axes), overhang))
    return out, axes, strides, dilations


class _PoolPlan:
    """The taps of a pooling window over the padded input (padding with -inf for a maximum, 0
    for sums) and, for an average, 1 / the count of each window's elements."""

    def __init__(self, op, attrs, values):
        self.op = op
        self.out, axes, strides, dilations = _pool_check(op, attrs, values)
        spatial, kernel = values[0].shape[2:], attrs["kernel_shape"]
        # room for the last window of ceil_mode beyond the padding after
        self.padding = _Padding(values[0].shape, [(b, max(a, (o - 1) * s + (k - 1) * d + 1 - n - b))
                                                  for (b, a, o), s, d, k, n in
                                                  zip(axes, strides, dilations, kernel, spatial)])
        self.taps = [(Ellipsis,) + tuple(slice(j * d, j * d + (o - 1) * s + 1, s)
                                         for j, d, s, o in zip(tap, dilations, strides, self.out[2:]))
                     for tap in itertools.product(*map(range, kernel))]
        self.p = attrs.get("p")
        self.scale = None
        if op == "AveragePool":
            counts = []
            for (b, a, o), s, d, k, n in zip(axes, strides, dilations, kernel, spatial):
                starts = np.arange(o) * s
                where = starts[:, None] + np.arange(k)[None, :] * d           # padded coordinates
                inside = (where < n + b + a) if attrs["count_include_pad"] else (where >= b) & (where < n + b)
                counts.append(inside.sum(axis=1))
            count = counts[0]
            for c in counts[1:]:
                count = np.multiply.outer(count, c)
            self.scale = (1.0 / count).astype(np.float32)

    def __call__(self, inputs):
        x = inputs[0]
        if self.op == "MaxPool":
            xp = self.padding(x, -np.inf)
            y = xp[self.taps[0]].copy()
            for tap in self.taps[1:]:
                np.maximum(y, xp[tap], out=y)
            return [y]
        xp = self.padding(np.abs(x) ** self.p if self.op == "LpPool" else x)
        y = xp[self.taps[0]].copy()
        for tap in self.taps[1:]:
            y += xp[tap]
        if self.op == "LpPool":
            return [y ** np.float32(1.0 / self.p)]
        y *= self.scale
        return [y]


def _pool_op(name, extra):
    attributes = dict(_WINDOW, ceil_mode=Attr("int", 0, _flag), **extra)
    register(Op(name, attributes, lambda attrs, values: [(_pool_check(name, attrs, values)[0], FLOAT)],
                lambda plan, inputs: plan(inputs), lambda attrs, values: _PoolPlan(name, attrs, values),
                time=None, time_of=_timed(name)))


_pool_op("MaxPool", {"storage_order": Attr("int", 0, _flag)})
_pool_op("AveragePool", {"count_include_pad": Attr("int", 0, _flag)})
_pool_op("LpPool", {"p": Attr("int", 2, lambda v: None if v >= 1 else "must be positive")})


# ---- GlobalAveragePool, GlobalMaxPool ----

def _global_infer(op):
    def infer(attrs, values):
        spatial = _spatial(op, values[0])
        return [(values[0].shape[:2] + (1,) * len(spatial), FLOAT)]
    return infer


def _global_run(reduce):
    def run(axes, inputs):
        return [reduce(inputs[0], axis=axes, keepdims=True)]
    return run


for _name, _reduce in (("GlobalAveragePool", np.mean), ("GlobalMaxPool", np.max)):
    register(Op(_name, {}, _global_infer(_name), _global_run(_reduce),
                lambda attrs, values: tuple(range(2, len(values[0].shape))), time=None, time_of=_timed(_name)))


# ---- time ----

def _time_window(op_name, attrs, values, time_axis):
    """(kernel, stride, dilation, pad before, pad after) of ``op_name`` along spatial axis ``time_axis``."""
    i = time_axis - 2
    if op_name in ("Conv", "ConvTranspose"):
        kernel = values[1].shape[2:]
        if op_name == "Conv":
            _, axes, strides, dilations = _conv_check(attrs, values)
            return kernel[i], strides[i], dilations[i], axes[i][0], axes[i][1]
        _, axes, strides, dilations = _conv_transpose_check(attrs, values)
        before, out, full = axes[i]
        return kernel[i], strides[i], dilations[i], before, full - before - out
    _, axes, strides, dilations = _pool_check(op_name, attrs, values)
    return attrs["kernel_shape"][i], strides[i], dilations[i], axes[i][0], axes[i][1]


def _time(op_name: str, attrs: dict, values: Sequence[Optional[Value]], time_axis: int) -> str:
    """How a conv-family op acts along the time axis ``time_axis`` of X (N, C, spatial...):
    ``"step"`` for the batch axis, and for a spatial axis the op's window does not cross (kernel 1,
    stride 1, no padding); ``"causal"`` for a spatial axis padded only before by (k - 1) · dilation
    with stride 1 (Conv, MaxPool, AveragePool, LpPool: :func:`history` frames); else ``"sequence"``
    (the channel axis, ConvTranspose over time, a global pool over time, strides, padding after)."""
    if time_axis == 0:
        return "step"
    if op_name.startswith("Global"):
        return "step" if time_axis == 1 else "sequence"
    if time_axis == 1:
        return "sequence"
    k, s, d, before, after = _time_window(op_name, attrs, values, time_axis)
    if s != 1 or after:
        return "sequence"
    if k == 1 and not before:
        return "step"
    return "causal" if before == (k - 1) * d and op_name != "ConvTranspose" else "sequence"


def history(op_name: str, attrs: dict, values: Sequence[Optional[Value]], time_axis: int) -> int:
    """The frames before the current one a causal op reads along ``time_axis``: (k - 1) · dilation."""
    k, _, d, _, _ = _time_window(op_name, attrs, values, time_axis)
    return (k - 1) * d
