"""The general tensor graph (grurt.tensor_graph), its plans (grurt.tensor_plan) and TensorModel
(grurt.tensor_model): validation errors named, plans cached per signature, shape arithmetic
folded, sizes refused before anything is allocated, input checks, pickling, threads.

Outputs are compared with grurt's float64 reference (grurt.reference.run_tensor_graph) to ATOL
(tests/tolerances.py); claims of exactness (pickling, threads, float64 inputs) with np.array_equal.
"""
import pickle
import threading

import numpy as np
import pytest

import grurt
import grurt.model
from grurt.errors import InputError, ModelFormatError, UnsupportedModelError
from grurt.reference import run_tensor_graph
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_model import TensorModel
from grurt.tensor_plan import make_plan
from tolerances import ATOL

rng = np.random.default_rng(0)


def _f32(*shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def node(op, inputs, outputs, name=None, **attrs):
    return TensorNode(op, tuple(inputs), tuple(outputs), attrs, name or outputs[0])


def gru_graph(hidden=6, features=4):
    """x (B, T, I) → GRU (layout 1, bidirectional, lbr 1) with h0 zeros built from x's shape (Shape →
    Gather → Unsqueeze → Concat → ConstantOfShape, as torch exports it) → attention pooling over
    time → softmax over classes."""
    D = 2
    constants = {
        "W": _f32(D, 3 * hidden, features), "R": _f32(D, 3 * hidden, hidden), "B": _f32(D, 6 * hidden),
        "zero": np.array(0, np.int64), "axes0": np.array([0], np.int64),
        "two": np.array([D], np.int64), "hidden": np.array([hidden], np.int64),
        "score": _f32(D * hidden, 1), "dense": _f32(D * hidden, 3), "bias": _f32(3),
        "axis1": np.array([1], np.int64), "shape_btf": np.array([0, 0, -1], np.int64),
    }
    nodes = [
        node("Shape", ["x"], ["shape"]),
        node("Gather", ["shape", "zero"], ["batch"], axis=0),
        node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        node("Concat", ["two", "batch1", "hidden"], ["h0_shape"], axis=0),
        node("ConstantOfShape", ["h0_shape"], ["h0_dbh"], value=np.zeros(1, np.float32)),
        node("Transpose", ["h0_dbh"], ["h0"], perm=[1, 0, 2]),
        node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "h_n"], hidden_size=hidden, direction="bidirectional",
             linear_before_reset=1, layout=1),
        node("Reshape", ["y", "shape_btf"], ["out"]),                     # (B, T, 2H)
        node("MatMul", ["out", "score"], ["scores"]),
        node("Softmax", ["scores"], ["weights"], axis=1),
        node("Mul", ["out", "weights"], ["weighted"]),
        node("ReduceSum", ["weighted", "axis1"], ["pooled"], keepdims=0),
        node("MatMul", ["pooled", "dense"], ["logits0"]),
        node("Add", ["logits0", "bias"], ["logits"]),
        node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    return TensorGraph([TensorInput("x", "float32", ("batch", "time", features))], nodes, ["probs", "h_n"],
                       constants)


def test_model_vs_reference_and_the_fused_gru():
    graph = gru_graph()
    model = TensorModel(graph)
    x = _f32(3, 7, 4, scale=1.0)
    probs, h_n = model.run(x)
    ref_probs, ref_h = run_tensor_graph(graph, x)
    assert probs.dtype == np.float32 and probs.shape == (3, 3) and h_n.shape == (3, 2, 6)
    assert np.max(np.abs(probs - ref_probs)) <= ATOL and np.max(np.abs(h_n - ref_h)) <= ATOL
    # the GRU node is grurt's fused GRU: its states equal a Model of the same layer, bit for bit
    gru = grurt.layers.GRU.from_onnx(graph.constants["W"], graph.constants["R"], graph.constants["B"],
                                     linear_before_reset=1, direction="bidirectional")
    _, (states,) = grurt.Model.chain([gru]).run(x, return_state=True)
    assert np.array_equal(h_n, states.transpose(1, 0, 2))


# ---- validation: every error names what is wrong ----

def _x():
    return [TensorInput("x", "float32", ("b", 3))]


@pytest.mark.parametrize("nodes, outputs, constants, error, words", [
    ([node("Frobnicate", ["x"], ["y"], "f")], ["y"], {}, UnsupportedModelError,
     ["node 'f' (Frobnicate)", "operator Frobnicate is not supported"]),
    ([node("Loop", ["x"], ["y"], "l")], ["y"], {}, UnsupportedModelError, ["node 'l' (Loop)", "control flow"]),
    ([node("Relu", ["x"], ["y"], "a"), node("Relu", ["x"], ["y"], "b")], ["y"], {}, ModelFormatError,
     ["node 'b' (Relu)", "tensor 'y' is already defined by node 'a' (Relu)"]),
    ([node("Relu", ["x"], ["c"], "r")], ["c"], {"c": np.ones(3, np.float32)}, ModelFormatError,
     ["node 'r' (Relu)", "tensor 'c' is already defined by constant 'c'"]),
    ([node("Relu", ["zz"], ["y"], "r")], ["y"], {}, ModelFormatError, ["node 'r' (Relu)", "input 'zz' is not defined"]),
    ([node("Relu", ["b"], ["a"], "ra"), node("Relu", ["a"], ["b"], "rb")], ["a"], {}, ModelFormatError,
     ["(Relu)", "cycle"]),
    ([node("Relu", ["x"], ["y"], "r", alpha=1.0)], ["y"], {}, UnsupportedModelError,
     ["node 'r' (Relu)", "attribute alpha=1.0"]),
    ([node("LeakyRelu", ["x"], ["y"], "r", alpha="big")], ["y"], {}, ModelFormatError,
     ["node 'r' (LeakyRelu)", "attribute alpha of LeakyRelu must be a finite float"]),
    ([node("Add", ["x"], ["y"], "s")], ["y"], {}, ModelFormatError, ["node 's' (Add)", "Add takes 2 inputs, got 1"]),
    ([node("Add", ["", "x"], ["y"], "s")], ["y"], {}, ModelFormatError,
     ["node 's' (Add)", "input 0 of Add is required"]),
    ([node("Relu", ["x"], ["y", "z"], "r")], ["y"], {}, ModelFormatError, ["node 'r' (Relu)", "1 outputs, got 2"]),
    ([node("Add", ["x", "s"], ["y"], "a")], ["y"], {"s": np.array(["a"])}, ModelFormatError,
     ["constant 's'", "dtype <U1"]),
    ([node("Relu", ["x"], ["y"])], ["q"], {}, ModelFormatError, ["output 'q'"]),
    ([node("Relu", ["x"], ["y"])], ["y", "y"], {}, ModelFormatError, ["output 'y' is listed twice"]),
])
def test_validation_errors_name_the_node(nodes, outputs, constants, error, words):
    with pytest.raises(error) as raised:
        TensorGraph(_x(), nodes, outputs, constants)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


@pytest.mark.parametrize("name, dtype, dims, words", [
    ("x", "float64", (3,), ["input 'x'", "dtype 'float64'"]),
    ("x", "float32", (-1,), ["input 'x'", "a dim must be a size"]),
    ("x", "float32", "abc", ["input 'x'", "dims must be a list"]),
    ("", "float32", (3,), ["tensor name"]),
])
def test_bad_inputs_are_refused(name, dtype, dims, words):
    with pytest.raises(ModelFormatError) as raised:
        TensorInput(name, dtype, dims)
    for word in words:
        assert word in str(raised.value)


def test_constants_bounded(monkeypatch):
    import grurt.tensor_graph

    monkeypatch.setattr(grurt.tensor_graph, "MAX_PARAMETERS", 10)
    with pytest.raises(ModelFormatError, match="constants hold 12 elements, more than the 10"):
        TensorGraph(_x(), [node("Add", ["x", "c"], ["y"])], ["y"], {"c": np.ones((4, 3))})


def test_order_dead_nodes_and_canonical_constants():
    nodes = [node("Relu", ["a"], ["y"], "second"), node("Neg", ["x"], ["a"], "first"),
             node("Frobnicate", ["x"], ["unused"], "dead")]          # dead: dropped before its op is looked up
    graph = TensorGraph(_x(), nodes, ["y"], {"c64": np.ones(3), "spare": np.ones(2, np.float32)})
    assert [n.name for n in graph.nodes] == ["first", "second"]
    assert graph.constants == {}                                        # no node reads them
    graph = TensorGraph(_x(), [node("Add", ["x", "c64"], ["y"])], ["y"], {"c64": np.ones(3)})
    assert graph.constants["c64"].dtype == np.float32 and not graph.constants["c64"].flags.writeable
    attrs = graph.nodes[0].attrs
    assert attrs == {}
    # checked attributes, defaults filled in
    graph = TensorGraph(_x(), [node("LeakyRelu", ["x"], ["y"])], ["y"])
    assert graph.nodes[0].attrs == {"alpha": 0.01}


# ---- plans ----

def test_plan_cache_hits_and_misses():
    model = TensorModel(gru_graph(), cache_size=2)
    for shape in [(2, 5), (2, 5), (3, 5), (2, 5), (4, 6)]:
        model.run(_f32(*shape, 4))
    info = model.cache_info()
    assert (info.hits, info.misses, info.size, info.capacity) == (2, 3, 2, 2)
    model.run(_f32(3, 5, 4))                # evicted by (4, 6): the least recently used
    assert model.cache_info().misses == 4


def test_shape_arithmetic_folds():
    graph = gru_graph()
    plan = make_plan(graph, [((2, 5, 4), np.dtype(np.float32))])
    ops = [step[5].op for step in plan.steps]
    # Shape/Gather/Unsqueeze/Concat/ConstantOfShape/Transpose ran once, when the plan was made (and
    # grurt.tensor_passes made the weighted sum one product, the bias added in place)
    assert ops == ["GRU", "Reshape", "MatMul", "Softmax", "Mul+ReduceSum", "MatMul+Add", "Softmax"]
    # the shape (3 int64), batch, [batch], h0's shape (3 int64), the zero states (2, 2, 6) float32 twice
    assert plan.constant_bytes == 24 + 8 + 8 + 24 + 2 * (2 * 2 * 6 * 4)
    assert plan.describe().startswith("7 steps")


def test_constant_weight_transpose_folds():
    W = _f32(5, 3)
    graph = TensorGraph(_x(), [node("Transpose", ["W"], ["Wt"], perm=[1, 0]), node("MatMul", ["x", "Wt"], ["y"])],
                        ["y"], {"W": W})
    model = TensorModel(graph)
    x = _f32(2, 3)
    assert [s[5].op for s in model.plan([x]).steps] == ["MatMul"]
    assert np.max(np.abs(model.run(x) - x.astype(np.float64) @ W.T.astype(np.float64))) <= ATOL


def test_sizes_refused_before_allocation(monkeypatch):
    tile = TensorGraph(_x(), [node("Tile", ["x", "reps"], ["y"], "big")], ["y"],
                       {"reps": np.array([10**9, 10**9], np.int64)})
    with pytest.raises((InputError, ModelFormatError)) as raised:   # numpy would raise MemoryError if it tried
        TensorModel(tile).run(_f32(2, 3))
    assert "node 'big' (Tile)" in str(raised.value)
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 10_000)
    tile = TensorGraph(_x(), [node("Tile", ["x", "reps"], ["y"], "big")], ["y"],
                       {"reps": np.array([100, 100], np.int64)})
    with pytest.raises(InputError) as raised:
        TensorModel(tile).run(_f32(2, 3))
    message = str(raised.value)
    assert "node 'big' (Tile)" in message and "240000 bytes" in message and "limit of 10000 bytes" in message
    assert "grurt.model.MEMORY_LIMIT_BYTES" in message
    # a folded constant is checked the same way
    expand = TensorGraph(_x(), [node("Expand", ["one", "shape"], ["c"], "fold"), node("Add", ["x", "c"], ["y"])],
                         ["y"], {"one": np.ones(1, np.float32), "shape": np.array([1000, 3], np.int64)})
    with pytest.raises(InputError, match=r"node 'fold' \(Expand\)"):
        TensorModel(expand).run(_f32(2, 3))
    # tensors alive together: x, a and b of 360 bytes each do not fit in 1000 bytes (of 240, they do)
    pair = TensorGraph(_x(), [node("Neg", ["x"], ["a"], "a"), node("Abs", ["x"], ["b"], "b"),
                              node("Add", ["a", "b"], ["y"], "sum")], ["y"])
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 1000)
    with pytest.raises(InputError) as raised:
        TensorModel(pair).run(_f32(30, 3))
    assert "node 'b' (Abs)" in str(raised.value) and "720 bytes of tensors alive" in str(raised.value)
    assert np.array_equal(TensorModel(pair).run(np.ones((20, 3), np.float32)), np.zeros((20, 3)))


def test_tensors_released_after_last_use():
    graph = TensorGraph(_x(), [node("Neg", ["x"], ["a"]), node("Abs", ["a"], ["b"]), node("Relu", ["b"], ["y"])],
                        ["y"])
    plan = make_plan(graph, [((10, 3), np.dtype(np.float32))])
    # x and a are emptied after their last reader: never more than two of the 120-byte tensors at once
    assert plan.peak_bytes == 240
    assert [len(step[4]) for step in plan.steps] == [1, 1, 1]


# ---- inputs ----

def _two_inputs():
    inputs = [TensorInput("x", "float32", ("batch", 3)), TensorInput("ids", "int64", ("batch",))]
    nodes = [node("Gather", ["table", "ids"], ["rows"], axis=0), node("Add", ["x", "rows"], ["y"])]
    return TensorModel(TensorGraph(inputs, nodes, ["y"], {"table": _f32(5, 3)}))


@pytest.mark.parametrize("args, words", [
    ([_f32(2, 3), np.array([0.0, 1.0])], ["input 'ids'", "int64", "float64"]),
    ([_f32(2, 3), np.array([True, False])], ["input 'ids'", "bool"]),
    ([_f32(2, 4), np.array([0, 1])], ["input 'x'", "(batch, 3)", "(2, 4)"]),
    ([_f32(2, 3), np.array([0, 1, 2])], ["input 'ids'", "'batch'", "input 'x' has size 2"]),
    ([_f32(2, 3, 1), np.array([0, 1])], ["input 'x'", "(2, 3, 1)"]),
    ([_f32(2, 3)], ["2 inputs", "got 1"]),
    ({"x": _f32(2, 3), "idz": np.array([0, 1])}, ["unknown input 'idz'"]),
    ([np.array(["a", "b"]), np.array([0, 1])], ["input 'x'", "float32"]),
])
def test_input_checks_name_the_input(args, words):
    with pytest.raises(InputError) as raised:
        _two_inputs().run(args)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def test_input_conversions():
    model = _two_inputs()
    x, ids = _f32(2, 3), np.array([4, 0], np.int32)
    y = model.run({"ids": ids, "x": x})
    assert y.dtype == np.float32
    assert np.array_equal(model.run([x.astype(np.float64), ids.astype(np.uint8)]), y)
    assert np.array_equal(model.run([x.tolist(), ids.tolist()]), y)
    with pytest.raises(InputError, match="node 'rows' \\(Gather\\)"):      # an id out of range, found when run
        model.run([x, np.array([5, 0])])


def test_outputs_are_arrays_of_their_own():
    x = _f32(2, 3)
    graph = TensorGraph(_x(), [node("Identity", ["x"], ["y"]), node("Identity", ["c"], ["z"])], ["y", "z", "x"],
                        {"c": np.ones(3, np.float32)})
    y, z, same = TensorModel(graph).run(x)
    for out in (y, z, same):
        assert out.flags.writeable and out.base is None
    assert np.array_equal(y, x) and np.array_equal(same, x)
    z[:] = 5
    assert np.array_equal(TensorModel(graph).run(x)[1], np.ones(3))


# ---- the GRU op's inputs ----

def test_gru_weights_must_be_constants():
    graph = TensorGraph([TensorInput("x", "float32", (5, 2, 3)), TensorInput("W", "float32", (1, 12, 3))],
                        [node("GRU", ["x", "W", "R"], ["y"], "g", hidden_size=4)], ["y"], {"R": _f32(1, 12, 4)})
    with pytest.raises(UnsupportedModelError) as raised:
        TensorModel(graph).run([_f32(5, 2, 3), _f32(1, 12, 3)])
    assert "node 'g' (GRU)" in str(raised.value) and "'W'" in str(raised.value)


# ---- the model's surface ----

def test_pickle_is_data_and_runs_identically():
    model = TensorModel(gru_graph())
    x = _f32(2, 6, 4)
    data = pickle.dumps(model)
    for code in (b"_gru_run", b"_gru_prepare", b"grurt.ops", b"grurt.tensor_plan"):
        assert code not in data
    again = pickle.loads(data)
    for a, b in zip(model.run(x), again.run(x)):
        assert np.array_equal(a, b)
    assert again.input_names == ("x",) and again.output_names == ("probs", "h_n")


def test_describe_repr_stream():
    model = TensorModel(gru_graph())
    assert repr(model) == "<grurt.TensorModel inputs=['x'] outputs=['probs', 'h_n']: 15 nodes>"
    text = model.describe()
    assert "x: float32 (batch, time, 4)" in text and "y, h_n = GRU(x, W, R, B, _, h0;" in text
    with pytest.raises(InputError, match="capacity must be a positive integer"):
        model.stream_pool(0)


def test_threads_share_one_model():
    model = TensorModel(gru_graph())
    inputs = [_f32(b, t, 4, scale=1.0) for b, t in [(1, 3), (2, 9), (3, 5), (4, 7)] * 3]
    serial = [model.run(x) for x in inputs]
    results = [None] * len(inputs)

    def work(offset):
        for index in range(offset, len(inputs), 4):
            results[index] = model.run(inputs[index])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, expected in zip(results, serial):
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))


# ---- format 3.0 ----

def test_npz_round_trip_bit_for_bit(tmp_path):
    model = TensorModel(gru_graph())
    path = tmp_path / "m.npz"
    grurt.save(model, path, metadata={"by": "test"})
    header = grurt.formats.read_header(path)
    assert header["format_version"] == "3.0" and header["metadata"] == {"by": "test"}
    again = grurt.load(path)
    assert type(again) is TensorModel and again.input_names == model.input_names
    assert [n.attrs for n in again.graph.nodes][4]["value"].dtype == np.float32      # a tensor attribute
    for name, value in model.graph.constants.items():
        assert np.array_equal(again.graph.constants[name], value) and again.graph.constants[name].dtype == value.dtype
    x = _f32(2, 5, 4, scale=1.0)
    for a, b in zip(model.run(x), again.run(x)):
        assert np.array_equal(a, b)


def _hostile(tmp_path, edit, arrays=None):
    """A 3.0 file of gru_graph() with its header changed by ``edit`` (and arrays replaced or added)."""
    import json
    import zipfile

    path = tmp_path / "good.npz"
    grurt.save(TensorModel(gru_graph()), path)
    with zipfile.ZipFile(path) as archive:
        members = {name[:-4]: np.load(archive.open(name), allow_pickle=False) for name in archive.namelist()}
    header = json.loads(str(members.pop("header")))
    edit(header)
    members.update(arrays or {})
    bad = tmp_path / "bad.npz"
    np.savez(bad, header=np.array(json.dumps(header)), **members)
    return bad


def _constant_entry(header, name):
    return header["constants"][name]


@pytest.mark.parametrize("edit, arrays, error, words", [
    (lambda h: _constant_entry(h, "W").update(shape=[2**20, 2**20]), None, ModelFormatError,
     ["constant 'W'", "more than 268435456 parameters"]),
    (lambda h: _constant_entry(h, "W").update(dtype="float64"), None, ModelFormatError,
     ["constant 'W'", "dtype must be one of"]),
    (lambda h: _constant_entry(h, "W").update(shape=[2, 18, 5]), None, ModelFormatError,
     ["constant 'W'", "has shape (2, 18, 4), expected (2, 18, 5)"]),
    (lambda h: _constant_entry(h, "W").update(array="constant.99"), None, ModelFormatError,
     ["constant 'W'", "array 'constant.99' is missing"]),
    (lambda h: _constant_entry(h, "R").update(array=_constant_entry(h, "W")["array"]), None, ModelFormatError,
     ["constant 'R'", "must name an array of the file once"]),
    (lambda h: h["nodes"][6].update(op="Frobnicate"), None, UnsupportedModelError,
     ["node 'y' (Frobnicate): operator Frobnicate is not supported"]),
    (lambda h: h["nodes"][6]["attrs"].update(layout=[[1]]), None, ModelFormatError,
     ["node 6: attribute layout"]),
    (lambda h: h["nodes"][6]["attrs"].update(hidden_size=-3), None, ModelFormatError,
     ["node 'y' (GRU)", "hidden_size"]),
    (lambda h: h["nodes"][1].update(inputs=["shape", "nowhere"]), None, ModelFormatError,
     ["node 'batch' (Gather): input 'nowhere' is not defined"]),
    (lambda h: h.update(extra=1), None, ModelFormatError, ["unknown fields ['extra']"]),
    (lambda h: None, {"constant.77": np.zeros(3, np.float32)}, ModelFormatError, ["unexpected arrays"]),
])
def test_hostile_headers_are_refused(tmp_path, edit, arrays, error, words):
    with pytest.raises(error) as raised:
        grurt.load(_hostile(tmp_path, edit, arrays))
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def test_a_2x_reader_refuses_3_0(tmp_path, monkeypatch):
    import grurt.formats.npz as npz

    path = tmp_path / "m.npz"
    grurt.save(TensorModel(gru_graph()), path)
    monkeypatch.setattr(npz, "FORMAT_VERSION", (2, 0))
    with pytest.raises(UnsupportedModelError, match=r"grurt format 3.0, written by a newer grurt .* reads format 2.x"):
        grurt.load(path)
