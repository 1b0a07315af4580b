"""Grouped linears (an Einsum "...gi,gih->...gh" of constant weights: DeepFilterNet's
GroupedLinearEinsum) on grurt._kernels.GroupedLinear, and the rewrite of grurt.tensor_passes that
puts them there with the Reshapes around them and the activation after them: the kernel against a
float64 einsum on hypothesis-drawn shapes, every activation (ATOL, tests/tolerances.py); a row's
result not depending on the call's other rows (np.array_equal); the rewrite where it applies (the
plan's description names it, the Reshapes and the activation are gone) and where it must not, each
model's outputs against onnxruntime, grurt's float64 reference (ATOL) and the same plan without
the rewrite (ATOL: the sums' order changes)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import grurt
from grurt import _kernels, tensor_passes
from grurt.reference import run_tensor_graph
from op_testing import assert_within
from tolerances import ATOL

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ACTS = {"linear": lambda y: y, "relu": lambda y: np.maximum(y, 0), "sigmoid": lambda y: 1 / (1 + np.exp(-y)),
        "tanh": np.tanh}


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 5), n_in=st.integers(1, 37), n_out=st.integers(1, 40),
       act=st.sampled_from(sorted(ACTS)), seed=st.integers(0, 2**16))
def test_kernel_against_float64(rows, groups, n_in, n_out, act, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((groups, n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    x = rng.standard_normal((rows, groups, n_in)).astype(np.float32)
    kernel = _kernels.GroupedLinear(w, rows, (rows, groups * n_out), _kernels.ACTIVATION_CODES[act])
    y = kernel(x)
    want = ACTS[act](np.einsum("rgi,gih->rgh", x.astype(np.float64), w.astype(np.float64))).reshape(rows, -1)
    assert y.shape == (rows, groups * n_out) and y.dtype == np.float32
    assert np.max(np.abs(y - want)) <= ATOL
    # a row's sums do not depend on the rows around it: each row alone gives the same bits
    for r in range(rows):
        alone = _kernels.GroupedLinear(w, 1, (1, groups * n_out), _kernels.ACTIVATION_CODES[act])(x[r:r + 1])
        assert np.array_equal(alone[0], y[r])


def test_kernel_reads_any_layout_and_nan():
    """A non-contiguous input is read in C order (a copy); a NaN input gives NaN outputs for its row only."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 6, 5)).astype(np.float32)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32).transpose(2, 1, 0)     # (3, 4, 6), strided
    kernel = _kernels.GroupedLinear(w, 3, (3, 4, 5))
    want = np.einsum("rgi,gih->rgh", x.astype(np.float64), w.astype(np.float64))
    assert np.max(np.abs(kernel(x) - want)) <= ATOL
    x = np.ascontiguousarray(x)
    x[1, 2, 3] = np.nan
    y = _kernels.GroupedLinear(w, 3, (3, 4, 5), _kernels.ACTIVATION_CODES["relu"])(x)
    assert np.isnan(y[1, 2]).all() and not np.isnan(np.delete(y.reshape(-1, 5), 1 * 4 + 2, axis=0)).any()


def _grouped_file(tmp_path, rows, groups, n_in, n_out, act="Relu", equation="...gi,gih->...gh", split_out=False,
                  extra_reader=False, weight_input=False):
    """DeepFilterNet's grouped linear as torch exports it: x (1, rows, G·I) -> Reshape (1, rows, G, I) ->
    Einsum -> Reshape (1, rows, G·H) -> act; options for where the rewrite must not (or only partly) apply."""
    rng = np.random.default_rng(rows * 100 + groups)
    w = (rng.standard_normal((groups, n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([1, rows, groups, n_in], np.int64), "split"),
             numpy_helper.from_array(np.array([1, rows, -1], np.int64), "merge")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, groups * n_in])]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes = [helper.make_node("Reshape", ["x", "split"], ["xs"]),
             helper.make_node("Einsum", ["xs", "w"], ["e"], equation=equation),
             helper.make_node("Reshape", ["e", "merge"], ["m"])]
    outputs = ["y"]
    if act:
        nodes.append(helper.make_node(act, ["m"], ["y"]))
    else:
        nodes[-1].output[0] = "y"
    if split_out:
        outputs.append("m")
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["xs"], ["n"]))
        outputs.append("n")
    model = helper.make_model(
        helper.make_graph(nodes, "grouped", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                     for o in outputs], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "grouped.onnx")
    onnx.save(model, path)
    feed = {"x": rng.standard_normal((1, rows, groups * n_in)).astype(np.float32)}
    if weight_input:
        feed["w"] = w
    return path, feed


def _run_all(path, feed, monkeypatch):
    """grurt's outputs and plan description, checked against onnxruntime, the float64 reference and the
    same model planned without the grouped-linear rewrite."""
    model = grurt.load(path)
    got = model.run(feed)
    got = got if isinstance(got, tuple) else (got,)
    described = model.plan(model._inputs(feed)).describe()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with monkeypatch.context() as patch:
        patch.setattr(tensor_passes, "_grouped_linears", lambda steps, known: steps)
        unfused = grurt.load(path).run(feed)
    assert_within(got, (session.run(None, feed), run_tensor_graph(model.graph, feed), unfused), ATOL)
    return got, described


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Tanh", None])
@pytest.mark.parametrize("rows, groups, n_in, n_out", [(1, 32, 96, 16), (20, 16, 16, 60), (3, 1, 1, 1),
                                                       (5, 3, 7, 33)])
def test_grouped_linear_is_one_step(tmp_path, monkeypatch, act, rows, groups, n_in, n_out):
    path, feed = _grouped_file(tmp_path, rows, groups, n_in, n_out, act)
    _, described = _run_all(path, feed, monkeypatch)
    assert f"Einsum grouped{'+' + act if act else ''}(" in described
    assert "Reshape(" not in described and (act is None or f"= {act}" not in described)
    assert described.splitlines()[0].startswith("1 steps")


@pytest.mark.parametrize("case", ["reshaped output also an output", "reshaped input read elsewhere"])
def test_grouped_linear_partly_fused(tmp_path, monkeypatch, case):
    """What another step reads stays a tensor of its own: the Reshape (and activation) around it stay steps."""
    path, feed = _grouped_file(tmp_path, 4, 2, 3, 5, split_out=case.startswith("reshaped output"),
                               extra_reader=case.startswith("reshaped input"))
    _, described = _run_all(path, feed, monkeypatch)
    assert "Einsum grouped" in described
    if case.startswith("reshaped output"):
        assert "Einsum grouped+Relu" not in described and "= Relu" in described
    else:
        assert described.count("Reshape(") == 1


@pytest.mark.parametrize("case", ["weight an input", "output order h, g", "summed over g"])
def test_grouped_linear_left_alone(tmp_path, monkeypatch, case):
    equation = {"output order h, g": "...gi,gih->...hg", "summed over g": "...gi,gih->...h"}.get(
        case, "...gi,gih->...gh")
    path, feed = _grouped_file(tmp_path, 4, 2, 3, 5, act=None, equation=equation,
                               weight_input=case == "weight an input")
    _, described = _run_all(path, feed, monkeypatch)
    assert "Einsum grouped" not in described and "= Einsum(" in described
