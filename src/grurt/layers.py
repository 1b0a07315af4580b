"""Layer builders: any weight dump becomes a model in a few lines.

Each builder takes one framework's arrays, in that framework's layout, and returns a canonical
:mod:`grurt.spec` layer; :meth:`grurt.Model.chain` makes a Model of a list of them::

    import grurt
    from grurt.layers import GRU, Dense, LastStep
    model = grurt.Model.chain([GRU.from_torch(w_ih, w_hh, b_ih, b_hh), LastStep(),
                               Dense.from_torch(fc_w, fc_b)])

The conventions (gate order, transposes, bias layout, activation formulas) are those of the
importers, :mod:`grurt.importers.torch`, :mod:`grurt.importers.keras` and
:mod:`grurt.importers.onnx`, which these builders call: nothing is re-implemented here.

``GRU(...)``, ``Dense(...)``, ``Embedding(...)``, ``Conv1D(...)``, ``Pool1D(...)``, ``LayerNorm(...)`` and
``UnitNorm(...)`` called directly build the canonical layers from canonical arrays (the classes in :mod:`grurt.spec`);
``BatchNorm.from_torch`` / ``.from_keras`` give the ``Scale`` a BatchNorm computes at inference; the
other canonical layers, whose layout every framework shares, are re-exported as they are. Every
layer a model can hold is here: no user needs :mod:`grurt.spec`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import spec
from .errors import GrurtError, ModelFormatError
from .spec import Activation, Flatten, GlobalPool, LastStep, Merge, Reverse, Scale, ZeroPad1D, activation
from .importers.keras.layers import LearnedState   # noqa: F401 (for custom_layers: a GRU's learned initial state)

__all__ = ["GRU", "Dense", "Conv1D", "Pool1D", "LayerNorm", "UnitNorm", "BatchNorm", "Embedding", "Activation",
           "Scale", "ZeroPad1D", "Flatten", "GlobalPool", "Reverse", "LastStep", "Merge", "activation", "LearnedState"]


def _activation(value, default="linear", keras_major=None):
    if value is None:
        value = default
    if isinstance(value, spec.ActivationFunction):
        return value
    if keras_major is not None:
        from .importers.keras import keras_activation
        return keras_activation(value, keras_major)
    if isinstance(value, str):
        return activation(value)
    raise ModelFormatError(f"expected an activation name or grurt.spec.activation(...), got {value!r}")


def _array(value, name):
    try:
        return np.asarray(value.detach().cpu().float().numpy() if hasattr(value, "detach") else value, np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{name} is not an array of numbers ({exc})") from None


class GRU:
    """Builders of :class:`grurt.spec.GRU` layers; ``GRU(W, R, B, ...)`` is ``grurt.spec.GRU(...)``."""

    def __new__(cls, *args, **kwargs):
        return spec.GRU(*args, **kwargs)

    @staticmethod
    def from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=None,
                   return_sequences: bool = True, initial_state=None) -> spec.GRU:
        """One layer of ``nn.GRU`` (``weight_ih_l{k}`` (3H, I), ``weight_hh_l{k}`` (3H, H), the two
        (3H,) biases, gates r, z, n) or an ``nn.GRUCell``.

        ``reverse``: the ``_reverse`` parameters ``(weight_ih, weight_hh, bias_ih, bias_hh)`` of a
        bidirectional layer. The layer returns its output sequence (``return_sequences=False``:
        its final state, like ``h_n[-1]``). ``initial_state``: a learned h0 every sequence starts
        from, one (H,) per direction ((D, H), or torch's (D, 1, H) layout; ``initial_state=`` at run
        time replaces it).
        """
        from .importers.torch import torch_gru_direction
        parts = [(weight_ih, weight_hh, bias_ih, bias_hh)]
        if reverse is not None:
            reverse = tuple(reverse) + (None,) * (4 - len(tuple(reverse)))
            parts.append(reverse[:4])
        directions = [torch_gru_direction(*(None if a is None else _array(a, n) for a, n in
                                            zip(p, ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))))
                      for p in parts]
        W, R, B = (_stack(arrays) for arrays in zip(*directions))
        return spec.GRU(W, R, B, direction="bidirectional" if reverse is not None else "forward",
                        linear_before_reset=True, return_sequences=return_sequences,
                        initial_state=_learned_state(initial_state, len(directions)))

    @staticmethod
    def from_keras(kernel, recurrent_kernel, bias=None, reset_after: bool = True, activation="tanh",
                   recurrent_activation="sigmoid", backward=None, return_sequences: bool = True,
                   keras_version: int = 3, initial_state=None) -> spec.GRU:
        """A Keras ``GRU`` layer from ``layer.get_weights()``: ``kernel`` (I, 3H), ``recurrent_kernel``
        (H, 3H), ``bias`` ((2, 3H) with ``reset_after``, else (3H,)), gates z, r, h.

        ``backward``: the backward layer's ``(kernel, recurrent_kernel, bias)`` of a ``Bidirectional``
        (merge_mode concat; add ``Merge(mode)`` after it for sum/ave/mul). Activations are Keras
        names; ``keras_version=2`` computes ``hard_sigmoid`` as Keras 2 did (0.2·x + 0.5).
        ``initial_state``: a learned state each sequence starts from, (units,) per direction ((D, units)).
        """
        from .importers.keras import keras_gru_direction
        parts = [(kernel, recurrent_kernel, bias)] + ([tuple(backward) + (None,) * (3 - len(backward))]
                                                      if backward is not None else [])
        directions = []
        for k, rk, b in parts:
            k, rk = _array(k, "kernel"), _array(rk, "recurrent_kernel")
            if k.ndim != 2 or rk.ndim != 2:
                raise ModelFormatError(f"kernel and recurrent_kernel must be 2-D, got {k.shape} and {rk.shape}")
            b = None if b is None else _array(b, "bias")
            if b is not None and b.shape != ((2, k.shape[1]) if reset_after else (k.shape[1],)):
                raise ModelFormatError(f"bias has shape {b.shape}, expected "
                                       f"{(2, k.shape[1]) if reset_after else (k.shape[1],)} with reset_after={reset_after}")
            directions.append(keras_gru_direction(k, rk, b, reset_after))
        W, R, B = (_stack(arrays) for arrays in zip(*directions))
        return spec.GRU(W, R, B, direction="bidirectional" if backward is not None else "forward",
                        linear_before_reset=bool(reset_after),
                        gate_activation=_activation(recurrent_activation, keras_major=keras_version),
                        candidate_activation=_activation(activation, keras_major=keras_version),
                        return_sequences=return_sequences,
                        initial_state=_learned_state(initial_state, len(directions)))

    @staticmethod
    def from_onnx(W, R, B=None, linear_before_reset: int = 0, direction: str = "forward", activations=None,
                  activation_alpha=None, activation_beta=None, clip=None, return_sequences: bool = True) -> spec.GRU:
        """The ONNX ``GRU`` operator's inputs and attributes: ``W`` (D, 3H, I), ``R`` (D, 3H, H), ``B``
        (D, 6H) (zeros when absent), gates z, r, h; ``activations`` as in ONNX (``["Sigmoid", "Tanh"]``
        per direction). 2-D ``W``/``R`` and 1-D ``B`` are taken as one direction.
        """
        from .ops.recurrent import gru_activations
        W, R = _array(W, "W"), _array(R, "R")
        W, R = (W[None] if W.ndim == 2 else W), (R[None] if R.ndim == 2 else R)
        if W.ndim != 3 or R.ndim != 3:
            raise ModelFormatError(f"W and R must be (D, 3H, I) and (D, 3H, H), got {W.shape} and {R.shape}")
        directions = 2 if direction == "bidirectional" else 1
        B = np.zeros((directions, 2 * R.shape[1])) if B is None else _array(B, "B")
        B = B[None] if B.ndim == 1 else B
        if linear_before_reset not in (0, 1, True, False):
            raise ModelFormatError(f"linear_before_reset must be 0 or 1, got {linear_before_reset!r}")
        attrs = {key: value for key, value in (("activations", activations), ("activation_alpha", activation_alpha),
                                               ("activation_beta", activation_beta)) if value is not None}
        f, g = gru_activations("GRU.from_onnx", attrs, directions)
        return spec.GRU(W, R, B, direction=direction, linear_before_reset=bool(linear_before_reset),
                        gate_activation=f, candidate_activation=g, clip=clip, return_sequences=return_sequences)


class Dense:
    """Builders of :class:`grurt.spec.Dense` layers; ``Dense(W, b, activation)`` is ``grurt.spec.Dense(...)``."""

    def __new__(cls, *args, **kwargs):
        return spec.Dense(*args, **kwargs)

    @staticmethod
    def from_torch(weight, bias=None, activation=None) -> spec.Dense:
        """``nn.Linear``: ``weight`` (out, in), ``bias`` (out,) or None; ``activation`` a grurt name
        (``"sigmoid"``, ``"softmax"``, ...) or ``grurt.spec.activation(...)``, applied after it."""
        weight = _array(weight, "weight")
        if weight.ndim != 2:
            raise ModelFormatError(f"weight must be 2-D (out, in), got shape {weight.shape}")
        bias = np.zeros(weight.shape[0]) if bias is None else _array(bias, "bias")
        return spec.Dense(weight, bias, _activation(activation))

    @staticmethod
    def from_keras(kernel, bias=None, activation=None, keras_version: int = 3) -> spec.Dense:
        """Keras ``Dense``: ``kernel`` (in, out), ``bias`` (out,) or None; ``activation`` a Keras name."""
        from .importers.keras import keras_dense
        kernel = _array(kernel, "kernel")
        if kernel.ndim != 2:
            raise ModelFormatError(f"kernel must be 2-D (in, out), got shape {kernel.shape}")
        W, b = keras_dense(kernel, None if bias is None else _array(bias, "bias"))
        return spec.Dense(W, b, _activation(activation, keras_major=keras_version))


def _keras_layer(translate, builder: str, kind: str, config: dict, weights: list, features: int,
                 keras_version) -> object:
    """One layer translated by the Keras importer from the config and weights a Keras layer of ``kind``
    would have; its errors name the builder."""
    from .importers.keras.layers import _Layer
    layer = _Layer(kind, builder, config, weights, int(str(keras_version).partition(".")[0]), features,
                   has_time=True, keras_version=str(keras_version))
    try:
        (result,) = translate(layer)
    except GrurtError as exc:
        raise type(exc)(f"{builder}.from_keras: {exc}") from None
    return result


class Embedding:
    """Builders of :class:`grurt.spec.Embedding` layers (token ids → rows of a table; first layer only:
    the model then takes integer ids); ``Embedding(table)`` is ``grurt.spec.Embedding(table)``."""

    def __new__(cls, *args, **kwargs):
        return spec.Embedding(*args, **kwargs)

    @staticmethod
    def from_torch(weight) -> spec.Embedding:
        """``nn.Embedding``: ``weight`` (num_embeddings, embedding_dim), a tensor or an array."""
        return spec.Embedding(_array(weight, "weight"))

    @staticmethod
    def from_keras(embeddings) -> spec.Embedding:
        """Keras ``Embedding``: ``embeddings`` (input_dim, output_dim); for ``mask_zero=True`` pass
        ``mask_value=0`` to ``Model.chain``."""
        return spec.Embedding(_array(embeddings, "embeddings"))


class Conv1D:
    """Builders of :class:`grurt.spec.Conv1D` layers (a convolution over time, on (B, T, C));
    ``Conv1D(W, b, stride, dilation, groups, padding, activation)`` is ``grurt.spec.Conv1D(...)``."""

    def __new__(cls, *args, **kwargs):
        return spec.Conv1D(*args, **kwargs)

    @staticmethod
    def from_torch(weight, bias=None, stride: int = 1, padding=0, dilation: int = 1, groups: int = 1,
                   activation=None) -> spec.Conv1D:
        """``nn.Conv1d``: ``weight`` (out, in/groups, k), ``bias`` (out,) or None; ``padding`` as torch takes it
        (an int p: p frames on both sides, ``"same"``, ``"valid"``), or ``"causal"`` ((k−1)·dilation frames on
        the left: the layer then streams) or ``(left, right)``; ``activation`` a grurt name, applied after it.
        Applied to grurt's (B, T, C) sequence: the transposes to and from torch's (B, C, T) are implied."""
        from .importers.state_dict import _conv1d
        params = {"weight": _array(weight, "weight")}
        if bias is not None:
            params["bias"] = _array(bias, "bias")
        options = {"padding": padding, "stride": stride, "dilation": dilation, "groups": groups}
        layer = _conv1d("Conv1D.from_torch", "", params, options, None)[0]
        return layer if activation is None else dataclasses.replace(layer, activation=_activation(activation))

    @staticmethod
    def from_keras(kernel, bias=None, strides: int = 1, padding: str = "valid", dilation_rate: int = 1,
                   groups: int = 1, activation=None, keras_version: int = 3) -> spec.Conv1D:
        """Keras ``Conv1D``: ``kernel`` (k, in/groups, filters), ``bias`` (filters,) or None; ``padding``
        ``"valid"``, ``"same"`` (TensorFlow's rule: the odd frame at the end) or ``"causal"``; ``activation`` a
        Keras name."""
        kernel = _array(kernel, "kernel")
        if kernel.ndim != 3:
            raise ModelFormatError(f"Conv1D.from_keras: kernel must be 3-D (k, in/groups, filters), "
                                   f"got {kernel.shape}")
        k, per_group, filters = kernel.shape
        config = {"filters": filters, "kernel_size": k, "strides": strides, "dilation_rate": dilation_rate,
                  "groups": groups, "padding": padding, "use_bias": bias is not None}
        from .importers.keras.layers import _conv1d
        weights = [kernel] + ([_array(bias, "bias")] if bias is not None else [])
        layer = _keras_layer(_conv1d, "Conv1D", "Conv1D", config, weights,
                             per_group * (groups if isinstance(groups, int) else 1), keras_version)
        return dataclasses.replace(layer, activation=_activation(activation, keras_major=keras_version))


class Pool1D:
    """Builders of :class:`grurt.spec.Pool1D` layers (max or average pooling over time);
    ``Pool1D(mode, size, stride, padding, count_include_pad)`` is ``grurt.spec.Pool1D(...)``."""

    def __new__(cls, *args, **kwargs):
        return spec.Pool1D(*args, **kwargs)

    @staticmethod
    def from_torch(mode: str, kernel_size: int, stride=None, padding: int = 0,
                   count_include_pad: bool = True) -> spec.Pool1D:
        """``nn.MaxPool1d`` (``mode="max"``) or ``nn.AvgPool1d`` (``mode="average"``): ``stride`` None is
        ``kernel_size``, ``padding`` frames on both sides; an average counts the padding unless
        ``count_include_pad=False`` (torch's default counts it)."""
        return spec.Pool1D(mode, kernel_size, kernel_size if stride is None else stride, (padding, padding),
                           count_include_pad=mode == "average" and count_include_pad)

    @staticmethod
    def from_keras(mode: str, pool_size: int = 2, strides=None, padding: str = "valid",
                   keras_version: int = 3) -> spec.Pool1D:
        """Keras ``MaxPooling1D`` (``mode="max"``) or ``AveragePooling1D`` (``mode="average"``): ``strides``
        None is ``pool_size``; ``padding`` ``"valid"`` or ``"same"``; an average excludes the padding."""
        if mode not in spec.POOL_MODES:
            raise ModelFormatError(f"Pool1D.from_keras: mode must be one of {spec.POOL_MODES}, got {mode!r}")
        from .importers.keras.layers import _pooling1d
        kind = "MaxPooling1D" if mode == "max" else "AveragePooling1D"
        config = {"pool_size": pool_size, "strides": strides, "padding": padding}
        return _keras_layer(_pooling1d, "Pool1D", kind, config, [], 1, keras_version)


class LayerNorm:
    """Builders of :class:`grurt.spec.LayerNorm` layers (over the features of each step);
    ``LayerNorm(gamma, beta, epsilon)`` is ``grurt.spec.LayerNorm(...)``."""

    def __new__(cls, *args, **kwargs):
        return spec.LayerNorm(*args, **kwargs)

    @staticmethod
    def from_torch(weight, bias=None, eps: float = 1e-5) -> spec.LayerNorm:
        """``nn.LayerNorm(n)``: ``weight`` (n,), ``bias`` (n,) or None (``bias=False``); torch's eps 1e-5
        unless the module was built with another."""
        from .importers.state_dict import _layer_norm
        params = {"weight": _array(weight, "weight")}
        if bias is not None:
            params["bias"] = _array(bias, "bias")
        return _layer_norm("LayerNorm.from_torch", "", params, None, eps)[0]

    @staticmethod
    def from_keras(gamma, beta=None, epsilon: float = 1e-3) -> spec.LayerNorm:
        """Keras ``LayerNormalization``: ``gamma`` (n,), ``beta`` (n,) or None (``center=False``); Keras's
        epsilon 1e-3 unless the layer says otherwise."""
        from .importers.keras.layers import _layer_normalization
        gamma = _array(gamma, "gamma")
        weights = [gamma] + ([_array(beta, "beta")] if beta is not None else [])
        config = {"epsilon": epsilon, "center": beta is not None}
        return _keras_layer(_layer_normalization, "LayerNorm", "LayerNormalization", config, weights,
                            gamma.shape[0] if gamma.ndim == 1 else -1, 3)


class UnitNorm:
    """Builders of :class:`grurt.spec.UnitNorm` layers (``x / max(‖x‖₂, epsilon)`` over each step's
    features); ``UnitNorm(epsilon)`` is ``grurt.spec.UnitNorm(...)``."""

    def __new__(cls, *args, **kwargs):
        return spec.UnitNorm(*args, **kwargs)

    @staticmethod
    def from_torch(eps: float = 1e-12) -> spec.UnitNorm:
        """``F.normalize(x, dim=-1, eps=eps)``."""
        return spec.UnitNorm(eps)

    @staticmethod
    def from_keras(keras_version="3.6") -> spec.UnitNorm:
        """Keras ``UnitNormalization``, whose epsilon moved in Keras 3.6 (``keras_version`` "3.5" or 2: the
        older formula); docs/keras.md, Normalisation epsilons."""
        from .importers.keras.layers import _unit_normalization
        return _keras_layer(_unit_normalization, "UnitNorm", "UnitNormalization", {}, [], 1, keras_version)


class BatchNorm:
    """Builders of the :class:`grurt.spec.Scale` an inference-time BatchNorm is, per channel:
    ``(x − mean)/√(var + eps)·gamma + beta`` = ``x·a + c``. ``Model.chain`` runs it as its own layer;
    the importers fold it into the Conv1D or Dense before it."""

    @staticmethod
    def from_torch(running_mean, running_var, weight=None, bias=None, eps: float = 1e-5) -> spec.Scale:
        """``nn.BatchNorm1d`` in eval mode: ``running_mean``, ``running_var`` (n,), ``weight``/``bias`` (n,) or
        None (``affine=False``); torch's eps 1e-5 unless the module was built with another."""
        from .importers.state_dict import _batch_norm
        params = {"running_mean": _array(running_mean, "running_mean"),
                  "running_var": _array(running_var, "running_var")}
        params.update({name: _array(value, name) for name, value in (("weight", weight), ("bias", bias))
                       if value is not None})
        return _batch_norm("BatchNorm.from_torch", "", params, None, eps)[0]

    @staticmethod
    def from_keras(gamma, beta, moving_mean, moving_variance, epsilon: float = 1e-3) -> spec.Scale:
        """Keras ``BatchNormalization``: ``gamma``, ``beta`` (n,) or None (``scale=False`` / ``center=False``),
        ``moving_mean``, ``moving_variance`` (n,); Keras's epsilon 1e-3 unless the layer says otherwise."""
        from .importers.keras.layers import _batch_normalization
        mean = _array(moving_mean, "moving_mean")
        weights = [_array(a, n) for a, n in ((gamma, "gamma"), (beta, "beta")) if a is not None]
        weights += [mean, _array(moving_variance, "moving_variance")]
        config = {"epsilon": epsilon, "scale": gamma is not None, "center": beta is not None}
        return _keras_layer(_batch_normalization, "BatchNorm", "BatchNormalization", config, weights,
                            mean.shape[0] if mean.ndim == 1 else -1, 3)


def _stack(arrays):
    try:
        return np.stack(arrays)
    except ValueError as exc:
        raise ModelFormatError(f"the two directions' weights differ in shape ({exc})") from None


def _learned_state(value, directions: int):
    """A builder's ``initial_state``: None, or any array of directions × H values as (directions, H)."""
    if value is None:
        return None
    value = _array(value, "initial_state")
    if value.ndim == 0 or value.size % directions or value.shape[0] not in (directions, value.size):
        raise ModelFormatError(f"initial_state has shape {value.shape}; expected (H,) per direction: "
                               f"({directions}, H) or ({directions}, 1, H)")
    return value.reshape(directions, -1)
