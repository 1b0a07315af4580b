"""Gemms of constant weights on grurt's panel kernels (grurt.tensor_passes: ``Gemm packed``, run by
grurt._kernels.Linear), and the Gemms reading one input as one product: where they apply (the
plan's description names them), where they must not (A transposed, a bias of several rows or
computed, weights too large), each model's outputs against onnxruntime and grurt's float64
reference (ATOL, tests/tolerances.py)."""
import numpy as np
import pytest

import grurt
from grurt import tensor_passes
from grurt.reference import run_tensor_graph
from test_tensor_attention import check_slots
from tolerances import ATOL

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

rng = np.random.default_rng(11)


def _f32(*shape):
    return (0.5 * rng.standard_normal(shape)).astype(np.float32)


def _check(tmp_path, nodes, inits, inputs, outputs, feed):
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                                                for n, s in inputs],
                                                [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                                 for n in outputs],
                                                [numpy_helper.from_array(a, n) for n, a in inits.items()]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "g.onnx")
    onnx.save(model, path)
    grurt_model = grurt.load(path)
    got = grurt_model.run(feed)
    got = got if isinstance(got, tuple) else (got,)
    plan = grurt_model.plan(grurt_model._inputs(feed))
    check_slots(plan)
    want_ort = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)
    want_ref = run_tensor_graph(grurt_model.graph, feed)
    want_ref = want_ref if isinstance(want_ref, (list, tuple)) else [want_ref]
    for oracle in (want_ort, want_ref):
        assert len(oracle) == len(got)
        for ours, want in zip(got, oracle):
            assert ours.shape == np.shape(want) and ours.dtype == np.float32
            assert np.max(np.abs(ours - want), initial=0) <= ATOL
    return got, plan.describe()


@pytest.mark.parametrize("bias", ["none", "row", "row 2-D", "scalar"])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("rows", [1, 9, 100])
def test_gemm_of_constant_weights_is_packed(tmp_path, bias, trans_b, rows):
    """alpha and beta folded, B given transposed or not, the bias a row, a scalar or none; 40 outputs
    (a whole panel and a part), and 5 (fewer than a panel: dot products per output) of one row only
    (more rows of so few outputs stay BLAS's)."""
    for n_out in (40, 5):
        w = _f32(n_out, 24) if trans_b else _f32(24, n_out)
        inits = {"w": w}
        names = ["x", "w"]
        if bias != "none":
            inits["c"] = {"row": _f32(n_out), "row 2-D": _f32(1, n_out), "scalar": _f32(1)}[bias]
            names.append("c")
        node = helper.make_node("Gemm", names, ["y"], alpha=0.7, beta=1.3, transB=trans_b)
        feed = {"x": _f32(rows, 24)}
        _, described = _check(tmp_path, [node], inits, [("x", [rows, 24])], ["y"], feed)
        packed = n_out >= tensor_passes.PACKED_MIN_OUTPUTS or rows == 1
        assert ("Gemm packed" in described) == packed and ("= Gemm(" in described) != packed


@pytest.mark.parametrize("case", ["A transposed", "bias of several rows", "bias computed", "weights too large",
                                  "few outputs"])
def test_gemm_left_alone(tmp_path, case, monkeypatch):
    n = 8 if case == "few outputs" else 40
    inits = {"w": _f32(16, n)}
    inputs = [("x", [16, 6] if case == "A transposed" else [6, 16])]
    names = ["x", "w"]
    if case == "bias of several rows":
        inits["c"] = _f32(6, n)
        names.append("c")
    if case == "bias computed":
        inputs.append(("c", [n]))
        names.append("c")
    if case == "weights too large":
        monkeypatch.setattr(tensor_passes, "PACKED_MAX_WEIGHTS", 16 * n - 1)
    node = helper.make_node("Gemm", names, ["y"], transA=int(case == "A transposed"))
    feed = {name: _f32(*shape) for name, shape in inputs}
    _, described = _check(tmp_path, [node], inits, inputs, ["y"], feed)
    assert "Gemm packed" not in described and "= Gemm(" in described


@pytest.mark.parametrize("readers", ["attention", "elementwise", "graph output"])
def test_gemms_of_one_input_are_one_product(tmp_path, readers):
    """Q, K and V projections of one input (each through its own equal Reshape, as Keras lowers
    them) are one packed product; its column blocks are views for an attention step, copies for
    other readers; a projection that is also a graph output stays right."""
    t, f, h, d = 12, 16, 2, 16
    nodes, inits = [], {"shape2": np.array([t, f], np.int64), "shape4": np.array([1, t, h, d], np.int64)}
    for name in "qkv":
        inits[f"w{name}"], inits[f"b{name}"] = _f32(f, h * d), _f32(h * d)
        nodes += [helper.make_node("Reshape", ["x", "shape2"], [f"x2{name}"]),
                  helper.make_node("Gemm", [f"x2{name}", f"w{name}", f"b{name}"], [f"{name}2"]),
                  helper.make_node("Reshape", [f"{name}2", "shape4"], [f"{name}4"])]
    outputs = ["y"]
    if readers == "elementwise":
        nodes += [helper.make_node("Add", ["q4", "k4"], ["s"]), helper.make_node("Mul", ["s", "v4"], ["y"])]
    else:
        nodes += [helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
                  helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
                  helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
                  helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
                  helper.make_node("MatMul", ["p", "vt"], ["o"]),
                  helper.make_node("Transpose", ["o"], ["y"], perm=[0, 2, 1, 3])]
        if readers == "graph output":
            outputs.append("k2")
    got, described = _check(tmp_path, nodes, inits, [("x", [1, t, f])], outputs, {"x": _f32(1, t, f)})
    assert described.count("Gemm packed") == 1 and "= Gemm(" not in described
    assert described.count("= Reshape(x,") == 1                         # the three equal views are one
    assert all(array.flags.c_contiguous and array.base is None for array in got)


@pytest.mark.parametrize("case", ["keras", "keepdims", "torch", "mean over features", "projection read twice"])
def test_mean_of_a_projection_is_the_projection_of_the_mean(tmp_path, case):
    """Gemm → Reshape (B, T, N) → ReduceMean over T (Keras: GlobalAveragePooling1D after the attention's
    output projection) is the mean of the rows, then one Gemm per mean; PyTorch's (T, B, N) → Transpose
    → mean too; a mean over the features, or a projection read elsewhere, left alone."""
    b, t, k, n = 2, 9, 6, 40
    inits = {"w": _f32(k, n), "c": _f32(n), "shape": np.array([t, b, n] if case == "torch" else [b, t, n], np.int64)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["y3"])]
    pooled = "y3"
    if case == "torch":
        nodes.append(helper.make_node("Transpose", ["y3"], ["yt"], perm=[1, 0, 2]))
        pooled = "yt"
    axis = 2 if case == "mean over features" else 1
    nodes.append(helper.make_node("ReduceMean", [pooled], ["m"], axes=[axis], keepdims=int(case == "keepdims")))
    outputs = ["m", "y"] if case == "projection read twice" else ["m"]
    _, described = _check(tmp_path, nodes, inits, [("x", [b * t, k])], outputs, {"x": _f32(b * t, k)})
    fused = case in ("keras", "keepdims", "torch")
    assert ("ReduceMean+Gemm" in described) == fused and ("= ReduceMean(" in described) != fused


def test_gemm_of_no_rows(tmp_path):
    """A Gemm of 0 rows stays numpy's (an empty (0, N) output), the graph still right."""
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"])
    got, described = _check(tmp_path, [node], {"w": _f32(4, 3), "c": _f32(3)}, [("x", ["n", 4])], ["y"],
                            {"x": np.zeros((0, 4), np.float32)})
    assert got[0].shape == (0, 3) and "Gemm packed" not in described


@pytest.mark.parametrize("case", ["3-D input", "2-D input", "with a Gemm of the same input", "batched weights",
                                  "1-D input"])
def test_matmul_of_constant_weights_is_packed(tmp_path, case):
    """MatMul of A (…, K) by constant W (K, N), as PyTorch exports nn.Linear on 3-D inputs (MatMul then
    Add): A's leading dims are the rows; with a Gemm of the same input, one product. Batched (3-D)
    weights or a 1-D A stay numpy's."""
    shape = {"3-D input": [2, 7, 6], "1-D input": [6]}.get(case, [7, 6])
    w = _f32(3, 6, 40) if case == "batched weights" else _f32(6, 40)
    inits = {"w": w, "b": _f32(40)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    outputs = ["y"]
    if case == "with a Gemm of the same input":
        inits["w2"], inits["c2"] = _f32(6, 35), _f32(35)
        nodes.append(helper.make_node("Gemm", ["x", "w2", "c2"], ["z"]))
        outputs.append("z")
    _, described = _check(tmp_path, nodes, inits, [("x", shape)], outputs, {"x": _f32(*shape)})
    packed = case not in ("batched weights", "1-D input")
    assert described.count("Gemm packed") == int(packed) and ("= MatMul(" in described) != packed


@pytest.mark.parametrize("bias_shape, merged", [((40,), True), ((1, 1, 40), True), ((1, 40), True),
                                                ((7, 40), False), ((), False)])
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_then_bias_row_is_one_linear_step(tmp_path, bias_shape, merged, bias_first):
    """``Add(MatMul(x, W), c)`` (a Linear on a sequence, as PyTorch and Keras export it) is one product
    with its bias when c is a row of the outputs (either operand of the Add); a c that varies along
    another axis, or a scalar, leaves the pair as it is."""
    w, c = _f32(24, 40), _f32(*bias_shape)
    add = ["c", "p"] if bias_first else ["p", "c"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", add, ["y"])]
    feed = {"x": _f32(2, 7, 24)}
    _, described = _check(tmp_path, nodes, {"w": w, "c": c}, [("x", [2, 7, 24])], ["y"], feed)
    assert described.startswith("1 steps" if merged else "2 steps")       # packed with its bias, or as it was


def test_a_product_read_elsewhere_keeps_its_own_step(tmp_path):
    w, c = _f32(24, 40), _f32(40)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "c"], ["y"])]
    _, described = _check(tmp_path, nodes, {"w": w, "c": c}, [("x", [2, 7, 24])], ["y", "p"], {"x": _f32(2, 7, 24)})
    assert described.startswith("2 steps") and "Add" in described


def test_a_narrow_linear_step_runs_on_blas_with_its_bias(tmp_path):
    """5 outputs of 14 rows: not packed (too few outputs per row), one numpy product plus the bias row."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "c"], ["y"])]
    _, described = _check(tmp_path, nodes, {"w": _f32(24, 5), "c": _f32(5)}, [("x", [2, 7, 24])], ["y"],
                          {"x": _f32(2, 7, 24)})
    assert described.startswith("1 steps") and "= MatMul+Add(x)" in described
