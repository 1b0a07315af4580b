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

``GRU(...)``, ``Dense(...)`` called directly build the canonical layers from canonical arrays
(the classes in :mod:`grurt.spec`); the other canonical layers are re-exported as they are.
"""
from __future__ import annotations

import numpy as np

from . import spec
from .errors import ModelFormatError
from .spec import Activation, LastStep, Merge, Reverse, Scale, activation
from .importers.keras.layers import LearnedState   # noqa: F401 (for custom_layers: a GRU's learned initial state)

__all__ = ["GRU", "Dense", "Activation", "Scale", "Reverse", "LastStep", "Merge", "activation", "LearnedState"]


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
        from .importers.onnx.gru import _gru_activations
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
        f, g = _gru_activations("GRU.from_onnx", attrs, directions)
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
