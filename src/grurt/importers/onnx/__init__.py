"""ONNX files → grurt: :func:`load_onnx`. The one place that knows ONNX's conventions. See docs/onnx.md.

The file is read once (:mod:`.proto`) and translated into a :class:`~grurt.tensor_graph.TensorGraph`
of the registry's ops (:mod:`.general`: each node of the file, older opsets' forms normalized).
The fusion pass (:func:`grurt.fusion.fuse`) then recognizes grurt's fused layers in that graph; a
file it does not entirely recognize runs as the TensorGraph itself
(:class:`~grurt.tensor_model.TensorModel`).

======================  ============================================================  ===========================
                        ONNX                                                          grurt (:mod:`grurt.spec`)
======================  ============================================================  ===========================
GRU gate order          z, r, h                                                       z, r, h
GRU weights             ``W`` (D, 3H, I), ``R`` (D, 3H, H), ``B`` (D, 6H) = [Wb, Rb]  the same arrays
reset position          ``linear_before_reset``, default 0                            ``linear_before_reset``
GRU activations         f, g per direction (default Sigmoid, Tanh), alpha/beta        the same; both directions
                        lists; ``clip`` clamps their inputs                           must agree
``HardSigmoid``         clip(α·x + β, 0, 1), α = 0.2, β = 0.5 by default              ``hard_sigmoid``
``LeakyRelu``, ``Elu``  α = 0.01, α = 1.0 by default                                  α
sequence layout         GRU ``layout`` 0: (T, B, I); 1: (B, T, I) (valid ONNX that    always (B, T, I)
                        onnxruntime refuses)
``Gemm``                α·A'·B' + β·C, ``transA``/``transB``                          ``Dense`` W = α·B'ᵀ
``MatMul``              x·W with W (in, out)                                          ``Dense`` W = Wᵀ
``Softmax``             opset ≥ 13: one ``axis`` (default −1); before: the axes       softmax over the features
                        from ``axis`` (default 1) on, flattened
``Clip``                ``min``/``max`` attributes (opset < 11), inputs after         relu / hard_sigmoid, Scale
``Slice``               ``starts``/``ends``/``axes`` attributes (opset < 10),         —
                        inputs after
``Div``                 integer division truncates                                    —
operator sets           default domain ("" or "ai.onnx"), opsets 7 to 22              —
======================  ============================================================  ===========================

A file that loads but probably does not mean what its author meant warns (:func:`_warn`):
a PyTorch export with ``linear_before_reset=0`` (torch.onnx.export(dynamo=True) with
onnxscript older than 0.7.1), and a graph that reads step T−1 of sequences given lengths.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ...errors import InputError, UnsupportedModelError
from ...fusion import fuse, fuse_regions
from ...model import Model
from ...spec import LastStep
from ...tensor_model import TensorModel
from .general import tensor_graph_from_source
from .proto import _open


def _import(path, budget=None):
    """(the parsed file, its TensorGraph, the fusion pass's result); UnsupportedModelError when it does not fuse."""
    source = _open(path)
    graph = tensor_graph_from_source(source)
    return source, graph, fuse(graph, budget)


def _read(path):
    """(the parsed file, its TensorGraph, the fusion pass's result or None when the pass refuses the graph)."""
    source = _open(path)
    graph = tensor_graph_from_source(source)
    try:
        return source, graph, fuse(graph)
    except UnsupportedModelError:          # beyond the fused layers: the file's ops as a general graph
        return source, graph, None


def _warn_lbr0(model, nodes):
    """PyTorch's GRU always resets after the recurrent product: a PyTorch file with linear_before_reset=0
    (in the GRU ``nodes``) comes from the dynamo exporter with onnxscript < 0.7.1 and is wrong."""
    if model.producer_name == "pytorch" and nodes:
        warnings.warn(
            f"this PyTorch export has linear_before_reset=0 in {', '.join(nodes)}, but every "
            "torch.nn.GRU needs linear_before_reset=1: torch.onnx.export(dynamo=True) with onnxscript older than "
            "0.7.1 drops it, and the file (in onnxruntime too) computes a different GRU than the torch model. "
            "Re-export with pip install 'onnxscript>=0.7.1', or use grurt.from_torch on the module.", stacklevel=4)


def _warn(model, result):
    """Files that load but probably do not mean what their author meant."""
    _warn_lbr0(model, result.lbr0_nodes)
    if result.lengths_input and any(isinstance(node.layer, LastStep) for node in result.graph.nodes):
        warnings.warn("the graph takes sequence_lens and selects the last time step: grurt's last step is each "
                      "sequence's last valid step, where the ONNX graph reads step T-1 (padding) of shorter "
                      "sequences", stacklevel=3)


def load_onnx(path):
    """Read an ONNX file holding GRU networks into a :class:`grurt.Model`. See docs/onnx.md.

    The model's inputs and outputs have the graph's names; sequences are batch first (B, T, I)
    whatever the graph's layout. A model that is one path (a chain) maps a state graph input
    to ``run(initial_state=...)`` and state graph outputs to ``return_state=True``; in a graph
    (branches, merges, several inputs or outputs) they are named inputs and outputs, states
    (directions, B, H). A ``sequence_lens`` input maps to ``run(lengths=...)``.

    A file that uses ops beyond the fused layers (docs/onnx.md, "Graphs beyond the fused
    layers") loads as a :class:`grurt.tensor_model.TensorModel` of the file's own ops, inputs
    and outputs as the file lays them out.
    """
    source, graph, result = _read(path)
    if result is None:
        return _tensor_model(source, graph)
    _warn(source.model, result)
    return Model(result.graph, file_states=_file_states(graph, result))


def session_model(path_or_bytes):
    """(model, fused, source) for :class:`grurt.InferenceSession`: the fused Model when its inputs and
    outputs are exactly the file's (names, order, layouts), else the file's ops as a general graph."""
    source, graph, result = _read(path_or_bytes)
    if result is not None and _same_io(graph, result):
        _warn(source.model, result)
        return Model(result.graph), True, source
    return _tensor_model(source, graph), False, source


def _tensor_model(source, graph):
    """A :class:`~grurt.tensor_model.TensorModel` of the file's TensorGraph, its regions that grurt's fused layers
    cover as ``grurt.Chain`` nodes (:func:`grurt.fusion.fuse_regions`), warning as the fused path does."""
    _warn_lbr0(source.model, [node.name for node in graph.nodes
                              if node.op == "GRU" and not node.attrs["linear_before_reset"]])
    return TensorModel(fuse_regions(graph)[0])


def _same_io(graph, result) -> bool:
    """Whether the fused model takes and gives the file's tensors as the file lays them out: no state
    moved to initial_state=, no time-major input, no lengths input, states (D, B, H), and every output
    the same elements in the same places (the interpreter's element ids say so)."""
    return (not result.state_inputs and not result.time_major and result.lengths_input is None
            and all(axis == 1 for axis in result.state_batch_axis.values())
            and result.graph.input_names == graph.input_names and result.graph.output_names == graph.output_names
            and all(np.array_equal(result.outputs[name], result.returned[name]) for name in graph.output_names))


@dataclasses.dataclass(frozen=True)
class FileStates:
    """How a one-path file's state inputs and outputs (torch's ``h0`` (L·D, B, H) in, ``h_n`` out) map
    onto its chain's GRU states, so that ``Model.run`` takes them by the file's names too:
    ``run({"x": x, "h0": h0})`` or ``run([x, h0])`` returns every output of the file, by its order.

    ``inputs``: the file's inputs in order, each (name, None for the sequence, or the (GRU index,
    direction) each row of the state gives). ``outputs``: likewise for the file's outputs. States
    are (rows, B, H) as in the file (``batch_axis`` 0 files are not mapped)."""

    inputs: tuple
    outputs: tuple

    def run(self, model, values, lengths, threads):
        from ...graph_model import by_name

        names = tuple(name for name, _ in self.inputs)
        values = by_name(values, names)
        initial = [None] * len(model.spec.gru_layers)
        for name, rows in self.inputs:
            if rows is None:
                continue
            state = np.asarray(values[name], np.float32)
            if state.ndim != 3 or state.shape[0] != len(rows):
                raise InputError(f"input '{name}' must be a state ({len(rows)}, B, H), got shape {state.shape}")
            for row, (gru, direction) in enumerate(rows):
                if initial[gru] is None:       # the directions not given start as the GRU does: zeros or learned
                    initial[gru] = model.spec.gru_layers[gru].default_state(state.shape[1])
                initial[gru][direction] = state[row]
        sequence = next(name for name, rows in self.inputs if rows is None)
        batch = np.shape(values[sequence])[0] if np.ndim(values[sequence]) == 3 else None
        for gru, state in enumerate(initial):
            if state is None:
                initial[gru] = model.spec.gru_layers[gru].default_state(batch or 1)
        out, states = model.run(values[sequence], initial_state=initial, return_state=True, lengths=lengths,
                                threads=threads)
        return tuple(out if rows is None else np.stack([states[gru][direction] for gru, direction in rows])
                     for _, rows in self.outputs)


def _file_states(graph, result):
    """The FileStates of a one-path file whose state inputs and outputs are rows of GRU states, else None."""
    if not result.chain or result.lengths_input or not (result.state_inputs or len(graph.outputs) > 1):
        return None
    if any(axis != 1 for axis in result.state_batch_axis.values()):
        return None
    pairs = [(gru, direction) for gru, ids in enumerate(result.states) for direction in range(ids.shape[0])]

    def rows(ids, candidates):
        """For each row of the file's (N, B, H) ids, the (GRU, direction) whose state it is; None if any is not one."""
        found = []
        for row in ids:
            match = [pair for pair, state in candidates if state.shape == row.shape and np.array_equal(state, row)]
            if not match:
                return None
            found.append(match[0])
        return tuple(found)

    inputs = []
    for name in graph.input_names:
        givers = [(gru, ids) for gru, (input_name, ids) in result.state_inputs.items() if input_name == name]
        if not givers:
            inputs.append((name, None))
            continue
        mapped = rows(result.inputs[name], [((gru, d), ids[d]) for gru, ids in givers for d in range(ids.shape[0])])
        if mapped is None:
            return None
        inputs.append((name, mapped))
    outputs = []
    (chain_output,) = result.returned
    for name in graph.outputs:
        if name == chain_output:
            outputs.append((name, None))
            continue
        mapped = rows(result.outputs[name], [((gru, d), result.states[gru][d]) for gru, d in pairs]) \
            if result.outputs[name].ndim == 3 else None
        if mapped is None:
            return None
        outputs.append((name, mapped))
    if sum(rows is None for _, rows in inputs) != 1:
        return None
    return FileStates(tuple(inputs), tuple(outputs))
