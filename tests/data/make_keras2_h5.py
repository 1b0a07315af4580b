"""Write keras2_gru_hard_sigmoid.h5: a model file laid out exactly as tf.keras 2 (TF 2.12,
keras 2.12.0) writes ``model.save("model.h5")``, for testing grurt's Keras 2 semantics.

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

The model: Sequential([GRU(4, return_sequences=True), GRU(3), Dense(2)]) on (batch, 6, 2)
input, both GRUs with ``recurrent_activation="hard_sigmoid"`` and ``reset_after=False``, the
Keras ≤ 2.2 defaults (Keras 2 computes hard_sigmoid as clip(0.2·x + 0.5, 0, 1)). Weights are
seeded random numbers (scale 0.8). No expected outputs are stored: tests/test_keras_formats.py
computes them independently (a numpy Keras 2 GRU and grurt.reference); none come from tf.keras.

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


def main():
    layers = weights(np.random.default_rng(SEED))
    with h5py.File(PATH, "w") as f:
        f.attrs["keras_version"] = "2.12.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(MODEL_CONFIG).encode("utf8")
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [name.encode("utf8") for name in layers]
        group.attrs["backend"] = "tensorflow".encode("utf8")
        group.attrs["keras_version"] = "2.12.0".encode("utf8")
        for name in sorted(layers):
            layer_group = group.create_group(name)
            layer_group.attrs["weight_names"] = [w.encode("utf8") for w, _ in layers[name]]
            for weight_name, value in layers[name]:
                layer_group.create_dataset(weight_name, value.shape, dtype=value.dtype)[:] = value
        group.create_group("top_level_model_weights").attrs["weight_names"] = np.asarray([])


if __name__ == "__main__":
    main()
