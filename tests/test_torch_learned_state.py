"""Learned initial states from PyTorch and ONNX (issue 21): a torch module whose GRU starts from an
``nn.Parameter`` h0 broadcast over the batch (``h0.expand(-1, B, -1).contiguous()``, ``h0.repeat(1, B, 1)``)
converts through ``grurt.from_torch(module, example)`` to a fused :class:`grurt.Model` whose GRU layers hold
``initial_state`` (torch's rows L·D: layer k, direction d is row k·D + d), and so does an ONNX file whose GRU
reads a constant ``initial_h`` the same for every sequence (a batch-1 constant is broadcast over the batch).

Oracles: the torch module itself and onnxruntime on the exported file (onnx's ReferenceEvaluator for
layout 1, which onnxruntime refuses), at ATOL; runs at batches 1 and 3, which are not the example's.
Round trips (.npz), the run-time override and streams: exact (np.array_equal) where grurt claims
exactness, a stream against a whole-sequence run at STEP_TOL as in tests/test_graph_stream.py.
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.errors import ModelFormatError  # noqa: E402
from grurt.layers import GRU, Dense  # noqa: E402
from grurt.tensor_model import TensorModel  # noqa: E402
from tolerances import ATOL  # noqa: E402

FEATURES, HIDDEN, LAYERS, STEPS = 4, 5, 2, 7
STEP_TOL = 1e-6         # a stream vs a whole-sequence run, as in tests/test_graph_stream.py


class LearnedH0(torch.nn.Module):
    """A 2-layer GRU starting from a learned (L·D, 1, H) h0 broadcast over the batch, a Linear on every step;
    returns the output and h_n."""

    def __init__(self, bidirectional, broadcast):
        super().__init__()
        directions = 2 if bidirectional else 1
        self.gru = torch.nn.GRU(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True, bidirectional=bidirectional)
        self.fc = torch.nn.Linear(directions * HIDDEN, 3)
        self.h0 = torch.nn.Parameter(0.8 * torch.randn(LAYERS * directions, 1, HIDDEN))
        self.broadcast = broadcast

    def initial(self, batch):
        if self.broadcast == "expand":
            return self.h0.expand(-1, batch, -1).contiguous()
        return self.h0.repeat(1, batch, 1)

    def forward(self, x, h0=None):
        out, h_n = self.gru(x, self.initial(x.size(0)) if h0 is None else h0)
        return self.fc(out), h_n


def _torch(module, x, h0=None):
    with torch.no_grad():
        y, h_n = module(torch.from_numpy(x), None if h0 is None else torch.from_numpy(h0))
    return y.numpy(), h_n.numpy()


def _data(seed, batch, steps=STEPS):
    return np.random.default_rng(seed).standard_normal((batch, steps, FEATURES)).astype(np.float32)


CASES = [(bidirectional, broadcast) for bidirectional in (False, True) for broadcast in ("expand", "repeat")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{'bi' if b else 'uni'}-{how}" for b, how in CASES])
def converted(request):
    bidirectional, broadcast = request.param
    torch.manual_seed(21 + request.param_index)
    module = LearnedH0(bidirectional, broadcast).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = grurt.from_torch(module, _data(0, 2, 6))
    return module, model


def test_the_learned_h0_is_the_fused_models_initial_state(converted):
    module, model = converted
    assert isinstance(model, grurt.Model) and model.graph.as_chain() is not None
    h0 = module.h0.detach().numpy()[:, 0]                      # (L·D, H): layer k, direction d at row k·D + d
    grus = model.spec.gru_layers
    directions = grus[0].num_directions
    assert len(grus) == LAYERS
    for k, layer in enumerate(grus):
        assert np.array_equal(layer.initial_state, h0[k * directions:(k + 1) * directions])


@pytest.mark.parametrize("batch", [1, 3])
def test_runs_match_torch(converted, batch):
    module, model = converted
    x = _data(batch, batch)
    expected, h_n = _torch(module, x)
    out, states = model.run(x, return_state=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.concatenate(states), h_n, rtol=0, atol=ATOL)      # torch's h_n is (L·D, B, H)
    np.testing.assert_allclose(out, reference.run(model.spec, x), rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.run(x[0]), expected[0], rtol=0, atol=ATOL)     # one sequence (T, I)


def test_a_state_given_at_run_time_replaces_the_learned_one(converted):
    module, model = converted
    x = _data(4, 3)
    directions = model.spec.gru_layers[0].num_directions
    given = np.random.default_rng(5).standard_normal((LAYERS * directions, 3, HIDDEN)).astype(np.float32)
    expected, h_n = _torch(module, x, given)
    out, states = model.run(x, initial_state=list(given.reshape(LAYERS, directions, 3, HIDDEN)), return_state=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.concatenate(states), h_n, rtol=0, atol=ATOL)
    learned = [layer.default_state(3) for layer in model.spec.gru_layers]
    assert np.array_equal(model.run(x, initial_state=learned), model.run(x))


def test_npz_round_trip(converted, tmp_path):
    _, model = converted
    grurt.save(model, tmp_path / "h0.npz")
    loaded = grurt.load(tmp_path / "h0.npz")
    for a, b in zip(loaded.spec.gru_layers, model.spec.gru_layers):
        assert np.array_equal(a.initial_state, b.initial_state)
    x = _data(6, 3)
    assert np.array_equal(loaded.run(x), model.run(x))


def test_streams_start_from_the_learned_state(converted):
    module, model = converted
    if model.spec.gru_layers[0].num_directions == 2:
        with pytest.raises(grurt.InputError, match="bidirectional"):      # the backward pass needs the future
            model.stream()
        return
    x = _data(7, 3)
    stream = model.stream(batch=3)
    frames = np.stack([stream.step(x[:, t]) for t in range(STEPS)], axis=1)
    np.testing.assert_allclose(frames, model.run(x), rtol=0, atol=STEP_TOL)
    np.testing.assert_allclose(frames, _torch(module, x)[0], rtol=0, atol=ATOL)
    stream.reset()                                  # back to the learned state
    assert np.array_equal(stream.run(x), frames)


def _export(module, path, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(_data(0, batch)),), path, input_names=["x"],
                          output_names=["y", "h_n"], dynamic_axes={"x": {0: "batch", 1: "time"}},
                          opset_version=17, dynamo=False)
    return str(path)


def test_the_exported_file_matches_onnxruntime(converted, tmp_path):
    module, _ = converted
    path = _export(module, tmp_path / "h0.onnx", 2)
    model = grurt.load(path)
    assert isinstance(model, grurt.Model)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = _data(10 + batch, batch, 9)
        y, h_n = session.run(None, {"x": x})
        out, states = model.run(x, return_state=True)
        np.testing.assert_allclose(out, y, rtol=0, atol=ATOL)
        np.testing.assert_allclose(np.concatenate(states), h_n, rtol=0, atol=ATOL)
        np.testing.assert_allclose(out, _torch(module, x)[0], rtol=0, atol=ATOL)


def test_an_inference_session_runs_the_fused_model(tmp_path):
    """grurt.InferenceSession on an export whose one output is the sequence: fused, as onnxruntime."""

    class OneOutput(LearnedH0):
        def forward(self, x):
            return super().forward(x)[0]

    torch.manual_seed(6)
    module = OneOutput(True, "repeat").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(_data(0, 2)),), tmp_path / "y.onnx", input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 1: "t"}}, opset_version=17, dynamo=False)
    session = grurt.InferenceSession(str(tmp_path / "y.onnx"))
    assert session._fused
    x = _data(1, 3)
    (expected,) = ort.InferenceSession(str(tmp_path / "y.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=0, atol=ATOL)


class Feeding(torch.nn.Module):
    """A GRU with a learned h0 feeding a second GRU whose h0 is an input: forward(x, h) → (y, h_n)."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.GRU(FEATURES, HIDDEN, batch_first=True)
        self.second = torch.nn.GRU(HIDDEN, 6, batch_first=True)
        self.h0 = torch.nn.Parameter(torch.randn(1, 1, HIDDEN))

    def forward(self, x, h):
        y, _ = self.first(x, self.h0.expand(1, x.size(0), HIDDEN).contiguous())
        return self.second(y, h)


def test_a_file_state_input_for_one_gru_leaves_the_others_learned(tmp_path):
    """The file's names (run([x, h])) give the second GRU its state: the first starts from its learned one."""
    torch.manual_seed(3)
    module = Feeding().eval()
    x, h = _data(1, 3), np.random.default_rng(2).standard_normal((1, 3, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x), torch.from_numpy(h)), tmp_path / "f.onnx",
                          input_names=["x", "h"], output_names=["y", "h_n"],
                          dynamic_axes={"x": {0: "b", 1: "t"}, "h": {1: "b"}}, opset_version=17, dynamo=False)
    model = grurt.load(tmp_path / "f.onnx")
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.from_numpy(x), torch.from_numpy(h))]
    for got, want in zip(model.run([x, h]), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    out, (_, state) = model.run(x, initial_state=[model.spec.gru_layers[0].default_state(3), h], return_state=True)
    np.testing.assert_allclose(out, expected[0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(state, expected[1], rtol=0, atol=ATOL)


def test_an_h0_that_depends_on_the_batch_size_runs_as_a_general_graph():
    """A constant folded from the batch size other than a broadcast (h0 · B) differs at the two probe sizes:
    not a learned state; the general graph computes it."""

    class Scaled(LearnedH0):
        def initial(self, batch):
            return self.h0.expand(-1, batch, -1) * batch

    torch.manual_seed(4)
    module = Scaled(False, "expand").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = grurt.from_torch(module, _data(0, 2))
    assert isinstance(model, TensorModel)
    x = _data(1, 3)
    for got, want in zip(model.run(x), _torch(module, x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_builder_matches_torch_bidirectional_two_layers():
    """GRU.from_torch(..., initial_state=) per layer, from torch's (L·D, 1, H) rows."""
    torch.manual_seed(5)
    module = LearnedH0(True, "expand").eval()
    gru, h0 = module.gru, module.h0.detach().numpy()

    def layer(k):
        weights = [getattr(gru, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        reverse = [getattr(gru, f"{name}_l{k}_reverse") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return GRU.from_torch(*weights, reverse=reverse, initial_state=h0[2 * k:2 * k + 2])

    model = grurt.Model.chain([layer(0), layer(1), Dense.from_torch(module.fc.weight, module.fc.bias)])
    x = _data(8, 3)
    expected, h_n = _torch(module, x)
    out, states = model.run(x, return_state=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.concatenate(states), h_n, rtol=0, atol=ATOL)


# ---- ONNX files with a constant initial_h ----

def _gru_file(path, h0, batch, direction="forward", layout=0):
    """One GRU node (linear_before_reset=1) reading the initializer ``h0`` as initial_h; Y and Y_h out."""
    directions = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(9)
    weights = {"W": 0.6 * rng.standard_normal((directions, 3 * HIDDEN, FEATURES)),
               "R": 0.6 * rng.standard_normal((directions, 3 * HIDDEN, HIDDEN)),
               "B": 0.6 * rng.standard_normal((directions, 6 * HIDDEN)), "h0": h0}
    sequence = ["T", batch, FEATURES] if layout == 0 else [batch, "T", FEATURES]
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=HIDDEN,
                            direction=direction, linear_before_reset=1, **({"layout": 1} if layout else {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, sequence)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("Y", "Y_h")],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=8), path)
    return str(path)


def _onnx_states(Y, Y_h, layout):
    """ONNX Y, Y_h → grurt's (B, T, D·H) output and (D, B, H) state."""
    if layout == 0:
        return Y.transpose(2, 0, 1, 3).reshape(Y.shape[2], Y.shape[0], -1), Y_h
    return Y.reshape(Y.shape[0], Y.shape[1], -1), Y_h.transpose(1, 0, 2)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("batch", [1, "N"])
def test_a_batch_1_constant_initial_h_is_a_learned_state(tmp_path, direction, batch):
    """A file of batch 1 (or a dynamic batch, valid at 1 only: onnxruntime refuses other batches) whose
    initial_h is a (D, 1, H) initializer: grurt gives each sequence of any batch that state, as running
    the file on each sequence alone does."""
    directions = 2 if direction == "bidirectional" else 1
    h0 = np.random.default_rng(1).standard_normal((directions, 1, HIDDEN)).astype(np.float32)
    path = _gru_file(tmp_path / "g.onnx", h0, batch, direction)
    model = grurt.load(path)
    assert isinstance(model, grurt.Model)
    assert np.array_equal(model.spec.gru_layers[0].initial_state, h0[:, 0])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = _data(2, 3)
    per_sequence = [_onnx_states(*session.run(None, {"X": x[b:b + 1].transpose(1, 0, 2)}), 0) for b in range(3)]
    out, (state,) = model.run(x, return_state=True)
    np.testing.assert_allclose(out, np.concatenate([y for y, _ in per_sequence]), rtol=0, atol=ATOL)
    np.testing.assert_allclose(state, np.concatenate([h for _, h in per_sequence], axis=1), rtol=0, atol=ATOL)


def test_a_constant_initial_h_of_the_files_batch_with_layout_1(tmp_path):
    """Layout 1 (B, D, H), the same state in each of the batch's 3 rows: checked against onnx's evaluator."""
    from onnx.reference import ReferenceEvaluator

    h0 = np.random.default_rng(3).standard_normal((1, 2, HIDDEN)).astype(np.float32)
    path = _gru_file(tmp_path / "g.onnx", np.repeat(h0, 3, axis=0), 3, "bidirectional", layout=1)
    model = grurt.load(path)
    assert isinstance(model, grurt.Model) and np.array_equal(model.spec.gru_layers[0].initial_state, h0[0])
    x = _data(4, 3)
    expected, expected_state = _onnx_states(*ReferenceEvaluator(path).run(None, {"X": x}), 1)
    out, (state,) = model.run(x, return_state=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(state, expected_state, rtol=0, atol=ATOL)


def test_a_constant_initial_h_per_sequence_runs_as_a_general_graph(tmp_path):
    """Rows that differ between the sequences are no learned state: the file's ops run as they are."""
    h0 = np.random.default_rng(5).standard_normal((1, 3, HIDDEN)).astype(np.float32)
    path = _gru_file(tmp_path / "g.onnx", h0, 3)
    model = grurt.load(path)
    assert isinstance(model, TensorModel)
    x = _data(6, 3).transpose(1, 0, 2)
    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"X": x})
    for got, want in zip(model.run(x), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("shape", [(1, 2, HIDDEN), (2, 1, HIDDEN), (1, 1, HIDDEN + 1), (1, HIDDEN)])
def test_a_constant_initial_h_of_another_shape_is_refused(tmp_path, shape):
    path = _gru_file(tmp_path / "g.onnx", np.ones(shape), 3)
    with pytest.raises(ModelFormatError, match=r"GRU\).*initial_h is a constant of shape " + rf"\({shape[0]}, "
                       r".*expected \(1, 3 or 1, 5\)"):
        grurt.load(path)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_constant_initial_h_that_is_not_finite_is_refused(tmp_path, value):
    path = _gru_file(tmp_path / "g.onnx", np.full((1, 3, HIDDEN), value), 3)
    with pytest.raises(ModelFormatError, match=r"GRU\).*initial_h contains NaN or infinity"):
        grurt.load(path)


@pytest.mark.parametrize("repeats, message", [([1, 2**40, 1], "too large"),
                                              ([1, -1, 1], r"repeats \[1, -1, 1\] must be 3 non-negative integers"),
                                              ([1, 3], r"repeats \[1, 3\] must be 3 non-negative")])
def test_tile_repeats_are_checked(tmp_path, repeats, message):
    """Tile (what h0.repeat(1, B, 1) exports) of the file's constants: its repeats bounded before anything
    is allocated."""
    path = _gru_file(tmp_path / "g.onnx", np.ones((1, 1, HIDDEN)), 3)
    model = onnx.load(path)
    tile = helper.make_node("Tile", ["h0", "repeats"], ["tiled"], name="tile")
    model.graph.node.insert(0, tile)
    model.graph.node[1].input[5] = "tiled"
    model.graph.initializer.append(numpy_helper.from_array(np.array(repeats, np.int64), "repeats"))
    onnx.save(model, path)
    with pytest.raises(ModelFormatError, match=r"node 'tile' \(Tile\).*" + message):
        grurt.load(path)
