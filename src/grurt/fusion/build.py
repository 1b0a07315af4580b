"""The interpreted TensorGraph → a :class:`grurt.graph.Graph`.

The interpreter (:mod:`.graph`) leaves canonical tensors and the nodes between them. Here the
graph outputs are read — a (N, B, H) arrangement of GRU final states is a state output, anything
else a plain output in grurt's layout —, each GRU keeps the outputs something reads (one whose
sequence nobody reads returns its final state: ``return_sequences=False``), per-feature ``Scale``
nodes fold into the layer before them, and tensors take the graph's input and output names.

A result that is one path — one sequence (or token ids) input through single-input layers to one
output — whose state inputs only give GRUs their initial state and whose state outputs are only
GRU final states, is a chain, as grurt has always read such files: its states are
``run(initial_state=...)`` and ``run(return_state=True)``. Anything else is a graph whose state
inputs and outputs are named inputs and outputs like the others.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ..errors import GrurtError, ModelFormatError, UnsupportedModelError
from ..graph import GRAPH_LAYERS, Concat, Graph, Input, Node, Output, Slice
from ..spec import GRU, LayerNorm, Scale, fold_layer
from .interpreter import _RawInput, _Sym, unique


@dataclasses.dataclass
class Fused:
    """What the fusion pass made of a TensorGraph: the Graph of grurt's layers, and how the TensorGraph's
    inputs and outputs map onto it (its element ids: where each element of each tensor goes)."""

    graph: Graph                 # the model; a chain when ``chain``
    chain: bool                  # states map to run(initial_state=, return_state=); else named inputs/outputs
    time_major: frozenset        # sequence inputs that are (T, B, ...) in the TensorGraph
    state_batch_axis: dict       # state graph input -> axis of its batch in the TensorGraph (1: (N, B, H))
    lengths_input: Optional[str]
    inputs: dict                 # graph input name -> ids, in the TensorGraph's shape
    taken: dict                  # graph input name -> ids, as the model takes it: (B, T, F), (B, F), (B, T) or a
    #                              state (directions, B, H) (the inputs read as data; not sequence_lens)
    outputs: dict                # graph output name -> ids, in the TensorGraph's shape
    returned: dict               # model output name -> ids, in the layout grurt returns
    state_inputs: dict           # chain: GRU index -> (graph input, ids of its initial state (D, B, H))
    states: list                 # ids of each GRU node's final state (D, B, H), in graph.gru_nodes order
    lbr0_nodes: list             # names of GRU nodes with linear_before_reset=0

    @property
    def spec(self):
        """The chain's ModelSpec (None for a graph)."""
        return self.graph.as_chain() if self.chain else None

    def signature(self):
        learned = tuple(None if node.layer.initial_state is None else node.layer.initial_state.tobytes()
                        for node in self.graph.gru_nodes)     # a learned h0 folded from the batch size must not vary
        return (self.graph.describe(), self.chain, sorted(self.time_major), self.lengths_input,
                sorted(self.state_batch_axis.items()), learned)


def build(it) -> Fused:
    gru_states = {node.outputs[1] for node in it.grus}
    outputs = []                 # (graph output name, tensor name, directions or None)
    named = {}
    for name in it.graph.outputs:
        try:
            outputs.append(_output(it, name, gru_states, named))
        except GrurtError as exc:    # the output it refuses, for the region pass (.regions)
            exc.output = name
            raise
    tensors = {}
    for owner in it.owners:
        if not isinstance(owner, _RawInput):
            tensors[owner.name] = owner
    nodes = _needed(it.nodes, [t for _, t, _ in outputs])
    grus = [node for node in nodes if isinstance(node.layer, GRU)]
    if not grus:
        raise UnsupportedModelError("the graph contains no GRU node that reaches an output")
    if it.lengths and (len(it.lengths) != len(grus) or len(set(it.lengths)) != 1):
        raise UnsupportedModelError("sequence_lens must be one graph input given to every GRU node; "
                                    "grurt applies one lengths array to all layers")
    _settle_grus(nodes, {t for _, t, _ in outputs})
    nodes = _folded(nodes, {t for _, t, _ in outputs})
    rename = _renaming(nodes, it, named)
    # each GRU's first output name -> the ids of its final state (B, D·H)
    gru_ids = {rename.get(node.outputs[0], node.outputs[0]): tensors[node.outputs[-1]].ids
               for node in nodes if isinstance(node.layer, GRU)}
    for node in nodes:
        node.inputs = [rename.get(n, n) for n in node.inputs]
        node.outputs = [rename.get(n, n) for n in node.outputs]
    used = {n for node in nodes for n in node.inputs}
    inputs = []
    for name, raw in it.raw.items():
        kind, tensor, directions = it.claimed.get(name, (None, None, 1))
        if name in used and kind in ("sequence", "vector", "ids", "state"):
            inputs.append(Input(name, None if kind == "ids" else tensor.features, kind, directions))
    graph_outputs = tuple(Output(name, directions) for name, _, directions in outputs)
    result = dict(time_major=it.time_major & set(it.claimed), state_batch_axis=dict(it.state_batch_axis),
                  lengths_input=it.lengths[0] if it.lengths else None,
                  inputs={name: raw.ids for name, raw in it.raw.items()}, taken=_taken(it),
                  outputs={name: it.values[name].ids for name in it.graph.outputs},
                  lbr0_nodes=list(it.lbr0_nodes))
    chain = _as_chain(inputs, nodes, graph_outputs)
    if chain is not None:
        graph, state_sources = chain
        return Fused(graph, True, returned={graph.outputs[0].name: _ids_of(graph.outputs[0].name, tensors, rename)},
                       state_inputs=_state_inputs(graph, state_sources, tensors, rename),
                       states=_final_states(graph, gru_ids), **result)
    graph = Graph(tuple(inputs), tuple(_graph_node(node) for node in nodes), graph_outputs)
    returned = {}
    for output in graph.outputs:
        ids = _ids_of(output.name, tensors, rename)
        if output.directions is not None:
            ids = ids.reshape(ids.shape[0], output.directions, -1).transpose(1, 0, 2)
        returned[output.name] = ids
    return Fused(graph, False, returned=returned, state_inputs={}, states=_final_states(graph, gru_ids), **result)


# ---- outputs ----

def _output(it, name, gru_states, named):
    """(name, the tensor graph output ``name`` is, its directions when it is a state output, else None);
    ``named``: tensor -> the output naming it, so far."""
    value, where = it.values[name], f"graph output '{name}'"
    if not isinstance(value, _Sym):
        raise UnsupportedModelError(f"{where} is a constant")
    state = _state_output(it, where, value, gru_states)
    if state is not None:
        tensor, directions = state[0].name, state[1]
    else:
        tensor, directions = _plain_output(it, where, value).name, None
    if tensor in it.claimed:
        raise UnsupportedModelError(f"{where} is graph input '{tensor}' unchanged")
    if tensor in named:
        raise UnsupportedModelError(f"graph outputs '{named[tensor]}' and '{name}' are the same tensor; grurt "
                                    "gives each output once")
    named[tensor] = name
    return name, tensor, directions


def _state_output(it, where, value, gru_states):
    """(tensor, N) when ``value`` is (N, B, H) (or (B, N, H)) of GRU final states or state inputs, else None."""
    ids = value.ids
    if ids.ndim != 3:
        return None
    owners = {it.owners[i] for i in unique(it._owner_indices(ids.ravel()))}
    if not all(not isinstance(o, _RawInput) and (o.name in gru_states or it.claimed.get(o.name, ("",))[0] == "state")
               for o in owners):
        return None
    for axis in (1, 0):
        batch = ids.shape[axis]
        vector = ids.transpose(1, 0, 2) if axis == 1 else ids
        try:
            tensor, rows = it._aligned(where, _Sym(vector.reshape(batch, -1)))
        except UnsupportedModelError:
            continue
        if not tensor.has_time and np.array_equal(rows, np.arange(batch)):
            return tensor, ids.shape[1 - axis]
    return None


def _plain_output(it, where, value):
    """The canonical tensor a graph output is, in grurt's layout: a selection of features is a ``Slice``
    or a selection ``Dense``; features spread over several axes (raw ``Y``) come back side by side."""
    ids = value.ids
    tensor, positions = it._find(where, ids)
    features = tensor.features
    lines = positions.reshape(-1, ids.shape[-1]) if ids.ndim else positions.reshape(1, 1)
    rows, line_features = np.divmod(lines, features)
    if (rows == rows[:, :1]).all() and (line_features == line_features[:1]).all():
        if not np.array_equal(line_features[0], np.arange(features)):
            tensor, _ = it._aligned(where, value)
            positions = it._find(where, ids)[1]
    elif unique(line_features).size != features:    # features spread over axes, e.g. Y (T, D, B, H)
        raise UnsupportedModelError(f"{where}: holds some of the features, not on its last axis")
    if unique(positions).size != positions.size or positions.size != tensor.ids.size:
        raise UnsupportedModelError(f"{where}: repeats elements of tensor '{tensor.name}'")
    return tensor


def _taken(it):
    """Each graph input read as data -> its ids in the layout the fused model takes it."""
    taken = {}
    for name, (kind, tensor, directions) in it.claimed.items():
        if tensor is not None:
            ids = tensor.ids
            taken[name] = ids.reshape(ids.shape[0], directions, -1).transpose(1, 0, 2) if kind == "state" else ids
    return taken


def _ids_of(name, tensors, rename):
    back = {new: old for old, new in rename.items()}
    return tensors[back.get(name, name)].ids


# ---- nodes ----

def _needed(nodes, wanted):
    """The nodes the ``wanted`` tensors depend on, in the interpreter's order."""
    producer = {name: node for node in nodes for name in node.outputs}
    needed, stack = set(), list(wanted)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.inputs)
    return [node for node in nodes if id(node) in needed]


def _uses(nodes, outputs):
    counts = dict.fromkeys(outputs, 1)
    for node in nodes:
        for name in node.inputs:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _settle_grus(nodes, outputs):
    """Each GRU gives what is read of it: (y,), (y, h_n), or its final state alone (return_sequences=False)."""
    uses = _uses(nodes, outputs)
    for node in nodes:
        if isinstance(node.layer, GRU):
            y, h = node.outputs
            if not uses.get(y):
                node.layer = dataclasses.replace(node.layer, return_sequences=False)
                node.outputs = [h]
            elif not uses.get(h):
                node.outputs = [y]


def _fold(previous, layer):
    """``previous`` then ``layer`` as one layer, or None: :func:`grurt.spec.fold_layer`, and a per-feature
    Scale into a Scale or a LayerNorm before it."""
    merged = fold_layer(previous, layer)
    if merged is None and isinstance(layer, Scale):
        a, c = np.asarray(layer.a, np.float64), np.asarray(layer.c, np.float64)
        if isinstance(previous, Scale):
            merged = Scale(a=np.asarray(previous.a) * a, c=np.asarray(previous.c) * a + c)
        elif isinstance(previous, LayerNorm):
            merged = LayerNorm(np.asarray(previous.gamma) * a, np.asarray(previous.beta) * a + c, previous.epsilon)
    return merged


def _folded(nodes, outputs):
    """Fold each one-input layer into the one before it, where the tensor between them has no other use."""
    nodes = list(nodes)
    changed = True
    while changed:
        changed = False
        uses = _uses(nodes, outputs)
        producer = {name: node for node in nodes for name in node.outputs}
        for node in nodes:
            source = producer.get(node.inputs[0]) if len(node.inputs) == 1 else None
            if (source is None or len(source.outputs) != 1 or len(node.outputs) != 1 or uses[node.inputs[0]] != 1
                    or node.inputs[0] in outputs or isinstance(node.layer, GRAPH_LAYERS + (GRU,))
                    or isinstance(source.layer, GRAPH_LAYERS)):
                continue
            merged = _fold(source.layer, node.layer)
            if merged is not None:
                source.layer, source.outputs = merged, node.outputs
                nodes.remove(node)
                changed = True
                break
    return nodes


def _renaming(nodes, it, named):
    """Internal tensor name -> graph name: outputs take their graph output names; a tensor whose name an
    output takes gets another."""
    rename = dict(named)
    taken = set(it.raw) | set(named.values())
    for node in nodes:
        for name in node.outputs:
            if name not in rename and name in taken:
                k = 2
                while f"{name}:{k}" in taken or f"{name}:{k}" in it.names:
                    k += 1
                rename[name] = f"{name}:{k}"
                taken.add(rename[name])
    return rename


def _graph_node(node):
    return Node(node.layer, tuple(node.inputs), tuple(node.outputs))


def _final_states(graph, gru_ids):
    """The ids of each GRU node's final state (D, B, H), in ``graph.gru_nodes`` order."""
    states = []
    for node in graph.gru_nodes:
        layer = node.layer
        ids = gru_ids[node.outputs[0]]
        states.append(ids.reshape(ids.shape[0], layer.num_directions, -1).transpose(1, 0, 2))
    return states


# ---- one path: a chain ----

def _as_chain(inputs, nodes, outputs):
    """(the one-path Graph, {GRU output name: (state input, Slice or None)}) when the model is a chain
    with its states as run() arguments, else None."""
    data = [i for i in inputs if i.kind in ("sequence", "ids")]
    if len(data) != 1 or any(i.kind == "vector" for i in inputs):
        return None
    plain = [o for o in outputs if o.directions is None]
    state_outputs = [o for o in outputs if o.directions is not None]
    producer = {name: node for node in nodes for name in node.outputs}
    if not plain and len(state_outputs) == 1 and isinstance(producer[state_outputs[0].name].layer, GRU):
        plain, state_outputs = [Output(state_outputs[0].name)], []    # the last GRU's final state is the output
    if len(plain) != 1:
        return None
    states_in = {i.name for i in inputs if i.kind == "state"}
    sliced = {node.outputs[0]: node for node in nodes
              if isinstance(node.layer, Slice) and node.inputs[0] in states_in}
    finals = {node.outputs[-1] for node in nodes if isinstance(node.layer, GRU)}
    for output in state_outputs:       # GRU final states, or a Concat of them
        node = producer[output.name]
        if not (isinstance(node.layer, GRU) or (isinstance(node.layer, Concat)
                                                 and all(name in finals for name in node.inputs))):
            return None
    reduced, sources = [], {}
    for node in nodes:
        inputs_, outputs_ = list(node.inputs), list(node.outputs)
        if isinstance(node.layer, GRU):
            if len(inputs_) == 2 and (inputs_[1] in states_in or inputs_[1] in sliced):
                slice_node = sliced.get(inputs_[1])
                sources[outputs_[0]] = (slice_node.inputs[0], slice_node.layer) if slice_node else (inputs_[1], None)
                inputs_ = inputs_[:1]
            if len(outputs_) == 2:
                outputs_ = outputs_[:1]
        reduced.append(_graph_node(_Plain(node.layer, inputs_, outputs_)))
    try:
        graph = Graph((data[0],), tuple(reduced), (Output(plain[0].name),))
    except ModelFormatError:
        return None
    if graph.as_chain() is None:
        return None
    chain_outputs = {node.outputs[0] for node in graph.nodes}
    for output in state_outputs:     # every state given back is a GRU of the chain
        node = producer[output.name]
        names = node.inputs if isinstance(node.layer, Concat) else [node.outputs[-1]]
        owners = [producer[name] for name in names]
        if any(not set(owner.outputs) & chain_outputs for owner in owners):
            return None
    return graph, sources


@dataclasses.dataclass
class _Plain:
    layer: object
    inputs: list
    outputs: list


def _state_inputs(graph, sources, tensors, rename):
    """Chain GRU index -> (state input, ids of its initial state (D, B, H) in the graph's input)."""
    back = {new: old for old, new in rename.items()}
    result = {}
    for index, node in enumerate(graph.gru_nodes):
        if node.outputs[0] not in sources:
            continue
        name, part = sources[node.outputs[0]]
        vector = tensors[back.get(name, name)].ids
        if part is not None:
            vector = vector[:, part.begin:part.end]
        layer = node.layer
        result[index] = (name, vector.reshape(vector.shape[0], layer.num_directions, -1).transpose(1, 0, 2))
    return result
