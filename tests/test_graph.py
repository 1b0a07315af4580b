"""Graphs (issue 11): ``grurt.Model(graph)`` against the float64 reference on random DAGs and on
hand-written graphs; the chain path; pickling and bf16 weights; bad graphs and bad calls.

Tolerances (tests/tolerances.py): every float32 output and state is held to ``ATOL`` (1e-5, max
abs difference) against ``grurt.reference.run``, which executes a graph node by node in float64
without the planner (``reference.run_graph``: no segments, no sub-Models). Claims of exactness
(list vs dict inputs, a single sequence vs a batch of one, pickling, a one-path graph vs its
ModelSpec) are asserted with ``np.array_equal``. bf16 weights are held to the bf16 budget of
tests/test_lowp.py (5e-3).
"""
from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grurt
from grurt import reference
from grurt.errors import InputError, ModelFormatError, UnsupportedModelError
from grurt.graph import Combine, Concat, Graph, Input, Node, Output, Slice
from grurt.spec import Activation, Dense, Embedding, LastStep, ModelSpec, activation

from gru_testing import DIRECTIONS, MAX_REFERENCE_MAGNITUDE, max_abs_diff, random_gru
from tolerances import ATOL

#: max abs error of bf16 GRU weights (tests/test_lowp.py, README Accuracy)
BF16_BUDGET = 5e-3

_PROFILE = settings(derandomize=True, deadline=None, database=None, print_blob=True, max_examples=60,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def dense(rng, inputs: int, outputs: int, fn: str = "linear") -> Dense:
    """A Dense layer whose outputs stay O(1) for O(1) inputs."""
    return Dense(rng.normal(size=(outputs, inputs)) / np.sqrt(inputs), rng.normal(size=outputs) * 0.2,
                 activation(fn))


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def assert_close(got, want, what=""):
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape, (what, g.dtype, g.shape, w.shape)
        assert float(np.max(np.abs(w))) < MAX_REFERENCE_MAGNITUDE, f"test data not O(1) {what}"
        error = max_abs_diff(g, w)
        assert error <= ATOL, f"{what}: max abs difference {error:.3g} > {ATOL:g}"


# ---------------------------------------------------------------------------------------------
# Random graphs: valid by construction
# ---------------------------------------------------------------------------------------------

class _Builder:
    """Grows a graph node by node, from tensors that exist, with shapes that fit. The structure is
    drawn from ``rng`` (uniform choices); hypothesis draws the seed and the counts. ``streamable``:
    forward GRUs only, whose h0 (if any) comes from the static inputs alone."""

    def __init__(self, rng, streamable: bool = False):
        self.rng, self.streamable = rng, streamable
        self.inputs, self.nodes = [], []
        self.tensors = {}                    # name -> (features, has_time), in creation order
        self.consumed = set()
        self.static = set()                  # tensors computed from the vector and state inputs alone

    def choice(self, values):
        return values[self.rng.integers(len(values))]

    def coin(self) -> bool:
        return bool(self.rng.integers(2))

    def size(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def tensor(self, features: int, has_time: bool) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = (features, has_time)
        return name

    def add_input(self, kind: str) -> None:
        name = f"in{len(self.inputs)}"
        directions = self.size(1, 2) if kind == "state" else 1
        size = directions * self.size(1, 4)
        self.inputs.append(Input(name, size, kind, directions))
        self.tensors[name] = (size, kind == "sequence")
        if kind != "sequence":
            self.static.add(name)

    def node(self, layer, inputs, shapes):
        outputs = tuple(self.tensor(*shape) for shape in shapes)
        self.nodes.append(Node(layer, tuple(inputs), outputs))
        self.consumed.update(inputs)
        if all(name in self.static for name in inputs):
            self.static.update(outputs)
        return outputs

    def pick(self, accept=lambda features, has_time: True, among=None):
        """A tensor ``accept`` takes (of ``among``, if given), most often one nothing reads yet (an
        input before all), or None."""
        names = [n for n, shape in self.tensors.items() if accept(*shape) and (among is None or n in among)]
        if not names:
            return None
        fresh = [n for n in names if n not in self.consumed]
        return self.choice(fresh if fresh and self.rng.random() < 0.75 else names)

    def adapt(self, name: str, features: int) -> str:
        """``name`` itself, or a Dense from it to ``features``."""
        have, has_time = self.tensors[name]
        if have == features:
            return name
        return self.node(dense(self.rng, have, features), (name,), ((features, has_time),))[0]

    # ---- one node of each kind ----

    def gru(self):
        x = self.pick(lambda f, t: t)
        if x is None:
            return
        direction = "forward" if self.streamable else self.choice(DIRECTIONS)
        d = 2 if direction == "bidirectional" else 1
        h0 = self.pick(lambda f, t: not t and f % d == 0 and f // d <= 6,
                       self.static if self.streamable else None) if self.coin() else None
        hidden = self.tensors[h0][0] // d if h0 else self.size(1, 5)
        return_sequences = self.coin()
        layer = random_gru(self.rng, self.tensors[x][0], hidden, direction, linear_before_reset=self.coin(),
                           return_sequences=return_sequences)
        shapes = [(d * hidden, return_sequences)] + ([(d * hidden, False)] if self.coin() else [])
        self.node(layer, (x,) if h0 is None else (x, h0), shapes)

    def dense(self):
        x = self.pick()
        out = self.size(1, 5)
        fn = self.choice(("linear", "tanh", "sigmoid", "relu"))
        self.node(dense(self.rng, self.tensors[x][0], out, fn), (x,), ((out, self.tensors[x][1]),))

    def activation(self):
        x = self.pick()
        fn = self.choice(("tanh", "sigmoid", "relu", "softmax"))
        self.node(Activation(activation(fn)), (x,), (self.tensors[x],))

    def last_step(self):
        x = self.pick(lambda f, t: t)
        if x is not None:
            self.node(LastStep(), (x,), ((self.tensors[x][0], False),))

    def combine(self):
        op = self.choice(("add", "sub", "mul", "max", "min", "mean"))
        first = self.pick()
        features, has_time = self.tensors[first]
        count = 2 if op == "sub" else self.size(2, 3)
        others = [self.adapt(self.pick(lambda f, t: t == has_time), features) for _ in range(count - 1)]
        self.node(Combine(op), [first] + others, ((features, has_time),))

    def concat(self):
        first = self.pick()
        has_time = self.tensors[first][1]
        names = [first] + [self.pick(lambda f, t: t == has_time) for _ in range(self.size(1, 2))]
        self.node(Concat(), names, ((sum(self.tensors[n][0] for n in names), has_time),))

    def slice(self):
        x = self.pick(lambda f, t: f >= 2)
        if x is None:
            return
        features, has_time = self.tensors[x]
        begin = self.size(0, features - 1)
        end = self.size(begin + 1, features)
        self.node(Slice(begin, end), (x,), ((end - begin, has_time),))

    # ---- outputs ----

    def finish(self) -> Graph:
        """Every tensor that nothing reads becomes an output (an input, after a Dense); with more
        than three, two of them are joined by a Concat (a LastStep first for a sequence beside a
        vector) until three are left. Then perhaps an intermediate tensor as an extra output, and
        some vector outputs given as states of one or two directions."""
        input_names = {i.name for i in self.inputs}
        while True:
            sinks = [n for n in self.tensors if n not in self.consumed]
            raw = [n for n in sinks if n in input_names]
            if raw:
                features, has_time = self.tensors[raw[0]]
                self.node(dense(self.rng, features, 3), (raw[0],), ((3, has_time),))
                continue
            if len(sinks) <= 3:
                break
            a, b = (self.node(LastStep(), (n,), ((self.tensors[n][0], False),))[0]
                    if self.tensors[sinks[0]][1] != self.tensors[sinks[1]][1] and self.tensors[n][1] else n
                    for n in sinks[:2])
            self.node(Concat(), (a, b), ((self.tensors[a][0] + self.tensors[b][0], self.tensors[a][1]),))
        names = list(sinks)
        extra = [n for n in self.tensors if n not in input_names and n not in names]
        if extra and len(names) < 3 and self.coin():
            names.insert(self.size(0, len(names)), self.choice(extra))
        outputs = []
        for name in names:
            features, has_time = self.tensors[name]
            directions = self.choice([None] + [d for d in (1, 2) if not has_time and features % d == 0])
            outputs.append(Output(name, directions) if directions or self.coin() else name)
        return Graph(tuple(self.inputs), tuple(self.nodes), tuple(outputs))


@st.composite
def random_graphs(draw, streamable: bool = False):
    seed = draw(st.integers(0, 2**32 - 1))
    b = _Builder(np.random.default_rng(seed), streamable)
    b.add_input("sequence")
    for _ in range(draw(st.integers(0, 2))):
        b.add_input(b.choice(("sequence", "vector", "state")))
    kinds = ("gru", "gru", "dense", "activation", "last_step", "combine", "combine", "concat", "slice")
    for _ in range(draw(st.integers(2, 9))):
        getattr(b, b.choice(kinds))()
    return b.finish(), seed


def random_inputs(rng, graph: Graph, batch: int, steps: int, single: bool) -> list:
    """One array per input, in input order: (B, T, F) / (B, F) / (D, B, H), no batch axis when ``single``."""
    values = []
    for spec in graph.inputs:
        if spec.kind == "sequence":
            shape = (batch, steps, spec.size)
        elif spec.kind == "vector":
            shape = (batch, spec.size)
        else:
            shape = (spec.directions, batch, spec.size // spec.directions)
        value = rng.normal(size=shape).astype(np.float32) * (0.5 if spec.kind == "state" else 1.0)
        values.append(value[:, 0] if single and spec.kind == "state" else value[0] if single else value)
    return values


def random_initial_state(rng, graph: Graph, batch: int, single: bool) -> list:
    """Per GRU node: None when a tensor gives its h0 (and now and then otherwise), else a random state."""
    states = []
    for node in graph.gru_nodes:
        if len(node.inputs) == 2 or rng.random() < 0.3:
            states.append(None)
            continue
        d, h = node.layer.num_directions, node.layer.hidden_size
        states.append((0.5 * rng.normal(size=(d, h) if single else (d, batch, h))).astype(np.float32))
    return states


@_PROFILE
@given(graph_and_seed=random_graphs(), batch=st.integers(1, 3), steps=st.integers(1, 6), single=st.booleans(),
       form=st.sampled_from(("list", "dict")), with_lengths=st.booleans(), with_state=st.booleans(),
       return_state=st.booleans())
def test_random_graphs_match_reference(graph_and_seed, batch, steps, single, form, with_lengths, with_state,
                                       return_state):
    graph, seed = graph_and_seed
    rng = np.random.default_rng(seed + 1)
    batch = 1 if single else batch
    model = grurt.Model(graph)
    values = random_inputs(rng, graph, batch, steps, single)
    positional = values[0] if len(values) == 1 else values     # a model of one input takes the array itself
    inputs = dict(zip(graph.input_names, values)) if form == "dict" else positional
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[rng.integers(batch)] = steps
        lengths = int(lengths[0]) if single else lengths
    h0 = random_initial_state(rng, graph, batch, single) if with_state else None
    kwargs = dict(initial_state=h0, lengths=lengths)
    want = reference.run(graph, inputs, return_state=return_state, **kwargs)
    got = model.run(inputs, return_state=return_state, **kwargs)
    if return_state:
        (got, got_states), (want, want_states) = got, want
        assert len(got_states) == len(want_states) == len(graph.gru_nodes)
        assert_close(tuple(got_states), tuple(want_states), "states")
    assert isinstance(got, tuple) == (len(graph.outputs) > 1)
    assert_close(got, want, "outputs")
    # the same call in the other form gives the same numbers, bit for bit
    other = positional if form == "dict" else dict(zip(graph.input_names, values))
    again = model.run(other, return_state=return_state, **kwargs)
    for a, b in zip(as_tuple(again[0] if return_state else again), as_tuple(got)):
        assert np.array_equal(a, b)
    # threads give the numbers of one thread, bit for bit
    for a, b in zip(as_tuple(model.run(inputs, threads=2, **kwargs)), as_tuple(got)):
        assert np.array_equal(a, b)
    if single:   # a single sequence gives bit for bit what a batch of one gives
        batched = [v[:, None] if s.kind == "state" else v[None] for v, s in zip(values, graph.inputs)]
        h0_of_one = None if h0 is None else [None if s is None else s[:, None] for s in h0]
        of_one = model.run(batched[0] if len(batched) == 1 else batched, initial_state=h0_of_one,
                           lengths=None if lengths is None else [lengths])
        for a, b, output in zip(as_tuple(of_one), as_tuple(got), graph.outputs):
            assert np.array_equal(a[0] if output.directions is None else a[:, 0], b)


# ---------------------------------------------------------------------------------------------
# Hand-written graphs
# ---------------------------------------------------------------------------------------------

def residual_graph(rng, features=4, hidden=6):
    """x -> Dense -> a; y = GRU(a) + a; out = Dense(LastStep(y))."""
    return Graph((Input("x", features),),
                 (Node(dense(rng, features, hidden), "x", "a"), Node(random_gru(rng, hidden, hidden), "a", "g"),
                  Node(Combine("add"), ("g", "a"), "y"), Node(LastStep(), "y", "last"),
                  Node(dense(rng, hidden, 3), "last", "out")),
                 ("out",))


def two_branch_graph(rng):
    """A forward and a reverse GRU over x, concatenated, a Dense on every step."""
    return Graph((Input("x", 3),),
                 (Node(random_gru(rng, 3, 5, "forward", linear_before_reset=False), "x", "f"),
                  Node(random_gru(rng, 3, 4, "reverse"), "x", "r"),
                  Node(Concat(), ("f", "r"), "both"), Node(dense(rng, 9, 2, "tanh"), "both", "y")),
                 ("y",))


def static_h0_graph(rng):
    """A static vector turned into a bidirectional GRU's initial state: h0 = tanh(Dense(s))."""
    return Graph((Input("x", 3), Input("s", 2, "vector")),
                 (Node(dense(rng, 2, 8, "tanh"), "s", "h0"),
                  Node(random_gru(rng, 3, 4, "bidirectional", return_sequences=False), ("x", "h0"), "y")),
                 ("y",))


def two_output_graph(rng):
    """A class (softmax over the last step) and a per-step value from one GRU; the GRU's h_n as a state."""
    return Graph((Input("x", 3), Input("h", 5, "state")),
                 (Node(random_gru(rng, 3, 5), ("x", "h"), ("seq", "h_n")),
                  Node(LastStep(), "seq", "last"), Node(dense(rng, 5, 4, "softmax"), "last", "probs"),
                  Node(dense(rng, 5, 1), "seq", "value")),
                 ("probs", "value", Output("h_n", directions=1)))


HAND_WRITTEN = {"residual": residual_graph, "two branches": two_branch_graph, "static h0": static_h0_graph,
                "two outputs": two_output_graph}


def _inputs(rng, graph, batch, steps):
    return random_inputs(rng, graph, batch, steps, single=False)


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_graphs_match_reference(name):
    rng = np.random.default_rng(7)
    graph = HAND_WRITTEN[name](rng)
    model = grurt.Model(graph)
    assert not isinstance(model.spec, ModelSpec) and graph.as_chain() is None
    assert model.input_names == graph.input_names and model.output_names == graph.output_names
    values = _inputs(rng, graph, 3, 9)
    inputs = values[0] if len(values) == 1 else values
    lengths = np.array([9, 4, 1])
    for kwargs in ({}, {"lengths": lengths}):
        got, states = model.run(inputs, return_state=True, **kwargs)
        want, want_states = reference.run(graph, inputs, return_state=True, **kwargs)
        assert_close(got, want, f"{name} {kwargs}")
        assert_close(tuple(states), tuple(want_states), f"{name} states {kwargs}")


def test_two_outputs_shapes_and_state_layout():
    """Several outputs: a tuple in output order; an Output with directions comes as (D, B, H), and
    equals the GRU's final state given by return_state."""
    rng = np.random.default_rng(8)
    model = grurt.Model(two_output_graph(rng))
    x, h = _inputs(rng, model.graph, 2, 6)
    probs, value, h_n = model.run({"h": h, "x": x})
    assert probs.shape == (2, 4) and value.shape == (2, 6, 1) and h_n.shape == (1, 2, 5)
    (_, _, again), states = model.run([x, h], return_state=True)
    assert np.array_equal(again, h_n) and np.array_equal(states[0], h_n)
    single = model.run([x[0], h[:, 0]])
    assert [a.shape for a in single] == [(4,), (6, 1), (1, 5)]


def test_single_sequence_with_lengths():
    """One sequence (no batch axis) with its length given as a number, as a chain takes it."""
    rng = np.random.default_rng(9)
    graph = two_branch_graph(rng)
    model = grurt.Model(graph)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    got = model.run(x, lengths=4)
    assert_close(got, reference.run(graph, x, lengths=4), "single sequence, lengths=4")
    assert np.array_equal(got, model.run(x[None], lengths=[4])[0])


def test_initial_state_per_gru_node():
    """initial_state and return_state follow graph.gru_nodes; a GRU fed h0 by a tensor takes None."""
    rng = np.random.default_rng(10)
    graph = Graph((Input("x", 3), Input("s", 4, "vector")),
                  (Node(random_gru(rng, 3, 4), ("x", "s"), "a"),
                   Node(random_gru(rng, 4, 2, "bidirectional"), "a", "b")),
                  ("b",))
    model = grurt.Model(graph)
    x, s = _inputs(rng, graph, 2, 5)
    h1 = (0.5 * rng.normal(size=(2, 2, 2))).astype(np.float32)
    got, states = model.run([x, s], initial_state=[None, h1], return_state=True)
    want, want_states = reference.run(graph, [x, s], initial_state=[None, h1], return_state=True)
    assert [st.shape for st in states] == [(1, 2, 4), (2, 2, 2)]
    assert_close(got, want, "output")
    assert_close(tuple(states), tuple(want_states), "states")
    with pytest.raises(InputError, match=r"initial_state\[0\].*takes its state from tensor 's'"):
        model.run([x, s], initial_state=[np.zeros((1, 2, 4), np.float32), None])
    with pytest.raises(InputError, match=r"initial_state\[1\] must be a real array of shape \(2, 2, 2\)"):
        model.run([x, s], initial_state=[None, np.zeros((1, 2, 2), np.float32)])
    with pytest.raises(InputError, match="initial_state must be a list of 2"):
        model.run([x, s], initial_state=[h1])


def test_a_graph_that_is_one_path_runs_as_its_chain():
    rng = np.random.default_rng(11)
    layers = (dense(rng, 4, 6, "tanh"), random_gru(rng, 6, 5, "bidirectional"), random_gru(rng, 10, 3),
              LastStep(), dense(rng, 3, 2))
    spec = ModelSpec(4, layers)
    names = ("x", "a", "b", "c", "d", "y")
    graph = Graph((Input("x", 4),), tuple(Node(layer, names[i], names[i + 1]) for i, layer in enumerate(layers)),
                  ("y",))
    chain = graph.as_chain()
    assert chain is not None and chain.layers == layers and chain.input_size == 4
    model, plain = grurt.Model(graph), grurt.Model(spec)
    assert isinstance(model.spec, ModelSpec) and model.graph is graph     # the chain path, not the graph runner
    assert model.input_names == ("x",) and model.output_names == ("y",)
    x = rng.normal(size=(3, 8, 4)).astype(np.float32)
    h0 = [(0.5 * rng.normal(size=(d, 3, h))).astype(np.float32) for d, h in ((2, 5), (1, 3))]
    for kwargs in ({}, {"lengths": [8, 3, 5]}, {"initial_state": h0}):
        got, states = model.run(x, return_state=True, **kwargs)
        want, want_states = plain.run(x, return_state=True, **kwargs)
        assert np.array_equal(got, want) and all(np.array_equal(a, b) for a, b in zip(states, want_states))
    assert np.array_equal(model.run({"x": x}), plain.run(x))
    assert_close(model.run(x), reference.run(graph, x), "chain vs graph reference")
    # Graph.from_chain gives a one-path graph back
    again = Graph.from_chain(spec, "features", "scores")
    assert again.as_chain().layers == layers and grurt.Model(again).input_names == ("features",)
    # a GRU taking h0 from a tensor, or giving h_n, or a second output: no longer one path
    assert Graph(graph.inputs, graph.nodes, ("y", "b")).as_chain() is None


def test_an_output_that_is_an_input():
    """A graph may hand an input straight back (an ONNX Identity): no nodes at all, or beside others."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    alone = grurt.Model(Graph((Input("x", 4),), (), ("x",)))
    assert np.array_equal(alone.run(x), x)
    layer = dense(rng, 4, 2)
    both = grurt.Model(Graph((Input("x", 4),), (Node(layer, "x", "y"),), ("x", "y")))
    got_x, got_y = both.run(x)
    assert np.array_equal(got_x, x)
    assert_close(got_y, reference.run(ModelSpec(4, (layer,)), x), "Dense beside the identity")


def test_ids_input_through_an_embedding():
    rng = np.random.default_rng(13)
    table = rng.normal(size=(10, 3))
    graph = Graph((Input("ids", None, "ids"), Input("s", 4, "vector")),
                  (Node(Embedding(table), "ids", "e"), Node(random_gru(rng, 3, 4), ("e", "s"), "g"),
                   Node(Combine("mul"), ("g", "g"), "y")),
                  ("y",))
    model = grurt.Model(graph)
    ids = rng.integers(0, 10, size=(2, 5))
    s = rng.normal(size=(2, 4)).astype(np.float32)
    assert_close(model.run([ids, s]), reference.run(graph, [ids, s]), "ids graph")
    with pytest.raises(InputError, match="input 'ids' takes integer token ids"):
        model.run([ids.astype(np.float32), s])


# ---------------------------------------------------------------------------------------------
# Pickling, bf16 weights
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["float32", "bf16"])
def test_pickle_round_trip(weights):
    rng = np.random.default_rng(14)
    model = grurt.Model(two_output_graph(rng)).with_weights(weights)
    x, h = _inputs(rng, model.graph, 2, 6)
    again = pickle.loads(pickle.dumps(model))
    assert again.weights == weights and again.graph.describe() == model.graph.describe()
    for a, b in zip(again.run([x, h]), model.run([x, h])):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_bf16_weights_on_a_graph(name):
    rng = np.random.default_rng(15)
    graph = HAND_WRITTEN[name](rng)
    model = grurt.Model(graph)
    reduced = model.with_weights("bf16")
    assert reduced.weights == "bf16" and model.weights == "float32"
    values = _inputs(rng, graph, 2, 12)
    inputs = values[0] if len(values) == 1 else values
    exact = as_tuple(model.run(inputs))
    got = as_tuple(reduced.run(inputs))
    want = as_tuple(reference.run(graph, inputs))
    errors = [max_abs_diff(g, w) for g, w in zip(got, want)]
    assert max(errors) <= BF16_BUDGET, errors
    # the bf16 weights are really used (the float32 model is within ATOL, the bf16 one further away)
    assert max(max_abs_diff(a, b) for a, b in zip(exact, got)) > ATOL


# ---------------------------------------------------------------------------------------------
# Bad graphs: ModelFormatError naming the node (or input, output) and the shapes
# ---------------------------------------------------------------------------------------------

def _bad_graphs(rng):
    d34 = dense(rng, 3, 4)
    gru4 = random_gru(rng, 3, 4)
    return {
        "combine of incompatible shapes": (
            lambda: Graph((Input("x", 3),), (Node(d34, "x", "a"), Node(Combine("add"), ("a", "x"), "y")), ("y",)),
            "node y = Combine(add)(a, x): tensors of incompatible shapes: 'a' (B, T, 4), 'x' (B, T, 3)"),
        "concat of a sequence and a vector": (
            lambda: Graph((Input("x", 3),), (Node(LastStep(), "x", "v"), Node(Concat(), ("x", "v"), "y")), ("y",)),
            "node y = Concat()(x, v): tensors of incompatible shapes: 'x' (B, T, 3), 'v' (B, 3)"),
        "sub of three": (
            lambda: Graph((Input("x", 3),), (Node(Combine("sub"), ("x", "x", "x"), "y"),), ("y",)),
            "node y = Combine(sub)(x, x, x): takes two tensors, got 3"),
        "slice past the end": (
            lambda: Graph((Input("x", 3),), (Node(Slice(1, 5), "x", "y"),), ("y",)),
            "node y = Slice(1:5)(x): takes one tensor of at least 5 features, got 'x' (B, T, 3)"),
        "an unused input": (
            lambda: Graph((Input("x", 3), Input("s", 2, "vector")), (Node(d34, "x", "a"),), ("a",)),
            "graph: input 's' is not used by any output"),
        "an input read only by a node no output needs": (
            lambda: Graph((Input("x", 3), Input("s", 3, "vector")), (Node(d34, "x", "a"), Node(d34, "s", "b")),
                          ("a",)),
            "graph: input 's' is not used by any output"),
        "an output no node computes": (
            lambda: Graph((Input("x", 3),), (Node(d34, "x", "a"),), ("a", "z")),
            "graph: output 'z' is not computed by any node nor an input"),
        "a node reading an unknown tensor": (
            lambda: Graph((Input("x", 3),), (Node(Combine("add"), ("x", "q"), "y"),), ("y",)),
            "node y = Combine(add)(x, q): input 'q' is not an input of the graph nor computed by any node"),
        "a cycle": (
            lambda: Graph((Input("x", 4),), (Node(Combine("add"), ("x", "b"), "a"), Node(dense(rng, 4, 4), "a", "b")),
                          ("b",)),
            "graph: nodes form a cycle: a = Combine(add)(x, b); b = Dense(4 -> 4, linear)(a)"),
        "a duplicate tensor name": (
            lambda: Graph((Input("x", 3),), (Node(d34, "x", "a"), Node(LastStep(), "x", "a")), ("a",)),
            "node a = LastStep()(x): tensor 'a' is already defined"),
        "a node giving an input's name": (
            lambda: Graph((Input("x", 3),), (Node(Activation(activation("tanh")), "x", "x"),), ("x",)),
            "node x = Activation(tanh)(x): tensor 'x' is already defined"),
        "a duplicate input name": (
            lambda: Graph((Input("x", 3), Input("x", 2, "vector")), (Node(d34, "x", "y"),), ("y",)),
            "graph: input name 'x' is used twice"),
        "a GRU h0 of the wrong size": (
            lambda: Graph((Input("x", 3), Input("s", 3, "vector")), (Node(gru4, ("x", "s"), "y"),), ("y",)),
            f"node y = {gru4.describe()}(x, s): h0 must be (B, 4) (the directions' states side by side), "
            "got 'x' (B, T, 3), 's' (B, 3)"),
        "a GRU h0 that is a sequence": (
            lambda: Graph((Input("x", 3), Input("s", 4)), (Node(gru4, ("x", "s"), "y"),), ("y",)),
            "h0 must be (B, 4) (the directions' states side by side), got 'x' (B, T, 3), 's' (B, T, 4)"),
        "ids into a Dense": (
            lambda: Graph((Input("i", None, "ids"),), (Node(d34, "i", "y"),), ("y",)),
            "node y = Dense(3 -> 4, linear)(i): token ids go only into an Embedding"),
        "ids into a Concat": (
            lambda: Graph((Input("i", None, "ids"), Input("x", 3)), (Node(Concat(), ("i", "x"), "y"),), ("y",)),
            "node y = Concat()(i, x): token ids go only into an Embedding ('i' (B, T) ids, 'x' (B, T, 3))"),
        "an output that is token ids": (
            lambda: Graph((Input("i", None, "ids"),), (), ("i",)),
            "graph: output 'i' is token ids, which only an Embedding reads"),
        "an output listed twice": (
            lambda: Graph((Input("x", 3),), (Node(d34, "x", "y"),), ("y", Output("y"))),
            "graph: output 'y' is listed twice"),
        "a sequence output as a state": (
            lambda: Graph((Input("x", 3),), (Node(d34, "x", "y"),), (Output("y", 2),)),
            "graph: output 'y' (B, T, 4) cannot be given as a state of 2 directions"),
    }


@pytest.mark.parametrize("case", sorted(_bad_graphs(np.random.default_rng(0))))
def test_bad_graph(case):
    build, message = _bad_graphs(np.random.default_rng(0))[case]
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        build()


def test_a_node_holding_no_layer():
    with pytest.raises(UnsupportedModelError, match=re.escape("node y (from x): not a grurt layer: 'relu'")):
        Graph((Input("x", 3),), (Node("relu", "x", "y"),), ("y",))


# ---------------------------------------------------------------------------------------------
# Bad calls: InputError naming the input (or the node)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def merging_model():
    """x (B, T, 3) -> GRU -> a; y (B, T, 2) -> Dense -> b; c = a + b; out = Concat(LastStep(c), s)."""
    rng = np.random.default_rng(16)
    return grurt.Model(Graph(
        (Input("x", 3), Input("y", 2), Input("s", 4, "vector")),
        (Node(random_gru(rng, 3, 4), "x", "a"), Node(dense(rng, 2, 4), "y", "b"), Node(Combine("add"), ("a", "b"), "c"),
         Node(LastStep(), "c", "last"), Node(Concat(), ("last", "s"), "out")),
        ("out",)))


def _good(batch=2, steps=5):
    rng = np.random.default_rng(17)
    return {"x": rng.normal(size=(batch, steps, 3)).astype(np.float32),
            "y": rng.normal(size=(batch, steps, 2)).astype(np.float32),
            "s": rng.normal(size=(batch, 4)).astype(np.float32)}


def _with(**changes):
    values = _good()
    values.update(changes)
    return values


BAD_CALLS = {
    "missing": (lambda: {"x": _good()["x"], "s": _good()["s"]}, "input 'y' is missing: this model's inputs are"),
    "unknown": (lambda: _with(w=np.zeros(3)), "unknown input 'w': this model's inputs are ['x', 'y', 's']"),
    "too few list items": (lambda: [_good()["x"], _good()["y"]], "this model takes 3 inputs ['x', 'y', 's'], got 2"),
    "too many list items": (lambda: list(_good().values()) + [np.zeros(4)], "this model takes 3 inputs"),
    "one array for three inputs": (lambda: _good()["x"], "pass a list in that order or a dict by name, got ndarray"),
    "features": (lambda: _with(x=np.zeros((2, 5, 4), np.float32)), "input 'x' has 4 features, the model expects 3"),
    "rank": (lambda: _with(y=np.zeros(2, np.float32)), "input 'y' must be (B, T, 2) or (T, 2), got shape (2,)"),
    "vector given as a sequence": (lambda: _with(s=np.zeros((2, 5, 4), np.float32)),
                                   "input 's' must be (B, 4) or (4,), got shape (2, 5, 4)"),
    "complex": (lambda: _with(x=_good()["x"].astype(np.complex64)),
                "input 'x' must be real numbers, got dtype complex64"),
    "strings": (lambda: _with(s=np.array([["a"] * 4] * 2)), "input 's' must be real numbers, got dtype <U1"),
    "not an array": (lambda: _with(y="frames"), "input 'y' must be an array, got str"),
    "ragged": (lambda: _with(s=[[1.0, 2.0], [3.0]]), "input 's' must be a rectangular array of numbers"),
    "empty": (lambda: _with(x=np.zeros((2, 0, 3), np.float32)), "input 'x' is empty"),
    "batch mismatch": (lambda: _with(s=np.zeros((3, 4), np.float32)), "input 's' has a batch of 3, another input 2"),
    "batched and unbatched": (lambda: _with(y=_good()["y"][0]),
                              "input 'y': give every input with a batch axis or none without one"),
    "sequences of different lengths merged": (
        lambda: _with(y=_good(steps=4)["y"]),
        "node c = Combine(add)(a, b): its sequences have different numbers of steps (5, 4)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_call(merging_model, case):
    values, message = BAD_CALLS[case]
    with pytest.raises(InputError, match=re.escape(message)):
        merging_model.run(values())


def test_bad_state_input_and_threads():
    rng = np.random.default_rng(18)
    model = grurt.Model(two_output_graph(rng))
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    with pytest.raises(InputError, match=re.escape("input 'h' must be (1, B, 5) or (1, 5), got shape (2, 5)")):
        model.run([x, np.zeros((2, 5), np.float32)])
    with pytest.raises(InputError, match=re.escape("input 'h' must be (1, B, 5) or (1, 5), got shape (1, 2, 4)")):
        model.run([x, np.zeros((1, 2, 4), np.float32)])
    with pytest.raises(InputError, match="threads must be an integer"):
        model.run([x, np.zeros((1, 2, 5), np.float32)], threads=0)
    # the good call, for contrast
    assert model.run([x, np.zeros((1, 2, 5), np.float32)])[0].shape == (2, 4)


def test_lengths_are_checked_against_every_sequence_input():
    """Two sequence inputs of 5 and 3 steps, never merged: lengths of 4 fit the first, not the second."""
    rng = np.random.default_rng(11)
    nodes = (Node(random_gru(rng, 2, 3, return_sequences=False), "long", "a"),
             Node(random_gru(rng, 2, 3, return_sequences=False), "short", "b"),
             Node(Concat(), ("a", "b"), "y"))
    model = grurt.Model(Graph((Input("long", 2), Input("short", 2)), nodes, ("y",)))
    x = [rng.normal(size=(2, 5, 2)), rng.normal(size=(2, 3, 2))]
    with pytest.raises(InputError, match=r"lengths must be between 1 and 3, the steps of input 'short', got 2\.\.4"):
        model.run(x, lengths=[4, 2])
    with pytest.raises(InputError, match=r"lengths must be integers of shape \(2,\), got float64 \(2,\)"):
        model.run(x, lengths=[3.0, 2.0])
    np.testing.assert_allclose(model.run(x, lengths=[3, 2]), reference.run(model.graph, x, lengths=[3, 2]),
                               rtol=0, atol=ATOL)


def test_concurrent_calls_equal_serial_calls():
    """A graph Model shared by 4 threads (each segment's kernels run without the GIL): every call gives
    bit for bit what the same call gives alone."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(12)
    model = grurt.Model(two_output_graph(rng))
    calls = [_inputs(rng, model.graph, batch, steps) for batch, steps in [(1, 30), (3, 7), (2, 50), (4, 1)] * 5]
    serial = [model.run(values) for values in calls]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(model.run, calls))
    for got, want in zip(concurrent, serial):
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
