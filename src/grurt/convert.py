"""Framework conventions → the canonical (ONNX) GRU layout. The one place that knows them.

PyTorch ``nn.GRU`` stores gates in the order r, z, n with two bias vectors and always
resets after the recurrent product (``linear_before_reset = 1``). Keras (2 and 3) keeps
z, r, h but transposes its kernels and chooses the reset position with ``reset_after``.
Fitted scikit-learn scalers become ``Scale`` layers.
"""
from __future__ import annotations

import numpy as np

from .errors import ModelFormatError, UnsupportedModelError
from .spec import ActivationFunction, ModelSpec, Scale, activation


def reorder_rzn_to_zrh(a: np.ndarray) -> np.ndarray:
    """Swap the first two gate blocks of a (3H, ...) array: PyTorch's r, z, n → z, r, h."""
    r, z, n = np.split(np.asarray(a), 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def torch_gru_direction(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One direction of a PyTorch GRU → (W [3H, I], R [3H, H], B [6H]) in ONNX order."""
    W = reorder_rzn_to_zrh(weight_ih)
    R = reorder_rzn_to_zrh(weight_hh)
    hidden3 = W.shape[0]
    Wb = np.zeros(hidden3, np.float32) if bias_ih is None else reorder_rzn_to_zrh(bias_ih)
    Rb = np.zeros(hidden3, np.float32) if bias_hh is None else reorder_rzn_to_zrh(bias_hh)
    return W, R, np.concatenate([Wb, Rb])


def keras_gru_direction(kernel, recurrent_kernel, bias=None, reset_after=True):
    """One direction of a Keras GRU → (W [3H, I], R [3H, H], B [6H]) in ONNX order.

    Keras already orders the gates z, r, h but stores kernels transposed, (I, 3H) and
    (H, 3H). With ``reset_after`` the bias is (2, 3H), input then recurrent (ONNX
    ``linear_before_reset = 1``); without it a single (3H,) input bias, so ``Rb = 0``.
    """
    W = np.asarray(kernel).T
    R = np.asarray(recurrent_kernel).T
    hidden3 = W.shape[0]
    if bias is None:
        return W, R, np.zeros(2 * hidden3, np.float32)
    bias = np.asarray(bias)
    B = bias.reshape(-1) if reset_after else np.concatenate([bias, np.zeros(hidden3, bias.dtype)])
    return W, R, B


# Keras activation names grurt computes, with their Keras arguments where grurt's default differs
_KERAS_ACTIVATIONS = {"linear": (), "sigmoid": (), "tanh": (), "relu": (), "softsign": (), "softplus": (),
                      "softmax": (), "elu": (), "leaky_relu": (0.2,)}


def keras_activation(name, keras_major: int) -> ActivationFunction:
    """A Keras activation name → ActivationFunction. ``hard_sigmoid`` changed formula in Keras 3:
    clip(x/6 + 0.5, 0, 1), where Keras 2 computes clip(0.2·x + 0.5, 0, 1)."""
    if name == "hard_sigmoid":
        return activation("hard_sigmoid", 1 / 6 if keras_major >= 3 else 0.2, 0.5)
    if name is None:
        return activation("linear")
    if isinstance(name, str) and name in _KERAS_ACTIVATIONS:
        return activation(name, *_KERAS_ACTIVATIONS[name])
    raise UnsupportedModelError(f"unsupported Keras activation {name!r}; grurt computes "
                                f"{', '.join(_KERAS_ACTIVATIONS)} and hard_sigmoid")


def batchnorm_affine(mean, variance, epsilon, gamma=None, beta=None):
    """Inference-time batch normalisation ``(x − mean)/√(var + ε)·γ + β`` as ``x·a + c``."""
    a = 1.0 / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    if gamma is not None:
        a = a * gamma
    c = -np.asarray(mean, np.float64) * a
    return a, c if beta is None else c + beta


# ---- fitted scikit-learn scalers, read through their attributes (no sklearn import) ----

def scaler_affine(scaler, inverse: bool = False):
    """A fitted MinMaxScaler or StandardScaler as ``x·a + c``: its ``transform``, or
    ``inverse_transform`` when ``inverse``. Returns float64 arrays (a, c)."""
    kinds = {cls.__name__ for cls in type(scaler).__mro__}
    if not {"MinMaxScaler", "StandardScaler"} & kinds:
        raise UnsupportedModelError(
            f"unsupported scaler {type(scaler).__name__}; grurt folds MinMaxScaler and StandardScaler")
    if not hasattr(scaler, "n_features_in_"):
        raise ModelFormatError(f"{type(scaler).__name__} is not fitted")
    n = scaler.n_features_in_
    if "MinMaxScaler" in kinds:
        if getattr(scaler, "clip", False):
            raise UnsupportedModelError("MinMaxScaler(clip=True) cannot be folded into a linear layer")
        a, c = np.asarray(scaler.scale_, np.float64), np.asarray(scaler.min_, np.float64)   # x·scale_ + min_
    else:
        # (x − mean_) / scale_; mean_ is set but unused when with_mean is off
        scale = np.asarray(scaler.scale_, np.float64) if scaler.with_std else np.ones(n)
        mean = np.asarray(scaler.mean_, np.float64) if scaler.with_mean else np.zeros(n)
        a, c = 1.0 / scale, -mean / scale
    return (1.0 / a, -c / a) if inverse else (a, c)


def with_scalers(spec: ModelSpec, input_scaler=None, output_scaler=None) -> ModelSpec:
    """Fold scalers into ``spec``: raw input → scaled at the front, scaled → real units at the end."""
    layers = list(spec.layers)
    if input_scaler is not None:
        if spec.mask_value is not None:  # the mask compares scaled values, the input would be raw
            raise UnsupportedModelError("input_scaler cannot be folded into a model with Masking")
        a, c = scaler_affine(input_scaler)
        if a.shape != (spec.input_size,):
            raise ModelFormatError(f"input_scaler was fitted on {a.size} features, "
                                   f"the model takes {spec.input_size}")
        layers.insert(0, Scale(a, c))
    if output_scaler is not None:
        a, c = scaler_affine(output_scaler, inverse=True)
        if a.shape != (spec.output_size,):
            raise ModelFormatError(f"output_scaler was fitted on {a.size} features, "
                                   f"the model outputs {spec.output_size}")
        layers.append(Scale(a, c))
    return ModelSpec(spec.input_size, tuple(layers), mask_value=spec.mask_value)
