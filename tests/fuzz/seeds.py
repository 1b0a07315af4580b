"""Valid seed files for each loader, written at test time from small random models.

``write_seeds(directory)`` writes them and returns {loader: [paths]}; loaders whose writer is
not installed (keras, onnx, safetensors) get no seeds and are skipped by the harness.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

#: loader name -> file suffix
SUFFIXES = {"npz": ".npz", "onnx": ".onnx", "keras": ".keras", "h5": ".h5",
            "safetensors": ".safetensors", "sdnpz": ".npz"}
#: loaders whose files are zip archives
ZIP_LOADERS = ("npz", "keras", "sdnpz")
HERE = Path(__file__).resolve().parent
KERAS2_FILE = HERE.parent / "data" / "keras2_gru_hard_sigmoid.h5"
KERAS2_FUNCTIONAL = HERE.parent / "data" / "keras2_functional.h5"


def _torch_like_state_dict(rng):
    """nn.GRU(3, 4, 2 layers, bidirectional) + nn.Linear(8, 2) parameter names and shapes."""
    arrays = {}
    for k, inputs in enumerate((3, 8)):
        for suffix in ("", "_reverse"):
            arrays[f"gru.weight_ih_l{k}{suffix}"] = rng.normal(size=(12, inputs))
            arrays[f"gru.weight_hh_l{k}{suffix}"] = rng.normal(size=(12, 4))
            arrays[f"gru.bias_ih_l{k}{suffix}"] = rng.normal(size=12)
            arrays[f"gru.bias_hh_l{k}{suffix}"] = rng.normal(size=12)
    arrays["fc.weight"] = rng.normal(size=(2, 8))
    arrays["fc.bias"] = rng.normal(size=2)
    return {k: (0.5 * v).astype(np.float32) for k, v in arrays.items()}


def _grurt_npz(directory, rng):
    import grurt
    from grurt.spec import GRU, Activation, Dense, LastStep, ModelSpec, Scale, activation

    def gru(i, h, d=1, **kw):
        return GRU(rng.normal(size=(d, 3 * h, i)) * 0.5, rng.normal(size=(d, 3 * h, h)) * 0.5,
                   rng.normal(size=(d, 6 * h)) * 0.5, **kw)
    spec = ModelSpec(3, (Scale(np.ones(3), np.zeros(3)), gru(3, 4, 2, direction="bidirectional"),
                         gru(8, 3, linear_before_reset=True, gate_activation=activation("hard_sigmoid")),
                         LastStep(), Dense(rng.normal(size=(2, 3)), np.zeros(2)), Activation(activation("tanh"))))
    path = directory / "grurt.npz"
    grurt.save(spec, path, metadata={"seed": "fuzz"})
    # a graph (format 2.0): a static input into a GRU's h0, a residual add, a concat, a state output
    from grurt.graph import Combine, Concat, Graph, Input, Node, Output
    nodes = (Node(Dense(rng.normal(size=(4, 2)), np.zeros(4)), "v", "h0"),
             Node(gru(3, 4, linear_before_reset=True), ("x", "h0"), ("a", "a_n")),
             Node(gru(4, 4), "a", "b"), Node(Combine("add"), ("a", "b"), "sum"),
             Node(LastStep(), "sum", "last"), Node(Concat(), ("last", "a_n"), "y"))
    graph_path = directory / "graph.npz"
    grurt.save(Graph((Input("x", 3), Input("v", 2, "vector")), nodes, ("y", Output("a_n", 1))), graph_path)
    # format 2.1: a mask read by a GRU, PReLU, a learned initial state, Repeat, Crop, a new activation
    from grurt.graph import Crop, Masking, PReLU, Repeat
    nodes = (Node(Masking(0.0), "x", ("m", "mask")), Node(PReLU(rng.normal(size=3)), "m", "p"),
             Node(gru(3, 4, initial_state=rng.normal(size=(1, 4))), ("p", "mask"), "g"),
             Node(Crop(1, 1), "g", "c"), Node(gru(4, 3, return_sequences=False), "c", "last"),
             Node(Repeat(5), "last", "r"),
             Node(Dense(rng.normal(size=(2, 3)), np.zeros(2), activation("gelu")), "r", "y"))
    masked_path = directory / "masked.npz"
    grurt.save(Graph((Input("x", 3),), nodes, ("y",)), masked_path)
    return [path, graph_path, masked_path]


def _onnx(directory, rng):
    from onnx import TensorProto, helper, numpy_helper, save
    paths = []
    for direction, lbr in (("forward", 1), ("bidirectional", 0)):
        D = 2 if direction == "bidirectional" else 1
        init = [numpy_helper.from_array((0.5 * rng.normal(size=s)).astype(np.float32), n)
                for n, s in (("W", (D, 12, 3)), ("R", (D, 12, 4)), ("B", (D, 24)),
                             ("Wd", (4 * D, 2)), ("bd", (2,)))]
        nodes = [helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=4,
                                  direction=direction, linear_before_reset=lbr),
                 helper.make_node("Transpose", ["Y_h"], ["Yt"], perm=[1, 0, 2]),
                 helper.make_node("Reshape", ["Yt", "shape"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "Wd"], ["mm"]),
                 helper.make_node("Add", ["mm", "bd"], ["out"])]
        init.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 3])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
        path = directory / f"{direction}.onnx"
        save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=9), path)
        paths.append(path)
    return paths


_KERAS_SCRIPT = r"""
import os, sys
os.environ.setdefault("KERAS_BACKEND", "torch")
import keras
from keras import layers
keras.utils.set_random_seed(0)
out = sys.argv[1]
m = keras.Sequential([keras.Input((None, 3)), layers.Bidirectional(layers.GRU(4, return_sequences=True)),
                      layers.GRU(3, reset_after=False, recurrent_activation="hard_sigmoid"),
                      layers.Dense(2, activation="tanh")])
m.save(os.path.join(out, "model.keras"))
m.save(os.path.join(out, "model.h5"))
# issue 21's layers: masks, activation layers, PReLU, RepeatVector, Reshape, Cropping1D, two outputs
x = keras.Input((6, 3), name="x")
h = layers.GRU(4, return_sequences=True)(layers.PReLU(shared_axes=[1])(layers.Masking()(x)))
h = layers.Cropping1D((1, 1))(layers.LeakyReLU(0.1)(layers.ReLU(max_value=2.0)(h)))
code = layers.GRU(3)(layers.Activation("gelu")(h))
decoded = layers.GRU(2, return_sequences=True)(layers.RepeatVector(4)(code))
grid = layers.Reshape((2, 3))(layers.Dense(6)(code))
m = keras.Model(x, [decoded, layers.GlobalAveragePooling1D()(layers.GRU(2, return_sequences=True)(grid))])
m.save(os.path.join(out, "functional.keras"))
m.save(os.path.join(out, "functional.h5"))
"""


def _keras(directory):
    """Keras files written by Keras itself, in a subprocess (Keras picks its backend once per process)."""
    if not os.path.isfile(directory / "functional.keras"):
        env = {**os.environ, "KERAS_BACKEND": "torch"}
        subprocess.run([sys.executable, "-c", _KERAS_SCRIPT, str(directory)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return ([directory / "model.keras", directory / "functional.keras"],
            [directory / "model.h5", directory / "functional.h5", KERAS2_FILE, KERAS2_FUNCTIONAL])


def write_seeds(directory) -> dict:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261127)
    seeds = {"npz": _grurt_npz(directory, rng)}
    state = _torch_like_state_dict(rng)
    seeds["sdnpz"] = [directory / "state_dict.npz"]
    np.savez(seeds["sdnpz"][0], **state)
    try:
        from safetensors.numpy import save_file
        seeds["safetensors"] = [directory / "state_dict.safetensors"]
        save_file(state, seeds["safetensors"][0])
    except ImportError:
        pass
    try:
        seeds["onnx"] = _onnx(directory, rng)
    except ImportError:
        pass
    try:
        import importlib.util
        if importlib.util.find_spec("keras") and importlib.util.find_spec("h5py"):
            seeds["keras"], seeds["h5"] = _keras(directory)
    except (subprocess.SubprocessError, OSError):
        pass
    return {k: [str(p) for p in v] for k, v in seeds.items()}
