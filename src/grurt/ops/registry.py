"""The op registry: every general tensor op grurt runs, stated in one place.

An op is an ONNX operator (the ONNX op set is grurt's vocabulary: Keras layers and torch
modules lower onto it). Each :class:`Op` states

* ``attributes``: name -> :class:`Attr` (kind, default, check). Attributes are validated once,
  when a graph is built (:func:`check_attributes`), never in a kernel;
* ``infer``: the shape rule. Given the checked attributes and a :class:`Value` per input
  (concrete shape, dtype, and the array itself when the input is a constant at plan time),
  it returns ``(shape, dtype)`` per output, or raises ``ModelFormatError`` /
  ``UnsupportedModelError`` naming what is wrong. Shapes are plain ints: a plan is made per
  input shape, so every shape is concrete. Every size is computed with Python ints (no
  overflow) and checked by the planner against :mod:`grurt.limits` before anything is
  allocated;
* ``run``: the float32 implementation (vectorized numpy/SciPy, or a C kernel): it takes the
  prepared context and the input arrays (float tensors are float32, integer tensors int64,
  booleans bool) and returns a list of output arrays;
* ``prepare`` (optional): called once per plan with the attributes and the inputs' Values;
  what it returns is the ``ctx`` handed to ``run`` (default: the attributes). Constant
  weights are packed here (a GRU builds its kernels' plan, a MatMul transposes its weight);
* ``check`` (optional): ``check(attrs)`` validates the attributes together, once they are each of
  their kind (a ``grurt.Chain``'s layers make a ModelSpec with its ``input_size`` and ``mask_value``);
  it raises a GrurtError, which the node's name is put in front of;
* ``arity`` (optional): ``arity(attrs)`` -> ((fewest, most) inputs, (fewest, most) outputs) when they
  depend on the attributes (a ``grurt.Chain`` takes and gives one state per GRU layer);
* ``time``: how the op acts along a time axis: ``"step"`` (each step on its own),
  ``"causal"`` (a history of k steps) or ``"sequence"`` (mixes the whole sequence); None when
  it depends on the axes: then ``time_of(attrs, values, time_axis)`` says, for a node whose
  first input has its time axis at ``time_axis`` (the planner asks :func:`time_rule`).

The float64 reference of each op lives in :mod:`grurt.reference_ops`, written independently
of ``run``: it is the oracle of the tests.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import GrurtError, ModelFormatError, UnsupportedModelError
from ..limits import MAX_LAYER_INDEX
from ..spec import LAYER_TYPES

REQUIRED = object()

#: The kinds an attribute may have, with the Python types a value of that kind may be. "layers": a
#: tuple of grurt's fused layers (:mod:`grurt.spec` instances, at most MAX_LAYER_INDEX + 1 of them).
ATTRIBUTE_KINDS = ("int", "ints", "float", "floats", "string", "strings", "tensor", "layers")

#: Any integer attribute is within this bound (ONNX writes INT64_MAX for "to the end").
INT_BOUND = 2**63


@dataclasses.dataclass(frozen=True)
class Attr:
    """An attribute: its kind, its default (``REQUIRED``: none) and an optional check
    ``check(value) -> str or None`` (the problem, in words)."""

    kind: str
    default: Any = REQUIRED
    check: Optional[Callable[[Any], Optional[str]]] = None


@dataclasses.dataclass(frozen=True)
class Value:
    """What planning knows of a tensor: its concrete shape, its dtype and, when it is a
    constant at plan time (an initializer, or computed only from constants and shapes), the
    array itself."""

    shape: Tuple[int, ...]
    dtype: np.dtype
    const: Optional[np.ndarray] = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    attributes: Dict[str, Attr]
    infer: Callable
    run: Callable
    prepare: Optional[Callable] = None
    time: Optional[str] = "step"
    #: the fewest and most inputs (an omitted optional input is the name '')
    inputs: Tuple[int, int] = (1, 1)
    #: how many outputs: (fewest, most)
    outputs: Tuple[int, int] = (1, 1)
    #: inputs that must be constants at plan time (Reshape's shape, Pad's pads, ...)
    const_inputs: Tuple[int, ...] = ()
    #: when ``time`` is None: ``time_of(attrs, values, time_axis)`` -> "step" | "causal" | "sequence"
    time_of: Optional[Callable] = None
    #: an op whose weights may be stored in bf16 or int8 (grurt.precision): ``reduced(ctx, mode)`` -> the
    #: prepared context with its weights in that mode (a TensorModel's ``weights``)
    reduced: Optional[Callable] = None
    #: ``check(attrs)``: the attributes checked together (raises a GrurtError); None: each on its own only
    check: Optional[Callable] = None
    #: ``arity(attrs)`` -> (inputs, outputs), each (fewest, most), when the attributes decide them
    arity: Optional[Callable] = None


REGISTRY: Dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in REGISTRY:
        raise RuntimeError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    return op


#: Refused with their reason, by name.
REFUSED = {
    "Loop": "control flow", "Scan": "control flow", "If": "control flow",
    "NonZero": "its output shape depends on the values", "Unique": "its output shape depends on the values",
    "RandomNormal": "random", "RandomUniform": "random", "RandomNormalLike": "random",
    "RandomUniformLike": "random", "Multinomial": "random", "Bernoulli": "random",
    "StringNormalizer": "a string op", "RegexFullMatch": "a string op", "StringConcat": "a string op",
    "StringSplit": "a string op",
}


def lookup(op_type: str, where: str) -> Op:
    """The registered op, or UnsupportedModelError naming the node (and why, for refused ops)."""
    op = REGISTRY.get(op_type)
    if op is None:
        reason = REFUSED.get(op_type)
        raise UnsupportedModelError(f"{where}: operator {op_type} is not supported"
                                    + (f" ({reason})" if reason else ""))
    return op


def time_rule(op: Op, attrs: dict, values, time_axis: Optional[int]) -> str:
    """How a node of ``op`` acts along time when its first input's time axis is ``time_axis``
    (None: the input has none, so the node acts step by step)."""
    if time_axis is None:
        return "step"
    return op.time if op.time is not None else op.time_of(attrs, values, time_axis)


def _kind_ok(kind: str, value) -> bool:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and -INT_BOUND <= int(v) < INT_BOUND

    def is_float(v):
        return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) \
            and math.isfinite(float(v))

    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_float(value)
    if kind == "string":
        return isinstance(value, str)
    if kind in ("ints", "floats", "strings"):
        item = {"ints": is_int, "floats": is_float, "strings": lambda v: isinstance(v, str)}[kind]
        return isinstance(value, (list, tuple)) and len(value) <= 4096 and all(item(v) for v in value)
    if kind == "tensor":
        return isinstance(value, np.ndarray)
    if kind == "layers":
        return (isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_LAYER_INDEX + 1
                and all(isinstance(v, LAYER_TYPES) for v in value))
    return False


def check_attributes(op: Op, attrs: dict, where: str) -> dict:
    """The attributes with defaults filled in, each of its kind and passing its check; an
    unknown attribute is an UnsupportedModelError, a bad value a ModelFormatError, both naming
    the node and the attribute."""
    unknown = sorted(set(attrs) - set(op.attributes))
    if unknown:
        raise UnsupportedModelError(f"{where}: attribute {unknown[0]}={attrs[unknown[0]]!r} of {op.name} "
                                    "is not supported")
    checked = {}
    for name, spec in op.attributes.items():
        if name not in attrs:
            if spec.default is REQUIRED:
                raise ModelFormatError(f"{where}: {op.name} needs the attribute '{name}'")
            checked[name] = spec.default
            continue
        value = attrs[name]
        if not _kind_ok(spec.kind, value):
            kind = (f"tuple of 1 to {MAX_LAYER_INDEX + 1} grurt.spec layers" if spec.kind == "layers"
                    else f"finite {spec.kind} within bounds")
            raise ModelFormatError(f"{where}: attribute {name} of {op.name} must be a {kind}, got {_short(value)}")
        if spec.kind == "int":
            value = int(value)
        elif spec.kind == "float":
            value = float(value)
        elif spec.kind == "ints":
            value = tuple(int(v) for v in value)
        elif spec.kind == "floats":
            value = tuple(float(v) for v in value)
        elif spec.kind in ("strings", "layers"):
            value = tuple(value)
        problem = spec.check(value) if spec.check is not None else None
        if problem:
            raise ModelFormatError(f"{where}: attribute {name} of {op.name}: {problem}")
        checked[name] = value
    if op.check is not None:
        try:
            op.check(checked)
        except GrurtError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    return checked


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- helpers every family uses ----

#: The dtypes tensors have while a plan runs: float tensors are float32 (float16/float64 in a
#: file compute in float32), integer tensors int64, booleans bool.
FLOAT, INT, BOOL = np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.bool_)


def canonical_dtype(dtype) -> np.dtype:
    """float32, int64 or bool for any real, integer or boolean numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return FLOAT
    if dtype.kind in "iu":
        return INT
    if dtype.kind == "b":
        return BOOL
    raise UnsupportedModelError(f"tensors of dtype {dtype} are not supported")


def broadcast_shapes(where: str, *shapes) -> Tuple[int, ...]:
    """The numpy/ONNX multidirectional broadcast of ``shapes``; ModelFormatError naming the
    node and the shapes when they do not broadcast."""
    rank = max(len(s) for s in shapes)
    result = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise ModelFormatError(f"{where}: shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        result.append(dims.pop() if dims else 1)
    return tuple(result)


def normalize_axis(where: str, axis: int, rank: int) -> int:
    """``axis`` in [-rank, rank) as a non-negative axis; ModelFormatError naming the node otherwise."""
    if not -rank <= axis < rank:
        raise ModelFormatError(f"{where}: axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def const_ints(where: str, value: Optional[Value], what: str) -> Optional[Tuple[int, ...]]:
    """The integers of a constant input (None for an omitted one); UnsupportedModelError when the
    input is computed from the model's data (its value would decide a shape)."""
    if value is None:
        return None
    if value.const is None:
        raise UnsupportedModelError(f"{where}: {what} is computed from the model's inputs; grurt needs it "
                                    "constant when the plan is made (it decides a shape)")
    if value.const.dtype.kind not in "iu":
        raise ModelFormatError(f"{where}: {what} must be integers, got {value.const.dtype}")
    return tuple(int(v) for v in value.const.ravel())

