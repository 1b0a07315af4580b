"""The fused attention step of grurt.tensor_passes (``MatMul+Softmax+MatMul``, run by
grurt._kernels.attention): where it applies (the plan's description names it, the Softmax step is
gone) and where it must not (the scores read elsewhere, another axis, a broadcast batch, a mask
added), each model's outputs against onnxruntime and grurt's float64 reference (ATOL,
tests/tolerances.py); the attention models of PyTorch (nn.MultiheadAttention, exported) and of
Keras (MultiHeadAttention, lowered) against the framework itself (ATOL)."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import grurt  # noqa: E402
from grurt.reference import run_tensor_graph  # noqa: E402
from op_testing import assert_within  # noqa: E402
from tolerances import ATOL  # noqa: E402

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FUSED = "MatMul+Softmax+MatMul"


def _attention_file(tmp_path, shape, scale="none", batch_k=None, scores_out=False, axis=-1, mask=False):
    """softmax(scale · (q^T-ish) @ k) @ v over heads, as Keras and PyTorch export it: q, k, v (B, T, H, D)
    inputs, transposed to (B, H, T, D) and (B, H, D, T), the result transposed back to (B, T, H, D)."""
    b, t, h, d = shape
    nodes = [helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["qt", "kt"], ["s"])]
    inits = []
    scores = "s"
    if scale != "none":
        inits.append(numpy_helper.from_array(np.array(0.25 if scale != "div" else 4.0, np.float32), "c"))
        operands = {"mul": ["s", "c"], "mul-left": ["c", "s"], "div": ["s", "c"]}[scale]
        nodes.append(helper.make_node("Div" if scale == "div" else "Mul", operands, ["scaled"]))
        scores = "scaled"
    if mask:
        inits.append(numpy_helper.from_array(np.triu(np.full((t, t), -1e9, np.float32), 1), "mask"))
        nodes.append(helper.make_node("Add", [scores, "mask"], ["masked"]))
        scores = "masked"
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=axis),
              helper.make_node("MatMul", ["p", "vt"], ["o"]),
              helper.make_node("Transpose", ["o"], ["y"], perm=[0, 2, 1, 3])]
    kb = b if batch_k is None else batch_k
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [b, t, h, d]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [kb, t, h, d]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [b, t, h, d])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if scores_out:
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    model = helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "attention.onnx")
    onnx.save(model, path)
    return path


def _run_all(path, feed):
    """grurt's outputs and its plan's description, after checking them against onnxruntime and the
    float64 reference."""
    model = grurt.load(path)
    got = model.run(feed)
    got = got if isinstance(got, tuple) else (got,)
    plan = model.plan(model._inputs(feed))
    check_slots(plan)
    described = plan.describe()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    oracles = [session.run(None, feed), run_tensor_graph(model.graph, feed)]
    assert_within(got, oracles, ATOL)
    return got, described


def _feed(shape, batch_k=None, seed=0):
    rng = np.random.default_rng(seed)
    kshape = (shape[0] if batch_k is None else batch_k,) + shape[1:]
    return {"q": rng.standard_normal(shape).astype(np.float32), "k": rng.standard_normal(kshape).astype(np.float32),
            "v": rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("scale", ["none", "mul", "mul-left", "div"])
@pytest.mark.parametrize("shape", [(1, 20, 4, 8), (3, 7, 2, 5), (2, 1, 1, 1), (1, 33, 3, 16)])
def test_attention_is_one_step(tmp_path, scale, shape):
    """The chain and its four transposes are one step, scaled by the constant (Mul either side, Div)."""
    feed = _feed(shape)
    _, described = _run_all(_attention_file(tmp_path, shape, scale), feed)
    assert FUSED in described and "Softmax(" not in described and "Transpose(" not in described
    assert ("= Mul(" not in described and "= Div(" not in described)


@pytest.mark.parametrize("case", ["scores also an output", "softmax over another axis", "broadcast batch",
                                  "mask added"])
def test_attention_left_alone(tmp_path, case):
    shape = (2, 6, 2, 4)
    batch_k = 1 if case == "broadcast batch" else None
    path = _attention_file(tmp_path, shape, "mul", batch_k=batch_k, scores_out=case == "scores also an output",
                           axis=2 if case == "softmax over another axis" else -1, mask=case == "mask added")
    _, described = _run_all(path, _feed(shape, batch_k))
    assert FUSED not in described and "Softmax(" in described


@pytest.mark.parametrize("case", ["heads", "heads, keepdims", "one head", "mean over heads", "output read twice"])
def test_mean_of_attention_is_the_attention_of_the_mean(tmp_path, case):
    """softmax(q·kᵀ)·v → its output projection → the mean over the queries (GlobalAveragePooling1D after
    MultiHeadAttention, as Keras lowers it) is the mean of the softmax rows times v, then one row
    through the projection; one head (B, T, D) too. Another mean, or the attention's output read
    elsewhere, left alone."""
    one_head = case == "one head"
    b, t, h, d, n = 2, 7, (1 if one_head else 3), 4, 40
    e = h * d
    if one_head:
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                 helper.make_node("MatMul", ["p", "v"], ["o"])]
    else:
        nodes = [helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
                 helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
                 helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
                 helper.make_node("MatMul", ["qt", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                 helper.make_node("MatMul", ["p", "vt"], ["ot"]),
                 helper.make_node("Transpose", ["ot"], ["o"], perm=[0, 2, 1, 3])]
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array(np.array([b * t, e], np.int64), "rows"),
             numpy_helper.from_array(np.array([b, t, n], np.int64), "back"),
             numpy_helper.from_array((0.5 * rng.standard_normal((e, n))).astype(np.float32), "w"),
             numpy_helper.from_array((0.5 * rng.standard_normal(n)).astype(np.float32), "c")]
    nodes += [helper.make_node("Reshape", ["o", "rows"], ["o2"]), helper.make_node("Gemm", ["o2", "w", "c"], ["y2"]),
              helper.make_node("Reshape", ["y2", "back"], ["y3"]),
              helper.make_node("ReduceMean", ["y3"], ["y"], axes=[2 if case == "mean over heads" else 1],
                               keepdims=int(case == "heads, keepdims"))]
    shape = [b, t, d] if one_head else [b, t, h, d]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in (["y", "o"] if case == "output read twice" else ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape) for x in "qkv"], outputs, inits),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "mean.onnx")
    onnx.save(model, path)
    rng = np.random.default_rng(9)
    _, described = _run_all(path, {x: rng.standard_normal(shape).astype(np.float32) for x in "qkv"})
    fused = case in ("heads", "heads, keepdims", "one head")
    assert (f"{FUSED} mean" in described) == fused
    assert ("ReduceMean(" in described or "ReduceMean+" in described) != fused


def test_attention_reads_any_layout():
    """Operands BLAS cannot read as they are (a step of 2 along the last axis) are copied first; a
    broadcast-free batch of two dims; the result written through strides."""
    from grurt import _kernels

    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 5, 14)).astype(np.float32)[..., ::2]         # (2, 3, 5, 7), step 2
    b = rng.standard_normal((2, 3, 6, 7)).astype(np.float32).swapaxes(-1, -2)   # (2, 3, 7, 6), transposed
    c = rng.standard_normal((2, 3, 6, 4)).astype(np.float32)
    y = np.empty((2, 5, 3, 4), np.float32)
    _kernels.attention(a, b, c, y.transpose(0, 2, 1, 3), 0.5)
    s = 0.5 * (a.astype(np.float64) @ b)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ c
    assert np.max(np.abs(y.transpose(0, 2, 1, 3) - want)) <= ATOL


def test_torch_multihead_attention(tmp_path):
    """nn.MultiheadAttention after a bidirectional GRU, exported by torch.onnx (TorchScript): the
    attention is one step, the outputs torch's and onnxruntime's."""
    torch = pytest.importorskip("torch")

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(6, 8, batch_first=True, bidirectional=True)
            self.mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x):
            h, _ = self.gru(x)
            a, _ = self.mha(h, h, h, need_weights=False)
            return self.head(a.mean(dim=1))

    torch.manual_seed(0)
    module = Model().eval()
    x = np.random.default_rng(2).standard_normal((2, 15, 6)).astype(np.float32)
    path = str(tmp_path / "mha.onnx")
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(module, (torch.from_numpy(x),), path, input_names=["x"], output_names=["y"],
                              dynamo=False, opset_version=17)
            want = module(torch.from_numpy(x)).numpy()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    (got,), described = _run_all(path, {"x": x})
    assert FUSED in described and "Softmax(" not in described
    assert np.max(np.abs(got - want)) <= ATOL


def test_keras_multi_head_attention():
    """The issue's Keras model (BiGRU → MultiHeadAttention → GlobalAveragePooling1D → Dense), lowered:
    the attention is one step, the output Keras predict's."""
    keras = pytest.importorskip("keras")
    from keras import layers

    x_in = keras.Input((12, 5))
    h = layers.Bidirectional(layers.GRU(16, return_sequences=True))(x_in)
    a = layers.MultiHeadAttention(num_heads=4, key_dim=6)(h, h)
    model = keras.Model(x_in, layers.Dense(3)(layers.GlobalAveragePooling1D()(a)))
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign((0.4 * rng.standard_normal(tuple(weight.shape))).astype(np.float32))
    x = rng.standard_normal((2, 12, 5)).astype(np.float32)
    converted = grurt.from_keras(model)
    got = converted.run(x)
    plan = converted.plan(converted._inputs(x))
    check_slots(plan)
    described = plan.describe()
    assert f"{FUSED} mean" in described and "Softmax(" not in described and "= ReduceMean" not in described
    assert "Gemm packed" in described      # the projections (the Dense of 3 outputs, 2 rows, stays BLAS's)
    assert np.max(np.abs(got - model.predict(x, verbose=0))) <= ATOL


def check_slots(plan):
    """Every slot a step reads holds an array then: an input, a constant, or the output of an earlier
    step not freed since (the rewrites move frees and drop steps)."""
    live = {slot for slot, value in enumerate(plan.slots) if value is not None} | set(plan.input_slots) | {0}
    for _, _, ins, outs, frees, node in plan.steps:
        assert set(ins) <= live, (node.name, set(ins) - live)
        live |= {slot for _, slot in outs}
        live -= set(frees)
    assert set(plan.outputs) <= live
