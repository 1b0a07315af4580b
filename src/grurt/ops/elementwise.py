"""Elementwise ops: ONNX's arithmetic, comparisons, logic and unary functions, with numpy/ONNX
multidirectional broadcasting (see :mod:`grurt.ops`; the table is docs/ops.md).

Types follow ONNX: the inputs of an op share one dtype (refused by name when they do not),
comparisons give bool, integer arithmetic stays int64 (the graph's shape arithmetic runs on it)
and float math stays float32 (constants are np.float32: no silent float64).

``run`` never sets ``np.errstate`` (about 2 us a call, more than an Add of 10^4 values): the
warnings numpy gives on overflow, log(0) or a NaN cast to an integer are the executor's to
silence, once per call. Integer division or modulo by zero raises InputError, as onnxruntime
refuses it. ``run`` never writes into its inputs; it may return one of them (Identity,
Dropout, a Cast to the same type, a one-input Sum).
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
from scipy import special

from .._kernels import ACTIVATION_CODES, activate
from ..errors import InputError, ModelFormatError, UnsupportedModelError
from .registry import BOOL, FLOAT, INT, Attr, Op, broadcast_shapes, canonical_dtype, register

NUMERIC = (FLOAT, INT)
ANY = (FLOAT, INT, BOOL)
_KINDS = {FLOAT: "float", INT: "integer", BOOL: "bool"}
#: inputs of a variadic op (Sum, Max, Min, Mean)
VARIADIC = (1, 1 << 31)
INT64_MIN = np.iinfo(np.int64).min


# ---- helpers the reduce family shares ----

def common_dtype(name: str, values, allowed) -> np.dtype:
    """The one (canonical) dtype of the given inputs; ModelFormatError naming the op when they
    differ or when ONNX does not define the op for it."""
    dtypes = [canonical_dtype(v.dtype) for v in values if v is not None]
    if any(d != dtypes[0] for d in dtypes):
        raise ModelFormatError(f"{name}: inputs of different dtypes ({', '.join(str(d) for d in dtypes)}); "
                               "ONNX needs one")
    if dtypes[0] not in allowed:
        raise ModelFormatError(f"{name} takes {' or '.join(_KINDS[d] for d in allowed)} tensors, got {dtypes[0]}")
    return dtypes[0]


def unidirectional(name: str, shape, target, what: str) -> None:
    """ModelFormatError naming the op unless ``shape`` broadcasts to ``target`` (ONNX's
    unidirectional broadcasting: the result has the target's shape)."""
    if len(shape) > len(target) or any(s not in (1, t) for s, t in zip(shape[::-1], target[::-1])):
        raise ModelFormatError(f"{name}: {what} of shape {tuple(shape)} does not broadcast to {tuple(target)}")


def as_array(result) -> np.ndarray:
    """A ufunc's result as an array (numpy gives a scalar for 0-d operands)."""
    return result if type(result) is np.ndarray else np.asarray(result)


def trunc_divide(name: str, a: np.ndarray, b) -> np.ndarray:
    """Integer ``a / b`` rounded toward zero (ONNX's, C's); InputError on a zero divisor."""
    if not np.all(b):
        raise InputError(f"{name}: integer division by zero")
    q = as_array(np.subtract(a, np.fmod(a, b)))  # a multiple of b: the floor division below is exact
    np.floor_divide(q, b, out=q)
    return q


def float_to_int64(x: np.ndarray) -> np.ndarray:
    """Floats truncated toward zero; NaN, infinities and values beyond int64 give INT64_MIN (as
    x86 converts them, here on every machine)."""
    y = as_array(x.astype(np.int64))
    np.copyto(y, INT64_MIN, where=~(np.abs(x) < np.float32(2.0**63)))
    return y


# ---- shape rules ----

def _same(name, allowed, result=None):
    """The shape rule of an op whose output has its (first) input's shape."""
    def infer(attrs, values):
        dtype = common_dtype(name, values, allowed)
        return [(values[0].shape, dtype if result is None else result)]
    return infer


def _broadcast(name, allowed, result=None):
    """The shape rule of an op broadcasting all its inputs."""
    def infer(attrs, values):
        dtype = common_dtype(name, values, allowed)
        return [(broadcast_shapes(name, *(v.shape for v in values)), dtype if result is None else result)]
    return infer


def flag(value):
    """The check of a 0/1 attribute."""
    return None if value in (0, 1) else f"must be 0 or 1, got {value}"


def _nonzero(value):
    return None if value != 0 else "must not be 0"


# ---- broadcasting arithmetic, comparisons and logic ----

def _ufunc_run(ufunc, ctx, xs):
    return [as_array(ufunc(*xs))]


def _binary(name, ufunc, allowed, result=None):
    register(Op(name, {}, _broadcast(name, allowed, result), partial(_ufunc_run, ufunc), inputs=(2, 2)))


for _name, _ufunc in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply)):
    _binary(_name, _ufunc, NUMERIC)
for _name, _ufunc in (("Less", np.less), ("Greater", np.greater), ("LessOrEqual", np.less_equal),
                      ("GreaterOrEqual", np.greater_equal)):
    _binary(_name, _ufunc, NUMERIC, BOOL)
_binary("Equal", np.equal, ANY, BOOL)
for _name, _ufunc in (("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)):
    _binary(_name, _ufunc, (BOOL,))


def _div(ctx, xs):
    a, b = xs
    if a.dtype == INT:
        return [trunc_divide("Div", a, b)]
    return [as_array(np.divide(a, b))]


register(Op("Div", {}, _broadcast("Div", NUMERIC), _div, inputs=(2, 2)))


def _mod(fmod, xs):
    a, b = xs
    if a.dtype == INT and not np.all(b):
        raise InputError("Mod: integer modulo by zero")
    # fmod=1: the sign of the dividend (C's fmod); fmod=0: the sign of the divisor (Python's %),
    # which the newest opset allows for floats too
    return [as_array(np.fmod(a, b) if fmod else np.remainder(a, b))]


register(Op("Mod", {"fmod": Attr("int", 0, flag)}, _broadcast("Mod", NUMERIC),
            lambda attrs, xs: _mod(attrs["fmod"], xs), inputs=(2, 2)))


def _pow_infer(attrs, values):
    base = common_dtype("Pow", values[:1], NUMERIC)
    common_dtype("Pow", values[1:], NUMERIC)  # the exponent may have another numeric dtype
    return [(broadcast_shapes("Pow", values[0].shape, values[1].shape), base)]


def _pow_float(xs):
    x, y = xs
    return as_array(np.power(x, y if y.dtype == FLOAT else y.astype(np.float32)))


def _pow_int(xs):
    a, b = xs
    if b.dtype == FLOAT:  # onnxruntime's: the power in double, truncated toward zero
        return float_to_int64(np.power(a.astype(np.float64), b.astype(np.float64)))
    negative = b < 0
    if not negative.any():
        return as_array(np.power(a, b))
    if np.any(negative & (a == 0)):
        raise InputError("Pow: integer 0 to a negative power")
    # a ** -n truncated toward zero is 0 unless |a| = 1, where only the parity of n counts
    r = as_array(np.power(a, np.where(negative, b & 1, b)))
    r[negative & (np.abs(a) != 1)] = 0
    return r


def _pow_prepare(attrs, values):
    x, y = values
    if canonical_dtype(x.dtype) == INT:
        return _pow_int
    if y.const is not None and y.const.size == 1 and float(y.const.ravel()[0]) == 2.0 \
            and broadcast_shapes("Pow", x.shape, y.shape) == tuple(x.shape):
        return lambda xs: as_array(np.square(xs[0]))  # the usual Pow(x, 2): exact as powf, faster
    return _pow_float


register(Op("Pow", {}, _pow_infer, lambda kernel, xs: [kernel(xs)], prepare=_pow_prepare, inputs=(2, 2)))


def _where_infer(attrs, values):
    common_dtype("Where", values[:1], (BOOL,))
    dtype = common_dtype("Where", values[1:], ANY)
    return [(broadcast_shapes("Where", *(v.shape for v in values)), dtype)]


register(Op("Where", {}, _where_infer, partial(_ufunc_run, np.where), inputs=(3, 3)))


def _variadic_prepare(attrs, values):
    return broadcast_shapes("", *(v.shape for v in values)), canonical_dtype(values[0].dtype)


def _variadic(ufunc, mean, ctx, xs):
    if len(xs) == 1:
        return [xs[0]]
    shape, dtype = ctx
    out = np.empty(shape, dtype)
    ufunc(xs[0], xs[1], out=out)
    for x in xs[2:]:
        ufunc(out, x, out=out)
    if mean:
        out /= np.float32(len(xs))
    return [out]


for _name, _ufunc, _allowed in (("Max", np.maximum, NUMERIC), ("Min", np.minimum, NUMERIC), ("Sum", np.add, (FLOAT,)),
                                ("Mean", np.add, (FLOAT,))):
    register(Op(_name, {}, _broadcast(_name, _allowed), partial(_variadic, _ufunc, _name == "Mean"),
                prepare=_variadic_prepare, inputs=VARIADIC))


# ---- unary ops ----

def _unary(name, run, allowed=(FLOAT,), attributes=None, prepare=None, result=None):
    register(Op(name, attributes or {}, _same(name, allowed, result), run, prepare=prepare))


for _name, _ufunc, _allowed in (
        ("Exp", np.exp, (FLOAT,)), ("Log", np.log, (FLOAT,)), ("Sqrt", np.sqrt, (FLOAT,)),
        ("Reciprocal", np.reciprocal, (FLOAT,)), ("Sin", np.sin, (FLOAT,)),
        ("Cos", np.cos, (FLOAT,)), ("Floor", np.floor, (FLOAT,)), ("Ceil", np.ceil, (FLOAT,)),
        ("Round", np.rint, (FLOAT,)),  # half to even, as ONNX rounds
        ("Erf", special.erf, (FLOAT,)),  # accurate, not vectorized (about 20 ns a value): docs/ops.md
        ("Abs", np.abs, NUMERIC), ("Neg", np.negative, NUMERIC), ("Sign", np.sign, NUMERIC),
        ("Not", np.logical_not, (BOOL,)), ("IsNaN", np.isnan, (FLOAT,))):
    _unary(_name, partial(_ufunc_run, _ufunc), _allowed, result=BOOL if _name == "IsNaN" else None)


def _float32(*names):
    """A prepare giving the named attributes as np.float32 scalars."""
    return lambda attrs, values: tuple(np.float32(attrs[n]) for n in names)


def _relu(ctx, xs):
    return [as_array(np.maximum(xs[0], xs[0].dtype.type(0)))]  # NaN stays NaN, as in onnxruntime


def _leaky_relu(ctx, xs):
    (alpha,) = ctx
    x = xs[0]
    y = np.multiply(x, alpha, out=np.empty_like(x))
    # alpha <= 1: the larger of x and alpha x is x for x >= 0 and alpha x below; alpha > 1: the smaller
    return [(np.maximum if alpha <= 1 else np.minimum)(x, y, out=y)]


def _prelu_infer(attrs, values):
    dtype = common_dtype("PRelu", values, NUMERIC)
    unidirectional("PRelu", values[1].shape, values[0].shape, "the slope")
    return [(values[0].shape, dtype)]


# The piecewise functions below are sums of their parts, min(x, 0) and max(x, 0): a select per
# value (np.where, np.copyto with where=) is 5 to 10 times slower than an arithmetic pass.

def _prelu(ctx, xs):
    x, slope = xs
    zero = x.dtype.type(0)
    y = np.minimum(x, zero, out=np.empty_like(x))
    np.multiply(y, slope, out=y)  # the slope broadcasts to x
    y += np.maximum(x, zero)
    return [y]


def _elu_like(x, alpha):
    """x where x > 0, alpha (exp(x) - 1) elsewhere (NaN stays NaN)."""
    y = np.minimum(x, np.float32(0), out=np.empty_like(x))
    np.expm1(y, out=y)
    y *= alpha
    y += np.maximum(x, np.float32(0))
    return y


def _selu(ctx, xs):
    alpha, gamma = ctx
    y = _elu_like(xs[0], alpha)
    y *= gamma
    return [y]


def _celu(ctx, xs):
    (alpha,) = ctx
    x = xs[0]
    y = np.divide(x, alpha, out=np.empty_like(x))
    np.expm1(y, out=y)
    y *= alpha
    np.minimum(y, np.float32(0), out=y)
    y += np.maximum(x, np.float32(0))
    return [y]


_SQRT_HALF, _SQRT_2_OVER_PI = np.float32(math.sqrt(0.5)), np.float32(math.sqrt(2 / math.pi))


def _gelu(approximate, xs):
    x = xs[0]
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        y = np.multiply(x, x, out=np.empty_like(x))
        y *= np.float32(0.044715)
        y += np.float32(1)
        y *= x
        y *= _SQRT_2_OVER_PI
        np.tanh(y, out=y)
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        y = np.multiply(x, _SQRT_HALF, out=np.empty_like(x))
        special.erf(y, out=y)
    y += np.float32(1)
    y *= np.float32(0.5)
    y *= x  # last: x (1 + erf) would overflow for x near the largest float
    return [y]


def _hard_sigmoid_of(x, alpha, beta):
    y = np.multiply(x, alpha, out=np.empty_like(x))
    y += beta
    np.maximum(y, np.float32(0), out=y)
    np.minimum(y, np.float32(1), out=y)
    return y


def _hard_swish(ctx, xs):
    y = _hard_sigmoid_of(xs[0], np.float32(1 / 6), np.float32(0.5))
    y *= xs[0]
    return [y]


def _kernel_activation(name):
    """The run of an activation as grurt's kernels compute it (a Dense layer's, a fused Conv's; one C
    call: sigmoid within 1e-7 and tanh within 3e-7 of float64), on a copy of the input."""
    code = ACTIVATION_CODES[name]

    def run(ctx, xs):
        y = np.array(xs[0], np.float32, order="C")
        activate(y, code)
        return [y]
    return run


def _softplus_of(x):
    """log(1 + e^x) as max(x, 0) + log(1 + e^-|x|): no overflow (and 7x faster than np.logaddexp)."""
    y = np.abs(x, out=np.empty_like(x))
    np.negative(y, out=y)
    np.exp(y, out=y)
    np.log1p(y, out=y)
    y += np.maximum(x, np.float32(0))
    return y


def _softsign(ctx, xs):
    x = xs[0]
    d = np.abs(x, out=np.empty_like(x))
    d += np.float32(1)
    return [np.divide(x, d, out=d)]


def _mish(ctx, xs):
    x = xs[0]
    y = _softplus_of(x)
    np.tanh(y, out=y)
    y *= x
    return [y]


def _thresholded_relu(ctx, xs):
    (alpha,) = ctx
    x = xs[0]
    return [as_array(np.where(x > alpha, x, np.float32(0)))]  # a select: NaN gives 0, as in onnxruntime


def _is_inf(attrs, xs):
    x = xs[0]
    negative, positive = attrs["detect_negative"], attrs["detect_positive"]
    if negative and positive:
        return [as_array(np.isinf(x))]
    if negative or positive:
        return [as_array(np.equal(x, np.float32(-np.inf if negative else np.inf)))]
    return [np.zeros(x.shape, bool)]


_unary("Relu", _relu, NUMERIC)
_unary("LeakyRelu", _leaky_relu, attributes={"alpha": Attr("float", 0.01)}, prepare=_float32("alpha"))
register(Op("PRelu", {}, _prelu_infer, _prelu, inputs=(2, 2)))
_unary("Elu", lambda ctx, xs: [_elu_like(xs[0], ctx[0])], attributes={"alpha": Attr("float", 1.0)},
       prepare=_float32("alpha"))
_unary("Selu", _selu, attributes={"alpha": Attr("float", 1.67326319217681884765625),
                                  "gamma": Attr("float", 1.05070102214813232421875)},
       prepare=_float32("alpha", "gamma"))
_unary("Celu", _celu, attributes={"alpha": Attr("float", 1.0, _nonzero)}, prepare=_float32("alpha"))
_unary("Gelu", lambda attrs, xs: _gelu(attrs["approximate"], xs),
       attributes={"approximate": Attr("string", "none",
                                       lambda v: None if v in ("none", "tanh") else f"must be 'none' or 'tanh', "
                                                                                   f"got {v!r}")})
_unary("HardSigmoid", lambda ctx, xs: [_hard_sigmoid_of(xs[0], *ctx)],
       attributes={"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)}, prepare=_float32("alpha", "beta"))
_unary("HardSwish", _hard_swish)
_unary("Sigmoid", _kernel_activation("sigmoid"))
_unary("Tanh", _kernel_activation("tanh"))
_unary("Softplus", lambda ctx, xs: [_softplus_of(xs[0])])
_unary("Softsign", _softsign)
_unary("Mish", _mish)
_unary("ThresholdedRelu", _thresholded_relu, attributes={"alpha": Attr("float", 1.0)}, prepare=_float32("alpha"))
_unary("IsInf", _is_inf, attributes={"detect_negative": Attr("int", 1, flag), "detect_positive": Attr("int", 1, flag)},
       result=BOOL)
_unary("Identity", lambda ctx, xs: [xs[0]], ANY)


# ---- Clip: the bounds as attributes (opset 6) or as scalar inputs (opset 11 on) ----

def _clip_infer(attrs, values):
    dtype = common_dtype("Clip", values, NUMERIC)
    for i, what in ((1, "min"), (2, "max")):
        value = values[i] if i < len(values) else None
        if attrs[what] is not None and (value is not None or dtype != FLOAT):
            raise ModelFormatError(f"Clip: the attribute {what} (opset 6) with "
                                   + (f"the input {what} as well" if value is not None else f"{dtype} tensors"))
        if value is not None and value.size != 1:
            raise ModelFormatError(f"Clip: {what} must be a scalar, got shape {tuple(value.shape)}")
    return [(values[0].shape, dtype)]


def _clip_prepare(attrs, values):
    dtype = canonical_dtype(values[0].dtype)

    def bound(i, what):
        """np scalar, None (no bound) or the index of the input holding it at run time"""
        value = values[i] if i < len(values) else None
        if attrs[what] is not None:
            return np.float32(attrs[what])
        if value is None:
            return None
        return i if value.const is None else np.asarray(value.const, dtype).reshape(())[()]
    return bound(1, "min"), bound(2, "max")


def _clip(ctx, xs):
    lo, hi = (xs[b].reshape(()) if type(b) is int else b for b in ctx)
    y = xs[0]
    if lo is not None:  # max then min: when min > max every value becomes max, as ONNX says
        y = np.maximum(y, lo, out=np.empty_like(y))
    if hi is not None:
        y = np.minimum(y, hi, out=np.empty_like(y) if lo is None else y)
    return [y]


register(Op("Clip", {"min": Attr("float", None), "max": Attr("float", None)}, _clip_infer, _clip,
            prepare=_clip_prepare, inputs=(1, 3)))


# ---- Cast ----

#: ONNX data types grurt computes: the dtype it computes them in, and the narrower type whose
#: values a Cast takes (floats are rounded to float16/bfloat16, integers wrap to their width).
CAST_TYPES = {1: (FLOAT, None), 10: (FLOAT, np.float16), 11: (FLOAT, None), 16: (FLOAT, "bfloat16"),
              2: (INT, np.uint8), 3: (INT, np.int8), 4: (INT, np.uint16), 5: (INT, np.int16), 6: (INT, np.int32),
              7: (INT, None), 12: (INT, np.uint32), 13: (INT, None), 9: (BOOL, None)}
#: the ONNX data types (TensorProto.DataType) grurt does not compute
_CAST_REFUSED = {8: "string", 14: "complex64", 15: "complex128", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
                 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1",
                 24: "float8e8m0", 25: "uint2", 26: "int2"}


def _cast_infer(attrs, values):
    to = attrs["to"]
    canonical_dtype(values[0].dtype)
    if to in _CAST_REFUSED:
        raise UnsupportedModelError(f"Cast to {_CAST_REFUSED[to]} is not supported")
    return [(values[0].shape, CAST_TYPES[to][0])]


def round_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even), kept float32."""
    bits = x.view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    rounded &= np.uint32(0xFFFF0000)
    y = rounded.view(np.float32)
    np.copyto(y, x, where=np.isnan(x))  # a NaN's payload could round into an infinity
    return y


def _cast(ctx, xs):
    source, (target, narrow) = ctx
    x = xs[0]
    if target == FLOAT:
        y = x if source == FLOAT else x.astype(np.float32)
        if narrow is np.float16:
            y = y.astype(np.float16).astype(np.float32)
        elif narrow == "bfloat16":
            y = round_bfloat16(y)
    elif target == INT:
        y = x if source == INT else float_to_int64(x) if source == FLOAT else x.astype(np.int64)
        if narrow is not None:
            y = y.astype(narrow).astype(np.int64)
    else:
        y = x if source == BOOL else as_array(np.not_equal(x, x.dtype.type(0)))
    return [as_array(y)]


def _cast_to(value):
    if value in CAST_TYPES or value in _CAST_REFUSED:
        return None
    return f"{value} is not an ONNX data type"


register(Op("Cast", {"to": Attr("int", check=_cast_to), "saturate": Attr("int", 1, flag)}, _cast_infer, _cast,
            prepare=lambda attrs, values: (canonical_dtype(values[0].dtype), CAST_TYPES[attrs["to"]])))


# ---- Dropout: inference is the identity ----

def _dropout_infer(attrs, values):
    training = values[2] if len(values) > 2 else None
    if training is not None and (training.const is None or training.const.size != 1
                                 or bool(np.asarray(training.const).ravel()[0])):
        raise UnsupportedModelError("Dropout: grurt runs Dropout for inference only (training_mode a constant "
                                    "false); training mode is random: export the model for inference")
    return [(values[0].shape, canonical_dtype(values[0].dtype)), (values[0].shape, BOOL)]


def _dropout_prepare(attrs, values):
    mask = np.ones(values[0].shape, bool)
    mask.flags.writeable = False  # one mask for every run
    return mask


register(Op("Dropout", {"seed": Attr("int", 0)}, _dropout_infer, lambda mask, xs: [xs[0], mask],
            prepare=_dropout_prepare, inputs=(1, 3), outputs=(1, 2), const_inputs=(2,)))
