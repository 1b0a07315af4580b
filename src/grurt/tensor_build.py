"""Building a :class:`~grurt.tensor_graph.TensorGraph` node by node, and the lowerings that more than
one builder emits: a mask of the valid steps of a sequence (Keras's ``Masking``) and the mean of the
valid steps. Used by the Keras lowering (:mod:`grurt.importers.keras.lower`) and by the lowering of
grurt's graphs of fused layers (:mod:`grurt.graph_lower`)."""
from __future__ import annotations

import numpy as np

from .tensor_graph import TensorGraph, TensorNode


class GraphBuilder:
    """Nodes, constants and tensor names of a graph being built."""

    def __init__(self, taken=()):
        self.nodes = []                # [op, inputs, outputs, attrs, name]
        self.constants = {}
        self.taken = set(taken)        # names not to give a new tensor
        self.int_constants = {}        # tuple of ints -> constant name (shared)
        self.channels_first = {}       # channels-last tensor -> the same tensor channels first

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}~{k}"
        self.taken.add(name)
        return name

    def const(self, value, base, dtype=np.float32) -> str:
        name = self.fresh(base)
        self.constants[name] = np.array(value, dtype=dtype, order="C")
        return name

    def ints(self, values) -> str:
        key = tuple(int(v) for v in values)
        if key not in self.int_constants:
            self.int_constants[key] = self.const(np.array(key, np.int64), "ints", np.int64)
        return self.int_constants[key]

    def scalar(self, value: int) -> str:
        key = ("scalar", int(value))
        if key not in self.int_constants:
            self.int_constants[key] = self.const(np.array(int(value), np.int64), "int", np.int64)
        return self.int_constants[key]

    def add(self, op, inputs, attrs, base, outputs=1, names=None):
        names = list(names) if names else [self.fresh(f"{base}:{k}" if outputs > 1 else base)
                                           for k in range(outputs)]
        self.nodes.append([op, list(inputs), names, attrs, base])
        return names[0] if outputs == 1 else names

    def build(self, inputs, outputs) -> TensorGraph:
        """The TensorGraph of ``outputs`` ((tensor, output name) pairs), each output's producing node
        writing it under the output's name."""
        renames, produced = {}, {name for node in self.nodes for name in node[2]}
        for tensor, name in outputs:
            if tensor != name and tensor in produced and tensor not in renames:
                renames[tensor] = name
            elif tensor != name:          # an input or a tensor given twice: a copy under the output's name
                self.add("Identity", [tensor], {}, name, names=[name])
        nodes = [TensorNode(op, tuple(renames.get(i, i) for i in ins), tuple(renames.get(o, o) for o in outs), attrs,
                            base) for op, ins, outs, attrs, base in self.nodes]
        return TensorGraph(tuple(inputs), tuple(nodes), tuple(name for _, name in outputs), self.constants)


def masking(g: GraphBuilder, x: str, value: float, base: str):
    """Keras's ``Masking`` of a (B, T, F) float sequence: (the sequence with its masked steps zeroed,
    the (B, T) bool mask), a step valid when any of its features differs from ``value``
    (Keras: any(not_equal(x, mask_value), axis=-1))."""
    mask = g.add("ReduceMax", [g.add("Not", [g.add("Equal", [x, g.const(np.float32(value), f"{base}/mask_value")],
                                                   {}, f"{base}/Equal")], {}, f"{base}/Not")],
                 {"axes": (2,), "keepdims": 0}, f"{base}/ReduceMax")
    valid = g.add("Unsqueeze", [mask], {"axes": (2,)}, f"{base}/Unsqueeze")
    return g.add("Where", [valid, x, g.const(np.float32(0), f"{base}/zero")], {}, f"{base}/Where"), mask


def masked_mean(g: GraphBuilder, x: str, mask: str, axes, keepdims: bool, feature_axis: int, base: str) -> str:
    """The mean over ``axes`` (the time axis) of the valid steps of ``x``, ``mask`` (B, T) true there, as
    Keras's masked average: sum(where(mask, x, 0)) / sum(mask) (0/0: NaN for a sequence without any);
    ``feature_axis``: where the mask gets the axis it lacks."""
    valid = g.add("Unsqueeze", [mask], {"axes": (feature_axis,)}, f"{base}/Unsqueeze")
    total = g.add("ReduceSum", [g.add("Where", [valid, x, g.const(np.float32(0), f"{base}/zero")], {},
                                      f"{base}/Where")], {"axes": tuple(axes), "keepdims": int(keepdims)},
                  f"{base}/ReduceSum")
    count = g.add("ReduceSum", [g.add("Cast", [valid], {"to": 1}, f"{base}/Cast")],       # 1: FLOAT
                  {"axes": tuple(axes), "keepdims": int(keepdims)}, f"{base}/ReduceSum")
    return g.add("Div", [total, count], {}, f"{base}/Div")
