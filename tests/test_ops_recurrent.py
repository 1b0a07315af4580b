"""The ONNX GRU op (grurt.ops.recurrent) on grurt's kernels vs onnxruntime and vs its float64
reference (grurt.reference_ops.recurrent), to ATOL (tests/tolerances.py): every direction, both
linear_before_reset, sequence_lens, initial_h, activations with alpha/beta (per direction too),
clip. onnxruntime refuses layout=1: the layout-1 op is compared with onnxruntime's layout-0
results, transposed."""
import itertools

import numpy as np
import pytest

from grurt.errors import InputError, ModelFormatError
from grurt.ops import REGISTRY, check_attributes
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_model import TensorModel
from op_testing import reference_op, run_op
from tolerances import ATOL

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

T, B, I, H = 6, 3, 4, 5
NAMES = ["X", "W", "R", "B", "sequence_lens", "initial_h"]


def ort_gru(attrs, inputs):
    """onnxruntime's (Y, Y_h) of a one-node GRU model (W, R, B initializers)."""
    names, graph_inputs, initializers, feed = [], [], [], {}
    for name, value in zip(NAMES, inputs):
        if value is None:
            names.append("")
            continue
        names.append(name)
        if name in ("W", "R", "B"):
            initializers.append(numpy_helper.from_array(value, name))
        else:
            value = value.astype(np.int32) if name == "sequence_lens" else value
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                              list(value.shape)))
            feed[name] = value
    node = helper.make_node("GRU", names, ["Y", "Y_h"], **attrs)
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h")]
    model = helper.make_model(helper.make_graph([node], "g", graph_inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def gru_inputs(seed, direction, lengths=True, initial=True):
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    return [rng.standard_normal((T, B, I)).astype(np.float32),
            (rng.standard_normal((D, 3 * H, I)) * 0.6).astype(np.float32),
            (rng.standard_normal((D, 3 * H, H)) * 0.6).astype(np.float32),
            (rng.standard_normal((D, 6 * H)) * 0.4).astype(np.float32),
            rng.integers(1, T + 1, B).astype(np.int64) if lengths else None,
            rng.standard_normal((D, B, H)).astype(np.float32) if initial else None]


def to_layout_1(inputs):
    x, W, R, Bias, lengths, h0 = inputs
    return [x.transpose(1, 0, 2).copy(), W, R, Bias, lengths, None if h0 is None else h0.transpose(1, 0, 2).copy()]


def check(attrs, inputs):
    """grurt and its reference vs onnxruntime, in layout 0 and layout 1; returns the largest error."""
    expected = ort_gru(attrs, inputs)
    worst = 0.0
    for layout in (0, 1):
        given = inputs if layout == 0 else to_layout_1(inputs)
        oracle = expected if layout == 0 else [expected[0].transpose(2, 0, 1, 3), expected[1].transpose(1, 0, 2)]
        full = dict(attrs, layout=layout)
        for got in (run_op("GRU", full, given), reference_op("GRU", full, given)):
            for a, b in zip(got, oracle):
                assert a.shape == b.shape
                error = float(np.max(np.abs(np.asarray(a, np.float64) - b)))
                assert error <= ATOL, (attrs, layout, error)
                worst = max(worst, error)
    return worst


@pytest.mark.parametrize("direction, lbr, lengths, initial", [
    (d, lbr, lengths, initial) for d, lbr, (lengths, initial) in itertools.product(
        ("forward", "reverse", "bidirectional"), (0, 1), ((False, False), (True, True), (True, False), (False, True)))])
def test_gru_matches_onnxruntime(direction, lbr, lengths, initial):
    inputs = gru_inputs(hash((direction, lbr, lengths, initial)) % 1000, direction, lengths, initial)
    check({"hidden_size": H, "direction": direction, "linear_before_reset": lbr}, inputs)


@pytest.mark.parametrize("attrs", [
    {"activations": ["HardSigmoid", "Softsign"], "activation_alpha": [0.3], "activation_beta": [0.4]},
    {"activations": ["Sigmoid", "LeakyRelu"], "activation_alpha": [0.2], "clip": 0.7},
    {"activations": ["Sigmoid", "ScaledTanh"], "activation_alpha": [1.3], "activation_beta": [0.7]},
    {"activations": ["Sigmoid", "Tanh", "HardSigmoid", "Relu"], "direction": "bidirectional"},
    {"activations": ["Sigmoid", "Tanh", "Sigmoid", "Elu"], "activation_alpha": [0.5], "direction": "bidirectional",
     "linear_before_reset": 1},
    {"clip": 0.5, "linear_before_reset": 1, "direction": "reverse"},
])
def test_gru_activations_and_clip(attrs):
    inputs = gru_inputs(7, attrs.get("direction", "forward"))
    check({"hidden_size": H, **attrs}, inputs)


def test_hidden_size_from_R_and_optional_outputs():
    inputs = gru_inputs(3, "forward", lengths=False, initial=False)
    expected = ort_gru({"hidden_size": H}, inputs)
    Y, Y_h = run_op("GRU", {}, inputs[:3])                          # no hidden_size, no B
    expected_no_bias = ort_gru({"hidden_size": H}, inputs[:3] + [None] * 3)
    assert np.max(np.abs(Y - expected_no_bias[0])) <= ATOL and np.max(np.abs(Y_h - expected_no_bias[1])) <= ATOL
    # a node that names only Y_h
    graph = TensorGraph([TensorInput("x", "float32", ("T", "B", I))],
                        [TensorNode("GRU", ("x", "W", "R", "B"), ("", "h"), {"hidden_size": H}, "gru")], ["h"],
                        dict(zip("WRB", inputs[1:4])))
    assert np.max(np.abs(TensorModel(graph).run(inputs[0]) - expected[1])) <= ATOL


def test_gru_errors_name_what_is_wrong():
    inputs = gru_inputs(4, "forward")
    op = REGISTRY["GRU"]
    with pytest.raises(ModelFormatError, match="attribute direction of GRU: must be one of"):
        check_attributes(op, {"direction": "sideways"}, "node 'g'")
    with pytest.raises(ModelFormatError, match="attribute layout of GRU: must be 0 or 1"):
        check_attributes(op, {"layout": 2}, "node 'g'")
    with pytest.raises(ModelFormatError, match="activation 'Gelu' is not supported"):
        check_attributes(op, {"activations": ["Gelu", "Tanh"]}, "node 'g'")
    with pytest.raises(ModelFormatError, match=r"W has shape \(1, 15, 4\); with hidden_size=6"):
        run_op("GRU", {"hidden_size": 6}, inputs)
    with pytest.raises(ModelFormatError, match="initial_h has shape"):
        run_op("GRU", {"hidden_size": H}, inputs[:5] + [np.zeros((1, 2, H))])
    with pytest.raises(ModelFormatError, match="activation_alpha/activation_beta hold more values"):
        run_op("GRU", {"hidden_size": H, "activation_alpha": [0.5]}, inputs)
    with pytest.raises(InputError, match="lengths must be between 1 and 6"):
        run_op("GRU", {"hidden_size": H}, inputs[:4] + [np.array([0, 2, 3])] + inputs[5:])
