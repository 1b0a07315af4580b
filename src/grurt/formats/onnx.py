"""ONNX graph → canonical :class:`~grurt.spec.ModelSpec`. See docs/onnx.md.

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
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings

import numpy as np

from ..errors import GrurtError, InputError, ModelFormatError, UnsupportedModelError
from ..spec import ACTIVATION_DEFAULTS, GRU, Activation, Dense, LastStep, ModelSpec, Reverse, Scale, activation

#: Largest tensor (elements) the importer allocates, and its budget of element ids.
_MAX_ELEMENTS = 1 << 28
_MAX_IDS = 1 << 26
_OPSETS = (7, 22)
_DEFAULT_DOMAINS = ("", "ai.onnx")

# ONNX RNN activation names (case-insensitive) -> grurt kinds
_RNN_ACTIVATIONS = {
    "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "affine": "affine", "leakyrelu": "leaky_relu",
    "thresholdedrelu": "thresholded_relu", "scaledtanh": "scaled_tanh", "hardsigmoid": "hard_sigmoid",
    "elu": "elu", "softsign": "softsign", "softplus": "softplus",
}
# elementwise activation ops -> (grurt kind, attributes carrying alpha and beta)
_ACTIVATION_OPS = {
    "Relu": ("relu", ()), "Sigmoid": ("sigmoid", ()), "Tanh": ("tanh", ()), "Softsign": ("softsign", ()),
    "Softplus": ("softplus", ()), "LeakyRelu": ("leaky_relu", ("alpha",)), "Elu": ("elu", ("alpha",)),
    "HardSigmoid": ("hard_sigmoid", ("alpha", "beta")), "ThresholdedRelu": ("thresholded_relu", ("alpha",)),
}
# attributes each op understands; any other attribute is refused by name and value
_ATTRIBUTES = {
    "GRU": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
            "layout", "linear_before_reset"},
    "Gemm": {"alpha", "beta", "transA", "transB"}, "MatMul": set(), "Add": set(), "Sub": set(),
    "Mul": set(), "Div": set(), "Neg": set(), "Sqrt": set(), "Reciprocal": set(), "Equal": set(),
    "Where": set(), "Softmax": {"axis"}, "Clip": {"min", "max"}, "Identity": set(),
    "Dropout": {"ratio", "seed"}, "Constant": {"value", "value_float", "value_floats",
                                                        "value_int", "value_ints"},
    "ConstantOfShape": {"value"}, "Shape": {"start", "end"}, "Size": set(), "Cast": {"to", "saturate"},
    "Transpose": {"perm"}, "Reshape": {"allowzero"}, "Flatten": {"axis"}, "Squeeze": {"axes"},
    "Unsqueeze": {"axes"}, "Gather": {"axis"}, "Slice": {"starts", "ends", "axes"}, "Concat": {"axis"},
    "Split": {"axis", "split", "num_outputs"}, "Expand": set(),
    **{op: set(attrs) for op, (_, attrs) in _ACTIVATION_OPS.items()},
}
_LOOP_HINT = {"Loop": " (tf2onnx writes Keras GRUs other than sigmoid/reset_after=True as a Loop)",
              "Scan": "", "If": ""}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX files needs the onnx package: pip install grurt[onnx]") from None
    return onnx


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


# ---- reading the file: everything in it is untrusted ----

def _read_model(path):
    onnx = _onnx()
    try:
        model = onnx.load_model(os.fspath(path), load_external_data=False)
    except OSError:
        raise
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ... on garbage
        raise ModelFormatError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    if model.ir_version < 1 or not model.HasField("graph"):
        raise ModelFormatError(f"{path}: not an ONNX model (no IR version or no graph)")
    return model


def _tensor_array(tensor, folder, where):
    """A TensorProto as a numpy array, with its size and any external file checked first."""
    from onnx import TensorProto, helper, numpy_helper

    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims) or math.prod(dims) > _MAX_ELEMENTS:
        raise ModelFormatError(f"{where}: tensor '{tensor.name}' declares shape {tuple(dims)}, "
                               f"more than the {_MAX_ELEMENTS} elements grurt accepts")
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


def _attributes(node, folder, where):
    from onnx import AttributeProto, helper

    allowed = _ATTRIBUTES[node.op_type]
    attrs = {}
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            value = _tensor_array(attr.t, folder, where)
        elif attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.SPARSE_TENSOR):
            value = "<subgraph or sparse tensor>"
        else:
            value = helper.get_attribute_value(attr)
        if attr.name not in allowed or attr.ref_attr_name:
            raise UnsupportedModelError(f"{where}: attribute {attr.name}={value!r} is not supported")
        if isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
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
    """A parsed file: read once, interpreted at several sizes."""
    model: object
    folder: str
    opset: int
    constants: dict     # initializer name -> array
    inputs: list        # (name, numpy dtype, dims) of each graph input

    @property
    def dynamic(self):
        return any(isinstance(d, str) for _, _, dims in self.inputs for d in dims)


def _open(path):
    model = _read_model(path)
    folder = os.path.dirname(os.path.abspath(path))
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


# ---- the interpreter ----

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
        if self.next_id + count > _MAX_IDS:
            raise ModelFormatError(f"{what} of shape {tuple(shape)} is too large for grurt to analyse "
                                   f"(limit {_MAX_IDS} elements in all)")
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
            handler = getattr(self, "_op_" + node.op_type, None)
            if node.op_type in _ACTIVATION_OPS:
                handler = functools.partial(self._op_activation, _ACTIVATION_OPS[node.op_type])
            if handler is None or node.op_type not in _ATTRIBUTES:
                raise UnsupportedModelError(f"{where}: operator {node.op_type} is not supported"
                                            f"{_LOOP_HINT.get(node.op_type, '')}")
            inputs = []
            for name in node.input:
                if name and name not in self.values:
                    raise ModelFormatError(f"{where}: input '{name}' is not an initializer, a graph input "
                                           "or the output of an earlier node")
                inputs.append(self.values[name] if name else None)
            attrs = _attributes(node, self.folder, where)
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
                    if isinstance(value, np.ndarray) and value.size > _MAX_ELEMENTS:
                        raise ModelFormatError(f"{where}: result of {value.size} elements is too large")
                    self.values[name] = value
        return self._finish()

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
        spec = ModelSpec(input_size=self.inputs[self.sequence_input][0].shape[-1], layers=tuple(self.layers))
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

    # -- operators: data movement and shape arithmetic (constants and ids alike) --

    def _op_Identity(self, where, inputs, attrs, n_out):
        return [inputs[0]]

    def _op_Dropout(self, where, inputs, attrs, n_out):
        training = self._const(where, inputs[2] if len(inputs) > 2 else None, "training_mode")
        if n_out > 1 or (training is not None and bool(np.asarray(training))):
            raise UnsupportedModelError(f"{where}: only inference dropout (no mask output, no training mode) "
                                        "is supported")
        return [inputs[0]]

    def _op_Constant(self, where, inputs, attrs, n_out):
        if len(attrs) != 1:
            raise ModelFormatError(f"{where}: needs exactly one value attribute, got {sorted(attrs)}")
        (name, value), = attrs.items()
        dtype = np.float32 if name.startswith("value_float") else np.int64
        return [value if name == "value" else np.array(value, dtype)]

    def _op_ConstantOfShape(self, where, inputs, attrs, n_out):
        shape = self._ints(where, inputs[0], "shape")
        if any(d < 0 for d in shape) or math.prod(shape) > _MAX_ELEMENTS:
            raise ModelFormatError(f"{where}: shape {shape} is negative or too large")
        fill = attrs.get("value", np.zeros(1, np.float32))
        return [np.full(shape, fill.reshape(-1)[0], fill.dtype)]

    def _op_Shape(self, where, inputs, attrs, n_out):
        shape = np.array(inputs[0].shape, np.int64)
        return [shape[slice(attrs.get("start", 0), attrs.get("end"))]]

    def _op_Size(self, where, inputs, attrs, n_out):
        return [np.array(math.prod(inputs[0].shape), np.int64)]

    def _op_Cast(self, where, inputs, attrs, n_out):
        from onnx import TensorProto, helper

        to = attrs.get("to")
        value = inputs[0]
        if isinstance(value, _Sym):
            integers, floats = (TensorProto.INT32, TensorProto.INT64), (TensorProto.FLOAT, TensorProto.DOUBLE)
            if to not in (integers if value.integer else floats):
                raise UnsupportedModelError(f"{where}: attribute to={to} would change the model's data type")
            return [value]
        return [np.asarray(value).astype(helper.tensor_dtype_to_np_dtype(to))]

    def _op_Transpose(self, where, inputs, attrs, n_out):
        perm = attrs.get("perm")
        return [self._move(inputs[0], lambda a: np.transpose(a, perm))]

    def _op_Reshape(self, where, inputs, attrs, n_out):
        target = self._ints(where, inputs[1], "shape")
        value = inputs[0]
        if not attrs.get("allowzero", 0):
            target = [value.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return [self._move(value, lambda a: a.reshape(target))]

    def _op_Flatten(self, where, inputs, attrs, n_out):
        shape = inputs[0].shape
        axis = attrs.get("axis", 1) % (len(shape) + 1) if shape else 0
        target = (math.prod(shape[:axis]), math.prod(shape[axis:]))
        return [self._move(inputs[0], lambda a: a.reshape(target))]

    def _op_Squeeze(self, where, inputs, attrs, n_out):
        axes = self._axes(where, attrs, inputs, 1)
        value = inputs[0]
        axes = tuple(i for i, d in enumerate(value.shape) if d == 1) if axes is None else tuple(axes)
        return [self._move(value, lambda a: np.squeeze(a, axes))]

    def _op_Unsqueeze(self, where, inputs, attrs, n_out):
        axes = self._axes(where, attrs, inputs, 1)
        return [self._move(inputs[0], lambda a: np.expand_dims(a, tuple(axes)))]

    def _op_Gather(self, where, inputs, attrs, n_out):
        indices = self._const(where, inputs[1], "indices")
        return [self._move(inputs[0], lambda a: np.take(a, np.asarray(indices, np.int64), axis=attrs.get("axis", 0)))]

    def _op_Slice(self, where, inputs, attrs, n_out):
        if self.opset < 10:
            starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None
        else:
            starts, ends, axes, steps = (self._ints(where, inputs[i] if len(inputs) > i else None, name)
                                         for i, name in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")))
        value = inputs[0]
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        index = [slice(None)] * len(value.shape)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step == 0:
                raise ModelFormatError(f"{where}: step 0")
            index[axis] = slice(start, end, step)
        return [self._move(value, lambda a: a[tuple(index)])]

    def _op_Concat(self, where, inputs, attrs, n_out):
        kinds = {isinstance(v, _Sym) for v in inputs}
        if kinds == {True, False}:
            raise UnsupportedModelError(f"{where}: joins the model's data with constants")
        if kinds == {True}:
            return [_Sym(np.concatenate([v.ids for v in inputs], axis=attrs["axis"]), inputs[0].integer)]
        return [np.concatenate([np.asarray(v) for v in inputs], axis=attrs["axis"])]

    def _op_Split(self, where, inputs, attrs, n_out):
        value, axis = inputs[0], attrs.get("axis", 0)
        sizes = attrs.get("split") or self._ints(where, inputs[1] if len(inputs) > 1 else None, "split")
        if sizes is None:
            length = value.shape[axis]
            chunk = -(-length // n_out)
            sizes = [min(chunk, length - i * chunk) for i in range(n_out)]
        bounds = np.cumsum(sizes)[:-1]
        return [self._move(value, lambda a, i=i: np.split(a, bounds, axis=axis)[i]) for i in range(len(sizes))]

    def _op_Expand(self, where, inputs, attrs, n_out):
        shape = np.broadcast_shapes(inputs[0].shape, tuple(self._ints(where, inputs[1], "shape")))
        if math.prod(shape) > _MAX_ELEMENTS:
            raise ModelFormatError(f"{where}: shape {shape} is too large")
        return [self._move(inputs[0], lambda a: np.broadcast_to(a, shape).copy())]

    # -- operators: arithmetic --

    def _fold(self, where, inputs, fn):
        return [fn(*(np.asarray(self._const(where, v, "the operand")) for v in inputs))]

    def _op_Add(self, where, inputs, attrs, n_out):
        return self._arithmetic(where, inputs, np.add, lambda k: (1, k), lambda k: (1, k))

    def _op_Sub(self, where, inputs, attrs, n_out):
        return self._arithmetic(where, inputs, np.subtract, lambda k: (1, -k), lambda k: (-1, k))

    def _op_Mul(self, where, inputs, attrs, n_out):
        return self._arithmetic(where, inputs, np.multiply, lambda k: (k, 0), lambda k: (k, 0))

    def _op_Div(self, where, inputs, attrs, n_out):
        def divide(x, y):  # ONNX integer division truncates
            return np.trunc(x / y).astype(x.dtype) if x.dtype.kind in "iu" else x / y
        return self._arithmetic(where, inputs, divide, lambda k: (1 / k, 0), None)

    def _arithmetic(self, where, inputs, fn, right, left):
        """Constants fold; model data (op) constant becomes a per-feature Scale: x·a + c = right(k)/left(k)."""
        x, y = inputs
        if isinstance(x, _Sym) and isinstance(y, _Sym):
            raise UnsupportedModelError(f"{where}: combines two model tensors (e.g. a residual connection)")
        if isinstance(x, _Sym) or (isinstance(y, _Sym) and left):
            data, k, make = (x, y, right) if isinstance(x, _Sym) else (y, x, left)
            return [self._scale_op(where, data, *make(np.asarray(k, np.float64)))]
        return self._fold(where, inputs, fn)

    def _op_Neg(self, where, inputs, attrs, n_out):
        if isinstance(inputs[0], _Sym):
            return [self._scale_op(where, inputs[0], -1.0, 0.0)]
        return self._fold(where, inputs, np.negative)

    def _op_Sqrt(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.sqrt)

    def _op_Reciprocal(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.reciprocal)

    def _op_Equal(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.equal)

    def _op_Where(self, where, inputs, attrs, n_out):
        return self._fold(where, inputs, np.where)

    # -- operators: layers --

    def _op_Gemm(self, where, inputs, attrs, n_out):
        A, B, C = (inputs + [None])[:3]
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        B = np.asarray(self._const(where, B, "B"))
        if attrs.get("transB", 0):
            B = B.T
        if not isinstance(A, _Sym):
            A = np.asarray(A)
            product = alpha * ((A.T if attrs.get("transA", 0) else A) @ B)
            return [product + beta * C if C is not None else product]
        if attrs.get("transA", 0):
            A = _Sym(A.ids.T)
        if A.ids.ndim != 2:
            raise ModelFormatError(f"{where}: A must be 2-D, got shape {A.shape}")
        bias = np.zeros(B.shape[-1])
        if C is not None:
            C = np.broadcast_to(np.asarray(self._const(where, C, "C"), np.float64), (A.shape[0], B.shape[-1]))
            if not (C == C[:1]).all():
                raise UnsupportedModelError(f"{where}: C varies over the batch, not only per output feature")
            bias = beta * C[0]
        return [self._dense(where, A, alpha * B.T, bias)]

    def _op_MatMul(self, where, inputs, attrs, n_out):
        x, W = inputs
        if not isinstance(x, _Sym):
            return self._fold(where, inputs, np.matmul)
        W = np.asarray(self._const(where, W, "the right operand"))
        if W.ndim != 2:
            raise UnsupportedModelError(f"{where}: the weight must be a 2-D matrix, got shape {W.shape}")
        return [self._dense(where, x, W.T, 0.0)]

    def _activation(self, where, inputs, kind, alpha=None, beta=None):
        value = inputs[0]
        if not isinstance(value, _Sym):
            raise UnsupportedModelError(f"{where}: activation of a constant")
        return [self._elementwise(where, value, Activation(activation(kind, alpha, beta)))]

    def _op_activation(self, kind_and_attrs, where, inputs, attrs, n_out):
        kind, names = kind_and_attrs
        return self._activation(where, inputs, kind, *(attrs.get(name) for name in names))

    def _op_Softmax(self, where, inputs, attrs, n_out):
        value = inputs[0]
        if not isinstance(value, _Sym):
            raise UnsupportedModelError(f"{where}: softmax of a constant")
        rank = len(value.shape)
        axis = attrs.get("axis", -1 if self.opset >= 13 else 1) % rank
        # before opset 13, softmax runs over all axes from `axis` on, flattened
        reduced = [axis] if self.opset >= 13 else list(range(axis, rank))
        kept = [i for i in range(rank) if i not in reduced]
        ids = value.ids.transpose(kept + reduced)
        _, features = self._rows(where, ids.reshape(ids.shape[:len(kept)] + (-1,)))
        if features.size != self.tip.shape[-1]:
            raise UnsupportedModelError(f"{where}: softmax over part of the features")
        return self._activation(where, inputs, "softmax")

    def _op_Clip(self, where, inputs, attrs, n_out):
        value = inputs[0]
        if self.opset < 11:
            low, high = attrs.get("min", -math.inf), attrs.get("max", math.inf)
        else:
            bounds = [self._const(where, v, "min/max") for v in (inputs + [None, None])[1:3]]
            low, high = (float(np.asarray(b).reshape(())) if b is not None else default
                         for b, default in zip(bounds, (-math.inf, math.inf)))
        if not low < high:
            raise UnsupportedModelError(f"{where}: min={low} is not below max={high}")
        if not isinstance(value, _Sym):
            return [np.clip(value, low, high)]
        # clip written with grurt's functions, exact up to float rounding; (a, c) is x·a + c
        relu = Activation(activation("relu"))
        if math.isinf(low) and math.isinf(high):
            steps = ()
        elif math.isinf(high):      # relu(x - low) + low
            steps = ((1.0, -low), relu, (1.0, low))
        elif math.isinf(low):       # high - relu(high - x)
            steps = ((-1.0, high), relu, (-1.0, high))
        else:                       # low + (high - low)·clip((x - low)/(high - low), 0, 1)
            span = high - low
            steps = (Activation(activation("hard_sigmoid", 1 / span, (0 - low) / span)), (span, low))
        return [self._elementwise(where, value, *steps)]

    # -- the GRU --

    def _op_GRU(self, where, inputs, attrs, n_out):
        X, W, R, B, lengths, initial_h = (inputs + [None] * 6)[:6]
        W = np.asarray(self._const(where, W, "W"), np.float64)
        R = np.asarray(self._const(where, R, "R"), np.float64)
        direction = attrs.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise UnsupportedModelError(f"{where}: attribute direction={direction!r} is not supported")
        D = 2 if direction == "bidirectional" else 1
        if R.ndim != 3 or W.ndim != 3:
            raise ModelFormatError(f"{where}: W and R must be 3-D, got shapes {W.shape} and {R.shape}")
        H = attrs.get("hidden_size", R.shape[-1])
        B = np.zeros((D, 6 * R.shape[-1])) if B is None else np.asarray(self._const(where, B, "B"), np.float64)
        for name, array, shape in (("W", W, (D, 3 * H, W.shape[-1])), ("R", R, (D, 3 * H, H)), ("B", B, (D, 6 * H))):
            if array.shape != shape:
                raise ModelFormatError(f"{where}: {name} has shape {array.shape}, but hidden_size={H} and "
                                       f"direction={direction} need {shape}")
        for name in ("layout", "linear_before_reset"):
            if attrs.get(name, 0) not in (0, 1):
                raise UnsupportedModelError(f"{where}: attribute {name}={attrs[name]} is not supported")
        layout, lbr = attrs.get("layout", 0), bool(attrs.get("linear_before_reset", 0))
        f, g = _gru_activations(where, attrs, D)
        if not isinstance(X, _Sym) or X.ids.ndim != 3:
            raise UnsupportedModelError(f"{where}: X must be the model's 3-D input sequence")
        x = X.ids if layout == 0 else X.ids.transpose(1, 0, 2)      # (T, B, I)
        rows, features = self._sequence_rows(where, x)
        if W.shape[-1] != features.size:
            raise ModelFormatError(f"{where}: X has {features.size} features, W expects {W.shape[-1]}")
        batch, steps = self.tip.shape[:2]
        self._gru_state(where, initial_h, layout, (D, batch, H))
        self._gru_lengths(where, lengths, batch, steps)
        W_full = np.zeros((D, 3 * H, self.tip.shape[-1]))
        W_full[:, :, features] = W
        self._push(GRU(W=W_full, R=R, B=B, direction=direction, linear_before_reset=lbr,
                       gate_activation=f, candidate_activation=g, clip=attrs.get("clip")), D * H)
        if not lbr:
            self.lbr0_nodes.append(where)
        state = self._new_ids((D, batch, H))
        self.states.append(state)
        y = self.tip.reshape(batch, steps, D, H)
        if layout == 0:
            return [_Sym(y.transpose(1, 2, 0, 3)), _Sym(state)]        # Y (T, D, B, H), Y_h (D, B, H)
        return [_Sym(y), _Sym(state.transpose(1, 0, 2))]                # Y (B, T, D, H), Y_h (B, D, H)

    def _sequence_rows(self, where, x):
        """Check that x (T, B, I) is the tip's sequence in time order (adding Reverse if it is reversed)."""
        rows, features = self._rows(where, x)
        steps, batch = x.shape[:2]
        if self.batch_first is None:    # the first GRU tells which input axis is time
            a0, a1 = np.divmod(rows.reshape(steps, batch), self.tip.shape[1])
            t, b = np.indices((steps, batch))

            def is_time(axis):   # in time order or reversed
                return np.array_equal(axis, t) or np.array_equal(axis, steps - 1 - t)

            if self.tip.shape[:2] == (batch, steps) and np.array_equal(a0, b) and is_time(a1):
                self.batch_first = True
            elif self.tip.shape[:2] == (steps, batch) and np.array_equal(a1, b) and is_time(a0):
                self.batch_first = False
                self.tip = self.tip.transpose(1, 0, 2)
                rows, features = self._rows(where, x)
            else:
                raise UnsupportedModelError(f"{where}: X is not the input sequence in time order")
        if not self.has_time:
            raise UnsupportedModelError(f"{where}: X has no time axis (an earlier layer removed it)")
        if self.tip.shape[:2] != (batch, steps):
            raise UnsupportedModelError(f"{where}: X is not the previous layer's sequence in time order")
        b, t = np.divmod(rows.reshape(steps, batch), steps)
        time, batch_index = np.indices((steps, batch))
        if not np.array_equal(b, batch_index):
            raise UnsupportedModelError(f"{where}: X mixes the batch and time axes")
        if not np.array_equal(t, time):
            if not np.array_equal(t, steps - 1 - time):
                raise UnsupportedModelError(f"{where}: X is not the previous layer's sequence in time order")
            self._push(Reverse())
            rows, features = self._rows(where, x)
        return rows, features

    def _gru_state(self, where, initial_h, layout, shape):
        if initial_h is None:
            return
        if not isinstance(initial_h, _Sym):
            if np.any(np.asarray(initial_h) != 0):
                raise UnsupportedModelError(f"{where}: initial_h is a nonzero constant; grurt takes the initial "
                                            "state at run time (make it a graph input)")
            return
        ids = initial_h.ids if layout == 0 else initial_h.ids.transpose(1, 0, 2)
        if ids.shape != shape:
            if ids.ndim == 3 and (ids.shape[0], ids.shape[2]) == (shape[0], shape[2]):
                raise _Mismatch(shape[1], ids.shape[1], f"{where}: initial_h has batch size {ids.shape[1]}, "
                                f"X has {shape[1]}")
            raise ModelFormatError(f"{where}: initial_h has shape {ids.shape}, expected {shape}")
        for name, (block, integer) in self.inputs.items():
            if name != self.sequence_input and not integer and _positions(ids, block) is not None:
                self.state_inputs[len(self.states)] = (name, ids)
                return
        raise UnsupportedModelError(f"{where}: initial_h must come from a graph input (or be zero); here it is "
                                    "computed in the graph (e.g. another GRU's final state)")

    def _gru_lengths(self, where, lengths, batch, steps):
        if lengths is None:
            return
        if not isinstance(lengths, _Sym):
            if np.any(np.asarray(lengths) != steps):
                raise UnsupportedModelError(f"{where}: sequence_lens is a constant other than the sequence length; "
                                            "pass lengths= to run() instead (make it a graph input)")
            return
        for name, (block, integer) in self.inputs.items():
            if integer and np.array_equal(lengths.ids, block):
                if block.ndim != 1:
                    raise ModelFormatError(f"{where}: sequence_lens must be 1-D, got shape {block.shape}")
                if block.shape[0] != batch:
                    raise _Mismatch(batch, block.shape[0],
                                    f"{where}: sequence_lens has {block.shape[0]} entries, X has batch size {batch}")
                self.lengths.append(name)
                return
        raise UnsupportedModelError(f"{where}: sequence_lens must be an integer graph input, used as it is")


def _gru_activations(where, attrs, directions):
    """(f, g) from activations/activation_alpha/activation_beta, read the way onnxruntime does:
    the alpha (beta) list is consumed in order by the functions that take an alpha (beta)."""
    names = list(attrs.get("activations", ["Sigmoid", "Tanh"] * directions))
    if len(names) != 2 * directions:
        raise ModelFormatError(f"{where}: activations={names} must name {2 * directions} functions "
                               "(f and g per direction)")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    functions = []
    for name in names:
        kind = _RNN_ACTIVATIONS.get(name.lower())
        if kind is None:
            raise UnsupportedModelError(f"{where}: activation {name!r} is not supported")
        takes_alpha, takes_beta = (default is not None for default in ACTIVATION_DEFAULTS[kind])
        alpha = alphas.pop(0) if takes_alpha and alphas else None
        beta = betas.pop(0) if takes_beta and betas else None
        functions.append(activation(kind, alpha, beta))
    if alphas or betas:
        raise ModelFormatError(f"{where}: activation_alpha/activation_beta hold more values than the activations "
                               f"{names} take")
    if functions[2:] and functions[2:] != functions[:2]:
        described = [fn.describe() for fn in functions]
        raise UnsupportedModelError(f"{where}: the two directions use different activations {described}; grurt "
                                    "uses the same f and g for both")
    return functions[0], functions[1]


# ---- driving: probe sizes, unifying dims ----

def _interpret(source, fixed=None, probe=0):
    """Interpret the graph with dims from ``fixed`` (param -> size) and probe sizes for the others.

    Dims that must agree (a state input's batch and the sequence's) are unified by retrying.
    """
    fixed = dict(fixed or {})
    params = []
    for _, _, dims in source.inputs:
        params += [d for d in dims if isinstance(d, str) and d not in params]
    links = {}
    while True:
        sizes = {}
        for index, param in enumerate(params):
            sizes[param] = fixed.get(param, (3, 5)[probe] + index)
        for param, target in links.items():
            sizes[param] = sizes[target] if isinstance(target, str) else target
        try:
            return _Interpreter(source, sizes).run()
        except _Mismatch as mismatch:
            got = [p for p in params if sizes[p] == mismatch.got and p not in links and p not in fixed]
            expected = [p for p in params if sizes[p] == mismatch.expected]
            if got:
                links.update({p: expected[0] if expected else mismatch.expected for p in got})
            elif expected and not set(expected) & set(fixed):
                links.update({p: mismatch.got for p in expected})
            else:   # the graph cannot run the batch size asked for, or contradicts itself
                raise (InputError if set(expected) & set(fixed) else ModelFormatError)(str(mismatch)) from None


def _import(path):
    source = _open(path)
    result = _interpret(source)
    if source.dynamic:
        try:
            other = _interpret(source, probe=1)
        except GrurtError as exc:
            raise UnsupportedModelError(f"the graph works only for some input sizes: {exc}") from None
        if other.signature() != result.signature():
            raise UnsupportedModelError("the graph means a different model for different input sizes "
                                        "(e.g. a hard-coded time index or batch size)")
    return source, result


def _warn(model, result):
    """Files that load but probably do not mean what their author meant."""
    # PyTorch's GRU always resets after the recurrent product: a PyTorch file with
    # linear_before_reset=0 comes from the dynamo exporter with onnxscript < 0.7.1 and is wrong
    if model.producer_name == "pytorch" and result.lbr0_nodes:
        warnings.warn(
            f"this PyTorch export has linear_before_reset=0 in {', '.join(result.lbr0_nodes)}, but every "
            "torch.nn.GRU needs linear_before_reset=1: torch.onnx.export(dynamo=True) with onnxscript older than "
            "0.7.1 drops it, and the file (in onnxruntime too) computes a different GRU than the torch model. "
            "Re-export with pip install 'onnxscript>=0.7.1', or use grurt.from_torch on the module.", stacklevel=3)
    if result.lengths_input and any(isinstance(layer, LastStep) for layer in result.spec.layers):
        warnings.warn("the graph takes sequence_lens and selects the last time step: grurt's last step is each "
                      "sequence's last valid step, where the ONNX graph reads step T-1 (padding) of shorter "
                      "sequences", stacklevel=3)


def load_onnx(path):
    """Read an ONNX file holding a GRU network into a :class:`grurt.Model`. See docs/onnx.md.

    The model takes batch-first input (B, T, I) whatever the graph's layout; a state graph
    input maps to ``run(initial_state=...)``, state graph outputs to ``return_state=True``
    and a ``sequence_lens`` input to ``run(lengths=...)``.
    """
    from ..model import Model

    source, result = _import(path)
    _warn(source.model, result)
    return Model(result.spec)


def framework_outputs(path, seq, initial_state=None, return_state=False, lengths=None):
    """Run the ONNX file with onnxruntime on batch-first ``seq`` and shape the result as grurt does.

    Takes the arguments of :meth:`grurt.Model.run`. States that are not graph outputs are None.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running ONNX files needs onnxruntime: pip install onnxruntime") from None
    source, probe = _import(path)
    x = np.asarray(seq, np.float32)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[2] != probe.spec.input_size:
        raise InputError(f"input must be (B, T, {probe.spec.input_size}) or (T, {probe.spec.input_size}), "
                         f"got shape {np.shape(seq)}")
    batch, steps = x.shape[:2]
    dims = {name: dims for name, _, dims in source.inputs}
    fixed = {}
    for dim, size in zip(dims[probe.sequence_input], (batch, steps) if probe.batch_first else (steps, batch)):
        if isinstance(dim, int) and dim != size:
            raise InputError(f"the ONNX graph's input '{probe.sequence_input}' has fixed shape "
                             f"{dims[probe.sequence_input]}; it cannot run a batch of {batch} × {steps} steps")
        fixed[dim] = size
    run = _interpret(source, fixed)      # the exact element mapping at this size
    feeds = {name: np.zeros(run.inputs[name].shape, dtype) for name, dtype, _ in source.inputs}
    feeds[run.sequence_input] = x if run.batch_first else x.transpose(1, 0, 2)
    for k, state in enumerate(initial_state or ()):
        if k in run.state_inputs:
            name, ids = run.state_inputs[k]
            feeds[name].reshape(-1)[ids.ravel() - run.inputs[name].min()] = np.asarray(state, np.float32).ravel()
        elif np.any(np.asarray(state) != 0):
            raise InputError(f"the ONNX graph takes no initial state for GRU layer {k}")
    if run.lengths_input:
        feeds[run.lengths_input][:] = steps if lengths is None else np.asarray(lengths).reshape(batch)
    elif lengths is not None and np.any(np.asarray(lengths) != steps):
        raise InputError("the ONNX graph takes no sequence_lens input")
    try:
        session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        results = dict(zip(run.outputs, session.run(list(run.outputs), feeds)))
    except Exception as exc:
        raise UnsupportedModelError(f"onnxruntime cannot run {path}: {exc}") from None
    canonicals = [run.tip] + run.states
    arrays = [np.zeros(c.size, np.float32) for c in canonicals]
    filled = [np.zeros(c.size, bool) for c in canonicals]
    for name, ids in run.outputs.items():      # scatter each output element to where grurt puts it
        values = results[name].ravel()
        for array, seen, canonical in zip(arrays, filled, canonicals):
            positions = _lookup(ids.ravel(), canonical)
            array[positions[positions >= 0]] = values[positions >= 0]
            seen[positions[positions >= 0]] = True
    spec = probe.spec
    out = arrays[0].reshape((batch, steps, spec.output_size) if spec.returns_sequence else (batch, spec.output_size))
    states = [a.reshape(c.shape) if seen.all() else None for a, seen, c in zip(arrays[1:], filled[1:], run.states)]
    if single:
        out = out[0]
        states = [s[:, 0] if s is not None else None for s in states]
    return (out, states) if return_state else out
