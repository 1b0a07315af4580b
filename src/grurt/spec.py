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

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import numpy as np

from ._fields import (ACTIVATION_DEFAULTS, LAYER_ONLY_ACTIVATIONS, LINEAR, POOL_MODES, SIGMOID, TANH,  # noqa: F401
                      ActivationFunction, _positive_int, _weights, activation)
from .errors import ModelFormatError, UnsupportedModelError
from .limits import MAX_EPSILON, MAX_FEATURES, MAX_FLOAT32, MAX_PADDING_FRAMES, bounded_float, shown
from .timelayers import SAME_PADDINGS, TIME_LAYERS, Conv1D, Pool1D, ZeroPad1D, same_pads  # noqa: F401

DIRECTIONS = ("forward", "reverse", "bidirectional")


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
    layer index 0 is the forward and index 1 the reverse direction. ``initial_state`` (D, H),
    when set, is a learned state each sequence starts from (the same for every sequence of a
    batch) instead of zeros; a state given at run time replaces it.
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
    initial_state: Optional[np.ndarray] = None

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
            clip = np.asarray(self.clip)[()]
            if not 0 < clip <= MAX_FLOAT32:
                raise ModelFormatError(f"GRU: clip must be a positive finite number, at most {MAX_FLOAT32:g} "
                                       f"(grurt.limits.MAX_FLOAT32), got {shown(self.clip)}")
            set_(self, "clip", float(np.float32(clip)))
        if self.initial_state is not None:
            set_(self, "initial_state", _weights("GRU", "initial_state", self.initial_state, (num_directions, hidden)))

    def default_state(self, batch: int) -> np.ndarray:
        """The state a sequence starts from without one given: (D, batch, H) float32, zeros or the
        learned initial_state."""
        if self.initial_state is None:
            return np.zeros((self.num_directions, batch, self.hidden_size), np.float32)
        return np.repeat(self.initial_state[:, None, :], batch, axis=1)

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
        if self.initial_state is not None:
            parts.append("learned h0")
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


def batchnorm_affine(mean, variance, epsilon, gamma=None, beta=None):
    """Inference-time batch normalisation ``(x − mean)/√(var + ε)·γ + β`` as ``x·a + c``; ε within
    [0, grurt.limits.MAX_EPSILON] (a ModelFormatError naming it, else)."""
    epsilon = bounded_float("batch normalisation", "epsilon", epsilon, 0, MAX_EPSILON, "MAX_EPSILON")
    a = 1.0 / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    if gamma is not None:
        a = a * gamma
    c = -np.asarray(mean, np.float64) * a
    return a, c if beta is None else c + beta


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
    return float(np.float32(bounded_float(owner, "epsilon", value, 0, MAX_EPSILON, "MAX_EPSILON")))


@dataclass(frozen=True, eq=False)
class Embedding:
    """Token ids → rows of ``table`` (vocabulary, features): ``y[b, t] = table[ids[b, t]]``.

    Only as a model's first layer: the model then takes integer ids (B, T) or (T,) instead of
    features, and its ``input_size`` is None. An id outside [0, vocabulary) is an InputError
    (checked before any kernel reads the table; negative ids are refused, never wrapped).
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

    ``epsilon`` floors the norm, not its square: a floor δ on ``Σx²`` is ``epsilon = √δ``
    (δ = 1e-12 gives 1e-6). With ``epsilon`` 0 a step whose features are all zero gives zeros
    (not NaN). The importers' tables say which epsilon each framework's layer becomes.
    """

    epsilon: float = 1e-12

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _epsilon("UnitNorm", self.epsilon))

    def describe(self) -> str:
        return f"UnitNorm(epsilon={self.epsilon:g})"


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
        object.__setattr__(self, "steps", _positive_int("Flatten", "steps", self.steps, "MAX_FLATTEN_STEPS"))

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
    of features: its ``input_size`` is None, and ``mask_value`` (typically 0) is
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
            mask_value = bounded_float("model", "mask_value", self.mask_value, -MAX_FLOAT32, MAX_FLOAT32, "MAX_FLOAT32")
            object.__setattr__(self, "mask_value", float(np.float32(mask_value)))
            if takes_ids:
                if not (self.mask_value == int(self.mask_value) and 0 <= self.mask_value < layers[0].vocabulary):
                    raise ModelFormatError(f"model: mask_value of a model that takes ids must be an integer id "
                                           f"from 0 to {layers[0].vocabulary - 1}, got {self.mask_value!r}")
                object.__setattr__(self, "mask_value", int(self.mask_value))
        if not layers:
            raise ModelFormatError("model has no layers")
        features, has_time = self.input_size, True
        for index, layer in enumerate(layers):
            where = f"layer {index} ({type(layer).__name__})"
            if isinstance(layer, Embedding) and index:
                raise ModelFormatError(f"{where}: an Embedding must be the model's first layer")
            features, has_time = layer_output(where, layer, features, has_time, self.mask_value)
        added = added_frames(layers)
        if added > MAX_PADDING_FRAMES:
            raise ModelFormatError(f"model: its layers add up to {added} zero frames to a sequence, more than "
                                   f"{MAX_PADDING_FRAMES} (grurt.limits.MAX_PADDING_FRAMES)")
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
        """The only number of time steps the model's ``Flatten`` accepts, or None without one.

        These are the frames reaching the Flatten: convolutions, pooling or padding before it
        change the count (``output_steps(spec, T)`` must equal it; ``fixed_input_steps`` gives
        the fewest input frames that do)."""
        return next((layer.steps for layer in self.layers if isinstance(layer, Flatten)), None)

    @property
    def parameter_count(self) -> int:
        return parameter_count(self.layers)


def parameter_count(layers) -> int:
    """The number of weights the layers hold."""
    arrays = {GRU: ("W", "R", "B", "initial_state"), Dense: ("W", "b"), Scale: ("a", "c"),
              Embedding: ("table",), LayerNorm: ("gamma", "beta"), Conv1D: ("W", "b")}
    return sum(getattr(layer, name).size for layer in layers for name in arrays.get(type(layer), ())
               if getattr(layer, name) is not None)


# ---- layers over time: convolution, pooling, zero padding (issue 12) ----
LAYER_TYPES = LAYER_TYPES + TIME_LAYERS
SEQUENCE_ONLY = SEQUENCE_ONLY + TIME_LAYERS


def _check_time_layer(where, layer, features, has_time, mask_value) -> int:
    """ModelSpec's checks of a Conv1D/Pool1D/ZeroPad1D; returns the input features it expects."""
    if mask_value is not None:
        raise UnsupportedModelError(f"{where}: a model with a mask_value (padding steps or a padding id) cannot hold "
                                    "convolution, pooling or padding layers")
    return layer.in_channels if isinstance(layer, Conv1D) else features


def layer_output(where: str, layer, features: Optional[int], has_time: bool, mask_value=None):
    """The (features, has_time) a layer yields for an input of ``features`` per step (None: token
    ids), with or without a time axis; ModelFormatError, naming ``where``, when it cannot take it."""
    if not isinstance(layer, LAYER_TYPES):
        raise UnsupportedModelError(f"{where}: not a grurt layer: {layer!r}")
    if isinstance(layer, Embedding) != (features is None):
        raise ModelFormatError(f"{where}: " + ("an Embedding takes token ids" if isinstance(layer, Embedding)
                                               else "token ids go only into an Embedding"))
    if isinstance(layer, SEQUENCE_ONLY) and not has_time:
        raise ModelFormatError(f"{where}: needs a sequence, but an earlier layer already removed the time axis")
    if isinstance(layer, (GRU, Dense)):
        expected = layer.input_size
    elif isinstance(layer, (Scale, LayerNorm)):
        expected = layer.size
    elif isinstance(layer, Merge) and features % 2:
        raise ModelFormatError(f"{where}: needs an even number of features, receives {features}")
    elif isinstance(layer, TIME_LAYERS):
        expected = _check_time_layer(where, layer, features, has_time, mask_value)
    else:
        expected = features
    if expected != features:
        raise ModelFormatError(f"{where}: expects {expected} input features but receives {features}")
    if isinstance(layer, GRU):
        return layer.output_size, layer.return_sequences
    if isinstance(layer, (Dense, Embedding)):
        return layer.output_size, has_time
    if isinstance(layer, (LastStep, GlobalPool)):
        return features, False
    if isinstance(layer, Merge):
        return features // 2, has_time
    if isinstance(layer, Flatten):
        if features * layer.steps > MAX_FEATURES:
            raise ModelFormatError(f"{where}: flattens {layer.steps} steps of {features} features, more than "
                                   f"{MAX_FEATURES} features (grurt.limits.MAX_FEATURES)")
        return features * layer.steps, False
    if isinstance(layer, Conv1D):
        return layer.out_channels, has_time
    return features, has_time



def output_steps(spec: ModelSpec, steps: int) -> int:
    """Frames the layers hand on for ``steps`` input frames (1 once the time axis is gone).

    Raises InputError, naming the layer, when an input is too short for a window of it."""
    from .errors import InputError

    for index, layer in enumerate(spec.layers):
        if isinstance(layer, TIME_LAYERS):
            out = layer.output_steps(steps)
            if out < 1:
                raise InputError(
                    f"input of {steps} frames at layer {index} ({layer.describe()}) is shorter than its window of "
                    f"{layer.span} frames: no output frame exists (the model needs at least "
                    f"{min_steps(spec)} input frames)")
            steps = out
        elif isinstance(layer, LastStep) or (isinstance(layer, GRU) and not layer.return_sequences):
            steps = 1
    return steps


def fixed_input_steps(spec: ModelSpec) -> Optional[int]:
    """The fewest input frames that reach a model's Flatten as exactly ``spec.fixed_steps``
    frames (None without a Flatten, or when no input length gives that count)."""
    wanted = spec.fixed_steps
    if wanted is None:
        return None
    if not any(isinstance(layer, TIME_LAYERS) for layer in spec.layers):
        return wanted
    steps = min_steps(spec)
    while True:     # one more input frame adds 0 or 1 output frames: stepping by the shortfall never overshoots
        got = output_steps(spec, steps)
        if got == wanted:
            return steps
        if got > wanted:
            return None
        steps += wanted - got


def min_steps(spec: ModelSpec) -> int:
    """The fewest input frames for which every layer yields at least one frame."""
    needed = 1                       # frames wanted out of the layers below, walking back up
    for layer in reversed(spec.layers):
        if isinstance(layer, ZeroPad1D):
            needed = max(1, needed - layer.left - layer.right)
        elif isinstance(layer, TIME_LAYERS):
            if isinstance(layer.padding, str):       # SAME: ceil(T / stride) outputs
                needed = (needed - 1) * layer.stride + 1
            else:
                needed = max(1, layer.span + layer.stride * (needed - 1) - sum(layer.padding))
    return needed


def added_frames(layers) -> int:
    """The most zero frames ``layers`` add to a sequence: every ZeroPad1D, Conv1D and Pool1D
    padding, a SAME padding counted as its window − 1. No layer's frame count exceeds the input's
    plus this."""
    return sum(layer.left + layer.right if isinstance(layer, ZeroPad1D)
               else layer.span - 1 if isinstance(layer.padding, str) else sum(layer.padding)
               for layer in layers if isinstance(layer, TIME_LAYERS))


def frame_rate_layers(spec: ModelSpec):
    """(index, layer) of each layer that changes the number of frames or looks ahead: every
    Pool1D and ZeroPad1D, and each Conv1D that is not causal (stride 1, padding ((k−1)·d, 0)).
    Such a model runs whole sequences only: no ``lengths``, no streaming."""
    return [(index, layer) for index, layer in enumerate(spec.layers)
            if isinstance(layer, (Pool1D, ZeroPad1D)) or (isinstance(layer, Conv1D) and not layer.causal)]


def conv_history_shapes(spec: ModelSpec, batch: int) -> Tuple[Tuple[int, int, int], ...]:
    """Per Conv1D layer, the shape of a stream's history: (batch, (k − 1)·dilation, in_channels),
    the last input frames it has seen, oldest first (zeros at the start of a stream)."""
    return tuple((batch, layer.span - 1, layer.in_channels) for layer in spec.layers if isinstance(layer, Conv1D))


def fold_layer(previous, layer):
    """``previous`` and ``layer`` as one layer, or None when they do not fold:

    * ZeroPad1D then Conv1D: the conv pads those zero frames itself;
    * a Conv1D or Dense without activation then a Scale (a BatchNormalization): the
      per-channel ``x·a + c`` goes into the weights, ``W·a`` and ``b·a + c``;
    * a Conv1D without activation then an elementwise Activation: fused into the conv.
    """
    if isinstance(previous, ZeroPad1D) and isinstance(layer, Conv1D) and not isinstance(layer.padding, str):
        return dataclasses.replace(layer, padding=(layer.padding[0] + previous.left, layer.padding[1] + previous.right))
    if isinstance(previous, (Conv1D, Dense)) and previous.activation.kind == "linear":
        if isinstance(layer, Scale):
            a, c = np.asarray(layer.a, np.float64), np.asarray(layer.c, np.float64)
            W = np.asarray(previous.W, np.float64)
            W = W * a[:, None, None] if W.ndim == 3 else W * a[:, None]
            return dataclasses.replace(previous, W=W, b=np.asarray(previous.b, np.float64) * a + c)
        if isinstance(previous, Conv1D) and isinstance(layer, Activation) and layer.function.kind != "softmax":
            return dataclasses.replace(previous, activation=layer.function)
    return None


def append_folded(layers: list, new_layers) -> None:
    """Append ``new_layers`` to ``layers``, folding each into the one before when fold_layer can."""
    for layer in new_layers:
        merged = fold_layer(layers[-1], layer) if layers else None
        if merged is None:
            layers.append(layer)
        else:
            layers[-1] = merged
