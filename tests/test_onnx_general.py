"""The ONNX importer's general path (grurt.importers.onnx.general): files beyond the fused layers
become a TensorModel of the file's ops. Outputs vs onnxruntime to ATOL (tests/tolerances.py),
integer outputs exactly; refusals name the node."""
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import grurt  # noqa: E402
from grurt.errors import UnsupportedModelError  # noqa: E402
from grurt.importers.onnx import load_onnx  # noqa: E402
from grurt.tensor_model import TensorModel  # noqa: E402
from tolerances import ATOL  # noqa: E402

FLOAT = TensorProto.FLOAT


def save(path, nodes, inputs, outputs, initializers=None, opset=17, producer=""):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                                                   if isinstance(o, str) else o for o in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)], ir_version=8,
                              producer_name=producer)
    onnx.save(model, str(path))
    return str(path)


def typed(name, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, None)


def tensor(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def ort_run(path, feed):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)


def assert_matches(model, path, feed):
    got = model.run(feed)
    got = list(got) if isinstance(got, tuple) else [got]
    for a, b in zip(got, ort_run(path, feed)):
        assert a.shape == b.shape
        if b.dtype.kind in "iub":
            assert np.array_equal(a, b)
        else:
            assert np.max(np.abs(a - b)) <= ATOL


rng = np.random.default_rng(0)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
def test_softmax_before_opset_13_flattens_from_axis(tmp_path, op, axis):
    """Opset 11 Softmax over (2, 3, 4) with axis 1 normalizes over the 12 values of each batch entry."""
    attrs = {} if axis is None else {"axis": axis}
    path = save(tmp_path / "m.onnx", [helper.make_node(op, ["x"], ["y"], name="sm", **attrs)],
                [tensor("x", ["b", 3, 4])], [typed("y")], opset=11)
    model = load_onnx(path)
    assert isinstance(model, TensorModel)
    assert_matches(model, path, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


def test_older_forms_become_the_newest(tmp_path):
    """TopK's k attribute and Dropout's ratio (opset 9), Split without sizes, Constant nodes of
    every kind, float64 and float16 initializers computed in float32."""
    nodes = [
        helper.make_node("Constant", [], ["c1"], value_float=0.5),
        helper.make_node("Constant", [], ["c2"], value_floats=[1.0, 2.0, 3.0, 4.0]),
        helper.make_node("Constant", [], ["c3"], value=numpy_helper.from_array(np.full(4, 0.25, np.float64))),
        helper.make_node("Mul", ["x", "c1"], ["a"]),
        helper.make_node("Add", ["a", "c2"], ["b"]),
        helper.make_node("Cast", ["c3"], ["c3f"], to=FLOAT),
        helper.make_node("Sub", ["b", "c3f"], ["c"]),
        helper.make_node("Cast", ["half"], ["halff"], to=FLOAT),
        helper.make_node("Mul", ["c", "halff"], ["d"]),
        helper.make_node("Dropout", ["d"], ["e"], ratio=0.3),
        helper.make_node("TopK", ["e"], ["values", "indices"], k=2, axis=1),
        helper.make_node("Split", ["e"], ["left", "right"], axis=1),
    ]
    path = save(tmp_path / "m.onnx", nodes, [tensor("x", ["n", 4])],
                [typed("values"), typed("indices", TensorProto.INT64), typed("left"), typed("right")],
                {"half": np.full(4, 0.5, np.float16)}, opset=9)
    model = load_onnx(path)
    assert isinstance(model, TensorModel)
    assert all(a.dtype in (np.float32, np.int64, np.bool_) for a in model.graph.constants.values())
    assert_matches(model, path, {"x": rng.standard_normal((3, 4)).astype(np.float32)})


def test_input_dtypes(tmp_path):
    """int32 ids and a bool mask: the model takes them as int64 and bool."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
             helper.make_node("Cast", ["mask"], ["m"], to=FLOAT),
             helper.make_node("Unsqueeze", ["m", "axes"], ["m1"]),
             helper.make_node("Mul", ["rows", "m1"], ["y"])]
    path = save(tmp_path / "m.onnx", nodes, [tensor("ids", ["b", "t"], TensorProto.INT32),
                                             tensor("mask", ["b", "t"], TensorProto.BOOL)],
                [typed("y")], {"table": rng.standard_normal((7, 3)).astype(np.float32), "axes": np.array([2])})
    model = load_onnx(path)
    assert [i.dtype for i in model.graph.inputs] == ["int64", "bool"]
    feed = {"ids": rng.integers(0, 7, (2, 5)).astype(np.int32), "mask": rng.random((2, 5)) > 0.5}
    assert_matches(model, path, feed)


def test_refusals_name_the_node(tmp_path):
    path = save(tmp_path / "d.onnx", [helper.make_node("Relu", ["x"], ["y"], name="mine", domain="com.example")],
                [tensor("x", [2])], [typed("y")])
    with pytest.raises(UnsupportedModelError, match=r"node 'mine' \(Relu\): operators of domain 'com.example'"):
        load_onnx(path)
    path = save(tmp_path / "g.onnx", [helper.make_node("grurt.MaskedGRU", ["x"], ["y"], name="own")],
                [tensor("x", [2])], [typed("y")])
    with pytest.raises(UnsupportedModelError, match=r"node 'own' \(grurt.MaskedGRU\): .* not an ONNX operator"):
        load_onnx(path)
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [], [typed("z")])
    path = save(tmp_path / "s.onnx", [helper.make_node("Relu", ["x"], ["y"], name="odd", body=branch)],
                [tensor("x", [2])], [typed("y")])
    with pytest.raises(UnsupportedModelError, match=r"node 'odd' \(Relu\): attribute body holds a subgraph"):
        load_onnx(path)
    cond = helper.make_node("If", ["c"], ["y"], name="choice", then_branch=branch, else_branch=branch)
    path = save(tmp_path / "i.onnx", [cond], [tensor("c", [], TensorProto.BOOL)], [typed("y")])
    with pytest.raises(UnsupportedModelError, match=r"node 'choice' \(If\): operator If is not supported \(control"):
        load_onnx(path)
    path = save(tmp_path / "a.onnx", [helper.make_node("Relu", ["x"], ["y"], name="r", alpha=1.0)],
                [tensor("x", [2])], [typed("y")])
    with pytest.raises(UnsupportedModelError, match=r"node 'r' \(Relu\): attribute alpha=1.0 is not supported"):
        load_onnx(path)


def test_fused_files_keep_their_model(tmp_path):
    """A file the fused layers cover still loads as a Model; grurt.load gives the general one otherwise."""
    W, R = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    gru = helper.make_node("GRU", ["x", "W", "R"], ["Y"], hidden_size=4)
    fused = save(tmp_path / "f.onnx", [gru], [tensor("x", ["t", "b", 3])], [typed("Y")], {"W": W, "R": R})
    assert isinstance(grurt.load(fused), grurt.Model)
    general = save(tmp_path / "g.onnx", [gru, helper.make_node("Erf", ["Y"], ["z"])], [tensor("x", ["t", "b", 3])],
                   [typed("z")], {"W": W, "R": R})
    model = grurt.load(general)
    assert type(model) is TensorModel
    assert_matches(model, general, {"x": rng.standard_normal((5, 2, 3)).astype(np.float32)})


def test_pytorch_gru_without_linear_before_reset_warns(tmp_path):
    W, R = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    nodes = [helper.make_node("GRU", ["x", "W", "R"], ["Y"], name="gru", hidden_size=4),
             helper.make_node("Erf", ["Y"], ["z"])]
    path = save(tmp_path / "p.onnx", nodes, [tensor("x", ["t", "b", 3])], [typed("z")], {"W": W, "R": R},
                producer="pytorch")
    with pytest.warns(UserWarning, match="linear_before_reset=0 in gru"):
        load_onnx(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_onnx(save(tmp_path / "q.onnx", nodes, [tensor("x", ["t", "b", 3])], [typed("z")], {"W": W, "R": R}))


def test_command_line(tmp_path, capsys):
    """grurt info / convert --check / verify / run / bench on a file that is a general graph."""
    from grurt.cli import main

    W, R = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    path = save(tmp_path / "g.onnx", [helper.make_node("GRU", ["x", "W", "R"], ["Y"], hidden_size=4),
                                      helper.make_node("Erf", ["Y"], ["z"])],
                [tensor("x", ["t", "b", 3])], [typed("z")], {"W": W, "R": R})
    converted = str(tmp_path / "g.npz")
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["info", path]) == 0
    assert "z = Erf(Y)" in capsys.readouterr().out
    assert main(["convert", path, converted, "--check"]) == 0
    out = capsys.readouterr().out
    assert "general graph of 2 nodes" in out and float(out.split("onnxruntime: ")[1]) <= ATOL
    assert main(["verify", converted, "--against", path]) == 0
    assert float(capsys.readouterr().out.split("onnxruntime: ")[1]) <= ATOL
    assert main(["run", converted, str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    assert np.max(np.abs(np.load(tmp_path / "y.npy") - ort_run(path, {"x": x})[0])) <= ATOL
    assert main(["bench", converted, "--stream"]) == 1     # a time-major batch the stream cannot size: named
    assert "input 'x'" in capsys.readouterr().err
