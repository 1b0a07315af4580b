"""Streaming a graph (issue 11): ``model.stream()`` on a graph gives a GraphStream whose ``step``
frame by frame gives what ``run`` gives on the whole sequence.

Tolerances: stepping vs a whole-sequence run is held to ``STEP_TOL`` (1e-6, as in
tests/test_stream.py: the same kernels, but the input projection is a matrix-vector product per
frame instead of one product over all frames, so the last bits differ); ``stream.run(block)``
vs the same frames stepped one by one, and a stream after ``reset`` vs a fresh one, are claims
of exactness (``np.array_equal``). The run itself is held to the reference in test_graph.py.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grurt
from grurt.errors import InputError
from grurt.graph import Combine, Concat, Graph, Input, Node, Output, Slice
from grurt.graph_stream import GraphStream
from grurt.spec import LastStep

from gru_testing import max_abs_diff, random_gru
from test_graph import as_tuple, dense, random_graphs, random_inputs

STEP_TOL = 1e-6


def stepped(model, stream, frames, steps: int, batched: bool = True):
    """``stream.step`` over ``steps`` frames; ``frames(t)`` gives what step t takes. Returns, per
    output, the step results stacked on a time axis after the batch axis (``batched``) or first,
    after the directions axis for an output given as a state."""
    results = [stream.step(frames(t)) for t in range(steps)]
    results = results if isinstance(results[0], tuple) else [(r,) for r in results]
    stacked = tuple(np.stack(parts, axis=int(batched) + (output.directions is not None))
                    for parts, output in zip(zip(*results), model.graph.outputs))
    return stacked if len(stacked) > 1 else stacked[0]


def residual_graph(rng):
    """x -> Dense -> a -> GRU -> GRU (with h_n) -> + a -> Dense; h_n is also an output (a state)."""
    return Graph((Input("x", 4),),
                 (Node(dense(rng, 4, 6), "x", "a"), Node(random_gru(rng, 6, 6, linear_before_reset=False), "a", "g1"),
                  Node(random_gru(rng, 6, 6), "g1", ("g2", "h_n")), Node(Combine("add"), ("g2", "a"), "y"),
                  Node(dense(rng, 6, 3), "y", "out")),
                 ("out", Output("h_n", directions=1)))


def two_sequence_graph(rng):
    """x1 -> GRU -> a; x2 -> Dense(tanh) -> b; out = Dense(Concat(a * b, x2)); also max(a, b)[1:3]."""
    return Graph((Input("x1", 3), Input("x2", 2)),
                 (Node(random_gru(rng, 3, 4), "x1", "a"), Node(dense(rng, 2, 4, "tanh"), "x2", "b"),
                  Node(Combine("mul"), ("a", "b"), "ab"), Node(Concat(), ("ab", "x2"), "cat"),
                  Node(dense(rng, 6, 2), "cat", "out"), Node(Combine("max"), ("a", "b"), "m"),
                  Node(Slice(1, 3), "m", "part")),
                 ("out", "part"))


@pytest.mark.parametrize("batch", [1, 3])
def test_residual_graph_step_equals_run(batch):
    rng = np.random.default_rng(batch)
    model = grurt.Model(residual_graph(rng))
    x = rng.normal(size=(batch, 12, 4)).astype(np.float32)
    (out, h_n), states = model.run(x, return_state=True)
    stream = model.stream(batch=batch)
    assert isinstance(stream, GraphStream)
    got_out, got_h = stepped(model, stream, lambda t: x[:, t], 12)
    assert got_out.shape == out.shape and got_h.shape == (1, batch, 12, 6)
    assert max_abs_diff(got_out, out) <= STEP_TOL
    assert max_abs_diff(got_h[:, :, -1], h_n) <= STEP_TOL       # h_n at the last frame: the run's h_n
    assert max_abs_diff(got_h[:, :, 5], model.run(x[:, :6])[1]) <= STEP_TOL
    assert len(stream.state) == 2
    for got, want in zip(stream.state, states):
        assert max_abs_diff(got, want) <= STEP_TOL
    # a block of frames is the same frames stepped, bit for bit; reset starts over
    stream.reset()
    assert all(not s.any() for s in stream.state)
    block_out, block_h = stream.run(x[:, :7])
    rest_out, rest_h = stream.run(x[:, 7:])
    assert np.array_equal(np.concatenate([block_out, rest_out], axis=1), got_out)
    assert np.array_equal(np.concatenate([block_h, rest_h], axis=2), got_h)
    if batch == 1:   # frames without the batch axis
        stream.reset()
        single_out, single_h = stepped(model, stream, lambda t: x[0, t], 12, batched=False)
        assert np.array_equal(single_out, got_out[0]) and single_h.shape == (1, 12, 6)
        stream.reset()
        whole_out, whole_h = stream.run(x[0])
        assert np.array_equal(whole_out, got_out[0]) and np.array_equal(whole_h, got_h[:, 0])


def test_state_setter_continues_a_run():
    rng = np.random.default_rng(4)
    model = grurt.Model(residual_graph(rng))
    x = rng.normal(size=(2, 10, 4)).astype(np.float32)
    _, states = model.run(x[:, :6], return_state=True)
    stream = model.stream(batch=2)
    stream.state = states
    got_out, _ = stream.run(x[:, 6:])
    want_out, _ = model.run(x[:, 6:], initial_state=states)
    assert max_abs_diff(got_out, want_out) <= STEP_TOL
    with pytest.raises(InputError, match="state must be a list of 2 arrays"):
        stream.state = states[:1]


def test_two_sequence_inputs():
    rng = np.random.default_rng(5)
    model = grurt.Model(two_sequence_graph(rng))
    x1 = rng.normal(size=(2, 9, 3)).astype(np.float32)
    x2 = rng.normal(size=(2, 9, 2)).astype(np.float32)
    out, part = model.run({"x2": x2, "x1": x1})
    stream = model.stream(batch=2)
    by_list = stepped(model, stream, lambda t: [x1[:, t], x2[:, t]], 9)
    stream.reset()
    by_dict = stepped(model, stream, lambda t: {"x2": x2[:, t], "x1": x1[:, t]}, 9)
    for got, want in zip(by_list, (out, part)):
        assert max_abs_diff(got, want) <= STEP_TOL
    assert all(np.array_equal(a, b) for a, b in zip(by_list, by_dict))
    stream.reset()
    block = stream.run([x1, x2])
    assert all(np.array_equal(a, b) for a, b in zip(block, by_list))
    # frames that do not fit
    stream.reset()
    with pytest.raises(InputError, match=re.escape("this model takes 2 sequence inputs ['x1', 'x2']: pass a list in that order")):
        stream.step(x1[:, 0])
    with pytest.raises(InputError, match=r"sequence input 'x2' is missing: this model's sequence inputs are \['x1', 'x2'\]"):
        stream.step({"x1": x1[:, 0]})
    with pytest.raises(InputError, match="input 'x2' has a batch of 1, the stream 2"):
        stream.step([x1[:, 0], x2[:1, 0]])
    with pytest.raises(InputError, match="input 'x2': every sequence input needs the same number of frames"):
        stream.run([x1, x2[:, :4]])
    with pytest.raises(InputError, match="input 'x1': this stream runs a batch of 2; give the batch axis"):
        stream.step([x1[0, 0], x2[0, 0]])


def static_graph(rng):
    """Static inputs: a vector s (-> h0 of a GRU over x, and u added to that GRU's last state) and a
    state h (the h0 of a second GRU); outputs: a vector per frame, u (static only) and the second
    GRU's output."""
    return Graph((Input("x", 3), Input("s", 2, "vector"), Input("h", 4, "state", directions=1)),
                 (Node(dense(rng, 2, 5, "tanh"), "s", "h0"),
                  Node(random_gru(rng, 3, 5, return_sequences=False), ("x", "h0"), "g"),
                  Node(dense(rng, 2, 5), "s", "u"), Node(Combine("add"), ("g", "u"), "v"),
                  Node(dense(rng, 5, 2), "v", "out"),
                  Node(random_gru(rng, 3, 4), ("x", "h"), "q")),
                 ("out", "u", "q"))


def test_static_inputs():
    rng = np.random.default_rng(6)
    model = grurt.Model(static_graph(rng))
    steps = 6
    x = rng.normal(size=(2, steps, 3)).astype(np.float32)
    s = rng.normal(size=(2, 2)).astype(np.float32)
    h = (0.5 * rng.normal(size=(1, 2, 4))).astype(np.float32)
    stream = model.stream(batch=2, static={"s": s, "h": h})
    out, u, q = stepped(model, stream, lambda t: x[:, t], steps)
    # a vector output at frame t is that of a run over the first t + 1 frames
    for t in range(steps):
        want_out, want_u, want_q = model.run([x[:, :t + 1], s, h])
        assert max_abs_diff(out[:, t], want_out) <= STEP_TOL
        assert np.array_equal(u[:, t], want_u)                   # static only: computed once, the same numbers
    assert max_abs_diff(q, want_q) <= STEP_TOL
    # reset keeps the static inputs unless new ones are given; a list in input order also does
    stream.reset()
    assert all(np.array_equal(a, b) for a, b in zip(stream.run(x), (out, u, q)))
    s2 = rng.normal(size=(2, 2)).astype(np.float32)
    stream.reset(static=[s2, h])
    again = stream.run(x)
    want = model.run({"x": x, "s": s2, "h": h})
    assert max_abs_diff(again[0][:, -1], want[0]) <= STEP_TOL and not np.array_equal(again[0], out)
    with pytest.raises(InputError, match=re.escape("this model's static inputs ['s', 'h'] must be given")):
        model.stream(batch=2)
    with pytest.raises(InputError, match=r"unknown static input 'x': this model's static inputs are"):
        model.stream(batch=2, static={"s": s, "h": h, "x": x})
    with pytest.raises(InputError, match="input 's' has a batch of 2, the stream 3"):
        model.stream(batch=3, static={"s": s, "h": np.zeros((1, 3, 4), np.float32)})


def test_one_static_value_and_no_static():
    rng = np.random.default_rng(7)
    graph = Graph((Input("x", 3), Input("s", 4, "vector")),
                  (Node(random_gru(rng, 3, 4), ("x", "s"), "y"),), ("y",))
    model = grurt.Model(graph)
    x = rng.normal(size=(1, 5, 3)).astype(np.float32)
    s = rng.normal(size=(1, 4)).astype(np.float32)
    got = model.stream(static=s).run(x)
    assert max_abs_diff(got, model.run([x, s])) <= STEP_TOL
    with pytest.raises(InputError, match="this model has no static inputs, got static="):
        grurt.Model(residual_graph(rng)).stream(static=s)


def test_graphs_that_cannot_stream():
    rng = np.random.default_rng(8)
    reverse = Graph((Input("x", 3),),
                    (Node(random_gru(rng, 3, 4), "x", "a"), Node(random_gru(rng, 4, 4, "reverse"), "a", "b"),
                     Node(Combine("add"), ("a", "b"), "y")), ("y",))
    with pytest.raises(InputError, match="is a reverse GRU, which needs the whole sequence"):
        grurt.Model(reverse).stream()
    from_sequence = Graph((Input("x", 3),),
                          (Node(random_gru(rng, 3, 4, return_sequences=False), "x", "last"),
                           Node(random_gru(rng, 3, 4), ("x", "last"), "y")), ("y",))
    with pytest.raises(InputError, match="a GRU takes its initial state from 'last', which is computed from a whole"):
        grurt.Model(from_sequence).stream()
    from_last_step = Graph((Input("x", 3),),
                           (Node(dense(rng, 3, 4), "x", "a"), Node(LastStep(), "a", "l"),
                            Node(random_gru(rng, 3, 4), ("x", "l"), "y")), ("y",))
    with pytest.raises(InputError, match="a GRU takes its initial state from 'l'"):
        grurt.Model(from_last_step).stream()
    no_sequence = Graph((Input("v", 3, "vector"), Input("w", 3, "vector")),
                        (Node(Combine("sub"), ("v", "w"), "y"),), ("y",))
    with pytest.raises(InputError, match="this model has no sequence input: there is nothing to stream"):
        grurt.Model(no_sequence).stream()
    with pytest.raises(InputError, match="stream_pool runs models that are one chain of layers"):
        grurt.Model(residual_graph(rng)).stream_pool(4)
    with pytest.raises(InputError, match="batch must be a positive integer"):
        grurt.Model(residual_graph(rng)).stream(batch=0)


@settings(derandomize=True, deadline=None, database=None, print_blob=True, max_examples=40,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graph_and_seed=random_graphs(streamable=True), batch=st.integers(1, 2), steps=st.integers(1, 5))
def test_random_streamable_graphs(graph_and_seed, batch, steps):
    """Random graphs of forward GRUs (h0 only from static inputs): frame t of a stream gives what a
    run over frames 0..t gives at its last frame (a vector output: the run's vector)."""
    graph, seed = graph_and_seed
    rng = np.random.default_rng(seed + 2)
    model = grurt.Model(graph)
    values = dict(zip(graph.input_names, random_inputs(rng, graph, batch, steps, single=False)))
    frames = {i.name: values[i.name] for i in graph.inputs if i.kind == "sequence"}
    static = {i.name: values[i.name] for i in graph.inputs if i.kind != "sequence"} or None
    stream = model.stream(batch=batch, static=static)
    block = as_tuple(stream.run(frames))          # frames by name, also when the graph is one path (a chain)
    stream.reset()
    each = as_tuple(stepped(model, stream, lambda t: {n: v[:, t] for n, v in frames.items()}, steps))
    assert all(np.array_equal(a, b) for a, b in zip(block, each))
    for t in range(steps):
        prefix = {n: v[:, :t + 1] if n in frames else v for n, v in values.items()}
        for got, want, output in zip(each, as_tuple(model.run(prefix)), graph.outputs):
            if output.directions is not None:
                got, want = got[:, :, t], want
            else:
                got, want = got[:, t], want[:, -1] if graph.tensors[output.name].has_time else want
            assert max_abs_diff(got, want) <= STEP_TOL, (t, output)
