"""A grurt.graph.Graph lowered onto a TensorGraph (grurt.graph_lower): each chain a grurt.Chain node, the
nodes between them ONNX ops, masks as the Keras lowering makes them. Checked against the float64
reference of the Graph (grurt.reference.run, ATOL: the oracle), against the reference of the lowered TensorGraph
(grurt.reference.run_tensor_graph: the lowering alone, no kernels) and, bit for bit, against grurt.Model(graph),
which runs the same lowering through its own variants, input checks and signature cache (Model's wiring), for
every node kind, with lengths, states and masks. That the lowering gives the bits of the fused graph runner it
replaced was checked by replaying every graph-model call of the test suite on both builds
(bench/graph_calls_record.py, bench/graph_calls_replay.py; docs/architecture-tensor-graph.md)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import grurt
from grurt import reference
from grurt.graph import (Combine, Concat, Crop, Graph, Input, Masking, Node, Output, PReLU, Repeat, Slice, Unflatten,
                         path_graph)
from grurt.graph_lower import lower
from grurt.spec import GlobalPool, LastStep, activation

from gru_testing import random_gru
from test_graph import _PROFILE, as_tuple, assert_close, dense, random_graphs, random_initial_state, random_inputs
from tolerances import ATOL


def run_lowered(graph: Graph, values: list, lengths=None, initial_state=None, return_state=False, oracle=False):
    """The graph's outputs (and with ``return_state`` its GRU nodes' final states) computed by its lowered
    TensorGraph: on the planner (TensorModel) or, with ``oracle``, the float64 reference of each op. Batched
    inputs (B first; states (D, B, H)) in input order."""
    given_states = frozenset(p for p, s in enumerate(initial_state or ()) if s is not None)
    lowered = lower(graph, lengths=lengths is not None, states=given_states, return_state=return_state)
    feed = dict(zip(graph.input_names, values))
    if lengths is not None:
        feed[lowered.lengths] = np.asarray(lengths, np.int64)
    for p, name in lowered.states.items():
        feed[name] = initial_state[p]
    got = as_tuple(reference.run_tensor_graph(lowered.graph, feed) if oracle else
                   grurt.TensorModel(lowered.graph).run(feed))
    outputs = got[:len(graph.outputs)]
    outputs = outputs[0] if len(outputs) == 1 else tuple(outputs)
    return (outputs, list(got[len(graph.outputs):])) if return_state else outputs


def through_model(graph: Graph, values: list, **kwargs):
    return grurt.Model(graph).run(values[0] if len(values) == 1 else values, **kwargs)


def check(graph: Graph, values: list, lengths=None, initial_state=None, return_state=False, exact=True):
    """The lowered graph against the Graph's reference (ATOL) and grurt.Model(graph) (bit for bit, ``exact``)."""
    kwargs = dict(lengths=lengths, initial_state=initial_state, return_state=return_state)
    got = run_lowered(graph, values, **kwargs)
    want = reference.run(graph, values[0] if len(values) == 1 else values, **kwargs)
    of_ops = run_lowered(graph, values, oracle=True, **kwargs)
    model_got = through_model(graph, values, **kwargs)
    if return_state:
        (got, states), (want, want_states) = got, want
        (of_ops, ops_states), (model_got, model_states) = of_ops, model_got
        assert_close(tuple(states), tuple(want_states), "final states")
        assert max((np.max(np.abs(a - b)) for a, b in zip(ops_states, want_states)), default=0) <= ATOL
        if exact:
            for a, b in zip(states, model_states):
                assert np.array_equal(a, b)
    assert_close(got, want, "outputs")
    for a, b in zip(as_tuple(of_ops), as_tuple(want)):
        assert a.shape == b.shape and np.max(np.abs(a - b), initial=0) <= ATOL
    if exact:
        for a, b in zip(as_tuple(got), as_tuple(model_got)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b, equal_nan=True), f"max difference {np.max(np.abs(a - b))}"


@_PROFILE
@given(graph_and_seed=random_graphs(), batch=st.integers(1, 3), steps=st.integers(1, 6), with_lengths=st.booleans(),
       with_state=st.booleans(), return_state=st.booleans())
def test_random_graphs(graph_and_seed, batch, steps, with_lengths, with_state, return_state):
    """Chains, Combine of each op, Concat, Slice, GRUs with h0 and h_n tensors, state and vector inputs,
    outputs given as states."""
    graph, seed = graph_and_seed
    rng = np.random.default_rng(seed + 1)
    values = random_inputs(rng, graph, batch, steps, single=False)
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[rng.integers(batch)] = steps
    h0 = random_initial_state(rng, graph, batch, single=False) if with_state else None
    check(graph, values, lengths, h0, return_state)


def _x(rng, batch, steps, features):
    return rng.normal(size=(batch, steps, features)).astype(np.float32)


def test_prelu_per_feature_and_per_step():
    rng = np.random.default_rng(1)
    graph = Graph((Input("x", 3),),
                  (Node(PReLU(rng.uniform(-0.5, 0.5, 3)), "x", "a"),
                   Node(PReLU(rng.uniform(-0.5, 0.5, (4, 3))), "a", "b"),
                   Node(random_gru(rng, 3, 5), "b", "y")), ("y",))
    check(graph, [_x(rng, 2, 4, 3)])


def test_repeat_unflatten_crop():
    """A vector repeated over steps (a GRU autoencoder's decoder), a vector cut into steps, steps cropped."""
    rng = np.random.default_rng(2)
    graph = Graph((Input("x", 3), Input("v", 6, "vector")),
                  (Node(random_gru(rng, 3, 4, return_sequences=False), "x", "code"),
                   Node(Repeat(5), "code", "again"), Node(random_gru(rng, 4, 3, "reverse"), "again", "decoded"),
                   Node(Unflatten(3), "v", "cut"), Node(Crop(1, 2), "x", "cropped"),
                   Node(Concat(), ("cut", "cropped"), "both"), Node(random_gru(rng, 5, 2), "both", "z")),
                  ("decoded", "z"))
    check(graph, [_x(rng, 2, 6, 3), rng.normal(size=(2, 6)).astype(np.float32)])


def test_combine_of_three_and_outputs_as_states():
    rng = np.random.default_rng(3)
    for op in ("add", "mul", "max", "min", "mean"):
        graph = Graph((Input("x", 3), Input("h", 4, "state", directions=2)),
                      (Node(random_gru(rng, 3, 2, "bidirectional", return_sequences=False), ("x", "h"), ("a", "a_n")),
                       Node(dense(rng, 3, 4), "x", "b"), Node(LastStep(), "b", "c"),
                       Node(Combine(op), ("a", "c", "a_n"), "m"), Node(Slice(1, 4), "m", "s")),
                      (Output("m", directions=2), "s", Output("a_n", directions=2), "x"))
        check(graph, [_x(rng, 3, 5, 3), rng.normal(size=(2, 3, 2)).astype(np.float32) * 0.5], return_state=True)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("h0", ["none", "tensor", "given", "learned"])
def test_masked_gru(direction, return_sequences, h0):
    """A GRU reading a Masking's mask (interior, leading, trailing padding and a sequence with no valid step)
    and an average GlobalPool of the valid steps; the GRU's h0 none, from a tensor, given by the caller or
    learned."""
    rng = np.random.default_rng(4)
    d = 2 if direction == "bidirectional" else 1
    gru = random_gru(rng, 3, 4, direction, return_sequences=return_sequences)
    if h0 == "learned":
        gru = dataclasses.replace(gru, initial_state=rng.normal(size=(d, 4)).astype(np.float32) * 0.5)
    inputs = [Input("x", 3)] + ([Input("s", 4 * d, "vector")] if h0 == "tensor" else [])
    nodes = [Node(Masking(0.0), "x", ("m", "mask")),
             Node(gru, ("m", "s", "mask") if h0 == "tensor" else ("m", "mask"), ("y", "y_n")),
             Node(GlobalPool("average"), ("m", "mask"), "mean")]
    graph = Graph(tuple(inputs), tuple(nodes), ("y", "y_n", "mean"))
    x = _x(rng, 4, 6, 3)
    x[0, 2] = x[1, :2] = x[2, 4:] = x[3] = 0          # interior, leading, trailing, every step
    values = [x] + ([rng.normal(size=(4, 4 * d)).astype(np.float32) * 0.5] if h0 == "tensor" else [])
    states = [rng.normal(size=(d, 4, 4)).astype(np.float32) * 0.5] if h0 == "given" else None
    with np.errstate(invalid="ignore"):                # the mean of no valid step: 0/0, NaN, as Keras
        check(graph, [v[:3] for v in values], initial_state=None if states is None else [states[0][:, :3]],
              return_state=True)
        # the sequence without a valid step: NaN mean (the reference's NaN too), zeros and h0 from the GRU
        got = run_lowered(graph, values, initial_state=states, return_state=True)
        want = through_model(graph, values, initial_state=states, return_state=True)
    for a, b in zip(as_tuple(got[0]) + tuple(got[1]), as_tuple(want[0]) + tuple(want[1])):
        assert np.array_equal(a, b, equal_nan=True)
    empty_y, empty_h, empty_mean = (a[3] for a in got[0])
    h0_there = {"none": lambda: np.zeros(4 * d, np.float32), "tensor": lambda: values[-1][3],
                "learned": lambda: gru.initial_state.ravel(), "given": lambda: states[0][:, 3].ravel()}[h0]()
    assert not empty_y.any() and np.array_equal(empty_h, h0_there) and np.isnan(empty_mean).all()


def test_masked_token_ids():
    """A Masking of token ids (padding id 0): the ids go on unchanged to the Embedding, the mask to the GRU."""
    rng = np.random.default_rng(5)
    from grurt.spec import Embedding
    table = rng.normal(size=(7, 3)).astype(np.float32)
    graph = path_graph(None, (Embedding(table), random_gru(rng, 3, 4, return_sequences=False)), mask_value=0)
    ids = np.array([[3, 4, 0, 5, 6], [0, 0, 1, 2, 3], [1, 2, 3, 0, 0]], np.int64)
    check(graph, [ids])


def test_lengths_and_states_variants():
    """The variants a call builds: with lengths, with a state given for some GRU nodes, with the final states."""
    rng = np.random.default_rng(6)
    graph = Graph((Input("x", 3),),
                  (Node(random_gru(rng, 3, 4), "x", "a"), Node(random_gru(rng, 4, 2, "bidirectional"), "a", "b"),
                   Node(random_gru(rng, 4, 3, "reverse", return_sequences=False), "a", "c")),
                  ("b", "c"))
    x = _x(rng, 3, 5, 3)
    states = [None, rng.normal(size=(2, 3, 2)).astype(np.float32) * 0.5, None]
    for lengths in (None, np.array([5, 2, 4])):
        for initial_state in (None, states):
            check(graph, [x], lengths, initial_state, return_state=True)
    lowered = lower(graph, lengths=True, states=frozenset({1}), return_state=True)
    assert [node.op for node in lowered.graph.nodes].count("grurt.Chain") == 3
    assert lowered.lengths == "lengths" and set(lowered.states) == {1} and len(lowered.finals) == 3
    assert [i.dims for i in lowered.graph.inputs] == [("batch", "steps of x", 3), ("batch",), (2, "batch", 2)]


def test_one_chain_node_per_segment():
    """A segment's nodes are one grurt.Chain node holding their layers; a vector source runs as one step."""
    rng = np.random.default_rng(7)
    graph = Graph((Input("x", 3), Input("v", 2, "vector")),
                  (Node(dense(rng, 3, 4, "tanh"), "x", "a"), Node(random_gru(rng, 4, 4), "a", "b"),
                   Node(LastStep(), "b", "c"), Node(dense(rng, 2, 4), "v", "w"), Node(dense(rng, 4, 4), "w", "u"),
                   Node(Combine("sub"), ("c", "u"), "y")),
                  ("y",))
    lowered = lower(graph).graph
    chains = [node for node in lowered.nodes if node.op == "grurt.Chain"]
    assert sorted(len(node.attrs["layers"]) for node in chains) == [2, 3]
    assert sorted(node.op for node in lowered.nodes) == ["Squeeze", "Sub", "Unsqueeze", "grurt.Chain", "grurt.Chain"]
    check(graph, [_x(rng, 2, 4, 3), rng.normal(size=(2, 2)).astype(np.float32)])


def test_names_of_the_graph_are_kept_and_clashes_avoided():
    """A graph whose tensors are named like the lowering's own names (lengths, initial_state[0]) keeps them."""
    rng = np.random.default_rng(8)
    graph = Graph((Input("lengths", 3),),
                  (Node(random_gru(rng, 3, 4), "lengths", "initial_state[0]"),
                   Node(dense(rng, 4, 2), "initial_state[0]", "final_state[0]")),
                  ("final_state[0]", "initial_state[0]"))
    lowered = lower(graph, lengths=True, states=frozenset({0}), return_state=True)
    assert lowered.graph.input_names[0] == "lengths" and lowered.lengths != "lengths"
    assert lowered.graph.output_names[:2] == ("final_state[0]", "initial_state[0]")
    assert lowered.states[0] != "initial_state[0]" and lowered.finals[0] != "final_state[0]"
    check(graph, [_x(rng, 2, 3, 3)], np.array([3, 1]), [np.full((1, 2, 4), 0.5, np.float32)], return_state=True)


def test_bf16_weights():
    """A lowered graph in bf16 gives grurt.Model(graph, weights="bf16")'s bits, within bf16's budget of the reference."""
    rng = np.random.default_rng(9)
    graph = Graph((Input("x", 3),),
                  (Node(random_gru(rng, 3, 8), "x", "a"), Node(random_gru(rng, 3, 8, "reverse"), "x", "b"),
                   Node(Combine("add"), ("a", "b"), "y")), ("y",))
    x = _x(rng, 2, 5, 3)
    got = grurt.TensorModel(lower(graph).graph, weights="bf16").run({"x": x})
    assert np.array_equal(got, grurt.Model(graph, weights="bf16").run(x))
    assert np.max(np.abs(got - reference.run(graph, x))) < 5e-3        # bf16's budget (tests/test_lowp.py)


def test_a_masked_gru_with_other_activations():
    """The gate and candidate functions with their alpha and beta go into the MaskedGRU node's attributes."""
    rng = np.random.default_rng(10)
    gru = random_gru(rng, 3, 2, gate=activation("hard_sigmoid", 0.25, 0.5),
                     candidate=activation("scaled_tanh", 0.9, 1.1))
    x = _x(rng, 2, 4, 3)
    x[0, 1] = 0
    check(path_graph(3, (gru,), mask_value=0.0), [x])


@pytest.mark.parametrize("gate, candidate", [("sigmoid", "gelu"), ("silu", "mish"), ("hard_silu", "selu"),
                                             ("sigmoid", "clip")])
def test_a_masked_gru_with_a_function_the_onnx_gru_lacks(gate, candidate):
    """A MaskedGRU node (grurt's own op) names grurt's activation kinds too: a GELU, SiLU, Mish, SELU, hard SiLU or
    clip gate runs, checked against both float64 references."""
    rng = np.random.default_rng(11)
    fn = activation(candidate, -0.8, 0.9) if candidate == "clip" else activation(candidate)
    graph = path_graph(3, (random_gru(rng, 3, 2, gate=activation(gate), candidate=fn),), mask_value=0.0)
    x = _x(rng, 2, 5, 3)
    x[0, 1] = 0
    x[1, 3:] = 0
    check(graph, [x])


@_PROFILE
@given(graph_and_seed=random_graphs(streamable=True), batch=st.integers(1, 3))
def test_streams_of_random_graphs(graph_and_seed, batch):
    """The lowered graph streamed (TensorStream: the Chain nodes' GRU states carried frame to frame) gives
    grurt.Model(graph).stream()'s bits at every frame; a grurt.Chain ending in a LastStep or a GRU's last state too (each
    frame its own last step)."""
    graph, seed = graph_and_seed
    rng = np.random.default_rng(seed + 2)
    values = random_inputs(rng, graph, batch, 5, single=False)
    static = {i.name: v for i, v in zip(graph.inputs, values) if i.kind != "sequence"}
    frames = [(i.name, v) for i, v in zip(graph.inputs, values) if i.kind == "sequence"]
    lowered = grurt.TensorModel(lower(graph).graph).stream(batch, static=static or None)
    model_stream = grurt.Model(graph).stream(batch, static=static or None)
    for t in range(5):
        got = as_tuple(lowered.step({name: v[:, t] for name, v in frames}))
        want = as_tuple(model_stream.step({name: v[:, t] for name, v in frames}))
        for a, b in zip(got, want):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_sequences_joined_have_one_number_of_steps():
    """Inputs whose sequences a Combine or Concat joins share one time dim (no broadcasting of a 1-step
    sequence, which the fused runner refused); a PReLU with an alpha per step fixes that dim."""
    rng = np.random.default_rng(12)
    graph = Graph((Input("a", 3), Input("b", 3), Input("c", 2), Input("d", 3)),
                  (Node(random_gru(rng, 3, 3), "a", "g"), Node(Combine("add"), ("g", "b"), "s"),
                   Node(PReLU(np.full((4, 3), 0.5, np.float32)), "d", "p"), Node(Concat(), ("s", "p"), "y"),
                   Node(random_gru(rng, 2, 2, return_sequences=False), "c", "z")), ("y", "z"))
    lowered = grurt.TensorModel(lower(graph).graph)
    assert [i.dims[1] for i in lowered.graph.inputs] == [4, 4, "steps of c", 4]
    x = {name: rng.normal(size=(2, 4, 2 if name == "c" else 3)).astype(np.float32) for name in "abcd"}
    check(graph, [x[name] for name in "abcd"])
    x["c"] = x["c"][:, :2]
    check(graph, [x[name] for name in "abcd"])          # c joins nothing: its own number of steps
    x["b"] = x["b"][:, :1]
    with pytest.raises(grurt.InputError, match=r"input 'b' must have shape \(batch, 4, 3\), got \(2, 1, 3\)"):
        lowered.run(x)


def test_a_stream_keeps_its_chains_states_in_place():
    """A stream graph's Chain nodes keep their GRU states in their kernels' Stream between steps (nothing copied in
    or out on the plain path): what the stream hands out stays as it was, a state set, a block run, a reset or a
    state output read in between continues exactly as stepping frame by frame does; within ATOL of the reference."""
    rng = np.random.default_rng(7)
    graph = Graph((Input("x", 6),), (Node(dense(rng, 6, 8), "x", "a"), Node(random_gru(rng, 8, 8), "a", "g"),
                                     Node(Combine("add"), ("a", "g"), "r"), Node(dense(rng, 8, 3), "r", "y")), ("y",))
    x = rng.standard_normal((2, 12, 6)).astype(np.float32)
    want = reference.run(graph, x)
    lowered = grurt.TensorModel(lower(graph, return_state=True).graph)
    stream = lowered.stream(2)
    got, states = [], []
    for t in range(4):
        y, h = stream.step(x[:, t])
        got.append(y)
        states.append(h)
    saved, held = stream.state, states[-1].copy()
    got.append(stream.run(x[:, 4:7])[0].transpose(1, 0, 2))    # a block between steps
    for t in range(7, 9):
        got.append(stream.step(x[:, t])[0][None])
    assert np.array_equal(states[-1], held)             # a state output is the stream's to change: a copy
    stream.state = saved                                # back to frame 4
    again = [stream.step(x[:, t])[0] for t in range(4, 9)]
    steps = np.concatenate([np.stack(got[:4], 1), *[g.transpose(1, 0, 2) for g in got[4:]]], 1)
    assert np.array_equal(steps, np.stack([*got[:4], *again], 1))
    model_stream = grurt.Model(graph).stream(2)
    assert np.array_equal(np.stack([model_stream.step(x[:, t]) for t in range(9)], 1), steps)
    assert np.abs(steps - want[:, :9]).max() < ATOL
    stream.reset()
    assert np.array_equal(stream.step(x[:, 0])[0], got[0])


def test_a_chain_ending_in_its_last_step_streams_as_graph_stream_streams_it():
    """A grurt.Chain ending in a GRU's last state, or in a LastStep, streams: each frame its own last step (grurt.Model(graph).stream()'s
    bits, the reference's at the last frame), and a Chain on that value (a vector source) runs on it at each frame."""
    rng = np.random.default_rng(12)
    graph = Graph((Input("x", 4),), (
        Node(random_gru(rng, 4, 5, return_sequences=False), "x", "h"), Node(dense(rng, 5, 3), "h", "a"),
        Node(random_gru(rng, 4, 3), "x", "s"), Node(LastStep(), "s", "l"), Node(Combine("add"), ("a", "l"), "y"),
        Node(random_gru(rng, 4, 2), "x", "z")), ("y", "z"))
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    lowered = grurt.TensorModel(lower(graph).graph).stream(2)
    model_stream = grurt.Model(graph).stream(2)
    for t in range(6):
        got, want = lowered.step(x[:, t]), model_stream.step(x[:, t])
        for a, b in zip(got, want):
            assert a.shape == b.shape and np.array_equal(a, b)
    y, _ = reference.run(graph, x)
    assert np.abs(got[0] - y).max() < ATOL     # after the last frame: the whole sequence's


@pytest.mark.parametrize("return_sequences", [True, False])
def test_a_masked_gru_streams_every_frame_valid(return_sequences):
    """The stream variant of the lowering (``stream=True``) reads every frame as valid, as GraphStream streams a GRU
    reading a mask: the GRU alone as a grurt.Chain (the same bits), its state output and final state too."""
    rng = np.random.default_rng(13)
    graph = Graph((Input("x", 3),), (
        Node(Masking(0.0), "x", ("m", "mask")),
        Node(random_gru(rng, 3, 4, return_sequences=return_sequences), ("m", "mask"), ("g", "h")),
        Node(dense(rng, 4, 2), "g", "y"), Node(random_gru(rng, 3, 2), "x", "z")), ("y", "z", Output("h", 1)))
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    x[0, 2] = 0
    lowered = grurt.TensorModel(lower(graph, stream=True).graph).stream(2)
    model_stream = grurt.Model(graph).stream(2)
    for t in range(5):
        for a, b in zip(lowered.step(x[:, t]), model_stream.step(x[:, t])):
            assert a.shape == b.shape and np.array_equal(a, b)
