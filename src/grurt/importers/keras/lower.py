"""Keras models → a general :class:`~grurt.tensor_graph.TensorGraph` of ONNX ops (docs/keras.md,
"Layers beyond the fused vocabulary").

:func:`grurt.from_keras` and :func:`grurt.load` try grurt's fused layers first (:mod:`.layers`,
:mod:`.graph`); what they refuse (attention, 2-D front-ends, ``TimeDistributed`` of anything,
``Permute``, ``Reshape`` between ranks, ...) is lowered here, each call of each Keras layer onto
ops of grurt's registry (:mod:`grurt.ops`), and runs as a :class:`~grurt.tensor_model.TensorModel`.
The input is the same (model config, weights by layer name in ``get_weights()`` order, Keras
version) triple the fused importer reads, from a live model, a ``.keras`` or an ``.h5`` file.

Only translation happens here: one function per Keras layer class states the convention it
translates (weight layouts, defaults, Keras 2/3 differences) and emits ops; every config number
is checked where it is read, every weight's shape against the config and the input, and the graph
is validated again by :class:`~grurt.tensor_graph.TensorGraph` and planned per input shape.

Tensors keep Keras's layout: batch first, channels last. Ops that ONNX defines channels first
(``Conv``, pools) sit between two ``Transpose`` nodes, and a layer reading the output of another
such layer takes its channels-first tensor directly.

Masks follow Keras 3 (docs/keras.md, "Masks on the lowered path"): ``Masking`` and ``Embedding(mask_zero=True)``
make a (batch, time) bool tensor that travels with the sequence (:attr:`_T.mask`) through the
layers that keep it (:data:`KEEPS_MASK`, GRUs returning sequences, attention's query, merges) and
is read where Keras reads it: a GRU skips the masked steps (``grurt.MaskedGRU``), attention ignores
masked values and zeroes (``Attention``) masked queries, ``GlobalAveragePooling1D`` averages the
valid steps. Keras 3 records the ops computing a mask (``not_equal``, ``any``, ...) in functional
configs and hands a layer the mask so computed: those ops are lowered, and such a layer reads that
mask; a MultiHeadAttention removes its inputs' masks for the layers Keras runs after it, in Keras's
order (:func:`_keras_order`).
"""
from __future__ import annotations

import math
import string
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np

from ...errors import GrurtError, ModelFormatError, UnsupportedModelError
from ...limits import MAX_PARAMETERS
from ...tensor_build import GraphBuilder, masked_mean, masking
from ...tensor_graph import TensorGraph, TensorInput
from .layers import _layer_name, _major, _version, batchnorm_affine, is_op, keras_gru_direction, model_layers

#: Layer classes that are models: lowered as a subgraph of their own layers.
MODELS = ("Functional", "Sequential", "Model")
#: Layers that do nothing at inference.
IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
            "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")
#: Keras marks a masked score with this (``_large_negative_number`` for float32).
LARGE_NEGATIVE = -1e9
#: Layers whose output keeps the mask of their (first) input, as Keras's ``supports_masking`` layers
#: with the default ``compute_mask`` (the others drop it, or compute it in their lowering).
KEEPS_MASK = (*IDENTITY, "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU", "Dense",
              "BatchNormalization", "LayerNormalization", "UnitNormalization", "Normalization", "Rescaling",
              "TimeDistributed")
#: Layers that read a mask in their call: TimeDistributed cannot hand them one per step.
READS_MASK = ("GRU", "Bidirectional", "Attention", "AdditiveAttention", "MultiHeadAttention",
              "GlobalAveragePooling1D", "GlobalAvgPool1D", "Softmax", *MODELS, "TimeDistributed")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class _T:
    """A Keras tensor in the graph being built: its name, Keras's static shape (batch first; None
    for a size known only when the model runs), dtype and mask (the name of a (batch, time) bool
    tensor, true at the valid steps, or None)."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str = "float32"
    mask: Optional[str] = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        return f"'{self.name}' ({', '.join('?' if d is None else str(d) for d in self.shape)})"


@dataclass(frozen=True)
class _Ref:
    """A reference to a Keras tensor in a config: (layer name, call index, output index)."""

    key: tuple


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(value, what, low=1, high=MAX_PARAMETERS) -> int:
    """A config integer, within [low, high] (ModelFormatError naming ``what`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ModelFormatError(f"{what} must be an integer from {low} to {high}, got {_short(value)}")
    return int(value)


def _ints(value, what, count, low=1, high=MAX_PARAMETERS) -> Tuple[int, ...]:
    """An int or a list of ``count`` ints (Keras writes kernel_size=3 or (3, 3))."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ModelFormatError(f"{what} must hold {count} integer(s), got {_short(value)}")
        return tuple(_int(v, what, low, high) for v in value)
    return (_int(value, what, low, high),) * count


def _float(value, what) -> float:
    """A finite number of a config (an integer beyond float's range is not one)."""
    if not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
            and (not isinstance(value, (int, np.integer)) or abs(int(value)) < 2**1000) and math.isfinite(value):
        return float(value)
    raise ModelFormatError(f"{what} must be a finite number, got {_short(value)}")


def _axis(value, rank, what, batch=False) -> int:
    """A Keras axis of a tensor of ``rank``, non-negative; the batch axis only when ``batch``."""
    axis = _int(value, what, -rank, rank - 1)
    axis %= rank
    if axis == 0 and not batch:
        raise UnsupportedModelError(f"{what}={value} is the batch axis")
    return axis


# ---- the graph being built ----

class _Call:
    """One call of one Keras layer being lowered: what it is, its weights, and emitters of ops."""

    def __init__(self, graph: GraphBuilder, kind, name, config, weights, major, version, base):
        self.graph, self.kind, self.name, self.config = graph, kind, name, config
        self.weights, self.major, self.version, self.base = weights, major, version, base

    def op(self, op, *inputs, outputs=1, **attrs):
        return self.graph.add(op, inputs, attrs, f"{self.base}/{op}", outputs)

    def const(self, value, label, dtype=np.float32) -> str:
        return self.graph.const(value, f"{self.base}/{label}", dtype)

    def ints(self, values) -> str:
        return self.graph.ints(values)

    def scalar(self, value: int) -> str:
        """An int64 scalar constant (shared)."""
        return self.graph.scalar(value)

    def option(self, key, default=None):
        return self.config.get(key, default)

    def flag(self, key, default) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ModelFormatError(f"{key} must be true or false, got {_short(value)}")
        return bool(value)

    def expect_weights(self, count):
        if len(self.weights) != count:
            raise ModelFormatError(f"has {len(self.weights)} weight arrays, expected {count}")

    def weight(self, index, label, shape) -> np.ndarray:
        """Weight ``index`` as float32, its shape checked against ``shape`` (None: any size there)."""
        array = np.asarray(self.weights[index])
        if array.dtype.kind not in "fiu" or array.ndim != len(shape) or any(
                d is not None and d != n for d, n in zip(shape, array.shape)):
            expected = "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," * (len(shape) == 1)) + ")"
            raise ModelFormatError(f"{label} has shape {array.shape}, expected {expected}")
        return array.astype(np.float32)

    def activation(self, x: str, key="activation", default="linear") -> str:
        return _activation(self, x, self.config.get(key, default))

    # tensors channels first for Conv and pools, sharing transposes between consecutive layers

    def channels_first(self, x: _T) -> str:
        known = self.graph.channels_first.get(x.name)
        if known is not None:
            return known
        return self.op("Transpose", x.name, perm=(0, x.rank - 1, *range(1, x.rank - 1)))

    def channels_last(self, y: str, rank: int) -> str:
        out = self.op("Transpose", y, perm=(0, *range(2, rank), 1))
        self.graph.channels_first[out] = y
        return out


def _one(args, kwargs):
    """The single tensor a layer is called on (Keras 2 nodes list it; Keras 3 passes it first)."""
    if kwargs or len(args) != 1 or not isinstance(args[0], _T):
        raise UnsupportedModelError(f"takes one tensor; called with {len(args)} argument(s) and {sorted(kwargs)}")
    return args[0]


def _tensor_list(value, what, low, high):
    if not isinstance(value, (list, tuple)) or not low <= len(value) <= high or not all(
            isinstance(t, _T) for t in value):
        raise UnsupportedModelError(f"{what} must be a list of {low} to {high} tensors of the model, got "
                                    f"{_short(value)}")
    return list(value)


def _no_more(kwargs):
    if kwargs:
        raise UnsupportedModelError(f"call argument(s) {sorted(kwargs)} are not supported")


# ---- activations ----

#: Keras activations that are one ONNX op: name -> (op, attributes).
_ACTIVATION_OPS = {
    "relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}), "softplus": ("Softplus", {}),
    "softsign": ("Softsign", {}), "selu": ("Selu", {}), "elu": ("Elu", {"alpha": 1.0}), "exponential": ("Exp", {}),
    "mish": ("Mish", {}), "softmax": ("Softmax", {"axis": -1}), "log_softmax": ("LogSoftmax", {"axis": -1}),
    "gelu": ("Gelu", {"approximate": "none"}), "celu": ("Celu", {"alpha": 1.0}),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.2}), "relu6": ("Clip", {"min": 0.0, "max": 6.0}),
    "hard_tanh": ("Clip", {"min": -1.0, "max": 1.0}), "hard_silu": ("HardSwish", {}), "hard_swish": ("HardSwish", {}),
}
_ACTIVATIONS = (*_ACTIVATION_OPS, "linear", "silu", "swish", "hard_sigmoid", "log_sigmoid", "tanh_shrink")
#: Activations that mix values along an axis (they do not commute with a transpose).
_MIXING = ("softmax", "log_softmax")


def _activation_name(spec):
    """The name of a Keras activation as configs store it: a string, or Keras 3's serialized function."""
    if spec is None:
        return "linear"
    if isinstance(spec, dict) and isinstance(spec.get("config"), str) \
            and str(spec.get("module", "keras.activations")).startswith("keras"):
        spec = spec["config"]
    if not isinstance(spec, str):
        raise UnsupportedModelError(f"activation {_short(spec)} is not a Keras activation name (custom "
                                    "activations are code grurt does not run)")
    return spec


def _activation(c: _Call, x: str, spec) -> str:
    """A Keras activation (keras.activations; the defaults of Keras 3's functions): ``hard_sigmoid`` is
    clip(x/6 + 1/2, 0, 1) in Keras 3 and clip(0.2·x + 1/2, 0, 1) in Keras 2; ``hard_silu`` x·relu6(x + 3)/6;
    ``leaky_relu`` slope 0.2; ``gelu`` exact (erf); ``silu``/``swish`` x·sigmoid(x)."""
    name = _activation_name(spec)
    if name == "linear":
        return x
    if name in _ACTIVATION_OPS:
        op, attrs = _ACTIVATION_OPS[name]
        return c.op(op, x, **attrs)
    if name in ("silu", "swish"):
        return c.op("Mul", x, c.op("Sigmoid", x))
    if name == "hard_sigmoid":
        return c.op("HardSigmoid", x, alpha=1 / 6 if c.major >= 3 else 0.2, beta=0.5)
    if name == "log_sigmoid":                 # log σ(x) = −softplus(−x)
        return c.op("Neg", c.op("Softplus", c.op("Neg", x)))
    if name == "tanh_shrink":
        return c.op("Sub", x, c.op("Tanh", x))
    raise UnsupportedModelError(f"activation {name!r} is not supported; grurt computes {', '.join(_ACTIVATIONS)}")


# ---- recurrent layers ----

#: Keras activations → ONNX RNN activations (name, alpha, beta) for the GRU op.
_RNN_ACTIVATIONS = {"sigmoid": ("Sigmoid",), "tanh": ("Tanh",), "relu": ("Relu",), "softsign": ("Softsign",),
                    "softplus": ("Softplus",), "linear": ("Affine", 1.0, 0.0), "elu": ("Elu", 1.0),
                    "leaky_relu": ("LeakyRelu", 0.2)}


@dataclass
class _GRUParts:
    W: np.ndarray                # (3H, I)
    R: np.ndarray                # (3H, H)
    B: np.ndarray                # (6H,)
    units: int
    settings: tuple              # (linear_before_reset, f, g): what one GRU op node shares between directions
    return_sequences: bool
    return_state: bool
    go_backwards: bool


def _rnn_activation(spec, major):
    name = _activation_name(spec)
    if name == "hard_sigmoid":
        return ("HardSigmoid", 1 / 6 if major >= 3 else 0.2, 0.5)
    if name not in _RNN_ACTIVATIONS:
        raise UnsupportedModelError(f"activation {name!r} in a GRU is not supported; grurt's GRU computes "
                                    f"{', '.join(_RNN_ACTIVATIONS)} and hard_sigmoid")
    return _RNN_ACTIVATIONS[name]


def _gru_parts(c: _Call, config: dict, weights, features) -> _GRUParts:
    """One Keras GRU's weights and settings. Keras orders the gates z, r, h as ONNX does but stores
    ``kernel`` (I, 3H) and ``recurrent_kernel`` (H, 3H) transposed; with ``reset_after`` (Keras 3's
    default, tf.keras 2's) the bias is (2, 3H) [input; recurrent] and the reset gate acts after the
    recurrent product (ONNX ``linear_before_reset=1``), without it one (3H,) input bias."""
    for option in ("stateful", "time_major"):
        if config.get(option):
            raise UnsupportedModelError(f"{option}=True is not supported (grurt's state is explicit: "
                                        "initial_state in, return_state out)")
    units = _int(config.get("units"), "units")
    use_bias = bool(config.get("use_bias", True))
    if len(weights) != 2 + use_bias:
        raise ModelFormatError(f"has {len(weights)} weight arrays, expected {2 + use_bias}")
    sub = _Call(c.graph, "GRU", c.name, config, weights, c.major, c.version, c.base)
    kernel = sub.weight(0, "kernel", (features, 3 * units))
    recurrent = sub.weight(1, "recurrent_kernel", (units, 3 * units))
    bias = None
    if use_bias:
        reset_after = config.get("reset_after", np.ndim(weights[2]) == 2)
        bias = sub.weight(2, "bias", (2, 3 * units) if reset_after else (3 * units,))
    else:
        reset_after = config.get("reset_after", True)
    W, R, B = keras_gru_direction(kernel, recurrent, bias, bool(reset_after))
    settings = (bool(reset_after), _rnn_activation(config.get("recurrent_activation", "sigmoid"), c.major),
                _rnn_activation(config.get("activation", "tanh"), c.major))
    return _GRUParts(W, R, B.astype(np.float32), units, settings, bool(config.get("return_sequences", False)),
                     bool(config.get("return_state", False)), bool(config.get("go_backwards", False)))


def _rnn_call(args, kwargs, directions):
    """(sequence, initial states) of an RNN call: Keras 3 passes ``initial_state=`` (or a second
    argument), Keras 2 nodes list the states after the sequence."""
    args, kwargs = list(args), dict(kwargs)
    if len(args) == 1 and isinstance(args[0], list):         # Keras 2: [sequence, *states]
        args = [args[0][0], args[0][1:] or None]
    states = kwargs.pop("initial_state", None) if len(args) == 1 else args.pop(1)
    _no_more(kwargs)
    if len(args) != 1 or not isinstance(args[0], _T):
        raise UnsupportedModelError("takes one sequence (and initial_state=)")
    if states is None:
        return args[0], []
    states = _tensor_list(states if isinstance(states, (list, tuple)) else [states], "initial_state",
                          directions, directions)
    return args[0], states


def _gru_mask(c: _Call, x: _T, states):
    """The mask a GRU call reads: its input's, unless it is called with initial states (Keras 3 hands a
    mask only to a layer called on one tensor; Keras 2 is refused there)."""
    if x.mask and states and c.major < 3:
        raise UnsupportedModelError("a masked sequence with initial_state is not supported in Keras 2 models")
    return None if states else x.mask


def _gru_node(c: _Call, x: _T, parts, direction, states, mask=None, zeros=False):
    """One ONNX GRU node on (B, T, I) (``layout=1``): Y (B, T, D, H) and Y_h (B, D, H). With a ``mask``,
    a ``grurt.MaskedGRU`` node: the masked steps skipped, zeros there (``zeros``) or the previous output."""
    if x.rank != 3:
        raise UnsupportedModelError(f"reads {x.describe()}; a GRU reads (batch, time, features) sequences "
                                    "(TimeDistributed folds more axes into the batch)")
    lbr, f, g = parts[0].settings
    functions = [f, g] * len(parts)
    h0 = ""
    if states:
        if any(s.rank != 2 for s in states):
            raise UnsupportedModelError(f"initial_state must be (batch, {parts[0].units}) tensors, got "
                                        + ", ".join(s.describe() for s in states))
        heads = [c.op("Unsqueeze", s.name, axes=(1,)) for s in states]
        h0 = heads[0] if len(heads) == 1 else c.op("Concat", *heads, axis=1)
    W, R, B = (c.const(np.stack([getattr(p, k) for p in parts]), k) for k in ("W", "R", "B"))
    attrs = dict(hidden_size=parts[0].units, direction=direction, linear_before_reset=int(lbr),
                 activations=[fn[0] for fn in functions], activation_alpha=[fn[1] for fn in functions if len(fn) > 1],
                 activation_beta=[fn[2] for fn in functions if len(fn) > 2])
    if mask:
        return c.op("grurt.MaskedGRU", x.name, W, R, B, mask, h0, outputs=2,
                    masked_output="zeros" if zeros else "previous", **attrs)
    return c.op("GRU", x.name, W, R, B, "", h0, outputs=2, layout=1, **attrs)


def _reverse_time(c: _Call, x: str) -> str:
    return c.op("Slice", x, c.ints([-1]), c.ints([-_INT64_MAX - 1]), c.ints([1]), c.ints([-1]))


def _gru_direction_outputs(c: _Call, x: _T, p: _GRUParts, y, y_h, last_from_y=False):
    """Keras's outputs of a one-direction GRU node: the sequence, in reversed time order for
    ``go_backwards`` (its mask the input's, in input order, as Keras keeps it), or the last output
    (the final state; ``last_from_y``: Y at the last step read, zeroed there when masked); and the
    final state."""
    batch, steps = x.shape[0], x.shape[1]
    state = _T(c.op("Squeeze", y_h, axes=(1,)), (batch, p.units))
    if not p.return_sequences:
        if last_from_y:
            last = c.op("Gather", c.op("Squeeze", y, axes=(2,)), c.scalar(0 if p.go_backwards else -1), axis=1)
            return _T(last, (batch, p.units)), state
        return state, state
    out = c.op("Squeeze", y, axes=(2,))
    return _T(_reverse_time(c, out) if p.go_backwards else out, (batch, steps, p.units), mask=x.mask), state


def _gru(c: _Call, args, kwargs):
    """``GRU`` → the ONNX GRU op, forward (or reverse for ``go_backwards``); outputs [sequence or last
    output, (final state with ``return_state``)]."""
    x, states = _rnn_call(args, kwargs, 1)
    p = _gru_parts(c, c.config, c.weights, x.shape[-1])
    mask = _gru_mask(c, x, states)
    zeros = bool(mask) and c.flag("zero_output_for_mask", False)
    y, y_h = _gru_node(c, x, [p], "reverse" if p.go_backwards else "forward", states, mask, zeros)
    out, state = _gru_direction_outputs(c, x, p, y, y_h, last_from_y=zeros)
    return [out, state] if p.return_state else [out]


def _layer_config(value, what):
    if not isinstance(value, dict) or not isinstance(value.get("class_name"), str) \
            or not isinstance(value.get("config", {}), dict):
        raise ModelFormatError(f"{what} must be a layer config {{class_name, config}}, got {_short(value)}")
    return value


def _bidirectional(c: _Call, args, kwargs):
    """``Bidirectional(GRU)``: the forward layer and the backward one (``backward_layer``, or the
    forward's config with ``go_backwards`` flipped: Keras 2 files store it only when given), weights
    forward then backward. Keras flips the backward output back in time (sequences) and merges:
    concat (default), sum, ave ((y + y_rev)/2), mul, or None (both outputs). A mirrored pair is one
    bidirectional GRU node (ONNX's reverse direction is already aligned with the input); any other
    pair two nodes. ``return_state``: [output(s), forward state, backward state]."""
    forward = _layer_config(c.option("layer"), "layer")
    backward = c.option("backward_layer")
    backward = _layer_config(backward, "backward_layer") if backward is not None else {
        "class_name": forward["class_name"],
        "config": {**forward.get("config", {}), "go_backwards": not forward.get("config", {}).get("go_backwards")}}
    if forward["class_name"] != "GRU" or backward["class_name"] != "GRU":
        raise UnsupportedModelError(f"wraps {forward['class_name']}; grurt runs Bidirectional(GRU)")
    merge = c.option("merge_mode", "concat")
    if merge not in ("concat", "sum", "ave", "mul", None):
        raise UnsupportedModelError(f"merge_mode={merge!r} is not supported; use concat, sum, ave, mul or None")
    x, states = _rnn_call(args, kwargs, 2)
    half = 2 + bool(forward.get("config", {}).get("use_bias", True))
    fwd = _gru_parts(c, forward.get("config", {}), c.weights[:half], x.shape[-1])
    bwd = _gru_parts(c, backward.get("config", {}), c.weights[half:], x.shape[-1])
    if (fwd.return_sequences, fwd.return_state) != (bwd.return_sequences, bwd.return_state):
        raise ModelFormatError("the forward and backward GRUs differ in return_sequences or return_state")
    batch, steps = x.shape[0], x.shape[1]
    # Keras's Bidirectional sets zero_output_for_mask = return_sequences on both layers
    mask, zeros = _gru_mask(c, x, states), fwd.return_sequences
    if not fwd.go_backwards and bwd.go_backwards and fwd.settings == bwd.settings and fwd.units == bwd.units:
        y, y_h = _gru_node(c, x, [fwd, bwd], "bidirectional", states, mask, zeros=True)
        h_f, h_b = (_T(_direction(c, y_h, d, 1), (batch, fwd.units)) for d in (0, 1))
        both, axis = (y, 2) if fwd.return_sequences else (y_h, 1)      # (B, T, 2, H) or (B, 2, H)
        shape = (batch, steps, fwd.units) if fwd.return_sequences else (batch, fwd.units)
        if merge == "concat":
            outputs = [_T(c.op("Reshape", both, c.ints([0] * axis + [-1])), (*shape[:-1], 2 * fwd.units))]
        elif merge is None:
            outputs = [_T(_direction(c, both, d, axis), shape) for d in (0, 1)]
        else:
            reduce = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}[merge]
            outputs = [_T(c.op(reduce, both, axes=(axis,), keepdims=0), shape)]
    else:
        y_f, h_f = _gru_direction_outputs(c, x, fwd, *_gru_node(c, x, [fwd], "reverse" if fwd.go_backwards else
                                                                "forward", states[:1], mask, zeros))
        y_b, h_b = _gru_direction_outputs(c, x, bwd, *_gru_node(c, x, [bwd], "reverse" if bwd.go_backwards else
                                                                "forward", states[1:], mask, zeros))
        if fwd.return_sequences:
            y_b = _T(_reverse_time(c, y_b.name), y_b.shape)
        if merge == "concat":
            outputs = [_T(c.op("Concat", y_f.name, y_b.name, axis=-1), (*y_f.shape[:-1], fwd.units + bwd.units))]
        elif merge is None:
            outputs = [y_f, y_b]
        elif merge == "ave":
            outputs = [_T(c.op("Mul", c.op("Add", y_f.name, y_b.name), c.const(np.float32(0.5), "half")), y_f.shape)]
        else:
            outputs = [_T(c.op({"sum": "Add", "mul": "Mul"}[merge], y_f.name, y_b.name), y_f.shape)]
    if fwd.return_sequences:           # the sequences keep the input's mask (read or not)
        outputs = [replace(o, mask=x.mask) for o in outputs]
    return outputs + ([h_f, h_b] if fwd.return_state else [])


def _direction(c: _Call, y: str, index: int, axis: int) -> str:
    """Direction ``index`` of a bidirectional node's Y (B, T, 2, H) or Y_h (B, 2, H), that axis removed."""
    return c.op("Gather", y, c.scalar(index), axis=axis)


# ---- dense layers ----

def _dense(c: _Call, args, kwargs):
    """``Dense``: ``kernel`` (I, units), ``bias`` (units,) on the last axis of any rank (:func:`_linear`),
    then the activation."""
    x = _one(args, kwargs)
    if c.option("lora_rank"):
        raise UnsupportedModelError("LoRA weights are not supported (merge them into the kernel first)")
    units, use_bias = _int(c.option("units"), "units"), c.flag("use_bias", True)
    c.expect_weights(1 + use_bias)
    kernel = c.weight(0, "kernel", (x.shape[-1], units))
    if x.rank < 2:
        raise UnsupportedModelError(f"reads {x.describe()}; Dense reads (batch, ..., features)")
    y = _linear(c, x, kernel, c.weight(1, "bias", (units,)) if use_bias else None, (units,))
    return [_T(c.activation(y), (*x.shape[:-1], units))]


def _linear(c: _Call, x: _T, kernel, bias, dims, bound=1) -> str:
    """x (B, ..., F) times ``kernel`` (F, product of dims) plus ``bias``, shaped (B, ..., *dims), F the product
    of x's last ``bound`` axes: a Gemm on (B, F) vectors (it adds the bias in place), a MatMul and an Add on
    longer tensors, whose leading axes stay apart (a time axis among them streams)."""
    if x.rank == 2:
        inputs = [x.name, c.const(kernel, "kernel")] + ([c.const(bias.reshape(-1), "bias")] if bias is not None
                                                         else [])
        y = c.op("Gemm", *inputs)
        return y if len(dims) == 1 else c.op("Reshape", y, c.ints([0, *dims]))
    lead = x.rank - bound
    rows = x.name if bound == 1 else c.op("Reshape", x.name, c.ints([0] * lead + [-1]))
    y = c.op("MatMul", rows, c.const(kernel, "kernel"))
    if bias is not None:
        y = c.op("Add", y, c.const(bias.reshape(-1), "bias"))
    return y if len(dims) == 1 else c.op("Reshape", y, c.ints([0] * lead + list(dims)))


def _einsum_dense(c: _Call, args, kwargs):
    """``EinsumDense``: Einsum(``equation``; x, kernel), the bias shaped by Keras to the output's trailing
    axes from the first of ``bias_axes`` (so it broadcasts), then the activation."""
    x = _one(args, kwargs)
    equation = c.option("equation")
    if not isinstance(equation, str) or "->" not in equation or len(equation) > 200:
        raise ModelFormatError(f"equation must be an einsum equation 'ab,bc->ac', got {_short(equation)}")
    bias_axes = c.option("bias_axes")
    c.expect_weights(1 + (bias_axes is not None))
    y = c.op("Einsum", x.name, c.const(c.weight(0, "kernel", (None,) * np.ndim(c.weights[0])), "kernel"),
             equation=equation)
    if bias_axes is not None:
        y = c.op("Add", y, c.const(c.weight(1, "bias", (None,) * np.ndim(c.weights[1])), "bias"))
    # the output's rank from the equation (an ellipsis stands for x's leading axes), its last sizes from
    # output_shape (which leaves out the batch and the ellipsis)
    inputs, out_spec = equation.replace(" ", "").split("->")
    in_spec = inputs.split(",")[0]
    rank = len(out_spec.replace("...", "")) + (x.rank - len(in_spec.replace("...", "")) if "..." in out_spec else 0)
    output_shape = c.option("output_shape")
    dims = [d if isinstance(d, int) and not isinstance(d, bool) else None
            for d in (output_shape if isinstance(output_shape, (list, tuple)) else [output_shape])][-rank:]
    return [_T(c.activation(y), (None,) * (rank - len(dims)) + tuple(dims))]


def _embedding(c: _Call, args, kwargs):
    """``Embedding``: ``embeddings`` (input_dim, output_dim) gathered by the ids (cast to integers, as
    Keras does with float ids); an id outside the table is an InputError when the model runs."""
    x = _one(args, kwargs)
    if c.option("lora_rank"):
        raise UnsupportedModelError("LoRA weights are not supported (merge them into the table first)")
    c.expect_weights(1)
    dims = (_int(c.option("input_dim"), "input_dim"), _int(c.option("output_dim"), "output_dim"))
    table = c.weight(0, "embeddings", dims)
    ids = x.name if x.dtype == "int64" else c.op("Cast", x.name, to=7)       # 7: INT64
    mask = None
    if c.flag("mask_zero", False):            # Keras: not_equal(inputs, 0), on the ids as given
        if x.rank != 2:
            raise UnsupportedModelError(f"mask_zero=True on {x.describe()}: grurt masks (batch, time) token ids")
        zero = c.const(np.array(0, np.int64 if x.dtype == "int64" else np.float32), "zero",
                       np.int64 if x.dtype == "int64" else np.float32)
        mask = c.op("Not", c.op("Equal", x.name, zero))
    return [_T(c.op("Gather", c.const(table, "embeddings"), ids, axis=0), (*x.shape, dims[1]), mask=mask)]


def _masking(c: _Call, args, kwargs):
    """``Masking(mask_value)``: a step is valid when any of its features differs from mask_value
    (Keras: any(not_equal(x, mask_value), axis=-1)); the masked steps' features become 0."""
    x = _one(args, kwargs)
    if x.rank != 3:
        raise UnsupportedModelError(f"reads {x.describe()}; grurt masks (batch, time, features) sequences")
    y, mask = masking(c.graph, x.name, _float(c.option("mask_value", 0.0), "mask_value"), c.base)
    return [_T(y, x.shape, mask=mask)]


# ---- activation layers ----

def _activation_layer(c: _Call, args, kwargs):
    x = _one(args, kwargs)
    return [_T(c.activation(x.name), x.shape)]


def _relu_layer(c: _Call, args, kwargs):
    """``ReLU(max_value, negative_slope, threshold)`` as Keras computes it: x where x > threshold else 0,
    clipped to [0, max_value] when max_value is set, minus negative_slope·relu(threshold − x)."""
    x = _one(args, kwargs)
    slope = _float(c.option("negative_slope", 0.0) or 0.0, "negative_slope")
    threshold = _float(c.option("threshold", 0.0) or 0.0, "threshold")
    max_value = c.option("max_value")
    max_value = None if max_value is None else _float(max_value, "max_value")
    if slope and max_value is None and threshold == 0:
        return [_T(c.op("LeakyRelu", x.name, alpha=slope), x.shape)]
    y = c.op("Relu", x.name) if threshold == 0 else c.op("ThresholdedRelu", x.name, alpha=threshold)
    if max_value is not None:
        y = c.op("Clip", y, min=0.0, max=max_value)
    if slope:
        below = c.op("Relu", c.op("Sub", c.const(np.float32(threshold), "threshold"), x.name))
        y = c.op("Sub", y, c.op("Mul", c.const(np.float32(slope), "slope"), below))
    return [_T(y, x.shape)]


def _leaky_relu_layer(c: _Call, args, kwargs):
    """``LeakyReLU``: Keras 3 ``negative_slope``, Keras 2 ``alpha``; the layer's default slope is 0.3."""
    x = _one(args, kwargs)
    slope = c.option("negative_slope", c.option("alpha", 0.3))
    return [_T(c.op("LeakyRelu", x.name, alpha=_float(slope, "negative_slope")), x.shape)]


def _prelu_layer(c: _Call, args, kwargs):
    """``PReLU``: ``alpha`` of the input's shape without the batch, size 1 on ``shared_axes``; x for
    x ≥ 0, alpha·x below."""
    x = _one(args, kwargs)
    c.expect_weights(1)
    alpha = c.weight(0, "alpha", (None,) * (x.rank - 1))
    return [_T(c.op("PRelu", x.name, c.const(alpha, "alpha")), x.shape)]


def _elu_layer(c: _Call, args, kwargs):
    x = _one(args, kwargs)
    return [_T(c.op("Elu", x.name, alpha=_float(c.option("alpha", 1.0), "alpha")), x.shape)]


def _thresholded_relu_layer(c: _Call, args, kwargs):
    """``ThresholdedReLU(theta)``: x where x > theta, else 0."""
    x = _one(args, kwargs)
    return [_T(c.op("ThresholdedRelu", x.name, alpha=_float(c.option("theta", 1.0), "theta")), x.shape)]


def _softmax_layer(c: _Call, args, kwargs):
    """``Softmax(axis)``: one axis or several (exp(x − max) / Σ over them)."""
    x = _one(args, kwargs)
    if x.mask:
        raise UnsupportedModelError("reads a masked sequence: Keras applies the (batch, time) mask along the "
                                    "softmax's axis (an error, or a broadcast over the features); use "
                                    "Activation('softmax')")
    axis = c.option("axis", -1)
    axes = tuple(sorted({_axis(a, x.rank, "axis") for a in (axis if isinstance(axis, (list, tuple)) else [axis])}))
    return [_T(_softmax(c, x.name, axes), x.shape)]


def _softmax(c: _Call, x: str, axes) -> str:
    if len(axes) == 1:
        return c.op("Softmax", x, axis=axes[0])
    shifted = c.op("Exp", c.op("Sub", x, c.op("ReduceMax", x, axes=axes, keepdims=1)))
    return c.op("Div", shifted, c.op("ReduceSum", shifted, axes=axes, keepdims=1))


# ---- normalization ----

def _broadcast_along(values, axes, rank):
    """``values`` (the sizes of ``axes``) shaped to broadcast against a tensor of ``rank``."""
    shape = [1] * rank
    for axis, size in zip(axes, np.shape(values)):
        shape[axis] = size
    return np.reshape(values, shape)


def _axes_option(c: _Call, x: _T, default=-1):
    value = c.option("axis", default)
    values = value if isinstance(value, (list, tuple)) else [value]
    axes = tuple(sorted({_axis(a, x.rank, "axis") for a in values}))
    if len(axes) != len(values):
        raise ModelFormatError(f"axis={value!r} names an axis twice")
    return axes


def _batch_normalization(c: _Call, args, kwargs):
    """``BatchNormalization`` at inference: (x − moving_mean)/√(moving_variance + ε)·γ + β (ε default
    1e-3, γ/β absent without ``scale``/``center``), folded into x·a + b along ``axis``."""
    x = _one(args, kwargs)
    if c.option("renorm"):
        raise UnsupportedModelError("renorm=True is not supported")
    axes = _axes_option(c, x)
    if len(axes) != 1:
        raise UnsupportedModelError(f"axis={c.option('axis')!r}: grurt normalizes along one axis")
    scale, center = c.flag("scale", True), c.flag("center", True)
    c.expect_weights(scale + center + 2)
    size = x.shape[axes[0]]
    arrays = [c.weight(k, f"weight {k}", (size,)) for k in range(len(c.weights))]
    gamma = arrays.pop(0) if scale else None
    beta = arrays.pop(0) if center else None
    a, b = batchnorm_affine(arrays[0], arrays[1], _float(c.option("epsilon", 1e-3), "epsilon"), gamma, beta)
    y = c.op("Mul", x.name, c.const(_broadcast_along(a, axes, x.rank), "scale"))
    return [_T(c.op("Add", y, c.const(_broadcast_along(b, axes, x.rank), "shift")), x.shape)]


def _layer_normalization(c: _Call, args, kwargs):
    """``LayerNormalization``: (x − μ)/√(σ² + ε)·γ + β over ``axis`` (trailing axes; ε default 1e-3),
    γ and β of the normalized axes' sizes (ones and zeros without ``scale``/``center``)."""
    x = _one(args, kwargs)
    if c.option("rms_scaling"):
        raise UnsupportedModelError("rms_scaling=True (deprecated by Keras) is not supported")
    axes = _axes_option(c, x)
    if axes != tuple(range(axes[0], x.rank)):
        raise UnsupportedModelError(f"axis={c.option('axis')!r}: grurt normalizes over trailing axes")
    scale, center = c.flag("scale", True), c.flag("center", True)
    c.expect_weights(scale + center)
    shape = tuple(x.shape[a] for a in axes)
    if scale or center:
        shape = tuple(np.shape(c.weights[0])) if None in shape else shape
    arrays = [c.weight(k, f"weight {k}", shape) for k in range(len(c.weights))]
    gamma = arrays.pop(0) if scale else np.ones(shape, np.float32)
    beta = arrays.pop(0) if center else np.zeros(shape, np.float32)
    y = c.op("LayerNormalization", x.name, c.const(gamma, "gamma"), c.const(beta, "beta"), axis=axes[0],
             epsilon=_float(c.option("epsilon", 1e-3), "epsilon"))
    return [_T(y, x.shape)]


def _unit_normalization(c: _Call, args, kwargs):
    """``UnitNormalization``: x / max(‖x‖, 1e-12) over ``axis`` since Keras 3.6 (x·min(rsqrt(Σx²), 1e12)),
    x·rsqrt(max(Σx², 1e-12)) before (and tf.keras): a floor of 1e-6 on the norm."""
    x = _one(args, kwargs)
    major, minor = _version(c.version)
    floors_norm = major > 3 or (major == 3 and (minor is None or minor >= 6))
    return [_T(_l2_normalize(c, x.name, _axes_option(c, x), 1e-12 if floors_norm else 1e-6), x.shape)]


def _l2_normalize(c: _Call, x: str, axes, floor) -> str:
    """x / max(‖x‖₂, floor) along ``axes`` (Keras: x·min(rsqrt(Σx²), 1/floor))."""
    norm = c.op("Sqrt", c.op("ReduceSumSquare", x, axes=axes, keepdims=1))
    return c.op("Div", x, c.op("Max", norm, c.const(np.float32(floor), "floor")))


def _normalization(c: _Call, args, kwargs):
    """``Normalization`` (adapted, or ``mean``/``variance`` given): (x − mean)/max(√variance, 1e-7)
    on the last axis; ``invert``: mean + x·max(√variance, 1e-7)."""
    x = _one(args, kwargs)
    if _axes_option(c, x) != (x.rank - 1,):
        raise UnsupportedModelError(f"axis={c.option('axis')!r}: grurt normalizes along the last axis")
    if c.weights:
        mean, variance = np.asarray(c.weights[0], np.float32), np.asarray(c.weights[1], np.float32)
    else:
        mean, variance = np.asarray(c.option("mean"), np.float32), np.asarray(c.option("variance"), np.float32)
    features = x.shape[-1] or mean.size
    if mean.size not in (1, features) or variance.size not in (1, features):
        raise ModelFormatError(f"mean and variance have {mean.size} and {variance.size} values for {features} "
                               "features")
    mean, std = mean.reshape(-1), np.maximum(np.sqrt(variance.reshape(-1)), np.float32(1e-7))
    if c.option("invert"):
        y = c.op("Add", c.const(mean, "mean"), c.op("Mul", x.name, c.const(std, "std")))
    else:
        y = c.op("Div", c.op("Sub", x.name, c.const(mean, "mean")), c.const(std, "std"))
    return [_T(y, x.shape)]


def _rescaling(c: _Call, args, kwargs):
    """``Rescaling``: x·scale + offset."""
    x = _one(args, kwargs)
    scale = np.asarray(c.option("scale", 1.0), np.float32)
    offset = np.asarray(c.option("offset", 0.0), np.float32)
    if scale.size > MAX_PARAMETERS or offset.size > MAX_PARAMETERS or not (
            np.isfinite(scale).all() and np.isfinite(offset).all()):
        raise ModelFormatError("scale and offset must be finite numbers")
    return [_T(c.op("Add", c.op("Mul", x.name, c.const(scale, "scale")), c.const(offset, "offset")), x.shape)]


# ---- convolutions and pooling (channels_last in Keras, channels first in ONNX) ----

def _spatial(c: _Call, x: _T, rank: int):
    """(channels_last?, spatial sizes) of a Conv/pool input of ``rank`` spatial axes."""
    data_format = c.option("data_format") or "channels_last"
    if data_format not in ("channels_last", "channels_first"):
        raise ModelFormatError(f"data_format must be channels_last or channels_first, got {_short(data_format)}")
    if x.rank != rank + 2:
        raise UnsupportedModelError(f"reads {x.describe()}; it takes rank-{rank + 2} tensors")
    last = data_format == "channels_last"
    return last, (x.shape[1:-1] if last else x.shape[2:])


def _out_sizes(sizes, kernel, strides, dilations, padding):
    """Output sizes per spatial axis (None where the input's is unknown)."""
    out = []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        span = (k - 1) * d + 1
        out.append(None if n is None else -(-n // s) if padding in ("same", "causal") else max((n - span) // s + 1, 0))
    return tuple(out)


def _padding(c: _Call, kernel, dilations, causal_ok):
    """Keras padding → ONNX Conv/pool attributes: valid; same (TensorFlow's: the odd frame at the end,
    = SAME_UPPER for every stride); causal ((k − 1)·d before, Conv1D)."""
    padding = c.option("padding", "valid")
    if padding == "valid":
        return padding, {}
    if padding == "same":
        return padding, {"auto_pad": "SAME_UPPER"}
    if padding == "causal" and causal_ok:
        return padding, {"pads": ((kernel[0] - 1) * dilations[0], 0)}
    raise UnsupportedModelError(f"padding={padding!r} is not supported; grurt reads valid, same"
                                + (" and causal" if causal_ok else ""))


def _conv(rank):
    def lower(c: _Call, args, kwargs):
        """``ConvND``: ``kernel`` (k..., in/groups, filters) → ONNX W (filters, in/groups, k...), ``bias``
        (filters,); ``strides``, ``dilation_rate``, ``groups``, ``padding``, ``data_format``, then the
        activation (inside the channels-first pair when it is elementwise)."""
        x = _one(args, kwargs)
        last, sizes = _spatial(c, x, rank)
        channels = x.shape[-1] if last else x.shape[1]
        filters, use_bias = _int(c.option("filters"), "filters"), c.flag("use_bias", True)
        kernel_size = _ints(c.option("kernel_size"), "kernel_size", rank)
        strides = _ints(c.option("strides", 1), "strides", rank)
        dilations = _ints(c.option("dilation_rate", 1), "dilation_rate", rank)
        groups = _int(c.option("groups", 1), "groups")
        if channels is not None and channels % groups:
            raise ModelFormatError(f"groups={groups} does not divide the {channels} input channels")
        c.expect_weights(1 + use_bias)
        kernel = c.weight(0, "kernel", (*kernel_size, None if channels is None else channels // groups, filters))
        padding, attrs = _padding(c, kernel_size, dilations, rank == 1)
        inputs = [c.channels_first(x) if last else x.name,
                  c.const(kernel.transpose(rank + 1, rank, *range(rank)), "kernel")]
        if use_bias:
            inputs.append(c.const(c.weight(1, "bias", (filters,)), "bias"))
        y = c.op("Conv", *inputs, kernel_shape=kernel_size, strides=strides, dilations=dilations, group=groups, **attrs)
        activation = _activation_name(c.option("activation"))
        if activation not in _MIXING:
            y = c.activation(y)
        out = _out_sizes(sizes, kernel_size, strides, dilations, padding)
        if last:
            y, shape = c.channels_last(y, rank + 2), (x.shape[0], *out, filters)
        else:
            shape = (x.shape[0], filters, *out)
        return [_T(c.activation(y) if activation in _MIXING else y, shape)]
    return lower


def _pool(op, rank):
    def lower(c: _Call, args, kwargs):
        """``MaxPoolingND``/``AveragePoolingND``: ``pool_size`` (default 2), ``strides`` (default the pool
        size), valid or same padding (TensorFlow's; averages exclude the padding)."""
        x = _one(args, kwargs)
        last, sizes = _spatial(c, x, rank)
        size = _ints(c.option("pool_size", 2), "pool_size", rank)
        strides = size if c.option("strides") is None else _ints(c.option("strides"), "strides", rank)
        padding, attrs = _padding(c, size, (1,) * rank, False)
        extra = {"count_include_pad": 0} if op == "AveragePool" else {}
        y = c.op(op, c.channels_first(x) if last else x.name, kernel_shape=size, strides=strides, **attrs, **extra)
        out = _out_sizes(sizes, size, strides, (1,) * rank, padding)
        channels = x.shape[-1] if last else x.shape[1]
        if last:
            return [_T(c.channels_last(y, rank + 2), (x.shape[0], *out, channels))]
        return [_T(y, (x.shape[0], channels, *out))]
    return lower


def _global_pool(op, rank):
    def lower(c: _Call, args, kwargs):
        """``GlobalAveragePoolingND``/``GlobalMaxPoolingND``: the mean or max over the spatial axes,
        ``keepdims``, ``data_format``."""
        x = _one(args, kwargs)
        last, _ = _spatial(c, x, rank)
        axes = tuple(range(1, rank + 1)) if last else tuple(range(2, rank + 2))
        keep = c.flag("keepdims", False)
        shape = tuple(1 if a in axes else d for a, d in enumerate(x.shape)) if keep else \
            tuple(d for a, d in enumerate(x.shape) if a not in axes)
        if x.mask and op == "ReduceMean" and rank == 1:
            return [_T(masked_mean(c.graph, x.name, x.mask, axes, keep, 2 if last else 1, c.base), shape)]
        return [_T(c.op(op, x.name, axes=axes, keepdims=int(keep)), shape)]
    return lower


# ---- reshaping ----

def _flatten(c: _Call, args, kwargs):
    """``Flatten``: (B, ...) → (B, product); ``channels_first`` moves the channels last first."""
    x = _one(args, kwargs)
    if (c.option("data_format") or "channels_last") == "channels_first" and x.rank > 2:
        x = _T(c.op("Transpose", x.name, perm=(0, *range(2, x.rank), 1)), (x.shape[0], *x.shape[2:], x.shape[1]))
    size = None if None in x.shape[1:] else math.prod(x.shape[1:])
    return [_T(c.op("Flatten", x.name, axis=1), (x.shape[0], size))]


def _reshape(c: _Call, args, kwargs):
    """``Reshape(target_shape)``: the batch kept (ONNX's 0 copies it), one −1 inferred."""
    x = _one(args, kwargs)
    target = c.option("target_shape")
    if not isinstance(target, (list, tuple)) or len(target) > 32:
        raise ModelFormatError(f"target_shape must be a list of sizes, got {_short(target)}")
    dims = [-1 if d in (-1, None) else _int(d, "target_shape") for d in target]
    if dims.count(-1) > 1:
        raise ModelFormatError(f"target_shape {target!r} has more than one unknown size")
    known = None if None in x.shape[1:] else math.prod(x.shape[1:])
    shape = list(dims)
    if -1 in dims:
        rest = math.prod(d for d in dims if d != -1)
        shape[dims.index(-1)] = known // rest if known is not None and rest and known % rest == 0 else None
    elif known is not None and known != math.prod(dims):
        raise ModelFormatError(f"cannot reshape {x.describe()} to {tuple(dims)}")
    return [_T(c.op("Reshape", x.name, c.ints([0] + dims)), (x.shape[0], *shape))]


def _permute(c: _Call, args, kwargs):
    """``Permute(dims)``: the non-batch axes reordered (1-based) → Transpose(0, *dims)."""
    x = _one(args, kwargs)
    dims = c.option("dims")
    if not isinstance(dims, (list, tuple)) or sorted(dims) != list(range(1, x.rank)) or any(
            isinstance(d, bool) for d in dims):
        raise ModelFormatError(f"dims must be a permutation of 1..{x.rank - 1} for {x.describe()}, got "
                               f"{_short(dims)}")
    return [_T(c.op("Transpose", x.name, perm=(0, *dims)), (x.shape[0], *(x.shape[d] for d in dims)))]


def _repeat_vector(c: _Call, args, kwargs):
    """``RepeatVector(n)``: (B, F) → (B, n, F): Unsqueeze then Expand."""
    x = _one(args, kwargs)
    if x.rank != 2:
        raise UnsupportedModelError(f"reads {x.describe()}; RepeatVector repeats (batch, features) vectors")
    n = _int(c.option("n"), "n")
    y = c.op("Expand", c.op("Unsqueeze", x.name, axes=(1,)), c.ints([1, n, 1]))
    return [_T(y, (x.shape[0], n, x.shape[1]))]


def _cropping(rank):
    def lower(c: _Call, args, kwargs):
        """``CroppingND``: (begin, end) per spatial axis cut away (an int: both; Keras 2's
        ``channels_first`` too) → Slice."""
        x = _one(args, kwargs)
        last, sizes = _spatial(c, x, rank)
        pairs = _pairs(c.option("cropping", 1), "cropping", rank, low=0)
        first = 1 if last else 2
        axes = list(range(first, first + rank))
        y = c.op("Slice", x.name, c.ints([b for b, _ in pairs]), c.ints([-e if e else _INT64_MAX for _, e in pairs]),
                 c.ints(axes))
        shape = list(x.shape)
        for axis, (b, e) in zip(axes, pairs):
            shape[axis] = None if shape[axis] is None else max(shape[axis] - b - e, 0)
        return [_T(y, tuple(shape))]
    return lower


def _zero_padding(rank):
    def lower(c: _Call, args, kwargs):
        """``ZeroPaddingND``: (begin, end) zeros per spatial axis → Pad."""
        x = _one(args, kwargs)
        last, _ = _spatial(c, x, rank)
        pairs = _pairs(c.option("padding", 1), "padding", rank, low=0)
        first = 1 if last else 2
        begin, end, shape = [0] * x.rank, [0] * x.rank, list(x.shape)
        for axis, (b, e) in zip(range(first, first + rank), pairs):
            begin[axis], end[axis] = b, e
            shape[axis] = None if shape[axis] is None else shape[axis] + b + e
        return [_T(c.op("Pad", x.name, pads=begin + end), tuple(shape))]
    return lower


def _pairs(value, what, rank, low=0):
    """Keras's (begin, end) per axis: an int, a pair (1-D) or one int or pair per axis."""
    if rank == 1:
        return [_ints(value, what, 2, low)] if isinstance(value, (list, tuple)) else [(_int(value, what, low),) * 2]
    if not isinstance(value, (list, tuple)):
        return [(_int(value, what, low),) * 2] * rank
    if len(value) != rank:
        raise ModelFormatError(f"{what} must hold {rank} entries, got {_short(value)}")
    return [_ints(v, what, 2, low) if isinstance(v, (list, tuple)) else (_int(v, what, low),) * 2 for v in value]


# ---- merging ----

def _merge_inputs(args, kwargs, low=2, high=64):
    _no_more(kwargs)
    if len(args) != 1:
        raise UnsupportedModelError("takes one list of tensors")
    return _tensor_list(args[0], "its input", low, high)


def _broadcast_shape(tensors):
    rank = max(t.rank for t in tensors)
    shape = []
    for axis in range(rank):
        dims = {t.shape[axis - rank + t.rank] for t in tensors if axis - rank + t.rank >= 0}
        known = dims - {None, 1}
        shape.append(known.pop() if len(known) == 1 else None if None in dims or known else 1)
    return tuple(shape)


def _merge(op):
    def lower(c: _Call, args, kwargs):
        """``Add``/``Subtract``/``Multiply``/``Maximum``/``Minimum``/``Average``: left to right as Keras
        (Average: the sum divided by the count)."""
        tensors = _merge_inputs(args, kwargs, high=2 if op == "Sub" else 64)
        mask = _merged_mask(c, tensors)
        if op in ("Max", "Min") and any(t.mask for t in tensors) and c.major >= 3:
            return [_T(_masked_extremum(c, op, tensors), _broadcast_shape(tensors), mask=mask)]
        y = tensors[0].name
        for t in tensors[1:]:
            y = c.op("Add" if op == "Mean" else op, y, t.name)
        if op == "Mean":
            y = c.op("Div", y, c.const(np.float32(len(tensors)), "count"))
        return [_T(y, _broadcast_shape(tensors), mask=mask)]
    return lower


def _merged_mask(c: _Call, tensors):
    """The mask of a merge's output: Keras 3 ORs its inputs' masks, none when one has none; Keras 2 ANDs
    those there are (grurt: when they are one shared mask)."""
    masks = [t.mask for t in tensors]
    present = list(dict.fromkeys(m for m in masks if m))
    if not present:
        return None
    if c.major < 3:
        if len(present) > 1:
            raise UnsupportedModelError("merges sequences masked differently, in a Keras 2 model (tf.keras ANDs "
                                        "their masks); grurt merges them when they share one mask")
        return present[0]
    if None in masks:
        return None
    mask = present[0]
    for other in present[1:]:
        mask = c.op("Or", mask, other)
    return mask


def _masked_extremum(c: _Call, op, tensors):
    """Keras 3's ``Maximum``/``Minimum`` of masked inputs (``_apply_merge_op_and_or_mask``): left to right,
    a masked step of either side takes the other side's value before the op."""
    def steps(mask):
        return c.op("Unsqueeze", mask, axes=(2,))
    out, out_mask = tensors[0].name, tensors[0].mask
    for t in tensors[1:]:
        x = c.op("Where", steps(t.mask), t.name, out) if t.mask else t.name
        if out_mask:
            out = c.op("Where", steps(out_mask), out, x)
        out_mask = c.op("Or", out_mask, t.mask) if t.mask and out_mask else None
        out = c.op(op, out, x)
    return out


def _concatenate(c: _Call, args, kwargs):
    """``Concatenate(axis)`` (default −1)."""
    tensors = _merge_inputs(args, kwargs)
    rank = tensors[0].rank
    if any(t.rank != rank for t in tensors):
        raise UnsupportedModelError("concatenates tensors of different ranks: "
                                    + ", ".join(t.describe() for t in tensors))
    axis = _axis(c.option("axis", -1), rank, "axis")
    sizes = [t.shape[axis] for t in tensors]
    shape = list(tensors[0].shape)
    shape[axis] = None if None in sizes else sum(sizes)
    mask = _merged_mask(c, tensors)      # along the features: Keras ORs the masks (an unmasked input: all true)
    if mask and axis != rank - 1:
        raise UnsupportedModelError(f"concatenates masked sequences along axis {axis}; grurt keeps masks when "
                                    "concatenating along the features")
    return [_T(c.op("Concat", *(t.name for t in tensors), axis=axis), tuple(shape), mask=mask)]


def _dot(c: _Call, args, kwargs):
    """``Dot(axes, normalize)``: Keras's batch_dot — the product over one axis of each input, the
    output x's other axes then y's (a result of rank 1 becomes (B, 1)); ``normalize`` first makes
    both unit vectors along those axes (x·min(rsqrt(Σx²), 1e7))."""
    x, y = _merge_inputs(args, kwargs, 2, 2)
    axes = c.option("axes")
    pair = axes if isinstance(axes, (list, tuple)) else [axes, axes]
    if len(pair) != 2:
        raise ModelFormatError(f"axes must be an integer or two, got {_short(axes)}")
    ax, ay = (_axis(a, t.rank, "axes") for a, t in zip(pair, (x, y)))
    if c.option("normalize"):
        x = _T(_l2_normalize(c, x.name, (ax,), 1e-7), x.shape)
        y = _T(_l2_normalize(c, y.name, (ay,), 1e-7), y.shape)
    letters = iter(string.ascii_letters[2:])
    xl = ["a"] + [next(letters) for _ in range(x.rank - 1)]
    yl = ["a"] + [next(letters) for _ in range(y.rank - 1)]
    yl[ay] = xl[ax] = "b"
    out = [xl[i] for i in range(x.rank) if i != ax] + [yl[i] for i in range(1, y.rank) if i != ay]
    z = c.op("Einsum", x.name, y.name, equation=f"{''.join(xl)},{''.join(yl)}->{''.join(out)}")
    shape = [x.shape[i] for i in range(x.rank) if i != ax] + [y.shape[i] for i in range(1, y.rank) if i != ay]
    if len(out) == 1:
        return [_T(c.op("Unsqueeze", z, axes=(1,)), (x.shape[0], 1))]
    return [_T(z, tuple(shape))]


# ---- attention ----

def _attention_inputs(c: _Call, args, kwargs):
    """(query, value, key, causal, return scores) of an Attention/AdditiveAttention call: inputs
    [query, value(, key)]; ``use_causal_mask`` (Keras 3 call argument, Keras 2's ``causal`` config)."""
    kwargs = dict(kwargs)
    causal = bool(kwargs.pop("use_causal_mask", False) or c.option("causal", False))
    scores = bool(kwargs.pop("return_attention_scores", False))
    _no_more(kwargs)
    if len(args) != 1:
        raise UnsupportedModelError("takes one list [query, value] or [query, value, key]")
    tensors = _tensor_list(args[0], "its input", 2, 3)
    query, value = tensors[:2]
    key = tensors[2] if len(tensors) == 3 else value
    if query.rank < 3 or value.rank != query.rank or key.rank != query.rank:
        raise UnsupportedModelError("query, value and key must be (batch, steps, dim) tensors, got "
                                    + ", ".join(t.describe() for t in tensors))
    return query, value, key, causal, scores


def _causal_keep(c: _Call, query: str, key: str, axis: int, causal=True, window=None) -> str:
    """True where query step i may see key step j (causal: j ≤ i; a sliding window: |i − j| < window),
    (Tq, Tk), from the steps on ``axis`` of query and key: built from their shapes, so the plan folds it
    once per input size."""
    def steps(tensor):
        size = c.op("Squeeze", c.op("Shape", tensor, start=axis, end=axis + 1), axes=(0,))
        return c.op("Range", c.scalar(0), size, c.scalar(1))
    rows, cols = c.op("Unsqueeze", steps(query), axes=(1,)), steps(key)
    keep = c.op("GreaterOrEqual", rows, cols) if causal else None
    if window is not None:
        near = c.op("Less", c.op("Abs", c.op("Sub", rows, cols)), c.scalar(window))
        keep = near if keep is None else c.op("And", keep, near)
    return keep


def _both(c: _Call, keep, more):
    return more if keep is None else c.op("And", keep, more)


def _masked_keys(c: _Call, keep, *masks):
    """``keep`` and each (B, Tk) mask as (B, 1, Tk): the keys each query may see."""
    for mask in masks:
        if mask:
            keep = _both(c, keep, c.op("Unsqueeze", mask, axes=(1,)))
    return keep


def _attention_masks(c: _Call, query: _T, *others: _T):
    """Whether any of the tensors is masked; masks reach attention as Keras 3 hands them, on (batch,
    steps, features) tensors."""
    if not any(t.mask for t in (query, *others)):
        return False
    if c.major < 3:
        raise UnsupportedModelError("masked inputs to attention in a Keras 2 model are not supported (tf.keras "
                                    "subtracts 1e9 where Keras 3 replaces the scores); re-save it with Keras 3")
    if query.rank != 3:
        raise UnsupportedModelError(f"masked inputs of rank {query.rank}: grurt masks (batch, steps, features) "
                                    "queries")
    return True


def _attention(c: _Call, args, kwargs):
    """``Attention`` (Luong): scores = q·kᵀ (``score_mode="dot"``, times the scalar ``scale`` with
    ``use_scale``) or concat_score_weight·Σ tanh(scale·(q + k)) (``score_mode="concat"``); the
    causal mask; softmax over the keys; the weights times value. Weights: [scale] with use_scale,
    then [concat_score_weight] with concat. ``return_attention_scores``: the weights, second."""
    query, value, key, causal, return_scores = _attention_inputs(c, args, kwargs)
    use_scale, mode = c.flag("use_scale", False), c.option("score_mode", "dot")
    if mode not in ("dot", "concat"):
        raise ModelFormatError(f"score_mode must be dot or concat, got {_short(mode)}")
    c.expect_weights(use_scale + (mode == "concat"))
    scale = c.const(c.weight(0, "scale", ()), "scale") if use_scale else None
    if mode == "dot":
        swap = list(range(key.rank))
        swap[-2:] = swap[-1], swap[-2]
        scores = c.op("MatMul", query.name, c.op("Transpose", key.name, perm=swap))
        if scale:
            scores = c.op("Mul", scores, scale)
    else:
        summed = c.op("Add", c.op("Unsqueeze", query.name, axes=(query.rank - 1,)),
                      c.op("Unsqueeze", key.name, axes=(key.rank - 2,)))
        if scale:
            summed = c.op("Mul", scale, summed)
        weight = c.const(c.weight(int(use_scale), "concat_score_weight", ()), "concat_score_weight")
        scores = c.op("Mul", weight, c.op("ReduceSum", c.op("Tanh", summed), axes=(query.rank,), keepdims=0))
    return _attend(c, query, value, key, scores, causal, return_scores)


def _additive_attention(c: _Call, args, kwargs):
    """``AdditiveAttention`` (Bahdanau): scores = Σ scale·tanh(q + k) over the features (``scale`` (dim,)
    with ``use_scale``, default True; else 1), then as ``Attention``."""
    query, value, key, causal, return_scores = _attention_inputs(c, args, kwargs)
    use_scale = c.flag("use_scale", True)
    c.expect_weights(int(use_scale))
    summed = c.op("Tanh", c.op("Add", c.op("Unsqueeze", query.name, axes=(query.rank - 1,)),
                               c.op("Unsqueeze", key.name, axes=(key.rank - 2,))))
    if use_scale:
        summed = c.op("Mul", c.const(c.weight(0, "scale", (query.shape[-1],)), "scale"), summed)
    scores = c.op("ReduceSum", summed, axes=(query.rank,), keepdims=0)
    return _attend(c, query, value, key, scores, causal, return_scores)


def _attend(c: _Call, query, value, key, scores, causal, return_scores):
    """Keras's ``Attention._apply_scores``: scores − 1e9 where a key is hidden (by the causal mask or the
    value's mask), the softmax, times value; masked queries' outputs zeroed, their mask the output's."""
    masked = _attention_masks(c, query, value)
    keep = _causal_keep(c, query.name, key.name, query.rank - 2) if causal else None
    keep = _masked_keys(c, keep, value.mask if masked else None)
    if keep is not None:
        scores = c.op("Add", scores, c.op("Where", keep, c.const(np.float32(0), "zero"),
                                          c.const(np.float32(LARGE_NEGATIVE), "masked")))
    weights = c.op("Softmax", scores, axis=-1)
    out = c.op("MatMul", weights, value.name)
    if query.mask:
        out = c.op("Where", c.op("Unsqueeze", query.mask, axes=(2,)), out, c.const(np.float32(0), "zero"))
    out = _T(out, (*query.shape[:-1], value.shape[-1]), mask=query.mask)
    return [out, _T(weights, (*query.shape[:-1], key.shape[-2]))] if return_scores else [out]


def _attention_equations(rank, attention_axes):
    """Keras's einsum equations for multi-head attention over projected tensors of ``rank``
    (batch, <other axes>, <attention axes>, heads, channels): scores = einsum(dot, key, query) and
    output = einsum(combine, scores, value) (keras.layers.MultiHeadAttention's _build_attention_equation)."""
    letters = string.ascii_lowercase
    target = letters[:rank]
    batch_dims = [i for i in range(rank) if i not in attention_axes and i != rank - 1]
    source, offset = "", rank
    for i in range(rank):
        if i in batch_dims or i == rank - 1:
            source += target[i]
        else:
            source += letters[offset]
            offset += 1
    product = "".join([target[i] for i in batch_dims] + [target[i] for i in attention_axes]
                      + [source[i] for i in attention_axes])
    return f"{source},{target}->{product}", f"{product},{source}->{target}", len(product)


def _multi_head_attention(c: _Call, args, kwargs):
    """``MultiHeadAttention(num_heads N, key_dim K, value_dim V = K)``: query, key and value projected
    by einsum kernels (F, N, K), (F, N, K), (F, N, V) with biases (N, K), (N, K), (N, V); the query
    scaled by 1/√K; scores over ``attention_axes`` (default: every axis between the batch and the
    features) softmaxed; the output projection (N, V, *output_shape) (default the query's features)
    and its bias. ``use_gate``: a sigmoid gate (F, N, V) multiplies the heads' output (its weights
    between the key's and the value's). ``use_causal_mask``, ``sliding_window``: the band mask
    |i − j| < window (with causal: j ≤ i). ``return_attention_scores``: the softmaxed scores
    (B, N, Tq, Tk), second. Masks (query_mask, value_mask, key_mask, attention_mask) are refused."""
    kwargs = dict(kwargs)
    args = list(args)
    query = args.pop(0) if args else kwargs.pop("query", None)
    value = args.pop(0) if args else kwargs.pop("value", None)
    key = args.pop(0) if args else kwargs.pop("key", None)
    for mask in ("query_mask", "value_mask", "key_mask", "attention_mask"):
        if kwargs.pop(mask, None) is not None:
            raise UnsupportedModelError(f"{mask}= given by hand is not supported: grurt derives masks from Masking "
                                        "and Embedding(mask_zero=True) layers")
    causal = bool(kwargs.pop("use_causal_mask", False))
    return_scores = bool(kwargs.pop("return_attention_scores", False))
    _no_more(kwargs)
    if args:
        raise UnsupportedModelError(f"takes query, value (and key); called with {len(args)} more arguments")
    key_mask = key.mask if isinstance(key, _T) else None      # Keras reads the key's mask when it is given
    key = value if key is None else key
    for what, t in (("query", query), ("value", value), ("key", key)):
        if not isinstance(t, _T):
            raise UnsupportedModelError(f"{what} must be a tensor of the model, got {_short(t)}")
    rank = query.rank
    if rank < 3 or value.rank != rank or key.rank != rank:
        raise UnsupportedModelError("query, value and key must be tensors of one rank ≥ 3, got "
                                    + ", ".join(t.describe() for t in (query, value, key)))
    heads, key_dim = _int(c.option("num_heads"), "num_heads"), _int(c.option("key_dim"), "key_dim")
    value_dim = _int(c.option("value_dim") or key_dim, "value_dim")
    use_bias, use_gate = c.flag("use_bias", True), c.flag("use_gate", False)
    output_shape = c.option("output_shape")
    if not output_shape:              # Keras: the query's features
        output_shape = [query.shape[-1] if query.shape[-1] is not None else np.shape(c.weights[0])[0]]
    elif not isinstance(output_shape, (list, tuple)):
        output_shape = [output_shape]
    output_shape = _ints(output_shape, "output_shape", len(output_shape))
    window = c.option("sliding_window")
    window = None if window is None else _int(window, "sliding_window")
    projected = rank + 1
    axes = c.option("attention_axes")
    axes = tuple(range(1, projected - 2)) if axes is None else tuple(
        a if a >= 0 else projected - 1 + a
        for a in (_ints(axes, "attention_axes", len(axes), -rank, rank) if isinstance(axes, (list, tuple))
                  else (_int(axes, "attention_axes", -rank, rank),)))
    if not axes or any(not 1 <= a <= projected - 3 for a in axes) or len(set(axes)) != len(axes):
        raise ModelFormatError(f"attention_axes {c.option('attention_axes')!r} must name axes between the batch "
                               f"and the features of the rank-{rank} query")
    if rank == 3 and axes != (1,):
        raise UnsupportedModelError(f"attention_axes={list(axes)} on a (batch, steps, features) query (Keras 3 "
                                    "attends over axis 1 whatever it says)")
    if (causal or window is not None) and rank != 3:
        raise UnsupportedModelError("a causal or sliding-window mask is supported on (batch, steps, features) "
                                    "queries only")
    c.expect_weights((4 + use_gate) * (1 + use_bias))
    arrays = iter(range(len(c.weights)))

    def projection(label, features, dims, bias_dims=None):
        kernel = c.weight(next(arrays), f"{label} kernel", (features, *dims))
        bias = c.weight(next(arrays), f"{label} bias", bias_dims or dims) if use_bias else None
        return kernel, bias

    q_kernel, q_bias = projection("query", query.shape[-1], (heads, key_dim))
    k_kernel, k_bias = projection("key", key.shape[-1], (heads, key_dim))
    gate = projection("gate", query.shape[-1], (heads, value_dim)) if use_gate else None
    v_kernel, v_bias = projection("value", value.shape[-1], (heads, value_dim))
    o_kernel, o_bias = projection("output", heads, (value_dim, *output_shape), output_shape)
    # Keras multiplies the projected query by 1/√key_dim (in float32): folded into its kernel and bias
    scale = np.float32(1.0 / math.sqrt(float(key_dim)))
    q_kernel, q_bias = q_kernel * scale, None if q_bias is None else q_bias * scale

    def project(x: _T, kernel, bias, label):
        return _linear(c, x, kernel.reshape(kernel.shape[0], -1), bias, kernel.shape[1:])

    q = project(query, q_kernel, q_bias, "query")
    k = project(key, k_kernel, k_bias, "key")
    v = project(value, v_kernel, v_bias, "value")
    if axes == (1,) and rank == 3:
        # Keras's equations for (B, T, N, K) tensors as two batched products over the heads (B, N, ...):
        # faster than Einsum's plan of the same products
        scores = c.op("MatMul", c.op("Transpose", q, perm=(0, 2, 1, 3)), c.op("Transpose", k, perm=(0, 2, 3, 1)))
        score_rank = 4
    else:
        dot, combine, score_rank = _attention_equations(projected, axes)
        scores = c.op("Einsum", k, q, equation=dot)
    keep = None
    if _attention_masks(c, query, value, key):
        # Keras 3 ANDs the query's (B, T, 1), value's and key's (B, 1, S), causal and window masks, and
        # replaces the hidden scores (−1e9 in its Softmax, −0.7·3.4e38 in dot_product_attention: the
        # same weights; a query seeing no key averages all values)
        keep = c.op("Unsqueeze", query.mask, axes=(2,)) if query.mask else None
        keep = _masked_keys(c, keep, value.mask, key_mask)
        if causal or window is not None:
            keep = _both(c, keep, _causal_keep(c, query.name, value.name, 1, causal, window))
        keep = c.op("Unsqueeze", keep, axes=(1,))
        scores = c.op("Where", keep, scores, c.const(np.float32(LARGE_NEGATIVE), "masked"))
    elif causal or window is not None:
        keep = _causal_keep(c, query.name, value.name, 1, causal, window)
        scores = c.op("Add", scores, c.op("Where", keep, c.const(np.float32(0), "zero"),
                                          c.const(np.float32(LARGE_NEGATIVE), "masked")))
    weights = _softmax(c, scores, tuple(range(score_rank - len(axes), score_rank)))
    if keep is not None and (return_scores or _float(c.option("dropout", 0.0) or 0.0, "dropout") > 0):
        # Keras 3.15 takes its Softmax layer here (not dot_product_attention), which zeroes the hidden
        # weights after the softmax: a query seeing no key gets weights 0
        weights = c.op("Where", keep, weights, c.const(np.float32(0), "zero"))
    if axes == (1,) and rank == 3:
        out = c.op("Transpose", c.op("MatMul", weights, c.op("Transpose", v, perm=(0, 2, 1, 3))), perm=(0, 2, 1, 3))
    else:
        out = c.op("Einsum", weights, v, equation=combine)
    if gate is not None:
        out = c.op("Mul", out, c.op("Sigmoid", project(query, *gate, "gate")))
    out = _linear(c, _T(out, (*query.shape[:-1], heads, value_dim)), o_kernel.reshape(heads * value_dim, -1), o_bias,
                  output_shape, bound=2)
    result = [_T(out, (*query.shape[:-1], *output_shape), mask=query.mask)]
    if return_scores:
        score_shape = (query.shape[0], heads, *(query.shape[a] for a in axes), *(key.shape[a] for a in axes))
        result.append(_T(weights, score_shape if len(axes) == 1 and rank == 3 else (None,) * score_rank))
    return result


# ---- wrappers and sub-models ----

def _time_distributed(c: _Call, args, kwargs):
    """``TimeDistributed(layer)``: the layer (any layer here, or a model) applied to each step alike:
    (B, T, ...) folded to (B·T, ...), the layer lowered on that, and its output unfolded to
    (B, T, ...). Its weights are the inner layer's (a model's: its layers' in order)."""
    x = _one(args, kwargs)
    if x.rank < 3:
        raise UnsupportedModelError(f"reads {x.describe()}; TimeDistributed needs (batch, time, ...)")
    inner = _layer_config(c.option("layer"), "layer")
    if x.mask and inner["class_name"] in READS_MASK:
        raise UnsupportedModelError(f"wraps {inner['class_name']}, which reads a mask, on a masked sequence: Keras "
                                    "hands it each step's (batch,) mask, which grurt does not lower")
    if inner["class_name"] in _LAST_AXIS:        # the same on (B, T, ...) as step by step: no folding
        return _lower_layer(c.graph, inner, c.weights, c.major, c.version, f"{c.base}/", [replace(x, mask=None)], {})
    folded = c.op("Reshape", x.name, c.op("Concat", c.ints([-1]), c.op("Shape", x.name, start=2), axis=0))
    outputs = _lower_layer(c.graph, inner, c.weights, c.major, c.version, f"{c.base}/",
                           [_T(folded, (None, *x.shape[2:]))], {})
    if len(outputs) != 1:
        raise UnsupportedModelError(f"wraps a layer of {len(outputs)} outputs; TimeDistributed takes one")
    y = outputs[0]
    lead = c.op("Shape", x.name, start=0, end=2)
    unfolded = c.op("Reshape", y.name, c.op("Concat", lead, c.op("Shape", y.name, start=1), axis=0))
    return [_T(unfolded, (*x.shape[:2], *y.shape[1:]))]


#: Layers that compute along their input's last axis alone, whatever its rank (TimeDistributed of one is
#: the layer itself).
_LAST_AXIS = (*IDENTITY, "Dense", "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU")


def _model_layer(c: _Call, args, kwargs):
    """A model used as a layer: its own layers lowered as a subgraph, its weights (all its layers',
    in order) split by layer."""
    _no_more(kwargs)
    inputs = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    return _lower_model(c.graph, {"class_name": c.kind, "config": c.config}, c.weights, c.major, c.version,
                        f"{c.base}/", list(inputs))


_LOWERINGS = {
    "GRU": _gru, "Bidirectional": _bidirectional, "Dense": _dense, "EinsumDense": _einsum_dense,
    "Embedding": _embedding, "Masking": _masking, "Activation": _activation_layer, "ReLU": _relu_layer,
    "LeakyReLU": _leaky_relu_layer,
    "PReLU": _prelu_layer, "ELU": _elu_layer, "ThresholdedReLU": _thresholded_relu_layer, "Softmax": _softmax_layer,
    "BatchNormalization": _batch_normalization, "LayerNormalization": _layer_normalization,
    "UnitNormalization": _unit_normalization, "Normalization": _normalization, "Rescaling": _rescaling,
    "Conv1D": _conv(1), "Conv2D": _conv(2), "Conv3D": _conv(3), "Convolution1D": _conv(1), "Convolution2D": _conv(2),
    "MaxPooling1D": _pool("MaxPool", 1), "MaxPooling2D": _pool("MaxPool", 2), "MaxPooling3D": _pool("MaxPool", 3),
    "MaxPool1D": _pool("MaxPool", 1), "MaxPool2D": _pool("MaxPool", 2), "MaxPool3D": _pool("MaxPool", 3),
    "AveragePooling1D": _pool("AveragePool", 1), "AveragePooling2D": _pool("AveragePool", 2),
    "AveragePooling3D": _pool("AveragePool", 3), "AvgPool1D": _pool("AveragePool", 1),
    "AvgPool2D": _pool("AveragePool", 2), "AvgPool3D": _pool("AveragePool", 3),
    "GlobalAveragePooling1D": _global_pool("ReduceMean", 1), "GlobalAveragePooling2D": _global_pool("ReduceMean", 2),
    "GlobalAveragePooling3D": _global_pool("ReduceMean", 3), "GlobalMaxPooling1D": _global_pool("ReduceMax", 1),
    "GlobalMaxPooling2D": _global_pool("ReduceMax", 2), "GlobalMaxPooling3D": _global_pool("ReduceMax", 3),
    "GlobalAvgPool1D": _global_pool("ReduceMean", 1), "GlobalAvgPool2D": _global_pool("ReduceMean", 2),
    "GlobalMaxPool1D": _global_pool("ReduceMax", 1), "GlobalMaxPool2D": _global_pool("ReduceMax", 2),
    "Flatten": _flatten, "Reshape": _reshape, "Permute": _permute, "RepeatVector": _repeat_vector,
    "Cropping1D": _cropping(1), "Cropping2D": _cropping(2), "Cropping3D": _cropping(3),
    "ZeroPadding1D": _zero_padding(1), "ZeroPadding2D": _zero_padding(2), "ZeroPadding3D": _zero_padding(3),
    "Add": _merge("Add"), "Subtract": _merge("Sub"), "Multiply": _merge("Mul"), "Maximum": _merge("Max"),
    "Minimum": _merge("Min"), "Average": _merge("Mean"), "Concatenate": _concatenate, "Dot": _dot,
    "Attention": _attention, "AdditiveAttention": _additive_attention, "MultiHeadAttention": _multi_head_attention,
    "TimeDistributed": _time_distributed,
    **{kind: _model_layer for kind in MODELS},
}


# ---- keras.ops operations in functional models ----

_OP_BINARY = {"Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Divide": "Div", "TrueDivide": "Div",
              "Maximum": "Max", "Minimum": "Min", "Power": "Pow", "Matmul": "MatMul"}
_OP_UNARY = {"Sigmoid": "Sigmoid", "Tanh": "Tanh", "Relu": "Relu", "Exp": "Exp", "Log": "Log", "Sqrt": "Sqrt",
             "Abs": "Abs", "Negative": "Neg", "Absolute": "Abs", "Softplus": "Softplus"}
#: keras.ops functions of x and x again: x·x, x·sigmoid(x).
_OP_SELF = {"Square": None, "Silu": "Sigmoid"}
_OP_REDUCE = {"Mean": "ReduceMean", "Sum": "ReduceSum", "Max": "ReduceMax", "Min": "ReduceMin", "Amax": "ReduceMax",
              "Amin": "ReduceMin"}
#: keras.ops functions on masks (Keras 3 records them computing the masks layers receive).
_OP_COMPARE = {"Equal": ("Equal", False), "NotEqual": ("Equal", True), "Greater": ("Greater", False),
               "Less": ("Less", False), "GreaterEqual": ("GreaterOrEqual", False), "LessEqual": ("LessOrEqual", False)}
_OP_LOGICAL = {"LogicalAnd": "And", "LogicalOr": "Or", "LogicalXor": "Xor"}
_OP_BOOL_REDUCE = {"Any": "ReduceMax", "All": "ReduceMin"}
KERAS_OPS = (*_OP_BINARY, *_OP_UNARY, *_OP_SELF, *_OP_REDUCE, *_OP_COMPARE, *_OP_LOGICAL, *_OP_BOOL_REDUCE,
             "LogicalNot", "ConvertToTensor", "OnesLike", "ZerosLike", "Concatenate", "Squeeze", "ExpandDims",
             "Transpose", "Reshape", "Softmax")


def _is_keras_op(layer) -> bool:
    """Whether a functional model's node is a keras.ops operation: its module says so (.keras, live), or
    (.h5 configs keep no module) its class is one and its config, unlike a layer's, has no 'trainable'."""
    return is_op(layer) or (not layer.get("module") and layer["class_name"] in KERAS_OPS
                            and "trainable" not in layer.get("config", {}))


def _operand(c: _Call, value) -> _T:
    """A tensor, or a Python number of a keras.ops call as a float32 constant."""
    if isinstance(value, _T):
        return value
    return _T(c.const(np.float32(_float(value, "a constant operand")), "constant"), ())


def _typed_operand(c: _Call, value, args) -> _T:
    """An operand of a comparison: a tensor, or a Python number as a constant of the other operand's dtype
    (Keras compares token ids with 0 as integers)."""
    if isinstance(value, _T):
        return value
    other = next(a for a in args if isinstance(a, _T))
    if isinstance(value, bool):
        return _T(c.const(np.bool_(value), "constant", np.bool_), (), "bool")
    number = _float(value, "a constant operand")
    if other.dtype == "int64" and number.is_integer() and abs(number) < 2**63:
        return _T(c.const(np.int64(number), "constant", np.int64), (), "int64")
    return _T(c.const(np.float32(number), "constant"), ())


def _keras_op(c: _Call, args, kwargs):
    """A keras.ops operation recorded in a functional model (``x + y``, ``keras.ops.squeeze(x, -1)``, ...):
    elementwise ops of tensors and numbers, reductions, reshapes and transposes with the arguments its
    config stores. Axes include the batch axis, as keras.ops counts them."""
    kind, config = c.kind, c.config
    kwargs = {k: v for k, v in kwargs.items() if not (k == "dtype" and kind in ("OnesLike", "ZerosLike")
                                                      and v in ("bool", None))}
    if kwargs:
        raise UnsupportedModelError(f"keyword arguments {sorted(kwargs)} are not supported")
    if kind in _OP_COMPARE or kind in _OP_LOGICAL:
        if len(args) != 2 or not any(isinstance(a, _T) for a in args):
            raise UnsupportedModelError("takes two operands, one of them a tensor")
        x, y = (_typed_operand(c, a, args) for a in args)
        if kind in _OP_LOGICAL:
            names = [t.name if t.dtype == "bool" else c.op("Cast", t.name, to=9) for t in (x, y)]   # 9: BOOL
            return [_T(c.op(_OP_LOGICAL[kind], *names), _broadcast_shape([x, y]), "bool")]
        op, negate = _OP_COMPARE[kind]
        out = c.op(op, x.name, y.name)
        return [_T(c.op("Not", out) if negate else out, _broadcast_shape([x, y]), "bool")]
    if kind in _OP_BINARY:
        if len(args) != 2 or not any(isinstance(a, _T) for a in args):
            raise UnsupportedModelError("takes two operands, one of them a tensor")
        x, y = (_operand(c, a) for a in args)
        return [_T(c.op(_OP_BINARY[kind], x.name, y.name),
                   (*x.shape[:-1], y.shape[-1]) if kind == "Matmul" else _broadcast_shape([x, y]))]
    if kind == "Concatenate":
        tensors = _tensor_list(args[0] if len(args) == 1 else args, "its input", 1, 4096)
        return _concatenate(c, [tensors], {})
    if len(args) != 1 or not isinstance(args[0], _T):
        raise UnsupportedModelError("takes one tensor")
    x = args[0]
    if kind == "ConvertToTensor":
        return [x]
    if kind == "LogicalNot":
        return [_T(c.op("Not", x.name if x.dtype == "bool" else c.op("Cast", x.name, to=9)), x.shape, "bool")]
    if kind in ("OnesLike", "ZerosLike"):      # (a mask's) bools of x's shape
        value = c.const(np.array(kind == "OnesLike"), "value", np.bool_)
        return [_T(c.op("Expand", value, c.op("Shape", x.name)), x.shape, "bool")]
    if kind in _OP_UNARY:
        return [_T(c.op(_OP_UNARY[kind], x.name), x.shape)]
    if kind in _OP_SELF:
        other = x.name if _OP_SELF[kind] is None else c.op(_OP_SELF[kind], x.name)
        return [_T(c.op("Mul", x.name, other), x.shape)]
    axis = config.get("axis")

    def axes_of(value, rank):
        values = value if isinstance(value, (list, tuple)) else [value]
        return tuple(sorted({_axis(a, rank, "axis", batch=True) for a in values}))

    if kind in _OP_REDUCE or kind in _OP_BOOL_REDUCE:
        keep = bool(config.get("keepdims", False))
        axes = axes_of(axis, x.rank) if axis is not None else tuple(range(x.rank))
        shape = tuple(1 if a in axes else d for a, d in enumerate(x.shape)) if keep else \
            tuple(d for a, d in enumerate(x.shape) if a not in axes)
        if kind in _OP_BOOL_REDUCE:
            source = x.name if x.dtype == "bool" else c.op("Cast", x.name, to=9)     # 9: BOOL
            return [_T(c.op(_OP_BOOL_REDUCE[kind], source, axes=axes, keepdims=int(keep)), shape, "bool")]
        return [_T(c.op(_OP_REDUCE[kind], x.name, axes=axes, keepdims=int(keep)), shape)]
    if kind == "Squeeze":
        axes = axes_of(axis, x.rank) if axis is not None else tuple(a for a, d in enumerate(x.shape) if d == 1)
        if any(x.shape[a] not in (1, None) for a in axes) or not axes:
            raise UnsupportedModelError(f"squeezes axis {axis!r} of {x.describe()}")
        return [_T(c.op("Squeeze", x.name, axes=axes), tuple(d for a, d in enumerate(x.shape) if a not in axes))]
    if kind == "ExpandDims":
        axes = axes_of(axis, x.rank + 1)
        shape = list(x.shape)
        for a in axes:
            shape.insert(a, 1)
        return [_T(c.op("Unsqueeze", x.name, axes=axes), tuple(shape))]
    if kind == "Transpose":
        perm = config.get("axes")
        perm = tuple(range(x.rank))[::-1] if perm is None else tuple(_axis(a, x.rank, "axes", batch=True)
                                                                       for a in perm)
        if sorted(perm) != list(range(x.rank)):
            raise ModelFormatError(f"axes {config.get('axes')!r} is not a permutation of {x.rank} axes")
        return [_T(c.op("Transpose", x.name, perm=perm), tuple(x.shape[a] for a in perm))]
    if kind == "Reshape":
        shape = config.get("newshape", config.get("new_shape"))
        if not isinstance(shape, (list, tuple)) or len(shape) > 32:
            raise ModelFormatError(f"newshape must be a list of sizes, got {_short(shape)}")
        dims = [-1 if d in (-1, None) else _int(d, "newshape") for d in shape]
        if dims.count(-1) > 1:
            raise ModelFormatError(f"newshape {shape!r} has more than one unknown size")
        return [_T(c.op("Reshape", x.name, c.ints(dims), allowzero=0),
                   tuple(None if d == -1 else d for d in dims))]
    if kind == "Softmax":
        axes = axes_of(axis if axis is not None else -1, x.rank)
        return [_T(_softmax(c, x.name, axes), x.shape)]
    raise UnsupportedModelError(f"keras.ops operation {kind} is not supported; grurt lowers {', '.join(KERAS_OPS)}")


# ---- models: calls in order, inputs and outputs ----

def _decode(value, legacy=False):
    """A config's call arguments with each tensor reference as a _Ref: Keras 3 writes
    ``{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, call, index]}}``, Keras 2
    ``[layer, call, index]`` lists in keyword arguments."""
    if isinstance(value, dict):
        config = value.get("config")
        history = config.get("keras_history") if isinstance(config, dict) else None
        if history is not None:
            return _Ref(_history(history))
        return {k: _decode(v, legacy) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if legacy and len(value) == 3 and isinstance(value[0], str) and all(type(i) is int for i in value[1:]):
            return _Ref(_history(value))
        return [_decode(v, legacy) for v in value]
    return value


def _history(value):
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not isinstance(value[0], str) \
            or not all(type(i) is int and i >= 0 for i in value[1:]):
        raise ModelFormatError(f"a tensor reference must be [layer name, call index, tensor index], got "
                               f"{_short(value)}")
    return tuple(value)


def _call_args(node):
    """(args, kwargs) of one inbound node, Keras 3 ``{args, kwargs}`` or Keras 2 ``[[layer, call, index,
    kwargs], ...]`` (one entry: the tensor; several: a list of them)."""
    if isinstance(node, dict):
        args, kwargs = _decode(node.get("args", [])), _decode(node.get("kwargs", {}))
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ModelFormatError(f"an inbound node must hold args and kwargs, got {_short(node)}")
        return args, kwargs
    if not isinstance(node, (list, tuple)) or not node:
        raise ModelFormatError(f"an inbound node must list tensors, got {_short(node)}")
    refs, kwargs = [], {}
    for entry in node:
        if not isinstance(entry, (list, tuple)) or len(entry) not in (3, 4):
            raise ModelFormatError(f"a Keras 2 inbound entry must be [layer, call, index(, kwargs)], got "
                                   f"{_short(entry)}")
        refs.append(_Ref(_history(entry[:3])))
        if len(entry) == 4 and entry[3]:
            if not isinstance(entry[3], dict):
                raise ModelFormatError(f"call keyword arguments must be a dict, got {_short(entry[3])}")
            kwargs.update(_decode(entry[3], legacy=True))
    return [refs[0] if len(refs) == 1 else refs], kwargs


def _refs(value):
    if isinstance(value, _Ref):
        return [value.key]
    if isinstance(value, (list, tuple)):
        return [k for v in value for k in _refs(v)]
    if isinstance(value, dict):
        return [k for v in value.values() for k in _refs(v)]
    return []


def _resolve(value, tensors):
    if isinstance(value, _Ref):
        return tensors[value.key]
    if isinstance(value, list):
        return [_resolve(v, tensors) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, tensors) for k, v in value.items()}
    return value


def _model_io(config, what):
    """[(key or None, ref)] of a functional model's input_layers / output_layers."""
    value = config.get(what)
    if isinstance(value, dict):
        named = [(str(k), ref) for k, item in value.items() for ref in _refs(_decode(item, legacy=True))]
        if len(named) != len(value):
            raise ModelFormatError(f"functional model: every entry of {what} must reference one tensor")
        return named
    value = _decode(value, legacy=True)
    if isinstance(value, _Ref):
        return [(None, value.key)]
    refs = _refs(value)
    if not refs:
        raise ModelFormatError(f"functional model: {what} lists no tensor")
    return [(None, ref) for ref in refs]


def _label(layer: str, call: int, index: int) -> str:
    if call == 0:
        return layer if index == 0 else f"{layer}:{index}"
    return f"{layer}:{call}:{index}"


def _structure(model_config):
    """(calls [(layer, call index, args, kwargs)], inputs [(key, ref, InputLayer)], outputs [(key, ref)]) of a
    functional or Sequential model (a Sequential model is a chain of calls)."""
    kind, config, layers = model_layers(model_config)
    by_name = {}
    for layer in layers:
        if by_name.setdefault(_layer_name(layer), layer) is not layer:
            raise ModelFormatError(f"{kind}: two layers are named {_layer_name(layer)!r}")
    if "input_layers" in config or "output_layers" in config:
        calls = []
        for layer in layers:
            if layer["class_name"] == "InputLayer":
                continue
            nodes = layer.get("inbound_nodes") or []
            if not isinstance(nodes, list):
                raise ModelFormatError(f"layer {_layer_name(layer)!r}: inbound_nodes must be a list")
            calls += [(layer, k, *_call_args(node)) for k, node in enumerate(nodes)]
        inputs = [(key, ref, by_name.get(ref[0])) for key, ref in _model_io(config, "input_layers")]
        return calls, inputs, _model_io(config, "output_layers")
    # Sequential: an InputLayer (Keras 3), or the first layer's batch_input_shape (Keras 2, whose input is
    # then named '<first layer>_input')
    chain = [layer for layer in layers if layer["class_name"] != "InputLayer"]
    if not chain:
        raise ModelFormatError(f"{kind} model has no layers")
    declared = next((layer for layer in layers if layer["class_name"] == "InputLayer"), None)
    if declared is None:
        first = chain[0].get("config", {})
        declared = {"class_name": "InputLayer", "config": {
            "name": f"{_layer_name(chain[0])}_input", "dtype": first.get("dtype"),
            "batch_shape": config.get("build_input_shape") or first.get("batch_input_shape")}}
    source = (_layer_name(declared), 0, 0)
    calls = []
    for layer in chain:
        calls.append((layer, 0, [_Ref(source)], {}))
        source = (_layer_name(layer), 0, 0)
    return calls, [(None, (_layer_name(declared), 0, 0), declared)], [(None, source)]


def _input_dtype(value) -> str:
    if isinstance(value, dict):                # Keras 3's DTypePolicy
        value = (value.get("config") or {}).get("name")
    value = str(value or "float32")
    if value.startswith(("int", "uint")):
        return "int64"
    if value == "bool":
        return "bool"
    if value.startswith(("float", "bfloat")) or value.startswith("mixed"):
        return "float32"
    raise UnsupportedModelError(f"inputs of dtype {value!r} are not supported")


def _input(layer, name):
    """A TensorInput of an InputLayer: batch_shape (Keras 3) or batch_input_shape (Keras 2), the batch
    a dim parameter shared by the inputs, other unknown sizes a parameter of their own."""
    config = layer.get("config", {}) if isinstance(layer, dict) else {}
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 32:
        raise UnsupportedModelError(f"input {name!r}: the model does not declare its input shape (batch_shape)")
    dims = ["batch"] + [f"{name}:{axis}" if d is None else _int(d, f"input {name!r}: size", 0)
                        for axis, d in enumerate(shape[1:], 1)]
    dtype = _input_dtype(config.get("dtype"))
    return TensorInput(name, dtype, tuple(dims)), _T(name, (None, *shape[1:]), dtype)


def _weight_count(layer, major) -> int:
    """How many arrays of a model's flat weight list belong to ``layer`` (a nested model lists its layers'
    weights in layer order, each layer's as its get_weights())."""
    kind, config = layer.get("class_name"), layer.get("config", {})
    bias = int(bool(config.get("use_bias", True)))
    if kind in ("Dense", "Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D"):
        return 1 + bias
    if kind == "GRU":
        return 2 + bias
    if kind == "EinsumDense":
        return 1 + (config.get("bias_axes") is not None)
    if kind == "Bidirectional":
        forward = _layer_config(config.get("layer"), "layer")
        return _weight_count(forward, major) + _weight_count(config.get("backward_layer") or forward, major)
    if kind == "TimeDistributed":
        return _weight_count(_layer_config(config.get("layer"), "layer"), major)
    if kind in MODELS:
        _, _, layers = model_layers(layer)
        return sum(_weight_count(inner, major) for inner in layers if not _is_keras_op(inner))
    if kind == "BatchNormalization":
        if major < 3:         # tf.keras lists a nested model's non-trainable weights after all trainable ones
            raise UnsupportedModelError("BatchNormalization inside a Keras 2 nested model is not supported "
                                        "(tf.keras stores its statistics apart from its layer)")
        return int(bool(config.get("scale", True))) + int(bool(config.get("center", True))) + 2
    if kind == "LayerNormalization":
        return int(bool(config.get("scale", True))) + int(bool(config.get("center", True)))
    if kind in ("Embedding", "PReLU"):
        return 1
    if kind == "MultiHeadAttention":
        return (4 + bool(config.get("use_gate", False))) * (1 + bias)
    if kind == "Attention":
        return int(bool(config.get("use_scale", False))) + (config.get("score_mode", "dot") == "concat")
    if kind == "AdditiveAttention":
        return int(bool(config.get("use_scale", True)))
    if kind == "Normalization":
        return 0 if config.get("mean") is not None else 3
    return 0


def _split_weights(model_config, flat, major):
    """A nested model's flat weight list → weights by layer name."""
    _, _, layers = model_layers(model_config)
    weights, start = {}, 0
    for layer in layers:
        if _is_keras_op(layer):
            continue
        count = _weight_count(layer, major)
        weights[_layer_name(layer)] = list(flat[start:start + count])
        start += count
    if start != len(flat):
        raise ModelFormatError(f"the nested model holds {len(flat)} weight arrays, its layers take {start}")
    return weights


def _lower_model(graph: GraphBuilder, model_config, weights, major, version, prefix, inputs=None):
    """Lower a model's calls into ``graph``. At the top (``inputs`` None): (TensorInputs, [(tensor,
    output name)]); a nested model (``inputs`` its input tensors, ``weights`` its flat list): its output
    tensors."""
    calls, declared, outputs = _structure(model_config)
    if inputs is not None:
        weights = _split_weights(model_config, weights, major)
        if len(inputs) != len(declared) or not all(isinstance(t, _T) for t in inputs):
            raise UnsupportedModelError(f"the nested model takes {len(declared)} input(s), called with "
                                        f"{len(inputs)}")
    tensors, graph_inputs, final = {}, [], {}
    if inputs is None:
        final = _output_names(outputs)
        graph.taken.update(final.values())
    for position, (key, ref, layer) in enumerate(declared):
        if layer is None or layer.get("class_name") != "InputLayer" or ref[1:] != (0, 0):
            raise ModelFormatError(f"the model's input {list(ref)} is not an InputLayer")
        if inputs is not None:
            tensors[ref] = inputs[position]
            continue
        name = key if key is not None else ref[0]
        if name in graph.taken:
            raise ModelFormatError(f"input name {name!r} is also the name of an output or another input")
        graph.taken.add(name)
        tensor_input, tensors[ref] = _input(layer, name)
        graph_inputs.append(tensor_input)
    _ordered(calls, set(tensors))          # every tensor read is computed, no cycle
    removed = _RemovedMasks()
    for layer, call, args, kwargs in _keras_order(calls, outputs):
        name = _layer_name(layer)
        missing = [ref for ref in _refs([args, kwargs]) if ref not in tensors]
        if missing:
            raise ModelFormatError(f"layer {name!r} reads tensor {list(missing[0])}, which layer {missing[0][0]!r} "
                                   "does not give")
        args, kwargs = removed.read(_resolve(args, tensors), _resolve(kwargs, tensors))
        results = _lower_layer(graph, layer, weights.get(name, []), major, version, prefix, args, kwargs, call)
        if layer["class_name"] == "MultiHeadAttention":
            removed.remove(_tensors([args, list(kwargs.values())]))
        for index, tensor in enumerate(results):
            tensors[(name, call, index)] = tensor
    missing = [ref for _, ref in outputs if ref not in tensors]
    if missing:
        raise ModelFormatError(f"the model's output {list(missing[0])} is not computed by any layer")
    if inputs is not None:
        return [tensors[ref] for _, ref in outputs]
    return graph_inputs, [(tensors[ref].name, final[ref]) for _, ref in outputs]


class _RemovedMasks:
    """Keras 3's MultiHeadAttention removes the masks of its query, value and key tensors when it runs
    (``set_keras_mask(x, None)``): the calls Keras runs after it (:func:`_keras_order`) read them
    unmasked, unless Keras hands the call the mask it recorded for it."""

    def __init__(self):
        self.removed = set()       # names of the tensors whose mask an attention removed

    def read(self, args, kwargs):
        if kwargs.get("mask") is not None:
            return args, kwargs

        def visit(value):
            if isinstance(value, _T) and value.mask and value.name in self.removed:
                return replace(value, mask=None)
            if isinstance(value, list):
                return [visit(v) for v in value]
            if isinstance(value, dict):
                return {k: visit(v) for k, v in value.items()}
            return value
        return visit(args), visit(kwargs)

    def remove(self, tensors):
        self.removed.update(t.name for t in tensors if t.mask)


def _keras_order(calls, outputs):
    """The calls in the order Keras 3 runs a functional model (``keras.src.ops.function``: ``_build_map``'s
    depth-first walk from the outputs, ``map_graph``'s depths, the deepest first, those of one depth in
    the order the walk met them): the order decides what reads a mask a MultiHeadAttention removes."""
    by_key = {(_layer_name(layer), call): (layer, call, args, kwargs) for layer, call, args, kwargs in calls}

    def parents(key):
        if key not in by_key:                           # an input
            return []
        _, _, args, kwargs = by_key[key]
        return [ref[:2] for ref in _refs([args, [kwargs[k] for k in sorted(kwargs)]])]   # tree.flatten's order

    walked, finished = [], set()
    for _, ref in sorted(outputs, key=lambda item: item[0]) if all(k is not None for k, _ in outputs) else outputs:
        stack = [(ref[:2], False)]
        while stack:                                    # post-order, parents in their order
            key, done = stack.pop()
            if done:
                if key not in finished:
                    finished.add(key)
                    walked.append(key)
                continue
            if key in finished:
                continue
            stack.append((key, True))
            stack.extend((p, False) for p in reversed(parents(key)) if p not in finished)
    depths, layer_depths = {}, {}
    for key in reversed(walked):
        depth = max(depths.setdefault(key, 0), layer_depths.get(key[0], 0))
        depths[key] = layer_depths[key[0]] = depth
        for parent in parents(key):
            depths[parent] = max(depth + 1, depths.get(parent, 0))
    ranked = sorted(((-d, i, key) for i, (key, d) in enumerate(depths.items())))
    return [by_key[key] for _, _, key in ranked if key in by_key]


def _output_names(outputs):
    """Keras's output names: the dict keys, else the name of the layer computing each (``layer:index``
    for the others of a layer giving several)."""
    names, seen = {}, {}
    by_layer = {}
    for _, ref in outputs:
        by_layer.setdefault(ref[0], []).append(ref)
    for position, (key, ref) in enumerate(outputs):
        if ref in seen:
            raise UnsupportedModelError(f"outputs {seen[ref]} and {position} of the model are the same tensor "
                                        f"(layer {ref[0]!r}); grurt gives each tensor once")
        seen[ref] = position
        if key is not None:
            names[ref] = key
        elif len(by_layer[ref[0]]) == 1 or ref == min(by_layer[ref[0]], key=lambda r: (r[1], r[2])):
            names[ref] = ref[0]
        else:
            names[ref] = _label(*ref)
    if len(set(names.values())) != len(names):
        raise ModelFormatError(f"two outputs of the model have one name ({sorted(names.values())})")
    return names


def _ordered(calls, available):
    """The calls in an order where each one's tensors are computed before it (Kahn's algorithm)."""
    produced = {}
    for position, (layer, call, _, _) in enumerate(calls):
        produced[(_layer_name(layer), call)] = position
    waiting, readers, ready = {}, {}, []
    for position, (layer, call, args, kwargs) in enumerate(calls):
        needs = set()
        for ref in _refs([args, kwargs]):
            if ref in available:
                continue
            source = produced.get(ref[:2])
            if source is None:
                raise ModelFormatError(f"layer {_layer_name(layer)!r} reads tensor {list(ref)}, which no layer of the "
                                       "model computes")
            needs.add(source)
        waiting[position] = len(needs)
        for source in needs:
            readers.setdefault(source, []).append(position)
        if not needs:
            ready.append(position)
    order = []
    while ready:
        position = ready.pop()
        order.append(position)
        for reader in readers.get(position, []):
            waiting[reader] -= 1
            if not waiting[reader]:
                ready.append(reader)
    if len(order) != len(calls):
        stuck = next(p for p in waiting if waiting[p])
        raise ModelFormatError(f"layer {_layer_name(calls[stuck][0])!r}: the layers form a cycle")
    return [calls[p] for p in order]


def _lower_layer(graph, layer, weights, major, version, prefix, args, kwargs, call=0):
    """The output tensors of one call of one layer; errors name the layer (and the call)."""
    kind, name = layer["class_name"], _layer_name(layer)
    where = f"layer {name!r} ({kind})" if call == 0 else f"layer {name!r} ({kind}, call {call})"
    config = layer.get("config", {})
    base = f"{prefix}{_label(name, call, 0)}"
    try:
        kwargs = dict(kwargs)
        if kwargs.pop("training", None):
            raise UnsupportedModelError("is called with training=True")
        recorded = kwargs.pop("mask", None)
        if recorded is not None:          # Keras 3 records the mask a layer receives: it reads that one
            args = _recorded_mask(graph, args, recorded, base)
        if _is_keras_op(layer):           # an operation drops masks
            return _keras_op(_Call(graph, kind, name, config, weights, major, version, base), _unmasked(args), kwargs)
        if kind in IDENTITY:
            return [_one(args, kwargs)]
        if kind == "Lambda":
            raise UnsupportedModelError("a Lambda layer holds Python code (a marshalled function), which grurt does "
                                        "not run: replace it by Keras layers or keras.ops operations")
        lowering = _LOWERINGS.get(kind)
        if lowering is None:
            custom = layer.get("registered_name") not in (None, kind) or not str(layer.get("module") or "keras"
                                                                                    ).startswith("keras")
            raise UnsupportedModelError("is a custom layer class, whose Python code grurt does not run" if custom else
                                        "is not supported (docs/keras.md lists the layers grurt converts)")
        dtype = config.get("dtype")
        if isinstance(dtype, dict) and "Quantized" in str(dtype.get("class_name")):
            raise UnsupportedModelError("quantized layers are not supported")
        if kind != "Embedding":           # Keras layers compute in float32 (integer inputs are cast)
            args = _as_float(graph, args, base)
        results = lowering(_Call(graph, kind, name, config, weights, major, version, base), args, kwargs)
        first = next(iter(_tensors(args)), None)
        if kind in KEEPS_MASK and first is not None and first.mask and results[0].mask is None:
            results[0] = replace(results[0], mask=first.mask)
        return results
    except GrurtError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # a hostile config
        raise ModelFormatError(f"{where}: malformed config or weights ({type(exc).__name__}: {exc})") from None


def _tensors(value):
    """The tensors of a call's arguments, in order."""
    if isinstance(value, _T):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _recorded_mask(graph, args, recorded, base):
    """The call's arguments, its first tensor masked by ``recorded``: the ``mask=`` Keras 3 records in a
    functional config (computed by keras.ops operations it records too, or given by hand), as bool."""
    first = next(iter(_tensors(args)), None)
    if not isinstance(recorded, _T) or first is None or recorded.rank != 2 or first.rank < 2:
        raise UnsupportedModelError(f"is called with mask={_short(recorded)}; grurt reads one (batch, time) mask of "
                                    "the sequence it is called on")
    mask = recorded.name if recorded.dtype == "bool" else graph.add("Cast", [recorded.name], {"to": 9}, f"{base}/Cast")

    def masked(value):
        if value is first:
            return replace(value, mask=mask)
        return [masked(v) for v in value] if isinstance(value, list) else value
    return masked(args)


def _unmasked(value):
    if isinstance(value, _T):
        return replace(value, mask=None)
    if isinstance(value, list):
        return [_unmasked(v) for v in value]
    return value


def _as_float(graph, value, base):
    if isinstance(value, _T) and value.dtype != "float32":
        return replace(value, name=graph.add("Cast", [value.name], {"to": 1}, f"{base}/Cast"), dtype="float32")  # FLOAT
    if isinstance(value, list):
        return [_as_float(graph, v, base) for v in value]
    return value


def lower_keras(model_config: dict, weights: dict, keras_version: str) -> TensorGraph:
    """A Keras model config and its weights (by layer name) → a TensorGraph whose inputs and outputs keep
    Keras's names (inputs: the InputLayers' or the dict's keys; outputs: the layers computing them)."""
    graph = GraphBuilder()
    inputs, outputs = _lower_model(graph, model_config, weights, _major(keras_version), str(keras_version), "")
    return graph.build(inputs, outputs)


def tensor_model_from_keras(model_config: dict, weights: dict, keras_version: str):
    """The :class:`~grurt.tensor_model.TensorModel` of a Keras model (:func:`lower_keras`)."""
    from ...tensor_model import TensorModel

    return TensorModel(lower_keras(model_config, weights, keras_version))
