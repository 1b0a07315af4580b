"""The symbolic interpreter at the heart of the ONNX importer.

Exporters wrap a GRU in Transpose/Squeeze/Reshape/Slice/Gather/Concat chains, build the
zero state from ``Shape`` arithmetic and split states out of one input. Rather than match
patterns, the importer *interprets* the graph once for a small probe size of the dynamic
dimensions. Every tensor is either

* a numpy constant (initializers, shape arithmetic: folded as the graph runs), or
* a :class:`_Sym`: an integer array of **element ids** with the tensor's shape. Each id
  names one element of a canonical grurt tensor: the sequence input (B, T, I), a layer's
  output (B, T, F) or (B, F), a GRU's final state (D, B, H) or a state/lengths graph input.

Data-movement ops run on the id arrays with numpy itself, so any combination of them is
understood. Ops that compute (GRU, Gemm, MatMul, activations, per-feature Mul/Add) check
that their input is the current end of the layer chain (the *tip*), read the arrangement
of its rows and features from the ids and append a canonical layer. Feature permutations
and selections fold into the weights. Anything else raises an error that names it.

Dynamic graphs are interpreted at two different probe sizes and must give the same model:
a graph whose meaning depends on the size (a hard-coded time index, say) is refused.

This module holds the interpreter's core: the id arrays, the dispatch of nodes to handlers
(:mod:`.ops`, :mod:`.gru`), and the canonical layer chain the handlers append to.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ...errors import GrurtError, ModelFormatError, UnsupportedModelError
from ...limits import MAX_IDS, MAX_PARAMETERS
from ...spec import GRU, Dense, LastStep, ModelSpec, Reverse, Scale
from .proto import _DEFAULT_DOMAINS, _attributes, _live_nodes

_LOOP_HINT = {"Loop": " (tf2onnx writes Keras GRUs other than sigmoid/reset_after=True as a Loop)",
              "Scan": "", "If": ""}


class _Sym:
    """A tensor computed from the model's inputs: the ids of its elements, in its shape."""

    __slots__ = ("ids", "integer")

    def __init__(self, ids, integer=False):
        self.ids = ids
        self.integer = integer

    @property
    def shape(self):
        return self.ids.shape


class _Mismatch(Exception):
    """Two batch sizes that must agree differ; the driver unifies the dims and retries."""

    def __init__(self, expected, got, message):
        super().__init__(message)
        self.expected, self.got = expected, got


def _lookup(ids, canonical):
    """Flat position of each id within the array ``canonical``; -1 where it is not there."""
    lo = canonical.min()
    inverse = np.full(canonical.max() - lo + 2, -1, np.int64)   # the last slot answers "absent"
    inverse[canonical.ravel() - lo] = np.arange(canonical.size)
    relative = ids - lo
    relative[(relative < 0) | (relative >= inverse.size - 1)] = inverse.size - 1
    return inverse[relative]


def _positions(ids, canonical):
    """Flat positions of ``ids`` within ``canonical``, or None if any is not in it."""
    if ids.size == 0:
        return None
    positions = _lookup(ids, canonical)
    return None if (positions < 0).any() else positions


@dataclasses.dataclass
class _Import:
    spec: ModelSpec
    sequence_input: str
    batch_first: bool
    state_inputs: dict        # GRU layer index -> (input name, ids of its state (D, B, H) in that input)
    lengths_input: object     # name of the sequence_lens graph input, or None
    tip: np.ndarray           # ids of the model output, grurt layout
    states: list              # ids of each GRU layer's final state (D, B, H)
    inputs: dict              # graph input name -> ids
    outputs: dict             # graph output name -> ids
    lbr0_nodes: list          # names of GRU nodes with linear_before_reset=0

    def signature(self):
        return ([layer.describe() for layer in self.spec.layers], self.spec.input_size, self.sequence_input,
                self.batch_first, sorted((k, v[0]) for k, v in self.state_inputs.items()), self.lengths_input)


class _Interpreter:
    """Interprets a graph once at given sizes of its dynamic dims; subclasses add the op handlers.

    A handler is a method ``_op_<OpType>(where, inputs, attrs, n_out)`` returning the node's
    outputs; ``ATTRIBUTES`` maps each op type to the attributes its handler understands.
    """

    ATTRIBUTES = {}

    def __init__(self, source, sizes):
        self.model, self.folder, self.opset = source.model, source.folder, source.opset
        self.next_id = 0
        self.values = dict(source.constants)
        self.inputs = {}          # name -> (ids block, integer?)
        self.layers = []
        self.tip = None           # ids of the chain's current end: (B, T, F) or (B, F)
        self.has_time = True
        self.batch_first = None   # known once the first GRU reads the sequence
        self.sequence_input = None
        self.states, self.state_inputs, self.lengths, self.lbr0_nodes = [], {}, [], []
        for name, dtype, dims in source.inputs:
            shape = tuple(d if isinstance(d, int) else sizes[d] for d in dims)
            ids = self._new_ids(shape, f"graph input '{name}'")
            self.inputs[name] = (ids, dtype.kind != "f")
            self.values[name] = _Sym(ids, dtype.kind != "f")

    def _new_ids(self, shape, what="a tensor"):
        count = math.prod(shape)
        if self.next_id + count > MAX_IDS:
            raise ModelFormatError(f"{what} of shape {tuple(shape)} is too large for grurt to analyse "
                                   f"(limit {MAX_IDS} elements in all)")
        ids = np.arange(self.next_id, self.next_id + count, dtype=np.int64).reshape(shape)
        self.next_id += count
        return ids

    # -- driving --

    def run(self):
        graph = self.model.graph
        for node in _live_nodes(graph):
            where = f"node '{node.name or node.output[0]}' ({node.op_type})"
            if node.domain not in _DEFAULT_DOMAINS:
                raise UnsupportedModelError(f"{where}: operators of domain '{node.domain}' are not supported")
            handler = self._handler(node.op_type)
            if handler is None or node.op_type not in self.ATTRIBUTES:
                raise UnsupportedModelError(f"{where}: operator {node.op_type} is not supported"
                                            f"{_LOOP_HINT.get(node.op_type, '')}")
            inputs = []
            for name in node.input:
                if name and name not in self.values:
                    raise ModelFormatError(f"{where}: input '{name}' is not an initializer, a graph input "
                                           "or the output of an earlier node")
                inputs.append(self.values[name] if name else None)
            attrs = _attributes(node, self.ATTRIBUTES[node.op_type], self.folder, where)
            try:
                outputs = handler(where, inputs, attrs, len(node.output))
            except _Mismatch:
                raise
            except GrurtError as exc:     # errors from the spec's checks do not know the node
                if where in str(exc):
                    raise
                raise type(exc)(f"{where}: {exc}") from None
            except (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError) as exc:
                raise ModelFormatError(f"{where}: {exc}") from None
            for name, value in zip(node.output, outputs):
                if name:
                    if isinstance(value, np.ndarray) and value.size > MAX_PARAMETERS:
                        raise ModelFormatError(f"{where}: result of {value.size} elements is too large")
                    self.values[name] = value
        return self._finish()

    def _handler(self, op_type):
        """The method that interprets nodes of ``op_type``, or None."""
        return getattr(self, "_op_" + op_type, None)

    def _finish(self):
        if not self.states:
            raise UnsupportedModelError("the graph contains no GRU node that reaches an output")
        outputs = {}
        for info in self.model.graph.output:
            value = self.values[info.name]
            if not isinstance(value, _Sym):
                raise UnsupportedModelError(f"graph output '{info.name}' is a constant")
            outputs[info.name] = value.ids
        inside = {name: _positions(ids, self.tip) is not None for name, ids in outputs.items()}
        if not any(inside.values()) and self._open_gru():
            # no output reads the last GRU's sequence: the model's output is its final state
            if any(_positions(ids, self.states[-1]) is not None for ids in outputs.values()):
                self._close_gru()
                inside = {name: _positions(ids, self.tip) is not None for name, ids in outputs.items()}
        main = [name for name, flag in inside.items() if flag]
        if len(main) > 1:
            raise UnsupportedModelError(f"graph outputs {main} all carry the model's output; grurt returns "
                                        "one output (and the GRU states)")
        if main:
            outputs[main[0]] = self._output(main[0], outputs[main[0]])
        covered = np.zeros(self.tip.size, bool)
        for name, ids in outputs.items():
            in_tip = _lookup(ids.ravel(), self.tip)
            known = (in_tip >= 0) | np.any([_lookup(ids.ravel(), s) >= 0 for s in self.states], axis=0)
            if not known.all():
                raise UnsupportedModelError(
                    f"graph output '{name}' is neither the model's output nor GRU states (an intermediate "
                    "result, or a branch of the graph grurt cannot run)")
            covered[in_tip[in_tip >= 0]] = True
        if not covered.all():
            raise UnsupportedModelError("the model's output is not among the graph outputs")
        if self.lengths and (len(self.lengths) != len(self.states) or len(set(self.lengths)) != 1):
            raise UnsupportedModelError("sequence_lens must be one graph input given to every GRU node; "
                                        "grurt applies one lengths array to all layers")
        ids_block, takes_ids = self.inputs[self.sequence_input]     # an integer input is token ids (Embedding)
        spec = ModelSpec(input_size=None if takes_ids else ids_block.shape[-1], layers=tuple(self.layers))
        return _Import(spec, self.sequence_input, self.batch_first, self.state_inputs,
                       self.lengths[0] if self.lengths else None, self.tip, self.states,
                       {name: ids for name, (ids, _) in self.inputs.items()}, outputs, self.lbr0_nodes)

    def _output(self, name, ids):
        """The model's output: drop unread steps and features, so that it is exactly the graph output."""
        where = f"graph output '{name}'"
        positions = self._locate(where, ids)
        features = self.tip.shape[-1]
        lines = positions.reshape(-1, ids.shape[-1]) if ids.ndim else positions.reshape(1, 1)
        rows, line_features = np.divmod(lines, features)
        if (rows == rows[:, :1]).all() and (line_features == line_features[:1]).all():
            # the last axis holds the features: keep those it shows, in its order, with a selection matrix
            if not np.array_equal(line_features[0], np.arange(features)):
                ids = self._dense(where, _Sym(ids), np.eye(ids.shape[-1]), 0.0).ids
                positions = _positions(ids, self.tip)
        elif np.unique(line_features).size != features:   # features spread over axes, e.g. Y (T, D, B, H)
            raise UnsupportedModelError(f"{where}: holds some of the features, not on its last axis")
        if np.unique(positions).size != positions.size or positions.size != self.tip.size:
            raise UnsupportedModelError(f"{where}: repeats elements of the model's output")
        return ids

    # -- the layer chain --

    def _open_gru(self):
        return bool(self.layers) and isinstance(self.layers[-1], GRU) and self.layers[-1].return_sequences

    def _close_gru(self):
        """The last GRU's sequence is unused and its final state read on: return_sequences=False."""
        self.layers[-1] = dataclasses.replace(self.layers[-1], return_sequences=False)
        state = self.states[-1]
        self.tip = state.transpose(1, 0, 2).reshape(state.shape[1], -1)
        self.has_time = False

    def _start(self, where, ids):
        for name, (block, integer) in self.inputs.items():
            if not integer and block.size and block.min() <= ids.min() and ids.max() <= block.max():
                if block.ndim != 3:
                    raise UnsupportedModelError(f"{where}: graph input '{name}' has shape {block.shape}; grurt "
                                                "reads sequences (batch, time, features) or (time, batch, features)")
                self.sequence_input, self.tip = name, block
                return
        raise UnsupportedModelError(f"{where}: its input does not come from a graph input")

    def _locate(self, where, ids):
        """Positions of ``ids`` in the tip; inserts LastStep when only the last step is read."""
        if self.tip is None:
            self._start(where, ids)
        positions = _positions(ids, self.tip)
        if positions is None and self._open_gru() and _positions(ids, self.states[-1]) is not None:
            self._close_gru()
            positions = _positions(ids, self.tip)
        if positions is None:
            raise UnsupportedModelError(
                f"{where}: reads something other than the result of the previous layer; grurt runs a chain of "
                "layers (no branches, residual connections, or mixing with other inputs)")
        features = self.tip.shape[-1]
        rows = np.unique(positions // features)
        if rows.size == self.tip.size // features:
            return positions
        # only the time axis may be partly read, once known, and then only its last step
        if self.batch_first is not None and self.has_time:
            batch, steps = self.tip.shape[:2]
            if np.array_equal(rows, np.arange(batch) * steps + steps - 1):
                self._push(LastStep())
                return _positions(ids, self.tip)
        raise UnsupportedModelError(f"{where}: reads part of the batch or of the time steps; grurt "
                                    "supports the whole sequence or its last step")

    def _rows(self, where, ids):
        """(tip row of each line of ``ids`` along its last axis, the tip features along that axis)."""
        positions = self._locate(where, ids)
        if ids.ndim == 0:
            raise UnsupportedModelError(f"{where}: expects features on the last axis, got a scalar")
        lines = positions.reshape(-1, ids.shape[-1])
        rows, features = np.divmod(lines, self.tip.shape[-1])
        if not ((rows == rows[:, :1]).all() and (features == features[:1]).all()
                and np.unique(features[0]).size == features.shape[1] and np.unique(rows[:, 0]).size == rows.shape[0]):
            raise UnsupportedModelError(f"{where}: its last axis does not hold the features of one time step")
        return rows[:, 0], features[0]

    def _push(self, layer, features=None):
        """Append ``layer``; the tip becomes fresh ids for its output."""
        self.layers.append(layer)
        if isinstance(layer, LastStep):
            self.tip, self.has_time = self.tip[:, -1], False
        elif isinstance(layer, Reverse):
            self.tip = self.tip[:, ::-1]
        else:
            self.tip = self._new_ids(self.tip.shape[:-1] + (features or self.tip.shape[-1],))

    def _dense(self, where, value, W, b):
        """A Dense layer over the last axis of ``value``: y = value·Wᵀ + b with W (out, in)."""
        if W.ndim != 2 or W.shape[1] != value.shape[-1]:
            raise ModelFormatError(f"{where}: weight of shape {W.shape} does not fit input of shape {value.shape}")
        rows, features = self._rows(where, value.ids)
        full = np.zeros((W.shape[0], self.tip.shape[-1]), np.float64)
        full[:, features] = W
        self._push(Dense(W=full, b=np.broadcast_to(b, (W.shape[0],))), W.shape[0])
        lines = self.tip.reshape(-1, W.shape[0])[rows]
        return _Sym(lines.reshape(value.shape[:-1] + (W.shape[0],)))

    def _elementwise(self, where, value, *steps):
        """Elementwise layers, or (a, c) for the same x·a + c on every feature."""
        positions = self._locate(where, value.ids)
        for step in steps:
            if isinstance(step, tuple):
                self._affine(*(np.full(self.tip.shape[-1], k) for k in step))
            else:
                self._push(step)
        return _Sym(self.tip.reshape(-1)[positions])

    def _affine(self, a, c):
        """y = x·a + c per feature, folded into a preceding linear Dense or Scale when there is one."""
        a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
        if (a == 1).all() and (c == 0).all():
            return
        last = self.layers[-1] if self.layers else None
        if isinstance(last, Dense) and last.activation.kind == "linear":
            self.layers[-1] = Dense(W=last.W * a[:, None], b=last.b * a + c)
        elif isinstance(last, Scale):
            self.layers[-1] = Scale(a=last.a * a, c=last.c * a + c)
        else:
            self.layers.append(Scale(a=a, c=c))
        self.tip = self._new_ids(self.tip.shape)

    def _scale_op(self, where, value, a, c):
        """Elementwise x·a + c with constants broadcast over ``value``: must be per-feature."""
        ids = value.ids
        if np.broadcast_shapes(ids.shape, np.shape(a), np.shape(c)) != ids.shape:
            raise UnsupportedModelError(f"{where}: the constant broadcasts the model's data to a larger shape")
        positions = self._locate(where, ids).ravel()
        features = positions % self.tip.shape[-1]
        a_full, c_full = np.ones(self.tip.shape[-1]), np.zeros(self.tip.shape[-1])
        a_elem = np.broadcast_to(np.asarray(a, np.float64), ids.shape).ravel()
        c_elem = np.broadcast_to(np.asarray(c, np.float64), ids.shape).ravel()
        a_full[features], c_full[features] = a_elem, c_elem
        if not (np.array_equal(a_full[features], a_elem) and np.array_equal(c_full[features], c_elem)):
            raise UnsupportedModelError(f"{where}: the constant varies over time or batch, not only per feature")
        self._affine(a_full, c_full)
        return _Sym(self.tip.reshape(-1)[positions].reshape(ids.shape))

    # -- helpers for handlers --

    @staticmethod
    def _const(where, value, what):
        if value is None:
            return None
        if isinstance(value, _Sym):
            raise UnsupportedModelError(f"{where}: {what} must be a constant, but depends on the model's inputs")
        return value

    def _ints(self, where, value, what):
        value = self._const(where, value, what)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def _axes(self, where, attrs, inputs, index):
        """Axes from an attribute (older opsets) or an input (newer ones)."""
        if "axes" in attrs:
            return list(attrs["axes"])
        return self._ints(where, inputs[index] if len(inputs) > index else None, "axes")

    @staticmethod
    def _move(value, fn):
        """Apply a data-movement function to a constant or to the ids of a model tensor."""
        if isinstance(value, _Sym):
            return _Sym(fn(value.ids), value.integer)
        return fn(np.asarray(value))
