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
            "safetensors": ".safetensors", "sdnpz": ".npz", "pt": ".pt"}
#: loaders whose files are zip archives
ZIP_LOADERS = ("npz", "keras", "sdnpz", "pt")
#: loaders whose seeds Keras writes (in a subprocess: ~30 s)
KERAS_LOADERS = ("h5", "keras")
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
    # layers over time and norms (format 1.1): every numeric field a chain header can hold
    from grurt.spec import Conv1D, LayerNorm, Pool1D, UnitNorm, ZeroPad1D
    conv = ModelSpec(3, (ZeroPad1D(1, 2), Conv1D(rng.normal(size=(4, 3, 3)), np.zeros(4), dilation=2,
                                                 padding=(4, 0), activation=activation("leaky_relu", 0.1)),
                         Pool1D("average", 2, 2, "same_upper"), LayerNorm(np.ones(4), np.zeros(4), 1e-3),
                         gru(4, 3, clip=5.0), UnitNorm(1e-6), Dense(rng.normal(size=(2, 3)), np.zeros(2),
                                                                     activation("hard_sigmoid", 0.3, 0.4))))
    conv_path = directory / "conv.npz"
    grurt.save(conv, conv_path)
    # token ids with a padding id, and a Flatten of a fixed number of steps
    from grurt.spec import Embedding, Flatten
    ids = ModelSpec(None, (Embedding(rng.normal(size=(10, 3))), gru(3, 2), Flatten(4),
                           Dense(rng.normal(size=(2, 8)), np.zeros(2), activation("softmax"))), mask_value=0)
    ids_path = directory / "ids.npz"
    grurt.save(ids, ids_path)
    # format 3.0: grurt.Chain nodes (a "layers" attribute) with a learned state, a causal Conv1D, ids
    from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
    chain = (Conv1D(rng.normal(size=(4, 3, 2)), np.zeros(4), padding=(1, 0)),
             gru(4, 3, initial_state=rng.normal(size=(1, 3))), Dense(rng.normal(size=(2, 3)), np.zeros(2)))
    tensor = TensorGraph((TensorInput("x", "float32", ("batch", "time", 3)),
                          TensorInput("ids", "int64", ("batch", "time"))),
                         (TensorNode("grurt.Chain", ("x",), ("y", "h"), {"layers": chain}, "chain"),
                          TensorNode("grurt.Chain", ("ids",), ("z",), {"layers": ids.layers[:2]}, "ids")),
                         ("y", "h", "z"))
    chain_path = directory / "chain.npz"
    grurt.save(tensor, chain_path)
    return [path, graph_path, masked_path, conv_path, ids_path, chain_path]


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
    paths.append(_onnx_conv(directory, rng))
    paths.append(_onnx_general(directory, rng))
    paths.append(_onnx_conv2d_attention(directory, rng))
    return paths


def _onnx_general(directory, rng):
    """Ops the fused importer does not read (Sin, Tile, ReduceSum): the general op graph loads it."""
    from onnx import TensorProto, helper, numpy_helper, save
    init = [numpy_helper.from_array((0.5 * rng.normal(size=s)).astype(np.float32), n)
            for n, s in (("W", (1, 12, 3)), ("R", (1, 12, 4)))]
    init += [numpy_helper.from_array(np.array([1, 2, 1], np.int64), "reps"),
             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    nodes = [helper.make_node("Sin", ["X"], ["S"]),
             helper.make_node("GRU", ["S", "W", "R"], ["Y", "Y_h"], hidden_size=4, layout=1),
             helper.make_node("Tile", ["Y_h", "reps"], ["T"]),
             helper.make_node("ReduceSum", ["T", "axes"], ["out"], keepdims=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "T", 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
    path = directory / "general.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=9), path)
    return path


def _onnx_conv2d_attention(directory, rng):
    """The general graph's C kernels: 2-D Conv (+Relu, grouped and strided +Sigmoid), a depthwise
    ConvTranspose, MatMul + Add bias rows, attention (MatMul, scale, Softmax, MatMul), a mean."""
    from onnx import TensorProto, helper, numpy_helper, save

    def f32(*shape):
        return (0.5 * rng.normal(size=shape)).astype(np.float32)
    arrays = {"Wc1": f32(4, 1, 3, 3), "Bc1": f32(4), "Wc2": f32(4, 2, 1, 3), "Wt": f32(4, 1, 1, 2),
              "shape": np.array([0, 0, 32], np.int64), "Wq": f32(32, 16), "bq": f32(16), "Wk": f32(32, 16),
              "bk": f32(16), "scale": np.array(0.25, np.float32), "axes": np.array([1], np.int64)}
    nodes = [helper.make_node("Conv", ["X", "Wc1", "Bc1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "Wc2"], ["c2"], group=2, strides=[1, 2], pads=[0, 1, 0, 1]),
             helper.make_node("Sigmoid", ["c2"], ["s2"]),
             helper.make_node("ConvTranspose", ["s2", "Wt"], ["u"], group=4, strides=[1, 2]),
             helper.make_node("Transpose", ["u"], ["ut"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["ut", "shape"], ["seq"]),
             helper.make_node("MatMul", ["seq", "Wq"], ["qm"]), helper.make_node("Add", ["qm", "bq"], ["q"]),
             helper.make_node("MatMul", ["seq", "Wk"], ["km"]), helper.make_node("Add", ["km", "bk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]), helper.make_node("Mul", ["scores", "scale"], ["z"]),
             helper.make_node("Softmax", ["z"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "q"], ["att"]),
             helper.make_node("ReduceMean", ["att", "axes"], ["out"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1, "T", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    path = directory / "conv2d_attention.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 18)], ir_version=9), path)
    return path


def _onnx_conv(directory, rng):
    """(N, T, 3) → Pad → Conv → Relu → MaxPool → GRU whose initial state is built from Shape
    arithmetic (Shape, Gather, Unsqueeze, Concat, ConstantOfShape): the ops that read sizes."""
    from onnx import TensorProto, helper, numpy_helper, save
    arrays = {"pads": np.array([0, 0, 2, 0, 0, 0], np.int64), "Wc": 0.5 * rng.normal(size=(4, 3, 3)),
              "Bc": np.zeros(4), "W": 0.5 * rng.normal(size=(1, 12, 4)), "R": 0.5 * rng.normal(size=(1, 12, 4)),
              "B": np.zeros((1, 24)), "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
              "four": np.array([4], np.int64), "axes": np.array([0], np.int64)}
    init = [numpy_helper.from_array(a if a.dtype == np.int64 else a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [helper.make_node("Transpose", ["X"], ["Xt"], perm=[0, 2, 1]),
             helper.make_node("Pad", ["Xt", "pads"], ["Xp"], mode="constant"),
             helper.make_node("Conv", ["Xp", "Wc", "Bc"], ["C"], kernel_shape=[3], strides=[1], dilations=[1]),
             helper.make_node("Relu", ["C"], ["Cr"]),
             helper.make_node("MaxPool", ["Cr"], ["P"], kernel_shape=[2], strides=[1], pads=[1, 0]),
             helper.make_node("Transpose", ["P"], ["Pt"], perm=[0, 2, 1]),
             helper.make_node("Shape", ["X"], ["shape"], start=0, end=1),
             helper.make_node("Concat", ["one", "shape", "four"], ["h_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["h_shape"], ["h0"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("GRU", ["Pt", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=4, layout=1,
                              linear_before_reset=1),
             helper.make_node("Squeeze", ["Y_h", "one"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "T", 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
    path = directory / "conv.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=9), path)
    return path


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
c = keras.Sequential([keras.Input((None, 3)), layers.ZeroPadding1D((1, 2)),
                      layers.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu"),
                      layers.MaxPooling1D(2, padding="same"), layers.LayerNormalization(epsilon=1e-4),
                      layers.BatchNormalization(), layers.GRU(5, return_sequences=True), layers.Dense(2)])
c.save(os.path.join(out, "conv.keras"))
c.save(os.path.join(out, "conv.h5"))
# the lowered path (a TensorModel): a Conv2D front-end, attention layers, TimeDistributed, Permute
s = keras.Input((6, 4, 2), name="spec")
h = layers.Reshape((6, 12))(layers.Conv2D(3, (3, 2), padding="same", activation="relu")(s))
h = layers.Bidirectional(layers.GRU(4, return_sequences=True))(h)
a = layers.Attention()([h, layers.MultiHeadAttention(2, 3)(h, h)])
a = layers.Permute((2, 1))(layers.TimeDistributed(layers.Dense(5))(a))
m = keras.Model(s, layers.Dense(2)(layers.GlobalAveragePooling1D()(a)))
m.save(os.path.join(out, "lowered.keras"))
m.save(os.path.join(out, "lowered.h5"))
# the lowered path with masks: mask_zero, a masked BiGRU, attention, a residual, pooling over the mask
ids = keras.Input((7,), dtype="int32", name="ids")
g = layers.Bidirectional(layers.GRU(3, return_sequences=True))(layers.Embedding(9, 4, mask_zero=True)(ids))
a = layers.MultiHeadAttention(2, 2)(g, g, use_causal_mask=True)
b = layers.AdditiveAttention()([layers.Dense(6)(g), layers.Masking(0.5)(layers.Dense(6)(g))])
m = keras.Model(ids, layers.Dense(2)(layers.GlobalAveragePooling1D()(layers.Maximum()([layers.Add()([g, a]), b]))))
m.save(os.path.join(out, "masked.keras"))
m.save(os.path.join(out, "masked.h5"))
"""


def _keras(directory):
    """Keras files written by Keras itself, in a subprocess (Keras picks its backend once per process)."""
    if not all(os.path.isfile(directory / f"{name}.keras") for name in ("functional", "conv", "lowered", "masked")):
        env = {**os.environ, "KERAS_BACKEND": "torch"}
        subprocess.run([sys.executable, "-c", _KERAS_SCRIPT, str(directory)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    names = ("model", "functional", "conv", "lowered", "masked")
    return ([directory / f"{name}.keras" for name in names],
            [directory / f"{name}.h5" for name in names] + [KERAS2_FILE, KERAS2_FUNCTIONAL])


def write_seeds(directory, keras: bool = True) -> dict:
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
        import grurt                        # format 3.0: the op graph of an ONNX file, saved
        seeds["npz"].append(directory / "tensor.npz")
        grurt.save(grurt.load(directory / "general.onnx"), seeds["npz"][-1])
    except ImportError:
        pass
    try:
        import torch
        seeds["pt"] = [directory / "state_dict.pt"]
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, seeds["pt"][0])
    except ImportError:
        pass
    try:
        import importlib.util
        if keras and importlib.util.find_spec("keras") and importlib.util.find_spec("h5py"):
            seeds["keras"], seeds["h5"] = _keras(directory)
    except (subprocess.SubprocessError, OSError):
        pass
    return {k: [str(p) for p in v] for k, v in seeds.items()}
