"""Reading an ONNX file. Everything in it is untrusted.

The protobuf is parsed by the ``onnx`` package without its external data; sizes, data types,
external data locations (inside the model's folder only), graph inputs, attributes and the
operator set are checked here before anything is allocated or interpreted.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ...errors import ModelFormatError, UnsupportedModelError
from ...limits import MAX_ARRAYS, MAX_PARAMETERS

#: Operator set versions of the default domain that grurt reads.
_OPSETS = (7, 22)
_DEFAULT_DOMAINS = ("", "ai.onnx")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX files needs the onnx package: pip install grurt[onnx]") from None
    return onnx


def _read_model(path):
    """The ModelProto of a file path or of a file's bytes."""
    onnx = _onnx()
    try:
        if isinstance(path, (bytes, bytearray, memoryview)):
            model = onnx.load_model_from_string(bytes(path))
            path = "the model bytes"
        else:
            model = onnx.load_model(os.fspath(path), load_external_data=False)
    except OSError:
        raise
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ... on garbage
        raise ModelFormatError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    if model.ir_version < 1 or not model.HasField("graph"):
        raise ModelFormatError(f"{path}: not an ONNX model (no IR version or no graph)")
    _check_strings(model, path)
    return model


def _check_strings(model, path):
    """Refuse string fields (names, op types, dims, attributes) that are not UTF-8: protobuf hands
    them over as bytes, which no name lookup expects."""
    from google.protobuf.descriptor import FieldDescriptor

    stack = [model]
    while stack:
        message = stack.pop()
        for descriptor, value in message.ListFields():
            if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                stack.extend(value if _is_repeated(descriptor) else [value])
            elif descriptor.type == FieldDescriptor.TYPE_STRING:
                values = value if _is_repeated(descriptor) else [value]
                if not all(isinstance(v, str) for v in values):
                    raise ModelFormatError(f"{path}: field '{descriptor.name}' is not valid UTF-8 text")


def _is_repeated(descriptor) -> bool:
    repeated = getattr(descriptor, "is_repeated", None)    # protobuf >= 5.28; .label before
    return repeated if isinstance(repeated, bool) else descriptor.label == descriptor.LABEL_REPEATED


def _tensor_array(tensor, folder, where):
    """A TensorProto as a numpy array, with its size and any external file checked first."""
    from onnx import TensorProto, helper, numpy_helper

    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims) or math.prod(dims) > MAX_PARAMETERS:
        raise ModelFormatError(f"{where}: tensor '{tensor.name}' declares shape {tuple(dims)}, "
                               f"more than the {MAX_PARAMETERS} elements grurt accepts")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "fiub":
        name = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in TensorProto.DataType.values() \
            else tensor.data_type
        raise UnsupportedModelError(f"{where}: tensor '{tensor.name}' has unsupported data type {name}")
    if tensor.data_location == TensorProto.EXTERNAL:
        tensor = _with_external_data(tensor, folder, math.prod(dims) * dtype.itemsize, where)
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelFormatError(f"{where}: tensor '{tensor.name}' is corrupt ({exc})") from None


def _with_external_data(tensor, folder, nbytes, where):
    """A copy of ``tensor`` with its external bytes read in; the file must lie in ``folder``."""
    from onnx import TensorProto

    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError:
        raise ModelFormatError(f"{where}: tensor '{tensor.name}' has a malformed external data offset/length") from None
    if folder is None:
        raise ModelFormatError(f"{where}: tensor '{tensor.name}' keeps its data in an external file, which a model "
                               "given as bytes cannot point to: load it from its path")
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, location))
    if not location or os.path.isabs(location) or os.path.commonpath([root, target]) != root:
        raise ModelFormatError(f"{where}: tensor '{tensor.name}' points to external data {location!r} "
                               "outside the model's folder")
    if length != nbytes or offset < 0:
        raise ModelFormatError(f"{where}: tensor '{tensor.name}' declares {length} bytes of external data "
                               f"at offset {offset}, its shape needs {nbytes}")
    try:
        with open(target, "rb") as handle:
            handle.seek(offset)
            data = handle.read(nbytes)
    except OSError as exc:
        raise ModelFormatError(f"{where}: cannot read external data of tensor '{tensor.name}' ({exc})") from None
    if len(data) != nbytes:
        raise ModelFormatError(f"{where}: external data file {location!r} of tensor '{tensor.name}' is truncated")
    copy = TensorProto()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = TensorProto.DEFAULT
    copy.raw_data = data
    return copy


def _graph_inputs(model):
    """(name, numpy dtype, dims) of each real graph input; dims are ints or dim-parameter names."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for info in model.graph.input:
        if info.name in initializers:  # IR < 4 lists initializers as inputs too
            continue
        if info.type.WhichOneof("value") != "tensor_type":
            raise UnsupportedModelError(f"graph input '{info.name}' is not a tensor")
        tensor_type = info.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise UnsupportedModelError(f"graph input '{info.name}' has unsupported element type "
                                        f"{tensor_type.elem_type}") from None
        if not tensor_type.HasField("shape"):
            raise UnsupportedModelError(f"graph input '{info.name}' has no declared rank")
        dims = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                if dim.dim_value < 1:
                    raise ModelFormatError(f"graph input '{info.name}' declares dimension {dim.dim_value}")
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or f"{info.name}:{axis}")
        inputs.append((info.name, dtype, dims))
    return inputs


#: The type of each attribute the importer reads, by name, as the ONNX operator schemas give it
#: (a name has one type in every op; "value" is a TENSOR but a FLOAT in Pad before opset 11). An
#: attribute of another type is refused by name before any handler reads it.
_ATTRIBUTE_TYPES = {
    **dict.fromkeys(("allowzero", "axis", "ceil_mode", "count_include_pad", "end", "group", "hidden_size",
                     "keepdims", "layout", "linear_before_reset", "noop_with_empty_axes", "num_outputs", "p",
                     "saturate", "seed", "start", "stash_type", "storage_order", "to", "training_mode",
                     "transA", "transB", "value_int"), ("INT",)),
    **dict.fromkeys(("axes", "dilations", "ends", "kernel_shape", "pads", "perm", "split",
                     "starts", "strides", "value_ints"), ("INTS",)),
    **dict.fromkeys(("alpha", "beta", "clip", "epsilon", "max", "min", "momentum", "ratio", "value_float"),
                    ("FLOAT",)),
    **dict.fromkeys(("activation_alpha", "activation_beta", "value_floats"), ("FLOATS",)),
    **dict.fromkeys(("auto_pad", "direction", "mode"), ("STRING",)),
    "activations": ("STRINGS",),
    "value": ("TENSOR", "FLOAT"),
}


def _attributes(node, allowed, folder, where):
    """The attributes of ``node`` by name; any not in ``allowed`` is refused by name and value, any
    of another type than ONNX gives it (_ATTRIBUTE_TYPES) by name and type."""
    from onnx import AttributeProto, helper

    attrs = {}
    for attr in node.attribute:
        kind = AttributeProto.AttributeType.Name(attr.type) if attr.type in AttributeProto.AttributeType.values() \
            else str(attr.type)
        if attr.name in allowed and kind not in _ATTRIBUTE_TYPES.get(attr.name, (kind,)):
            raise ModelFormatError(f"{where}: attribute {attr.name} has type {kind}, where ONNX gives it type "
                                   f"{' or '.join(_ATTRIBUTE_TYPES[attr.name])}")
        if attr.type == AttributeProto.TENSOR:
            value = _tensor_array(attr.t, folder, where)
        elif attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.SPARSE_TENSOR):
            value = "<subgraph or sparse tensor>"
        else:
            value = helper.get_attribute_value(attr)
        if attr.name not in allowed or attr.ref_attr_name:
            raise UnsupportedModelError(f"{where}: attribute {attr.name}={value!r} is not supported")
        try:
            if isinstance(value, list):
                value = [v.decode() if isinstance(v, bytes) else v for v in value]
            attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise ModelFormatError(f"{where}: attribute {attr.name} is not valid UTF-8 text") from None
    return attrs


def _opset(model):
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelFormatError("the model imports no version of the default ONNX operator set")
    if not _OPSETS[0] <= versions[0] <= _OPSETS[1]:
        raise UnsupportedModelError(f"ONNX operator set {versions[0]} is not supported; grurt reads "
                                    f"opsets {_OPSETS[0]} to {_OPSETS[1]}")
    return versions[0]


@dataclasses.dataclass
class _Source:
    """A parsed file, read once (then translated by :func:`.general.tensor_graph_from_source`)."""
    model: object
    folder: str
    opset: int
    constants: dict     # initializer name -> array
    inputs: list        # (name, numpy dtype, dims) of each graph input


def _open(path):
    """The parsed file at ``path`` (or given as bytes: then without external data)."""
    model = _read_model(path)
    graph = model.graph
    for what, count in (("nodes", len(graph.node)), ("initializers", len(graph.initializer)),
                        ("inputs", len(graph.input)), ("outputs", len(graph.output))):
        if count > MAX_ARRAYS:
            raise ModelFormatError(f"{path}: the graph has {count} {what}, more than {MAX_ARRAYS} "
                                   "(grurt.limits.MAX_ARRAYS)")
    folder = None if isinstance(path, (bytes, bytearray, memoryview)) else os.path.dirname(os.path.abspath(path))
    if model.graph.sparse_initializer:
        raise UnsupportedModelError("sparse initializers are not supported")
    constants = {t.name: _tensor_array(t, folder, "initializer") for t in model.graph.initializer}
    return _Source(model, folder, _opset(model), constants, _graph_inputs(model))


def _live_nodes(graph):
    """The nodes that contribute to a graph output, in graph order; dead code is not interpreted."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output if name):
            live.append(node)
            needed.update(name for name in node.input if name)
    return live[::-1]
