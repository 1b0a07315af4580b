"""Sigmoid, Tanh and Relu of the general graph on grurt's kernel activations (_kernels.activate, the
one a Dense layer or a fused Conv applies): the kernel against float64 on hypothesis-drawn values
with the tails, infinities and NaN (ATOL, tests/tolerances.py); a Gemm packed followed by its
activation as one step (tensor_passes), and the activations run in place on contiguous and on
strided views, each model against onnxruntime, grurt's float64 reference and the plan without the
rewrite (ATOL), an op in place against the same op on its own (np.array_equal)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import grurt
from grurt import _kernels, tensor_passes
from grurt.ops import REGISTRY
from grurt.reference import run_tensor_graph
from tolerances import ATOL

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FLOAT64 = {"sigmoid": lambda x: 0.5 * (1 + np.tanh(0.5 * x)), "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0)}


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(0, 70), elements=st.floats(-1e4, 1e4, width=32)),
       name=st.sampled_from(sorted(FLOAT64)))
def test_activate_against_float64(x, name):
    x = np.concatenate([x, np.array([0.0, -0.0, 88.5, -88.5, 200.0, -200.0], np.float32)])
    y = x.copy()
    _kernels.activate(y, _kernels.ACTIVATION_CODES[name])
    assert np.max(np.abs(y - FLOAT64[name](x.astype(np.float64)))) <= ATOL
    # and the op of the general graph computes the same bits, on a copy
    op = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}[name]
    out = REGISTRY[op].run({}, [x])[0]
    assert np.array_equal(out, y) and out is not x


@pytest.mark.parametrize("name", sorted(FLOAT64))
def test_activate_infinities_and_nan(name):
    x = np.array([np.inf, -np.inf, np.nan], np.float32)
    _kernels.activate(x, _kernels.ACTIVATION_CODES[name])
    want = {"sigmoid": [1, 0], "tanh": [1, -1], "relu": [np.inf, 0]}[name]
    assert np.array_equal(x[:2], np.array(want, np.float32)) and np.isnan(x[2])


def _model_file(tmp_path, nodes, x_shape, inits):
    model = helper.make_model(
        helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "acts.onnx")
    onnx.save(model, path)
    return path


def _check(path, feed, monkeypatch, unfused_pass):
    model = grurt.load(path)
    got = model.run(feed)
    described = model.plan(model._inputs(feed)).describe()
    with monkeypatch.context() as patch:
        patch.setattr(tensor_passes, unfused_pass, lambda steps, *args: steps)
        unfused = grurt.load(path).run(feed)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for want in (session.run(None, feed)[0], run_tensor_graph(model.graph, feed), unfused):
        want = want[0] if isinstance(want, (list, tuple)) else want
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.max(np.abs(got - want)) <= ATOL
    return described


@pytest.mark.parametrize("act", ["Sigmoid", "Tanh", "Relu"])
@pytest.mark.parametrize("rows, n_in, n_out", [(1, 256, 1), (1, 40, 24), (3, 7, 70)])
def test_gemm_packed_and_its_activation_are_one_step(tmp_path, monkeypatch, act, rows, n_in, n_out):
    """A Linear (MatMul + Add of constants) and its activation: one Gemm packed step, where one is packed."""
    rng = np.random.default_rng(n_out)
    inits = {"W": (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
             "b": rng.standard_normal(n_out).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node(act, ["a"], ["y"])]
    path = _model_file(tmp_path, nodes, (1, rows, n_in), inits)
    described = _check(path, {"x": rng.standard_normal((1, rows, n_in)).astype(np.float32) * 3}, monkeypatch,
                       "_linear_activations")
    if rows == 1 or "Gemm packed" in described:        # one row is always packed (PACKED_MIN_OUTPUTS)
        assert f"Gemm packed+{act}(" in described and f"= {act}" not in described


@pytest.mark.parametrize("act", ["Sigmoid", "Tanh", "Relu"])
@pytest.mark.parametrize("perm", [(0, 1, 2), (0, 2, 1)])
def test_activation_in_place_on_contiguous_and_strided_views(tmp_path, monkeypatch, act, perm):
    """MatMul -> Transpose (a strided view when perm moves axes) -> act: in place on the MatMul's array, the
    same bits as the op on its own."""
    rng = np.random.default_rng(3)
    inits = {"W": rng.standard_normal((6, 9)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Transpose", ["m"], ["t"], perm=perm),
             helper.make_node(act, ["t"], ["y"])]
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    path = _model_file(tmp_path, nodes, x.shape, inits)
    described = _check(path, {"x": x}, monkeypatch, "_in_place")
    assert f"{act} in place(" in described
    alone = REGISTRY[act].run({}, [np.matmul(x, inits["W"]).transpose(perm)])[0]
    assert np.array_equal(grurt.load(path).run({"x": x}), alone)
