"""A :class:`grurt.graph.Graph` of fused layers lowered onto a :class:`~grurt.tensor_graph.TensorGraph`:
the one representation the planner runs (docs/architecture-tensor-graph.md, "One IR").

Each chain of the graph (:func:`grurt.graph.segments`) becomes one ``grurt.Chain`` node, the nodes
joining the chains the ONNX ops they are, and masks what the Keras lowering makes of them:

=====================================  ==================================================================
graph node                             tensor-graph ops
=====================================  ==================================================================
a segment (chain of layers)            ``grurt.Chain`` (a vector source: one step, Unsqueeze / Squeeze)
``Combine`` add, sub, mul, max, min,   ``Sum``, ``Sub``, ``Mul``, ``Max``, ``Min``, ``Mean`` (each the same
mean                                   order of operations as the fused runner's)
``Concat``, ``Slice``, ``Crop``        ``Concat`` (features), ``Slice`` (features), ``Slice`` (steps)
``PReLU``, ``Unflatten``, ``Repeat``   ``PRelu``, ``Reshape``, ``Unsqueeze`` + ``Expand``
``Masking``                            ``Equal``, ``Not``, ``ReduceMax``, ``Where`` (ids: ``Equal``, ``Not``)
a GRU reading a mask                   ``grurt.MaskedGRU``
an average GlobalPool reading a mask   the masked mean (``Where``, ``ReduceSum``, ``Div``)
=====================================  ==================================================================

Tensors are batch first as in the Graph; a state tensor (B, D·H) inside is (D, B, H) at the graph's
inputs and outputs, as the caller gives and gets it. What a call may add is a variant of the lowered
graph (:func:`lower`'s arguments): the ``lengths`` of the sequences, a run-time initial state for
some GRU nodes, the final state of every GRU node as outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Tuple

import numpy as np

from .errors import UnsupportedModelError
from .graph import (NEW_STEPS_LAYERS, Combine, Concat, Crop, Graph, Masking, PReLU, Repeat, Segment, Slice,
                    Unflatten, segments, takes_mask)
from .ops.recurrent import RNN_ACTIVATIONS
from .spec import GRU, GlobalPool, frame_rate_layers
from .tensor_build import GraphBuilder, masked_mean, masking
from .tensor_graph import TensorGraph, TensorInput

#: grurt's activation kinds -> the ONNX RNN activation names (case-insensitive) the GRU ops read.
_ONNX_ACTIVATIONS = {kind: name for name, kind in RNN_ACTIVATIONS.items()}
#: Combine's ops -> the ONNX op: variadic ones take every tensor, the others fold from the left.
_COMBINE = {"add": "Sum", "sub": "Sub", "mul": "Mul", "max": "Max", "min": "Min", "mean": "Mean"}
_VARIADIC = ("Sum", "Max", "Min", "Mean")
_INT64_MAX = 2**63 - 1
_BATCH = "batch"


@dataclass(frozen=True)
class Lowered:
    """A lowered graph and where a call's extras go: ``lengths`` the name of the (B,) int64 input (None:
    this variant takes none), ``states`` {GRU node position: name of its (D, B, H) initial-state input},
    ``finals`` the names of the outputs giving each GRU node's final state (D, B, H), in the graph's
    order (empty: this variant gives none)."""

    graph: TensorGraph
    lengths: Optional[str]
    states: Dict[int, str]
    finals: Tuple[str, ...]


def lower(graph: Graph, lengths: bool = False, states: FrozenSet[int] = frozenset(),
          return_state: bool = False, stream: bool = False) -> Lowered:
    """``graph`` as a TensorGraph taking ``lengths`` (when asked), an initial state for each GRU node
    whose position (in ``graph.gru_nodes``) is in ``states``, and giving every GRU node's final state
    after its outputs (``return_state``). ``stream``: the variant a stream runs, which reads every frame as
    valid (a GRU reading a mask is the GRU alone, a ``grurt.Chain``)."""
    return _Lowering(graph, lengths, frozenset(states), return_state, stream).result


def _time_dims(graph: Graph) -> Dict[str, object]:
    """The time dim of each sequence and ids input: the sequences a Combine or Concat joins have one number
    of steps (the fused runner's check, which broadcasting would not make), so their inputs share one dim
    parameter; a PReLU with an alpha per step fixes it to its steps. Tensors whose steps are not an input's
    (after a Repeat, an Unflatten, a Crop, a chain changing the frame rate) join no input's dim."""
    parent, fixed, group = {}, {}, {}          # union-find over the inputs; a tensor -> its input (or None)

    def root(name):
        while parent[name] != name:
            name = parent[name]
        return name

    for i in graph.inputs:
        if i.kind in ("sequence", "ids"):
            parent[i.name] = group[i.name] = i.name
    for step in segments(graph):
        if isinstance(step, Segment):
            spec = step.spec(graph)
            keeps = not step.vector and spec.returns_sequence and not frame_rate_layers(spec)
            group[step.output] = group.get(step.source) if keeps else None
            continue
        layer, sources = step.layer, [group.get(name) for name in step.inputs]
        if isinstance(layer, (Combine, Concat)):
            joined = [root(s) for s in sources if s is not None]
            for other in joined[1:]:
                if other != joined[0]:
                    parent[other] = joined[0]
                    if other in fixed:
                        fixed.setdefault(joined[0], fixed[other])
        if isinstance(layer, PReLU) and layer.steps is not None and sources[0] is not None:
            fixed.setdefault(root(sources[0]), layer.steps)
        keeps = not isinstance(layer, NEW_STEPS_LAYERS) and not (
            isinstance(layer, (GRU, GlobalPool)) and not getattr(layer, "return_sequences", False))
        for k, name in enumerate(step.outputs):        # a Masking's y and mask; a GRU's y, not its h_n
            group[name] = sources[0] if keeps and (k == 0 or isinstance(layer, Masking)) else None
    return {name: fixed.get(root(name), f"steps of {root(name)}") for name in parent}


class _Lowering:
    """One lowering: the builder, where each graph tensor is (``env``), and the variant's extras."""

    def __init__(self, graph: Graph, lengths: bool, states: FrozenSet[int], return_state: bool, stream: bool):
        self.graph, self.stream = graph, stream
        self.g = GraphBuilder(graph.tensors)
        g = self.g
        gru_nodes = graph.gru_nodes
        self.position = {id(node): p for p, node in enumerate(gru_nodes)}
        self.time_dims = _time_dims(graph)
        inputs = [self._input(i) for i in graph.inputs]
        self.lengths = g.fresh("lengths") if lengths else None
        if self.lengths:
            inputs.append(TensorInput(self.lengths, "int64", (_BATCH,)))
        self.states = {}
        for p in sorted(states):
            layer = gru_nodes[p].layer
            self.states[p] = g.fresh(f"initial_state[{p}]")
            inputs.append(TensorInput(self.states[p], "float32", (layer.num_directions, _BATCH, layer.hidden_size)))
        #: a graph tensor's name -> the TensorGraph tensor holding it (the same name, but for outputs as states)
        self.env = {i.name: i.name for i in graph.inputs if i.kind != "state"}
        #: a (B, D·H) state vector made from a (D, B, H) state -> (that state, D): read back without moving it
        self.stacked = {}
        for i in graph.inputs:
            if i.kind == "state":          # (D, B, H) -> (B, D·H)
                self.env[i.name] = self._flattened(i.name, i.directions, i.name)
        self.finals = [None] * len(gru_nodes) if return_state else None
        for step in segments(graph):
            if isinstance(step, Segment):
                self._segment(step)
            else:
                self._node(step)
        outputs = []
        for o in graph.outputs:
            tensor = self.env[o.name]
            if o.directions is not None:     # (B, F) -> (directions, B, F / directions)
                tensor = self._stacked(tensor, o.directions, o.name)
            outputs.append((tensor, o.name))
        finals = ()
        if return_state:
            finals = tuple(g.fresh(f"final_state[{p}]") for p in range(len(gru_nodes)))
            outputs += list(zip(self.finals, finals))
        self.result = Lowered(g.build(inputs, outputs), self.lengths, dict(self.states), finals)

    def _input(self, i) -> TensorInput:
        if i.kind == "state":
            return TensorInput(i.name, "float32", (i.directions, _BATCH, i.size // i.directions))
        if i.kind == "vector":
            return TensorInput(i.name, "float32", (_BATCH, i.size))
        time = self.time_dims[i.name]
        return TensorInput(i.name, "int64", (_BATCH, time)) if i.kind == "ids" else \
            TensorInput(i.name, "float32", (_BATCH, time, i.size))

    def _name(self, graph_tensor: str) -> str:
        """The TensorGraph name of a tensor of the graph: its own, unless it is an output given as a state."""
        name = graph_tensor
        if any(o.name == graph_tensor and o.directions is not None for o in self.graph.outputs):
            name = self.g.fresh(f"{graph_tensor}/vector")
        self.env[graph_tensor] = name
        return name

    def _flat_state(self, state: str, base: str, name: Optional[str] = None) -> str:
        """(B, D, H) -> (B, D·H)."""
        return self.g.add("Reshape", [state, self.g.ints((0, -1))], {}, f"{base}/Reshape",
                          names=[name] if name else None)

    def _flattened(self, state: str, directions: int, base: str, name: Optional[str] = None) -> str:
        """A (D, B, H) state as the (B, D·H) vector the graph's nodes read, remembered for :meth:`_stacked`."""
        vector = self._flat_state(self.g.add("Transpose", [state], {"perm": (1, 0, 2)}, f"{base}/Transpose"), base,
                                  name)
        self.stacked[vector] = (state, directions)
        return vector

    def _stacked(self, vector: str, directions: int, base: str) -> str:
        """A (B, D·H) vector as a (D, B, H) state: the state it was flattened from, when it was."""
        known = self.stacked.get(vector)
        if known is not None and known[1] == directions:
            return known[0]
        shaped = self.g.add("Reshape", [vector, self.g.ints((0, directions, -1))], {}, f"{base}/Reshape")
        return self.g.add("Transpose", [shaped], {"perm": (1, 0, 2)}, f"{base}/Transpose")

    def _state_in(self, vector: str, layer: GRU, base: str) -> str:
        """A (B, D·H) state tensor as (B, D, H)."""
        return self.g.add("Reshape", [vector, self.g.ints((0, layer.num_directions, layer.hidden_size))], {},
                          f"{base}/Reshape")

    # ---- the chains ----

    def _segment(self, step: Segment):
        g, spec = self.g, step.spec(self.graph)
        base = step.nodes[0].outputs[0]
        x = self.env[step.source]
        if step.vector:                                       # one step
            x = g.add("Unsqueeze", [x], {"axes": (1,)}, f"{base}/Unsqueeze")
        states = []
        for i, node in enumerate(step.grus):
            p = self.position[id(node)]
            if i in step.states_in:
                states.append(self._stacked(self.env[step.states_in[i]], node.layer.num_directions, node.outputs[0]))
            else:
                states.append(self.states.get(p, ""))
        wanted = [self.finals is not None or i in step.states_out for i in range(len(step.grus))]
        outputs = [g.fresh(f"{step.output}/sequence") if step.vector else self._name(step.output)]
        outputs += [g.fresh(f"{node.outputs[0]}/final_state") if want else "" for node, want in zip(step.grus, wanted)]
        lengths = "" if step.vector or self.lengths is None else self.lengths
        g.add("grurt.Chain", [x, lengths, *states], {"layers": spec.layers, "input_size": spec.input_size}, base,
              names=outputs)
        if step.vector:                                       # its layers all keep the one step
            g.add("Squeeze", [outputs[0]], {"axes": (1,)}, f"{step.output}/Squeeze", names=[self._name(step.output)])
        for i, node in enumerate(step.grus):
            final = outputs[1 + i]
            if self.finals is not None:
                self.finals[self.position[id(node)]] = final
            if i in step.states_out:
                self._flattened(final, node.layer.num_directions, node.outputs[1], self._name(node.outputs[1]))

    # ---- the nodes between them ----

    def _node(self, node):
        g, layer = self.g, node.layer
        x = [self.env[name] for name in node.inputs]
        out, base = node.outputs[0], node.outputs[0]
        if isinstance(layer, Masking):
            if self.graph.tensors[node.inputs[0]].features is None:        # token ids: unchanged, masked by id
                same = g.add("Equal", [x[0], g.const(np.int64(layer.value), f"{base}/mask_value", np.int64)], {},
                             f"{base}/Equal")
                self.env[out] = x[0]
                g.add("Not", [same], {}, f"{base}/Not", names=[self._name(node.outputs[1])])
                return
            y, mask = masking(g, x[0], layer.value, base)
            self.env[out], self.env[node.outputs[1]] = y, mask
            return
        if takes_mask(node, self.graph.tensors):
            if isinstance(layer, GRU):
                (self._streamed_gru if self.stream else self._masked_gru)(node, x)
            else:
                self.env[out] = masked_mean(g, x[0], x[1], (1,), False, 2, base)
            return
        if isinstance(layer, Combine):
            op = _COMBINE[layer.op]
            if op in _VARIADIC:
                g.add(op, x, {}, base, names=[self._name(out)])
                return
            result = x[0]
            for k, other in enumerate(x[1:], 2):
                result = g.add(op, [result, other], {}, base, names=[self._name(out)] if k == len(x) else None)
            return
        if isinstance(layer, Concat):
            g.add("Concat", x, {"axis": -1}, base, names=[self._name(out)])
        elif isinstance(layer, Slice):
            g.add("Slice", [x[0], g.ints((layer.begin,)), g.ints((layer.end,)), g.ints((-1,))], {}, base,
                  names=[self._name(out)])
        elif isinstance(layer, Crop):
            end = -layer.right if layer.right else _INT64_MAX
            g.add("Slice", [x[0], g.ints((layer.left,)), g.ints((end,)), g.ints((1,))], {}, base,
                  names=[self._name(out)])
        elif isinstance(layer, PReLU):
            g.add("PRelu", [x[0], g.const(layer.alpha, f"{base}/alpha")], {}, base, names=[self._name(out)])
        elif isinstance(layer, Unflatten):
            g.add("Reshape", [x[0], g.ints((0, layer.steps, -1))], {}, base, names=[self._name(out)])
        elif isinstance(layer, Repeat):
            one = g.add("Unsqueeze", [x[0]], {"axes": (1,)}, f"{base}/Unsqueeze")
            g.add("Expand", [one, g.ints((1, layer.steps, 1))], {}, base, names=[self._name(out)])
        else:                                                # pragma: no cover (segments() gives no other node)
            raise UnsupportedModelError(f"node {node.describe()}: no tensor-graph lowering")

    def _streamed_gru(self, node, x):
        """A GRU node reading a mask, in a stream: every frame valid, the GRU alone as a ``grurt.Chain``."""
        g, layer, base = self.g, node.layer, node.outputs[0]
        p = self.position[id(node)]
        state = self.states.get(p, "")
        if len(node.inputs) == 3:                            # h0 from a tensor (B, D·H) -> (D, B, H)
            state = self._stacked(x[1], layer.num_directions, base)
        final = g.fresh(f"{base}/final_state") if self.finals is not None or len(node.outputs) == 2 else ""
        g.add("grurt.Chain", [x[0], "", state], {"layers": (layer,), "input_size": layer.input_size}, base,
              names=[self._name(node.outputs[0]), final])
        if self.finals is not None:
            self.finals[p] = final
        if len(node.outputs) == 2:
            self._flattened(final, layer.num_directions, node.outputs[1], self._name(node.outputs[1]))

    def _masked_gru(self, node, x):
        """A GRU node reading a mask: ``grurt.MaskedGRU``; without return_sequences its output is its final
        state where the sequence has a valid step, else zeros (the rule of grurt.graph.Masking)."""
        g, layer, base = self.g, node.layer, node.outputs[0]
        d, hidden = layer.num_directions, layer.hidden_size
        p = self.position[id(node)]
        if len(node.inputs) == 3:                            # h0 from a tensor (B, D·H)
            h0 = self._state_in(x[1], layer, base)
        elif p in self.states:                               # the caller's (D, B, H)
            h0 = g.add("Transpose", [self.states[p]], {"perm": (1, 0, 2)}, f"{base}/Transpose")
        elif layer.initial_state is not None:                # the learned state, for each sequence
            batch = g.add("Slice", [g.add("Shape", [x[0]], {}, f"{base}/Shape"), g.ints((0,)), g.ints((1,))], {},
                          f"{base}/Slice")
            shape = g.add("Concat", [batch, g.ints((d, hidden))], {"axis": 0}, f"{base}/Concat")
            h0 = g.add("Expand", [g.const(layer.initial_state[None], f"{base}/initial_state"), shape], {},
                       f"{base}/Expand")
        else:
            h0 = ""
        functions = [layer.gate_activation, layer.candidate_activation] * d
        attrs = dict(hidden_size=hidden, direction=layer.direction, linear_before_reset=int(layer.linear_before_reset),
                     clip=layer.clip, activations=tuple(_ONNX_ACTIVATIONS.get(fn.kind, fn.kind) for fn in functions),
                     activation_alpha=tuple(fn.alpha for fn in functions if fn.alpha is not None),
                     activation_beta=tuple(fn.beta for fn in functions if fn.beta is not None),
                     masked_output="zeros" if d == 2 else "previous")
        W, R, B = (g.const(getattr(layer, k), f"{base}/{k}") for k in ("W", "R", "B"))
        y, y_h = g.add("grurt.MaskedGRU", [x[0], W, R, B, x[-1], h0], attrs, base, outputs=2)
        out = self._name(node.outputs[0])
        if layer.return_sequences:                           # (B, T, D, H) -> (B, T, D·H)
            g.add("Reshape", [y, g.ints((0, 0, -1))], {}, f"{base}/Reshape", names=[out])
        else:
            any_valid = g.add("ReduceMax", [x[-1]], {"axes": (1,), "keepdims": 1}, f"{base}/ReduceMax")
            g.add("Where", [any_valid, self._flat_state(y_h, base), g.const(np.float32(0), f"{base}/zero")], {},
                  f"{base}/Where", names=[out])
        if len(node.outputs) == 2:
            self._flat_state(y_h, node.outputs[1], self._name(node.outputs[1]))
        if self.finals is not None:
            self.finals[p] = g.add("Transpose", [y_h], {"perm": (1, 0, 2)}, f"{base}/final_state")
