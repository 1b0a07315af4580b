"""Format 2.0: graphs in grurt's .npz files (issue 11). Round trips are bit for bit; chains keep
their 1.x versions; a 2.x file read by a 1.x reader fails with the version message; a hostile
graph header raises a grurt error that names the problem."""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt import reference
from grurt.formats import npz, read_header
from grurt.graph import Combine, Concat, Graph, Input, Node, Output, Slice
from grurt.spec import Dense, Embedding, LastStep, ModelSpec

from gru_testing import random_gru
from test_npz import _set, header_of, mutated, read_entries, write_npz
from tolerances import ATOL


def graph_model(rng, weights="float32") -> grurt.Model:
    """Two inputs (a sequence and a static vector into a GRU's h0), a residual add, an ids-free
    merge of every kind, a state output and a state input."""
    nodes = (
        Node(Dense(rng.normal(size=(6, 2)), rng.normal(size=6)), "static", "h0"),
        Node(random_gru(rng, 4, 6, "forward", True), ("seq", "h0"), ("a", "a_state")),
        Node(random_gru(rng, 6, 6, "forward", False, return_sequences=False), ("a", "h1"), "b"),
        Node(LastStep(), "a", "a_last"),
        Node(Combine("add"), ("a_last", "b"), "res"),
        Node(Combine("max"), ("res", "h0"), "m"),
        Node(Concat(), ("m", "a_state"), "cat"),
        Node(Slice(2, 9), "cat", "cut"),
        Node(Dense(rng.normal(size=(3, 7)), rng.normal(size=3)), "cut", "cls"),
    )
    graph = Graph((Input("seq", 4), Input("static", 2, "vector"), Input("h1", 6, "state")), nodes,
                  ("cls", Output("a_state", 1)))
    return grurt.Model(graph, weights)


def inputs(rng, batch=3, steps=5):
    return [rng.normal(size=(batch, steps, 4)).astype(np.float32), rng.normal(size=(batch, 2)).astype(np.float32),
            rng.normal(size=(1, batch, 6)).astype(np.float32)]


@pytest.mark.parametrize("weights", ["float32", "bf16", "int8"])
def test_graph_round_trip_is_bit_for_bit(tmp_path, weights):
    rng = np.random.default_rng(0)
    model = graph_model(rng, weights)
    x = inputs(rng)
    grurt.save(model, tmp_path / "g.npz")
    assert read_header(tmp_path / "g.npz")["format_version"] == "2.0"
    loaded = grurt.load(tmp_path / "g.npz")
    assert loaded.weights == weights
    assert loaded.input_names == ("seq", "static", "h1") and loaded.output_names == ("cls", "a_state")
    for got, want in zip(loaded.run(x), model.run(x)):
        assert np.array_equal(got, want)
    if weights == "float32":         # and the graph itself is right: the float64 reference, 1e-5
        for got, want in zip(loaded.run(x), reference.run(loaded.graph, x)):
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_chains_keep_their_1x_versions_and_named_chains_are_2_0(tmp_path):
    rng = np.random.default_rng(1)
    spec = ModelSpec(4, (random_gru(rng, 4, 5, "forward", True), LastStep()))
    grurt.save(grurt.Model(spec), tmp_path / "chain.npz")
    assert read_header(tmp_path / "chain.npz")["format_version"] == "1.0"
    named = grurt.Model(Graph.from_chain(spec, "audio", "embedding"))
    assert named.graph.as_chain() is not None and named._graph is None      # runs as a chain
    grurt.save(named, tmp_path / "named.npz")
    assert read_header(tmp_path / "named.npz")["format_version"] == "2.0"
    loaded = grurt.load(tmp_path / "named.npz")
    assert loaded.input_names == ("audio",) and loaded.output_names == ("embedding",)
    x = rng.normal(size=(2, 6, 4)).astype(np.float32)
    assert np.array_equal(loaded.run({"audio": x}), grurt.Model(spec).run(x))


def test_ids_graph_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    nodes = (Node(Embedding(rng.normal(size=(9, 4))), "tokens", "e"),
             Node(random_gru(rng, 4, 3, "forward", True), "e", "y"),
             Node(random_gru(rng, 4, 3, "reverse", True), "e", "z"),
             Node(Combine("mean"), ("y", "z"), "out"))
    model = grurt.Model(Graph((Input("tokens", None, "ids"),), nodes, ("out",)))
    grurt.save(model, tmp_path / "ids.npz")
    ids = rng.integers(0, 9, size=(2, 7))
    assert np.array_equal(grurt.load(tmp_path / "ids.npz").run(ids), model.run(ids))
    np.testing.assert_allclose(model.run(ids), reference.run(model.graph, ids), rtol=0, atol=ATOL)


def test_a_1x_reader_refuses_a_2_0_file_with_the_version_message(tmp_path, monkeypatch):
    grurt.save(graph_model(np.random.default_rng(3)), tmp_path / "g.npz")
    monkeypatch.setattr(npz, "FORMAT_VERSION", (1, 2))
    with pytest.raises(grurt.UnsupportedModelError, match=r"format 2\.0, written by a newer grurt.*upgrade grurt"):
        grurt.load(tmp_path / "g.npz")


@pytest.fixture
def saved_graph(tmp_path):
    path = tmp_path / "g.npz"
    grurt.save(graph_model(np.random.default_rng(4)), path)
    return path


def _edit(fn):
    def edit(header):
        fn(header)
    return edit


@pytest.mark.parametrize("edit, error, fragment", [
    (_set(["nodes", 2, "inputs"], ["a", "nowhere"]), grurt.ModelFormatError,
     r"node 2: reads a tensor that no input or earlier node defines"),
    (_set(["nodes", 1, "outputs"], ["h0", "a_state"]), grurt.ModelFormatError, r"node 1: defines tensor"),
    (_set(["nodes", 4, "layer", "op"], "pow"), grurt.UnsupportedModelError, r"Combine: op 'pow' is not one of"),
    (_set(["nodes", 7, "layer", "end"], 99), grurt.ModelFormatError, r"Slice\(2:99\).*at least 99 features"),
    (_set(["nodes", 5, "inputs"], ["res", "seq"]), grurt.ModelFormatError, r"incompatible shapes"),
    (_set(["inputs", 1, "kind"], "image"), grurt.ModelFormatError, r"input 'static': kind 'image'"),
    (_set(["inputs", 0, "name"], "h0"), grurt.ModelFormatError, r"defines tensor"),
    (_set(["outputs", 0, "name"], "ghost"), grurt.ModelFormatError, r"output 'ghost' is not computed"),
    (_set(["outputs", 1, "directions"], 4), grurt.ModelFormatError, r"cannot be given as a state of 4 directions"),
    (_set(["nodes", 0, "extra"], 1), grurt.ModelFormatError, r"node 0: unknown fields \['extra'\]"),
    (_set(["nodes"], []), grurt.ModelFormatError, r"'nodes' must be a non-empty list"),
    (_set(["nodes", 3, "inputs"], "a"), grurt.ModelFormatError, r"must be non-empty lists of tensor names"),
    (_set(["layers"], []), grurt.ModelFormatError, r"header: unknown fields \['layers'\]"),
])
def test_hostile_graph_headers(saved_graph, tmp_path, edit, error, fragment):
    with pytest.raises(error, match=fragment):
        grurt.load(mutated(saved_graph, tmp_path, edit_header=edit))


def test_an_unused_input_is_refused(saved_graph, tmp_path):
    def extra_input(header):
        header["inputs"].append({"name": "spare", "kind": "vector", "size": 3, "directions": 1})
    with pytest.raises(grurt.ModelFormatError, match=r"input 'spare' is not used by any output"):
        grurt.load(mutated(saved_graph, tmp_path, edit_header=extra_input))


def test_graph_layers_in_a_1x_chain_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    grurt.save(grurt.Model(ModelSpec(4, (random_gru(rng, 4, 5, "forward", True),))), tmp_path / "c.npz")
    entries = read_entries(tmp_path / "c.npz")
    header = header_of(entries)
    header["layers"].append({"type": "Concat"})
    path = write_npz(tmp_path / "bad.npz", {k: v for k, v in entries.items() if k != "header"}, header)
    with pytest.raises(grurt.ModelFormatError, match=r"layer 1 \(Concat\) is only valid in a graph \(format 2\.0\)"):
        grurt.load(path)


def test_an_extra_array_is_refused(saved_graph, tmp_path):
    def add(arrays):
        arrays["3.W"] = np.zeros((2, 2), np.float32)
    with pytest.raises(grurt.ModelFormatError, match=r"unexpected arrays in the file: \['3.W'\]"):
        grurt.load(mutated(saved_graph, tmp_path, edit_entries=add))
