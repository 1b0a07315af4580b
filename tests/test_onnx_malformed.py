"""Malformed and hostile ONNX files: each is a grurt error that names the problem."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from grurt.errors import ModelFormatError, UnsupportedModelError  # noqa: E402
from grurt.importers.onnx import load_onnx  # noqa: E402

H, I = 4, 3


def weights(hidden=H):
    rng = np.random.default_rng(0)
    return {"W": rng.standard_normal((1, 3 * hidden, I)).astype(np.float32),
            "R": rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32),
            "B": rng.standard_normal((1, 6 * hidden)).astype(np.float32)}


def model_proto(nodes=None, initializers=None, x_shape=("T", "N", I), opset=22):
    nodes = nodes or [helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], name="gru", hidden_size=H)]
    initializers = weights() if initializers is None else initializers
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [v if isinstance(v, TensorProto) else numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)], ir_version=10)


def write(path, model):
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())
    return str(path)


def test_valid_base_model_loads(tmp_path):
    assert load_onnx(write(tmp_path / "ok.onnx", model_proto())).spec.layers[0].hidden_size == H


@pytest.mark.parametrize("content", [
    pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
    pytest.param(lambda good: good[:-7], id="truncated-end"),
    pytest.param(lambda good: b"hello, this is a text file and not a model\n" * 10, id="text"),
    pytest.param(lambda good: np.random.default_rng(1).bytes(4096), id="random-bytes"),
])
def test_unreadable_files(tmp_path, content):
    good = model_proto().SerializeToString()
    path = tmp_path / "bad.onnx"
    path.write_bytes(content(good))
    with pytest.raises(ModelFormatError, match="bad.onnx: not a readable ONNX file"):
        load_onnx(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="not an ONNX model"):
        load_onnx(str(path))


def test_missing_initializer(tmp_path):
    initializers = weights()
    del initializers["R"]
    with pytest.raises(ModelFormatError, match=r"node 'gru' \(GRU\): input 'R' is not defined in the graph"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(initializers=initializers)))


@pytest.mark.parametrize("hidden_size,initializers,fragment", [
    (5, weights(), r"W has shape \(1, 12, 3\), but hidden_size=5 and direction=forward need \(1, 15, 3\)"),
    (H, {**weights(), "B": np.zeros((1, 5 * H), np.float32)}, r"B has shape \(1, 20\), but hidden_size=4"),
    (H, {**weights(), "W": np.zeros((1, 2 * H, I), np.float32)}, r"W has shape \(1, 8, 3\)"),
    (H, {**weights(), "R": np.zeros((3 * H, H), np.float32)}, "W and R must be 3-D"),
    (10**12, weights(), r"hidden_size=1000000000000"),
])
def test_weights_inconsistent_with_hidden_size(tmp_path, hidden_size, initializers, fragment):
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], name="gru", hidden_size=hidden_size)
    with pytest.raises(ModelFormatError, match=fragment):
        load_onnx(write(tmp_path / "m.onnx", model_proto([node], initializers)))


def test_nan_weights(tmp_path):
    initializers = weights()
    initializers["R"][0, 0, 0] = np.nan
    with pytest.raises(ModelFormatError, match=r"node 'gru' \(GRU\): GRU: R contains NaN"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(initializers=initializers)))


def raw_tensor(name, dims, data):
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, raw_data=data)
    tensor.dims.extend(dims)
    return tensor


def test_huge_declared_initializer(tmp_path):
    huge = raw_tensor("W", [10**12], b"\0\0\0\0")
    with pytest.raises(ModelFormatError, match=r"tensor 'W' declares shape \(1000000000000,\)"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(initializers={**weights(), "W": huge})))


def test_initializer_with_too_little_data(tmp_path):
    short = raw_tensor("W", [1, 3 * H, I], b"\0" * 8)
    with pytest.raises(ModelFormatError, match="tensor 'W' is corrupt"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(initializers={**weights(), "W": short})))


def test_huge_declared_input(tmp_path):
    with pytest.raises(ModelFormatError, match=r"graph input 'X' of shape \(1000000, 1000000, 3\) is too large"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(x_shape=(10**6, 10**6, I))))


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand"])
def test_huge_constant_built_in_the_graph(tmp_path, op):
    nodes = [helper.make_node(op, ["shape"] if op == "ConstantOfShape" else ["one", "shape"], ["h0"], name="big"),
             helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y"], name="gru", hidden_size=H)]
    initializers = {**weights(), "shape": np.array([1, 10**6, 10**6]), "one": np.zeros(1, np.float32)}
    with pytest.raises(ModelFormatError, match=rf"node 'big' \({op}\): .*too large"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(nodes, initializers)))


def external(name, array, location, offset=0, length=None):
    tensor = numpy_helper.from_array(array, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(array.nbytes if length is None else length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def test_external_data_inside_the_folder_loads(tmp_path):
    good = weights()
    (tmp_path / "weights.bin").write_bytes(b"pad!" + good["R"].tobytes())
    model = model_proto(initializers={**good, "R": external("R", good["R"], "weights.bin", offset=4)})
    loaded = load_onnx(write(tmp_path / "m.onnx", model))
    np.testing.assert_array_equal(loaded.spec.layers[0].R, good["R"])


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "link.bin", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    good = weights()
    (tmp_path / "outside.bin").write_bytes(good["R"].tobytes())
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    model = model_proto(initializers={**good, "R": external("R", good["R"], location)})
    with pytest.raises(ModelFormatError, match=r"tensor 'R' points to external data .* outside the model's folder"):
        load_onnx(write(folder / "m.onnx", model))


def test_external_data_truncated_or_inconsistent(tmp_path):
    good = weights()
    (tmp_path / "weights.bin").write_bytes(good["R"].tobytes()[:-4])
    model = model_proto(initializers={**good, "R": external("R", good["R"], "weights.bin")})
    with pytest.raises(ModelFormatError, match="external data file 'weights.bin' of tensor 'R' is truncated"):
        load_onnx(write(tmp_path / "m.onnx", model))
    model = model_proto(initializers={**good, "R": external("R", good["R"], "weights.bin", length=10**12)})
    with pytest.raises(ModelFormatError, match="tensor 'R' declares 1000000000000 bytes of external data"):
        load_onnx(write(tmp_path / "n.onnx", model))
    model = model_proto(initializers={**good, "R": external("R", good["R"], "missing.bin")})
    with pytest.raises(ModelFormatError, match="cannot read external data of tensor 'R'"):
        load_onnx(write(tmp_path / "o.onnx", model))


@pytest.mark.parametrize("node,fragment", [
    (helper.make_node("LSTM", ["X", "W", "R"], ["Y"], name="lstm", hidden_size=H),
     r"node 'lstm' \(LSTM\): operator LSTM is not supported"),
    (helper.make_node("Loop", ["", ""], ["Y"], name="loop"), r"node 'loop' \(Loop\): operator Loop .*tf2onnx"),
    (helper.make_node("Gemm", ["X", "W"], ["Y"], name="gemm", foo=3), r"node 'gemm' \(Gemm\): attribute foo=3"),
])
def test_unsupported_nodes(tmp_path, node, fragment):
    with pytest.raises(UnsupportedModelError, match=fragment):
        load_onnx(write(tmp_path / "m.onnx", model_proto([node])))


def test_a_file_without_gru_is_a_general_graph(tmp_path):
    model = load_onnx(write(tmp_path / "m.onnx", model_proto([helper.make_node("Relu", ["X"], ["Y"], name="relu")])))
    x = np.random.default_rng(2).standard_normal((5, 2, I)).astype(np.float32)
    np.testing.assert_array_equal(model.run(x), np.maximum(x, 0))


def test_unsupported_opset(tmp_path):
    with pytest.raises(UnsupportedModelError, match="ONNX operator set 6 is not supported"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(opset=6)))


def test_string_initializer(tmp_path):
    text = helper.make_tensor("W", TensorProto.STRING, [1], [b"x"])
    with pytest.raises(UnsupportedModelError, match="tensor 'W' has unsupported data type STRING"):
        load_onnx(write(tmp_path / "m.onnx", model_proto(initializers={**weights(), "W": text})))


def test_non_tensor_input(tmp_path):
    model = model_proto()
    sequence = helper.make_tensor_sequence_value_info("S", TensorProto.FLOAT, None)
    model.graph.input.append(sequence)
    with pytest.raises(UnsupportedModelError, match="graph input 'S' is not a tensor"):
        load_onnx(write(tmp_path / "m.onnx", model))
