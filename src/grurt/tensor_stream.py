"""Streaming a general tensor graph: :meth:`grurt.TensorModel.stream`.

A stream is derived from the graph (tract's "pulse" idea, in its simplest form):

1. **Time axes.** Each time input has one time axis (``time_axes=``, or the rule of
   :func:`default_time_axes`); the other inputs are static, given once per stream. The graph is
   planned at two probe lengths of time (:data:`PROBES`); a tensor's time axis is the axis whose
   size differs between them, a folded constant that differs depends on the number of frames.
   Every tensor is then *const* (folded, the same at both lengths), *sizes* (folded from the
   number of frames: shape arithmetic), *static* (computed from the static inputs) or *dynamic*
   (computed from the frames; with a time axis, or a summary such as a GRU's last state).
2. **Legality, node by node**, with each op's time rule (:func:`grurt.ops.time_rule`) and the
   moves grurt follows (Transpose, Reshape, Flatten, Squeeze, Unsqueeze carry the time axis
   where it goes; MatMul and Einsum keep it as a free index). A node that mixes the frames
   raises UnsupportedModelError naming it and why.
3. **Rewrite.** The stream graph is the dynamic nodes (and the shape arithmetic they need), the
   static tensors they read as inputs, and one state input and output per stateful node: a
   forward GRU's h (``initial_h`` <- the state, ``Y_h`` -> the next); a causal Conv or pool
   reads ``Concat(history, X)`` with its time padding removed; a causal Pad becomes
   ``Concat(history, X)`` (its output carries the history frames in front, which the Conv
   reading it consumes); CumSum adds its running sum. Histories are ``Slice`` s of the
   concatenated input. The static part is a graph of its own, run once per ``reset``.

The stream runs the stream graph as a :class:`~grurt.TensorModel` (planned once per block
length and cached) on the frames, the static tensors and the states.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import GrurtError, InputError, UnsupportedModelError
from .graph_model import by_name
from .ops import REGISTRY, time_rule
from .ops.chain import _run_kept, chain_spec, stream_refusal
from .ops.conv import _time_window
from .ops.linear import parse_einsum
from .ops.shape import _pads
from .tensor_graph import TensorGraph, TensorInput, TensorNode
from .tensor_plan import execute, make_plan

#: The two lengths of time the graph is planned at to find where time goes.
PROBES = (4, 5)
#: A dim parameter named so is a time axis (default rule of :func:`default_time_axes`).
TIME_DIM = re.compile(r"^t$|time|seq|frame|step|length", re.IGNORECASE)
#: Ops that carry the time axis to wherever their output puts it, element order kept.
_VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_CONV_FAMILY = ("Conv", "MaxPool", "AveragePool", "LpPool")
_END = np.iinfo(np.int64).max
_FLOAT = np.dtype(np.float32)


#: What to do, by default, with a model that cannot stream.
RUN_WHOLE = "use run() on the whole sequence"
#: What an op that mixes the frames along time reads from the whole sequence (the ops of the "sequence" time rule,
#: or of a "sequence" time_of along time), for the refusal.
_READS_ALL = {
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), "normalizes over every frame, later ones included"),
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"), "reduces every frame into one value"),
    **dict.fromkeys(("ArgMax", "ArgMin", "TopK"), "picks among every frame, later ones included"),
    **dict.fromkeys(("LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization",
                     "MeanVarianceNormalization"), "normalizes with statistics of every frame, later ones included"),
    "CumSum": "sums from the last frame back (reverse=1)",
    **dict.fromkeys(("ConvTranspose", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth"),
                    "changes the number of frames (it makes or merges frames, reading ahead)"),
}


def _refuse(node, why: str, todo: str = RUN_WHOLE):
    """UnsupportedModelError: ``node`` (named) cannot stream because ``why``; ``todo``: what the user can do."""
    raise UnsupportedModelError(f"{node.where}: {why}; this model cannot stream: {todo}")


def _mixes(node, axis: int, x: str):
    """The refusal of a node that mixes the frames along time: what it reads from the whole sequence."""
    what = _READS_ALL.get(node.op, "reads every frame of the sequence, later ones included")
    _refuse(node, f"mixes the frames along time: {node.op} along time (axis {axis} of its input '{x}') {what}")


#: A masked GRU's refusal: why (its mask picks the steps anywhere in the sequence) and what streams instead.
MASKED_WHY = ("its mask (input '{mask}') picks the steps it reads anywhere in the sequence (padding before, inside "
              "or after the real frames), and a stream cannot tell from a frame whether it counts")
MASKED_TODO = ("use run() on whole padded sequences with their mask; to stream, step only each sequence's real frames "
               "through the model converted without its mask (Keras: without the Masking layer, or with "
               "Embedding(mask_zero=False)): with no padding frames every step counts, and the GRU streams as a "
               "plain forward GRU")
MASK_VALUE_TODO = ("use run() on whole padded sequences; to stream, step only each sequence's real frames through the "
                   "chain without mask_value (with no padding frames every step counts)")


def default_time_axes(graph: TensorGraph) -> Dict[str, int]:
    """{input name: time axis} when ``time_axes=`` is not given: an input whose dims name one
    parameter like "time", "T", "seq", "frames", "steps", "length" has its time there; if no input
    does, the one input that looks like a sequence — axis 1 a dim parameter, and rank >= 3 or
    int64 ids of rank 2 — has its time on axis 1. Anything else (no candidate, several, two
    time-like dims) is an InputError asking for ``time_axes=``."""
    named = {}
    for tensor in graph.inputs:
        axes = [a for a, d in enumerate(tensor.dims) if isinstance(d, str) and TIME_DIM.search(d)]
        if len(axes) > 1:
            raise InputError(f"input '{tensor.name}' ({tensor.describe()}) has several time-like dims: say which is "
                             "time with model.stream(time_axes={name: axis})")
        if axes:
            named[tensor.name] = axes[0]
    if named:
        return named
    candidates = [t.name for t in graph.inputs if len(t.dims) >= 2 and isinstance(t.dims[1], str)
                  and (len(t.dims) >= 3 or t.dtype == "int64")]
    if len(candidates) == 1:
        return {candidates[0]: 1}
    found = f"inputs {candidates} could each be" if candidates else "no input is"
    raise InputError(f"which axes are time? {found} a sequence (batch, time, ...): say which with "
                     "model.stream(time_axes={name: axis}); the inputs not listed are static")


def checked_time_axes(graph: TensorGraph, time_axes) -> Dict[str, int]:
    """``time_axes`` ({name: axis or None}) checked against the inputs, axes made non-negative."""
    if time_axes is None:
        return default_time_axes(graph)
    if not isinstance(time_axes, dict):
        raise InputError(f"time_axes must be a dict {{input name: axis}}, got {type(time_axes).__name__}")
    declared = {t.name: t for t in graph.inputs}
    result = {}
    for name, axis in time_axes.items():
        if name not in declared:
            raise InputError(f"time_axes names '{name}', which is not an input: the inputs are {list(declared)}")
        if axis is None:
            continue
        rank = len(declared[name].dims)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -rank <= axis < rank:
            raise InputError(f"time_axes['{name}'] = {axis!r} is not an axis of input {declared[name].describe()}")
        result[name] = int(axis) % rank
    if not result:
        raise InputError("time_axes gives no input a time axis: there is nothing to stream, use run()")
    return result


class _Stateful:
    """A node's state in the stream: its input and output names in the stream graph, and what it
    holds at the start (``initial``: an array, or the name of a static tensor)."""

    __slots__ = ("node", "kind", "name_in", "name_out", "initial", "shape", "dtype")

    def __init__(self, node, kind, name_in, name_out, initial, shape, dtype):
        self.node, self.kind, self.name_in, self.name_out = node, kind, name_in, name_out
        self.initial, self.shape, self.dtype = initial, tuple(shape), np.dtype(dtype)

    def describe(self) -> str:
        return f"{self.kind} of {self.node.where}: {self.dtype} {self.shape}"


class StreamGraph:
    """What a stream runs, for one signature (frame shapes, static inputs' shapes): the stream
    graph (time inputs, static tensors, states -> outputs, next states), the static graph (static
    inputs -> the static tensors the stream reads), each output's time axis, the states."""

    def __init__(self, graph: TensorGraph, axes: Dict[str, int], frame_sig: Dict[str, Tuple], static_sig):
        self.graph = graph
        probes = []
        for length in PROBES:
            sig, values = [], {}
            for tensor in graph.inputs:
                if tensor.name in axes:
                    shape, dtype = frame_sig[tensor.name]
                    shape = shape[:axes[tensor.name]] + (length,) + shape[axes[tensor.name]:]
                else:
                    shape, dtype = static_sig[tensor.name]
                sig.append((shape, dtype))
            try:
                make_plan(graph, sig, values)
            except GrurtError as exc:
                raise UnsupportedModelError(f"this model does not plan for {length} frames, so it cannot stream: "
                                            f"{exc}") from None
            probes.append(values)
        self.a, self.b = probes
        self.axes = axes
        self.time: Dict[str, Optional[int]] = {}      # tensor -> its time axis (dynamic tensors)
        self.extra: Dict[str, int] = {}               # tensor -> history frames it carries in front
        self.kind: Dict[str, str] = {}                # tensor -> const | sizes | static | dynamic
        for tensor in graph.inputs:
            self.kind[tensor.name] = "dynamic" if tensor.name in axes else "static"
            self.time[tensor.name] = axes.get(tensor.name)
            self.extra[tensor.name] = 0
        for name in graph.constants:
            self.kind[name] = "const"
        self.nodes: List[TensorNode] = []            # the stream graph's nodes
        self.static_nodes: List[TensorNode] = []
        self.constants: Dict[str, np.ndarray] = {}
        self.states: List[_Stateful] = []
        for node in graph.nodes:
            self._node(node)
        for name in graph.outputs:
            if self.kind[name] == "sizes":
                raise UnsupportedModelError(f"output '{name}' is computed from the number of frames; this model "
                                            f"cannot stream: {RUN_WHOLE}")
            if self.extra.get(name):
                raise UnsupportedModelError(f"output '{name}' holds {self.extra[name]} padding frames before the "
                                            f"first one; this model cannot stream: {RUN_WHOLE}")
        self._build()

    # ---- classification and legality ----

    def _axis(self, name) -> Optional[int]:
        """The axis of ``name`` whose size differs between the probes (None: none)."""
        a, b = self.a[name].shape, self.b[name].shape
        if len(a) != len(b):
            return -1
        moved = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return moved[0] if len(moved) == 1 else None if not moved else -1

    def _node(self, node):
        op = REGISTRY[node.op]
        names = [n for n in node.inputs if n]
        outputs = [n for n in node.outputs if n]
        if all(self.a[n].const is not None for n in outputs):       # folded when the plan is made
            for n in outputs:
                a, b = self.a[n].const, self.b[n].const
                self.kind[n] = "const" if a.shape == b.shape and np.array_equal(a, b) else "sizes"
            if any(self.kind[n] == "sizes" for n in outputs):
                self.nodes.append(node)       # folded again for each block length
            return
        for position, name in enumerate(node.inputs):
            if name and self.kind[name] == "sizes" and position not in op.const_inputs:
                _refuse(node, f"reads '{name}', computed from the number of frames, as data (a stream would "
                              "restart it at each block)")
        if not any(self.kind[n] == "dynamic" for n in names):
            sizes = [n for n in names if self.kind[n] == "sizes"]
            if sizes:
                _refuse(node, f"computes a static tensor from '{sizes[0]}', computed from the number of frames")
            for n in outputs:
                self.kind[n] = "static"
            self.static_nodes.append(node)
            return
        timed = {p: self.time[n] for p, n in enumerate(node.inputs) if n and self.kind[n] == "dynamic"
                 and self.time[n] is not None}
        summaries = [n for n in names if self.kind[n] == "dynamic" and self.time[n] is None]
        if timed and summaries and node.op not in ("GRU", "grurt.Chain"):
            _refuse(node, f"combines '{summaries[0]}' (a value after the last frame, such as a GRU's last state) "
                          "with tensors over time")
        extras = {self.extra[node.inputs[p]] for p in timed}
        if len(extras) > 1:
            _refuse(node, "combines tensors with different numbers of padding frames in front")
        extra = extras.pop() if extras else 0
        if node.op == "GRU":
            self._gru(node, timed)
            return
        if node.op == "grurt.Chain" and timed:     # (a chain of a value after the last frame runs on it per frame)
            self._chain(node, timed)
            return
        if node.op == "grurt.MaskedGRU":
            if node.attrs["direction"] != "forward":
                _refuse(node, f"a {node.attrs['direction']} GRU reads the sequence from its end")
            _refuse(node, MASKED_WHY.format(mask=node.inputs[4]), MASKED_TODO)
        rewritten = self._check(node, op, timed, extra)
        for n in outputs:
            self.kind[n] = "dynamic"
            axis = self._axis(n)
            if axis == -1:
                _refuse(node, f"gives '{n}' with time on more than one axis")
            self.time[n] = axis
            if axis is None and timed:
                _refuse(node, f"mixes the frames along time into '{n}' (a {node.op} over the time axis needs every frame)")
            self.extra.setdefault(n, extra if axis is not None else 0)
        if rewritten is not None:
            self.nodes.append(rewritten)

    def _values(self, node):
        return [self.a[n] if n else None for n in node.inputs]

    def _check(self, node, op, timed, extra):
        """The node as the stream graph runs it (rewritten for a causal op; None when its rewrite is
        in the stream graph already), or a refusal."""
        values = self._values(node)
        if not timed:
            return node
        first = timed.get(0)
        if node.op in _CONV_FAMILY or node.op == "Pad" or node.op == "CumSum":
            if set(timed) != {0}:
                _refuse(node, f"input '{node.inputs[min(p for p in timed if p)]}' carries time; {node.op} streams "
                              "with time on its first input only")
            return self._causal(node, op, values, first, extra)
        if op.time == "step" or node.op == "Transpose":
            return node
        if node.op in _VIEWS:
            if node.op == "Squeeze" and len(node.inputs) < 2 and node.attrs.get("axes") is None:
                _refuse(node, "a Squeeze without axes of a tensor over time (at one frame it would drop the time "
                              "axis): give it axes")
            for values_ in (self.a, self.b):
                x, y = values_[node.inputs[0]].shape, values_[node.outputs[0]].shape
                out = self._axis(node.outputs[0])
                if out is None or out < 0 or y[out] != x[first] or np.prod(x[:first]) != np.prod(y[:out]):
                    _refuse(node, f"merges or splits the time axis (axis {first} of {x}) with other axes into {y}")
            return node
        if node.op == "MatMul":
            ranks = [len(v.shape) for v in values]
            contracted = (ranks[0] - 1, ranks[1] - 2 if ranks[1] >= 2 else 0)
            if any(timed.get(p) == contracted[p] for p in (0, 1)):
                _refuse(node, "contracts the time axis (a product over frames)")
            if len(timed) == 2 and not all(timed[p] < ranks[p] - 2 for p in (0, 1)):
                _refuse(node, "multiplies two tensors over time (attention over the frames)")
            return node
        if node.op == "Einsum":
            operands, output, _ = parse_einsum(node.attrs["equation"], [v.shape for v in values])
            labels = {operands[p][axis] for p, axis in timed.items()}
            label = labels.pop()
            if labels or label not in output or any(operands[p].count(label) > 1 for p in timed):
                _refuse(node, f"sums or pairs frames over time (equation {node.attrs['equation']!r})")
            return node
        if node.op == "Gather" and first is None:
            return node                      # time on the indices (token ids): a lookup per frame
        if node.op == "Concat":
            axis = node.attrs["axis"] % len(values[0].shape)
            if len(timed) != len(values) or axis in timed.values():
                _refuse(node, "concatenates along time, or a static tensor with tensors over time")
            return node
        if first is None or set(timed) != {0}:
            _refuse(node, f"input '{node.inputs[min(timed)]}' carries time; {node.op} streams with time on its "
                          "first input only")
        rule = time_rule(op, node.attrs, values, first)
        if rule != "step":
            _mixes(node, first, node.inputs[0])
        return node

    def _causal(self, node, op, values, axis, extra):
        """Conv, pools, Pad, CumSum with time on X's axis ``axis``."""
        x = node.inputs[0]
        rule = time_rule(op, node.attrs, values, axis)
        if rule == "step":
            return node
        if node.op in _CONV_FAMILY and axis >= 2:
            k, s, d, before, after = _time_window(node.op, node.attrs, values, axis)
            span = (k - 1) * d + 1
            if s == 1 and not after and not before and extra >= span - 1:
                self.extra[node.outputs[0]] = extra - (span - 1)     # reads the padding frames a Pad put in front
                return node
            if rule == "causal" and not extra:
                if node.op == "AveragePool" and not node.attrs["count_include_pad"]:
                    _refuse(node, "an average over padding frames it does not count (count_include_pad=0) "
                                  "cannot take history frames in their place")
                fill = -np.inf if node.op == "MaxPool" else 0
                return self._history(node, axis, before, fill, self._unpadded(node, values, axis))
            why = "reads frames after the current one (padding after time, a stride or a dilation along time)"
            _refuse(node, why if node.op != "AveragePool" else why + ", or averages over them")
        if node.op == "Pad" and rule == "causal" and not extra:
            if node.attrs["mode"] != "constant":
                _refuse(node, f"'{node.attrs['mode']}' padding of time repeats the first frame, which a stream "
                              "has not seen when it starts (constant padding streams)")
            fill = values[2].const if len(values) > 2 and values[2] is not None else np.zeros((), values[0].dtype)
            if fill is None:
                _refuse(node, "its padding value is computed from the model's inputs")
            _, crop, widths = _pads(node.attrs, values)
            if any(c != slice(0, n) for c, n in zip(crop, values[0].shape)):
                _refuse(node, "it crops (negative pads) as it pads time")
            begin = widths[axis][0]
            widths = list(widths)
            widths[axis] = (0, 0)
            rest = None
            if any(b or e for b, e in widths):
                pads = np.array([b for b, _ in widths] + [e for _, e in widths], np.int64)
                rest = TensorNode("Pad", (f"{x}@frames", self._constant(pads)) + tuple(node.inputs[2:3]),
                                  node.outputs, {"mode": "constant"}, node.name)
            self.extra[node.outputs[0]] = begin
            return self._history(node, axis, begin, fill.reshape(()), rest)
        if node.op == "CumSum" and rule == "causal" and not extra:
            return self._cumsum(node, axis)
        if extra:
            _refuse(node, f"its input '{x}' carries padding frames in front, which a {node.op} along time would mix "
                          "with the frames")
        _mixes(node, axis, x)

    def _unpadded(self, node, values, axis):
        """The conv-family node with no padding before time (its history takes that place)."""
        spatial = len(values[0].shape) - 2
        pads = []
        for i in range(spatial):
            _, _, _, before, after = _time_window(node.op, node.attrs, values, i + 2)
            pads.append((0 if i + 2 == axis else before, after))
        attrs = dict(node.attrs, auto_pad="NOTSET", pads=tuple(b for b, _ in pads) + tuple(a for _, a in pads))
        inputs = (f"{node.inputs[0]}@frames",) + tuple(node.inputs[1:])
        return TensorNode(node.op, inputs, node.outputs, attrs, node.name)

    def _history(self, node, axis, frames, fill, rewritten):
        """State: the last ``frames`` frames of X along ``axis``, ``fill`` at the start; the node reads
        Concat(history, X) (``x@frames``) through ``rewritten`` (None: the Concat is its output)."""
        x = node.inputs[0]
        value = self.a[x]
        shape = value.shape[:axis] + (frames,) + value.shape[axis + 1:]
        state = self._state(node, "history", np.full(shape, fill, value.dtype), shape, value.dtype)
        joined = f"{x}@frames" if rewritten is not None else node.outputs[0]
        self.nodes.append(TensorNode("Concat", (state.name_in, x), (joined,), {"axis": axis}, f"{node.name}@history"))
        self._slice(joined, state.name_out, -frames, axis, node)
        return rewritten

    def _cumsum(self, node, axis):
        x, out = node.inputs[0], node.outputs[0]
        value = self.a[x]
        shape = value.shape[:axis] + (1,) + value.shape[axis + 1:]
        state = self._state(node, "running sum", np.zeros(shape, value.dtype), shape, value.dtype)
        partial = f"{out}@partial"
        self.nodes.append(TensorNode("CumSum", (x, node.inputs[1]), (partial,), node.attrs, node.name))
        self.nodes.append(TensorNode("Add", (partial, state.name_in), (out,), {}, f"{node.name}@carry"))
        if not node.attrs["exclusive"]:
            self._slice(out, state.name_out, -1, axis, node)
        else:
            self._slice(out, f"{out}@last", -1, axis, node)
            self._slice(x, f"{x}@last", -1, axis, node)
            self.nodes.append(TensorNode("Add", (f"{out}@last", f"{x}@last"), (state.name_out,), {},
                                         f"{node.name}@next"))
        return None

    def _gru(self, node, timed):
        attrs = node.attrs
        X, _, _, _, lengths, initial = (list(node.inputs) + [""] * 6)[:6]
        layout = attrs["layout"]
        if attrs["direction"] != "forward":
            _refuse(node, f"a {attrs['direction']} GRU reads the sequence from its end")
        if set(timed) != {0} or timed[0] != (0 if layout == 0 else 1):
            _refuse(node, "its time steps are not the frames (the time axis reaches X elsewhere, or another "
                          "input carries time)")
        if self.extra[X]:
            _refuse(node, "it would read padding frames in front of the first one")
        if lengths:
            _refuse(node, f"sequence_lens ends each sequence at its own step (input '{lengths}'), and a stream runs "
                          "every frame of every sequence", "use run() on the whole padded batch, or step each sequence's "
                          "own frames through the model exported without sequence_lens")
        shape = REGISTRY["GRU"].infer(attrs, self._values(node))[1][0]
        start = np.zeros(shape, _FLOAT)
        if initial:
            kind = self.kind[initial]
            if kind == "dynamic":
                _refuse(node, f"its initial state '{initial}' is computed from the frames")
            start = self.a[initial].const if kind == "const" else initial
        state = self._state(node, "GRU state", start, shape, _FLOAT)
        y_h = node.outputs[1] if len(node.outputs) > 1 and node.outputs[1] else state.name_out
        state.name_out = y_h
        inputs = (list(node.inputs) + [""] * 6)[:5] + [state.name_in]
        self.nodes.append(TensorNode("GRU", tuple(inputs), (node.outputs[0], y_h), attrs, node.name))
        y = node.outputs[0]
        for n, axis in ((y, 0 if layout == 0 else 1), (y_h, None)):
            if n:
                self.kind[n], self.time[n], self.extra[n] = "dynamic", axis, 0

    def _chain(self, node, timed):
        """A grurt.Chain that streams (grurt.ops.chain.stream_refusal): each GRU state and Conv1D history a
        state of the stream, in the node's order of inputs and outputs."""
        spec = chain_spec(node.attrs)
        why = stream_refusal(spec)
        if why:
            _refuse(node, why, MASK_VALUE_TODO if spec.mask_value is not None else RUN_WHOLE)
        x = node.inputs[0]
        if set(timed) != {0} or timed[0] != 1:
            _refuse(node, "its time steps are not the frames (time must be axis 1 of x, and x alone carries it)")
        if self.extra[x]:
            _refuse(node, "it would read padding frames in front of the first one")
        if len(node.inputs) > 1 and node.inputs[1]:
            _refuse(node, f"its lengths end each sequence at its own step (input '{node.inputs[1]}'), and a stream "
                          "runs every frame of every sequence", "use run() on the whole padded batch, or step each "
                          "sequence's own frames through the chain without lengths")
        shapes = [shape for shape, _ in REGISTRY[node.op].infer(node.attrs, self._values(node))[1:]]
        starts = [gru.default_state(shapes[0][1]) for gru in spec.gru_layers]
        starts += [np.zeros(shape, _FLOAT) for shape in shapes[len(starts):]]
        inputs, outputs = [x, ""], [node.outputs[0]]
        for k, (shape, start) in enumerate(zip(shapes, starts)):
            given = node.inputs[2 + k] if 2 + k < len(node.inputs) else ""
            if given:
                kind = self.kind[given]
                if kind == "dynamic":
                    _refuse(node, f"its initial state '{given}' is computed from the frames")
                start = self.a[given].const if kind == "const" else given
            state = self._state(node, "GRU state" if k < len(spec.gru_layers) else "Conv1D history", start, shape,
                                _FLOAT)
            named = node.outputs[1 + k] if 1 + k < len(node.outputs) else ""
            state.name_out = named or state.name_out
            inputs.append(state.name_in)
            outputs.append(state.name_out)
            self.kind[state.name_out], self.time[state.name_out], self.extra[state.name_out] = "dynamic", None, 0
        self.nodes.append(TensorNode(node.op, tuple(inputs), tuple(outputs), {**node.attrs, "keep_state": 1},
                                     node.name))
        y = node.outputs[0]
        self.kind[y], self.time[y], self.extra[y] = "dynamic", 1 if spec.returns_sequence else None, 0

    def _state(self, node, kind, initial, shape, dtype) -> _Stateful:
        index = len(self.states)
        state = _Stateful(node, kind, f"@state{index}", f"@state{index}@next", initial, shape, dtype)
        self.states.append(state)
        return state

    def _constant(self, array) -> str:
        name = f"@const{len(self.constants)}"
        self.constants[name] = array
        return name

    def _slice(self, source, target, start, axis, node):
        ints = [self._constant(np.array([v], np.int64)) for v in (start, _END, axis)]
        self.nodes.append(TensorNode("Slice", (source, *ints), (target,), {}, f"{node.name}@keep"))

    # ---- the two graphs ----

    def _build(self):
        graph = self.graph
        nodes = self.nodes
        produced = {o for n in nodes for o in n.outputs if o}
        produced |= set(self.axes) | {s.name_in for s in self.states} | set(self.constants)
        static_reads, constants = [], dict(self.constants)
        for name in list(dict.fromkeys(i for n in nodes for i in n.inputs if i)) + list(graph.outputs):
            if name in produced:
                continue
            if self.kind[name] in ("const",):
                constants[name] = self.a[name].const
            elif self.kind[name] == "static" and name not in static_reads:
                static_reads.append(name)
        for state in self.states:
            if isinstance(state.initial, str) and state.initial not in static_reads:
                static_reads.append(state.initial)
        inputs = []
        for tensor in graph.inputs:
            if tensor.name in self.axes:
                dims = list(self.a[tensor.name].shape)
                dims[self.axes[tensor.name]] = "frames"
                inputs.append(TensorInput(tensor.name, tensor.dtype, tuple(dims)))
        for name in static_reads:
            inputs.append(TensorInput(name, _dtype_name(self.a[name].dtype), self.a[name].shape))
        for state in self.states:
            inputs.append(TensorInput(state.name_in, _dtype_name(state.dtype), state.shape))
        self.outputs = list(graph.outputs)
        outputs = list(dict.fromkeys(self.outputs + [s.name_out for s in self.states]))
        self.state_outputs = [outputs.index(s.name_out) for s in self.states]
        self.output_positions = [outputs.index(n) for n in self.outputs]
        #: outputs that are states too: copied out (a node of the stream graph may keep its states in place)
        self.output_copies = [position in self.state_outputs for position in self.output_positions]
        self.stream_graph = TensorGraph(tuple(inputs), tuple(nodes), tuple(outputs), constants)
        self.static_reads = static_reads
        self.output_axes = [self.time.get(n) if self.kind[n] == "dynamic" else None for n in self.outputs]
        self.static_graph = None
        static_inputs = [t for t in graph.inputs if t.name not in self.axes]
        if static_inputs:
            needed = set()
            for node in self.static_nodes:
                needed.update(i for i in node.inputs if i and self.kind[i] == "const")
            self.static_graph = TensorGraph(
                tuple(static_inputs), tuple(self.static_nodes), tuple(static_reads) or (static_inputs[0].name,),
                {name: self.a[name].const for name in needed})


def _dtype_name(dtype) -> str:
    return {"f": "float32", "i": "int64", "b": "bool"}[np.dtype(dtype).kind]


class Compiled:
    """A stream of one batch and one static signature, ready to run: its :class:`StreamGraph`, the TensorModel
    running the stream graph, the TensorModel of the static graph (None without static inputs), and each time
    input's frame shape (without its time axis) and dtype."""

    __slots__ = ("graph", "runner", "static_model", "frame_shapes", "step_shapes", "step_plan")

    def __init__(self, model, time_axes: Dict[str, int], batch: int, static_shapes: Dict[str, Tuple]):
        self.frame_shapes = frame_signature(model.graph, time_axes, batch, static_shapes)
        self.graph = StreamGraph(model.graph, time_axes, self.frame_shapes, static_shapes)
        self.runner = type(model)(self.graph.stream_graph, weights=model.weights)
        static = self.graph.static_graph
        self.static_model = type(model)(static, weights=model.weights) if static is not None else None
        #: the plan of one frame (its signature is fixed: the frames', the static tensors' and the states'), made
        #: at the first step
        self.step_plan = None
        #: each time input's shape in one step: its frame's with a time axis of 1
        self.step_shapes = [shape[:time_axes[name]] + (1,) + shape[time_axes[name]:]
                            for name, (shape, _) in self.frame_shapes.items()]

    def static_values(self, arrays) -> Dict[str, np.ndarray]:
        """The static tensors the stream reads, by name, for checked static input ``arrays`` (in input order)."""
        if self.static_model is None:
            return {}
        results = self.static_model.run(dict(zip(self.static_model.input_names, arrays)))
        results = results if isinstance(results, tuple) else (results,)
        return dict(zip(self.static_model.output_names, results))

    def initial(self, index: int, static_values) -> np.ndarray:
        """State ``index`` at its start (a constant, or a static tensor of ``static_values``)."""
        state = self.graph.states[index]
        if isinstance(state.initial, str):
            return np.array(static_values[state.initial], state.dtype)
        return np.array(np.broadcast_to(state.initial, state.shape), state.dtype)

    def advance(self, time_axes, frames, static_arrays, states, block: bool):
        """(outputs, next states) for ``frames`` (by_name's dict of the time inputs: one frame, or a block),
        the static tensors the stream reads and the states; InputError naming a time input of a wrong shape."""
        if not block:
            feed = self._step_frames(time_axes, frames)
            if feed is not None:                    # the common step: the plan of one frame, called directly
                step = self.step_plan
                if step is None:
                    step = self.step_plan = StepPlan(self.runner.plan(feed + list(static_arrays) + list(states)),
                                                     self.graph)
                return step.run(feed + [a if not a.flags.writeable else _frozen(a)
                                        for a in (*static_arrays, *states)])
        feed, n = [], None
        for name, (shape, _) in self.frame_shapes.items():
            value = frames[name]
            array = value if type(value) is np.ndarray else np.asarray(value)
            axis = time_axes[name]
            if not block:
                if array.shape != shape:
                    raise InputError(f"time input '{name}': a frame has shape {shape}, got {array.shape}")
                array = np.expand_dims(array, axis)
            else:
                if array.ndim != len(shape) + 1 or array.shape[:axis] + array.shape[axis + 1:] != shape:
                    raise InputError(f"time input '{name}': a block has shape {shape[:axis] + ('n',) + shape[axis:]},"
                                     f" got {array.shape}")
                if n is None:
                    n = array.shape[axis]
                elif array.shape[axis] != n:
                    raise InputError(f"time input '{name}' has {array.shape[axis]} frames, another {n}: give every "
                                     "time input the same number of frames")
            feed.append(array)
        if block and n == 0:
            raise InputError("a block needs at least one frame")
        arrays = feed + list(static_arrays) + list(states)
        # a list of one array would be read as that one input's data (by_name): the array itself then
        results = self.runner.run(arrays if len(arrays) > 1 else arrays[0])
        return self._results(results if isinstance(results, tuple) else (results,), block)

    def _step_frames(self, time_axes, frames):
        """The time inputs of one step as the plan takes them (C-contiguous, read-only, time axis of 1), when each
        is an array of its frame's exact shape and dtype; else None (the checks and conversions of TensorModel.run)."""
        feed = []
        for (name, (shape, dtype)), step_shape in zip(self.frame_shapes.items(), self.step_shapes):
            array = frames[name]
            if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape:
                return None
            if not array.flags.c_contiguous:            # the ops read C-contiguous inputs
                array = np.ascontiguousarray(array)
            array = array.reshape(step_shape)           # a view with the time axis of 1
            array.setflags(write=False)
            feed.append(array)
        return feed

    def _results(self, results, block: bool):
        graph = self.graph
        outputs = []
        for position, axis, copy in zip(graph.output_positions, graph.output_axes, graph.output_copies):
            value = results[position].copy() if copy else results[position]
            if axis is not None and not block:
                value = value.reshape(value.shape[:axis] + value.shape[axis + 1:])
            outputs.append(value)
        return outputs, [results[i] for i in graph.state_outputs]


class StepPlan:
    """The plan of one frame, run as a stream's step: the plan's steps, the states a node keeps in place (a Chain's,
    :mod:`grurt.ops.chain`) handed back as they are (not copied out, so that the next step copies nothing in), each
    output with its frame's shape (the step's time axis of 1 dropped), fixed at the first step."""

    __slots__ = ("slots", "input_slots", "program", "outputs", "states", "shapes")

    def __init__(self, plan, graph: StreamGraph):
        self.slots, self.input_slots = plan.slots, plan.input_slots
        self.program = tuple((_run_kept if getattr(ctx, "way", None) == "kept" else run, ctx, ins,
                              outs[0][1] if len(outs) == 1 and outs[0][0] == 0 else outs, frees, node)
                             for run, ctx, ins, outs, frees, node in plan.runs)
        kept = {slot for _, ctx, _, outs, _, _ in plan.runs if getattr(ctx, "way", None) == "kept"
                for k, slot in outs if k > 0}
        slots = plan.outputs
        self.outputs = [(slots[position], axis, copy) for position, axis, copy in
                        zip(graph.output_positions, graph.output_axes, graph.output_copies)]
        self.states = [(slots[position], slots[position] in kept) for position in graph.state_outputs]
        self.shapes = None

    def run(self, arrays):
        """(outputs, next states) of one step, for the plan's inputs ``arrays``."""
        slots = execute(self.program, self.slots, self.input_slots, arrays)
        shapes = self.shapes
        if shapes is None:
            shapes = self.shapes = [slots[slot].shape if axis is None else
                                    slots[slot].shape[:axis] + slots[slot].shape[axis + 1:]
                                    for slot, axis, _ in self.outputs]
        outputs = []
        for (slot, _, copy), shape in zip(self.outputs, shapes):
            value = slots[slot]
            if copy or value.base is not None or not value.flags.writeable:    # an array of its own, as Plan.run's
                value = value.copy()
            outputs.append(value.reshape(shape))
        return outputs, [slots[slot] if kept else _own(slots[slot]) for slot, kept in self.states]


def _own(value: np.ndarray) -> np.ndarray:
    """``value`` as an array of its own, as Plan.run hands out its outputs."""
    return value.copy() if value.base is not None or not value.flags.writeable else value


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view (no op writes into an input: TensorModel.run hands its inputs so)."""
    view = array.view()
    view.setflags(write=False)
    return view


def frame_signature(graph: TensorGraph, time_axes: Dict[str, int], batch: int, static_shapes) -> Dict[str, Tuple]:
    """{time input: (frame shape without time, dtype)}: fixed dims as declared, a dim parameter from a static
    input that names it (``static_shapes``: {name: (shape, dtype)}), else ``batch`` on axis 0."""
    sizes = {}
    for tensor in graph.inputs:
        if tensor.name in static_shapes:
            for dim, size in zip(tensor.dims, static_shapes[tensor.name][0]):
                if isinstance(dim, str):
                    sizes[dim] = size
    result = {}
    for tensor in graph.inputs:
        axis = time_axes.get(tensor.name)
        if axis is None:
            continue
        shape = []
        for i, dim in enumerate(tensor.dims):
            if i == axis:
                continue
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in sizes:
                shape.append(sizes[dim])
            elif i == 0:
                shape.append(batch)
            else:
                raise InputError(f"input '{tensor.name}' ({tensor.describe()}): the size of '{dim}' on axis {i} "
                                 "is not known (it is no static input's, and not the batch on axis 0)")
        dtype = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}[tensor.dtype]
        result[tensor.name] = (tuple(shape), np.dtype(dtype))
    return result


def static_checker(model, names):
    """A TensorModel of the static inputs ``names`` alone, whose ``_inputs`` checks them as run() does."""
    inputs = tuple(t for t in model.graph.inputs if t.name in names)
    return type(model)(TensorGraph(inputs, (), (inputs[0].name,), {}))


class TensorStream:
    """A general graph fed one frame (or a block of frames) at a time: see
    :meth:`grurt.TensorModel.stream` and docs/streaming-and-serving.md, "Streaming a general graph".
    """

    def __init__(self, model, batch: int = 1, time_axes=None, static=None):
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise InputError(f"batch must be a positive integer, got {batch!r}")
        self.model, self.batch = model, int(batch)
        graph = model.graph
        self.time_axes = checked_time_axes(graph, time_axes)
        self.frame_names = tuple(t.name for t in graph.inputs if t.name in self.time_axes)
        self.static_names = tuple(t.name for t in graph.inputs if t.name not in self.time_axes)
        self._compiled = {}            # static signature -> Compiled
        self._static_arrays = None
        self.reset(static)

    # ---- static inputs, states ----

    def reset(self, static=None):
        """Start a new stream: every state back to its start; ``static`` (required the first time
        for a model with static inputs) gives new values of the static inputs, and the tensors
        computed from them alone are computed again, once."""
        if static is not None or self._static_arrays is None:
            self._set_static(static)
        self._states = [self._stream.initial(i, self._static_values) for i in range(len(self.compiled.states))]

    def _set_static(self, static):
        names = self.static_names
        if not names:
            if static is not None:
                raise InputError("this stream has no static inputs, got static=")
            arrays = []
        else:
            if static is None:
                raise InputError(f"this stream's static inputs {list(names)} must be given: "
                                 "model.stream(static={name: value})")
            if not hasattr(self, "_static_checker"):
                self._static_checker = static_checker(self.model, names)
            arrays = self._static_checker._inputs(by_name(static, names, "static input"))
        sig = tuple((a.shape, a.dtype) for a in arrays)
        stream = self._compiled.get(sig)
        if stream is None:
            stream = self._compiled[sig] = Compiled(self.model, self.time_axes, self.batch,
                                                    {n: (a.shape, a.dtype) for n, a in zip(names, arrays)})
        self._stream, self.compiled, self._runner = stream, stream.graph, stream.runner
        self._static_values = stream.static_values(arrays)
        self._static_arrays = [self._static_values[n] for n in self.compiled.static_reads]
        self._static_frozen = [_frozen(a) for a in self._static_arrays]
        # the one time input's frame (shape, dtype, shape with the time axis of 1): step's fast path
        self._frame = ((*stream.frame_shapes[self.frame_names[0]], stream.step_shapes[0])
                       if len(self.frame_names) == 1 else None)

    @property
    def state_names(self) -> List[str]:
        """What each entry of :attr:`state` holds (the stateful nodes in the graph's order)."""
        return [s.describe() for s in self.compiled.states]

    @property
    def state(self) -> List[np.ndarray]:
        """The states, one array per stateful node in the graph's order (:attr:`state_names`): a
        GRU's h as its ``initial_h`` is laid out, a causal Conv's, pool's or Pad's last input frames
        (time axis of its length), a CumSum's running sum (time axis of length 1). Copies."""
        return [s.copy() for s in self._states]

    @state.setter
    def state(self, states):
        expected = self.compiled.states
        if not isinstance(states, (list, tuple)) or len(states) != len(expected):
            raise InputError(f"state must be a list of {len(expected)} arrays ({'; '.join(self.state_names)})")
        arrays = []
        for i, (value, spec) in enumerate(zip(states, expected)):
            array = np.asarray(value)
            if array.shape != spec.shape or array.dtype.kind != spec.dtype.kind:
                raise InputError(f"state[{i}] ({spec.describe()}) got {array.dtype} {array.shape}")
            arrays.append(np.array(array, spec.dtype))
        self._states = arrays

    # ---- frames ----

    def step(self, frames):
        """Advance by one frame of each time input (its time axis removed): one array, a list in
        :attr:`frame_names` order or a dict by name. Returns each output at this frame (an output
        without a time axis: its value after this frame); a tuple for several outputs."""
        one, plan = self._frame, self._stream.step_plan
        if (one is not None and plan is not None and type(frames) is np.ndarray and frames.shape == one[0]
                and frames.dtype == one[1] and frames.flags.c_contiguous):
            return self.step_frame(frames.reshape(one[2]))
        return self._advance(frames, block=False)

    def step_frame(self, frame):
        """:meth:`step` of the one time input's frame, C-contiguous, of its dtype and of its shape with the time
        axis of 1 (after a first step), unchecked: the common step. The states the stream holds are its own
        arrays, or what the last step left (no op writes into its inputs)."""
        outputs, self._states = self._stream.step_plan.run([frame, *self._static_frozen, *self._states])
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def run(self, block):
        """Advance by n frames of each time input (time axis of length n, the same n for all).
        Returns each output over these frames, as stepping them one by one would."""
        return self._advance(block, block=True)

    def _advance(self, frames, block):
        names = self.frame_names
        given = {names[0]: frames} if type(frames) is np.ndarray and len(names) == 1 else \
            by_name(frames, names, "time input")
        outputs, self._states = self._stream.advance(self.time_axes, given, self._static_arrays, self._states, block)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
