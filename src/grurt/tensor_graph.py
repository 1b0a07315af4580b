"""The general tensor graph: ONNX ops (:mod:`grurt.ops`) over named N-D tensors.

A :class:`TensorGraph` is named inputs (:class:`TensorInput`: dtype and dims, a dim an int or a
dim-parameter name), nodes (:class:`TensorNode`: an op of the registry applied to named
tensors, giving named tensors), named outputs and constants (weights, and anything an importer
computed once). It is validated on construction, loudly, every error naming the node (its name
and op type) or the tensor:

* every tensor name is defined once (an input, a constant or one node's output), and ``''``
  only stands for an omitted optional input or output;
* every op is in the registry (:func:`grurt.ops.lookup`), its attributes pass
  :func:`grurt.ops.check_attributes` (the node keeps the checked ones, defaults filled in), and
  its numbers of inputs and outputs are within the op's ranges;
* constants and tensor attributes are float32, int64 or bool, read-only, and hold at most
  :data:`grurt.limits.MAX_PARAMETERS` elements in all, with the weights of "layers" attributes
  (a ``grurt.Chain``'s fused layers);
* the nodes are kept in a topological order (ties in the given order), without the nodes no
  output needs; a cycle or an undefined tensor is an error naming the node that reads it.

Shapes are not known here: they depend on the inputs' sizes, and :mod:`grurt.tensor_plan`
propagates them per input signature. docs/architecture-tensor-graph.md tells how this IR and
grurt's fused layers (:mod:`grurt.spec`, :mod:`grurt.graph`) become one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Tuple, Union

import numpy as np

from .errors import ModelFormatError, UnsupportedModelError
from .limits import MAX_PARAMETERS
from .ops import canonical_dtype, check_attributes, lookup
from .spec import LAYER_TYPES, parameter_count

#: The dtypes a graph input may declare.
INPUT_DTYPES = ("float32", "int64", "bool")
#: numpy allows 64 axes; no model needs more than this.
MAX_RANK = 32
_NAME = re.compile(r"^[^\x00-\x1f]{1,1000}$")


def _name(owner: str, value) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ModelFormatError(f"{owner}: a tensor name must be a printable string of 1 to 1000 characters, "
                               f"got {_short(value)}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def canonical_array(value, what: str) -> np.ndarray:
    """``value`` as a read-only array of its canonical dtype (float32, int64 or bool); a
    ModelFormatError naming ``what`` for anything else (strings, objects, complex numbers,
    unsigned integers beyond int64)."""
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    try:
        dtype = canonical_dtype(array.dtype)
    except UnsupportedModelError:
        raise ModelFormatError(f"{what} has dtype {array.dtype}; grurt's tensors are float32, int64 or bool") from None
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise ModelFormatError(f"{what} holds integers beyond the int64 range")
    if array.dtype != dtype or array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=dtype, order="C")
        array.setflags(write=False)
    return array


@dataclass(frozen=True)
class TensorInput:
    """A graph input: its name, its dtype ("float32", "int64" or "bool") and its dims, each an
    int (a fixed size) or a string (a dim parameter: one size across all inputs that name it)."""

    name: str
    dtype: str
    dims: Tuple[Union[int, str], ...]

    def __post_init__(self):
        _name("input", self.name)
        where = f"input '{self.name}'"
        if self.dtype not in INPUT_DTYPES:
            raise ModelFormatError(f"{where}: dtype {self.dtype!r} is not one of {INPUT_DTYPES}")
        dims = self.dims
        if not isinstance(dims, (list, tuple)) or len(dims) > MAX_RANK:
            raise ModelFormatError(f"{where}: dims must be a list of at most {MAX_RANK} sizes or names, "
                                   f"got {_short(dims)}")
        for dim in dims:
            if isinstance(dim, str):
                _name(f"{where}: dim parameter", dim)
            elif isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 0 <= dim <= MAX_PARAMETERS:
                raise ModelFormatError(f"{where}: a dim must be a size from 0 to {MAX_PARAMETERS} or a parameter "
                                       f"name, got {_short(dim)}")
        object.__setattr__(self, "dims", tuple(d if isinstance(d, str) else int(d) for d in dims))

    def describe(self) -> str:
        return f"{self.name}: {self.dtype} ({', '.join(map(str, self.dims))}{',' if len(self.dims) == 1 else ''})"


@dataclass(frozen=True, eq=False)
class TensorNode:
    """``outputs = op(inputs; attrs)``: ``op`` a registered op's name, ``inputs`` and ``outputs``
    tensor names ('' for an omitted optional one), ``attrs`` by name, ``name`` for messages.
    A node in a :class:`TensorGraph` holds its checked attributes (defaults filled in)."""

    op: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    attrs: Dict[str, object] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.op, str) or not self.op:
            raise ModelFormatError(f"node {self.name!r}: op must be an op name, got {_short(self.op)}")
        if not isinstance(self.name, str) or len(self.name) > 1000:
            raise ModelFormatError(f"node of op {self.op}: its name must be a string of at most 1000 characters")
        for what in ("inputs", "outputs"):
            names = getattr(self, what)
            if isinstance(names, str) or not isinstance(names, (list, tuple)) or len(names) > 4096:
                raise ModelFormatError(f"{self.where}: {what} must be a list of tensor names, got {_short(names)}")
            object.__setattr__(self, what, tuple(n if n == "" else _name(self.where, n) for n in names))
        if not isinstance(self.attrs, dict) or not all(isinstance(k, str) for k in self.attrs):
            raise ModelFormatError(f"{self.where}: attrs must be a dict by attribute name")

    @property
    def where(self) -> str:
        """How messages name this node."""
        return f"node '{self.name}' ({self.op})" if self.name else f"a node of op {self.op}"

    def describe(self) -> str:
        attrs = ", ".join(f"{k}={_describe_attr(v)}" for k, v in self.attrs.items() if v is not None)
        outputs = ", ".join(o or "_" for o in self.outputs)
        return f"{outputs} = {self.op}({', '.join(i or '_' for i in self.inputs)}{'; ' + attrs if attrs else ''})"


def _describe_attr(value) -> str:
    if isinstance(value, np.ndarray):
        return f"<{value.dtype} {value.shape}>"
    if _is_layers(value):
        return _short(f"[{', '.join(layer.describe() for layer in value)}]")
    return _short(value)


def _is_layers(value) -> bool:
    """A "layers" attribute (grurt.ops.ATTRIBUTE_KINDS): a tuple of grurt.spec layers."""
    return isinstance(value, tuple) and bool(value) and isinstance(value[0], LAYER_TYPES)


@dataclass(frozen=True, eq=False)
class TensorGraph:
    """Inputs, nodes, outputs (tensor names) and constants (name -> array), validated on
    construction (see the module's text). ``nodes`` may come in any order; the graph keeps them
    in a topological one, without dead nodes and unused constants."""

    inputs: Tuple[TensorInput, ...]
    nodes: Tuple[TensorNode, ...]
    outputs: Tuple[str, ...]
    constants: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        inputs, nodes = tuple(self.inputs), tuple(self.nodes)
        outputs = (self.outputs,) if isinstance(self.outputs, str) else tuple(self.outputs)
        for kind, values, cls in (("input", inputs, TensorInput), ("node", nodes, TensorNode)):
            for value in values:
                if not isinstance(value, cls):
                    raise ModelFormatError(f"graph: expected a grurt.tensor_graph.{cls.__name__} as {kind}, "
                                           f"got {_short(value)}")
        if not outputs:
            raise ModelFormatError("graph: needs at least one output")
        if not isinstance(self.constants, dict):
            raise ModelFormatError("graph: constants must be a dict by name")
        defined = {}                                     # tensor name -> what defines it
        for tensor in inputs:
            _define(defined, tensor.name, f"input '{tensor.name}'")
        for name in self.constants:
            _define(defined, _name("constant", name), f"constant '{name}'")
        producer = {}                                    # tensor name -> index of the node that gives it
        for index, node in enumerate(nodes):
            for name in node.outputs:
                if name:
                    _define(defined, name, node.where)
                    producer[name] = index
        for name in outputs:
            if name not in defined:
                raise ModelFormatError(f"graph: output '{str(name)[:200]}' is not an input, a constant or a node's "
                                       "output")
        if len(set(outputs)) != len(outputs):
            twice = next(o for o in outputs if outputs.count(o) > 1)
            raise ModelFormatError(f"graph: output '{twice}' is listed twice")
        # the nodes some output needs
        needed, live = list(outputs), set()
        while needed:
            index = producer.get(needed.pop())
            if index is not None and index not in live:
                live.add(index)
                needed.extend(name for name in nodes[index].inputs if name)
        for index in sorted(live):
            for name in nodes[index].inputs:
                if name and name not in defined:
                    raise ModelFormatError(f"{nodes[index].where}: input '{name}' is not defined in the graph")
        order = _topological(nodes, sorted(live), producer)
        checked = tuple(_checked(nodes[index]) for index in order)
        used = {name for node in checked for name in node.inputs} | set(outputs)
        constants = {name: canonical_array(value, f"constant '{name}'")
                     for name, value in self.constants.items() if name in used}
        total = sum(a.size for a in constants.values()) + sum(
            v.size if isinstance(v, np.ndarray) else parameter_count(v)
            for node in checked for v in node.attrs.values() if isinstance(v, np.ndarray) or _is_layers(v))
        if total > MAX_PARAMETERS:
            raise ModelFormatError(f"graph: its constants hold {total} elements, more than the {MAX_PARAMETERS} "
                                   "grurt accepts (grurt.limits.MAX_PARAMETERS)")
        set_ = object.__setattr__
        set_(self, "inputs", inputs)
        set_(self, "nodes", checked)
        set_(self, "outputs", outputs)
        set_(self, "constants", constants)

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return self.outputs

    def describe(self) -> str:
        lines = ["inputs:"] + [f"  {i.describe()}" for i in self.inputs]
        if self.constants:
            lines.append(f"constants: {len(self.constants)} ({sum(a.size for a in self.constants.values())} elements)")
        lines += ["nodes:"] + [f"  {node.name or '-'}: {node.describe()}" for node in self.nodes]
        lines.append(f"outputs: {', '.join(self.outputs)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<grurt.TensorGraph inputs={list(self.input_names)} outputs={list(self.outputs)}: "
                f"{len(self.nodes)} nodes>")

    def __reduce__(self):
        # data only (op names, attributes, arrays): unpickling validates again
        return (TensorGraph, (self.inputs, self.nodes, self.outputs, self.constants))


def _define(defined: dict, name: str, what: str) -> None:
    if name in defined:
        raise ModelFormatError(f"{what}: tensor '{name}' is already defined by {defined[name]}")
    defined[name] = what


def _topological(nodes, live, producer):
    """``live`` (node indices) ordered so that each node comes after the nodes it reads; ties keep
    the given order. A node on a cycle is named."""
    import heapq

    waiting = {}                                   # node index -> producers not yet placed
    readers = {index: [] for index in live}
    for index in live:
        before = {producer[name] for name in nodes[index].inputs if name in producer}
        waiting[index] = len(before)
        for source in before:
            readers[source].append(index)
    ready = [index for index in live if not waiting[index]]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if not waiting[reader]:
                heapq.heappush(ready, reader)
    if len(order) != len(live):
        stuck = next(index for index in live if waiting[index])
        raise ModelFormatError(f"{nodes[stuck].where}: the graph has a cycle through this node")
    return order


def _checked(node: TensorNode) -> TensorNode:
    """The node with its op looked up and checked: attributes (checked values, defaults filled in;
    tensor attributes in canonical dtypes) and numbers of inputs and outputs."""
    where = node.where
    op = lookup(node.op, where)
    # None stands for an attribute not given (a checked node holds it so when the default is None)
    attrs = {name: canonical_array(value, f"{where}: attribute {name}") if isinstance(value, np.ndarray) else value
             for name, value in node.attrs.items() if value is not None}
    attrs = check_attributes(op, attrs, where)
    inputs, outputs = _trimmed(node.inputs), _trimmed(node.outputs)
    arity = op.arity(attrs) if op.arity is not None else (op.inputs, op.outputs)
    for what, names, (fewest, most) in (("inputs", inputs, arity[0]), ("outputs", outputs, arity[1])):
        if not fewest <= len(names) <= most:
            span = str(fewest) if fewest == most else f"{fewest} to {most}"
            raise ModelFormatError(f"{where}: {op.name} takes {span} {what}, got {len(names)}")
    for index in range(op.inputs[0]):
        if not inputs[index]:
            raise ModelFormatError(f"{where}: input {index} of {op.name} is required, got ''")
    return TensorNode(node.op, inputs, outputs, attrs, node.name)


def _trimmed(names: Tuple[str, ...]) -> Tuple[str, ...]:
    """Without trailing omitted names (ONNX allows them)."""
    end = len(names)
    while end and not names[end - 1]:
        end -= 1
    return names[:end]
