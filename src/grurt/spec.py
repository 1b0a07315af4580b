"""The canonical model: frozen dataclasses for layers and models, and their validation.

Every importer translates into these classes and nothing downstream knows which
framework a model came from. The GRU: gate order z, r, h (update, reset, candidate);
per direction ``W [3H, I]``, ``R [3H, H]``, ``B [6H] = [Wb_z Wb_r Wb_h Rb_z Rb_r Rb_h]``::

    z  = f(x·Wzᵀ + h·Rzᵀ + Wbz + Rbz)
    r  = f(x·Wrᵀ + h·Rrᵀ + Wbr + Rbr)
    n  = g(x·Whᵀ + (r⊙h)·Rhᵀ + Rbh + Wbh)       linear_before_reset = False
    n  = g(x·Whᵀ + r⊙(h·Rhᵀ + Rbh) + Wbh)       linear_before_reset = True
    h' = (1 − z)⊙n + z⊙h

``clip`` clamps the inputs of f and g to [−clip, clip]. A bidirectional layer
concatenates the forward and reverse outputs on the feature axis.

Activations are computed on (batch, time, features) tensors; a GRU with
``return_sequences=False`` removes the time axis and yields its final state(s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import numpy as np

from .errors import ModelFormatError, UnsupportedModelError

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
}
#: Functions that are not elementwise or are meaningless as GRU gate/candidate activations.
LAYER_ONLY_ACTIVATIONS = ("linear", "softmax")
DIRECTIONS = ("forward", "reverse", "bidirectional")


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
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ModelFormatError(f"activation {self.kind!r}: {name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ModelFormatError(f"activation {self.kind!r}: {name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(np.float32(value)))

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


def _positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ModelFormatError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _elementwise(owner: str, fn) -> ActivationFunction:
    if not isinstance(fn, ActivationFunction):
        raise ModelFormatError(f"{owner}: expected an ActivationFunction, got {fn!r}")
    if fn.kind in LAYER_ONLY_ACTIVATIONS:
        raise UnsupportedModelError(f"{owner}: activation {fn.kind!r} cannot be used inside a GRU")
    return fn


@dataclass(frozen=True, eq=False)
class GRU:
    """A GRU layer (the equations at the top of this module). Arrays have a leading direction axis D (1 or 2).

    ``W`` is (D, 3H, I), ``R`` is (D, 3H, H), ``B`` is (D, 6H); for a bidirectional
    layer index 0 is the forward and index 1 the reverse direction.
    """

    W: np.ndarray
    R: np.ndarray
    B: np.ndarray
    direction: str = "forward"
    linear_before_reset: bool = False
    gate_activation: ActivationFunction = SIGMOID
    candidate_activation: ActivationFunction = TANH
    clip: Optional[float] = None
    return_sequences: bool = True

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise UnsupportedModelError(f"GRU: direction {self.direction!r} is not one of {DIRECTIONS}")
        num_directions = 2 if self.direction == "bidirectional" else 1
        R = np.asarray(self.R)
        W = np.asarray(self.W)
        if R.ndim != 3 or W.ndim != 3:
            raise ModelFormatError(
                f"GRU: W and R must be 3-D (directions, 3*hidden, ...), got W {W.shape} and R {R.shape}")
        hidden = R.shape[2]
        if hidden < 1 or W.shape[2] < 1:
            raise ModelFormatError(f"GRU: empty weights, W {W.shape}, R {R.shape}")
        set_ = object.__setattr__
        set_(self, "R", _weights("GRU", "R", R, (num_directions, 3 * hidden, hidden)))
        set_(self, "W", _weights("GRU", "W", W, (num_directions, 3 * hidden, W.shape[2])))
        set_(self, "B", _weights("GRU", "B", self.B, (num_directions, 6 * hidden)))
        for name in ("linear_before_reset", "return_sequences"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ModelFormatError(f"GRU: {name} must be a bool, got {getattr(self, name)!r}")
            set_(self, name, bool(getattr(self, name)))
        _elementwise("GRU gate activation", self.gate_activation)
        _elementwise("GRU candidate activation", self.candidate_activation)
        if self.clip is not None:
            if isinstance(self.clip, (bool, np.bool_, str, bytes)) or np.ndim(self.clip) != 0 \
                    or np.asarray(self.clip).dtype.kind not in "fiu":
                raise ModelFormatError(f"GRU: clip must be a positive finite number, got {self.clip!r}")
            clip = float(self.clip)
            if not clip > 0 or not math.isfinite(clip):
                raise ModelFormatError(f"GRU: clip must be a positive finite number, got {self.clip!r}")
            set_(self, "clip", float(np.float32(clip)))

    @property
    def num_directions(self) -> int:
        return self.W.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.R.shape[2]

    @property
    def input_size(self) -> int:
        return self.W.shape[2]

    @property
    def output_size(self) -> int:
        return self.num_directions * self.hidden_size

    def describe(self) -> str:
        parts = [f"hidden={self.hidden_size}", self.direction,
                 f"linear_before_reset={int(self.linear_before_reset)}",
                 f"f={self.gate_activation.describe()}", f"g={self.candidate_activation.describe()}"]
        if self.clip is not None:
            parts.append(f"clip={self.clip:g}")
        parts.append("sequence" if self.return_sequences else "last state")
        return f"GRU({', '.join(parts)})"


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = activation(x·Wᵀ + b)`` with ``W`` (out, in) and ``b`` (out,)."""

    W: np.ndarray
    b: np.ndarray
    activation: ActivationFunction = LINEAR

    def __post_init__(self):
        W = np.asarray(self.W)
        if W.ndim != 2 or 0 in W.shape:
            raise ModelFormatError(f"Dense: W must be a non-empty 2-D (out, in) array, got shape {W.shape}")
        object.__setattr__(self, "W", _weights("Dense", "W", W, W.shape))
        object.__setattr__(self, "b", _weights("Dense", "b", self.b, (W.shape[0],)))
        if not isinstance(self.activation, ActivationFunction):
            raise ModelFormatError(f"Dense: expected an ActivationFunction, got {self.activation!r}")

    @property
    def input_size(self) -> int:
        return self.W.shape[1]

    @property
    def output_size(self) -> int:
        return self.W.shape[0]

    def describe(self) -> str:
        return f"Dense({self.input_size} -> {self.output_size}, {self.activation.describe()})"


@dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise activation, or softmax over the feature axis."""

    function: ActivationFunction

    def __post_init__(self):
        if not isinstance(self.function, ActivationFunction):
            raise ModelFormatError(f"Activation: expected an ActivationFunction, got {self.function!r}")

    def describe(self) -> str:
        return f"Activation({self.function.describe()})"


@dataclass(frozen=True, eq=False)
class Scale:
    """Per-feature affine map ``y = x·a + c`` (input normalisation, output de-scaling, folded BatchNorm)."""

    a: np.ndarray
    c: np.ndarray

    def __post_init__(self):
        a = np.asarray(self.a)
        if a.ndim != 1 or a.shape[0] < 1:
            raise ModelFormatError(f"Scale: a must be a non-empty 1-D array, got shape {a.shape}")
        object.__setattr__(self, "a", _weights("Scale", "a", a, a.shape))
        object.__setattr__(self, "c", _weights("Scale", "c", self.c, a.shape))

    @property
    def size(self) -> int:
        return self.a.shape[0]

    def describe(self) -> str:
        return f"Scale({self.size})"


@dataclass(frozen=True, eq=False)
class Reverse:
    """Reverses the time axis (each sequence within its own length)."""

    def describe(self) -> str:
        return "Reverse()"


MERGE_MODES = ("sum", "ave", "mul")


@dataclass(frozen=True, eq=False)
class Merge:
    """Combines the two halves of the features (a bidirectional GRU's directions) elementwise:
    (…, 2F) → (…, F) by ``sum``, ``ave`` (mean) or ``mul`` (product)."""

    mode: str

    def __post_init__(self):
        if self.mode not in MERGE_MODES:
            raise UnsupportedModelError(f"Merge: mode {self.mode!r} is not one of {MERGE_MODES}")

    def describe(self) -> str:
        return f"Merge({self.mode})"


@dataclass(frozen=True, eq=False)
class LastStep:
    """Keeps only each sequence's last valid time step: (B, T, F) -> (B, F), like ``out[:, -1]``."""

    def describe(self) -> str:
        return "LastStep()"


Layer = Union[GRU, Dense, Activation, Scale, Reverse, LastStep, Merge]
LAYER_TYPES = (GRU, Dense, Activation, Scale, Reverse, LastStep, Merge)
SEQUENCE_ONLY = (GRU, Reverse, LastStep)


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """The input feature count and an ordered list of layers, validated on construction.

    ``mask_value``: time steps whose features all equal it are padding;
    ``run`` then derives each sequence's length from its trailing padding.
    """

    input_size: int
    layers: Tuple[Layer, ...] = field(default_factory=tuple)
    mask_value: Optional[float] = None

    def __post_init__(self):
        object.__setattr__(self, "input_size", _positive_int("model", "input_size", self.input_size))
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if self.mask_value is not None:
            if isinstance(self.mask_value, (bool, np.bool_)) or not isinstance(
                    self.mask_value, (int, float, np.integer, np.floating)) or not math.isfinite(self.mask_value):
                raise ModelFormatError(f"model: mask_value must be a finite number, got {self.mask_value!r}")
            object.__setattr__(self, "mask_value", float(np.float32(self.mask_value)))
        if not layers:
            raise ModelFormatError("model has no layers")
        features, has_time = self.input_size, True
        for index, layer in enumerate(layers):
            where = f"layer {index} ({type(layer).__name__})"
            if not isinstance(layer, LAYER_TYPES):
                raise UnsupportedModelError(f"{where}: not a grurt layer: {layer!r}")
            if isinstance(layer, SEQUENCE_ONLY) and not has_time:
                raise ModelFormatError(
                    f"{where}: needs a sequence, but an earlier layer already removed the time axis")
            if isinstance(layer, (GRU, Dense)):
                expected = layer.input_size
            elif isinstance(layer, Scale):
                expected = layer.size
            elif isinstance(layer, Merge) and features % 2:
                raise ModelFormatError(f"{where}: needs an even number of features, receives {features}")
            else:
                expected = features
            if expected != features:
                raise ModelFormatError(
                    f"{where}: expects {expected} input features but receives {features}")
            if isinstance(layer, GRU):
                features, has_time = layer.output_size, layer.return_sequences
            elif isinstance(layer, Dense):
                features = layer.output_size
            elif isinstance(layer, LastStep):
                has_time = False
            elif isinstance(layer, Merge):
                features //= 2
        object.__setattr__(self, "output_size", features)
        object.__setattr__(self, "returns_sequence", has_time)

    @property
    def gru_layers(self) -> Tuple[GRU, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, GRU))

    def state_shapes(self, batch: int) -> Tuple[Tuple[int, int, int], ...]:
        """Shape of each GRU layer's state, (directions, batch, hidden)."""
        return tuple((g.num_directions, batch, g.hidden_size) for g in self.gru_layers)

    @property
    def parameter_count(self) -> int:
        arrays = {GRU: ("W", "R", "B"), Dense: ("W", "b"), Scale: ("a", "c")}
        return sum(getattr(layer, name).size for layer in self.layers
                   for name in arrays.get(type(layer), ()))
