"""ONNX operators for embeddings, normalisation over features, pooling over time and flattening.

======================================  ========================================================  ======================
ONNX                                    meaning                                                   grurt
======================================  ========================================================  ======================
``Gather(table, ids)``, axis 0          ``table`` a constant (V, E), ``ids`` an integer graph     ``Embedding`` (first
                                        input (B, T) or (T, B); negative ids wrap in ONNX         layer): the model
                                                                                                  takes ids; negative
                                                                                                  ids are refused
``LayerNormalization`` (opset ≥ 17)     (x − μ)/√(σ² + epsilon)·Scale + B over the axes from      ``LayerNorm``: the last
                                        ``axis`` (−1) on; epsilon 1e-5 by default                 axis only
ReduceMean, Sub, Pow 2, ReduceMean,     the same, as ``torch.onnx.export`` writes it before       ``LayerNorm`` (the Mul/
Add ε, Sqrt, Div (, Mul γ, Add β)       opset 17                                                  Add fold into γ, β)
``LpNormalization``                     x / ‖x‖_p over ``axis`` (−1); no epsilon: onnxruntime     ``UnitNorm(0)``: p = 2
                                        gives zeros for an all-zero step                          only
ReduceL2, Clip(min=ε), Expand, Div      x / max(‖x‖₂, ε), as ``F.normalize`` exports it (ε        ``UnitNorm(ε)``
                                        1e-12 by default)
``GlobalAveragePool``,                  mean / max over the axes after the first two: (B, F, T)   ``GlobalPool``: they
``GlobalMaxPool``, ``ReduceMean``,      → (B, F, 1); or over the ``axes`` given                   must be the time axis
``ReduceMax`` over time
``Flatten``/``Reshape`` (B, T, F) →     the steps side by side, read by a Gemm/MatMul             ``Flatten(T)``: T fixed
(B, T·F)
======================================  ========================================================  ======================

The decomposed layer normalisation is recognised as the interpreter runs: a ReduceMean over the
features returns a pending statistic (:class:`_Stat`), ``x − mean(x)`` a pending centred tensor
(:class:`_Centered`), and the Div that completes the formula appends the ``LayerNorm``. Any other
use of a pending value is refused by name.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UnsupportedModelError
from ..spec import Embedding, Flatten, GlobalPool, LayerNorm, UnitNorm
from .interpreter import _Interpreter, _RawInput, _Sym, unique


@dataclasses.dataclass
class _Stat:
    """A per-step statistic over the features of ``x``, pending in a decomposed LayerNorm:
    ``mean(x)``, ``var`` = mean((x − mean)²), plus ``epsilon``, then ``sqrt``."""

    kind: str
    x: _Sym
    shape: tuple
    epsilon: float = 0.0
    sqrt: bool = False


@dataclasses.dataclass
class _Centered:
    """``x − mean(x)`` over the features (``squared``: its square), pending in a decomposed LayerNorm."""

    x: _Sym
    squared: bool = False

    @property
    def shape(self):
        return self.x.shape


_PENDING = (_Stat, _Centered)


class _NormOps(_Interpreter):
    """Handlers for Gather on ids, LayerNormalization (and its decomposition), LpNormalization,
    global pooling over time and Flatten of a sequence. Mixed in before :class:`.ops._Ops`."""

    # -- Embedding --

    def _op_Gather(self, where, inputs, attrs, n_out):
        data, indices = inputs[0], inputs[1]
        if not (isinstance(indices, _Sym) and indices.integer and not isinstance(data, _Sym)):
            return super()._op_Gather(where, inputs, attrs, n_out)
        table = np.asarray(data)
        if attrs["axis"] != 0 or table.ndim != 2:
            raise UnsupportedModelError(f"{where}: gathers with indices from the model's inputs; grurt reads that "
                                        "as an embedding: rows (axis 0) of a 2-D table")
        tensors, _ = self._owners(where, indices.ids) if self._raw_ids(where, indices.ids) else (None, None)
        if tensors is None:
            raise UnsupportedModelError(f"{where}: the ids must be an integer graph input (each id read once)")
        ids_input = tensors[0]
        positions = ids_input.inverse[indices.ids - ids_input.start]
        if unique(positions).size != ids_input.ids.size:
            raise UnsupportedModelError(f"{where}: the ids must be an integer graph input (each id read once)")
        out = self._add(Embedding(table), [ids_input], ids_input.ids.shape + (table.shape[1],), True,
                        ids_input.origins)
        rows = out.ids.reshape(-1, table.shape[1])[positions]
        return [_Sym(rows.reshape(indices.shape + (table.shape[1],)))]

    def _raw_ids(self, where, ids):
        """Whether ``ids`` all come from one integer graph input (claiming it as token ids)."""
        owners = {self.owners[i] for i in unique(self._owner_indices(ids.ravel()))}
        if len(owners) != 1:
            return False
        owner, = owners
        if isinstance(owner, _RawInput) and owner.integer:
            self._claim(where, owner, "ids")
            return True
        return owner.name in self.claimed and self.claimed[owner.name][0] == "ids"

    # -- LayerNormalization, LpNormalization --

    def _feature_layer(self, where, value, axis, layer_of):
        """Append ``layer_of(features)`` (the tensor's feature index along ``value``'s last axis), a layer
        over all the features of each step; returns its output in ``value``'s arrangement."""
        if not isinstance(value, _Sym):
            raise UnsupportedModelError(f"{where}: normalises a constant")
        rank = len(value.shape)
        if axis is None or axis % max(rank, 1) != rank - 1:
            raise UnsupportedModelError(f"{where}: normalises over axis {axis} of a rank-{rank} tensor; grurt "
                                        "normalises over the last axis (the features) only")
        tensor, positions = self._find(where, value.ids)
        _, _, features = self._rows(where, value.ids)
        if features.size != tensor.features:
            raise UnsupportedModelError(f"{where}: normalises over part of the features")
        out = self._layer(layer_of(features), tensor)
        return _Sym(out.ids.reshape(-1)[positions].reshape(value.shape))

    def _op_LayerNormalization(self, where, inputs, attrs, n_out):
        if n_out > 1:
            raise UnsupportedModelError(f"{where}: the Mean and InvStdDev outputs are not supported")
        X, scale, bias = (inputs + [None, None])[:3]
        epsilon = attrs["epsilon"]

        def layer_of(features):
            size = features.size
            gamma, beta = np.ones(size), np.zeros(size)
            for name, value, full in (("Scale", scale, gamma), ("B", bias, beta)):
                if value is not None:
                    full[features] = np.broadcast_to(np.asarray(self._const(where, value, name), np.float64),
                                                     (size,))
            return LayerNorm(gamma, beta, epsilon)
        return [self._feature_layer(where, X, attrs["axis"], layer_of)]

    def _op_LpNormalization(self, where, inputs, attrs, n_out):
        if attrs["p"] != 2:
            raise UnsupportedModelError(f"{where}: attribute p={attrs['p']} is not supported (p = 2 only)")
        return [self._feature_layer(where, inputs[0], attrs["axis"], lambda features: UnitNorm(0.0))]

    # -- the decomposed LayerNorm, ReduceMean/ReduceMax --

    def _reduce_axes(self, where, inputs, attrs, rank):
        axes = self._attr_or_input(where, attrs, "axes", inputs, 1)
        if not axes:
            if attrs["noop_with_empty_axes"]:
                return []
            return list(range(rank))
        return sorted({int(a) % rank for a in axes})

    def _op_ReduceMean(self, where, inputs, attrs, n_out):
        return self._reduce(where, inputs, attrs, "average", np.mean)

    def _op_ReduceMax(self, where, inputs, attrs, n_out):
        return self._reduce(where, inputs, attrs, "max", np.max)

    def _op_ReduceL2(self, where, inputs, attrs, n_out):
        """‖x‖ over the features, as ``F.normalize`` exports it: ReduceL2, Clip(min=ε), Expand, Div."""
        value = inputs[0]
        if not isinstance(value, (_Sym,) + _PENDING):
            value = np.asarray(value)
            axes = self._reduce_axes(where, inputs, attrs, value.ndim)
            return [np.sqrt(np.sum(value * value, axis=tuple(axes), keepdims=bool(attrs["keepdims"])))]
        rank = len(value.shape)
        axes = self._reduce_axes(where, inputs, attrs, rank)
        if isinstance(value, _Sym) and axes == [rank - 1] and attrs["keepdims"] \
                and self._all_features(where, value):
            return [_Stat("l2", value, value.shape[:-1] + (1,))]
        raise UnsupportedModelError(f"{where}: the L2 norm is supported over the features, as F.normalize takes it")

    def _op_Clip(self, where, inputs, attrs, n_out):
        value = inputs[0]
        if isinstance(value, _Stat) and value.kind == "l2" and not value.epsilon:
            low, high = self._clip_bounds(where, inputs, attrs)
            if low is not None and high is None and np.size(low) == 1 and float(np.asarray(low).reshape(())) >= 0:
                return [dataclasses.replace(value, epsilon=float(np.asarray(low).reshape(())))]
        self._refuse_pending(where, inputs)
        return super()._op_Clip(where, inputs, attrs, n_out)

    def _op_Expand(self, where, inputs, attrs, n_out):
        value = inputs[0]
        if isinstance(value, _Stat) and value.kind == "l2":   # the norm broadcast back over the features
            shape = np.broadcast_shapes(value.shape, tuple(self._ints(where, inputs[1], "shape")))
            if shape != value.x.shape:
                raise UnsupportedModelError(f"{where}: expands an L2 norm to shape {shape}")
            return [dataclasses.replace(value, shape=shape)]
        self._refuse_pending(where, inputs)
        return super()._op_Expand(where, inputs, attrs, n_out)

    def _reduce(self, where, inputs, attrs, mode, fold):
        value = inputs[0]
        keepdims = bool(attrs["keepdims"])
        if not isinstance(value, (_Sym,) + _PENDING):
            value = np.asarray(value)
            axes = self._reduce_axes(where, inputs, attrs, value.ndim)
            return [fold(value, axis=tuple(axes), keepdims=keepdims) if axes else value]
        rank = len(value.shape)
        axes = self._reduce_axes(where, inputs, attrs, rank)
        shape = tuple(1 if i in axes else d for i, d in enumerate(value.shape)) if keepdims else \
            tuple(d for i, d in enumerate(value.shape) if i not in axes)
        if isinstance(value, _Centered):
            if mode == "average" and value.squared and axes == [rank - 1] and keepdims:
                return [_Stat("var", value.x, shape)]
            raise UnsupportedModelError(f"{where}: reduces x − mean(x) other than as a layer normalisation does")
        if isinstance(value, _Stat):
            raise UnsupportedModelError(f"{where}: reduces a per-step statistic")
        if axes == [rank - 1] and rank and mode == "average" and keepdims and self._all_features(where, value):
            return [_Stat("mean", value, shape)]
        return [self._pool_time(where, value, axes, keepdims, mode)]

    def _all_features(self, where, value):
        """Whether ``value``'s last axis holds all the features of one step (a reduction there is per step)."""
        try:
            tensor, _, features = self._rows(where, value.ids)
        except UnsupportedModelError:
            return False
        return features.size == tensor.features

    def _op_Sub(self, where, inputs, attrs, n_out):
        x, y = inputs
        if isinstance(y, _Stat) and y.kind == "mean" and not y.sqrt and isinstance(x, _Sym) \
                and np.array_equal(x.ids, y.x.ids):
            return [_Centered(x)]
        self._refuse_pending(where, inputs)
        return super()._op_Sub(where, inputs, attrs, n_out)

    def _op_Pow(self, where, inputs, attrs, n_out):
        x, y = inputs
        if isinstance(x, _Centered) and not x.squared and not isinstance(y, (_Sym,) + _PENDING) \
                and np.all(np.asarray(y) == 2):
            return [_Centered(x.x, squared=True)]
        self._refuse_pending(where, inputs)
        if isinstance(x, _Sym) or isinstance(y, _Sym):
            raise UnsupportedModelError(f"{where}: powers of the model's data are supported only as the variance "
                                        "of a layer normalisation")
        return self._fold(where, inputs, np.power)

    def _op_Mul(self, where, inputs, attrs, n_out):
        x, y = inputs
        if isinstance(x, _Centered) and isinstance(y, _Centered) and not (x.squared or y.squared) \
                and np.array_equal(x.x.ids, y.x.ids):
            return [_Centered(x.x, squared=True)]
        self._refuse_pending(where, inputs)
        return super()._op_Mul(where, inputs, attrs, n_out)

    def _op_Add(self, where, inputs, attrs, n_out):
        stats = [v for v in inputs if isinstance(v, _Stat)]
        others = [v for v in inputs if not isinstance(v, _Stat)]
        if len(stats) == 1 and stats[0].kind == "var" and not stats[0].sqrt and not stats[0].epsilon \
                and not isinstance(others[0], (_Sym,) + _PENDING) and np.size(others[0]) == 1:
            return [dataclasses.replace(stats[0], epsilon=float(np.asarray(others[0]).reshape(())))]
        self._refuse_pending(where, inputs)
        return super()._op_Add(where, inputs, attrs, n_out)

    def _op_Sqrt(self, where, inputs, attrs, n_out):
        value = inputs[0]
        if isinstance(value, _Stat) and value.kind == "var" and not value.sqrt:
            return [dataclasses.replace(value, sqrt=True)]
        self._refuse_pending(where, inputs)
        return super()._op_Sqrt(where, inputs, attrs, n_out)

    def _op_Div(self, where, inputs, attrs, n_out):
        x, y = inputs
        if isinstance(x, _Centered) and not x.squared and isinstance(y, _Stat) and y.kind == "var" and y.sqrt \
                and np.array_equal(x.x.ids, y.x.ids):
            return [self._feature_layer(where, x.x, -1, lambda features: LayerNorm(
                np.ones(features.size), np.zeros(features.size), y.epsilon))]
        if isinstance(x, _Sym) and isinstance(y, _Stat) and y.kind == "l2" and np.array_equal(x.ids, y.x.ids):
            return [self._feature_layer(where, x, -1, lambda features: UnitNorm(y.epsilon))]
        self._refuse_pending(where, inputs)
        return super()._op_Div(where, inputs, attrs, n_out)

    def _refuse_pending(self, where, inputs):
        for value in inputs:
            if isinstance(value, _PENDING):
                raise UnsupportedModelError(
                    f"{where}: uses a partial layer normalisation ({type(value).__name__.strip('_').lower()}) in "
                    "a way grurt does not recognise; it reads ReduceMean, Sub, Pow 2, ReduceMean, Add ε, Sqrt, Div")

    def _move(self, value, fn):
        if isinstance(value, _PENDING):
            raise UnsupportedModelError("reshapes or moves a partial layer normalisation; grurt recognises "
                                        "ReduceMean, Sub, Pow 2, ReduceMean, Add ε, Sqrt, Div")
        return super()._move(value, fn)

    # -- pooling over time --

    def _op_GlobalAveragePool(self, where, inputs, attrs, n_out):
        return [self._pool_time(where, inputs[0], list(range(2, len(inputs[0].shape))), True, "average")]

    def _op_GlobalMaxPool(self, where, inputs, attrs, n_out):
        return [self._pool_time(where, inputs[0], list(range(2, len(inputs[0].shape))), True, "max")]

    def _pool_time(self, where, value, axes, keepdims, mode):
        """A reduction of a sequence over exactly its time axis → ``GlobalPool``."""
        if not isinstance(value, _Sym):
            raise UnsupportedModelError(f"{where}: pools a constant")
        tensor, positions = self._find(where, value.ids)
        if not (self._time_known(tensor) and axes):
            raise UnsupportedModelError(f"{where}: reduces over axes {axes}; grurt reduces over the time axis of "
                                        "a GRU's output sequence or the features of a layer normalisation")
        batch, steps, features = tensor.ids.shape
        b, t, f = np.unravel_index(positions, tensor.ids.shape)
        kept = [i for i in range(len(value.shape)) if i not in axes]
        order = kept + list(axes)
        lines = [c.transpose(order).reshape(-1, int(np.prod([value.shape[i] for i in axes]))) for c in (b, t, f)]
        b, t, f = lines
        if t.shape[1] != steps or not ((b == b[:, :1]).all() and (f == f[:, :1]).all()
                                       and (np.sort(t, axis=1) == np.arange(steps)).all()):
            raise UnsupportedModelError(f"{where}: reduces over axes {axes}, which are not exactly the time axis")
        pairs = b[:, 0] * features + f[:, 0]
        if unique(pairs).size != batch * features or pairs.size != batch * features:
            raise UnsupportedModelError(f"{where}: the axes kept are not the batch and the features")
        out = self._add(GlobalPool(mode), [tensor], (batch, features), False)
        kept_shape = [value.shape[i] for i in kept]
        ids = out.ids.reshape(-1)[pairs].reshape(kept_shape)
        if keepdims:
            ids = ids.reshape([1 if i in axes else value.shape[i] for i in range(len(value.shape))])
        return _Sym(ids)

    # -- Flatten of a sequence --

    def _rows(self, where, ids):
        """As :meth:`_Interpreter._rows`, and a last axis holding all T·F values of each sequence (a
        Flatten or Reshape of (B, T, F) to (B, T·F)) adds a ``Flatten``."""
        try:
            return super()._rows(where, ids)
        except UnsupportedModelError:
            if not ids.ndim:
                raise
            tensor, positions = self._find(where, ids)
            if not self._time_known(tensor):
                raise
            batch, steps, features = tensor.ids.shape
            lines = positions.reshape(-1, ids.shape[-1])
            sequence = lines // (steps * features)
            if not (ids.shape[-1] == steps * features and (sequence == sequence[:, :1]).all()
                    and unique(sequence[:, 0]).size == batch == lines.shape[0]):
                raise
            flat = self._cached(("flatten", tensor.name), lambda: self._add(
                Flatten(steps), [tensor], (batch, steps * features), False, suffix=":flat"))
            return super()._rows(where, flat.ids.reshape(-1)[positions])
