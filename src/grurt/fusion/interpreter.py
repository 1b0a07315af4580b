"""The symbolic interpreter at the heart of the fusion pass (:mod:`grurt.fusion`).

Exporters wrap a GRU in Transpose/Squeeze/Reshape/Slice/Gather/Concat chains, build the
zero state from ``Shape`` arithmetic and split states out of one input. Rather than match
patterns, the pass *interprets* the :class:`~grurt.tensor_graph.TensorGraph` once for a small
probe size of the dynamic dimensions. Every tensor of the graph is either

* a numpy constant (the graph's constants, shape arithmetic: folded as the graph runs), or
* a :class:`_Sym`: an integer array of **element ids** with the value's shape. Each id names
  one element of a canonical grurt tensor (:class:`_Tensor`): a graph input, or a node's
  output, held in grurt's layout (B, T, F) or (B, F) under a name of the graph being built.

Data-movement ops run on the id arrays with numpy itself, so any combination of them is
understood. Ops that compute (GRU, Gemm, MatMul, activations, merges, ...) find which canonical
tensors their operands' ids belong to (:meth:`_Interpreter._find`), read the arrangement of
rows and features from the ids and add a node to the graph: feature permutations and
selections fold into weights, or become ``Slice``/``Concat`` nodes where tensors meet; reading
only the last time step adds ``LastStep``, a time flip ``Reverse``. Anything else raises an
error that names the node.

The nodes are the registry's ops (:mod:`grurt.ops`) with their attributes checked and defaulted,
in the newest opset's form where the importer normalized an older one (a Softmax before opset
13 is a Flatten, a Softmax and a Reshape); an attribute that an older opset gave and a newer
one takes as an input (Slice's starts, Squeeze's axes, Clip's bounds, Pad's pads, ...) is read
from either, as the registry's ops read it.

A sequence input's time axis is known once a layer over time (GRU, Conv, pool) reads it; until
then it is taken as batch first. A layer that finds it time-major raises :class:`_Layout` and the
driver interprets again with that input transposed. Dynamic graphs are interpreted at two
probe sizes and must give the same model: a graph whose meaning depends on the size (a
hard-coded time index, say) is refused.

This module holds the core: ids, canonical tensors, the nodes, and the dispatch of the graph's
nodes to handlers (:mod:`.ops`, :mod:`.gru`, :mod:`.norm`, :mod:`.conv`); :mod:`.build`, above it,
turns the result into a :class:`grurt.graph.Graph`.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import GrurtError, ModelFormatError, UnsupportedModelError
from ..graph import Concat, Slice
from ..limits import MAX_IDS, MAX_PARAMETERS
from ..spec import Dense, LastStep, Reverse, Scale

#: What interpreting one node costs, counted in element ids against the graph's budget (MAX_IDS):
#: about its time, so that the budget bounds the work of a graph of many small nodes too.
NODE_IDS = 512


def unique(values) -> np.ndarray:
    """The sorted distinct values of an integer array: np.unique's result (numpy 2's np.unique hashes, ten times
    slower than a sort on the id arrays the interpreter reads)."""
    flat = np.sort(values, axis=None)
    return flat[np.concatenate(([True], flat[1:] != flat[:-1]))] if flat.size else flat


class Budget:
    """The element ids the interpreter may still hand out or move, over every interpretation of one
    graph (grurt.limits.MAX_IDS): what bounds its time and memory."""

    def __init__(self):
        self.ids_left = MAX_IDS


class _Sym:
    """A value computed from the model's inputs: the ids of its elements, in its shape."""

    __slots__ = ("ids", "integer")

    def __init__(self, ids, integer=False):
        self.ids = ids
        self.integer = integer

    @property
    def shape(self):
        return self.ids.shape


class _TooLarge(ModelFormatError):
    """The graph's budget of element ids (grurt.limits.MAX_IDS) is spent: refused whatever the probe sizes."""


class _Mismatch(Exception):
    """Two batch sizes that must agree differ; the driver unifies the dims and retries."""

    def __init__(self, expected, got, message):
        super().__init__(message)
        self.expected, self.got = expected, got


class _Layout(Exception):
    """Sequence inputs found time-major (T, B, ...): the driver interprets again with them transposed."""

    def __init__(self, inputs, message):
        super().__init__(message)
        self.inputs = frozenset(inputs)


@dataclasses.dataclass(eq=False)
class _Tensor:
    """A canonical tensor: ``ids`` in grurt's layout, (B, T, F) or (B, F) ((B, T) for token ids).
    ``origins``: the sequence inputs whose (B, T) grid it shares while their time axis is unconfirmed."""

    name: str
    ids: np.ndarray
    has_time: bool
    origins: frozenset
    inverse: np.ndarray = dataclasses.field(repr=False)    # position in ids.ravel() of id start + k

    @property
    def start(self):
        return int(self.ids.min())

    @property
    def features(self):
        return self.ids.shape[-1]

    def describe(self):
        axes = ("B", "T", str(self.features)) if self.has_time else ("B", str(self.features))
        return f"'{self.name}' ({', '.join(axes)})"


@dataclasses.dataclass(eq=False)
class _Node:
    layer: object
    inputs: list
    outputs: list


@dataclasses.dataclass(frozen=True, eq=False)
class _RawInput:
    """A graph input not yet read: its ids in the graph's shape and whether it holds integers."""

    name: str
    ids: np.ndarray
    integer: bool


class _Interpreter:
    """Interprets a TensorGraph once at given sizes of its dynamic dims; subclasses add the op handlers.

    A handler is a method ``_op_<Op>(where, inputs, attrs, n_out)`` returning the node's outputs;
    ``attrs`` are the node's, checked and with their defaults (:func:`grurt.ops.check_attributes`).
    """

    def __init__(self, graph, sizes, time_major=frozenset(), budget=None):
        self.graph = graph
        self.budget = Budget() if budget is None else budget
        self.folded = 0                           # elements of the constants folded so far (MAX_PARAMETERS)
        self.time_major = frozenset(time_major)   # sequence inputs known to be (T, B, ...)
        self.next_id = 0
        self.owners = []                          # id ranges: owner (_Tensor or _RawInput) and first id,
        self.starts = np.zeros(16, np.int64)      # in starts[:len(owners)] (grown by doubling: no copy per op)
        self.values = dict(graph.constants)
        self.raw = {}                             # graph input name -> _RawInput
        self.claimed = {}                         # graph input name -> (kind, _Tensor or None, directions)
        self.nodes, self.cache = [], {}
        self.names = set()
        self.confirmed = set()                    # sequence inputs whose time axis a layer over time read
        self.state_batch_axis = {}                # state input -> axis of its batch in the graph's shape
        self.grus, self.lengths, self.lbr0_nodes = [], [], []
        self.hint = "t"
        for tensor_input in graph.inputs:
            name = tensor_input.name
            shape = tuple(d if isinstance(d, int) else sizes[d] for d in tensor_input.dims)
            ids = self._new_ids(shape, f"graph input '{name}'")
            raw = _RawInput(name, ids, tensor_input.dtype != "float32")
            self._register(ids, raw)
            self.raw[name] = raw
            self.names.add(name)
            self.values[name] = _Sym(ids, raw.integer)

    # -- ids and tensors --

    def _new_ids(self, shape, what="a tensor"):
        count = math.prod(shape)
        self._charge(what, count, shape)
        ids = np.arange(self.next_id, self.next_id + count, dtype=np.int64).reshape(shape)
        self.next_id += count
        return ids

    def _charge(self, what, count, shape=None):
        """Take ``count`` element ids from the graph's budget (grurt.limits.MAX_IDS), before they are allocated."""
        self._room(what, count, shape)
        self.budget.ids_left -= count

    def _room(self, what, count, shape=None):
        """ModelFormatError unless ``count`` element ids fit what is left of the graph's budget."""
        if count > self.budget.ids_left:
            shape = f" of shape {tuple(shape)}" if shape is not None else ""
            raise _TooLarge(f"{what}{shape} is too large for grurt to analyse: the graph's nodes and values would take "
                            f"more than {MAX_IDS} element ids in all at the sizes it is interpreted with "
                            "(grurt.limits.MAX_IDS); give its batch and time axes dynamic sizes (dim_param)")

    def _check_constant(self, where, shape):
        """ModelFormatError unless a constant of ``shape`` fits MAX_PARAMETERS: checked before it is computed."""
        count = math.prod(shape)
        if count > MAX_PARAMETERS:
            raise ModelFormatError(f"{where}: its result of shape {tuple(shape)} is too large: {count} elements, "
                                   f"more than {MAX_PARAMETERS} (grurt.limits.MAX_PARAMETERS)")

    def _register(self, ids, owner):
        if ids.size:
            if len(self.owners) == self.starts.size:
                self.starts = np.concatenate([self.starts, np.zeros_like(self.starts)])
            self.starts[len(self.owners)] = ids.min()
            self.owners.append(owner)

    def _name(self, suffix=""):
        base = self.hint + suffix
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}:{k}"
        self.names.add(name)
        return name

    def _tensor(self, ids, has_time, origins=frozenset(), name=None, owner_of=None):
        """A canonical tensor over ``ids`` (fresh ones, or a graph input's claimed as they are)."""
        flat = ids.ravel()
        inverse = np.empty(flat.size, np.int64)
        inverse[flat - flat.min()] = np.arange(flat.size)
        tensor = _Tensor(name or self._name(), ids, has_time, frozenset(origins), inverse)
        if owner_of is None:
            self._register(ids, tensor)
        else:
            self.owners[owner_of] = tensor
        return tensor

    def _add(self, layer, inputs, shape, has_time, origins=frozenset(), suffix=""):
        """Append a node of ``layer`` over the tensors ``inputs``; returns its fresh output tensor."""
        out = self._tensor(self._new_ids(shape), has_time, origins, self._name(suffix))
        self.nodes.append(_Node(layer, [t.name for t in inputs], [out.name]))
        return out

    def _layer(self, layer, tensor, features=None):
        """A layer that keeps the (B, T) grid of ``tensor``, giving ``features`` (default: the same)."""
        shape = tensor.ids.shape[:-1] + (features or tensor.features,)
        return self._add(layer, [tensor], shape, tensor.has_time, tensor.origins)

    def _time_known(self, tensor):
        return tensor.has_time and not (tensor.origins - self.confirmed)

    def _owner_indices(self, ids):
        return np.searchsorted(self.starts[:len(self.owners)], ids, side="right") - 1

    # -- finding what a value reads --

    def _claim(self, where, raw, kind="data"):
        """A graph input read for the first time becomes a canonical tensor: a sequence (B, T, F), a
        vector (B, F), token ids (B, T) (``kind`` "ids") or a state (``kind`` "state", see .gru)."""
        index = self.owners.index(raw)
        ids = raw.ids
        if kind == "ids":
            if ids.ndim != 2:
                raise UnsupportedModelError(f"{where}: graph input '{raw.name}' has shape {ids.shape}; grurt "
                                            "reads token ids (batch, time) or (time, batch)")
            time_major = raw.name in self.time_major
            tensor = self._tensor(ids.T if time_major else ids, True, {raw.name}, raw.name, index)
            self.claimed[raw.name] = ("ids", tensor, 1)
            return tensor
        if raw.integer:
            raise UnsupportedModelError(f"{where}: reads the integer graph input '{raw.name}' as data; grurt "
                                        "reads integer inputs as token ids (Gather from a table) or sequence_lens")
        if ids.ndim == 3:
            time_major = raw.name in self.time_major
            tensor = self._tensor(ids.transpose(1, 0, 2) if time_major else ids, True, {raw.name}, raw.name, index)
            self.claimed[raw.name] = ("sequence", tensor, 1)
        elif ids.ndim == 2:
            tensor = self._tensor(ids, False, (), raw.name, index)
            self.claimed[raw.name] = ("vector", tensor, 1)
        else:
            raise UnsupportedModelError(f"{where}: graph input '{raw.name}' has shape {ids.shape}; grurt reads "
                                        "sequences (batch, time, features) or (time, batch, features), vectors "
                                        "(batch, features) and states (directions, batch, hidden)")
        return tensor

    def _owners(self, where, ids):
        """The canonical tensors holding ``ids`` (claiming graph inputs read for the first time), in the
        order they first appear, and the index of each element's tensor among them."""
        indices = self._owner_indices(ids.ravel())
        distinct, first, which = np.unique(indices, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        tensors = []
        for i in distinct[order]:
            owner = self.owners[i]
            tensors.append(self._claim(where, owner) if isinstance(owner, _RawInput) else owner)
        return tensors, rank[which]

    def _positions_in(self, ids, tensors, which):
        """Flat positions of ``ids`` in the tensors (each element in tensor ``which``)."""
        flat = ids.ravel()
        positions = np.empty(flat.size, np.int64)
        for k, tensor in enumerate(tensors):
            mask = which == k
            positions[mask] = tensor.inverse[flat[mask] - tensor.start]
        return positions

    def _find(self, where, ids):
        """(tensor, flat positions shaped as ``ids``): the one canonical tensor holding ``ids``. Ids from
        several tensors side by side make a ``Concat``; reading only the last step a ``LastStep``."""
        if ids.size == 0:
            raise UnsupportedModelError(f"{where}: reads an empty tensor")
        tensors, which = self._owners(where, ids)
        positions = self._positions_in(ids, tensors, which)
        if len(tensors) > 1:
            tensor = self._concat(where, tensors)
            offsets = np.cumsum([0] + [t.features for t in tensors])
            sizes = np.array([t.features for t in tensors])
            rows, features = np.divmod(positions, sizes[which])
            positions = rows * tensor.features + offsets[which] + features
        else:
            tensor = tensors[0]
        positions = positions.reshape(ids.shape)
        if tensor.ids.ndim == 2 and tensor.has_time:   # token ids: read only by an embedding
            raise UnsupportedModelError(f"{where}: reads the token ids of graph input '{tensor.name}' as data; "
                                        "grurt reads token ids only by a Gather from a table (an embedding)")
        features = tensor.features
        rows = unique(positions // features)
        if rows.size == tensor.ids.size // features:
            return tensor, positions
        # only the time axis may be partly read, once known, and then only its last step
        if self._time_known(tensor):
            batch, steps = tensor.ids.shape[:2]
            if np.array_equal(rows, np.arange(batch) * steps + steps - 1):
                last = self._cached(("last", tensor.name), lambda: self._add(
                    LastStep(), [tensor], (batch, features), False, suffix=":last"))
                b, f = np.divmod(positions, steps * features)
                return last, b * features + f % features
        raise UnsupportedModelError(f"{where}: reads part of the batch or of the time steps; grurt "
                                    "supports the whole sequence or its last step")

    def _cached(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def _concat(self, where, tensors):
        """The tensors side by side on the feature axis, as a Concat node."""
        grids = {(t.ids.shape[:-1], t.has_time) for t in tensors}
        if len(grids) != 1 or any(t.ids.ndim == 2 and t.has_time for t in tensors):
            raise UnsupportedModelError(f"{where}: joins tensors {', '.join(t.describe() for t in tensors)} "
                                        "other than side by side on the feature axis")
        first = tensors[0]
        features = sum(t.features for t in tensors)
        origins = frozenset().union(*(t.origins for t in tensors))
        return self._cached(("concat",) + tuple(t.name for t in tensors), lambda: self._add(
            Concat(), tensors, first.ids.shape[:-1] + (features,), first.has_time, origins, ":concat"))

    def _rows(self, where, ids):
        """(tensor, its row for each line of ``ids`` along the last axis, its features along that axis)."""
        ids = self._unflipped(where, ids)
        tensor, positions = self._find(where, ids)
        if ids.ndim == 0:
            raise UnsupportedModelError(f"{where}: expects features on the last axis, got a scalar")
        lines = positions.reshape(-1, ids.shape[-1])
        rows, features = np.divmod(lines, tensor.features)
        if not ((rows == rows[:, :1]).all() and (features == features[:1]).all()
                and unique(features[0]).size == features.shape[1] and unique(rows[:, 0]).size == rows.shape[0]):
            raise UnsupportedModelError(f"{where}: its last axis does not hold the features of one time step")
        return tensor, rows[:, 0], features[0]

    def _unflipped(self, where, ids):
        """``ids`` whose lines join sequences read in time order with others read reversed (a torch.flip of one
        branch): the reversed ones read through a ``Reverse`` of them, in time order."""
        if ids.ndim < 2:
            return ids
        tensors, which = self._owners(where, ids)
        if len(tensors) < 2 or not all(self._time_known(t) for t in tensors) \
                or len({t.ids.shape[:2] for t in tensors}) != 1:
            return ids
        positions = self._positions_in(ids, tensors, which)
        steps = tensors[0].ids.shape[1]
        time = (positions // np.array([t.features for t in tensors])[which] % steps).reshape(-1, ids.shape[-1])
        which = which.reshape(-1, ids.shape[-1])
        first = time[:, :1]
        flat = ids.reshape(-1, ids.shape[-1]).copy()
        for k, tensor in enumerate(tensors):
            mask = which == k
            line_first = np.broadcast_to(first, time.shape)[mask]
            if np.array_equal(time[mask], line_first) or not np.array_equal(time[mask], steps - 1 - line_first):
                continue
            b, t, f = np.unravel_index(tensor.inverse[flat[mask] - tensor.start], tensor.ids.shape)
            flat[mask] = self._reverse(tensor).ids[b, steps - 1 - t, f]
        return flat.reshape(ids.shape)

    def _aligned(self, where, value):
        """(tensor, row of each line): a canonical tensor whose features are exactly ``value``'s last axis,
        in its order: the tensor read, a ``Slice`` of it, or a selection ``Dense``."""
        tensor, rows, features = self._rows(where, value.ids)
        if np.array_equal(features, np.arange(tensor.features)):
            return tensor, rows
        begin, end = int(features[0]), int(features[0]) + features.size
        if np.array_equal(features, np.arange(begin, end)):
            part = self._cached(("slice", tensor.name, begin, end), lambda: self._add(
                Slice(begin, end), [tensor], tensor.ids.shape[:-1] + (end - begin,), tensor.has_time,
                tensor.origins, ":slice"))
            return part, rows
        select = np.zeros((features.size, tensor.features))
        select[np.arange(features.size), features] = 1.0
        return self._layer(Dense(W=select, b=np.zeros(features.size)), tensor, features.size), rows

    # -- driving --

    def run(self):
        """Interpret every node; returns the interpreter, which :func:`.build.build` reads. A GrurtError
        carries the node it refuses as ``node`` (the region pass, :mod:`.regions`, leaves that node out)."""
        for node in self.graph.nodes:
            try:
                self._node(node)
            except GrurtError as exc:
                exc.node = node
                raise
        return self

    def _node(self, node):
        where = node.where
        self._charge(where, NODE_IDS)
        handler = self._handler(node.op)
        if handler is None:
            raise UnsupportedModelError(f"{where}: operator {node.op} is not supported")
        inputs = [self.values[name] if name else None for name in node.inputs]
        self.hint = next((name for name in node.outputs if name), node.name or node.op)
        try:
            outputs = handler(where, inputs, node.attrs, len(node.outputs))
        except (_Mismatch, _Layout):
            raise
        except GrurtError as exc:     # errors from the spec's checks do not know the node
            if where in str(exc):
                raise
            raise type(exc)(f"{where}: {exc}") from None
        except (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError) as exc:
            raise ModelFormatError(f"{where}: {exc}") from None
        for name, value in zip(node.outputs, outputs):
            if name:
                if isinstance(value, _Sym):         # ids held by the values: from the graph's budget too
                    self._charge(where, value.ids.size)
                else:                               # constants folded: MAX_PARAMETERS elements in all
                    self.folded += np.size(value)
                    if self.folded > MAX_PARAMETERS:
                        raise ModelFormatError(f"{where}: the constants the graph computes hold more than "
                                               f"{MAX_PARAMETERS} elements in all (grurt.limits.MAX_PARAMETERS)")
                self.values[name] = value

    def _handler(self, op):
        """The method that interprets nodes of ``op``, or None."""
        return getattr(self, "_op_" + op, None)

    # -- layers for the handlers --

    def _dense(self, where, value, W, b):
        """A Dense layer over the last axis of ``value``: y = value·Wᵀ + b with W (out, in)."""
        if W.ndim != 2 or W.shape[1] != value.shape[-1]:
            raise ModelFormatError(f"{where}: weight of shape {W.shape} does not fit input of shape {value.shape}")
        tensor, rows, features = self._rows(where, value.ids)
        full = np.zeros((W.shape[0], tensor.features), np.float64)
        full[:, features] = W
        out = self._layer(Dense(W=full, b=np.broadcast_to(b, (W.shape[0],))), tensor, W.shape[0])
        lines = out.ids.reshape(-1, W.shape[0])[rows]
        return _Sym(lines.reshape(value.shape[:-1] + (W.shape[0],)))

    def _elementwise(self, where, value, *steps):
        """Elementwise layers, or (a, c) for the same x·a + c on every feature."""
        tensor, positions = self._find(where, value.ids)
        for step in steps:
            if isinstance(step, tuple):
                tensor = self._affine(tensor, *(np.full(tensor.features, k) for k in step))
            else:
                tensor = self._layer(step, tensor)
        return _Sym(tensor.ids.reshape(-1)[positions])

    def _affine(self, tensor, a, c):
        """y = x·a + c per feature (folded into the layer before it when the graph is built)."""
        a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
        if (a == 1).all() and (c == 0).all():
            return tensor
        return self._layer(Scale(a=a, c=c), tensor)

    def _scale_op(self, where, value, a, c):
        """Elementwise x·a + c with constants broadcast over ``value``: must be per-feature."""
        ids = value.ids
        if np.broadcast_shapes(ids.shape, np.shape(a), np.shape(c)) != ids.shape:
            raise UnsupportedModelError(f"{where}: the constant broadcasts the model's data to a larger shape")
        tensor, positions = self._find(where, ids)
        positions = positions.ravel()
        features = positions % tensor.features
        a_full, c_full = np.ones(tensor.features), np.zeros(tensor.features)
        a_elem = np.broadcast_to(np.asarray(a, np.float64), ids.shape).ravel()
        c_elem = np.broadcast_to(np.asarray(c, np.float64), ids.shape).ravel()
        a_full[features], c_full[features] = a_elem, c_elem
        if not (np.array_equal(a_full[features], a_elem) and np.array_equal(c_full[features], c_elem)):
            raise UnsupportedModelError(f"{where}: the constant varies over time or batch, not only per feature")
        out = self._affine(tensor, a_full, c_full)
        return _Sym(out.ids.reshape(-1)[positions].reshape(ids.shape))

    def _merge(self, where, layer, values):
        """A Combine or Concat-like node over model values of one shape, elementwise."""
        shapes = [tuple(v.shape) for v in values]
        if len(set(shapes)) != 1:
            try:
                np.broadcast_shapes(*shapes)
            except ValueError:
                raise ModelFormatError(f"{where}: combines tensors of incompatible shapes "
                                       f"{', '.join(map(str, shapes))}") from None
            raise UnsupportedModelError(f"{where}: combines tensors of shapes {', '.join(map(str, shapes))}; "
                                        "grurt combines tensors of one shape (no broadcasting)")
        if any(v.integer for v in values):
            raise UnsupportedModelError(f"{where}: combines integer tensors")
        aligned = [self._aligned(where, v) for v in values]
        first, rows = aligned[0]
        for k, (tensor, r) in enumerate(aligned):      # a branch read reversed in time (torch.flip)
            if self._time_known(tensor) and tensor.ids.shape[:2] == first.ids.shape[:2] and not np.array_equal(r, rows):
                batch, steps = tensor.ids.shape[:2]
                flipped = (r // steps) * steps + steps - 1 - r % steps
                if np.array_equal(flipped, rows):
                    aligned[k] = self._reverse(tensor), rows
        tensors = [t for t, _ in aligned]
        if any(t.has_time != first.has_time or t.ids.shape[:-1] != first.ids.shape[:-1]
               or not np.array_equal(r, rows) for t, r in aligned):
            raise UnsupportedModelError(f"{where}: combines tensors {', '.join(t.describe() for t in tensors)} "
                                        "whose batch and time steps do not correspond")
        origins = frozenset().union(*(t.origins for t in tensors))
        out = self._add(layer, tensors, first.ids.shape, first.has_time, origins)
        return _Sym(out.ids.reshape(-1, first.features)[rows].reshape(shapes[0]))

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

    def _attr_or_input(self, where, attrs, name, inputs, index):
        """Integers an older opset gave as the attribute ``name`` and a newer one as the constant input
        ``index`` (Slice's starts, Squeeze's axes, Pad's pads, ...): the attribute when the node has it."""
        if attrs[name] is not None:
            return list(attrs[name])
        return self._ints(where, inputs[index] if len(inputs) > index else None, name)

    @staticmethod
    def _move(value, fn):
        """Apply a data-movement function to a constant or to the ids of a model tensor."""
        if isinstance(value, _Sym):
            return _Sym(fn(value.ids), value.integer)
        return fn(np.asarray(value))

    def _reverse(self, tensor):
        return self._cached(("reverse", tensor.name), lambda: self._add(
            Reverse(), [tensor], tensor.ids.shape, True, tensor.origins, ":reversed"))

    def _time_order(self, where, tensor, rows, steps, batch, what):
        """Whether ``rows`` (steps·batch rows of ``tensor``, time major) read its sequence reversed in time;
        _Layout when the grid of an input not yet confirmed is (T, B); else an error naming ``what``."""
        grid = tensor.ids.shape[:2]
        a0, a1 = np.divmod(rows.reshape(steps, batch), grid[1])
        time, batch_index = np.indices((steps, batch))

        def order(axis):     # 1 in time order, -1 reversed, 0 neither
            return 1 if np.array_equal(axis, time) else -1 if np.array_equal(axis, steps - 1 - time) else 0

        if grid == (batch, steps) and np.array_equal(a0, batch_index) and order(a1):
            self.confirmed |= tensor.origins
            return order(a1) < 0
        if grid == (steps, batch) and np.array_equal(a1, batch_index) and order(a0) \
                and tensor.origins - self.confirmed:
            raise _Layout(tensor.origins - self.confirmed, f"{where}: {what} is time-major")
        raise UnsupportedModelError(f"{where}: {what} is not the previous layer's sequence in time order")
