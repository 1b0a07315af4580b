"""float64 references of the elementwise ops: plain numpy, independent of :mod:`grurt.ops.elementwise`.

Each is the op's formula as ONNX states it, computed in float64 (integers with Python's exact
integers where numpy's would wrap or round differently)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

INT64_MIN = -2**63


def _wrap(v: int, bits: int = 64, signed: bool = True) -> int:
    """An exact integer taken modulo 2**bits, as a two's-complement integer of that width."""
    v %= 1 << bits
    return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v


def _each(fn, *arrays, dtype=np.int64):
    """fn(*items) for each item of the broadcast arrays (Python scalars in, one result each)."""
    arrays = np.broadcast_arrays(*arrays)
    out = np.empty(arrays[0].shape, dtype)
    for index in np.ndindex(out.shape):
        out[index] = fn(*(a[index].item() for a in arrays))
    return out


def _int_division(a, b, what):
    if b == 0:
        raise InputError(f"{what}: integer division by zero")
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _div(attrs, x):
    a, b = x
    if a.dtype.kind == "i":
        return [_each(lambda p, q: _wrap(_int_division(p, q, "Div")), a, b)]
    return [a / b]


def _mod(attrs, x):
    a, b = x
    if a.dtype.kind == "i":
        def mod(p, q):
            if q == 0:
                raise InputError("Mod: integer modulo by zero")
            r = abs(p) % abs(q) * (1 if p >= 0 else -1)  # the sign of the dividend
            return r if attrs["fmod"] or r == 0 or (r < 0) == (q < 0) else r + q
        return [_each(mod, a, b)]
    r = np.fmod(a, b)
    if not attrs["fmod"]:  # the sign of the divisor
        r = np.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)
    return [r]


def _pow(attrs, x):
    a, b = x
    if a.dtype.kind == "f":
        return [np.power(a, b.astype(np.float64))]
    if b.dtype.kind == "f":
        return [_cast_float_to_int(np.power(a.astype(np.float64), b), 64, True)]

    def power(p, q):
        if q >= 0:
            return _wrap(p ** q)
        if p == 0:
            raise InputError("Pow: integer 0 to a negative power")
        return 1 if p == 1 else (-1) ** q if p == -1 else 0  # 1 / p**|q| truncated toward zero
    return [_each(power, a, b)]


def _variadic(fn):
    def reference(attrs, x):
        result = x[0]
        for other in x[1:]:
            result = fn(result, other)
        return [np.broadcast_to(result, np.broadcast_shapes(*(a.shape for a in x))).copy()]
    return reference


def _nan_max(a, b):
    return np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(a >= b, a, b)) if a.dtype.kind == "f" \
        else np.where(a >= b, a, b)


def _nan_min(a, b):
    return np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(a <= b, a, b)) if a.dtype.kind == "f" \
        else np.where(a <= b, a, b)


def _mean(attrs, x):
    return [_variadic(np.add)(attrs, x)[0] / len(x)]


def _erf(v):
    return np.vectorize(math.erf, otypes=[np.float64])(v)


def _softplus(v):
    with np.errstate(over="ignore"):
        return np.where(v > 30, v + np.log1p(np.exp(-np.abs(v))), np.log1p(np.exp(np.minimum(v, 30))))


def _gelu(attrs, x):
    v = x[0]
    if attrs["approximate"] == "tanh":
        return [0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))]
    return [0.5 * v * (1 + _erf(v / math.sqrt(2)))]


def _relu(attrs, x):
    v = x[0]
    return [np.where(v < 0, 0, v).astype(v.dtype)]


def _prelu(attrs, x):
    v, slope = x
    return [np.where(v < 0, v * slope, v).astype(v.dtype)]


def _elu(v, alpha):
    return np.where(v > 0, v, alpha * (np.exp(np.minimum(v, 0)) - 1))


def _clip(attrs, x):
    v = x[0]
    lo = attrs["min"] if attrs["min"] is not None else x[1] if len(x) > 1 and x[1] is not None else None
    hi = attrs["max"] if attrs["max"] is not None else x[2] if len(x) > 2 and x[2] is not None else None
    y = v.copy()
    if lo is not None:
        lo = np.asarray(lo).reshape(())
        y = np.where(np.isnan(y) | (y >= lo), y, lo).astype(v.dtype)
    if hi is not None:
        hi = np.asarray(hi).reshape(())
        y = np.where(np.isnan(y) | (y <= hi), y, hi).astype(v.dtype)
    return [y]


def _cast_float_to_int(v, bits, signed):
    """Truncation toward zero, then wrapped to the width; NaN, infinities and values beyond
    int64 are INT64_MIN before the wrap."""
    def convert(f):
        if not math.isfinite(f) or not -2.0**63 <= math.trunc(f) < 2.0**63:
            return _wrap(INT64_MIN, bits, signed)
        return _wrap(math.trunc(f), bits, signed)
    return _each(convert, v)


def _bfloat16(v):
    """float64 values rounded to 8 significant bits (bfloat16's), ties to even; below 2**-126
    (subnormal) to a multiple of 2**-133."""
    with np.errstate(invalid="ignore"):
        mantissa, exponent = np.frexp(v)  # v = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
        rounded = np.ldexp(np.round(mantissa * 256) / 256, exponent)  # np.round: half to even
        rounded = np.where(np.abs(v) < 2.0**-126, np.round(v * 2.0**133) / 2.0**133, rounded)
    rounded = np.where(np.abs(rounded) >= 2.0**128, np.copysign(np.inf, v), rounded)  # past float32's range
    return np.where(np.isfinite(v), rounded, v)


_INT_TYPES = {2: (8, False), 3: (8, True), 4: (16, False), 5: (16, True), 6: (32, True), 7: (64, True),
              12: (32, False), 13: (64, True)}


def _cast(attrs, x):
    v, to = x[0], attrs["to"]
    if to in (1, 11):
        return [v.astype(np.float64)]
    if to == 10:
        return [v.astype(np.float16).astype(np.float64)]
    if to == 16:
        return [_bfloat16(v.astype(np.float64))]
    if to == 9:
        return [v != 0]
    bits, signed = _INT_TYPES[to]
    if v.dtype.kind == "f":
        return [_cast_float_to_int(v, bits, signed)]
    return [_each(lambda i: _wrap(int(i), bits, signed), v)]


def _is_inf(attrs, x):
    v = x[0]
    return [(np.isposinf(v) & bool(attrs["detect_positive"])) | (np.isneginf(v) & bool(attrs["detect_negative"]))]


def _hard_sigmoid(v, alpha, beta):
    return np.maximum(0, np.minimum(1, alpha * v + beta))


def _unary(fn):
    return lambda attrs, x: [fn(x[0])]


REFERENCE = {
    "Add": lambda attrs, x: [x[0] + x[1]],
    "Sub": lambda attrs, x: [x[0] - x[1]],
    "Mul": lambda attrs, x: [x[0] * x[1]],
    "Div": _div,
    "Mod": _mod,
    "Pow": _pow,
    "Max": _variadic(_nan_max),
    "Min": _variadic(_nan_min),
    "Sum": _variadic(np.add),
    "Mean": _mean,
    "Where": lambda attrs, x: [np.where(x[0], x[1], x[2])],
    "Equal": lambda attrs, x: [x[0] == x[1]],
    "Less": lambda attrs, x: [x[0] < x[1]],
    "Greater": lambda attrs, x: [x[0] > x[1]],
    "LessOrEqual": lambda attrs, x: [x[0] <= x[1]],
    "GreaterOrEqual": lambda attrs, x: [x[0] >= x[1]],
    "And": lambda attrs, x: [x[0] & x[1]],
    "Or": lambda attrs, x: [x[0] | x[1]],
    "Xor": lambda attrs, x: [x[0] ^ x[1]],
    "Not": lambda attrs, x: [~x[0]],
    "Relu": _relu,
    "LeakyRelu": lambda attrs, x: [np.where(x[0] < 0, attrs["alpha"] * x[0], x[0])],
    "PRelu": _prelu,
    "Elu": lambda attrs, x: [_elu(x[0], attrs["alpha"])],
    "Selu": lambda attrs, x: [attrs["gamma"] * _elu(x[0], attrs["alpha"])],
    "Celu": lambda attrs, x: [np.maximum(0, x[0])
                              + np.minimum(0, attrs["alpha"] * (np.exp(x[0] / attrs["alpha"]) - 1))],
    "Gelu": _gelu,
    "Erf": _unary(_erf),
    "Sigmoid": _unary(lambda v: 1 / (1 + np.exp(-v))),
    "HardSigmoid": lambda attrs, x: [_hard_sigmoid(x[0], attrs["alpha"], attrs["beta"])],
    "HardSwish": _unary(lambda v: v * _hard_sigmoid(v, 1 / 6, 0.5)),
    "Tanh": _unary(np.tanh),
    "Softplus": _unary(_softplus),
    "Softsign": _unary(lambda v: v / (1 + np.abs(v))),
    "Mish": _unary(lambda v: v * np.tanh(_softplus(v))),
    "Exp": _unary(np.exp),
    "Log": _unary(np.log),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(lambda v: 1 / v),
    "Abs": _unary(np.abs),
    "Neg": _unary(lambda v: -v),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "Round": _unary(np.round),
    "Sign": _unary(np.sign),
    "Sin": _unary(np.sin),
    "Cos": _unary(np.cos),
    "ThresholdedRelu": lambda attrs, x: [np.where(x[0] > attrs["alpha"], x[0], 0.0)],
    "Clip": _clip,
    "Cast": _cast,
    "Identity": lambda attrs, x: [x[0].copy()],
    "Dropout": lambda attrs, x: [x[0].copy(), np.ones(x[0].shape, bool)],
    "IsNaN": _unary(np.isnan),
    "IsInf": _is_inf,
}
