"""ONNX files → a general :class:`~grurt.tensor_graph.TensorGraph`: each node of the file becomes
a node of the op of the same name in grurt's registry (:mod:`grurt.ops`), the file's names kept.

This is the one reading of a file's nodes: :func:`grurt.importers.onnx.load_onnx` gives this graph
to the fusion pass (:func:`grurt.fusion.fuse`) and runs it as it is when the pass does not
recognize it. Only translation happens here:

=========================  ===================================================================
the file                   the graph
=========================  ===================================================================
initializers, ``Constant``  constants (float64/float16 → float32, integers → int64)
graph inputs               :class:`~grurt.tensor_graph.TensorInput`: float32, int64 or bool;
                           a dim without a value is a dim parameter (its ``dim_param``, or
                           ``input:axis``)
``Softmax``, ``LogSoftmax``,  before opset 13 they act on the input flattened from ``axis`` (default
``Hardmax`` (opset < 13)   1) into 2-D: Flatten(axis) → the op on the last axis → Reshape back
``Split`` without sizes    ``num_outputs`` = the node's outputs (the opset-18 attribute)
``TopK`` ``k`` (< 10),     the attribute becomes the constant input of the newest opset
``Dropout`` ``ratio`` (<12)
other domains, subgraphs   refused, naming the node
=========================  ===================================================================

Attributes are read against the op's own (:func:`.proto._attributes`): an attribute the
registry does not know is refused by name and value. Validation (names, counts, attribute
values, sizes) is :class:`~grurt.tensor_graph.TensorGraph`'s, shapes are the planner's.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelFormatError, UnsupportedModelError
from ...ops import lookup
from ...tensor_graph import TensorGraph, TensorInput, TensorNode, canonical_array
from .proto import _DEFAULT_DOMAINS, _attributes, _live_nodes

_LOOP_HINT = {"Loop": " (tf2onnx writes Keras GRUs other than sigmoid/reset_after=True as a Loop)"}

#: Softmax-like ops whose meaning changed at opset 13 (from "flatten from axis" to "along axis").
_FLATTENING = ("Softmax", "LogSoftmax", "Hardmax")
#: Attributes of older opsets that became an input: op -> (attribute, input index, dtype).
_AS_INPUT = {"TopK": ("k", 1, np.int64), "Dropout": ("ratio", 1, np.float32)}
_CONSTANT_VALUES = {"value": None, "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                    "value_ints": np.int64}


def tensor_graph_from_source(source) -> TensorGraph:
    """The TensorGraph of a parsed file (:func:`.proto._open`)."""
    graph = source.model.graph
    inputs = [TensorInput(name, _dtype_name(name, dtype), tuple(dims)) for name, dtype, dims in source.inputs]
    constants = dict(source.constants)
    taken = set(constants) | {name for name, _, _ in source.inputs}
    taken |= {name for node in graph.node for name in node.output}
    nodes = []
    for index, node in enumerate(_live_nodes(graph)):
        name = node.name or next((o for o in node.output if o), f"{node.op_type}_{index}")
        where = f"node '{name}' ({node.op_type})"
        if node.domain not in _DEFAULT_DOMAINS:
            raise UnsupportedModelError(f"{where}: operators of domain '{node.domain}' are not supported "
                                        "(grurt reads the default ONNX domain)")
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant(node, source.folder, where)
            continue
        if node.op_type.startswith("grurt."):      # grurt's own ops come from its importers, not from files
            raise UnsupportedModelError(f"{where}: operator {node.op_type} is not an ONNX operator")
        try:
            op = lookup(node.op_type, where)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"{exc}{_LOOP_HINT.get(node.op_type, '')}") from None
        _refuse_subgraphs(node, where)
        moved = _AS_INPUT.get(node.op_type)
        allowed = set(op.attributes) | ({moved[0]} if moved else set())
        attrs = _attributes(node, allowed, source.folder, where)
        node_inputs, node_outputs = list(node.input), list(node.output)
        if moved and moved[0] in attrs and moved[0] not in op.attributes:
            value = attrs.pop(moved[0])
            constant = _fresh(f"{name}:{moved[0]}", taken)
            constants[constant] = np.asarray(value if node.op_type != "TopK" else [value], moved[2])
            node_inputs = (node_inputs + [""] * moved[1])[:moved[1]] + [constant] + node_inputs[moved[1] + 1:]
        if node.op_type == "Split" and len(node_inputs) < 2 and attrs.get("split") is None \
                and attrs.get("num_outputs") is None and "num_outputs" in op.attributes:
            attrs["num_outputs"] = len(node_outputs)
        if node.op_type in _FLATTENING and source.opset < 13:
            nodes += _flattening(node.op_type, name, attrs.get("axis", 1), node_inputs[0], node_outputs[0], taken)
            continue
        nodes.append(_node(node.op_type, node_inputs, node_outputs, attrs, name))
    outputs = [info.name for info in graph.output]
    return TensorGraph(inputs, nodes, outputs, constants)


def _node(op, inputs, outputs, attrs, name):
    return TensorNode(op, tuple(inputs), tuple(outputs), attrs, name)


def _dtype_name(name, dtype) -> str:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return "float32"
    if kind in "iu":
        return "int64"
    if kind == "b":
        return "bool"
    raise UnsupportedModelError(f"graph input '{name}' has element type {dtype}; grurt reads float, integer and "
                                "bool inputs")


def _refuse_subgraphs(node, where):
    from onnx import AttributeProto

    for attr in node.attribute:
        if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            raise UnsupportedModelError(f"{where}: attribute {attr.name} holds a subgraph (control flow is not "
                                        "supported)")


def _constant(node, folder, where) -> np.ndarray:
    """The value of a ``Constant`` node, in its canonical dtype."""
    attrs = _attributes(node, set(_CONSTANT_VALUES), folder, where)
    if len(attrs) != 1 or len(node.output) != 1:
        raise ModelFormatError(f"{where}: a Constant has exactly one value attribute and one output, got "
                               f"{sorted(attrs) or 'none'}")
    (kind, value), = attrs.items()
    return canonical_array(np.asarray(value, _CONSTANT_VALUES[kind]) if _CONSTANT_VALUES[kind] else value,
                           f"{where}: its value")


def _fresh(base: str, taken: set) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}:{k}"
    taken.add(name)
    return name


def _flattening(op, name, axis, x, y, taken):
    """An opset < 13 Softmax/LogSoftmax/Hardmax over ``x`` flattened into 2-D at ``axis``: the same op
    along the last axis of Flatten(x, axis), reshaped back to x's shape (all views; the shape folds)."""
    flat, out, shape = (_fresh(f"{name}:{part}", taken) for part in ("flat", "out", "shape"))
    return [_node("Flatten", [x], [flat], {"axis": axis}, f"{name}:flatten"),
            _node(op, [flat], [out], {"axis": -1}, name),
            _node("Shape", [x], [shape], {}, f"{name}:shape"),
            _node("Reshape", [out, shape], [y], {}, f"{name}:reshape")]
