"""Write keras2_gru_hard_sigmoid.h5 and keras2_functional.h5: model files laid out exactly as tf.keras 2
(TF 2.12, keras 2.12.0) writes ``model.save("model.h5")``, for testing grurt's Keras 2 semantics.

TensorFlow cannot be installed where grurt is developed, so this script writes the file with
h5py alone, following tf.keras 2's ``saving/legacy/hdf5_format.py``:

* root attributes ``keras_version`` and ``backend`` (str) and ``model_config`` (UTF-8 JSON bytes
  of ``{"class_name": "Sequential", "config": model.get_config()}``; no ``training_config`` as
  the model is not compiled);
* group ``model_weights`` with attributes ``layer_names``, ``backend``, ``keras_version`` (bytes),
  one group per layer (created in name order) whose ``weight_names`` attribute lists the
  variable names (``gru/gru_cell/kernel:0``...) in trainable-then-non-trainable order, and a
  dataset per variable at that name, so ``model_weights/gru/gru/gru_cell/kernel:0``;
* an empty ``top_level_model_weights`` group.

keras2_gru_hard_sigmoid.h5: Sequential([GRU(4, return_sequences=True), GRU(3), Dense(2)]) on
(batch, 6, 2) input, both GRUs with ``recurrent_activation="hard_sigmoid"`` and
``reset_after=False``, the Keras ≤ 2.2 defaults (Keras 2 computes hard_sigmoid as
clip(0.2·x + 0.5, 0, 1)). Weights are seeded random numbers (scale 0.8). No expected outputs are
stored: tests/test_keras_formats.py computes them independently (a numpy Keras 2 GRU and
grurt.reference); none come from tf.keras.

keras2_functional.h5: a tf.keras 2 functional model (``class_name`` "Functional", legacy
``inbound_nodes`` lists ``[[layer, node index, tensor index, kwargs], ...]``), two inputs and two
outputs::

    seq = Input((None, 2), name="seq"); static = Input((3,), name="static")
    h0 = Dense(4, activation="tanh", name="h0")(static)
    g = GRU(4, return_sequences=True, recurrent_activation="hard_sigmoid", reset_after=False,
            name="gru")(seq, initial_state=h0)        # tf.keras records the node [seq, h0]
    b = Bidirectional(GRU(3, return_sequences=True), name="bi")(g)
    c = Concatenate(name="cat")([b, g])
    frame = Dense(2, name="frame")(c)                 # output 0: per step
    score = Dense(1, activation="sigmoid", name="score")(GRU(3, name="last")(c))   # output 1
    Model([seq, static], [frame, score])

tests/test_keras_formats2.py checks it against a Keras 3 model with the same weights (its
hard_sigmoid given as the Keras 2 formula) and against grurt.reference.

Run: python tests/data/make_keras2_h5.py
"""
import json
import os

import h5py
import numpy as np

STEPS, FEATURES = 6, 2
SEED = 20240229
HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "keras2_gru_hard_sigmoid.h5")


def initializer(name, **config):
    return {"class_name": name, "config": config}


def gru_config(name, units, return_sequences, **extra):
    return {"class_name": "GRU", "config": {
        "name": name, "trainable": True, "dtype": "float32", **extra,
        "return_sequences": return_sequences, "return_state": False, "go_backwards": False,
        "stateful": False, "unroll": False, "time_major": False, "units": units,
        "activation": "tanh", "recurrent_activation": "hard_sigmoid", "use_bias": True,
        "kernel_initializer": initializer("GlorotUniform", seed=None),
        "recurrent_initializer": initializer("Orthogonal", gain=1.0, seed=None),
        "bias_initializer": initializer("Zeros"),
        "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
        "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 2,
        "reset_after": False}}


MODEL_CONFIG = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
    {"class_name": "InputLayer", "config": {"batch_input_shape": [None, STEPS, FEATURES], "dtype": "float32",
                                            "sparse": False, "ragged": False, "name": "gru_input"}},
    gru_config("gru", 4, True, batch_input_shape=[None, STEPS, FEATURES]),
    gru_config("gru_1", 3, False),
    {"class_name": "Dense", "config": {
        "name": "dense", "trainable": True, "dtype": "float32", "units": 2, "activation": "linear",
        "use_bias": True, "kernel_initializer": initializer("GlorotUniform", seed=None),
        "bias_initializer": initializer("Zeros"), "kernel_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}},
]}}


def weights(rng):
    """layer name -> [(variable name, value)] in tf.keras's trainable + non-trainable order."""
    def draw(*shape):
        return (0.8 * rng.standard_normal(shape)).astype(np.float32)
    return {
        "gru": [("gru/gru_cell/kernel:0", draw(FEATURES, 12)), ("gru/gru_cell/recurrent_kernel:0", draw(4, 12)),
                ("gru/gru_cell/bias:0", draw(12))],
        "gru_1": [("gru_1/gru_cell/kernel:0", draw(4, 9)), ("gru_1/gru_cell/recurrent_kernel:0", draw(3, 9)),
                  ("gru_1/gru_cell/bias:0", draw(9))],
        "dense": [("dense/kernel:0", draw(3, 2)), ("dense/bias:0", draw(2))],
    }


FUNCTIONAL_PATH = os.path.join(HERE, "keras2_functional.h5")


def dense_config(name, units, activation="linear"):
    return {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "dtype": "float32", "units": units, "activation": activation,
        "use_bias": True, "kernel_initializer": initializer("GlorotUniform", seed=None),
        "bias_initializer": initializer("Zeros"), "kernel_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}}


def node(config, *sources):
    """A functional layer entry: its config, name and one inbound node reading ``sources``."""
    return {**config, "name": config["config"]["name"], "inbound_nodes": [[[name, 0, 0, {}] for name in sources]]}


def input_config(name, shape):
    return {"class_name": "InputLayer", "name": name, "inbound_nodes": [], "config": {
        "batch_input_shape": [None, *shape], "dtype": "float32", "sparse": False, "ragged": False, "name": name}}


def tf_keras2_gru_config(name, units, return_sequences):
    """A GRU with tf.keras 2's defaults: reset_after=True, recurrent_activation sigmoid."""
    config = gru_config(name, units, return_sequences)
    config["config"].update(reset_after=True, recurrent_activation="sigmoid")
    return config


def bidirectional_config(name, units):
    inner = tf_keras2_gru_config("gru_inner", units, True)
    return {"class_name": "Bidirectional", "config": {"name": name, "trainable": True, "dtype": "float32",
                                                      "layer": inner, "merge_mode": "concat"}}


FUNCTIONAL_CONFIG = {"class_name": "Functional", "config": {"name": "model", "trainable": True, "layers": [
    input_config("seq", [None, FEATURES]),
    input_config("static", [3]),
    node(dense_config("h0", 4, "tanh"), "static"),
    node(gru_config("gru", 4, True), "seq", "h0"),
    node(bidirectional_config("bi", 3), "gru"),
    node({"class_name": "Concatenate", "config": {"name": "cat", "trainable": True, "dtype": "float32", "axis": -1}},
         "bi", "gru"),
    node(dense_config("frame", 2), "cat"),
    node(tf_keras2_gru_config("last", 3, False), "cat"),
    node(dense_config("score", 1, "sigmoid"), "last"),
], "input_layers": [["seq", 0, 0], ["static", 0, 0]], "output_layers": [["frame", 0, 0], ["score", 0, 0]]}}


def functional_weights(rng):
    """layer name -> [(variable name, value)], as tf.keras 2 names a functional model's variables."""
    def draw(*shape):
        return (0.6 * rng.standard_normal(shape)).astype(np.float32)

    def cell(prefix, inputs, units, reset_after):
        return [(f"{prefix}/kernel:0", draw(inputs, 3 * units)),
                (f"{prefix}/recurrent_kernel:0", draw(units, 3 * units)),
                (f"{prefix}/bias:0", draw(2, 3 * units) if reset_after else draw(3 * units))]
    return {    # every layer in model.layers order, the inputs and the Concatenate without weights
        "seq": [], "static": [],
        "h0": [("h0/kernel:0", draw(3, 4)), ("h0/bias:0", draw(4))],
        "gru": cell("gru/gru_cell", FEATURES, 4, False),
        "bi": cell("bi/forward_gru_inner/gru_cell", 4, 3, True) + cell("bi/backward_gru_inner/gru_cell", 4, 3, True),
        "cat": [],
        "frame": [("frame/kernel:0", draw(10, 2)), ("frame/bias:0", draw(2))],
        "last": cell("last/gru_cell", 10, 3, True),
        "score": [("score/kernel:0", draw(3, 1)), ("score/bias:0", draw(1))],
    }


def write(path, config, layers):
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.12.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [name.encode("utf8") for name in layers]
        group.attrs["backend"] = "tensorflow".encode("utf8")
        group.attrs["keras_version"] = "2.12.0".encode("utf8")
        for name in sorted(layers):
            layer_group = group.create_group(name)
            layer_group.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in layers[name]], dtype="S")
            for weight_name, value in layers[name]:
                layer_group.create_dataset(weight_name, value.shape, dtype=value.dtype)[:] = value
        group.create_group("top_level_model_weights").attrs["weight_names"] = np.asarray([])


def main():
    write(PATH, MODEL_CONFIG, weights(np.random.default_rng(SEED)))
    write(FUNCTIONAL_PATH, FUNCTIONAL_CONFIG, functional_weights(np.random.default_rng(SEED + 1)))


if __name__ == "__main__":
    main()
