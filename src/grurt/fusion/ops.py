"""The ops the fusion pass understands, other than GRU (:mod:`.gru`), convolutions (:mod:`.conv`) and
normalisations (:mod:`.norm`).

Data movement and shape arithmetic (Transpose, Reshape, Squeeze, Slice, Gather, Concat,
Split, Shape, Expand, Tile, ...) run on constants and on id arrays alike. Arithmetic folds constants; with
model data on one side and a constant on the other it becomes a per-feature ``Scale``; between
model tensors of one shape (Add, Sub, Mul, Max, Min, Mean, Sum) a ``Combine`` node.
Gemm and MatMul become ``Dense``; activation ops, Softmax and Clip become ``Activation``
layers (Clip written with relu and hard_sigmoid).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..graph import Combine
from ..limits import MAX_PARAMETERS
from ..ops import REGISTRY, Value, canonical_dtype
from ..ops.elementwise import CAST_TYPES
from ..spec import Activation, activation
from .interpreter import _Interpreter, _Sym

# elementwise activation ops -> (grurt kind, attributes carrying alpha and beta)
_ACTIVATION_OPS = {
    "Relu": ("relu", ()), "Sigmoid": ("sigmoid", ()), "Tanh": ("tanh", ()), "Softsign": ("softsign", ()),
    "Softplus": ("softplus", ()), "LeakyRelu": ("leaky_relu", ("alpha",)), "Elu": ("elu", ("alpha",)),
    "HardSigmoid": ("hard_sigmoid", ("alpha", "beta")), "ThresholdedRelu": ("thresholded_relu", ("alpha",)),
}


class _Ops(_Interpreter):
    """The handlers of every operator but GRU."""

    def _handler(self, op):
        if op in _ACTIVATION_OPS:
            return functools.partial(self._op_activation, _ACTIVATION_OPS[op])
        return super()._handler(op)

    def _result_size(self, where, value, count):
        """The size of a data-movement result from ``value``, checked before it is built: model values
        against the graph's id budget, constants against MAX_PARAMETERS."""
        if isinstance(value, _Sym):
            self._room(where, count)
        else:
            self._check_constant(where, (count,))

    # -- operators: data movement and shape arithmetic (constants and ids alike) --

    def _op_Identity(self, where, inputs, attrs, n_out):
        return [inputs[0]]

    def _op_Dropout(self, where, inputs, attrs, n_out):
        training = self._const(where, inputs[2] if len(inputs) > 2 else None, "training_mode")
        if n_out > 1 or (training is not None and bool(np.asarray(training))):
            raise UnsupportedModelError(f"{where}: only inference dropout (no mask output, no training mode) "
                                        "is supported")
        return [inputs[0]]

    def _op_ConstantOfShape(self, where, inputs, attrs, n_out):
        shape = self._ints(where, inputs[0], "shape")
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_PARAMETERS:
            raise ModelFormatError(f"{where}: shape {shape} is negative or too large")
        fill = np.zeros(1, np.float32) if attrs["value"] is None else attrs["value"]     # one value (the registry)
        return [np.full(shape, fill.reshape(-1)[0], fill.dtype)]

    def _op_Shape(self, where, inputs, attrs, n_out):
        shape = np.array(inputs[0].shape, np.int64)
        return [shape[slice(attrs["start"], attrs["end"])]]

    def _op_Size(self, where, inputs, attrs, n_out):
        return [np.array(math.prod(inputs[0].shape), np.int64)]

    def _op_Cast(self, where, inputs, attrs, n_out):
        to, value = attrs["to"], inputs[0]
        if isinstance(value, _Sym):
            if to not in (_INTEGERS if value.integer else _FLOATS):
                raise UnsupportedModelError(f"{where}: attribute to={to} would change the model's data type")
            return [value]
        if to not in CAST_TYPES:
            raise UnsupportedModelError(f"{where}: Cast to data type {to} is not supported")
        value = np.asarray(value)
        value = value.astype(canonical_dtype(value.dtype))
        cast = REGISTRY["Cast"]       # the constant as a graph computes it: the registry's Cast
        return cast.run(cast.prepare(attrs, [_constant_value(value)]), [value])

    def _op_Transpose(self, where, inputs, attrs, n_out):
        perm = attrs["perm"]
        return [self._move(inputs[0], lambda a: np.transpose(a, perm))]

    def _op_Reshape(self, where, inputs, attrs, n_out):
        target = self._ints(where, inputs[1], "shape")
        value = inputs[0]
        if not attrs["allowzero"]:
            target = [value.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return [self._move(value, lambda a: a.reshape(target))]

    def _op_Flatten(self, where, inputs, attrs, n_out):
        shape, axis = inputs[0].shape, attrs["axis"]
        if not -len(shape) <= axis <= len(shape):
            raise ModelFormatError(f"{where}: axis {axis} is out of range for a tensor of rank {len(shape)}")
        axis += len(shape) if axis < 0 else 0
        target = (math.prod(shape[:axis]), math.prod(shape[axis:]))
        return [self._move(inputs[0], lambda a: a.reshape(target))]

    def _op_Squeeze(self, where, inputs, attrs, n_out):
        axes = self._attr_or_input(where, attrs, "axes", inputs, 1)
        value = inputs[0]
        axes = tuple(i for i, d in enumerate(value.shape) if d == 1) if axes is None else tuple(axes)
        return [self._move(value, lambda a: np.squeeze(a, axes))]

    def _op_Unsqueeze(self, where, inputs, attrs, n_out):
        axes = self._attr_or_input(where, attrs, "axes", inputs, 1)
        return [self._move(inputs[0], lambda a: np.expand_dims(a, tuple(axes)))]

    def _op_Gather(self, where, inputs, attrs, n_out):
        indices = np.asarray(self._const(where, inputs[1], "indices"), np.int64)
        shape, axis = inputs[0].shape, attrs["axis"]
        self._result_size(where, inputs[0], math.prod(shape) // max(shape[axis], 1) * indices.size)
        return [self._move(inputs[0], lambda a: np.take(a, indices, axis=axis))]

    def _op_Slice(self, where, inputs, attrs, n_out):
        starts, ends, axes = (self._attr_or_input(where, attrs, name, inputs, index)
                              for index, name in enumerate(("starts", "ends", "axes"), 1))
        steps = self._ints(where, inputs[4] if len(inputs) > 4 else None, "steps")
        value = inputs[0]
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        index = [slice(None)] * len(value.shape)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step == 0:
                raise ModelFormatError(f"{where}: step 0")
            index[axis] = slice(start, end, step)
        return [self._move(value, lambda a: a[tuple(index)])]

    def _op_Concat(self, where, inputs, attrs, n_out):
        kinds = {isinstance(v, _Sym) for v in inputs}
        if kinds == {True, False}:
            raise UnsupportedModelError(f"{where}: joins the model's data with constants")
        self._result_size(where, inputs[0], sum(math.prod(np.shape(v.ids if isinstance(v, _Sym) else v))
                                                for v in inputs))
        if kinds == {True}:
            return [_Sym(np.concatenate([v.ids for v in inputs], axis=attrs["axis"]), inputs[0].integer)]
        return [np.concatenate([np.asarray(v) for v in inputs], axis=attrs["axis"])]

    def _op_Split(self, where, inputs, attrs, n_out):
        value, axis = inputs[0], attrs["axis"]
        sizes = self._attr_or_input(where, attrs, "split", inputs, 1)
        if not sizes:
            parts = attrs["num_outputs"]      # the node's outputs, when the file gives no sizes (general.py)
            length = value.shape[axis]
            chunk = -(-length // parts)
            sizes = [min(chunk, length - i * chunk) for i in range(parts)]
        bounds = np.cumsum(sizes)[:-1]
        return [self._move(value, lambda a, i=i: np.split(a, bounds, axis=axis)[i]) for i in range(len(sizes))]

    def _op_Expand(self, where, inputs, attrs, n_out):
        target = self._ints(where, inputs[1], "shape")
        shape = np.broadcast_shapes(np.shape(inputs[0]), tuple(target))
        self._result_size(where, inputs[0], math.prod(shape))
        return [self._move(inputs[0], lambda a: np.broadcast_to(a, shape).copy())]

    def _op_Tile(self, where, inputs, attrs, n_out):
        repeats = self._ints(where, inputs[1], "repeats")
        shape = np.shape(inputs[0])
        if len(repeats) != len(shape) or min(repeats, default=0) < 0:
            raise ModelFormatError(f"{where}: repeats {repeats} must be {len(shape)} non-negative integers, one per "
                                   f"axis of the input of shape {shape}")
        self._result_size(where, inputs[0], math.prod(n * k for n, k in zip(shape, repeats)))
        return [self._move(inputs[0], lambda a: np.tile(a, repeats))]

    # -- operators: arithmetic --

    def _fold(self, where, inputs, fn):
        arrays = [np.asarray(self._const(where, v, "the operand")) for v in inputs]
        shapes = [a.shape for a in arrays]
        if fn is np.matmul:
            if min(map(len, shapes)) >= 2:       # (..., n, k) @ (..., k, m): the broadcast batch, n and m
                self._check_constant(where, np.broadcast_shapes(shapes[0][:-2], shapes[1][:-2])
                                     + (shapes[0][-2], shapes[1][-1]))
        else:                                    # elementwise: the broadcast shape
            self._check_constant(where, np.broadcast_shapes(*shapes))
        return [fn(*arrays)]

    def _op_Add(self, where, inputs, attrs, n_out):
        return self._arithmetic(where, inputs, np.add, lambda k: (1, k), lambda k: (1, k))

    def _op_Sub(self, where, inputs, attrs, n_out):
        return self._arithmetic(where, inputs, np.subtract, lambda k: (1, -k), lambda k: (-1, k))

    def _op_Mul(self, where, inputs, attrs, n_out):
        return self._arithmetic(where, inputs, np.multiply, lambda k: (k, 0), lambda k: (k, 0))

    def _op_Div(self, where, inputs, attrs, n_out):
        def divide(x, y):  # ONNX integer division truncates
            return np.trunc(x / y).astype(x.dtype) if x.dtype.kind in "iu" else x / y
        return self._arithmetic(where, inputs, divide, lambda k: (1 / k, 0), None)

    def _arithmetic(self, where, inputs, fn, right, left):
        """Constants fold; model data (op) constant becomes a per-feature Scale: x·a + c = right(k)/left(k)."""
        x, y = inputs
        if isinstance(x, _Sym) and isinstance(y, _Sym):
            op = {np.add: "add", np.subtract: "sub", np.multiply: "mul"}.get(fn)
            if op is None:
                raise UnsupportedModelError(f"{where}: divides a model tensor by another")
            return [self._merge(where, Combine(op), inputs)]
        if isinstance(x, _Sym) or (isinstance(y, _Sym) and left):
            data, k, make = (x, y, right) if isinstance(x, _Sym) else (y, x, left)
            return [self._scale_op(where, data, *make(np.asarray(k, np.float64)))]
        return self._fold(where, inputs, fn)

    def _variadic(self, where, inputs, op, fold):
        """Max, Min, Mean, Sum: of model tensors a ``Combine``, of constants folded."""
        syms = [isinstance(v, _Sym) for v in inputs]
        if all(syms) and len(inputs) > 1:
            return [self._merge(where, Combine(op), inputs)]
        if not any(syms):
            return [functools.reduce(fold, (np.asarray(v) for v in inputs))
                    / (len(inputs) if op == "mean" else 1)]
        if len(inputs) == 1:
            return [inputs[0]]
        raise UnsupportedModelError(f"{where}: combines the model's data with constants; grurt combines model "
                                    "tensors of one shape")

    def _op_Max(self, where, inputs, attrs, n_out):
        return self._variadic(where, inputs, "max", np.maximum)

    def _op_Min(self, where, inputs, attrs, n_out):
        return self._variadic(where, inputs, "min", np.minimum)

    def _op_Mean(self, where, inputs, attrs, n_out):
        return self._variadic(where, inputs, "mean", np.add)

    def _op_Sum(self, where, inputs, attrs, n_out):
        return self._variadic(where, inputs, "add", np.add)

    def _op_Neg(self, where, inputs, attrs, n_out):
        if isinstance(inputs[0], _Sym):
            return [self._scale_op(where, inputs[0], -1.0, 0.0)]
        return self._fold(where, inputs, np.negative)

    def _op_Sqrt(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.sqrt)

    def _op_Reciprocal(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.reciprocal)

    def _op_Equal(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.equal)

    def _op_Where(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.where)

    # -- operators: layers --

    def _op_Gemm(self, where, inputs, attrs, n_out):
        A, B, C = (inputs + [None])[:3]
        alpha, beta = attrs["alpha"], attrs["beta"]
        B = np.asarray(self._const(where, B, "B"))
        if attrs["transB"]:
            B = B.T
        if not isinstance(A, _Sym):
            A = np.asarray(A)
            A = A.T if attrs["transA"] else A
            if A.ndim == 2 and B.ndim == 2:
                self._check_constant(where, (A.shape[0], B.shape[1]))
            product = alpha * (A @ B)
            return [product + beta * C if C is not None else product]
        if attrs["transA"]:
            A = _Sym(A.ids.T)
        if A.ids.ndim != 2:
            raise ModelFormatError(f"{where}: A must be 2-D, got shape {A.shape}")
        bias = np.zeros(B.shape[-1])
        if C is not None:
            C = np.broadcast_to(np.asarray(self._const(where, C, "C"), np.float64), (A.shape[0], B.shape[-1]))
            if not (C == C[:1]).all():
                raise UnsupportedModelError(f"{where}: C varies over the batch, not only per output feature")
            bias = beta * C[0]
        return [self._dense(where, A, alpha * B.T, bias)]

    def _op_MatMul(self, where, inputs, attrs, n_out):
        x, W = inputs
        if not isinstance(x, _Sym):
            return self._fold(where, inputs, np.matmul)
        W = np.asarray(self._const(where, W, "the right operand"))
        if W.ndim != 2:
            raise UnsupportedModelError(f"{where}: the weight must be a 2-D matrix, got shape {W.shape}")
        return [self._dense(where, x, W.T, 0.0)]

    def _activation(self, where, inputs, kind, alpha=None, beta=None):
        value = inputs[0]
        if not isinstance(value, _Sym):
            raise UnsupportedModelError(f"{where}: activation of a constant")
        return [self._elementwise(where, value, Activation(activation(kind, alpha, beta)))]

    def _op_activation(self, kind_and_attrs, where, inputs, attrs, n_out):
        kind, names = kind_and_attrs
        return self._activation(where, inputs, kind, *(attrs[name] for name in names))

    def _op_Softmax(self, where, inputs, attrs, n_out):
        value = inputs[0]
        if not isinstance(value, _Sym):
            raise UnsupportedModelError(f"{where}: softmax of a constant")
        rank = len(value.shape)
        axis = attrs["axis"] % rank
        order = [i for i in range(rank) if i != axis] + [axis]
        moved = value.ids.transpose(order)
        # the tensor whose features the softmax axis holds: the one read, or what _rows makes of it (a Flatten of
        # all the steps of each sequence: a softmax over time, at a fixed number of steps)
        tensor, rows, features = self._rows(where, moved)
        if features.size != tensor.features:
            raise UnsupportedModelError(f"{where}: softmax over part of the features")
        out = self._layer(Activation(activation("softmax")), tensor)
        ids = out.ids.reshape(-1, tensor.features)[rows][:, features].reshape(moved.shape)
        return [_Sym(ids.transpose(np.argsort(order)))]

    def _op_Clip(self, where, inputs, attrs, n_out):
        value = inputs[0]
        low, high = (float(np.asarray(b).reshape(())) if b is not None else default
                     for b, default in zip(self._clip_bounds(where, inputs, attrs), (-math.inf, math.inf)))
        if not low < high:
            raise UnsupportedModelError(f"{where}: min={low} is not below max={high}")
        if not isinstance(value, _Sym):
            return [np.clip(value, low, high)]
        # clip written with grurt's functions, exact up to float rounding; (a, c) is x·a + c
        relu = Activation(activation("relu"))
        if math.isinf(low) and math.isinf(high):
            steps = ()
        elif math.isinf(high):      # relu(x - low) + low
            steps = ((1.0, -low), relu, (1.0, low))
        elif math.isinf(low):       # high - relu(high - x)
            steps = ((-1.0, high), relu, (-1.0, high))
        else:                       # low + (high - low)·clip((x - low)/(high - low), 0, 1)
            span = high - low
            steps = (Activation(activation("hard_sigmoid", 1 / span, (0 - low) / span)), (span, low))
        return [self._elementwise(where, value, *steps)]

    def _clip_bounds(self, where, inputs, attrs):
        """Clip's (min, max), each None when not given: attributes before opset 11, constant inputs after."""
        return [attrs[name] if attrs[name] is not None else self._const(
                where, inputs[index] if len(inputs) > index else None, "min/max")
                for index, name in enumerate(("min", "max"), 1)]


#: the ONNX data types (TensorProto.DataType) a Cast of the model's data may name: it keeps their dtype
_INTEGERS, _FLOATS = (6, 7), (1, 11)


def _constant_value(array):
    return Value(array.shape, array.dtype, array)
