"""Models that are graphs: layers over named tensors, with several inputs and outputs.

The canonical model is a :class:`Graph`: named inputs, nodes (a layer applied to named
tensors, giving named tensors) and named outputs. A :class:`~grurt.spec.ModelSpec` is the
one-path case, one input through a chain of layers to one output, and every graph is planned
as such chains (:func:`segments`) joined by the nodes that combine tensors.

Tensors are batch-first: a sequence is (B, T, F), a vector (B, F), token ids (B, T). A GRU
node takes ``(x,)`` or ``(x, h0)`` and gives ``(y,)`` or ``(y, h_n)``; its states are vectors
(B, D·H), the directions side by side, as a GRU without ``return_sequences`` gives them. An
input or output of kind ``"state"`` is presented to the caller as (D, B, H), the layout of
ONNX and PyTorch, and is that vector inside.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, Optional, Tuple

import numpy as np

from ._fields import _weights
from .errors import ModelFormatError, UnsupportedModelError
from .limits import MAX_FLOAT32, bounded_float
from .spec import (GRU, LAYER_TYPES, Activation, Dense, Embedding, GlobalPool, LayerNorm, Merge, ModelSpec, Reverse,
                   Scale, UnitNorm, layer_output, parameter_count)

INPUT_KINDS = ("sequence", "vector", "ids", "state")
COMBINE_OPS = ("add", "sub", "mul", "max", "min", "mean")
_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")


def _name(owner: str, value) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ModelFormatError(f"{owner}: a tensor name must be a printable string of 1 to 200 characters, "
                               f"got {value!r}")
    return value


def _count(owner: str, what: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ModelFormatError(f"{owner}: {what} must be an integer >= {least}, got {value!r}")
    return value


# ---- the layers that take several tensors ----

@dataclass(frozen=True, eq=False)
class Combine:
    """Elementwise over two or more tensors of one shape: ``add``, ``sub`` (exactly two: the
    first minus the second), ``mul``, ``max``, ``min`` or ``mean``."""

    op: str

    def __post_init__(self):
        if self.op not in COMBINE_OPS:
            raise UnsupportedModelError(f"Combine: op {self.op!r} is not one of {COMBINE_OPS}")

    def describe(self) -> str:
        return f"Combine({self.op})"


@dataclass(frozen=True, eq=False)
class Concat:
    """Two or more tensors side by side on the feature axis (the same time axis, if any)."""

    def describe(self) -> str:
        return "Concat()"


@dataclass(frozen=True, eq=False)
class Slice:
    """Features ``begin`` to ``end`` (exclusive) of a tensor: one direction or layer of a state."""

    begin: int
    end: int

    def __post_init__(self):
        _count("Slice", "begin", self.begin, 0)
        if _count("Slice", "end", self.end, 1) <= self.begin:
            raise ModelFormatError(f"Slice: end ({self.end}) must be greater than begin ({self.begin})")

    def describe(self) -> str:
        return f"Slice({self.begin}:{self.end})"


@dataclass(frozen=True, eq=False)
class PReLU:
    """``x`` where ``x >= 0``, else ``alpha·x`` (Keras's ``PReLU``): ``alpha`` is (F,), one slope per
    feature, or (T, F), one per step and feature (on sequences of exactly T steps)."""

    alpha: np.ndarray

    def __post_init__(self):
        alpha = np.asarray(self.alpha)
        if alpha.ndim not in (1, 2) or 0 in alpha.shape:
            raise ModelFormatError(f"PReLU: alpha must be a non-empty (features,) or (steps, features) array, "
                                   f"got shape {alpha.shape}")
        object.__setattr__(self, "alpha", _weights("PReLU", "alpha", alpha, alpha.shape))

    @property
    def features(self) -> int:
        return self.alpha.shape[-1]

    @property
    def steps(self) -> Optional[int]:
        """The number of steps of a per-step alpha, else None."""
        return self.alpha.shape[0] if self.alpha.ndim == 2 else None

    def describe(self) -> str:
        return f"PReLU({self.features}" + (f", {self.steps} steps)" if self.steps else ")")


@dataclass(frozen=True, eq=False)
class Masking:
    """Keras's ``Masking``: ``x → (y, mask)``, ``mask`` (B, T) true at the valid steps, those with a
    feature other than ``value`` (for token ids: an id other than ``value``), ``y`` the input with
    the masked steps zeroed (token ids: unchanged).

    A mask goes into the GRU and GlobalPool nodes that read it as their last input: a GRU skips
    the masked steps (its state carried through) and gives there, as Keras, zeros when it is a
    bidirectional GRU returning its sequence, else its previous output in the order it reads the
    steps (zeros before its first valid step); its output without ``return_sequences`` is its
    output at the last step it reads. An average GlobalPool averages the valid steps (0/0: NaN
    for a sequence without any).
    """

    value: float

    def __post_init__(self):
        value = bounded_float("Masking", "value", self.value, -MAX_FLOAT32, MAX_FLOAT32, "MAX_FLOAT32")
        # float32, as the features it is compared with; an integer (a padding id) exactly
        object.__setattr__(self, "value", float(value) if float(value).is_integer() else float(np.float32(value)))

    def describe(self) -> str:
        return f"Masking({self.value:g})"


#: The most steps a Repeat or Unflatten node makes (a model file's counts are bounded here).
MAX_STEPS = 1 << 24


def _steps(owner: str, value) -> int:
    _count(owner, "steps", value, 1)
    if value > MAX_STEPS:
        raise ModelFormatError(f"{owner}: steps {value} is more than grurt makes ({MAX_STEPS}, grurt.graph.MAX_STEPS)")
    return value


@dataclass(frozen=True, eq=False)
class Repeat:
    """A vector repeated over ``steps`` steps, (B, F) → (B, steps, F) (Keras's ``RepeatVector``)."""

    steps: int

    def __post_init__(self):
        _steps("Repeat", self.steps)

    def describe(self) -> str:
        return f"Repeat({self.steps})"


@dataclass(frozen=True, eq=False)
class Unflatten:
    """A vector cut into ``steps`` steps, (B, steps·F) → (B, steps, F), step-major (Keras's ``Reshape``
    of a flat vector to (T, F); the inverse of Flatten)."""

    steps: int

    def __post_init__(self):
        _steps("Unflatten", self.steps)

    def describe(self) -> str:
        return f"Unflatten({self.steps})"


@dataclass(frozen=True, eq=False)
class Crop:
    """``left`` steps cut from the start of each sequence and ``right`` from its end, (B, T, F) →
    (B, T − left − right, F) (Keras's ``Cropping1D``)."""

    left: int
    right: int

    def __post_init__(self):
        _count("Crop", "left", self.left, 0)
        _count("Crop", "right", self.right, 0)
        if self.left > MAX_STEPS or self.right > MAX_STEPS:
            raise ModelFormatError(f"Crop: left {self.left}, right {self.right}: more than {MAX_STEPS} steps")

    def describe(self) -> str:
        return f"Crop({self.left}, {self.right})"


#: Layers a graph node may hold beyond the chain layers: they read several tensors, cut one, or
#: run as a numpy step between the chains.
GRAPH_LAYERS = (Combine, Concat, Slice, PReLU, Masking, Repeat, Unflatten, Crop)
#: The graph layers that read one tensor and give one.
ONE_INPUT_LAYERS = (Slice, PReLU, Repeat, Unflatten, Crop)
#: Graph layers that make a sequence whose steps are not their input's: no lengths, no streaming.
NEW_STEPS_LAYERS = (Repeat, Unflatten, Crop)
#: Layers that compute each step from that step alone (a mask goes through them).
STEPWISE_LAYERS = (Dense, Activation, Scale, LayerNorm, UnitNorm, Merge, Reverse, Embedding, PReLU, Slice)


# ---- the graph ----

@dataclass(frozen=True)
class Input:
    """A named input. ``size``: features per step (``"sequence"``) or of the one vector
    (``"vector"``); None for token ids (``"ids"``, (B, T) integers, read by Embedding nodes).
    ``"state"``: a vector of ``size`` features the caller passes as (directions, B, size / directions)."""

    name: str
    size: Optional[int]
    kind: str = "sequence"
    directions: int = 1

    def __post_init__(self):
        _name("input", self.name)
        where = f"input '{self.name}'"
        if self.kind not in INPUT_KINDS:
            raise ModelFormatError(f"{where}: kind {self.kind!r} is not one of {INPUT_KINDS}")
        if self.kind == "ids":
            if self.size is not None:
                raise ModelFormatError(f"{where}: token ids have no size, got {self.size!r}")
        else:
            _count(where, "size", self.size, 1)
        _count(where, "directions", self.directions, 1)
        if self.directions != 1 and (self.kind != "state" or self.size % self.directions):
            raise ModelFormatError(f"{where}: directions {self.directions} is for a state input whose size "
                                   f"it divides (kind {self.kind!r}, size {self.size})")

    def describe(self) -> str:
        if self.kind == "state":
            return f"{self.name}: state ({self.directions}, B, {self.size // self.directions})"
        shape = {"sequence": f"(B, T, {self.size})", "vector": f"(B, {self.size})", "ids": "(B, T) ids"}
        return f"{self.name}: {self.kind} {shape[self.kind]}"


@dataclass(frozen=True)
class Output:
    """A named output; with ``directions`` set, a vector given to the caller as a state
    (directions, B, features / directions)."""

    name: str
    directions: Optional[int] = None

    def __post_init__(self):
        _name("output", self.name)
        if self.directions is not None:
            _count(f"output '{self.name}'", "directions", self.directions, 1)


@dataclass(frozen=True, eq=False)
class Node:
    """``outputs = layer(*inputs)``, each a tensor name."""

    layer: object
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]

    def __post_init__(self):
        for attr in ("inputs", "outputs"):
            names = getattr(self, attr)
            if isinstance(names, str):
                names = (names,)
            object.__setattr__(self, attr, tuple(_name(type(self.layer).__name__, n) for n in names))
        if not isinstance(self.layer, LAYER_TYPES + GRAPH_LAYERS):
            raise UnsupportedModelError(f"node {', '.join(self.outputs)} (from {', '.join(self.inputs)}): "
                                        f"not a grurt layer: {self.layer!r}")

    def describe(self) -> str:
        return f"{', '.join(self.outputs)} = {self.layer.describe()}({', '.join(self.inputs)})"


@dataclass(frozen=True)
class Tensor:
    """What validation knows of a tensor: features (None: token ids) and whether it has a time axis;
    ``mask``: a (B, T) mask of the valid steps (features None)."""

    features: Optional[int]
    has_time: bool
    mask: bool = False

    def describe(self) -> str:
        if self.mask:
            return "(B, T) mask"
        if self.features is None:
            return "(B, T) ids"
        return f"(B, T, {self.features})" if self.has_time else f"(B, {self.features})"


@dataclass(frozen=True, eq=False)
class Graph:
    """Inputs, nodes and outputs, validated on construction: every name defined once, every
    node's tensors of shapes its layer takes, no cycle, every output computable and every input
    used. ``nodes`` may come in any order; they are kept in a topological one (ties in the
    given order), without the nodes no output needs."""

    inputs: Tuple[Input, ...]
    nodes: Tuple[Node, ...]
    outputs: Tuple[Output, ...]
    tensors: Dict[str, Tensor] = field(init=False, repr=False)

    def __post_init__(self):
        inputs = tuple(self.inputs)
        outputs = tuple(Output(o) if isinstance(o, str) else o for o in self.outputs)
        nodes = tuple(self.nodes)
        for kind, values, cls in (("input", inputs, Input), ("output", outputs, Output), ("node", nodes, Node)):
            for value in values:
                if not isinstance(value, cls):
                    raise ModelFormatError(f"graph: expected a grurt.graph.{cls.__name__} as {kind}, got {value!r}")
        if not inputs or not outputs:
            raise ModelFormatError("graph: needs at least one input and one output")
        producer = {}
        for i in inputs:
            if i.name in producer:
                raise ModelFormatError(f"graph: input name '{i.name}' is used twice")
            producer[i.name] = None
        for node in nodes:
            for name in node.outputs:
                if name in producer:
                    raise ModelFormatError(f"node {node.describe()}: tensor '{name}' is already defined")
                producer[name] = node
        seen_outputs = set()
        for o in outputs:
            if o.name not in producer:
                raise ModelFormatError(f"graph: output '{o.name}' is not computed by any node nor an input")
            if o.name in seen_outputs:
                raise ModelFormatError(f"graph: output '{o.name}' is listed twice")
            seen_outputs.add(o.name)
        ordered = _needed_in_order(nodes, producer, [o.name for o in outputs])
        tensors = {i.name: Tensor(None if i.kind == "ids" else i.size, i.kind in ("sequence", "ids"))
                   for i in inputs}
        for node in ordered:
            check_node(node, tensors)
        used = {name for node in ordered for name in node.inputs} | seen_outputs
        for i in inputs:
            if i.name not in used:
                raise ModelFormatError(f"graph: input '{i.name}' is not used by any output")
        for o in outputs:
            t = tensors[o.name]
            if t.mask:
                raise ModelFormatError(f"graph: output '{o.name}' is a mask, which only GRU and GlobalPool nodes read")
            if t.features is None:
                raise ModelFormatError(f"graph: output '{o.name}' is token ids, which only an Embedding reads")
            if o.directions is not None and (t.has_time or t.features is None or t.features % o.directions):
                raise ModelFormatError(f"graph: output '{o.name}' {t.describe()} cannot be given as a state "
                                       f"of {o.directions} directions")
        set_ = object.__setattr__
        set_(self, "inputs", inputs)
        set_(self, "outputs", outputs)
        set_(self, "nodes", tuple(ordered))
        set_(self, "tensors", tensors)

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def gru_nodes(self) -> Tuple[Node, ...]:
        """The GRU nodes in the graph's order: the order of ``initial_state`` and ``return_state``."""
        return tuple(node for node in self.nodes if isinstance(node.layer, GRU))

    @property
    def parameter_count(self) -> int:
        return (parameter_count(node.layer for node in self.nodes)
                + sum(node.layer.alpha.size for node in self.nodes if isinstance(node.layer, PReLU)))

    def describe(self) -> str:
        lines = ["inputs: " + "; ".join(i.describe() for i in self.inputs)]
        lines += [f"  {node.describe()}" for node in self.nodes]
        lines.append("outputs: " + "; ".join(
            f"{o.name} {self.tensors[o.name].describe()}" + (f" as state of {o.directions} directions"
                                                             if o.directions else "") for o in self.outputs))
        return "\n".join(lines)

    @classmethod
    def from_chain(cls, spec: ModelSpec, input_name: str = "input", output_name: str = "output") -> "Graph":
        """The one-path graph of a chain (its mask_value aside: a chain with one runs as a chain)."""
        return path_graph(spec.input_size, spec.layers, input_name, output_name)

    def as_chain(self) -> Optional[ModelSpec]:
        """The ModelSpec of a graph that is one path (one sequence or ids input, through nodes of one
        input and one output each, to one plain output), else None."""
        if (len(self.inputs) != 1 or len(self.outputs) != 1 or self.outputs[0].directions is not None
                or not self.nodes):
            return None
        source = self.inputs[0]
        if source.kind not in ("sequence", "ids"):
            return None
        current = source.name
        for node in self.nodes:
            if (isinstance(node.layer, GRAPH_LAYERS) or node.inputs != (current,) or len(node.outputs) != 1):
                return None
            current = node.outputs[0]
        if current != self.outputs[0].name:
            return None
        return ModelSpec(source.size, tuple(node.layer for node in self.nodes))


def _needed_in_order(nodes, producer, wanted):
    """The nodes the ``wanted`` tensors depend on, in a topological order (ModelFormatError on a cycle
    or a tensor no one computes)."""
    needed, stack = set(), list(wanted)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            for name in node.inputs:
                if name not in producer:
                    raise ModelFormatError(f"node {node.describe()}: input '{name}' is not an input of the "
                                           "graph nor computed by any node")
                stack.append(name)
    # in rounds, each taking every node whose inputs are ready, in the given order (by level, then
    # position): Kahn's algorithm, linear in the graph's size
    pending = [node for node in nodes if id(node) in needed]
    position = {id(node): k for k, node in enumerate(pending)}
    readers, missing, level = {}, {}, {}
    for node in pending:
        sources = {id(producer[name]) for name in node.inputs if producer[name] is not None}
        missing[id(node)] = len(sources)
        for source in sources:
            readers.setdefault(source, []).append(node)
    ready = [node for node in pending if not missing[id(node)]]
    for node in ready:
        level[id(node)] = 0
    for node in ready:                  # grows while it is walked
        for reader in readers.get(id(node), ()):
            level[id(reader)] = max(level.get(id(reader), 0), level[id(node)] + 1)
            missing[id(reader)] -= 1
            if not missing[id(reader)]:
                ready.append(reader)
    if len(ready) < len(pending):
        cycle = [node for node in pending if missing[id(node)]]
        raise ModelFormatError("graph: nodes form a cycle: " + "; ".join(n.describe() for n in cycle[:4]))
    return sorted(ready, key=lambda node: (level[id(node)], position[id(node)]))


def check_node(node: Node, tensors: Dict[str, Tensor]) -> None:
    """Adds the node's outputs to ``tensors``; ModelFormatError naming the node and the shapes."""
    layer, where = node.layer, f"node {node.describe()}"
    given = [tensors[name] for name in node.inputs]
    shapes = ", ".join(f"'{n}' {t.describe()}" for n, t in zip(node.inputs, given))
    if given[-1].mask:
        if not takes_mask(node, tensors) or not given[0].has_time:
            raise ModelFormatError(f"{where}: a mask goes only into a GRU or an average GlobalPool reading a "
                                   f"sequence, as its last input ({shapes})")
        given = given[:-1]
    if any(t.mask for t in given):
        raise ModelFormatError(f"{where}: a mask goes only into a GRU or an average GlobalPool, as its last input "
                               f"({shapes})")
    if isinstance(layer, Masking):
        if len(given) != 1 or len(node.outputs) != 2 or not given[0].has_time:
            raise ModelFormatError(f"{where}: takes a sequence or token ids and gives (y, mask), got {shapes}")
        tensors[node.outputs[0]] = given[0]
        tensors[node.outputs[1]] = Tensor(None, True, mask=True)
        return
    if isinstance(layer, GRAPH_LAYERS):
        if len(node.outputs) != 1:
            raise ModelFormatError(f"{where}: gives one tensor, not {len(node.outputs)}")
        if any(t.features is None for t in given):
            raise ModelFormatError(f"{where}: token ids go only into an Embedding ({shapes})")
        if isinstance(layer, ONE_INPUT_LAYERS):
            if len(given) != 1 or (isinstance(layer, Slice) and layer.end > given[0].features):
                raise ModelFormatError(f"{where}: takes one tensor"
                                       + (f" of at least {layer.end} features" if isinstance(layer, Slice) else "")
                                       + f", got {shapes}")
            tensors[node.outputs[0]] = one_input_output(where, layer, given[0])
            return
        if len(given) < 2 or (isinstance(layer, Combine) and layer.op == "sub" and len(given) != 2):
            raise ModelFormatError(f"{where}: takes {'two' if getattr(layer, 'op', '') == 'sub' else 'two or more'} "
                                   f"tensors, got {len(given)}")
        if len({t.has_time for t in given}) != 1 or (
                isinstance(layer, Combine) and len({t.features for t in given}) != 1):
            raise ModelFormatError(f"{where}: tensors of incompatible shapes: {shapes}")
        features = sum(t.features for t in given) if isinstance(layer, Concat) else given[0].features
        tensors[node.outputs[0]] = Tensor(features, given[0].has_time)
        return
    is_gru = isinstance(layer, GRU)
    if not 1 <= len(given) <= (2 if is_gru else 1) or not 1 <= len(node.outputs) <= (2 if is_gru else 1):
        raise ModelFormatError(f"{where}: a {type(layer).__name__} takes "
                               + ("(x,) or (x, h0) and gives (y,) or (y, h_n)" if is_gru else "and gives one tensor"))
    features, has_time = layer_output(where, layer, given[0].features, given[0].has_time)
    tensors[node.outputs[0]] = Tensor(features, has_time)
    if is_gru:
        state = Tensor(layer.output_size, False)
        if len(given) == 2 and given[1] != state:
            raise ModelFormatError(f"{where}: h0 must be {state.describe()} (the directions' states side by side), "
                                   f"got {shapes}")
        if len(node.outputs) == 2:
            tensors[node.outputs[1]] = state


def takes_mask(node: Node, tensors: Dict[str, Tensor]) -> bool:
    """Whether the node's last input is a mask: a GRU reading (x, [h0,] mask), an average GlobalPool (x, mask)."""
    return (len(node.inputs) >= 2 and tensors[node.inputs[-1]].mask
            and (isinstance(node.layer, GRU) or isinstance(node.layer, GlobalPool) and node.layer.mode == "average"))


def mask_survives(layer, masked: bool) -> bool:
    """Whether the steps of a layer's output are masked, as its input's are (``masked``): Keras's
    rule. Layers that work step by step keep the mask (Reverse too: Keras keeps it in input time
    order), and a GRU returning its sequence; the rest drop it (a Masking makes a new one)."""
    if isinstance(layer, Masking):
        return True
    if isinstance(layer, GRU):
        return masked and layer.return_sequences
    return masked and isinstance(layer, STEPWISE_LAYERS)


def one_input_output(where: str, layer, given: Tensor) -> Tensor:
    """The tensor a graph layer of ONE_INPUT_LAYERS gives for ``given``; ModelFormatError naming ``where``."""
    if isinstance(layer, Slice):
        if layer.end > given.features:
            raise ModelFormatError(f"{where}: takes a tensor of at least {layer.end} features, got {given.describe()}")
        return Tensor(layer.end - layer.begin, given.has_time)
    if isinstance(layer, Repeat):
        if given.has_time:
            raise ModelFormatError(f"{where}: repeats a vector (B, F), got {given.describe()}")
        return Tensor(given.features, True)
    if isinstance(layer, Unflatten):
        if given.has_time or given.features % layer.steps:
            raise ModelFormatError(f"{where}: cuts a vector of a multiple of {layer.steps} features into "
                                   f"{layer.steps} steps, got {given.describe()}")
        return Tensor(given.features // layer.steps, True)
    if isinstance(layer, Crop):
        if not given.has_time:
            raise ModelFormatError(f"{where}: crops a sequence, got {given.describe()}")
        return given
    # PReLU
    if given.features != layer.features or (layer.steps is not None and not given.has_time):
        raise ModelFormatError(f"{where}: alpha {layer.alpha.shape} does not fit {given.describe()}")
    return given


def node_output(where: str, layer, features: Optional[int], has_time: bool):
    """(features, has_time) after a chain layer or a one-input graph layer (importers building a path)."""
    if isinstance(layer, Masking):
        if not has_time:
            raise ModelFormatError(f"{where}: a Masking needs a sequence")
        return features, has_time
    if isinstance(layer, ONE_INPUT_LAYERS):
        if features is None:
            raise ModelFormatError(f"{where}: token ids go only into an Embedding")
        out = one_input_output(where, layer, Tensor(features, has_time))
        return out.features, out.has_time
    return layer_output(where, layer, features, has_time)


def path_graph(input_size: Optional[int], layers, input_name: str = "input", output_name: str = "output",
               mask_value=None) -> Graph:
    """The one-path graph of ``layers`` (chain layers and one-input graph layers) applied in order;
    an Embedding first makes its input token ids. ``mask_value`` (a ModelSpec's) puts a Masking
    first. The mask of each Masking goes into the GRUs and average GlobalPools after it, as far as
    :func:`mask_survives` carries it."""
    layers = ((Masking(mask_value),) if mask_value is not None else ()) + tuple(layers)
    names = [input_name] + [f"{index}:{type(layer).__name__}" for index, layer in enumerate(layers)]
    names[-1] = output_name
    nodes, mask = [], None
    for i, layer in enumerate(layers):
        if isinstance(layer, Masking):
            mask = f"{names[i + 1]}/mask"
            nodes.append(Node(layer, (names[i],), (names[i + 1], mask)))
            continue
        reads_mask = mask is not None and (isinstance(layer, GRU) or isinstance(layer, GlobalPool)
                                           and layer.mode == "average")
        nodes.append(Node(layer, (names[i],) + ((mask,) if reads_mask else ()), (names[i + 1],)))
        if not mask_survives(layer, mask is not None):
            mask = None
    kind = "ids" if input_size is None else "sequence"
    return Graph((Input(input_name, input_size, kind),), tuple(nodes), (Output(output_name),))


# ---- planning: chains of layers joined by the nodes that combine tensors ----

@dataclass(eq=False)
class Segment:
    """Nodes run as one chain (a ModelSpec) from tensor ``source`` to tensor ``output``: each
    tensor between two of its nodes feeds only the next one and is no output of the graph.
    ``states_in`` / ``states_out``: the chain's GRU (by position among its GRUs) → the tensor its
    h0 comes from / its h_n goes to. A ``vector`` source has no time axis: the chain runs it as
    one step."""

    source: str
    vector: bool
    nodes: list = field(default_factory=list)

    # read once the segment is complete (segments() does not)
    @cached_property
    def output(self) -> str:
        return self.nodes[-1].outputs[0]

    @cached_property
    def grus(self) -> list:
        return [node for node in self.nodes if isinstance(node.layer, GRU)]

    @cached_property
    def states_in(self) -> Dict[int, str]:
        return {i: node.inputs[1] for i, node in enumerate(self.grus) if len(node.inputs) == 2}

    @cached_property
    def states_out(self) -> Dict[int, str]:
        return {i: node.outputs[1] for i, node in enumerate(self.grus) if len(node.outputs) == 2}

    def spec(self, graph: Graph) -> ModelSpec:
        return ModelSpec(graph.tensors[self.source].features, tuple(node.layer for node in self.nodes))


def segments(graph: Graph) -> list:
    """The graph as steps to run in order: each a :class:`Segment`, or a node of
    :data:`GRAPH_LAYERS` or reading a mask (run on whole arrays). A segment runs where its last node stands in the
    graph's order, when every h0 it takes is ready; one ends at each GRU that gives its h_n."""
    uses: Dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            uses[name] = uses.get(name, 0) + 1
    outputs = set(graph.output_names)
    steps, extendable = [], {}
    for node in graph.nodes:
        if isinstance(node.layer, GRAPH_LAYERS) or takes_mask(node, graph.tensors):
            steps.append(node)
            continue
        source = node.inputs[0]
        segment = extendable.pop(source, None)
        if segment is None or uses[source] != 1 or source in outputs:
            segment = Segment(source, not graph.tensors[source].has_time)
        else:
            steps.remove(segment)
        segment.nodes.append(node)
        steps.append(segment)
        if len(node.outputs) == 1:          # a GRU giving h_n ends its chain: a stream's h_n is its output
            extendable[node.outputs[0]] = segment
    return steps
