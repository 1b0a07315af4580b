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


# ---- embeddings, normalisation over features, pooling over time, flattening (issue 12) ----

def _epsilon(owner: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or value < 0:
        raise ModelFormatError(f"{owner}: epsilon must be a finite number >= 0, got {value!r}")
    return float(np.float32(value))


@dataclass(frozen=True, eq=False)
class Embedding:
    """Token ids → rows of ``table`` (vocabulary, features): ``y[b, t] = table[ids[b, t]]``.

    Only as a model's first layer: the model then takes integer ids (B, T) or (T,) instead of
    features, and its ``input_size`` is None. An id outside [0, vocabulary) is an InputError
    (checked before any kernel reads the table; ONNX ``Gather``'s negative ids are refused too).
    """

    table: np.ndarray

    def __post_init__(self):
        table = np.asarray(self.table)
        if table.ndim != 2 or 0 in table.shape:
            raise ModelFormatError(f"Embedding: table must be a non-empty 2-D (vocabulary, features) array, "
                                   f"got shape {table.shape}")
        object.__setattr__(self, "table", _weights("Embedding", "table", table, table.shape))

    @property
    def vocabulary(self) -> int:
        return self.table.shape[0]

    @property
    def output_size(self) -> int:
        return self.table.shape[1]

    def describe(self) -> str:
        return f"Embedding({self.vocabulary} ids -> {self.output_size})"


@dataclass(frozen=True, eq=False)
class LayerNorm:
    """Normalisation over the features of each step: ``y = (x − μ) / √(σ² + epsilon) · gamma + beta``,
    μ and σ² the mean and (biased, ÷F) variance of the step's F features."""

    gamma: np.ndarray
    beta: np.ndarray
    epsilon: float = 1e-5

    def __post_init__(self):
        gamma = np.asarray(self.gamma)
        if gamma.ndim != 1 or gamma.shape[0] < 1:
            raise ModelFormatError(f"LayerNorm: gamma must be a non-empty 1-D array, got shape {gamma.shape}")
        object.__setattr__(self, "gamma", _weights("LayerNorm", "gamma", gamma, gamma.shape))
        object.__setattr__(self, "beta", _weights("LayerNorm", "beta", self.beta, gamma.shape))
        object.__setattr__(self, "epsilon", _epsilon("LayerNorm", self.epsilon))

    @property
    def size(self) -> int:
        return self.gamma.shape[0]

    def describe(self) -> str:
        return f"LayerNorm({self.size}, epsilon={self.epsilon:g})"


@dataclass(frozen=True, eq=False)
class UnitNorm:
    """L2 normalisation over the features of each step: ``y = x / max(‖x‖₂, epsilon)``.

    With ``epsilon`` 0 (ONNX ``LpNormalization``, which has none) a step whose features are
    all zero gives zeros, as onnxruntime computes it. PyTorch ``F.normalize`` and Keras ≥ 3.6
    ``UnitNormalization`` floor the norm at their epsilon (1e-12); Keras 2 and Keras 3 < 3.6
    floor the *squared* norm at 1e-12, i.e. the norm at 1e-6 (see docs/keras.md).
    """

    epsilon: float = 1e-12

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _epsilon("UnitNorm", self.epsilon))

    def describe(self) -> str:
        return f"UnitNorm(epsilon={self.epsilon:g})"


POOL_MODES = ("average", "max")


@dataclass(frozen=True, eq=False)
class GlobalPool:
    """Mean or maximum over each sequence's valid time steps: (B, T, F) → (B, F)."""

    mode: str

    def __post_init__(self):
        if self.mode not in POOL_MODES:
            raise UnsupportedModelError(f"GlobalPool: mode {self.mode!r} is not one of {POOL_MODES}")

    def describe(self) -> str:
        return f"GlobalPool({self.mode})"


@dataclass(frozen=True, eq=False)
class Flatten:
    """(B, T, F) → (B, T·F), step-major (``x.reshape(B, -1)``): the model then runs only on
    sequences of exactly ``steps`` time steps (padding past a sequence's length is zero)."""

    steps: int

    def __post_init__(self):
        object.__setattr__(self, "steps", _positive_int("Flatten", "steps", self.steps))

    def describe(self) -> str:
        return f"Flatten({self.steps} steps)"


Layer = Union[GRU, Dense, Activation, Scale, Reverse, LastStep, Merge]
LAYER_TYPES = (GRU, Dense, Activation, Scale, Reverse, LastStep, Merge)
SEQUENCE_ONLY = (GRU, Reverse, LastStep)
Layer = Union[Layer, Embedding, LayerNorm, UnitNorm, GlobalPool, Flatten]
LAYER_TYPES += (Embedding, LayerNorm, UnitNorm, GlobalPool, Flatten)
SEQUENCE_ONLY += (GlobalPool, Flatten)
#: Layers that need the whole sequence before they can give an output: a model with one cannot stream.
WHOLE_SEQUENCE = (GlobalPool, Flatten)


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """The input feature count and an ordered list of layers, validated on construction.

    ``mask_value``: time steps whose features all equal it are padding;
    ``run`` then derives each sequence's length from its trailing padding.

    A model whose first layer is an :class:`Embedding` takes integer token ids (B, T) instead
    of features: its ``input_size`` is None, and ``mask_value`` (Keras ``mask_zero``: 0) is
    the padding id.
    """

    input_size: Optional[int]
    layers: Tuple[Layer, ...] = field(default_factory=tuple)
    mask_value: Optional[float] = None

    def __post_init__(self):
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        takes_ids = bool(layers) and isinstance(layers[0], Embedding)
        if takes_ids and self.input_size is not None:
            raise ModelFormatError(f"model: input_size must be None when the first layer is an Embedding "
                                   f"(the model takes token ids), got {self.input_size!r}")
        if not takes_ids:
            object.__setattr__(self, "input_size", _positive_int("model", "input_size", self.input_size))
        if self.mask_value is not None:
            if isinstance(self.mask_value, (bool, np.bool_)) or not isinstance(
                    self.mask_value, (int, float, np.integer, np.floating)) or not math.isfinite(self.mask_value):
                raise ModelFormatError(f"model: mask_value must be a finite number, got {self.mask_value!r}")
            object.__setattr__(self, "mask_value", float(np.float32(self.mask_value)))
            if takes_ids:
                if self.mask_value != int(self.mask_value):
                    raise ModelFormatError(f"model: mask_value of a model that takes ids must be an integer id, "
                                           f"got {self.mask_value!r}")
                object.__setattr__(self, "mask_value", int(self.mask_value))
        if not layers:
            raise ModelFormatError("model has no layers")
        features, has_time = self.input_size, True
        for index, layer in enumerate(layers):
            where = f"layer {index} ({type(layer).__name__})"
            if not isinstance(layer, LAYER_TYPES):
                raise UnsupportedModelError(f"{where}: not a grurt layer: {layer!r}")
            if isinstance(layer, Embedding) and index:
                raise ModelFormatError(f"{where}: an Embedding must be the model's first layer")
            if isinstance(layer, SEQUENCE_ONLY) and not has_time:
                raise ModelFormatError(
                    f"{where}: needs a sequence, but an earlier layer already removed the time axis")
            if isinstance(layer, (GRU, Dense)):
                expected = layer.input_size
            elif isinstance(layer, Scale):
                expected = layer.size
            elif isinstance(layer, LayerNorm):
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
            elif isinstance(layer, Embedding):
                features = layer.output_size
            elif isinstance(layer, GlobalPool):
                has_time = False
            elif isinstance(layer, Flatten):
                features, has_time = features * layer.steps, False
        object.__setattr__(self, "output_size", features)
        object.__setattr__(self, "returns_sequence", has_time)

    @property
    def gru_layers(self) -> Tuple[GRU, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, GRU))

    def state_shapes(self, batch: int) -> Tuple[Tuple[int, int, int], ...]:
        """Shape of each GRU layer's state, (directions, batch, hidden)."""
        return tuple((g.num_directions, batch, g.hidden_size) for g in self.gru_layers)

    @property
    def takes_ids(self) -> bool:
        """True when the model's input is integer token ids (its first layer is an Embedding)."""
        return isinstance(self.layers[0], Embedding)

    @property
    def vocabulary(self) -> Optional[int]:
        """The number of valid ids (0 .. vocabulary − 1) of a model that takes ids, else None."""
        return self.layers[0].vocabulary if self.takes_ids else None

    @property
    def fixed_steps(self) -> Optional[int]:
        """The only number of time steps the model runs on (a ``Flatten`` fixes it), or None."""
        return next((layer.steps for layer in self.layers if isinstance(layer, Flatten)), None)

    @property
    def parameter_count(self) -> int:
        arrays = {GRU: ("W", "R", "B"), Dense: ("W", "b"), Scale: ("a", "c"),
                  Embedding: ("table",), LayerNorm: ("gamma", "beta")}
        return sum(getattr(layer, name).size for layer in self.layers
                   for name in arrays.get(type(layer), ()))
