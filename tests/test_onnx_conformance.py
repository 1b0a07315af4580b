"""The ONNX backend conformance node tests for GRU, generated from onnx's own definitions.

onnx 1.23 wheels no longer ship the generated test data, so the cases are produced by
running ``onnx/backend/test/case/node/gru.py`` with its ``expect`` replaced by a collector.
grurt must reproduce the expected outputs within 1e-5 (ATOL). The node's W, R and B are
graph inputs in those cases; grurt reads weights from the file, so they become initializers.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
gru_cases = pytest.importorskip("onnx.backend.test.case.node.gru")

from onnx import helper, numpy_helper  # noqa: E402

from grurt.importers.onnx import load_onnx  # noqa: E402
from tolerances import ATOL

WEIGHTS = ("W", "R", "B")


def collect_cases():
    """(name, node, inputs, outputs) of every GRU case onnx defines."""
    cases = []
    original = gru_cases.expect
    gru_cases.expect = lambda node, inputs, outputs, name, **kwargs: cases.append((name, node, inputs, outputs))
    try:
        for name in sorted(vars(gru_cases.GRU)):
            if name.startswith("export"):
                np.random.seed(0)   # export_seq_length draws random weights
                getattr(gru_cases.GRU, name)()
    finally:
        gru_cases.expect = original
    return cases


CASES = collect_cases()


def test_all_onnx_gru_cases_are_collected():
    names = {case[0] for case in CASES}
    assert {"test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length", "test_gru_batchwise",
            "test_gru_reverse", "test_gru_bidirectional"} <= names


def to_model(tmp_path, node, inputs, outputs):
    """The case's node with its weights as initializers and X as the only graph input."""
    present = [name for name in node.input if name]
    values = dict(zip(present, inputs))
    initializers = [numpy_helper.from_array(values[name], name) for name in present if name in WEIGHTS]
    graph_inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, values[name].shape)
                    for name in present if name not in WEIGHTS]
    graph_outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                     for name in node.output if name]
    graph = helper.make_graph([node], "conformance", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 22)], ir_version=10)
    path = str(tmp_path / "case.onnx")
    onnx.save(model, path)
    return path, values


@pytest.mark.parametrize("name,node,inputs,outputs", CASES, ids=[case[0] for case in CASES])
def test_onnx_conformance_case(tmp_path, name, node, inputs, outputs):
    path, values = to_model(tmp_path, node, inputs, outputs)
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    x = values["X"] if layout == 1 else values["X"].transpose(1, 0, 2)       # grurt takes (B, T, I)
    out, states = load_onnx(path).run(x, return_state=True)
    expected = dict(zip([n for n in node.output if n], outputs))
    if "Y" in expected:
        Y = expected["Y"] if layout == 1 else expected["Y"].transpose(2, 0, 1, 3)     # (B, T, D, H)
        np.testing.assert_allclose(out, Y.reshape(Y.shape[0], Y.shape[1], -1), rtol=0, atol=ATOL)
    Y_h = expected["Y_h"] if layout == 0 else expected["Y_h"].transpose(1, 0, 2)      # (D, B, H)
    np.testing.assert_allclose(states[0], Y_h, rtol=0, atol=ATOL)
    if "Y" not in expected:   # only Y_h read: the model's output is the final state
        np.testing.assert_allclose(out, Y_h.transpose(1, 0, 2).reshape(Y_h.shape[1], -1), rtol=0, atol=ATOL)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("layout", [0, 1])
def test_onnx_gru_helper_grid(tmp_path, direction, lbr, layout):
    """More cases from onnx's GRUHelper: bias, initial state, both reset positions, both layouts."""
    rng = np.random.default_rng(lbr + 2 * layout)
    D, T, B, I, H = (2 if direction == "bidirectional" else 1), 4, 3, 2, 5
    X = rng.standard_normal((T, B, I) if layout == 0 else (B, T, I)).astype(np.float32)
    W = rng.standard_normal((D, 3 * H, I)).astype(np.float32)
    R = rng.standard_normal((D, 3 * H, H)).astype(np.float32)
    Bias = rng.standard_normal((D, 6 * H)).astype(np.float32)
    h0 = rng.standard_normal((D, B, H) if layout == 0 else (B, D, H)).astype(np.float32)
    Y, Y_h = gru_cases.GRUHelper(X=X, W=W, R=R, B=Bias, initial_h=h0, direction=direction,
                                 linear_before_reset=lbr, layout=layout).step()
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "initial_h"], ["Y", "Y_h"], hidden_size=H,
                            direction=direction, linear_before_reset=lbr, layout=layout)
    path, _ = to_model(tmp_path, node, [X, W, R, Bias, h0], [Y, Y_h])
    x = X if layout == 1 else X.transpose(1, 0, 2)
    state = h0 if layout == 0 else h0.transpose(1, 0, 2)
    out, states = load_onnx(path).run(x, initial_state=[state], return_state=True)
    Y = Y if layout == 1 else Y.transpose(2, 0, 1, 3)
    np.testing.assert_allclose(out, Y.reshape(B, T, D * H), rtol=0, atol=ATOL)
    np.testing.assert_allclose(states[0], Y_h if layout == 0 else Y_h.transpose(1, 0, 2), rtol=0, atol=ATOL)
