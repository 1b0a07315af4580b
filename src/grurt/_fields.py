"""The fields every layer shares: activation functions, and the checks of weight arrays and counts.

Imported by :mod:`grurt.spec` (which re-exports the public names) and :mod:`grurt.timelayers`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import limits
from .errors import ModelFormatError, UnsupportedModelError
from .limits import MAX_ACTIVATION_PARAMETER, bounded_float, bounded_int, shown


# name -> default (alpha, beta); None means the parameter is not used by that function.
ACTIVATION_DEFAULTS = {
    "sigmoid": (None, None),
    "tanh": (None, None),
    "relu": (None, None),
    "softsign": (None, None),
    "softplus": (None, None),
    "hard_sigmoid": (0.2, 0.5),        # clip(alpha*x + beta, 0, 1)
    "leaky_relu": (0.01, None),        # x if x >= 0 else alpha*x
    "elu": (1.0, None),                # x if x >= 0 else alpha*(exp(x) - 1)
    "affine": (1.0, 0.0),              # alpha*x + beta
    "scaled_tanh": (1.0, 1.0),         # alpha*tanh(beta*x)
    "thresholded_relu": (1.0, None),   # x if x > alpha else 0
    "linear": (None, None),            # identity (Dense and Activation layers only)
    "softmax": (None, None),           # over the feature axis (Dense and Activation layers only)
    "gelu": (None, None),              # x·Φ(x) = x/2·(1 + erf(x/√2)) (exact, not the tanh approximation)
    "silu": (None, None),              # x·sigmoid(x) (swish)
    "mish": (None, None),              # x·tanh(softplus(x))
    "selu": (1.6732632423543772, 1.0507009873554805),   # beta·(x if x > 0 else alpha·(exp(x) - 1))
    "hard_silu": (None, None),         # x·min(max(x + 3, 0), 6)/6 (hard swish)
    "clip": (0.0, 6.0),                # min(max(x, alpha), beta): relu6, hard_tanh (-1, 1), ReLU(max_value)
}
#: Functions that are not elementwise or are meaningless as GRU gate/candidate activations.
LAYER_ONLY_ACTIVATIONS = ("linear", "softmax")


@dataclass(frozen=True)
class ActivationFunction:
    """An elementwise function (or softmax) with its ``alpha``/``beta`` (see ACTIVATION_DEFAULTS)."""

    kind: str
    alpha: Optional[float] = None
    beta: Optional[float] = None

    def __post_init__(self):
        if self.kind not in ACTIVATION_DEFAULTS:
            raise UnsupportedModelError(
                f"unsupported activation {self.kind!r}; supported: {', '.join(ACTIVATION_DEFAULTS)}")
        default_alpha, default_beta = ACTIVATION_DEFAULTS[self.kind]
        for name, value, default in (("alpha", self.alpha, default_alpha), ("beta", self.beta, default_beta)):
            if default is None:
                if value is not None:
                    raise ModelFormatError(f"activation {self.kind!r} takes no {name} (got {value!r})")
                continue
            value = default if value is None else value
            value = bounded_float(f"activation {self.kind!r}", name, value, -MAX_ACTIVATION_PARAMETER,
                                  MAX_ACTIVATION_PARAMETER, "MAX_ACTIVATION_PARAMETER")
            object.__setattr__(self, name, float(np.float32(value)))
        if self.kind == "clip" and not self.alpha <= self.beta:
            raise ModelFormatError(f"activation 'clip': alpha (the lower bound, {self.alpha:g}) must not exceed "
                                   f"beta (the upper bound, {self.beta:g})")

    def describe(self) -> str:
        params = [f"{n}={v:g}" for n, v in (("alpha", self.alpha), ("beta", self.beta)) if v is not None]
        return f"{self.kind}({', '.join(params)})" if params else self.kind


def activation(kind: str, alpha: Optional[float] = None, beta: Optional[float] = None) -> ActivationFunction:
    """Shorthand for :class:`ActivationFunction`; unset alpha/beta take the defaults in ACTIVATION_DEFAULTS."""
    return ActivationFunction(kind, alpha, beta)


SIGMOID = activation("sigmoid")
TANH = activation("tanh")
LINEAR = activation("linear")


def _weights(owner: str, name: str, value, shape: Tuple[int, ...]) -> np.ndarray:
    """Return ``value`` as a read-only, C-contiguous float32 array of exactly ``shape``."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        raise ModelFormatError(f"{owner}: {name} is an object array, expected float32 numbers")
    try:
        array = np.array(value, dtype=np.float32, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{owner}: {name} is not numeric ({exc})") from None
    if array.shape != tuple(shape):
        raise ModelFormatError(f"{owner}: {name} has shape {array.shape}, expected {tuple(shape)}")
    if not np.isfinite(array).all():
        raise ModelFormatError(f"{owner}: {name} contains NaN or infinity")
    array.setflags(write=False)
    return array


def _positive_int(owner: str, name: str, value, limit_name: str = "") -> int:
    """``value`` as an int >= 1, and at most the limit ``limit_name`` of grurt.limits when given."""
    if limit_name:
        return bounded_int(owner, name, value, 1, getattr(limits, limit_name), limit_name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ModelFormatError(f"{owner}: {name} must be a positive integer, got {shown(value)}")
    return int(value)



#: Max and average, for GlobalPool and Pool1D.
POOL_MODES = ("average", "max")
