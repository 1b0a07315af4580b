"""Reading Keras files: the ``.keras`` zip archive and the legacy HDF5 file, with pyfive alone.

Both give the (model config, weights by layer name, Keras version) triple that
:func:`grurt.importers.keras.layers.spec_from_keras` translates; every size is bounded by
:mod:`grurt.limits`.
"""
from __future__ import annotations

import io
import math
import os
import re
import zipfile

import numpy as np

from ...errors import GrurtError, ModelFormatError, UnsupportedModelError
from ...limits import MAX_ARRAYS, MAX_HDF5_BYTES, MAX_JSON_BYTES, MAX_PARAMETERS, parse_json
from .layers import _layer_name, model_layers

def read_keras(path):
    """Read a Keras file into (model config, weights by layer name, Keras version).

    HDF5 is read by pyfive, a pure-Python reader, never by libhdf5: a model file is data from
    possibly untrusted hands, and libhdf5 crashes the process (segfaults) or hangs on some
    malformed files (docs/state_dicts.md, "Hostile files"). pyfive and zipfile being pure
    Python, any exception they raise on the file's bytes means a malformed file: it becomes
    a ModelFormatError.
    """
    path = os.fspath(path)
    try:
        import pyfive
    except ImportError:
        raise ImportError("reading Keras files needs pyfive: pip install grurt[keras]") from None
    with open(path, "rb") as handle:        # FileNotFoundError stays itself
        signature = handle.read(len(HDF5_SIGNATURE))
    try:
        if zipfile.is_zipfile(path):
            return _read_archive(path, pyfive)
        if signature == HDF5_SIGNATURE:
            if os.path.getsize(path) > MAX_HDF5_BYTES:
                raise ModelFormatError(f"{path}: larger than {MAX_HDF5_BYTES >> 20} MiB (grurt.limits.MAX_HDF5_BYTES)")
            with open(path, "rb") as handle:
                return _read_hdf5(path, pyfive.File(io.BytesIO(handle.read())))
    except GrurtError:
        raise
    except Exception as exc:    # noqa: BLE001 - pure-Python parsers: any failure is a malformed file
        raise ModelFormatError(f"{path}: malformed Keras file ({type(exc).__name__}: {str(exc)[:200]})") from None
    raise ModelFormatError(f"{path}: neither a .keras archive (zip) nor an HDF5 file")


#: The first bytes of an HDF5 file without a user block (the only kind Keras writes).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# ---- .keras archive: config.json, metadata.json, model.weights.h5 ----

def _read_archive(path, pyfive):
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if len(names) > MAX_ARRAYS:
            raise ModelFormatError(f"{path}: the archive has {len(names)} members, more than {MAX_ARRAYS}")
        if "config.json" not in names:
            raise ModelFormatError(f"{path}: the .keras archive has no config.json")
        config = _json(_archive_member(archive, "config.json", MAX_JSON_BYTES), f"{path}: config.json")
        metadata = _json(_archive_member(archive, "metadata.json", MAX_JSON_BYTES), f"{path}: metadata.json") \
            if "metadata.json" in names else {}
        if "model.weights.h5" not in names:
            raise ModelFormatError(f"{path}: the .keras archive has no model.weights.h5, so no weights")
        _, _, layers = model_layers(config)
        store = pyfive.File(io.BytesIO(_archive_member(archive, "model.weights.h5", MAX_HDF5_BYTES)))
        weights = {}
        for layer, group in _archive_paths(layers):
            weights[_layer_name(layer)] = _archive_vars(store[group], f"{path}: {group}", layer) \
                if group in store else []
    return config, weights, _text(metadata.get("keras_version", "3"))


def _archive_member(archive, name, limit) -> bytes:
    """A member's bytes, refused when it would decompress to more than ``limit`` bytes (zip bombs)."""
    if archive.getinfo(name).file_size > limit:
        raise ModelFormatError(f"{name} is larger than {limit >> 20} MiB")
    with archive.open(name) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise ModelFormatError(f"{name} is larger than {limit >> 20} MiB")
    return data


def _archive_paths(layers):
    """Where Keras 3 stores each layer: ``layers/<snake_case(class)>[_k]``, counted in model order
    (``keras.ops`` operations of a functional model are no layers: they have no entry)."""
    used = {}
    for layer in layers:
        if str(layer.get("module", "")).startswith("keras.src.ops"):
            continue
        base = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", layer["class_name"])).lower()
        used[base] = used.get(base, -1) + 1
        yield layer, f"layers/{base}_{used[base]}" if used[base] else f"layers/{base}"


#: Sublayers whose variables follow a layer's own, in get_weights() order: an RNN's cell, a wrapper's
#: layer(s), MultiHeadAttention's projections (the gate's between the key's and the value's).
_SUBLAYERS = ("forward_layer", "backward_layer", "cell", "layer", "query_dense", "key_dense", "_gate_dense",
              "value_dense", "output_dense")


def _archive_vars(group, where, layer=None, depth=0):
    """A layer's variables in get_weights() order: its own, then its sublayers', then (a nested model)
    its layers' in the model's order."""
    arrays = []
    if depth > 8:
        raise ModelFormatError(f"{where}: sublayers nested too deep")
    if "vars" in group:
        variables = group["vars"]
        if len(variables) > MAX_ARRAYS:
            raise ModelFormatError(f"{where}/vars: {len(variables)} variables, more than {MAX_ARRAYS}")
        try:
            arrays = [_array(variables[str(i)], where) for i in range(len(variables))]
        except KeyError:
            raise ModelFormatError(f"{where}/vars: variables are not numbered 0..{len(variables) - 1}") from None
    config = layer.get("config") if isinstance(layer, dict) else None
    config = config if isinstance(config, dict) else {}
    wrapped = {"layer": config.get("layer"), "forward_layer": config.get("layer"),
               "backward_layer": config.get("backward_layer") or config.get("layer")}
    for child in _SUBLAYERS:
        if child in group:
            arrays += _archive_vars(group[child], f"{where}/{child}", wrapped.get(child), depth + 1)
    if "layers" in group and isinstance(config.get("layers"), list):       # a model used as a layer
        _, _, layers = model_layers(layer)
        for inner, path in _archive_paths(layers):
            path = path.partition("/")[2]
            if path in group["layers"]:
                arrays += _archive_vars(group["layers"][path], f"{where}/layers/{path}", inner, depth + 1)
    return arrays


# ---- legacy HDF5: model_config attribute, model_weights/<layer>/<weight name> ----

def _read_hdf5(path, f):
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
    """A weight dataset, its type and size checked before it is read (the file may be hostile)."""
    if not hasattr(node, "dtype") or not hasattr(node, "shape") or node.dtype.kind not in "fiu":
        raise ModelFormatError(f"{where}: {getattr(node, 'name', '?')} is not a numeric dataset")
    size = math.prod(int(d) for d in node.shape)
    if size > MAX_PARAMETERS:
        raise ModelFormatError(f"{where}: {node.name} has {size} elements, more than {MAX_PARAMETERS}")
    if getattr(node, "compression", None) is not None or getattr(node, "shuffle", False):
        raise UnsupportedModelError(f"{where}: {node.name} is compressed; grurt reads uncompressed "
                                    "datasets (what Keras writes)")
    array = np.asarray(node[()])
    if array.shape != tuple(node.shape) or array.dtype.kind not in "fiu":
        raise ModelFormatError(f"{where}: {node.name} does not hold the {tuple(node.shape)} numbers it declares")
    return array


def _attribute_list(group, name):
    """A list of names stored as an HDF5 attribute, split into ``name0``, ``name1``... when large."""
    attrs = group.attrs
    chunks = [attrs[name]] if name in attrs else []
    while f"{name}{len(chunks)}" in attrs and len(chunks) <= MAX_ARRAYS:
        chunks.append(attrs[f"{name}{len(chunks)}"])
    names = [item for chunk in chunks for item in np.atleast_1d(chunk)]
    if len(names) > MAX_ARRAYS:
        raise ModelFormatError(f"attribute {name!r} lists {len(names)} names, more than {MAX_ARRAYS}")
    return [_text(item) for item in names]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _json(raw, where):
    value = parse_json(raw.tobytes() if isinstance(raw, np.ndarray) and raw.dtype.kind == "S" else
                       raw if isinstance(raw, (bytes, str)) else _text(raw), where)
    if not isinstance(value, dict):
        raise ModelFormatError(f"{where} is not a JSON object")
    return value
