"""The ops over time → :class:`~grurt.spec.Conv1D`, :class:`~grurt.spec.Pool1D`,
:class:`~grurt.spec.ZeroPad1D`; ``BatchNormalization`` → a per-channel ``Scale`` (folded into
the Conv1D or Dense before it when the chain is finished, see :func:`grurt.spec.append_folded`).

ONNX convolutions and pools read (N, C, T): PyTorch exports wrap them in Transposes from and
to grurt's (B, T, C). Those transposes cost nothing here: the handlers read the arrangement
of the element ids and require the input to be the previous layer's whole sequence with
channels on axis 1 and time on axis 2.

=====================  ===============================================  ====================================
attribute              ONNX                                             grurt
=====================  ===============================================  ====================================
Conv ``W``, ``B``      W (out, in/group, k), B (out,)                   ``Conv1D`` W, b: the same arrays
``pads``               [begin, end] frames, default 0                   ``padding`` (begin, end)
``auto_pad``           NOTSET (use pads), VALID, SAME_UPPER (the odd    (0, 0); with stride 1 ((span−1) // 2,
                       frame at the end), SAME_LOWER (at the start)     rest) or reversed; else same_upper/lower
``group``              groups of input and output channels              ``groups``
``count_include_pad``  AveragePool: default 0 (the pad is not counted)  ``count_include_pad``
``ceil_mode``          pools: 1 adds a last partial window              refused
BatchNormalization     epsilon default 1e-5; ``training_mode`` 1        ``Scale`` (folded); training refused
Pad                    mode constant, value 0, on the time axis only;   ``ZeroPad1D`` (folded into a Conv1D
                       pads an input (opset ≥ 11) or attribute          after it)
=====================  ===============================================  ====================================
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..spec import Conv1D, Pool1D, ZeroPad1D, batchnorm_affine
from .interpreter import _Interpreter, _Sym


class _TooShort(Exception):
    """The probe's time length is shorter than a window: the driver retries with longer probes."""


class _ConvOps(_Interpreter):
    """The handlers of Conv, MaxPool, AveragePool, BatchNormalization and Pad."""

    # -- where the sequence is --

    def _sequence_view(self, where, X, time_axis, channel_axis):
        """(tensor, p): the sequence X reads whole, with X.ids.transpose(p) its (B, T, C) ids; X has time and
        channels on the given axes and the batch on the third."""
        if not isinstance(X, _Sym) or X.ids.ndim != 3:
            raise UnsupportedModelError(f"{where}: expects a 3-D sequence (batch, channels, time) computed from "
                                        "the model's input")
        perm = (3 - time_axis - channel_axis, time_axis, channel_axis)
        canon = X.ids.transpose(perm)
        tensor, rows, features = self._rows(where, canon)
        if not tensor.has_time:
            raise UnsupportedModelError(f"{where}: its input has no time axis (an earlier layer removed it)")
        batch, steps = canon.shape[:2]
        reversed_ = self._time_order(where, tensor, rows.reshape(batch, steps).T.ravel(), steps, batch, "its input")
        if reversed_ or canon.shape != tensor.ids.shape or not np.array_equal(features, np.arange(tensor.features)):
            raise UnsupportedModelError(f"{where}: its input is not the previous layer's whole sequence with "
                                        f"channels on axis {channel_axis} and time on axis {time_axis}")
        return tensor, perm

    def _push_time(self, where, layer, tensor, features):
        """A layer over time; its output tensor (B, T_out, features)."""
        batch, steps = tensor.ids.shape[:2]
        out = layer.output_steps(steps)
        if out < 1:
            raise _TooShort(f"{where}: the input's {steps} frames are fewer than the window of {layer.span} frames")
        return self._add(layer, [tensor], (batch, out, features), True)

    @staticmethod
    def _one(where, attrs, name, default):
        values = attrs.get(name)
        if values is None:
            return default
        if len(values) != 1:
            raise UnsupportedModelError(f"{where}: attribute {name}={list(values)}; grurt runs 1-D (time) "
                                        "convolutions and pools")
        return int(values[0])

    @staticmethod
    def _padding(where, attrs, span, stride):
        auto_pad = attrs["auto_pad"]         # one of NOTSET, VALID, SAME_UPPER, SAME_LOWER (the registry)
        if auto_pad != "NOTSET":
            if any(attrs["pads"] or []):
                raise ModelFormatError(f"{where}: pads given with auto_pad={auto_pad}")
            return (0, 0) if auto_pad == "VALID" else auto_pad.lower()
        pads = list(attrs["pads"] or [0, 0])
        if len(pads) != 2:
            raise UnsupportedModelError(f"{where}: pads={pads}; grurt runs 1-D (time) convolutions and pools")
        if min(pads) < 0:
            raise UnsupportedModelError(f"{where}: negative pads={pads} (cropping) are not supported")
        return tuple(pads)

    # -- operators --

    def _op_Conv(self, where, inputs, attrs, n_out):
        X, W, B = (list(inputs) + [None] * 3)[:3]
        W = np.asarray(self._const(where, W, "W"), np.float64)
        if W.ndim != 3:
            raise UnsupportedModelError(f"{where}: weight of shape {W.shape}; grurt runs 1-D convolutions over time")
        k = self._one(where, attrs, "kernel_shape", W.shape[2])
        if k != W.shape[2]:
            raise ModelFormatError(f"{where}: kernel_shape [{k}] does not match W of shape {W.shape}")
        stride, dilation = self._one(where, attrs, "strides", 1), self._one(where, attrs, "dilations", 1)
        bias = np.zeros(W.shape[0]) if B is None else np.asarray(self._const(where, B, "B"), np.float64)
        tensor, perm = self._sequence_view(where, X, 2, 1)
        layer = Conv1D(W=W, b=bias, stride=stride, dilation=dilation, groups=attrs["group"],
                       padding=self._padding(where, attrs, (k - 1) * dilation + 1, stride))
        if layer.in_channels != tensor.features:
            raise ModelFormatError(f"{where}: W takes {layer.in_channels} input channels, X has {tensor.features}")
        out = self._push_time(where, layer, tensor, layer.out_channels)
        return [_Sym(out.ids.transpose(np.argsort(perm)))]

    def _pool(self, where, inputs, attrs, n_out, mode):
        if n_out > 1:
            raise UnsupportedModelError(f"{where}: the Indices output is not supported")
        if attrs["ceil_mode"]:
            raise UnsupportedModelError(f"{where}: ceil_mode=1 is not supported")
        if self._one(where, attrs, "dilations", 1) != 1:
            raise UnsupportedModelError(f"{where}: dilated pooling is not supported")
        if attrs["kernel_shape"] is None:
            raise ModelFormatError(f"{where}: kernel_shape is required")
        size = self._one(where, attrs, "kernel_shape", None)
        stride = self._one(where, attrs, "strides", 1)
        tensor, perm = self._sequence_view(where, inputs[0], 2, 1)
        layer = Pool1D(mode, size, stride, self._padding(where, attrs, size, stride),
                       count_include_pad=bool(attrs.get("count_include_pad")))
        out = self._push_time(where, layer, tensor, tensor.features)
        return [_Sym(out.ids.transpose(np.argsort(perm)))]

    def _op_MaxPool(self, where, inputs, attrs, n_out):
        return self._pool(where, inputs, attrs, n_out, "max")

    def _op_AveragePool(self, where, inputs, attrs, n_out):
        return self._pool(where, inputs, attrs, n_out, "average")

    def _op_BatchNormalization(self, where, inputs, attrs, n_out):
        if n_out > 1 or attrs["training_mode"]:
            raise UnsupportedModelError(f"{where}: training-mode batch normalization is not supported")
        X = inputs[0]
        gamma, beta, mean, var = (np.asarray(self._const(where, v, name), np.float64)
                                  for v, name in zip(inputs[1:5], ("scale", "B", "mean", "var")))
        if not isinstance(X, _Sym):
            raise UnsupportedModelError(f"{where}: batch normalization of a constant")
        if X.ids.ndim < 2:
            raise UnsupportedModelError(f"{where}: expects channels on axis 1, got shape {X.shape}")
        a, c = batchnorm_affine(mean, var, attrs["epsilon"], gamma, beta)
        shape = (1, -1) + (1,) * (X.ids.ndim - 2)
        return [self._scale_op(where, X, a.reshape(shape), c.reshape(shape))]

    def _op_Pad(self, where, inputs, attrs, n_out):
        X = inputs[0]
        pads = self._attr_or_input(where, attrs, "pads", inputs, 1) or []
        value = self._const(where, inputs[2] if len(inputs) > 2 else None, "constant_value")
        value = attrs["value"] if value is None else float(np.asarray(value).reshape(-1)[0])
        axes = self._ints(where, inputs[3] if len(inputs) > 3 else None, "axes")
        mode = attrs["mode"]
        rank = len(X.shape)
        if axes is not None:       # opset 18: pads for the listed axes only
            full = [0] * (2 * rank)
            for i, axis in enumerate(axes):
                full[axis % rank], full[rank + axis % rank] = pads[i], pads[len(axes) + i]
            pads = full
        if len(pads) != 2 * rank:
            raise ModelFormatError(f"{where}: pads={pads} does not fit an input of rank {rank}")
        if not isinstance(X, _Sym):
            if mode != "constant":
                raise UnsupportedModelError(f"{where}: mode={mode!r} on a constant")
            self._check_constant(where, [max(d + a + b, 0) for d, a, b in zip(np.shape(X), pads[:rank], pads[rank:])])
            return [np.pad(np.asarray(X), list(zip(pads[:rank], pads[rank:])), constant_values=value)]
        padded = [axis for axis in range(rank) if pads[axis] or pads[rank + axis]]
        if not padded:
            return [X]
        if mode != "constant" or value != 0.0:
            raise UnsupportedModelError(f"{where}: only zero padding (mode constant, value 0) is supported, got "
                                        f"mode={mode!r} value={value}")
        if rank != 3 or len(padded) != 1 or padded[0] == 0:
            raise UnsupportedModelError(f"{where}: pads={pads}; grurt pads the time axis of a (batch, channels, "
                                        "time) or (batch, time, channels) sequence only")
        time_axis = padded[0]
        left, right = pads[time_axis], pads[rank + time_axis]
        if left < 0 or right < 0:
            raise UnsupportedModelError(f"{where}: negative pads={pads} (cropping) are not supported")
        tensor, perm = self._sequence_view(where, X, time_axis, 3 - time_axis)
        out = self._push_time(where, ZeroPad1D(left, right), tensor, tensor.features)
        return [_Sym(out.ids.transpose(np.argsort(perm)))]
