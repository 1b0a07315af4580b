"""Keras model config and weights → grurt layers: :func:`spec_from_keras` (the conventions
table is in :mod:`grurt.importers.keras`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import GrurtError, ModelFormatError, UnsupportedModelError
from ...spec import (GRU, LAYER_TYPES, MERGE_MODES, Activation, ActivationFunction, Dense, Merge, ModelSpec, Reverse,
                    Scale, activation, batchnorm_affine)
from ...spec import Embedding, Flatten, GlobalPool, LayerNorm, UnitNorm
from ...spec import TIME_LAYERS, Conv1D, Pool1D, ZeroPad1D, append_folded
from ...graph import (GRAPH_LAYERS, ONE_INPUT_LAYERS, Crop, Masking, PReLU, Repeat, Unflatten, mask_survives,
                      node_output, path_graph)

#: Layers that do nothing at inference.
_NO_OPS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout")


# ---- the model's structure ----

def _layer_name(layer) -> str:
    config = layer.get("config")
    return (config.get("name") if isinstance(config, dict) else None) or layer.get("name")


def model_layers(model_config):
    """(class name, config, every layer's config) of a Sequential or functional model config."""
    if not isinstance(model_config, dict) or "config" not in model_config:
        raise ModelFormatError("the model config has no 'config' entry")
    kind, config = model_config.get("class_name"), model_config["config"]
    if isinstance(config, list):  # Keras ≤ 2.2 Sequential
        config = {"layers": config}
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise UnsupportedModelError(f"{kind} models are not supported: grurt reads Sequential and functional models")
    layers = config["layers"]
    if not all(isinstance(layer, dict) and isinstance(layer.get("class_name"), str)
               and isinstance(layer.get("config", {}), dict) and _layer_name(layer) for layer in layers):
        raise ModelFormatError(f"{kind}: every layer needs a class_name and a name")
    return kind, config, layers


def is_graph(model_config) -> bool:
    """Whether the model is a functional model that is no simple chain (see :func:`_functional_chain`)."""
    _, config, layers = model_layers(model_config)
    return "input_layers" in config and _functional_chain(config, layers) is None


def _chain(model_config):
    """The layers in call order, InputLayers left out, and the declared input shape (or None)."""
    kind, config, layers = model_layers(model_config)
    if "input_layers" not in config:
        inputs = [layer for layer in layers if layer["class_name"] == "InputLayer"]
        chain = [layer for layer in layers if layer["class_name"] != "InputLayer"]
        declared = inputs[0] if inputs else (chain[0] if chain else {})
        return chain, _batch_shape(declared) or _shape(config.get("build_input_shape"))
    chain = _functional_chain(config, layers)
    if chain is None:
        raise UnsupportedModelError(f"{kind} model is a graph (several inputs or outputs, branches, merges or "
                                    "states passed between layers), not a simple chain of layers")
    return chain[1:], _batch_shape(chain[0])


def _functional_chain(config, layers):
    """The functional model's layers from its input to its output, the InputLayer first, when the
    model is a simple chain: one input, one output, every layer on the way called once on the
    first output of the one before, no GRU returning its state. Else None."""
    by_name = {_layer_name(layer): layer for layer in layers}
    inputs, outputs = tensor_refs(config["input_layers"]), tensor_refs(config.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1 or outputs[0][1:] != (0, 0):
        return None
    chain, name = [], outputs[0][0]
    while name != inputs[0][0]:
        if name not in by_name or len(chain) > len(layers):
            raise ModelFormatError(f"functional model: layer {name!r} is missing or the layers form a cycle")
        layer = by_name[name]
        nodes = layer.get("inbound_nodes") or []
        sources = value_refs(nodes[0]) if len(nodes) == 1 else []
        masks = mask_refs(nodes[0]) if len(nodes) == 1 else []
        if len(sources) != 1 or sources[0][1:] != (0, 0) or _returns_state(layer) or is_op(layer) \
                or not all(is_op(by_name.get(ref[0], {})) for ref in masks):     # a mask made by hand
            return None
        chain.append(layer)
        name = sources[0][0]
    chain.append(by_name[name])
    chain.reverse()
    return chain


#: The keras.ops operations grurt converts (x + y, keras.ops.maximum(x, y), keras.ops.sigmoid(x), ...).
OPS = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Concatenate", "Sigmoid")


def is_op(layer) -> bool:
    """Whether the layer is a keras.ops operation (an operator on tensors, such as x + y): its module
    says so; an .h5 config keeps no module, and an operation's config, unlike a layer's, has no
    'trainable'."""
    module = str(layer.get("module") or "")
    return module.startswith("keras.src.ops") or (not module and layer.get("class_name") not in (None, "InputLayer")
                                                   and "trainable" not in layer.get("config", {}))


def _returns_state(layer) -> bool:
    config = layer.get("config", {})
    inner = config.get("layer")     # Bidirectional
    return bool(config.get("return_state") or isinstance(inner, dict) and isinstance(inner.get("config"), dict)
                and inner["config"].get("return_state"))


def value_refs(node):
    """The tensors an inbound node reads as values: all but a Keras 3 ``mask=`` argument (Keras 3
    records the mask a layer receives; grurt derives masks by Keras's rule)."""
    if isinstance(node, dict) and isinstance(node.get("kwargs"), dict) and "mask" in node["kwargs"]:
        node = {**node, "kwargs": {k: v for k, v in node["kwargs"].items() if k != "mask"}}
    return tensor_refs(node)


def mask_refs(node):
    """The tensors of a Keras 3 inbound node's ``mask=`` argument."""
    return tensor_refs(node["kwargs"].get("mask")) if isinstance(node, dict) and isinstance(
        node.get("kwargs"), dict) else []


def tensor_refs(value):
    """The tensors referenced in an inbound node or an input/output list, as (layer name, node
    index, tensor index). Keras 3 writes ``{"config": {"keras_history": [name, node, index]}}``,
    Keras 2 ``[name, node, index(, kwargs)]``, nested in lists (tuples in live configs) and dicts.
    """
    if isinstance(value, dict):
        config = value.get("config")
        history = config.get("keras_history") if isinstance(config, dict) else None
        if history is not None:
            return [_history(history)]
        return [ref for v in value.values() for ref in tensor_refs(v)]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], str):
            return [_history(value[:3])] + tensor_refs(value[3:])
        return [ref for v in value for ref in tensor_refs(v)]
    return []


def _history(value):
    if (not isinstance(value, (list, tuple)) or len(value) != 3 or not isinstance(value[0], str)
            or not all(type(i) is int and i >= 0 for i in value[1:])):
        raise ModelFormatError(f"a tensor reference must be [layer name, node index, tensor index], got {value!r}")
    return tuple(value)


def _batch_shape(layer):
    config = layer.get("config", {})
    return _shape(config.get("batch_shape") or config.get("batch_input_shape"))


def _shape(value):
    return value if isinstance(value, (list, tuple)) else None


# ---- Keras's GRU, activations and batch normalisation ----

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


def keras_dense(kernel, bias=None):
    """A Keras ``Dense`` → (W (out, in), b (out,)): the kernel is stored (in, out); no bias is zeros."""
    W = np.asarray(kernel).T
    return W, np.zeros(W.shape[0], np.float32) if bias is None else np.asarray(bias)


# Keras activation names grurt computes → the grurt activation and its arguments (where grurt's
# default differs; gelu is the exact form, the default of Keras 2 and 3 for the name "gelu")
_KERAS_ACTIVATIONS = {"linear": ("linear",), "sigmoid": ("sigmoid",), "tanh": ("tanh",), "relu": ("relu",),
                      "softsign": ("softsign",), "softplus": ("softplus",), "softmax": ("softmax",),
                      "elu": ("elu",), "leaky_relu": ("leaky_relu", 0.2), "gelu": ("gelu",), "silu": ("silu",),
                      "swish": ("silu",), "mish": ("mish",), "selu": ("selu",), "hard_silu": ("hard_silu",),
                      "hard_swish": ("hard_silu",), "relu6": ("clip", 0.0, 6.0), "hard_tanh": ("clip", -1.0, 1.0)}


def keras_activation(name, keras_major: int) -> ActivationFunction:
    """A Keras activation name → ActivationFunction. ``hard_sigmoid`` changed formula in Keras 3:
    clip(x/6 + 0.5, 0, 1), where Keras 2 computes clip(0.2·x + 0.5, 0, 1)."""
    if name == "hard_sigmoid":
        return activation("hard_sigmoid", 1 / 6 if keras_major >= 3 else 0.2, 0.5)
    if name is None:
        return activation("linear")
    if isinstance(name, str) and name in _KERAS_ACTIVATIONS:
        return activation(*_KERAS_ACTIVATIONS[name])
    raise UnsupportedModelError(f"unsupported Keras activation {name!r}; grurt computes "
                                f"{', '.join(_KERAS_ACTIVATIONS)} and hard_sigmoid")


# ---- layers ----

@dataclass
class _Layer:
    """One Keras layer being translated, with what is known about its input."""

    kind: str
    name: str
    config: dict
    weights: list
    keras_major: int
    features: int
    has_time: bool
    steps: object = None          # the input's fixed number of time steps, if the input shape gives one
    keras_version: str = "3"
    masked: bool = False          # the input's steps are masked (Masking, mask_zero; Keras's rule, mask_survives)
    custom: object = None         # what custom_layers maps this layer's class to

    def where(self) -> str:
        return f"layer {self.name!r} ({self.kind})"

    def activation(self, key, default="linear"):
        return keras_activation(self.config.get(key, default), self.keras_major)

    def expect_weights(self, count):
        if len(self.weights) != count:
            raise ModelFormatError(f"has {len(self.weights)} weight arrays, expected {count}")

    @staticmethod
    def expect_shape(label, array, shape):
        if np.shape(array) != tuple(shape):
            raise ModelFormatError(f"{label} has shape {np.shape(array)}, expected {tuple(shape)}")

    def last_axis(self, axis):
        """Refuse any ``axis`` (an int or a one-element list) but the feature axis."""
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, 2 if self.has_time else 1):
            raise UnsupportedModelError(f"axis={axis!r}; only the last (feature) axis is supported")

    def scale(self, a, c):
        return Scale(np.broadcast_to(a, (self.features,)), np.broadcast_to(c, (self.features,)))


def _gru_parts(layer: _Layer, config: dict, weights: list):
    """One Keras GRU → (W, R, B, settings shared by directions, go_backwards)."""
    for option in ("return_state", "time_major"):
        if config.get(option):
            raise UnsupportedModelError(f"{option}=True is not supported")
    units, use_bias = config.get("units"), config.get("use_bias", True)
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ModelFormatError(f"units must be a positive integer, got {units!r}")
    if len(weights) != 2 + use_bias:
        raise ModelFormatError(f"has {len(weights)} weight arrays, expected {2 + use_bias}")
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if use_bias else None
    reset_after = config.get("reset_after", bias is None or np.ndim(bias) == 2)
    layer.expect_shape("kernel", kernel, (layer.features, 3 * units))
    layer.expect_shape("recurrent_kernel", recurrent, (units, 3 * units))
    if use_bias:
        layer.expect_shape("bias", bias, (2, 3 * units) if reset_after else (3 * units,))
    settings = dict(linear_before_reset=bool(reset_after),
                    gate_activation=keras_activation(config.get("recurrent_activation", "sigmoid"), layer.keras_major),
                    candidate_activation=keras_activation(config.get("activation", "tanh"), layer.keras_major),
                    return_sequences=bool(config.get("return_sequences", False)))
    return keras_gru_direction(kernel, recurrent, bias, reset_after), settings, bool(config.get("go_backwards"))


def _gru(layer: _Layer):
    (W, R, B), settings, backwards = _gru_parts(layer, layer.config, layer.weights)
    gru = GRU(W[None], R[None], B[None], direction="reverse" if backwards else "forward", **settings)
    # go_backwards returns its sequence in reversed time order
    return [gru, Reverse()] if backwards and gru.return_sequences else [gru]


def _bidirectional(layer: _Layer):
    forward = layer.config["layer"]
    # Keras 2 writes backward_layer only when the user gave one; otherwise it mirrors the forward layer
    mirror = {**forward["config"], "go_backwards": not forward["config"].get("go_backwards")}
    backward = layer.config.get("backward_layer") or {"class_name": forward["class_name"], "config": mirror}
    if forward.get("class_name") != "GRU" or backward.get("class_name") != "GRU":
        raise UnsupportedModelError(f"wraps {forward.get('class_name')}; grurt runs Bidirectional(GRU)")
    half = len(layer.weights) // 2
    fwd, fwd_settings, fwd_backwards = _gru_parts(layer, forward["config"], layer.weights[:half])
    bwd, bwd_settings, bwd_backwards = _gru_parts(layer, backward["config"], layer.weights[half:])
    if fwd_backwards or not bwd_backwards or fwd_settings != bwd_settings or fwd[1].shape != bwd[1].shape:
        raise UnsupportedModelError("the forward and backward GRUs must mirror each other")
    W, R, B = (np.stack(pair) for pair in zip(fwd, bwd))
    gru = GRU(W, R, B, direction="bidirectional", **fwd_settings)
    # Keras flips the backward output back in time and merges; the canonical layer concatenates.
    merge = layer.config.get("merge_mode", "concat")
    if merge == "concat":
        return [gru]
    if merge in MERGE_MODES:
        return [gru, Merge(merge)]
    raise UnsupportedModelError(f"merge_mode={merge!r} is not supported; use concat, sum, ave or mul")


def _dense(layer: _Layer):
    units, use_bias = layer.config.get("units"), layer.config.get("use_bias", True)
    layer.expect_weights(1 + use_bias)
    kernel = layer.weights[0]
    layer.expect_shape("kernel", kernel, (layer.features, units))
    bias = layer.weights[1] if use_bias else None
    if use_bias:
        layer.expect_shape("bias", bias, (units,))
    return [Dense(*keras_dense(kernel, bias), layer.activation("activation"))]


def _time_distributed(layer: _Layer):
    inner = layer.config.get("layer", {})
    if inner.get("class_name") != "Dense" or not layer.has_time:
        raise UnsupportedModelError(f"wraps {inner.get('class_name')}; grurt runs TimeDistributed(Dense) on sequences")
    return _dense(_Layer(**{**vars(layer), "config": inner.get("config", {})}))


def _activation(layer: _Layer):
    return [Activation(layer.activation("activation"))]


# ---- activation layers (issue 21) ----

def _number(layer: _Layer, key, default, least=None):
    value = layer.config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or (least is not None and value < least):
        raise ModelFormatError(f"{key} must be a finite number" + (f" >= {least}" if least is not None else "")
                               + f", got {value!r}")
    return float(value)


def _relu(layer: _Layer):
    """Keras ReLU(max_value, negative_slope, threshold): x > θ ? min(x, max_value) : slope·(x − θ)."""
    slope, threshold = _number(layer, "negative_slope", 0.0, 0.0), _number(layer, "threshold", 0.0, 0.0)
    maximum = layer.config.get("max_value")
    if maximum is not None:
        maximum = _number(layer, "max_value", None, 0.0)
    if (slope != 0.0) + (threshold != 0.0) + (maximum is not None) > 1:
        raise UnsupportedModelError(f"max_value={maximum!r}, negative_slope={slope!r}, threshold={threshold!r}: "
                                    "grurt computes a ReLU with one of them at most")
    if slope:
        return [Activation(activation("leaky_relu", slope))]
    if threshold:
        return [Activation(activation("thresholded_relu", threshold))]
    if maximum is not None:
        return [Activation(activation("clip", 0.0, maximum))]
    return [Activation(activation("relu"))]


def _leaky_relu(layer: _Layer):
    # Keras 3 calls the slope negative_slope, Keras 2 alpha; the layer's default is 0.3 in both
    key = "negative_slope" if "negative_slope" in layer.config else "alpha"
    return [Activation(activation("leaky_relu", _number(layer, key, 0.3)))]


def _elu(layer: _Layer):
    return [Activation(activation("elu", _number(layer, "alpha", 1.0)))]


def _thresholded_relu(layer: _Layer):        # Keras 2: x > theta ? x : 0
    return [Activation(activation("thresholded_relu", _number(layer, "theta", 1.0)))]


def _softmax(layer: _Layer):
    layer.last_axis(layer.config.get("axis", -1))
    if layer.masked:
        # Keras passes the (batch, time) mask to the softmax over features: an error or a broadcast
        raise UnsupportedModelError("a Softmax layer after Masking / mask_zero is not supported (Keras applies "
                                    "the (batch, time) mask along the feature axis); use Activation('softmax')")
    return [Activation(activation("softmax"))]


def _prelu(layer: _Layer):
    """alpha has the shape of one input sample, 1 on the shared axes: (T, F), (1, F), (T, 1) or
    (1, 1) for sequences, (F,) or (1,) for vectors."""
    layer.expect_weights(1)
    alpha = np.asarray(layer.weights[0])
    sample = (layer.steps if isinstance(layer.steps, int) else None, layer.features) if layer.has_time \
        else (layer.features,)
    if alpha.ndim != len(sample) or any(a != 1 and a != s for a, s in zip(alpha.shape, sample)):
        raise ModelFormatError(f"alpha has shape {alpha.shape}; an input sample is {sample} "
                               "(a shared axis is 1)")
    if alpha.size == 1:
        return [Activation(activation("leaky_relu", float(alpha.reshape(-1)[0])))]
    if not layer.has_time or alpha.shape[0] == 1:
        return [PReLU(alpha.reshape(-1))]               # (F,) or (1, F): one per feature
    return [PReLU(np.broadcast_to(alpha, sample))]      # one per step: a fixed number of steps


def _batch_normalization(layer: _Layer):
    config = layer.config
    layer.last_axis(config.get("axis", -1))
    if config.get("renorm"):
        raise UnsupportedModelError("renorm=True is not supported")
    scale, center = config.get("scale", True), config.get("center", True)
    layer.expect_weights(scale + center + 2)
    for index, array in enumerate(layer.weights):
        layer.expect_shape(f"weight {index}", array, (layer.features,))
    weights = list(layer.weights)
    gamma = weights.pop(0) if scale else None
    beta = weights.pop(0) if center else None
    return [Scale(*batchnorm_affine(weights[0], weights[1], config.get("epsilon", 1e-3), gamma, beta))]


def _normalization(layer: _Layer):
    config = layer.config
    layer.last_axis(config.get("axis", -1))
    if layer.weights:  # adapted: mean, variance, count
        mean, variance = layer.weights[0], layer.weights[1]
    else:
        mean, variance = config.get("mean"), config.get("variance")
    mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
    std = np.maximum(np.sqrt(variance), 1e-7)  # Keras divides by max(√var, epsilon())
    return [layer.scale(*((std, mean) if config.get("invert") else (1.0 / std, -mean / std)))]


def _rescaling(layer: _Layer):
    return [layer.scale(np.asarray(layer.config.get("scale", 1.0), np.float64),
                        np.asarray(layer.config.get("offset", 0.0), np.float64))]


def _flatten(layer: _Layer):
    if layer.has_time:
        return _flatten_sequence(layer)
    return []


_LAYERS = {"GRU": _gru, "Bidirectional": _bidirectional, "Dense": _dense, "TimeDistributed": _time_distributed,
           "Activation": _activation, "ReLU": _relu, "LeakyReLU": _leaky_relu, "ELU": _elu, "Softmax": _softmax,
           "PReLU": _prelu, "ThresholdedReLU": _thresholded_relu, "BatchNormalization": _batch_normalization,
           "Normalization": _normalization, "Rescaling": _rescaling, "Flatten": _flatten,
           **{kind: lambda layer: [] for kind in _NO_OPS}}


# ---- Embedding, LayerNormalization, UnitNormalization, global pooling, Flatten of a sequence (issue 12) ----

def _embedding(layer: _Layer):
    layer.expect_weights(1)
    table = layer.weights[0]
    dims = (layer.config.get("input_dim"), layer.config.get("output_dim"))
    layer.expect_shape("embeddings", table, dims)
    return ([Masking(0)] if layer.config.get("mask_zero") else []) + [Embedding(table)]   # id 0 masks the step


def _masking(layer: _Layer):
    return [Masking(_number(layer, "mask_value", 0.0))]


def _layer_normalization(layer: _Layer):
    config = layer.config
    layer.last_axis(config.get("axis", -1))
    if config.get("rms_scaling"):
        raise UnsupportedModelError("rms_scaling=True is not supported")
    scale, center = config.get("scale", True), config.get("center", True)
    layer.expect_weights(scale + center)
    for index, array in enumerate(layer.weights):
        layer.expect_shape(f"weight {index}", array, (layer.features,))
    weights = list(layer.weights)
    gamma = weights.pop(0) if scale else np.ones(layer.features, np.float32)
    beta = weights.pop(0) if center else np.zeros(layer.features, np.float32)
    return [LayerNorm(gamma, beta, config.get("epsilon", 1e-3))]


def _unit_normalization(layer: _Layer):
    layer.last_axis(layer.config.get("axis", -1))
    major, minor = _version(layer.keras_version)
    # Keras ≥ 3.6: x·min(1/‖x‖, 1/ε) = x / max(‖x‖, ε); before (and tf.keras): x·rsqrt(max(Σx², ε)), ε = 1e-12
    floors_norm = major > 3 or (major == 3 and (minor is None or minor >= 6))
    return [UnitNorm(1e-12 if floors_norm else 1e-6)]


def _global_pooling(mode):
    def convert(layer: _Layer):
        if layer.config.get("data_format", "channels_last") != "channels_last":
            raise UnsupportedModelError(f"data_format={layer.config['data_format']!r}; grurt pools (B, T, F) "
                                        "sequences (channels_last)")
        if layer.config.get("keepdims"):
            raise UnsupportedModelError("keepdims=True is not supported")
        if not layer.has_time:
            raise UnsupportedModelError("its input has no time axis")
        return [GlobalPool(mode)]
    return convert


def _flatten_sequence(layer: _Layer):
    if not isinstance(layer.steps, int) or isinstance(layer.steps, bool) or layer.steps < 1:
        raise UnsupportedModelError("flattening a sequence needs a fixed number of time steps in the model's "
                                    f"input shape (got {layer.steps!r})")
    return [Flatten(layer.steps)]


def _version(version):
    """(major, minor) of a Keras version string; minor None when not given."""
    parts = str(version).split(".")
    try:
        return int(parts[0]), (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None)
    except ValueError:
        raise ModelFormatError(f"unreadable Keras version {version!r}") from None


_LAYERS.update({"Embedding": _embedding, "Masking": _masking, "LayerNormalization": _layer_normalization,
                "UnitNormalization": _unit_normalization,
                "GlobalAveragePooling1D": _global_pooling("average"), "GlobalMaxPooling1D": _global_pooling("max")})


def spec_from_keras(model_config: dict, weights: dict, keras_version: str, custom_layers=None) -> ModelSpec:
    """Translate a Keras model config and its weights (by layer name) into a ModelSpec (a one-path Graph
    when a layer runs between chains)."""
    custom_layers = check_custom_layers(custom_layers)
    keras_major = _major(keras_version)
    chain, batch_shape = _chain(model_config)
    takes_ids = bool(chain) and chain[0].get("class_name") == "Embedding"
    if batch_shape is not None and len(batch_shape) != (2 if takes_ids else 3):
        raise UnsupportedModelError(f"the model takes input of shape {tuple(batch_shape)}; grurt runs "
                                    + ("(batch, time) token ids" if takes_ids else "(batch, time, features) sequences"))
    features = batch_shape[-1] if batch_shape and batch_shape[-1] else _first_dimension(chain, weights)
    if takes_ids:
        features = None     # the model takes ids; the Embedding gives the features
    elif features is None:
        raise ModelFormatError("cannot tell the number of input features: the model has no weights")
    input_steps = steps = batch_shape[1] if batch_shape else None
    input_size, has_time, layers, masked = features, True, [], False
    for config in chain:
        layer = _Layer(config["class_name"], _layer_name(config), config.get("config", {}),
                       weights.get(_layer_name(config), []), keras_major, features, has_time,
                       steps=steps, keras_version=str(keras_version), masked=masked,
                       custom=custom_mapping(config, custom_layers) if config["class_name"] != "Lambda" else None)
        if layer.kind not in _LAYERS and layer.custom is None:
            refuse_layer(layer.where(), config, f"InputLayer, {', '.join(_LAYERS)}")
        if not masked and any(mask_refs(node) for node in config.get("inbound_nodes") or ()):
            raise UnsupportedModelError(f"{layer.where()}: is called with a mask= made by hand; grurt derives "
                                        "masks from Masking and Embedding(mask_zero=True) layers")
        produced = translate_layer(layer)
        if any(isinstance(item, LearnedState) for item in produced):
            raise UnsupportedModelError(f"{layer.where()}: a LearnedState goes only into a GRU's initial_state")
        if produced:
            if layer.kind in _FOLDING:
                append_folded(layers, produced)     # BatchNormalization into Conv1D/Dense, ...
            else:
                layers.extend(produced)
            for canonical in produced:
                features, has_time = node_output(layer.where(), canonical, features, has_time)
                steps = frames_after(layer, canonical, steps, input_steps) if has_time else None
                masked = mask_survives(canonical, masked)
    if not any(isinstance(layer, GRU) for layer in layers):
        raise UnsupportedModelError("the Keras model contains no GRU layer")
    chain_layers = layers[1:] if layers and isinstance(layers[0], Masking) else layers
    if any(isinstance(layer, GRAPH_LAYERS) for layer in chain_layers) or (
            chain_layers is not layers and any(isinstance(layer, TIME_LAYERS) for layer in layers)):
        # a layer run between chains (PReLU, a Masking after the first layer), or a mask that a
        # convolution drops: a one-path graph
        return path_graph(input_size, layers)
    return ModelSpec(input_size, tuple(chain_layers), mask_value=layers[0].value if chain_layers is not layers
                     else None)


# ---- layers of the user's own classes (issue 21) ----

class LearnedState:
    """What a Keras layer of your own computes when it gives a learned vector, the same for every
    sequence of a batch (a weight tiled over the batch), for ``custom_layers`` (``grurt.layers.LearnedState``):
    given to a GRU as its ``initial_state``, it becomes that GRU's learned initial state
    (``grurt.spec.GRU.initial_state``). ``value``: the (H,) vector."""

    def __init__(self, value):
        try:
            value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float64)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"LearnedState: value is not an array of numbers ({exc})") from None
        if value.ndim != 1 or not value.size:
            raise ModelFormatError(f"LearnedState: value must be a non-empty (H,) vector, got shape {value.shape}")
        self.value = value

    def __repr__(self) -> str:
        return f"LearnedState({self.value.size})"


def check_custom_layers(custom_layers) -> dict:
    """``custom_layers`` as given to from_keras / load: {class name: callable or list of grurt layers}."""
    if custom_layers is None:
        return {}
    if not isinstance(custom_layers, dict) or not all(
            isinstance(key, str) and (callable(value) or isinstance(value, (list, tuple)))
            for key, value in custom_layers.items()):
        raise TypeError("custom_layers must be a dict mapping a Keras layer class name to a function "
                        "(config, weights) -> [grurt layers], or to a list of grurt layers ([] for the identity)")
    return custom_layers


def custom_mapping(config, custom_layers):
    """What ``custom_layers`` maps a layer config's class to (by class_name, or Keras 3's registered
    name such as ``"Custom>SqueezeLayer"``), or None."""
    for key in (config.get("class_name"), config.get("registered_name")):
        if isinstance(key, str) and key in custom_layers:
            return custom_layers[key]
    return None


def refuse_layer(where, config, converts):
    """UnsupportedModelError for a layer grurt does not convert, showing custom_layers for a class of
    the user's own (a config without a keras module)."""
    kind = config.get("class_name")
    if kind == "Lambda":
        raise UnsupportedModelError(
            f"{where}: a Lambda layer holds Python code (a marshalled function) that grurt does not run; "
            "rewrite it with layers grurt converts, or as a layer class of your own mapped with custom_layers=")
    hint = "" if str(config.get("module") or "").startswith("keras") else (
        f"; if {kind} is a layer class of your own, say what it computes: grurt.load(path, custom_layers="
        f"{{{kind!r}: lambda config, weights: [grurt layers]}}) or grurt.from_keras(model, custom_layers=...)")
    raise UnsupportedModelError(f"{where} is not supported{hint}; grurt converts {converts}")


def _custom(layer: _Layer):
    mapping = layer.custom
    try:
        produced = mapping(dict(layer.config), [np.asarray(w) for w in layer.weights]) if callable(mapping) \
            else mapping
    except GrurtError:
        raise
    except Exception as exc:    # noqa: BLE001 - the user's function: its error, named
        raise UnsupportedModelError(f"custom_layers[{layer.kind!r}] raised {type(exc).__name__}: {exc}") from exc
    allowed = LAYER_TYPES + ONE_INPUT_LAYERS + (Masking,)
    if isinstance(produced, (list, tuple)) and len(produced) == 1 and isinstance(produced[0], LearnedState):
        return list(produced)        # a GRU's learned initial state: the graph builder takes it
    if not isinstance(produced, (list, tuple)) or not all(isinstance(item, allowed) for item in produced):
        raise UnsupportedModelError(f"custom_layers[{layer.kind!r}] must give a list of grurt layers (grurt.spec, "
                                    f"grurt.layers, grurt.graph's PReLU, Repeat, Unflatten, Crop, Masking), or "
                                    f"[grurt.layers.LearnedState(h0)], got {produced!r}")
    return list(produced)


def translate_layer(layer: _Layer):
    """The canonical layers of one Keras layer; errors name it."""
    if layer.custom is not None:
        try:
            return _custom(layer)
        except GrurtError as exc:
            raise type(exc)(f"{layer.where()}: {exc}") from exc.__cause__
    if layer.kind == "GRU" and layer.masked and layer.config.get("zero_output_for_mask"):
        raise UnsupportedModelError(f"{layer.where()}: zero_output_for_mask=True on a masked sequence is not "
                                    "supported (grurt repeats the previous output at masked steps, as Keras's "
                                    "default)")
    try:
        return _LAYERS[layer.kind](layer)
    except GrurtError as exc:
        raise type(exc)(f"{layer.where()}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # a hostile config
        raise ModelFormatError(f"{layer.where()}: malformed config or weights ({exc!r})") from None


def frames_after(layer: _Layer, canonical, steps, input_steps):
    """The fixed number of frames after ``canonical`` (convolutions, pooling and padding change the
    count a later Flatten sees), or None when the input shape does not fix it."""
    if isinstance(canonical, (Repeat, Unflatten)):
        return canonical.steps
    if isinstance(canonical, Crop) and isinstance(steps, int):
        steps -= canonical.left + canonical.right
        if steps < 1:
            raise UnsupportedModelError(f"{layer.where()}: crops {canonical.left + canonical.right} steps of the "
                                        f"{steps + canonical.left + canonical.right} steps it reads")
    if isinstance(canonical, TIME_LAYERS) and isinstance(steps, int):
        steps = canonical.output_steps(steps)
        if steps < 1:
            raise UnsupportedModelError(f"{layer.where()}: the model's input of {input_steps} steps is too short "
                                        f"for its window of {canonical.span} frames")
    return steps


def _major(version) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ModelFormatError(f"unreadable Keras version {version!r}") from None


def _first_dimension(chain, weights):
    """The input feature count as the leading dimension of the first weight (kernel, γ or mean)."""
    for layer in chain:
        arrays = weights.get(_layer_name(layer))
        if arrays and layer.get("class_name") == "Conv1D" and np.ndim(arrays[0]) == 3:   # kernel (k, in/g, out)
            return int(np.shape(arrays[0])[1]) * int(layer.get("config", {}).get("groups", 1))
        if arrays and np.ndim(arrays[0]):
            return int(np.shape(arrays[0])[0])
    return None


# ---- layers over time (issue 12): Conv1D, pooling, zero padding ----

def _single(layer: _Layer, key, default=None):
    """An int option that Keras writes as an int or a one-element list."""
    value = layer.config.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise UnsupportedModelError(f"{key}={value!r}; a 1-D layer takes one value")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFormatError(f"{key} must be an integer, got {value!r}")
    return value


def _channels_last(layer: _Layer):
    if layer.config.get("data_format", "channels_last") not in ("channels_last", None):
        raise UnsupportedModelError(f"data_format={layer.config['data_format']!r}; grurt reads channels_last "
                                    "(batch, time, channels)")
    if not layer.has_time:
        raise UnsupportedModelError("needs a sequence, but an earlier layer already removed the time axis")


def _keras_padding(name, span, stride, what="padding"):
    """Keras valid / same / causal → (left, right), or 'same_upper' when it depends on T (stride > 1)."""
    if name == "valid":
        return (0, 0)
    if name == "same":      # TensorFlow SAME: the odd frame at the end
        return "same_upper"
    if name == "causal":
        return (span - 1, 0)
    raise UnsupportedModelError(f"{what}={name!r} is not supported; grurt reads valid, same and causal")


def _conv1d(layer: _Layer):
    _channels_last(layer)
    config = layer.config
    filters, use_bias = config.get("filters"), config.get("use_bias", True)
    k, s, d, groups = (_single(layer, "kernel_size"), _single(layer, "strides", 1), _single(layer, "dilation_rate", 1),
                       config.get("groups", 1))
    layer.expect_weights(1 + use_bias)
    kernel = np.asarray(layer.weights[0])
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or layer.features % groups:
        raise ModelFormatError(f"groups={groups!r} does not divide the {layer.features} input channels")
    layer.expect_shape("kernel", kernel, (k, layer.features // groups, filters))
    bias = layer.weights[1] if use_bias else np.zeros(filters, np.float32)
    layer.expect_shape("bias", bias, (filters,))
    padding = _keras_padding(config.get("padding", "valid"), (k - 1) * d + 1, s)
    return [Conv1D(W=kernel.transpose(2, 1, 0), b=bias, stride=s, dilation=d, groups=groups, padding=padding,
                   activation=layer.activation("activation"))]


def _pooling1d(layer: _Layer):
    _channels_last(layer)
    size = _single(layer, "pool_size", 2)
    stride = size if layer.config.get("strides") is None else _single(layer, "strides")
    if layer.config.get("padding", "valid") == "causal":
        raise UnsupportedModelError("padding='causal' is not a pooling padding")
    padding = _keras_padding(layer.config.get("padding", "valid"), size, stride)
    # Keras (TensorFlow) averages exclude the padding
    return [Pool1D("max" if layer.kind.startswith("Max") else "average", size, stride, padding)]


def _zero_padding1d(layer: _Layer):
    if not layer.has_time:
        raise UnsupportedModelError("needs a sequence, but an earlier layer already removed the time axis")
    padding = layer.config.get("padding", 1)
    left, right = (padding, padding) if isinstance(padding, int) else padding
    return [ZeroPad1D(left, right)]


# ---- RepeatVector, Reshape, Cropping1D (issue 21) ----

def _positive(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFormatError(f"{what} must be a positive integer, got {value!r}")
    return value


def _repeat_vector(layer: _Layer):
    if layer.has_time:
        raise UnsupportedModelError("repeats a vector; its input is a sequence")
    return [Repeat(_positive(layer.config.get("n"), "n"))]


def _reshape(layer: _Layer):
    """A vector (N,) to (T, F) (an Unflatten), a sequence of fixed T steps (T, F) to (T·F,) (a
    Flatten), or to the shape it has (nothing)."""
    target = layer.config.get("target_shape")
    if not isinstance(target, (list, tuple)) or not target or list(target).count(-1) > 1 \
            or not all(d == -1 or (type(d) is int and d >= 1) for d in target):
        raise ModelFormatError(f"target_shape must be positive sizes (one may be -1), got {target!r}")
    if len(target) > 2:     # a rank the fused layers do not have: the lowered path reshapes it
        raise UnsupportedModelError(f"reshapes to {tuple(target)}: grurt's fused layers hold (T, F) sequences")
    if layer.has_time and len(target) == 2 and target[1] == layer.features and target[0] in (-1, layer.steps):
        return []                                           # (T, F) → (T, F)
    steps = layer.steps if layer.has_time else 1
    if not isinstance(steps, int):
        raise UnsupportedModelError(f"reshapes (T, {layer.features}) to {tuple(target)}: grurt needs the steps "
                                    "fixed by the model's input shape")
    size, known = steps * layer.features, math.prod(d for d in target if d != -1)
    if (size % known if -1 in target else size != known):
        raise ModelFormatError(f"target_shape {tuple(target)} does not hold the {size} values of its input")
    shape = tuple(size // known if d == -1 else d for d in target)
    if len(shape) == 1:
        return [Flatten(steps)] if layer.has_time else []
    if not layer.has_time:
        return [Unflatten(shape[0])]
    raise UnsupportedModelError(f"reshapes ({steps}, {layer.features}) to {shape}; grurt reshapes a vector to "
                                "(steps, features) and a sequence of fixed steps to a vector")


def _cropping1d(layer: _Layer):
    if not layer.has_time:
        raise UnsupportedModelError("needs a sequence, but an earlier layer already removed the time axis")
    cropping = layer.config.get("cropping", (1, 1))
    left, right = (cropping, cropping) if isinstance(cropping, int) else cropping
    return [Crop(left, right)]


_LAYERS.update({"RepeatVector": _repeat_vector, "Reshape": _reshape, "Cropping1D": _cropping1d})


_LAYERS.update({"Conv1D": _conv1d, "MaxPooling1D": _pooling1d, "AveragePooling1D": _pooling1d,
                "MaxPool1D": _pooling1d, "AvgPool1D": _pooling1d, "ZeroPadding1D": _zero_padding1d})
#: Layers appended with spec.append_folded: BatchNormalization into the Conv1D or Dense before it,
#: an Activation into a Conv1D, ZeroPadding1D into the Conv1D after it.
_FOLDING = ("BatchNormalization", "Activation", "Conv1D")
