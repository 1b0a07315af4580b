"""grurt.layers builders and Model.chain against the frameworks (max abs difference ≤ ATOL = 1e-5):
PyTorch modules, Keras 3 layers (KERAS_BACKEND=torch) and onnxruntime on a hand-built ONNX GRU node."""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt.layers import GRU, Dense, LastStep, Merge

from gru_testing import ATOL

X = np.random.default_rng(0).standard_normal((3, 8, 4)).astype(np.float32)


def test_torch_builders_match_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    gru, fc = torch.nn.GRU(4, 5, batch_first=True, bidirectional=True), torch.nn.Linear(10, 3)
    p = dict(gru.named_parameters())
    model = grurt.Model.chain([
        GRU.from_torch(p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"],
                       reverse=(p["weight_ih_l0_reverse"], p["weight_hh_l0_reverse"],
                                p["bias_ih_l0_reverse"], p["bias_hh_l0_reverse"])),
        LastStep(), Dense.from_torch(fc.weight, fc.bias, activation="tanh")])
    with torch.no_grad():
        want = torch.tanh(fc(gru(torch.from_numpy(X))[0][:, -1])).numpy()
    assert model.input_size == 4
    assert np.abs(model.run(X) - want).max() <= ATOL                      # ≤ 1e-5
    # numpy arrays, no biases, a GRUCell's parameters
    cell = torch.nn.GRUCell(4, 6, bias=False)
    layer = GRU.from_torch(cell.weight_ih.detach().numpy(), cell.weight_hh.detach().numpy())
    h, states = torch.zeros(3, 6), []
    with torch.no_grad():
        for t in range(X.shape[1]):
            h = cell(torch.from_numpy(X[:, t]), h)
            states.append(h)
    out = grurt.Model.chain([layer]).run(X)
    assert np.abs(out - torch.stack(states, 1).numpy()).max() <= ATOL     # ≤ 1e-5


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_builders_match_keras(keras, reset_after):
    keras.utils.set_random_seed(1)
    layer = keras.layers.GRU(5, return_sequences=True, reset_after=reset_after,
                             recurrent_activation="hard_sigmoid", bias_initializer="random_normal")
    dense = keras.layers.Dense(2, activation="sigmoid", bias_initializer="random_normal")
    want = keras.ops.convert_to_numpy(dense(layer(X)))
    kernel, recurrent, bias = layer.get_weights()
    model = grurt.Model.chain([GRU.from_keras(kernel, recurrent, bias, reset_after=reset_after,
                                              recurrent_activation="hard_sigmoid"),
                               Dense.from_keras(*dense.get_weights(), activation="sigmoid")])
    assert np.abs(model.run(X) - want).max() <= ATOL                      # ≤ 1e-5


def test_keras_bidirectional_builder_with_merge(keras):
    keras.utils.set_random_seed(2)
    layer = keras.layers.Bidirectional(keras.layers.GRU(3, bias_initializer="random_normal"), merge_mode="sum")
    want = keras.ops.convert_to_numpy(layer(X))
    w = layer.get_weights()
    model = grurt.Model.chain([GRU.from_keras(*w[:3], backward=w[3:], return_sequences=False), Merge("sum")])
    assert np.abs(model.run(X) - want).max() <= ATOL                      # ≤ 1e-5


@pytest.mark.parametrize("direction, lbr", [("forward", 0), ("reverse", 1), ("bidirectional", 0)])
def test_onnx_builder_matches_onnxruntime(direction, lbr, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper, save
    D = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(3)
    W, R, B = (0.6 * rng.standard_normal(s).astype(np.float32) for s in ((D, 15, 4), (D, 15, 5), (D, 30)))
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=5, direction=direction,
                            linear_before_reset=lbr, activations=["HardSigmoid", "Tanh"] * D,
                            activation_alpha=[0.3] * D, activation_beta=[0.4] * D)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))])
    path = str(tmp_path / "gru.onnx")
    save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=9), path)
    Y = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"X": X.transpose(1, 0, 2)})[0]
    want = Y.transpose(2, 0, 1, 3).reshape(3, 8, D * 5)                   # (T, D, B, H) → (B, T, D·H)
    layer = GRU.from_onnx(W, R, B, linear_before_reset=lbr, direction=direction,
                          activations=["HardSigmoid", "Tanh"] * D, activation_alpha=[0.3] * D,
                          activation_beta=[0.4] * D)
    assert np.abs(grurt.Model.chain([layer]).run(X) - want).max() <= ATOL  # ≤ 1e-5
    if direction == "forward":   # 2-D W/R, 1-D B: one direction
        same = GRU.from_onnx(W[0], R[0], B[0], linear_before_reset=lbr, activations=["HardSigmoid", "Tanh"],
                             activation_alpha=[0.3], activation_beta=[0.4])
        assert np.array_equal(grurt.Model.chain([same]).run(X), grurt.Model.chain([layer]).run(X))


def test_builder_errors_and_chain():
    with pytest.raises(grurt.ModelFormatError, match="bias has shape"):
        GRU.from_keras(np.zeros((4, 9)), np.zeros((3, 9)), np.zeros(9), reset_after=True)
    with pytest.raises(grurt.ModelFormatError, match="directions' weights differ"):
        GRU.from_torch(np.zeros((9, 4)), np.zeros((9, 3)), reverse=(np.zeros((12, 4)), np.zeros((12, 4))))
    with pytest.raises(grurt.ModelFormatError, match="no GRU, Dense or Scale layer tells the input size"):
        grurt.Model.chain([LastStep()])
    with pytest.raises(grurt.ModelFormatError, match="expects 7 input features but receives 3"):
        grurt.Model.chain([GRU.from_torch(np.zeros((9, 4)), np.zeros((9, 3))), Dense.from_torch(np.zeros((2, 7)))])
    layer = GRU(np.zeros((1, 9, 4)), np.zeros((1, 9, 3)), np.zeros((1, 18)))   # the canonical constructor
    assert isinstance(layer, grurt.spec.GRU)
    assert grurt.Model.chain([layer], input_size=4).output_size == 3
