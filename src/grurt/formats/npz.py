"""grurt's own file format: a NumPy ``.npz`` archive with a JSON header. See docs/format.md.

The file is data from possibly untrusted hands: it is read with ``allow_pickle=False``, and
every array's declared shape and dtype is checked against the header before it is read.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
import zlib

import numpy as np

from .. import precision
from .._version import __version__
from ..errors import GrurtError, ModelFormatError, UnsupportedModelError
from ..limits import MAX_HEADER_BYTES, MAX_LAYER_INDEX, MAX_PARAMETERS, parse_json
from ..spec import GRU, Activation, ActivationFunction, Dense, LastStep, Merge, ModelSpec, Reverse, Scale
from ..spec import Embedding, Flatten, GlobalPool, LayerNorm, UnitNorm
from ..spec import TIME_LAYERS, Conv1D, Pool1D, ZeroPad1D, layer_output
from ..graph import (Combine, Concat, Crop, Graph, Input, Masking, Node, Output, PReLU, Repeat, Slice, Tensor,
                     Unflatten, check_node)

_GRAPH_ONLY = ("Combine", "Concat", "Slice", "PReLU", "Masking", "Repeat", "Unflatten", "Crop")

FORMAT_NAME = "grurt"
# 1.1: Embedding (input_size null), LayerNorm, UnitNorm, GlobalPool, Flatten; Conv1D, Pool1D, ZeroPad1D
# 1.2: GRU "weights": "bf16" / "int8" (reduced-precision W and R, docs/format.md)
# 2.0: graphs: "inputs", "nodes" (a layer and the tensors it reads and writes), "outputs" (issue 11)
# 1.3 / 2.1: activations gelu, silu, mish, selu, hard_silu, clip; a GRU's learned "initial_state" (array
#            "h0"); 2.1: the graph layers PReLU, Masking,
#            Repeat, Unflatten and Crop, masks read by GRU and GlobalPool nodes (issue 21)
# 3.0: general tensor graphs: nodes of ONNX ops over named N-D tensors, "constants" (issue 20)
FORMAT_VERSION = (3, 0)
HEADER_KEY = "header"

_ARRAYS = {GRU: ("W", "R", "B"), Dense: ("W", "b"), Scale: ("a", "c")}
_HEADER_FIELDS = {"format", "format_version", "producer", "input_size", "layers", "mask_value", "metadata"}
_GRAPH_HEADER_FIELDS = {"format", "format_version", "producer", "inputs", "nodes", "outputs", "metadata"}
_LAYER_FIELDS = {
    "GRU": {"type", "hidden_size", "direction", "linear_before_reset", "gate_activation",
            "candidate_activation", "clip", "return_sequences", "weights", "initial_state"},
    "Dense": {"type", "units", "activation"},
    "Activation": {"type", "function"},
    "Scale": {"type"},
    "Reverse": {"type"},
    "LastStep": {"type"},
    "Merge": {"type", "mode"},
    # format 2.0: the layers that read several tensors, or cut one (only in graphs)
    "Combine": {"type", "op"},
    "Concat": {"type"},
    "Slice": {"type", "begin", "end"},
    "PReLU": {"type", "steps"},         # format 2.1
    "Masking": {"type", "value"},       # format 2.1
    "Repeat": {"type", "steps"},        # format 2.1
    "Unflatten": {"type", "steps"},     # format 2.1
    "Crop": {"type", "left", "right"},  # format 2.1
}
# format 1.1 (issue 12)
_ARRAYS_1_1 = {Embedding: ("table",), LayerNorm: ("gamma", "beta")}
#: the layers a 1.0 reader does not know: a file holding one is written as 1.1, any other as 1.0
_TYPES_1_1 = (Embedding, LayerNorm, UnitNorm, GlobalPool, Flatten) + TIME_LAYERS
_ARRAYS.update(_ARRAYS_1_1)
_ARRAYS[PReLU] = ("alpha",)
#: activation kinds a 1.2 (2.0) reader does not know: a file using one is written as 1.3 (2.1)
_ACTIVATIONS_1_3 = ("gelu", "silu", "mish", "selu", "hard_silu", "clip")
_LAYER_FIELDS.update({
    "Embedding": {"type", "vocabulary", "features"},
    "LayerNorm": {"type", "epsilon"},
    "UnitNorm": {"type", "epsilon"},
    "GlobalPool": {"type", "mode"},
    "Flatten": {"type", "steps"},
})


def _activation_to_json(fn: ActivationFunction) -> dict:
    out = {"kind": fn.kind}
    if fn.alpha is not None:
        out["alpha"] = fn.alpha
    if fn.beta is not None:
        out["beta"] = fn.beta
    return out


def _layer_to_json(layer) -> dict:
    if isinstance(layer, TIME_LAYERS):
        return _time_layer_to_json(layer)
    if isinstance(layer, GRU):
        return {"type": "GRU", "hidden_size": layer.hidden_size, "direction": layer.direction,
                "linear_before_reset": layer.linear_before_reset,
                "gate_activation": _activation_to_json(layer.gate_activation),
                "candidate_activation": _activation_to_json(layer.candidate_activation),
                "clip": layer.clip, "return_sequences": layer.return_sequences,
                **({"initial_state": True} if layer.initial_state is not None else {})}
    if isinstance(layer, Dense):
        return {"type": "Dense", "units": layer.output_size, "activation": _activation_to_json(layer.activation)}
    if isinstance(layer, Activation):
        return {"type": "Activation", "function": _activation_to_json(layer.function)}
    if isinstance(layer, Merge):
        return {"type": "Merge", "mode": layer.mode}
    if isinstance(layer, Embedding):
        return {"type": "Embedding", "vocabulary": layer.vocabulary, "features": layer.output_size}
    if isinstance(layer, (LayerNorm, UnitNorm)):
        return {"type": type(layer).__name__, "epsilon": layer.epsilon}
    if isinstance(layer, GlobalPool):
        return {"type": "GlobalPool", "mode": layer.mode}
    if isinstance(layer, Flatten):
        return {"type": "Flatten", "steps": layer.steps}
    if isinstance(layer, Combine):
        return {"type": "Combine", "op": layer.op}
    if isinstance(layer, Slice):
        return {"type": "Slice", "begin": layer.begin, "end": layer.end}
    if isinstance(layer, PReLU):
        return {"type": "PReLU", "steps": layer.steps}
    if isinstance(layer, Masking):
        return {"type": "Masking", "value": layer.value}
    if isinstance(layer, (Repeat, Unflatten)):
        return {"type": type(layer).__name__, "steps": layer.steps}
    if isinstance(layer, Crop):
        return {"type": "Crop", "left": layer.left, "right": layer.right}
    return {"type": type(layer).__name__}


def _activations(layer):
    return [getattr(layer, name) for name in ("activation", "function", "gate_activation", "candidate_activation")
            if isinstance(getattr(layer, name, None), ActivationFunction)]


def _newer(layer) -> bool:
    """Whether the layer needs format 1.3 / 2.1."""
    return (isinstance(layer, (PReLU, Masking, Repeat, Unflatten, Crop))
            or isinstance(layer, GRU) and layer.initial_state is not None
            or any(fn.kind in _ACTIVATIONS_1_3 for fn in _activations(layer)))


def save(model, path, metadata: dict | None = None) -> None:
    """Write a Model (or ModelSpec, or Graph; or a TensorModel or TensorGraph) to ``path`` in grurt's
    .npz format."""
    from ..tensor_graph import TensorGraph

    graph = getattr(model, "graph", model)
    if isinstance(graph, TensorGraph):
        return _save_tensor_graph(graph, path, metadata, getattr(model, "weights", "float32"))
    spec = getattr(model, "spec", model)
    if not isinstance(spec, (ModelSpec, Graph)):
        raise TypeError(f"save expects a grurt Model, ModelSpec or Graph, got {type(model).__name__}")
    graph = spec if isinstance(spec, Graph) else getattr(model, "graph", None)
    weights = getattr(model, "weights", "float32")
    header = {"format": FORMAT_NAME, "producer": f"grurt {__version__}"}
    if isinstance(spec, ModelSpec) and (graph is None or graph.input_names == ("input",)
                                        and graph.output_names == ("output",)):
        # a chain is written in the oldest version that holds it (1.0, 1.1 for the newer layers,
        # 1.2 for reduced-precision weights), so that older grurt releases load it
        version = ((1, 3) if any(_newer(layer) for layer in spec.layers) else (1, 2) if weights != "float32"
                   else (1, 1) if any(isinstance(layer, _TYPES_1_1) for layer in spec.layers) else (1, 0))
        layers = spec.layers
        header.update(input_size=spec.input_size, layers=[_layer_to_json(layer) for layer in layers])
        entries = header["layers"]
        if spec.mask_value is not None:
            header["mask_value"] = spec.mask_value
    else:                # a graph, or a chain with the names of its source: 2.0 (2.1 with the newer layers)
        layers = [node.layer for node in graph.nodes]
        version = (2, 1) if any(_newer(layer) for layer in layers) else (2, 0)
        header.update(
            inputs=[{"name": i.name, "kind": i.kind, "size": i.size, "directions": i.directions}
                    for i in graph.inputs],
            nodes=[{"layer": _layer_to_json(node.layer), "inputs": list(node.inputs), "outputs": list(node.outputs)}
                   for node in graph.nodes],
            outputs=[{"name": o.name, "directions": o.directions} for o in graph.outputs])
        entries = [entry["layer"] for entry in header["nodes"]]
    header["format_version"] = "%d.%d" % version
    if metadata:
        header["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = {}
    for index, layer in enumerate(layers):
        arrays.update((f"{index}.{name}", array) for name, array in _layer_arrays(layer).items())
        if isinstance(layer, GRU) and weights != "float32":
            entries[index]["weights"] = weights
            for name in precision.REDUCED_ARRAYS:
                parts = model._stored[index, name]
                arrays[f"{index}.{name}"] = parts[0]
                if weights == "int8":
                    arrays[f"{index}.{name}_scale"] = parts[1]
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _layer_arrays(layer) -> dict:
    """The arrays a layer's entry stores, by name (a GRU's learned initial state as "h0")."""
    arrays = {name: getattr(layer, name) for name in _ARRAYS.get(type(layer), ())}
    if isinstance(layer, GRU) and layer.initial_state is not None:
        arrays["h0"] = layer.initial_state
    return arrays


def _expect(condition, message):
    if not condition:
        raise ModelFormatError(message)


def _activation_from_json(value, where) -> ActivationFunction:
    if isinstance(value, str):
        value = {"kind": value}
    _expect(isinstance(value, dict) and isinstance(value.get("kind"), str),
            f"{where}: an activation must be a name or {{'kind': ..., 'alpha': ..., 'beta': ...}}, got {value!r}")
    unknown = set(value) - {"kind", "alpha", "beta"}
    _expect(not unknown, f"{where}: unknown activation fields {sorted(unknown)}")
    return ActivationFunction(value["kind"], value.get("alpha"), value.get("beta"))


def _int_field(entry, key, where):
    value = entry.get(key)
    _expect(isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31,
            f"{where}: '{key}' must be a positive integer below 2**31, got {value!r}")
    return value


def _read_header(archive: zipfile.ZipFile) -> dict:
    name = HEADER_KEY + ".npy"
    _expect(name in archive.namelist(), "not a grurt model: the archive has no 'header' entry. A state dict saved "
            "with numpy.savez (PyTorch parameter names -> arrays) loads with grurt.from_state_dict(path)")
    info = archive.getinfo(name)
    _expect(info.file_size <= MAX_HEADER_BYTES, f"header entry is implausibly large ({info.file_size} bytes)")
    with archive.open(name) as handle:
        raw = handle.read(MAX_HEADER_BYTES + 1)
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:    # noqa: BLE001 - numpy parses .npy headers with ast/tokenize: many exception types
        raise ModelFormatError(f"the 'header' entry is not a readable .npy array ({type(exc).__name__}: {exc})") from None
    _expect(array.dtype.kind == "U" and array.ndim == 0, "header must be a 0-d string array holding JSON")
    # JSONDecodeError, huge int literals, deep nesting (MAX_JSON_DEPTH)
    header = parse_json(str(array), "header")
    _expect(isinstance(header, dict) and header.get("format") == FORMAT_NAME,
            "not a grurt model: header['format'] is not 'grurt'")
    version = header.get("format_version")
    try:
        major, minor = (int(part) for part in str(version).split("."))
    except ValueError:
        raise ModelFormatError(f"header has an unreadable format_version {version!r}") from None
    if major > FORMAT_VERSION[0]:
        raise UnsupportedModelError(
            f"this file is grurt format {version}, written by a newer grurt ({header.get('producer', '?')}); "
            f"this grurt reads format {FORMAT_VERSION[0]}.x: upgrade grurt to load it")
    unknown = set(header) - {2: _GRAPH_HEADER_FIELDS, 3: _TENSOR_HEADER_FIELDS}.get(major, _HEADER_FIELDS)
    _expect(not unknown, f"header: unknown fields {sorted(unknown)}")
    return header


def read_header(path) -> dict:
    """The JSON header of a grurt .npz file (format version, producer, layers)."""
    with _open_archive(path) as archive:
        try:
            return _read_header(archive)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
            raise ModelFormatError(f"{path}: corrupt grurt model ({type(exc).__name__}: {exc})") from None


def _open_archive(path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelFormatError(f"{path}: not a readable .npz archive ({exc})") from None


def _read_array(archive: zipfile.ZipFile, key: str, shape: tuple, where: str, dtype_name: str = "float32"):
    """The array ``key``: float32 (any float dtype in the file is converted), or exactly
    ``dtype_name`` (uint16 for bf16 bits, int8) for reduced-precision weights."""
    name = key + ".npy"
    _expect(name in archive.namelist(), f"{where}: array '{key}' is missing")
    with archive.open(name) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            _expect(reader is not None, f"{where}: array '{key}' has an unknown .npy version {version}")
            stored_shape, fortran, dtype = reader(handle)
        except (GrurtError, zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError):
            raise
        except Exception as exc:    # noqa: BLE001 - numpy parses the header with ast/tokenize: many exception types
            raise ModelFormatError(f"{where}: array '{key}' has a corrupt header ({exc})") from None
        if dtype_name == "float32":
            _expect(dtype.kind == "f" and not dtype.hasobject,
                    f"{where}: array '{key}' has dtype {dtype}, expected float32")
        else:
            _expect(dtype == np.dtype(dtype_name).newbyteorder("<") or dtype == np.dtype(dtype_name),
                    f"{where}: array '{key}' has dtype {dtype}, expected {dtype_name}")
        _expect(tuple(stored_shape) == tuple(shape),
                f"{where}: array '{key}' has shape {tuple(stored_shape)}, expected {tuple(shape)}")
        count = int(np.prod(shape))
        data = handle.read(count * dtype.itemsize)
        _expect(len(data) == count * dtype.itemsize, f"{where}: array '{key}' is truncated")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if dtype_name != "float32":
        return np.ascontiguousarray(array, dtype=np.dtype(dtype_name))
    with np.errstate(over="ignore"):    # a float64 beyond float32's range becomes inf: refused by the spec
        return array.astype(np.float32)


def _layer_from_json(archive, entry, index, features, budget, stored, prefix=""):
    """The layer of header entry ``entry``; a reduced-precision GRU's stored arrays go into
    ``stored`` as (index, name) -> parts (see grurt.precision.stored). A layer's own checks
    (every number within grurt.limits) name the layer's index. Its arrays are ``{prefix}{index}.{name}``."""
    try:
        return _layer_fields(archive, entry, index, features, budget, stored, prefix)
    except GrurtError as exc:
        if str(exc).startswith(f"layer {index}"):
            raise
        raise type(exc)(f"layer {index}: {exc}") from None


def _layer_fields(archive, entry, index, features, budget, stored, prefix=""):
    where = f"layer {index}"
    _expect(isinstance(entry, dict), f"{where}: expected an object, got {entry!r}")
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in _LAYER_FIELDS:
        raise UnsupportedModelError(f"{where}: unknown layer type {kind!r}")
    where = f"layer {index} ({kind})"
    unknown = set(entry) - _LAYER_FIELDS[kind]
    _expect(not unknown, f"{where}: unknown fields {sorted(unknown)}")

    def array(name, shape, dtype_name="float32"):
        return _read_array(archive, f"{prefix}{index}.{name}", shape, where, dtype_name)

    _expect(features is not None or kind not in ("GRU", "Dense", "Scale"),
            f"{where}: reads a tensor without features (token ids or a mask)")
    if kind == "GRU":
        H = _int_field(entry, "hidden_size", where)
        direction = entry.get("direction", "forward")
        D = 2 if direction == "bidirectional" else 1
        _check_budget(D * 3 * H * (features + H + 2), budget, where)
        weights = entry.get("weights", "float32")
        if weights not in precision.WEIGHT_MODES:
            raise UnsupportedModelError(f"{where}: weights {weights!r} are not supported by this grurt "
                                        f"(it reads {', '.join(precision.WEIGHT_MODES)}): upgrade grurt to load it")
        matrices = {}
        for name, shape in (("W", (D, 3 * H, features)), ("R", (D, 3 * H, H))):
            if weights == "float32":
                matrices[name] = array(name, shape)
                continue
            if weights == "bf16":
                parts = (array(name, shape, "uint16"),)
            else:
                parts = (array(name, shape, "int8"), array(name + "_scale", (D, 3 * H)))
            stored[index, name] = parts
            matrices[name] = precision.values(parts, weights)
        learned = entry.get("initial_state", False)
        _expect(learned in (True, False), f"{where}: 'initial_state' must be true or false, got {learned!r}")
        if learned:
            _check_budget(D * H, budget, where)
        return GRU(W=matrices["W"], R=matrices["R"], B=array("B", (D, 6 * H)),
                   initial_state=array("h0", (D, H)) if learned else None,
                   direction=direction,
                   linear_before_reset=entry.get("linear_before_reset", False),
                   gate_activation=_activation_from_json(entry.get("gate_activation", "sigmoid"), where),
                   candidate_activation=_activation_from_json(entry.get("candidate_activation", "tanh"), where),
                   clip=entry.get("clip"), return_sequences=entry.get("return_sequences", True))
    if kind == "Dense":
        units = _int_field(entry, "units", where)
        _check_budget(units * (features + 1), budget, where)
        return Dense(W=array("W", (units, features)), b=array("b", (units,)),
                     activation=_activation_from_json(entry.get("activation", "linear"), where))
    if kind == "Activation":
        return Activation(_activation_from_json(entry.get("function"), where))
    if kind == "Scale":
        _check_budget(2 * features, budget, where)
        return Scale(a=array("a", (features,)), c=array("c", (features,)))
    if kind == "Merge":
        return Merge(entry.get("mode"))
    if kind == "Combine":
        return Combine(entry.get("op"))
    if kind == "Concat":
        return Concat()
    if kind == "Slice":
        return Slice(entry.get("begin"), entry.get("end"))
    if kind == "Masking":
        return Masking(entry.get("value"))
    if kind in ("Repeat", "Unflatten"):
        return (Repeat if kind == "Repeat" else Unflatten)(entry.get("steps"))
    if kind == "Crop":
        return Crop(entry.get("left"), entry.get("right"))
    if kind == "PReLU":
        _expect(features is not None, f"{where}: token ids go only into an Embedding")
        steps = entry.get("steps")
        shape = (features,) if steps is None else (_int_field(entry, "steps", where), features)
        _check_budget(shape[0] * shape[-1] if len(shape) == 2 else features, budget, where)
        return PReLU(array("alpha", shape))
    _expect(features is not None or kind == "Embedding", f"{where}: token ids go only into an Embedding")
    if kind in _LAYERS_1_1:
        return _LAYERS_1_1[kind](entry, array, features, budget, where)
    if kind in _TIME_LAYER_FIELDS:
        return _time_layer_from_json(entry, kind, where, features, budget, array)
    return Reverse() if kind == "Reverse" else LastStep()


# ---- format 1.1 layers (issue 12) ----

def _embedding_from_json(entry, array, features, budget, where):
    _expect(features is None, f"{where}: an Embedding must be the first layer of a model whose input_size is null")
    vocabulary, dims = _int_field(entry, "vocabulary", where), _int_field(entry, "features", where)
    _check_budget(vocabulary * dims, budget, where)
    return Embedding(array("table", (vocabulary, dims)))


def _layer_norm_from_json(entry, array, features, budget, where):
    _check_budget(2 * features, budget, where)
    return LayerNorm(array("gamma", (features,)), array("beta", (features,)), entry.get("epsilon"))


def _unit_norm_from_json(entry, array, features, budget, where):
    return UnitNorm(entry.get("epsilon"))


_LAYERS_1_1 = {"Embedding": _embedding_from_json, "LayerNorm": _layer_norm_from_json,
               "UnitNorm": _unit_norm_from_json,
               "GlobalPool": lambda entry, *_: GlobalPool(entry.get("mode")),
               "Flatten": lambda entry, array, features, budget, where: Flatten(_int_field(entry, "steps", where))}


def _check_budget(count, budget, where):
    """Take ``count`` parameters from ``budget`` (a one-element list: what the file has left)."""
    budget[0] -= count
    _expect(budget[0] >= 0, f"{where}: the model declares more than {MAX_PARAMETERS} parameters "
                            "(grurt.formats.npz.MAX_PARAMETERS)")


def load_npz(path):
    """Read a grurt .npz file into a :class:`grurt.Model` (format 3.0: a :class:`grurt.TensorModel`)."""
    from ..model import Model

    with _open_archive(path) as archive:
        try:
            header = _read_header(archive)
            if str(header["format_version"]).startswith("3."):
                from ..tensor_model import TensorModel
                weights = header.get("weights", "float32")
                if weights not in precision.WEIGHT_MODES:
                    raise UnsupportedModelError(f"header: weights {weights!r} are not supported by this grurt "
                                                f"(it knows {', '.join(precision.WEIGHT_MODES)})")
                return TensorModel(_tensor_graph_from_header(archive, header), weights=weights)
            budget, stored = [MAX_PARAMETERS], {}
            if str(header["format_version"]).startswith("2."):
                spec, layers = _graph_from_header(archive, header, budget, stored)
            else:
                spec, layers = _chain_from_header(archive, header, budget, stored)
            modes = {layer_weights for layer_weights, layer in layers if isinstance(layer, GRU)}
            _expect(len(modes) <= 1, f"GRU layers with different weight modes ({', '.join(sorted(modes))}): "
                                     "grurt runs one mode per model")
            weights = modes.pop() if modes else "float32"
            expected = {f"{i}.{name}.npy" for i, (_, layer) in enumerate(layers)
                        for name in _ARRAYS.get(type(layer), ())}
            expected |= {f"{i}.h0.npy" for i, (_, layer) in enumerate(layers)
                         if isinstance(layer, GRU) and layer.initial_state is not None}
            expected |= {f"{i}.{name}_scale.npy" for i, name in stored if weights == "int8"}
            extra = set(archive.namelist()) - expected - {HEADER_KEY + ".npy"}
            _expect(not extra, f"unexpected arrays in the file: {sorted(name[:-4] for name in extra)}")
            if isinstance(spec, Graph):     # the stored arrays by the graph's node order (it may reorder)
                position = {id(node.layer): i for i, node in enumerate(spec.nodes)}
                stored = {(position[id(layers[i][1])], name): parts for (i, name), parts in stored.items()
                          if id(layers[i][1]) in position}
        except GrurtError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, zlib.error, NotImplementedError) as exc:
            raise ModelFormatError(f"{path}: corrupt grurt model ({type(exc).__name__}: {exc})") from None
    return Model(spec, weights, stored)


def _chain_from_header(archive, header, budget, stored):
    """Format 1.x: the ModelSpec, and (weights mode, layer) per layer."""
    # input_size null: the model takes token ids (its first layer is an Embedding, format 1.1)
    features = None if header.get("input_size", 0) is None else _int_field(header, "input_size", "header")
    entries = header.get("layers")
    _expect(isinstance(entries, list) and entries, "header: 'layers' must be a non-empty list")
    _expect(features is not None or (isinstance(entries[0], dict) and entries[0].get("type") == "Embedding"),
            "header: input_size is null but the first layer is not an Embedding")
    layers, has_time = [], True
    for index, entry in enumerate(entries):
        _expect(not isinstance(entry, dict) or entry.get("type") not in _GRAPH_ONLY,
                f"layer {index} ({entry.get('type') if isinstance(entry, dict) else ''}) is only valid in a graph "
                "(format 2.0)")
        layers.append(_layer_from_json(archive, entry, index, features, budget, stored))
        # what ModelSpec checks, layer by layer (a ModelSpec per layer was quadratic in the layers)
        features, has_time = layer_output(f"layer {index} ({type(layers[-1]).__name__})", layers[-1], features,
                                          has_time)
    spec = ModelSpec(input_size=header["input_size"], layers=tuple(layers), mask_value=header.get("mask_value"))
    return spec, [(entry.get("weights", "float32"), layer) for entry, layer in zip(entries, layers)]


def _graph_from_header(archive, header, budget, stored):
    """Format 2.0: the Graph, and (weights mode, layer) per node as the file lists them."""
    def entries(key):
        value = header.get(key)
        _expect(isinstance(value, list) and value and all(isinstance(v, dict) for v in value),
                f"header: '{key}' must be a non-empty list of objects")
        return value

    inputs = []
    for index, entry in enumerate(entries("inputs")):
        unknown = set(entry) - {"name", "kind", "size", "directions"}
        _expect(not unknown, f"input {index}: unknown fields {sorted(unknown)}")
        inputs.append(Input(entry.get("name"), entry.get("size"), entry.get("kind", "sequence"),
                            entry.get("directions", 1)))
    tensors = {i.name: Tensor(None if i.kind == "ids" else i.size, i.kind in ("sequence", "ids")) for i in inputs}
    nodes, layers = [], []
    for index, entry in enumerate(entries("nodes")):
        where = f"node {index}"
        unknown = set(entry) - {"layer", "inputs", "outputs"}
        _expect(not unknown, f"{where}: unknown fields {sorted(unknown)}")
        names = entry.get("inputs"), entry.get("outputs")
        _expect(all(isinstance(n, list) and n and all(isinstance(v, str) for v in n) for n in names),
                f"{where}: 'inputs' and 'outputs' must be non-empty lists of tensor names")
        _expect(all(name in tensors for name in names[0]),
                f"{where}: reads a tensor that no input or earlier node defines ({names[0]})")
        layer = _layer_from_json(archive, entry.get("layer"), index, tensors[names[0][0]].features, budget, stored)
        node = Node(layer, tuple(names[0]), tuple(names[1]))
        _expect(not set(node.outputs) & set(tensors), f"{where}: defines tensor(s) already defined {node.outputs}")
        check_node(node, tensors)
        nodes.append(node)
        layers.append((entry["layer"].get("weights", "float32"), layer))
    outputs = []
    for index, entry in enumerate(entries("outputs")):
        unknown = set(entry) - {"name", "directions"}
        _expect(not unknown, f"output {index}: unknown fields {sorted(unknown)}")
        outputs.append(Output(entry.get("name"), entry.get("directions")))
    return Graph(tuple(inputs), tuple(nodes), tuple(outputs)), layers


# ---- format 1.1: layers over time (Conv1D, Pool1D, ZeroPad1D) ----

_TIME_LAYER_FIELDS = {
    "Conv1D": {"type", "out_channels", "kernel_size", "stride", "dilation", "groups", "padding", "activation"},
    "Pool1D": {"type", "mode", "size", "stride", "padding", "count_include_pad"},
    "ZeroPad1D": {"type", "left", "right"},
}
_LAYER_FIELDS.update(_TIME_LAYER_FIELDS)
_ARRAYS[Conv1D] = ("W", "b")


def _padding_to_json(padding):
    return padding if isinstance(padding, str) else list(padding)


def _time_layer_to_json(layer) -> dict:
    if isinstance(layer, Conv1D):
        return {"type": "Conv1D", "out_channels": layer.out_channels, "kernel_size": layer.kernel_size,
                "stride": layer.stride, "dilation": layer.dilation, "groups": layer.groups,
                "padding": _padding_to_json(layer.padding), "activation": _activation_to_json(layer.activation)}
    if isinstance(layer, Pool1D):
        return {"type": "Pool1D", "mode": layer.mode, "size": layer.size, "stride": layer.stride,
                "padding": _padding_to_json(layer.padding), "count_include_pad": layer.count_include_pad}
    return {"type": "ZeroPad1D", "left": layer.left, "right": layer.right}


def _padding_from_json(entry, where):
    value = entry.get("padding", [0, 0])
    if isinstance(value, list):
        _expect(len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
                                        for v in value),
                f"{where}: 'padding' must be [left, right] frame counts, got {value!r}")
        return tuple(value)
    return value      # a name: checked by the layer


def _count_field(entry, key, where, default):
    value = entry.get(key, default)
    _expect(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31,
            f"{where}: '{key}' must be a non-negative integer below 2**31, got {value!r}")
    return value


def _time_layer_from_json(entry, kind, where, features, budget, array):
    if kind == "Conv1D":
        out, k = _int_field(entry, "out_channels", where), _int_field(entry, "kernel_size", where)
        groups = entry.get("groups", 1)
        _expect(isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1 and features % groups == 0,
                f"{where}: 'groups' must be a positive integer dividing the {features} input channels, got {groups!r}")
        _check_budget(out * (features // groups * k + 1), budget, where)
        return Conv1D(W=array("W", (out, features // groups, k)), b=array("b", (out,)),
                      stride=entry.get("stride", 1), dilation=entry.get("dilation", 1), groups=groups,
                      padding=_padding_from_json(entry, where),
                      activation=_activation_from_json(entry.get("activation", "linear"), where))
    if kind == "Pool1D":
        return Pool1D(entry.get("mode"), entry.get("size"), entry.get("stride", 1), _padding_from_json(entry, where),
                      entry.get("count_include_pad", False))
    return ZeroPad1D(_count_field(entry, "left", where, 0), _count_field(entry, "right", where, 0))


# ---- format 3.0: general tensor graphs (grurt.tensor_graph) ----

_TENSOR_HEADER_FIELDS = {"format", "format_version", "producer", "inputs", "nodes", "outputs", "constants", "metadata",
                         "weights"}
_TENSOR_DTYPES = ("float32", "int64", "bool")


def _save_tensor_graph(graph, path, metadata=None, weights="float32") -> None:
    """Format 3.0: the graph's inputs, nodes (op, name, inputs, outputs, checked attributes) and
    outputs in the header; each constant and tensor attribute an array of the archive, named in the
    header with its dtype and shape. A model of reduced-precision GRU weights stores its float32
    values and the mode ("weights"), from which loading rounds them again, to the same bits."""
    from ..ops.chain import chain_spec
    from ..tensor_graph import _is_layers

    arrays = {}

    def array(prefix, value):
        key = f"{prefix}.{len(arrays)}"
        arrays[key] = value
        return {"array": key, "dtype": str(value.dtype), "shape": list(value.shape)}

    def layers(value, node):
        """A "layers" attribute: each layer's entry as format 1.x writes it, its arrays under one prefix, and the
        features its first layer reads (the input size of its grurt.Chain)."""
        prefix = f"attribute.{len(arrays)}"
        for index, layer in enumerate(value):
            arrays.update((f"{prefix}.{index}.{name}", a) for name, a in _layer_arrays(layer).items())
        return {"layers": [_layer_to_json(layer) for layer in value], "arrays": prefix,
                "input_size": chain_spec(node.attrs).input_size}

    constants = {name: array("constant", value) for name, value in graph.constants.items()}
    nodes = []
    for node in graph.nodes:
        attrs = {name: {"tensor": array("attribute", value)} if isinstance(value, np.ndarray)
                 else layers(value, node) if _is_layers(value)
                 else list(value) if isinstance(value, tuple) else value
                 for name, value in node.attrs.items() if value is not None}
        nodes.append({"op": node.op, "name": node.name, "inputs": list(node.inputs), "outputs": list(node.outputs),
                      "attrs": attrs})
    header = {"format": FORMAT_NAME, "format_version": "3.0", "producer": f"grurt {__version__}",
              "inputs": [{"name": i.name, "dtype": i.dtype, "dims": list(i.dims)} for i in graph.inputs],
              "nodes": nodes, "outputs": list(graph.outputs), "constants": constants}
    if weights != "float32":
        header["weights"] = weights
    if metadata:
        header["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _tensor_graph_from_header(archive, header):
    """Format 3.0: the TensorGraph, every array's dtype and shape checked against the header and the
    parameter budget before it is read, then validated as any TensorGraph (ops and attributes
    against the registry)."""
    from ..tensor_graph import MAX_RANK, TensorGraph, TensorInput, TensorNode

    budget, read, prefixes = [MAX_PARAMETERS], set(), set()

    def listed(value, what):
        _expect(isinstance(value, list), f"header: '{what}' must be a list")
        return value

    def fields(entry, allowed, where):
        _expect(isinstance(entry, dict), f"{where} must be an object")
        unknown = set(entry) - allowed
        _expect(not unknown, f"{where}: unknown fields {sorted(unknown)}")
        return entry

    def stored_array(entry, where):
        fields(entry, {"array", "dtype", "shape"}, where)
        key, dtype, shape = entry.get("array"), entry.get("dtype"), entry.get("shape")
        _expect(isinstance(key, str) and key.startswith(("constant.", "attribute.")) and key not in read,
                f"{where}: 'array' must name an array of the file once, got {key!r}")
        _expect(dtype in _TENSOR_DTYPES, f"{where}: dtype must be one of {_TENSOR_DTYPES}, got {dtype!r}")
        _expect(isinstance(shape, list) and len(shape) <= MAX_RANK
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_PARAMETERS for d in shape),
                f"{where}: shape must be a list of at most {MAX_RANK} sizes, got {shape!r}")
        count = 1
        for d in shape:
            count *= d
        _check_budget(count, budget, where)
        read.add(key)
        # (reshaped: np.ascontiguousarray in _read_array makes a 0-d array 1-d)
        return _read_array(archive, key, tuple(shape), where, dtype).reshape(shape)

    def layers(value, where):
        """A "layers" attribute (see _save_tensor_graph), every number bounded as format 1.x reads it."""
        fields(value, {"layers", "arrays", "input_size"}, where)
        entries, prefix = value.get("layers"), value.get("arrays")
        _expect(isinstance(entries, list) and 0 < len(entries) <= MAX_LAYER_INDEX + 1,
                f"{where}: 'layers' must be a list of 1 to {MAX_LAYER_INDEX + 1} layers")
        _expect(isinstance(prefix, str) and re.fullmatch(r"attribute\.[0-9]{1,9}", prefix) is not None
                and prefix not in prefixes, f"{where}: 'arrays' must name a prefix 'attribute.<n>' of the file once, "
                f"got {str(prefix)[:100]!r}")
        prefixes.add(prefix)
        features = None if value.get("input_size") is None else _int_field(value, "input_size", where)
        result, has_time, stored = [], True, {}
        try:
            for index, entry in enumerate(entries):
                _expect(not isinstance(entry, dict) or entry.get("type") not in _GRAPH_ONLY,
                        f"layer {index} ({entry.get('type') if isinstance(entry, dict) else ''}) is only valid in "
                        "a graph (format 2.x)")
                _expect(index or features is not None or isinstance(entry, dict) and entry.get("type") == "Embedding",
                        "input_size is null but the first layer is not an Embedding")
                layer = _layer_from_json(archive, entry, index, features, budget, stored, prefix + ".")
                features, has_time = layer_output(f"layer {index} ({type(layer).__name__})", layer, features,
                                                  has_time)
                read.update(f"{prefix}.{index}.{name}" for name in _layer_arrays(layer))
                result.append(layer)
        except GrurtError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        _expect(not stored, f"{where}: a GRU of format 3.0 stores float32 weights (the header's 'weights' gives "
                            "the mode they run in)")
        return tuple(result)

    def attribute(value, where):
        if isinstance(value, dict) and "layers" in value:
            return layers(value, where)
        if isinstance(value, dict):
            return stored_array(fields(value, {"tensor"}, where).get("tensor"), where)
        _expect(isinstance(value, (int, float, str)) and not isinstance(value, bool)
                or isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool)
                                                   for v in value),
                f"{where}: an attribute is a number, a string, a list of them or {{'tensor': ...}}")
        return value

    inputs = []
    for index, entry in enumerate(listed(header.get("inputs"), "inputs")):
        fields(entry, {"name", "dtype", "dims"}, f"input {index}")
        inputs.append(TensorInput(entry.get("name"), entry.get("dtype"), entry.get("dims")))
    constants = {}
    declared = header.get("constants", {})
    _expect(isinstance(declared, dict), "header: 'constants' must be an object")
    for name, entry in declared.items():
        constants[name] = stored_array(entry, f"constant '{name[:200]}'")
    nodes = []
    for index, entry in enumerate(listed(header.get("nodes"), "nodes")):
        where = f"node {index}"
        fields(entry, {"op", "name", "inputs", "outputs", "attrs"}, where)
        attrs = entry.get("attrs", {})
        _expect(isinstance(attrs, dict), f"{where}: 'attrs' must be an object")
        attrs = {key: attribute(value, f"{where}: attribute {key[:100]}") for key, value in attrs.items()}
        nodes.append(TensorNode(entry.get("op"), entry.get("inputs"), entry.get("outputs"), attrs,
                                entry.get("name", "")))
    graph = TensorGraph(inputs, nodes, listed(header.get("outputs"), "outputs"), constants)
    extra = set(archive.namelist()) - {key + ".npy" for key in read} - {HEADER_KEY + ".npy"}
    _expect(not extra, f"unexpected arrays in the file: {sorted(name[:-4] for name in extra)[:10]}")
    return graph
