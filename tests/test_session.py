"""grurt.InferenceSession against onnxruntime.InferenceSession on the same files: the same input and
output names, shapes (symbolic dims included) and type strings, the same outputs (ATOL) in the file's
layouts, for every output and for subsets; bad feeds each a named error."""
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper  # noqa: E402

import grurt  # noqa: E402
from grurt.errors import InputError  # noqa: E402
from test_onnx_conformance import CASES, to_model  # noqa: E402
from test_onnx_handbuilt import gru_graph  # noqa: E402
from tolerances import ATOL  # noqa: E402

RNG = np.random.default_rng(7)


class Forecaster(torch.nn.Module):            # W1's shape: the fused model serves the session
    def __init__(self):
        super().__init__()
        self.gru, self.fc = torch.nn.GRU(1, 16, batch_first=True), torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.fc(self.gru(x)[0][:, -1])


class StatefulTimeMajor(torch.nn.Module):     # x (T, B, I), h0 (2, B, H) -> y (T, B, H), h_n
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(3, 8, num_layers=2)

    def forward(self, x, h0):
        return self.gru(x, h0)


def torch_file(folder, name, module, args, names, outputs, axes):
    torch.manual_seed(0)
    path = str(folder / f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, path, input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    return path


def tf2onnx_style(path):
    """What tf2onnx writes for a Keras GRU(reset_after=True) → Dense: (B, T, I) transposed to time-major,
    a GRU node with linear_before_reset=1, its Y squeezed on the direction axis and transposed back."""
    from onnx import numpy_helper
    rng = np.random.default_rng(3)
    weights = {"W": 0.5 * rng.standard_normal((1, 15, 4)), "R": 0.5 * rng.standard_normal((1, 15, 5)),
               "B": 0.5 * rng.standard_normal((1, 30)), "axes": np.array([1]), "kernel": rng.standard_normal((5, 2)),
               "bias": rng.standard_normal(2)}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R", "B"], ["Y"], hidden_size=5, linear_before_reset=1),
             helper.make_node("Squeeze", ["Y", "axes"], ["Ys"]),
             helper.make_node("Transpose", ["Ys"], ["y"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["y", "kernel"], ["d"]), helper.make_node("Add", ["d", "bias"], ["out"])]
    graph = helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["batch", "time", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "time", 2])],
                              [numpy_helper.from_array(np.asarray(v, np.float32 if v.dtype.kind == "f" else np.int64), k)
                               for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return str(path)


def feed_for(session, sizes):
    """Random inputs for the session's declared inputs, symbolic dims taken from ``sizes``."""
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else sizes[d] for d in arg.shape]
        if arg.type == "tensor(float)":
            feed[arg.name] = RNG.standard_normal(shape).astype(np.float32)
        else:   # sequence lengths: each at most the time dim
            feed[arg.name] = RNG.integers(1, sizes["T"] + 1, shape).astype(np.int32)
    return feed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> (path, {dim name: size}) for the hand-built, exported and conformance files."""
    folder = tmp_path_factory.mktemp("session")
    files = {}
    for direction in ("forward", "reverse", "bidirectional"):
        for lbr in (0, 1):
            files[f"gru_{direction}_lbr{lbr}"] = (
                gru_graph(folder / f"gru_{direction}_{lbr}.onnx", direction, state_input=True, lengths_input=True,
                          linear_before_reset=lbr), {"T": 5, "N": 2})
    files["forecaster"] = (torch_file(folder, "forecaster", Forecaster(), (torch.randn(2, 7, 1),), ["x"], ["y"],
                                      {"x": {0: "batch", 1: "time"}}), {"batch": 3, "time": 9})
    files["stateful_time_major"] = (
        torch_file(folder, "stateful", StatefulTimeMajor(), (torch.randn(7, 2, 3), torch.randn(2, 2, 8)),
                   ["x", "h0"], ["y", "h_n"], {"x": {0: "time", 1: "batch"}, "h0": {1: "batch"}}),
        {"batch": 3, "time": 6})
    files["tf2onnx_style"] = (tf2onnx_style(folder / "tf2onnx.onnx"), {"batch": 3, "time": 7})
    dynamo = str(folder / "forecaster_dynamo.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        torch.onnx.export(Forecaster().eval(), (torch.randn(2, 7, 1),), dynamo, input_names=["x"], dynamo=True,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}},
                          verbose=False)
    files["forecaster_dynamo"] = (dynamo, {"batch": 3, "time": 9})
    for name, node, inputs, outputs in CASES:
        case_folder = folder / name
        case_folder.mkdir()
        files[name] = (to_model(case_folder, node, inputs, outputs)[0], {})
    return files


def ort_session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_the_corpus_has_both_paths(corpus):
    assert grurt.InferenceSession(corpus["forecaster"][0])._fused
    assert not grurt.InferenceSession(corpus["stateful_time_major"][0])._fused


@pytest.mark.parametrize("name,node,inputs,outputs", CASES, ids=[case[0] for case in CASES])
def test_session_runs_the_conformance_cases(corpus, name, node, inputs, outputs):
    """The ONNX backend's own expected outputs are the oracle (onnxruntime refuses layout=1)."""
    session = grurt.InferenceSession(corpus[name][0])
    present = [n for n in node.input if n]
    feed = {arg.name: dict(zip(present, inputs))[arg.name] for arg in session.get_inputs()}
    got = session.run(None, feed)
    assert [arg.name for arg in session.get_outputs()] == [n for n in node.output if n]
    for a, b in zip(got, outputs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["gru_forward_lbr0", "gru_reverse_lbr1", "gru_bidirectional_lbr0",
                                  "gru_bidirectional_lbr1", "forecaster", "stateful_time_major", "tf2onnx_style",
                                  "forecaster_dynamo"]
                         + [case[0] for case in CASES if case[0] != "test_gru_batchwise"])
def test_session_matches_onnxruntime(corpus, name):
    path, sizes = corpus[name]
    ours, theirs = grurt.InferenceSession(path), ort_session(path)
    for mine, other in zip(ours.get_inputs() + ours.get_outputs(), theirs.get_inputs() + theirs.get_outputs()):
        assert (mine.name, mine.shape, mine.type) == (other.name, other.shape, other.type)
    assert len(ours.get_inputs()) == len(theirs.get_inputs())
    assert len(ours.get_outputs()) == len(theirs.get_outputs())
    feed = feed_for(ours, sizes)
    expected = theirs.run(None, feed)
    got = ours.run(None, feed)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    names = [arg.name for arg in ours.get_outputs()][::-1]
    for a, b in zip(ours.run(names, feed), theirs.run(names, feed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def test_layout_1_gru_gives_batch_first_outputs(tmp_path):
    """onnxruntime refuses layout=1: the layout-0 file's outputs, transposed, are the oracle."""
    sizes = {"T": 5, "N": 2}
    ours = grurt.InferenceSession(gru_graph(tmp_path / "l1.onnx", "bidirectional", layout=1))
    reference = ort_session(gru_graph(tmp_path / "l0.onnx", "bidirectional", layout=0))
    x = RNG.standard_normal((2, 5, 3)).astype(np.float32)
    Y, Y_h = ours.run(None, {"X": x})
    Y0, Y_h0 = reference.run(None, {"X": x.transpose(1, 0, 2).copy()})
    np.testing.assert_allclose(Y, Y0.transpose(2, 0, 1, 3), rtol=0, atol=ATOL)    # (B, T, D, H)
    np.testing.assert_allclose(Y_h, Y_h0.transpose(1, 0, 2), rtol=0, atol=ATOL)   # (B, D, H)
    assert [a.shape for a in ours.get_inputs()] == [["N", "T", 3]] and sizes


def test_session_from_bytes_ignores_providers(corpus):
    path, sizes = corpus["forecaster"]
    with open(path, "rb") as handle:
        data = handle.read()
    session = grurt.InferenceSession(data, sess_options=None, providers=["CUDAExecutionProvider"])
    feed = feed_for(session, sizes)
    np.testing.assert_array_equal(session.run(None, feed)[0], grurt.InferenceSession(path).run(None, feed)[0])
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_session_and_load_give_the_same_numbers(corpus):
    path, sizes = corpus["forecaster"]
    session = grurt.InferenceSession(path)
    feed = feed_for(session, sizes)
    np.testing.assert_array_equal(session.run(None, feed)[0], grurt.load(path).run(feed["x"]))


@pytest.mark.parametrize("name", ["forecaster", "stateful_time_major"])
def test_bad_feeds_are_named(corpus, name):
    path, sizes = corpus[name]
    session = grurt.InferenceSession(path)
    feed = feed_for(session, sizes)
    first = session.get_inputs()[0].name
    with pytest.raises(InputError, match=f"input '{first}' is missing"):
        session.run(None, {k: v for k, v in feed.items() if k != first})
    with pytest.raises(InputError, match="unknown input 'extra'"):
        session.run(None, {**feed, "extra": feed[first]})
    with pytest.raises(InputError, match=rf"input '{first}' must be tensor\(float\), got tensor\(double\)"):
        session.run(None, {**feed, first: feed[first].astype(np.float64)})
    with pytest.raises(InputError, match=f"input '{first}' must have rank 3"):
        session.run(None, {**feed, first: feed[first][0]})
    with pytest.raises(InputError, match="unknown output name 'nope'"):
        session.run(["nope"], feed)
    with pytest.raises(InputError, match="input_feed must be a dict"):
        session.run(None, [feed[first]])


def test_unknown_dims_and_types_are_shown_as_onnxruntime_shows_them(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    gru = helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=2, layout=1)
    weights = [helper.make_tensor("W", TensorProto.FLOAT, [1, 6, 3], np.ones(18) * 0.1),
               helper.make_tensor("R", TensorProto.FLOAT, [1, 6, 2], np.ones(12) * 0.1)]
    model = helper.make_model(helper.make_graph([gru], "g", [x], [y], weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    session = grurt.InferenceSession(model.SerializeToString())
    assert (session.get_inputs()[0].shape, session.get_inputs()[0].type) == (["batch", None, 3], "tensor(float)")
    assert session.get_outputs()[0].type == "tensor(float)"


class BidirectionalStack(torch.nn.Module):    # h0 (4, B, H): rows layer0 fwd, layer0 bwd, layer1 fwd, layer1 bwd
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x, h0):
        return self.gru(x, h0)


@pytest.mark.parametrize("name", ["stateful_time_major", "bidirectional_stack"])
def test_load_takes_the_files_states_by_name(corpus, tmp_path, name):
    """grurt's own API (batch-first sequences) takes a one-path file's state inputs by the file's names
    and returns every output of the file; onnxruntime on the file is the oracle, and the chain's
    initial_state= / return_state=True give the same bits."""
    if name == "bidirectional_stack":
        path = torch_file(tmp_path, name, BidirectionalStack(), (torch.randn(2, 7, 3), torch.randn(4, 2, 5)),
                          ["x", "h0"], ["y", "h_n"], {"x": {0: "batch", 1: "time"}, "h0": {1: "batch"}})
        x = RNG.standard_normal((3, 6, 3)).astype(np.float32)
        h0 = RNG.standard_normal((4, 3, 5)).astype(np.float32)
        expected = ort_session(path).run(None, {"x": x, "h0": h0})
        x_batch_first = x
    else:
        path = corpus[name][0]
        x = RNG.standard_normal((6, 3, 3)).astype(np.float32)              # (T, B, I) in the file
        h0 = RNG.standard_normal((2, 3, 8)).astype(np.float32)
        y, h_n = ort_session(path).run(None, {"x": x, "h0": h0})
        expected = [y.transpose(1, 0, 2), h_n]                              # grurt's API is batch first
        x_batch_first = np.ascontiguousarray(x.transpose(1, 0, 2))
    model = grurt.load(path)
    assert model.input_names == ("x",)            # run(x) keeps grurt's chain API
    y, h_n = model.run({"x": x_batch_first, "h0": h0})
    np.testing.assert_allclose(y, expected[0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(h_n, expected[1], rtol=0, atol=ATOL)
    listed = model.run([x_batch_first, h0])
    assert all(np.array_equal(a, b) for a, b in zip(listed, (y, h_n)))
    layers = len(model.spec.gru_layers)
    directions = model.spec.gru_layers[0].num_directions
    out, states = model.run(x_batch_first, initial_state=[h0[k * directions:(k + 1) * directions]
                                                           for k in range(layers)], return_state=True)
    assert np.array_equal(out, y) and np.array_equal(np.concatenate(states), h_n)
    with pytest.raises(InputError, match="input 'h0' must be a state"):
        model.run({"x": x_batch_first, "h0": h0[:1]})
