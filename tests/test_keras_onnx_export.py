"""A Keras 3 model's own ONNX export (``model.export(path, format="onnx")``, torch backend):
Keras writes its GRU unrolled over the fixed number of steps the model declares (MatMul, Slice,
Sigmoid, Tanh, Mul and Add per step, no GRU op). grurt runs such a file as a general graph; its
outputs are checked against Keras ``predict`` and onnxruntime on the same file (``ATOL``)."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import grurt  # noqa: E402
from grurt.errors import InputError  # noqa: E402
from tolerances import ATOL  # noqa: E402

STEPS, FEATURES = 12, 5


def exported(tmp_path, build):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((STEPS, FEATURES))
    model = keras.Model(inputs, build(inputs))
    x = np.random.default_rng(5).standard_normal((3, STEPS, FEATURES)).astype(np.float32)
    expected = model.predict(x, verbose=0)             # a model is exported after it has been called
    path = str(tmp_path / "keras.onnx")
    model.export(path, format="onnx", verbose=False)
    return path, x, expected


@pytest.mark.parametrize("name, build", [
    ("gru_dense", lambda i: keras.layers.Dense(3)(keras.layers.GRU(8, return_sequences=True)(i))),
    ("stacked_last_step", lambda i: keras.layers.Dense(4, activation="softmax")(
        keras.layers.GRU(6)(keras.layers.GRU(7, return_sequences=True, reset_after=False)(i)))),
    ("bidirectional", lambda i: keras.layers.Bidirectional(keras.layers.GRU(5, return_sequences=True))(i)),
])
def test_unrolled_gru_export_runs_as_keras_computes_it(tmp_path, name, build):
    path, x, expected = exported(tmp_path, build)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "GRU" not in ops and {"MatMul", "Sigmoid", "Tanh"} <= ops     # unrolled by Keras
    model = grurt.load(path)
    assert isinstance(model, grurt.TensorModel)
    got = model.run(x)
    (feed_name,) = model.input_names
    (by_ort,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {feed_name: x})
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= ATOL
    assert np.abs(got - by_ort).max() <= ATOL
    assert np.abs(model.run(x[:1]) - expected[:1]).max() <= ATOL      # the batch stays free


def test_the_fixed_number_of_steps_is_an_input_error(tmp_path):
    path, x, _ = exported(tmp_path, lambda i: keras.layers.GRU(4)(i))
    model = grurt.load(path)
    with pytest.raises(InputError, match=rf"must have shape \(batch, {STEPS}, {FEATURES}\), got \(3, 7, 5\)"):
        model.run(x[:, :7])
