"""The ``grurt.Chain`` op (grurt.ops.chain): a chain of fused layers as one node of a tensor graph.

Oracles: ``grurt.Model`` of the same ModelSpec (the same kernels: ``np.array_equal``), grurt's float64
reference (``grurt.reference.run_tensor_graph``, ``ATOL``) and PyTorch (``ATOL``).
"""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt import spec
from grurt.errors import InputError, ModelFormatError, UnsupportedModelError
from grurt.reference import run_tensor_graph
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_model import TensorModel

from tolerances import ATOL

rng = np.random.default_rng(20)


def _f32(*shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def gru(I, H, direction="forward", lbr=False, return_sequences=True, learned=False):
    D = 2 if direction == "bidirectional" else 1
    return spec.GRU(_f32(D, 3 * H, I), _f32(D, 3 * H, H), _f32(D, 6 * H, scale=0.1), direction=direction,
                    linear_before_reset=lbr, return_sequences=return_sequences,
                    initial_state=_f32(D, H) if learned else None)


def dense(I, units, activation="linear"):
    return spec.Dense(_f32(units, I), _f32(units, scale=0.1), activation=spec.activation(activation))


def chain_graph(layers, ids=False, features=None, states=0, lengths=False, state_outputs=None, **attrs):
    """A TensorGraph of one Chain node: inputs x (and lengths, and ``states`` initial states), outputs y and the
    final states (``state_outputs`` of them; default: as many as GRU layers)."""
    grus = sum(isinstance(layer, spec.GRU) for layer in layers)
    state_outputs = grus if state_outputs is None else state_outputs
    inputs = [TensorInput("x", "int64", ("batch", "time")) if ids else
              TensorInput("x", "float32", ("batch", "time", features or _input_size(layers)))]
    names = ["x", "lengths" if lengths else ""]
    if lengths:
        inputs.append(TensorInput("lengths", "int64", ("batch",)))
    for k in range(states):
        layer = [layer for layer in layers if isinstance(layer, spec.GRU)][k]
        inputs.append(TensorInput(f"h{k}", "float32", (layer.num_directions, "batch", layer.hidden_size)))
        names.append(f"h{k}")
    outputs = ["y"] + [f"hn{k}" for k in range(state_outputs)]
    node = TensorNode("grurt.Chain", tuple(names), tuple(outputs), {"layers": tuple(layers), **attrs}, "chain")
    return TensorGraph(tuple(inputs), (node,), tuple(outputs))


def _input_size(layers):
    first = layers[0]
    return first.in_channels if isinstance(first, spec.Conv1D) else first.input_size


def test_one_chain_node_gives_the_models_bits_and_the_references_values():
    layers = (gru(5, 7), gru(7, 6, lbr=True), dense(6, 3, "tanh"))
    graph = chain_graph(layers)
    x = _f32(3, 9, 5, scale=1)
    y, h0, h1 = TensorModel(graph).run(x)
    model = grurt.Model.chain(layers)
    y_model, (m0, m1) = model.run(x, return_state=True)
    assert np.array_equal(y, y_model) and np.array_equal(h0, m0) and np.array_equal(h1, m1)
    for ours, ref in zip((y, h0, h1), run_tensor_graph(graph, x)):
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_initial_states_and_lengths_give_the_models_bits():
    layers = (gru(4, 5), gru(5, 6, direction="bidirectional"), dense(12, 2))
    graph = chain_graph(layers, states=2, lengths=True)
    x = _f32(3, 7, 4, scale=1)
    h = [_f32(1, 3, 5), _f32(2, 3, 6)]
    lengths = np.array([7, 3, 5])
    y, *hn = TensorModel(graph).run([x, lengths] + h)
    y_model, hm = grurt.Model.chain(layers).run(x, initial_state=h, return_state=True, lengths=lengths)
    assert np.array_equal(y, y_model) and all(np.array_equal(a, b) for a, b in zip(hn, hm))
    for ours, ref in zip([y] + hn, run_tensor_graph(graph, [x, lengths] + h)):
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_a_chain_the_modelspec_refuses_is_named():
    with pytest.raises(ModelFormatError, match="node 'chain'.*expects 6 input features"):
        chain_graph((gru(4, 5), dense(6, 2)))
    with pytest.raises(ModelFormatError, match="node 'chain'.*layers of grurt.Chain must be a tuple of 1 to 1024 grurt.spec layers"):
        TensorGraph((TensorInput("x", "float32", ("b", "t", 3)),),
                    (TensorNode("grurt.Chain", ("x",), ("y",), {"layers": ("GRU",)}, "chain"),), ("y",))
    with pytest.raises(ModelFormatError, match="node 'chain'.*takes 1 to 2 outputs, got 3"):
        chain_graph((gru(4, 5), dense(5, 2)), state_outputs=2)
