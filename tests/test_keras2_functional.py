"""Keras 2 functional .h5 files read as graphs (issue 21): legacy ``inbound_nodes`` lists, an RNN
node listing its initial state after its sequence, Keras 2's hard_sigmoid, a Bidirectional GRU,
two inputs and two outputs.

tests/data/keras2_functional.h5 is written by tests/data/make_keras2_h5.py in tf.keras 2's layout
(TensorFlow is not installable here). Its outputs are checked against a Keras 3 model built here
with the same weights, read from the file with h5py (not grurt), whose GRU computes Keras 2's
hard_sigmoid (clip(0.2·x + 0.5, 0, 1), given as a Python function), and against grurt.reference;
ATOL both."""
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from tolerances import ATOL  # noqa: E402

FILE = Path(__file__).parent / "data" / "keras2_functional.h5"


def keras2_hard_sigmoid(x):
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def file_weights():
    """layer name -> its arrays in weight_names order, read with h5py."""
    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)
    with h5py.File(FILE, "r") as f:
        group = f["model_weights"]
        return {text(name): [np.asarray(group[text(name)][text(w)]) for w in group[text(name)].attrs["weight_names"]]
                for name in group.attrs["layer_names"]}


@pytest.fixture(scope="module")
def twin():
    """The file's model in Keras 3, with the file's weights."""
    seq, static = keras.Input((None, 2), name="seq"), keras.Input((3,), name="static")
    h0 = layers.Dense(4, activation="tanh", name="h0")(static)
    g = layers.GRU(4, return_sequences=True, recurrent_activation=keras2_hard_sigmoid, reset_after=False,
                   name="gru")(seq, initial_state=h0)
    b = layers.Bidirectional(layers.GRU(3, return_sequences=True), name="bi")(g)
    c = layers.Concatenate(name="cat")([b, g])
    score = layers.Dense(1, activation="sigmoid", name="score")(layers.GRU(3, name="last")(c))
    model = keras.Model([seq, static], [layers.Dense(2, name="frame")(c), score])
    weights = file_weights()
    for layer in model.layers:
        if weights.get(layer.name):
            layer.set_weights(weights[layer.name])
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(22)
    return [rng.standard_normal((3, 9, 2)).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)]


def test_graph_of_the_keras2_file():
    model = grurt.load(FILE)
    assert model.input_names == ("seq", "static") and model.output_names == ("frame", "score")
    grus = {node.outputs[0]: node for node in model.graph.gru_nodes}
    assert grus["gru"].inputs == ("seq", "h0")                     # the legacy node [seq, h0]: h0 is the state
    assert grus["gru"].layer.gate_activation.describe() == "hard_sigmoid(alpha=0.2, beta=0.5)"
    assert not grus["gru"].layer.linear_before_reset
    assert grus["bi"].layer.direction == "bidirectional" and grus["bi"].layer.linear_before_reset


def test_matches_keras3_twin_and_reference(twin, data):
    model = grurt.load(FILE)
    expected = twin.predict(data, verbose=0)
    for out, ref, want in zip(model.run(data), reference.run(model.spec, data), expected):
        assert out.shape == want.shape
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(ref, want, rtol=0, atol=ATOL)
    single = model.run({"seq": data[0][1], "static": data[1][1]})
    np.testing.assert_allclose(single[1], expected[1][1], rtol=0, atol=ATOL)


def _edited(tmp_path, edit):
    """A copy of the file whose model_config went through ``edit``."""
    path = tmp_path / "edited.h5"
    shutil.copy(FILE, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config["config"])
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
    return path


def _layer(config, name):
    return next(layer for layer in config["layers"] if layer["name"] == name)


def test_keras2_node_kwargs_and_errors(tmp_path, twin, data):
    """An entry's kwargs ({} or training=False) are read; a malformed node, a TF operation layer,
    and a masked sequence with an initial state (Keras 2's rule differs) are named errors."""
    def training_false(config):
        _layer(config, "frame")["inbound_nodes"] = [[["cat", 0, 0, {"training": False}]]]
    out = grurt.load(_edited(tmp_path, training_false)).run(data)
    np.testing.assert_allclose(out[0], twin.predict(data, verbose=0)[0], rtol=0, atol=ATOL)

    def malformed(config):
        _layer(config, "frame")["inbound_nodes"] = [[["cat", 0]]]
    with pytest.raises(grurt.ModelFormatError, match=r"'frame' .Dense.: a tensor reference must be \[layer name"):
        grurt.load(_edited(tmp_path, malformed))

    def tf_op(config):
        _layer(config, "frame")["class_name"] = "TFOpLambda"
    with pytest.raises(grurt.UnsupportedModelError, match="'frame' .TFOpLambda. is not supported"):
        grurt.load(_edited(tmp_path, tf_op))

    def masked(config):
        config["layers"].insert(2, {"class_name": "Masking", "name": "mask", "inbound_nodes": [[["seq", 0, 0, {}]]],
                                    "config": {"name": "mask", "trainable": True, "mask_value": 0.0}})
        _layer(config, "gru")["inbound_nodes"] = [[["mask", 0, 0, {}], ["h0", 0, 0, {}]]]
    with pytest.raises(grurt.UnsupportedModelError, match="masked sequence with initial_state .* Keras 2"):
        grurt.load(_edited(tmp_path, masked))


def test_keras2_masked_graph_without_state(tmp_path, data):
    """A Keras 2 graph with a Masking before its GRU (no initial state): the GRUs read the mask, a
    masked step is skipped as grurt.reference skips it."""
    def masked(config):
        config["layers"] = [layer for layer in config["layers"] if layer["name"] not in ("static", "h0")]
        config["layers"].insert(1, {"class_name": "Masking", "name": "mask", "inbound_nodes": [[["seq", 0, 0, {}]]],
                                    "config": {"name": "mask", "trainable": True, "mask_value": 0.0}})
        _layer(config, "gru")["inbound_nodes"] = [[["mask", 0, 0, {}]]]
        config["input_layers"] = [["seq", 0, 0]]
    model = grurt.load(_edited(tmp_path, masked))
    readers = [node for node in model.graph.gru_nodes if model.graph.tensors[node.inputs[-1]].mask]
    assert [node.outputs[0] for node in readers] == ["gru", "bi", "last"]      # the mask goes through the Concatenate
    seq = data[0].copy()
    seq[0, :3] = 0.0
    seq[1, 4] = 0.0
    for out, ref in zip(model.run(seq), reference.run(model.spec, seq)):
        np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)
