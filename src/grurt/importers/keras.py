"""Keras models → grurt: :func:`from_keras`, :func:`load_keras`. The one place that knows Keras's conventions.

See docs/keras.md. Three sources meet in one translation. The ``.keras`` archive (Keras 3,
and Keras ≥ 2.13) and the legacy HDF5 file (Keras 2 and 3) are read with h5py alone,
without importing keras or tensorflow; :func:`from_keras` reads a live model. Each produces
the same triple:

* the model config, ``{"class_name": ..., "config": ...}`` as Keras serialises it;
* each layer's weights keyed by layer name, in ``layer.get_weights()`` order;
* the Keras version that saved it (``hard_sigmoid`` differs between Keras 2 and 3);

and :func:`spec_from_keras` turns that into a :class:`~grurt.spec.ModelSpec`.

=========================  ===============================  =========================  ===========================
                           Keras 3                          Keras 2 / tf.keras         grurt (:mod:`grurt.spec`)
=========================  ===============================  =========================  ===========================
GRU gate order             z, r, h                          z, r, h                    z, r, h (unchanged)
GRU weights                ``kernel`` (I, 3H),              same                       transposed: ``W`` (3H, I),
                           ``recurrent_kernel`` (H, 3H)                                ``R`` (3H, H)
reset position             ``reset_after``, default True    tf.keras 2: True;          ``linear_before_reset``
                                                            Keras ≤ 2.2: False
GRU bias                   (2, 3H) [input; recurrent] with  same                       ``B`` (6H): the two rows, or
                           ``reset_after``, else (3H,)                                 [bias, 0]
gate activation            ``recurrent_activation``,        sigmoid (Keras ≤ 2.2.5:    ``gate_activation``
                           default sigmoid                  hard_sigmoid)
candidate activation       ``activation``, default tanh     same                       ``candidate_activation``
``hard_sigmoid``           clip(x/6 + 0.5, 0, 1)            clip(0.2·x + 0.5, 0, 1)    α = 1/6 or 0.2, β = 0.5
``leaky_relu``             negative slope 0.2               same                       α = 0.2
``go_backwards``           returns the sequence in          same                       reverse GRU + ``Reverse``
                           reversed time order
``Bidirectional``          flips the backward output        same                       bidirectional GRU (concat)
                           back; ``merge_mode`` concat                                 + ``Merge``; None refused
                           (default), sum, ave, mul, None
``Masking``                all-equal ``mask_value`` steps   same                       ``mask_value``: trailing
                           are skipped, state carried                                  padding gives the lengths
                                                                                       (first layer only)
``Dense``                  ``kernel`` (I, out), ``bias``    same                       ``W`` (out, I) transposed
``BatchNormalization``     epsilon 1e-3; [γ, β, mean, var]  same                       ``Scale``
                           (γ/β absent without
                           ``scale``/``center``)
``Normalization``          (x − mean) / max(√var, 1e-7)     same                       ``Scale``
input layout               (B, T, I)                        (B, T, I)                  (B, T, I)
=========================  ===============================  =========================  ===========================

Dropout, SpatialDropout1D, GaussianNoise, GaussianDropout and AlphaDropout do nothing at
inference.
"""
from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from dataclasses import dataclass

import numpy as np

from ..errors import GrurtError, ModelFormatError, UnsupportedModelError
from ..limits import MAX_JSON_BYTES, MAX_PARAMETERS
from ..model import Model
from ..spec import GRU, MERGE_MODES, Activation, ActivationFunction, Dense, Merge, ModelSpec, Reverse, Scale, activation
from .scalers import with_scalers

#: Layers that do nothing at inference.
_NO_OPS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout")


def from_keras(model, input_scaler=None, output_scaler=None, weights: str = "float32") -> Model:
    """Convert a live Keras model (Keras 3 on any backend, or tf.keras 2) to a Model.

    The model is a Sequential or functional chain of the layers listed in docs/keras.md.
    ``input_scaler``/``output_scaler``: fitted scikit-learn MinMaxScaler or StandardScaler,
    folded in so that the Model takes raw input and returns outputs in real units.
    ``weights`` ("float32", "bf16", "int8"): how the GRU weights are stored, see :mod:`grurt.precision`.
    """

    if not hasattr(model, "layers") or not hasattr(model, "get_config"):
        raise UnsupportedModelError(f"expected a Keras Sequential or functional model, got {type(model).__name__}")
    try:
        config = model.get_config()
    except NotImplementedError:
        raise UnsupportedModelError(f"{type(model).__name__} has no config (a subclassed model?); "
                                    "grurt reads Sequential and functional models") from None
    # the same (config, weights, version) triple the file readers produce
    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers}
    package = sys.modules.get(type(model).__module__.partition(".")[0])
    spec = spec_from_keras({"class_name": type(model).__name__, "config": config}, weights,
                           getattr(package, "__version__", "3"))
    return Model(with_scalers(spec, input_scaler, output_scaler), weights)


def load_keras(path, input_scaler=None, output_scaler=None):
    """Load a ``.keras`` or ``.h5`` Keras model file as a Model; scalers as in :func:`grurt.from_keras`."""
    spec = spec_from_keras(*read_keras(path))
    return Model(with_scalers(spec, input_scaler, output_scaler))


def read_keras(path):
    """Read a Keras file into (model config, weights by layer name, Keras version)."""
    path = os.fspath(path)
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install grurt[keras]") from None
    if zipfile.is_zipfile(path):
        return _read_archive(path, h5py)
    if h5py.is_hdf5(path):
        return _read_hdf5(path, h5py)
    raise ModelFormatError(f"{path}: neither a .keras archive (zip) nor an HDF5 file")


# ---- .keras archive: config.json, metadata.json, model.weights.h5 ----

def _read_archive(path, h5py):
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ModelFormatError(f"{path}: the .keras archive has no config.json")
        config = _json(_archive_member(archive, "config.json"), f"{path}: config.json")
        metadata = _json(_archive_member(archive, "metadata.json"), f"{path}: metadata.json") \
            if "metadata.json" in names else {}
        if "model.weights.h5" not in names:
            raise ModelFormatError(f"{path}: the .keras archive has no model.weights.h5, so no weights")
        layers, _ = _chain(config)
        with archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as store:
            weights = {}
            for name, group in _archive_paths(layers):
                weights[name] = _archive_vars(store[group], f"{path}: {group}") if group in store else []
    return config, weights, str(metadata.get("keras_version", "3"))


def _archive_member(archive, name) -> bytes:
    if archive.getinfo(name).file_size > MAX_JSON_BYTES:
        raise ModelFormatError(f"{name} is larger than {MAX_JSON_BYTES >> 20} MiB")
    return archive.read(name)


def _archive_paths(layers):
    """Where Keras 3 stores each layer: ``layers/<snake_case(class)>[_k]``, counted in model order."""
    used = {}
    for layer in layers:
        base = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", layer["class_name"])).lower()
        used[base] = used.get(base, -1) + 1
        yield _layer_name(layer), f"layers/{base}_{used[base]}" if used[base] else f"layers/{base}"


def _archive_vars(group, where):
    """A layer's variables in get_weights() order: its own, then its sublayers'."""
    arrays = []
    if "vars" in group:
        variables = group["vars"]
        try:
            arrays = [_array(variables[str(i)], where) for i in range(len(variables))]
        except KeyError:
            raise ModelFormatError(f"{where}/vars: variables are not numbered 0..{len(variables) - 1}") from None
    for child in ("forward_layer", "backward_layer", "cell", "layer"):  # Bidirectional, RNN, TimeDistributed
        if child in group:
            arrays += _archive_vars(group[child], f"{where}/{child}")
    return arrays


# ---- legacy HDF5: model_config attribute, model_weights/<layer>/<weight name> ----

def _read_hdf5(path, h5py):
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise ModelFormatError(f"{path}: no model_config attribute; the file holds weights only "
                                   "(save the whole model with model.save)")
        config = _json(f.attrs["model_config"], f"{path}: model_config")
        if "model_weights" not in f:
            raise ModelFormatError(f"{path}: no model_weights group")
        group = f["model_weights"]
        version = _text(f.attrs.get("keras_version", group.attrs.get("keras_version", "2")))
        weights = {}
        for name in _attribute_list(group, "layer_names"):
            try:
                layer = group[name]
                weights[name] = [_array(layer[w], f"{path}: {name}") for w in _attribute_list(layer, "weight_names")]
            except KeyError as exc:
                raise ModelFormatError(f"{path}: weights of layer {name!r} are missing ({exc})") from None
    return config, weights, version


def _array(node, where) -> np.ndarray:
    """A weight dataset, its size checked before it is read (the file may be hostile)."""
    if not hasattr(node, "dtype") or node.dtype.kind not in "fiu":
        raise ModelFormatError(f"{where}: {node.name} is not a numeric dataset")
    if node.size > MAX_PARAMETERS:
        raise ModelFormatError(f"{where}: {node.name} has {node.size} elements, more than {MAX_PARAMETERS}")
    return node[()]


def _attribute_list(group, name):
    """A list of names stored as an HDF5 attribute, split into ``name0``, ``name1``... when large."""
    chunks = [group.attrs[name]] if name in group.attrs else []
    while f"{name}{len(chunks)}" in group.attrs:
        chunks.append(group.attrs[f"{name}{len(chunks)}"])
    return [_text(item) for chunk in chunks for item in np.atleast_1d(chunk)]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _json(raw, where):
    try:
        value = json.loads(_text(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{where} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"{where} is not a JSON object")
    return value


# ---- the model's structure ----

def _layer_name(layer) -> str:
    config = layer.get("config")
    return (config.get("name") if isinstance(config, dict) else None) or layer.get("name")


def _chain(model_config):
    """The layers in call order, InputLayers left out, and the declared input shape (or None)."""
    if not isinstance(model_config, dict) or "config" not in model_config:
        raise ModelFormatError("the model config has no 'config' entry")
    kind, config = model_config.get("class_name"), model_config["config"]
    if isinstance(config, list):  # Keras ≤ 2.2 Sequential
        config = {"layers": config}
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise UnsupportedModelError(f"{kind} models are not supported: grurt reads Sequential and functional "
                                    "models that are a simple chain of layers")
    layers = config["layers"]
    if not all(isinstance(layer, dict) and isinstance(layer.get("class_name"), str)
               and isinstance(layer.get("config", {}), dict) and _layer_name(layer) for layer in layers):
        raise ModelFormatError(f"{kind}: every layer needs a class_name and a name")
    if "input_layers" not in config:
        inputs = [layer for layer in layers if layer["class_name"] == "InputLayer"]
        chain = [layer for layer in layers if layer["class_name"] != "InputLayer"]
        declared = inputs[0] if inputs else (chain[0] if chain else {})
        return chain, _batch_shape(declared) or _shape(config.get("build_input_shape"))
    return _functional_chain(kind, config, layers)


def _functional_chain(kind, config, layers):
    by_name = {_layer_name(layer): layer for layer in layers}
    inputs, outputs = _refs(config["input_layers"]), _refs(config.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(f"{kind} model with {len(inputs)} inputs and {len(outputs)} outputs; "
                                    "grurt reads one input and one output")
    chain, name = [], outputs[0]
    while name != inputs[0]:
        if name not in by_name or len(chain) > len(layers):
            raise ModelFormatError(f"{kind}: layer {name!r} is missing or the layers form a cycle")
        layer = by_name[name]
        nodes = layer.get("inbound_nodes") or []
        sources = _refs(nodes[0]) if len(nodes) == 1 else []
        if len(sources) != 1:
            raise UnsupportedModelError(
                f"layer {name!r} ({layer['class_name']}) is called {len(nodes)} times or has several inputs; "
                "grurt reads models that are a simple chain of layers")
        chain.append(layer)
        name = sources[0]
    chain.reverse()
    return chain, _batch_shape(by_name[inputs[0]])


def _refs(value):
    """Layer names of the tensors referenced in an inbound node or an input/output list.

    Keras 3 writes ``{"config": {"keras_history": [name, node, index]}}``,
    Keras 2 ``[name, node, index(, kwargs)]``, nested in lists.
    """
    if isinstance(value, dict):
        history = value.get("config", {}).get("keras_history") if isinstance(value.get("config"), dict) else None
        return [history[0]] if history else [n for v in value.values() for n in _refs(v)]
    if isinstance(value, (list, tuple)):  # tuples in live configs
        if value and isinstance(value[0], str):
            return [value[0]] + _refs(value[3:])
        return [n for v in value for n in _refs(v)]
    return []


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
    bias = layer.weights[1] if use_bias else np.zeros(units, np.float32)
    layer.expect_shape("bias", bias, (units,))
    return [Dense(np.asarray(kernel).T, bias, layer.activation("activation"))]


def _time_distributed(layer: _Layer):
    inner = layer.config.get("layer", {})
    if inner.get("class_name") != "Dense" or not layer.has_time:
        raise UnsupportedModelError(f"wraps {inner.get('class_name')}; grurt runs TimeDistributed(Dense) on sequences")
    return _dense(_Layer(**{**vars(layer), "config": inner.get("config", {})}))


def _activation(layer: _Layer):
    return [Activation(layer.activation("activation"))]


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
        raise UnsupportedModelError("flattening a sequence is not supported")
    return []


_LAYERS = {"GRU": _gru, "Bidirectional": _bidirectional, "Dense": _dense, "TimeDistributed": _time_distributed,
           "Activation": _activation, "BatchNormalization": _batch_normalization,
           "Normalization": _normalization, "Rescaling": _rescaling, "Flatten": _flatten,
           **{kind: lambda layer: [] for kind in _NO_OPS}}


def spec_from_keras(model_config: dict, weights: dict, keras_version: str) -> ModelSpec:
    """Translate a Keras model config and its weights (by layer name) into a ModelSpec."""
    keras_major = _major(keras_version)
    chain, batch_shape = _chain(model_config)
    if batch_shape is not None and len(batch_shape) != 3:
        raise UnsupportedModelError(f"the model takes input of shape {tuple(batch_shape)}; "
                                    "grurt runs (batch, time, features) sequences")
    features = batch_shape[-1] if batch_shape and batch_shape[-1] else _first_dimension(chain, weights)
    if features is None:
        raise ModelFormatError("cannot tell the number of input features: the model has no weights")
    input_size, has_time, layers, mask_value = features, True, [], None
    for config in chain:
        layer = _Layer(config["class_name"], _layer_name(config), config.get("config", {}),
                       weights.get(_layer_name(config), []), keras_major, features, has_time)
        if layer.kind == "Masking":
            # trailing padding becomes each sequence's length (Model.run derives `lengths`)
            if layers:
                raise UnsupportedModelError(f"{layer.where()}: grurt supports Masking only as the first layer")
            mask_value = layer.config.get("mask_value", 0.0)
            continue
        if layer.kind not in _LAYERS:
            raise UnsupportedModelError(f"{layer.where()} is not supported; grurt converts InputLayer, "
                                        f"Masking, {', '.join(_LAYERS)}")
        try:
            produced = _LAYERS[layer.kind](layer)
        except GrurtError as exc:
            raise type(exc)(f"{layer.where()}: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # a hostile config
            raise ModelFormatError(f"{layer.where()}: malformed config or weights ({exc!r})") from None
        if produced:
            layers.extend(produced)
            so_far = ModelSpec(input_size, tuple(layers))
            features, has_time = so_far.output_size, so_far.returns_sequence
    if not any(isinstance(layer, GRU) for layer in layers):
        raise UnsupportedModelError("the Keras model contains no GRU layer")
    return ModelSpec(input_size, tuple(layers), mask_value=mask_value)


def _major(version) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ModelFormatError(f"unreadable Keras version {version!r}") from None


def _first_dimension(chain, weights):
    """The input feature count as the leading dimension of the first weight (kernel, γ or mean)."""
    for layer in chain:
        arrays = weights.get(_layer_name(layer))
        if arrays and np.ndim(arrays[0]):
            return int(np.shape(arrays[0])[0])
    return None
