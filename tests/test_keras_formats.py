"""Keras files without Keras: the committed tf.keras 2 legacy .h5 file (Keras 2 semantics) and
malformed files, each refused with a precise error.

tests/data/keras2_gru_hard_sigmoid.h5 was written by tests/data/make_keras2_h5.py with h5py in
tf.keras 2's layout, not by tf.keras (TensorFlow is not installable here). Its expected outputs
are computed below, independently of grurt's Keras reader: by a plain numpy implementation of
tf.keras 2's GRU step and by grurt.reference on a spec built by hand. None come from tf.keras.
"""
import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import grurt
from grurt import reference
from grurt.verify import keras_outputs
from grurt.spec import GRU, Dense, ModelSpec, activation
from tolerances import ATOL

DATA = Path(__file__).parent / "data"
KERAS2_FILE = DATA / "keras2_gru_hard_sigmoid.h5"


def raw_weights(path=KERAS2_FILE):
    """The arrays at the paths tf.keras 2 uses, read without grurt."""
    gru = ("gru_cell/kernel:0", "gru_cell/recurrent_kernel:0", "gru_cell/bias:0")
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        return {name: [np.asarray(group[f"{name}/{name}/{w}"], np.float64) for w in weights]
                for name, weights in (("gru", gru), ("gru_1", gru), ("dense", ("kernel:0", "bias:0")))}


def keras2_gru(x, kernel, recurrent_kernel, bias, return_sequences):
    """tf.keras 2 ``GRU(reset_after=False, recurrent_activation="hard_sigmoid")``, step by step."""
    units = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        x_z, x_r, x_h = np.split(x[:, t] @ kernel + bias, 3, axis=-1)
        z = np.clip(0.2 * (x_z + h @ recurrent_kernel[:, :units]) + 0.5, 0.0, 1.0)
        r = np.clip(0.2 * (x_r + h @ recurrent_kernel[:, units:2 * units]) + 0.5, 0.0, 1.0)
        hh = np.tanh(x_h + (r * h) @ recurrent_kernel[:, 2 * units:])
        h = z * h + (1 - z) * hh
        outputs.append(h)
    return np.stack(outputs, axis=1) if return_sequences else h


def keras2_model(x, w):
    h = keras2_gru(x, *w["gru"], return_sequences=True)
    h = keras2_gru(h, *w["gru_1"], return_sequences=False)
    return h @ w["dense"][0] + w["dense"][1]


def hand_built_spec(w, gate_alpha):
    """The canonical spec written out by hand: Keras kernels transposed, Rb = 0."""
    gate = activation("hard_sigmoid", gate_alpha, 0.5)

    def gru(kernel, recurrent_kernel, bias, return_sequences):
        B = np.concatenate([bias, np.zeros_like(bias)])
        return GRU(kernel.T[None], recurrent_kernel.T[None], B[None], gate_activation=gate,
                   return_sequences=return_sequences)
    return ModelSpec(2, (gru(*w["gru"], True), gru(*w["gru_1"], False), Dense(w["dense"][0].T, w["dense"][1])))


@pytest.fixture(scope="module")
def x():
    return 1.5 * np.random.default_rng(11).standard_normal((5, 6, 2)).astype(np.float32)


def test_keras2_file_matches_numpy_keras2(x):
    expected = keras2_model(x.astype(np.float64), raw_weights())
    out = grurt.load(KERAS2_FILE).run(x)
    assert out.shape == (5, 2)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)


def test_keras2_file_matches_reference(x):
    w = raw_weights()
    expected = reference.run(hand_built_spec(w, 0.2), x)
    np.testing.assert_allclose(expected, keras2_model(x.astype(np.float64), w), rtol=0, atol=1e-6)
    model = grurt.load(KERAS2_FILE)
    np.testing.assert_allclose(model.run(x), expected, rtol=0, atol=ATOL)
    # the test can tell the formulas apart: Keras 3's hard_sigmoid gives other numbers
    keras3 = reference.run(hand_built_spec(w, 1 / 6), x)
    assert np.abs(keras3 - expected).max() > 1e-2


def edited_copy(tmp_path, edit):
    """A copy of the Keras 2 file, opened for writing and passed to ``edit``."""
    path = tmp_path / "edited.h5"
    shutil.copy(KERAS2_FILE, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_keras_version_chooses_hard_sigmoid(tmp_path):
    path = edited_copy(tmp_path, lambda f: f.attrs.modify("keras_version", "3.0.0"))
    alphas = [grurt.load(p).layers[0].gate_activation.alpha for p in (KERAS2_FILE, path)]
    assert alphas == [pytest.approx(0.2), pytest.approx(1 / 6)]


def test_script_reproduces_committed_file():
    spec = importlib.util.spec_from_file_location("make_keras2_h5", DATA / "make_keras2_h5.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with h5py.File(KERAS2_FILE, "r") as f:
        assert json.loads(f.attrs["model_config"]) == script.MODEL_CONFIG
        for layer, arrays in script.weights(np.random.default_rng(script.SEED)).items():
            for name, value in arrays:
                np.testing.assert_array_equal(f[f"model_weights/{layer}/{name}"], value)


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is not None, reason="tf_keras computes Keras 2 itself")
def test_framework_outputs_refuses_keras2_hard_sigmoid(x):
    pytest.importorskip("keras")
    with pytest.raises(ImportError, match="saved by Keras 2.12.0 and uses hard_sigmoid"):
        keras_outputs(KERAS2_FILE, x)


# ---- malformed files ----

def copy_with_config(tmp_path, edit):
    """A copy of the Keras 2 file whose layer configs went through ``edit``."""
    def edit_config(f):
        config = json.loads(f.attrs["model_config"])
        edit(config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
    return edited_copy(tmp_path, edit_config)


def replace_dataset(name, value):
    """An edit for edited_copy that puts ``value`` in place of the dataset ``name``."""
    def edit(f):
        del f[name]
        f[name] = value
    return edit


def keras_archive(tmp_path, files):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


CONFIG = json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": [
    {"class_name": "InputLayer", "config": {"batch_shape": [None, 4, 1], "name": "input_layer"}},
    {"class_name": "GRU", "config": {"name": "gru", "units": 2}}]}})


def test_keras_archive_without_weights(tmp_path):
    path = keras_archive(tmp_path, {"metadata.json": '{"keras_version": "3.15.1"}', "config.json": CONFIG})
    with pytest.raises(grurt.ModelFormatError, match="no model.weights.h5, so no weights"):
        grurt.load(path)


def test_keras_archive_config_not_json(tmp_path):
    path = keras_archive(tmp_path, {"config.json": "{'class_name': Sequential", "model.weights.h5": b""})
    with pytest.raises(grurt.ModelFormatError, match="config.json is not valid JSON"):
        grurt.load(path)


def test_h5_config_not_json(tmp_path):
    path = edited_copy(tmp_path, lambda f: f.attrs.modify("model_config", b"{not json"))
    with pytest.raises(grurt.ModelFormatError, match="model_config is not valid JSON"):
        grurt.load(path)


def test_h5_weights_contradict_config(tmp_path):
    def widen(layers):
        layers[1]["config"]["units"] = 5
    with pytest.raises(grurt.ModelFormatError, match=r"layer 'gru' \(GRU\): kernel has shape \(2, 12\), "
                                                       r"expected \(2, 15\)"):
        grurt.load(copy_with_config(tmp_path, widen))


def test_h5_weight_of_wrong_shape(tmp_path):
    path = edited_copy(tmp_path, replace_dataset("model_weights/dense/dense/kernel:0", np.zeros((4, 2), np.float32)))
    with pytest.raises(grurt.ModelFormatError, match=r"layer 'dense' \(Dense\): kernel has shape \(4, 2\), "
                                                       r"expected \(3, 2\)"):
        grurt.load(path)


def test_h5_missing_weights(tmp_path):
    path = edited_copy(tmp_path, lambda f: f.pop("model_weights/gru_1/gru_1/gru_cell/bias:0"))
    with pytest.raises(grurt.ModelFormatError, match="weights of layer 'gru_1' are missing"):
        grurt.load(path)


def test_h5_unknown_layer(tmp_path):
    def rename(layers):
        layers[2]["class_name"] = "SimpleRNN"
    with pytest.raises(grurt.UnsupportedModelError, match=r"layer 'gru_1' \(SimpleRNN\) is not supported"):
        grurt.load(copy_with_config(tmp_path, rename))


def test_h5_weights_only(tmp_path):
    path = tmp_path / "model.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers")
    with pytest.raises(grurt.ModelFormatError, match="holds weights only"):
        grurt.load(path)


def test_not_a_keras_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"GRU" * 100)
    with pytest.raises(grurt.ModelFormatError, match="neither a .keras archive"):
        grurt.load(path)


def test_subclassed_model_config(tmp_path):
    path = keras_archive(tmp_path, {"config.json": json.dumps({"class_name": "MyModel", "config": {"units": 3}}),
                                    "model.weights.h5": b""})
    with pytest.raises(grurt.UnsupportedModelError, match="MyModel models are not supported"):
        grurt.load(path)


def test_h5_hostile_layer_config(tmp_path):
    def corrupt(layers):
        layers[2] = {"class_name": "Bidirectional", "config": {"name": "gru_1", "layer": 5}}
    with pytest.raises(grurt.ModelFormatError, match=r"layer 'gru_1' \(Bidirectional\): malformed config"):
        grurt.load(copy_with_config(tmp_path, corrupt))


def test_h5_weight_that_is_not_numeric(tmp_path):
    path = edited_copy(tmp_path, replace_dataset("model_weights/dense/dense/bias:0", np.array([b"a", b"b"])))
    with pytest.raises(grurt.ModelFormatError, match="bias:0 is not a numeric dataset"):
        grurt.load(path)
