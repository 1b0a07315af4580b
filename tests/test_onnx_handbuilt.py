"""Hand-built ONNX graphs: every GRU attribute and the ops around it, against onnxruntime.

grurt's activations are fast float32 approximations, so outputs are compared at 1e-5
absolute (ATOL). onnxruntime refuses ``layout=1``; those graphs are compared with
onnxruntime on the same GRU written with layout 0, with onnx's ReferenceEvaluator and
with grurt.reference.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.errors import ModelFormatError, UnsupportedModelError  # noqa: E402
from grurt.importers.onnx import load_onnx  # noqa: E402
from grurt.tensor_model import TensorModel  # noqa: E402
from grurt.verify import onnx_outputs  # noqa: E402
from grurt.spec import GRU, Activation, Dense, LastStep, Reverse, Scale, activation  # noqa: E402
from tolerances import ATOL

BATCH, STEPS, FEATURES, HIDDEN = 3, 6, 3, 4
FLOAT = TensorProto.FLOAT


def save(path, nodes, inputs, outputs, initializers=None, opset=22):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)], ir_version=10)
    onnx.save(model, path)
    return str(path)


def tensor(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def gru_weights(seed, directions, hidden=HIDDEN, features=FEATURES, scale=0.6):
    rng = np.random.default_rng(seed)
    return {"W": (scale * rng.standard_normal((directions, 3 * hidden, features))).astype(np.float32),
            "R": (scale * rng.standard_normal((directions, 3 * hidden, hidden))).astype(np.float32),
            "B": (scale * rng.standard_normal((directions, 6 * hidden))).astype(np.float32)}


def gru_graph(path, direction="forward", layout=0, state_input=False, lengths_input=False, seed=0,
              state_batch="N", **attrs):
    """One GRU node with outputs Y and Y_h; initial_h and sequence_lens optionally graph inputs."""
    D = 2 if direction == "bidirectional" else 1
    seq_axes = ["T", "N"] if layout == 0 else ["N", "T"]
    inputs = [tensor("X", seq_axes + [FEATURES])]
    if lengths_input:
        inputs.append(tensor("lens", ["N"], TensorProto.INT32))
    if state_input:
        inputs.append(tensor("h0", [D, state_batch, HIDDEN] if layout == 0 else [state_batch, D, HIDDEN]))
    node = helper.make_node("GRU", ["X", "W", "R", "B", "lens" if lengths_input else "", "h0" if state_input else ""],
                            ["Y", "Y_h"], name="the_gru", hidden_size=HIDDEN, direction=direction,
                            **({"layout": layout} if layout else {}), **attrs)
    outputs = [tensor("Y", None), tensor("Y_h", None)]
    return save(path, [node], inputs, outputs, gru_weights(seed, D))


def data(seed=1, shape=(BATCH, STEPS, FEATURES)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def y_batch_first(Y, layout=0):
    """ONNX Y (T, D, B, H) or (B, T, D, H) as grurt's (B, T, D*H)."""
    Y = Y.transpose(2, 0, 1, 3) if layout == 0 else Y
    return Y.reshape(Y.shape[0], Y.shape[1], -1)


def run_ort(path, **feeds):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)


# ---- the GRU operator ----

@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("with_state_and_lengths", [False, True])
def test_gru_node_matches_onnxruntime(tmp_path, direction, lbr, with_state_and_lengths):
    path = gru_graph(tmp_path / "g.onnx", direction, state_input=with_state_and_lengths,
                     lengths_input=with_state_and_lengths, linear_before_reset=lbr)
    model = load_onnx(path)
    layer = model.spec.layers[0]
    assert (layer.direction, layer.linear_before_reset) == (direction, bool(lbr))
    x = data()
    D = 2 if direction == "bidirectional" else 1
    feeds = {"X": x.transpose(1, 0, 2)}
    kwargs = {}
    if with_state_and_lengths:
        lengths = np.array([STEPS, 2, 1], np.int32)
        h0 = data(2, (D, BATCH, HIDDEN))
        feeds.update(lens=lengths, h0=h0)
        kwargs = {"lengths": lengths, "initial_state": [h0]}
    Y, Y_h = run_ort(path, **feeds)
    out, states = model.run(x, return_state=True, **kwargs)
    assert_close(out, y_batch_first(Y))
    assert_close(states[0], Y_h)


@pytest.mark.parametrize("state_batch", ["M", BATCH])
def test_state_batch_axis_is_unified_with_the_sequence(tmp_path, state_batch):
    """The state input's batch axis may have another name, or a fixed size, than the sequence's."""
    path = gru_graph(tmp_path / "g.onnx", state_input=True, state_batch=state_batch, linear_before_reset=1)
    x, h0 = data(), data(2, (1, BATCH, HIDDEN))
    Y, Y_h = run_ort(path, X=x.transpose(1, 0, 2), h0=h0)
    out, states = load_onnx(path).run(x, initial_state=[h0], return_state=True)
    assert_close(out, y_batch_first(Y))
    assert_close(states[0], Y_h)


RNN_ACTIVATIONS = [  # name, alpha, beta (None: the ONNX default)
    ("Sigmoid", None, None), ("Tanh", None, None), ("Relu", None, None), ("Softsign", None, None),
    ("Softplus", None, None), ("HardSigmoid", None, None), ("HardSigmoid", 0.3, 0.4), ("LeakyRelu", None, None),
    ("LeakyRelu", 0.2, None), ("Elu", None, None), ("Elu", 0.7, None), ("Affine", 0.6, 0.1),
    ("ScaledTanh", 0.9, 1.3), ("ThresholdedRelu", 0.25, None),
]


@pytest.mark.parametrize("name,alpha,beta", RNN_ACTIVATIONS)
@pytest.mark.parametrize("position", ["f", "g"])
def test_every_gru_activation_matches_onnxruntime(tmp_path, name, alpha, beta, position):
    names = [name, "Tanh"] if position == "f" else ["Sigmoid", name]
    attrs = {"activations": names, "linear_before_reset": 1}
    if alpha is not None:
        attrs["activation_alpha"] = [alpha]
    if beta is not None:
        attrs["activation_beta"] = [beta]
    path = gru_graph(tmp_path / "g.onnx", **attrs)
    x = 0.5 * data()
    Y, Y_h = run_ort(path, X=x.transpose(1, 0, 2))
    out, states = load_onnx(path).run(x, return_state=True)
    assert_close(out, y_batch_first(Y))
    assert_close(states[0], Y_h)


def test_alpha_and_beta_lists_are_consumed_in_order(tmp_path):
    # as onnxruntime reads them: each list is consumed by the functions that take that parameter
    path = gru_graph(tmp_path / "g.onnx", direction="bidirectional",
                     activations=["HardSigmoid", "ScaledTanh"] * 2, activation_alpha=[0.3, 0.8, 0.3, 0.8],
                     activation_beta=[0.45, 1.5, 0.45, 1.5])
    layer = load_onnx(path).spec.layers[0]
    assert layer.gate_activation == activation("hard_sigmoid", 0.3, 0.45)
    assert layer.candidate_activation == activation("scaled_tanh", 0.8, 1.5)
    x = data()
    Y, Y_h = run_ort(path, X=x.transpose(1, 0, 2))
    assert_close(load_onnx(path).run(x), y_batch_first(Y))

    path = gru_graph(tmp_path / "h.onnx", activations=["LeakyRelu", "Affine"], activation_alpha=[0.1, 0.5],
                     activation_beta=[0.2])
    layer = load_onnx(path).spec.layers[0]
    assert layer.gate_activation == activation("leaky_relu", 0.1)
    assert layer.candidate_activation == activation("affine", 0.5, 0.2)


def test_different_activations_per_direction_run_as_a_general_graph(tmp_path):
    """grurt's GRU layer has one pair of activations; the general GRU op runs each direction alone."""
    path = gru_graph(tmp_path / "g.onnx", direction="bidirectional",
                     activations=["Sigmoid", "Tanh", "HardSigmoid", "Tanh"])
    model = load_onnx(path)
    assert isinstance(model, TensorModel)
    x = data().transpose(1, 0, 2).copy()
    for got, expected in zip(model.run(x), run_ort(path, X=x)):
        assert_close(got, expected)


def test_unused_activation_parameters_are_refused(tmp_path):
    path = gru_graph(tmp_path / "g.onnx", activations=["Sigmoid", "Tanh"], activation_alpha=[0.5])
    with pytest.raises(ModelFormatError, match="activation_alpha/activation_beta hold more values"):
        load_onnx(path)


@pytest.mark.parametrize("clip", [0.3, 2.0])
@pytest.mark.parametrize("lbr", [0, 1])
def test_clip_matches_onnxruntime(tmp_path, clip, lbr):
    path = gru_graph(tmp_path / "g.onnx", direction="bidirectional", clip=clip, linear_before_reset=lbr)
    assert load_onnx(path).spec.layers[0].clip == pytest.approx(clip)
    x = 3 * data()
    Y, Y_h = run_ort(path, X=x.transpose(1, 0, 2))
    assert_close(load_onnx(path).run(x), y_batch_first(Y))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
def test_layout_1(tmp_path, direction, lbr):
    attrs = {"linear_before_reset": lbr, "activations": ["HardSigmoid", "Tanh"] * (1 + (direction == "bidirectional")),
             "clip": 1.5}
    batchwise = gru_graph(tmp_path / "b.onnx", direction, layout=1, state_input=True, lengths_input=True, **attrs)
    timewise = gru_graph(tmp_path / "t.onnx", direction, layout=0, state_input=True, lengths_input=True, **attrs)
    D = 2 if direction == "bidirectional" else 1
    x, h0, lengths = 2 * data(), data(2, (D, BATCH, HIDDEN)), np.array([4, STEPS, 1], np.int32)
    model = load_onnx(batchwise)
    out, states = model.run(x, initial_state=[h0], lengths=lengths, return_state=True)
    Y, Y_h = run_ort(timewise, X=x.transpose(1, 0, 2), h0=h0, lens=lengths)   # the same GRU, layout 0
    assert_close(out, y_batch_first(Y))
    assert_close(states[0], Y_h)
    expected = reference.run(model, x, initial_state=[h0], lengths=lengths)
    assert_close(out, expected)


def test_layout_1_final_state_feeds_a_dense(tmp_path):
    """Y_h of layout 1 is (B, D, H): reshaped to (B, 2H) it is the canonical last state."""
    G = np.random.default_rng(20).standard_normal((2, 2 * HIDDEN)).astype(np.float32)
    consts = {**gru_weights(21, 2), "G": G, "flat": np.array([0, -1]), "perm": np.array([1, 0, 2])}

    def graph(path, layout):
        to_batch_major = [] if layout else [helper.make_node("Transpose", ["Y_h"], ["hb"], perm=[1, 0, 2])]
        nodes = [helper.make_node("GRU", ["X", "W", "R", "B"], ["", "Y_h"], hidden_size=HIDDEN, layout=layout,
                                  direction="bidirectional"), *to_batch_major,
                 helper.make_node("Reshape", ["hb" if not layout else "Y_h", "flat"], ["h"]),
                 helper.make_node("Gemm", ["h", "G"], ["out"], transB=1)]
        x_axes = ["N", "T"] if layout else ["T", "N"]
        return save(path, nodes, [tensor("X", x_axes + [FEATURES])], [tensor("out", None)], consts)

    model = load_onnx(graph(tmp_path / "b.onnx", 1))
    x = data()
    (expected,) = run_ort(graph(tmp_path / "t.onnx", 0), X=x.transpose(1, 0, 2))
    assert_close(model.run(x), expected)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout_1_matches_onnx_reference_evaluator(tmp_path, direction):
    from onnx.reference import ReferenceEvaluator

    path = gru_graph(tmp_path / "b.onnx", direction, layout=1, state_input=True, linear_before_reset=1)
    D = 2 if direction == "bidirectional" else 1
    x, h0 = data(), data(2, (BATCH, D, HIDDEN))
    Y, Y_h = ReferenceEvaluator(path).run(None, {"X": x, "h0": h0})
    out, states = load_onnx(path).run(x, initial_state=[h0.transpose(1, 0, 2)], return_state=True)
    assert_close(out, y_batch_first(Y, layout=1))
    assert_close(states[0], Y_h.transpose(1, 0, 2))


def test_gru_attribute_values_are_checked(tmp_path):
    # values no ONNX GRU has: the registry's GRU refuses them as the file is read, before the fusion pass
    with pytest.raises(ModelFormatError, match="the_gru.*attribute layout of GRU: must be 0 or 1, got 2"):
        load_onnx(gru_graph(tmp_path / "a.onnx", layout=2))
    with pytest.raises(ModelFormatError, match="the_gru.*attribute direction of GRU: must be one of .*'sideways'"):
        load_onnx(gru_graph(tmp_path / "b.onnx", direction="sideways"))
    with pytest.raises(ModelFormatError, match="the_gru.*activation 'Gelu' is not supported"):
        load_onnx(gru_graph(tmp_path / "c.onnx", activations=["Gelu", "Tanh"]))
    with pytest.raises(UnsupportedModelError, match="the_gru.*attribute output_sequence=1"):
        load_onnx(gru_graph(tmp_path / "d.onnx", output_sequence=1))
    with pytest.raises(ModelFormatError, match="the_gru.*attribute clip of GRU: must be positive, got -1.0"):
        load_onnx(gru_graph(tmp_path / "e.onnx", clip=-1.0))


# ---- the graph around the GRU ----

def const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def test_time_major_graph_with_layers_around_the_gru(tmp_path):
    """(T, B, I) input, normalisation, GRU, MatMul+Add, LeakyRelu, Gemm over a reshape, Softmax."""
    rng = np.random.default_rng(3)
    weights = gru_weights(4, 1)
    weights.update(mean=rng.standard_normal(FEATURES).astype(np.float32),
                   std=rng.uniform(0.5, 2, FEATURES).astype(np.float32),
                   M=rng.standard_normal((HIDDEN, 5)).astype(np.float32),
                   bias=rng.standard_normal(5).astype(np.float32),
                   G=rng.standard_normal((2, 5)).astype(np.float32), g=rng.standard_normal(2).astype(np.float32))
    nodes = [
        helper.make_node("Sub", ["X", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("GRU", ["normed", "W", "R", "B"], ["Y"], hidden_size=HIDDEN, linear_before_reset=1),
        const("one", np.array([1])), helper.make_node("Squeeze", ["Y", "one"], ["y"]),       # (T, B, H)
        helper.make_node("MatMul", ["y", "M"], ["mm"]), helper.make_node("Add", ["bias", "mm"], ["lin"]),
        helper.make_node("LeakyRelu", ["lin"], ["act"], alpha=0.2),
        helper.make_node("Dropout", ["act"], ["dropped"]), helper.make_node("Identity", ["dropped"], ["same"]),
        helper.make_node("Shape", ["same"], ["shape"]),
        const("flat", np.array([-1, 5])), helper.make_node("Reshape", ["same", "flat"], ["rows"]),
        helper.make_node("Gemm", ["rows", "G", "g"], ["scores"], transB=1),
        helper.make_node("Slice", ["shape", "zero", "two"], ["tb"]),
        helper.make_node("Concat", ["tb", "minus1"], ["back"], axis=0),
        helper.make_node("Reshape", ["scores", "back"], ["seq"]),
        helper.make_node("Softmax", ["seq"], ["probs"], axis=-1),
    ]
    weights.update(zero=np.array([0]), two=np.array([2]), minus1=np.array([-1]))
    path = save(tmp_path / "m.onnx", nodes, [tensor("X", ["T", "N", FEATURES])], [tensor("probs", None)], weights)
    model = load_onnx(path)
    assert [type(layer) for layer in model.layers] == [Scale, GRU, Dense, Activation, Dense, Activation]
    x = data()
    (expected,) = run_ort(path, X=x.transpose(1, 0, 2))
    assert_close(model.run(x), expected.transpose(1, 0, 2))
    assert_close(onnx_outputs(path, x), expected.transpose(1, 0, 2))


def test_final_state_feeds_the_head(tmp_path):
    """Y unused, Y_h → Squeeze → Gemm → HardSigmoid: the GRU returns its last state."""
    weights = gru_weights(5, 1)
    weights.update(G=np.random.default_rng(6).standard_normal((2, HIDDEN)).astype(np.float32), zero=np.array([0]))
    nodes = [helper.make_node("Transpose", ["X"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R", "B"], ["", "Y_h"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["Y_h", "zero"], ["h"]),
             helper.make_node("Gemm", ["h", "G"], ["lin"], transB=1, alpha=0.5),
             helper.make_node("HardSigmoid", ["lin"], ["out"], alpha=0.3)]
    path = save(tmp_path / "m.onnx", nodes, [tensor("X", ["N", "T", FEATURES])], [tensor("out", None)], weights)
    model = load_onnx(path)
    assert not model.layers[0].return_sequences
    x = data()
    (expected,) = run_ort(path, X=x)
    assert_close(model.run(x), expected)


def test_reversed_input_and_feature_selection(tmp_path):
    """A time flip (Slice with step -1) becomes Reverse; a Slice of the features folds into the Dense."""
    weights = gru_weights(7, 2)
    weights.update(G=np.random.default_rng(8).standard_normal((3, HIDDEN)).astype(np.float32),
                   start=np.array([-1]), end=np.array([-(2**62)]), zero=np.array([0]), step=np.array([-1]),
                   f0=np.array([HIDDEN]), f1=np.array([2 * HIDDEN]), two=np.array([2]),
                   shape=np.array([0, 0, -1]), minus1=np.array(-1))
    nodes = [helper.make_node("Slice", ["X", "start", "end", "zero", "step"], ["flipped"]),  # time axis 0
             helper.make_node("GRU", ["flipped", "W", "R", "B"], ["Y"], hidden_size=HIDDEN, direction="bidirectional"),
             helper.make_node("Transpose", ["Y"], ["yt"], perm=[0, 2, 1, 3]),                 # (T, B, D, H)
             helper.make_node("Reshape", ["yt", "shape"], ["y"]),                              # (T, B, 2H)
             helper.make_node("Slice", ["y", "f0", "f1", "two"], ["backward"]),
             helper.make_node("Gather", ["backward", "minus1"], ["last"], axis=0),
             helper.make_node("Gemm", ["last", "G"], ["out"], transB=1)]
    path = save(tmp_path / "m.onnx", nodes, [tensor("X", ["T", "N", FEATURES])], [tensor("out", None)], weights)
    model = load_onnx(path)
    assert [type(layer) for layer in model.layers] == [Reverse, GRU, LastStep, Dense]
    assert np.all(model.layers[3].W[:, :HIDDEN] == 0)      # the forward half is not read
    x = data()
    (expected,) = run_ort(path, X=x.transpose(1, 0, 2))
    assert_close(model.run(x), expected)

    nodes[5] = helper.make_node("Gather", ["backward", "minus1"], ["last"], axis=1)   # the last batch entry
    path = save(tmp_path / "n.onnx", nodes, [tensor("X", ["T", "N", FEATURES])], [tensor("out", None)], weights)
    model = load_onnx(path)                 # beyond the fused layers: the general graph
    assert isinstance(model, TensorModel)
    (expected,) = run_ort(path, X=x.transpose(1, 0, 2))
    assert_close(model.run(x.transpose(1, 0, 2).copy()), expected)


@pytest.mark.parametrize("low,high", [(0.0, 6.0), (-0.5, np.inf), (-np.inf, 0.25), (-0.3, 0.4)])
def test_clip_op(tmp_path, low, high):
    weights = gru_weights(9, 1)
    bounds = {"lo": np.array(low, np.float32), "hi": np.array(high, np.float32)}
    weights.update({k: v for k, v in bounds.items() if np.isfinite(v)})
    clip_inputs = ["y", "lo" if np.isfinite(low) else "", "hi" if np.isfinite(high) else ""]
    nodes = [helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], hidden_size=HIDDEN),
             helper.make_node("Mul", ["Y", "k"], ["y"]),
             helper.make_node("Clip", clip_inputs, ["out"])]
    weights["k"] = np.array(3.0, np.float32)
    path = save(tmp_path / "m.onnx", nodes, [tensor("X", ["T", "N", FEATURES])], [tensor("out", None)], weights)
    x = data()
    (expected,) = run_ort(path, X=x.transpose(1, 0, 2))
    assert_close(load_onnx(path).run(x), expected[:, 0].transpose(1, 0, 2))


def test_old_opset_graph(tmp_path):
    """Opset 9: Squeeze/Unsqueeze axes and Slice bounds are attributes, as the legacy exporter writes them."""
    weights = gru_weights(10, 1)
    weights["G"] = np.random.default_rng(11).standard_normal((2, HIDDEN)).astype(np.float32)
    weights["c"] = np.zeros(2, np.float32) + 0.5
    nodes = [helper.make_node("Shape", ["X"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch"], ["batch1"], axes=[0]),
             helper.make_node("Concat", ["d", "batch1", "h"], ["h0_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["h0_shape"], ["h0"]),
             helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["Y"], ["y"], axes=[1]),
             helper.make_node("Slice", ["y"], ["last"], starts=[-1], ends=[2**31], axes=[0]),
             helper.make_node("Squeeze", ["last"], ["l"], axes=[0]),
             helper.make_node("Gemm", ["l", "G", "c"], ["out"], transB=1),
             helper.make_node("Softmax", ["out"], ["probs"], axis=1)]
    weights.update(one=np.array(1), d=np.array([1]), h=np.array([HIDDEN]))
    path = save(tmp_path / "m.onnx", nodes, [tensor("X", ["T", "N", FEATURES])], [tensor("probs", None)], weights,
                opset=9)
    model = load_onnx(path)
    assert [type(layer) for layer in model.layers] == [GRU, LastStep, Dense, Activation]
    x = data()
    (expected,) = run_ort(path, X=x.transpose(1, 0, 2))
    assert_close(model.run(x), expected)


def test_streaming_graph_with_state_input_and_output(tmp_path):
    """Two GRU nodes slice one state input; their final states are concatenated into one output."""
    first, second = gru_weights(12, 1), gru_weights(13, 1, features=HIDDEN)
    weights = {**{k + "1": v for k, v in first.items()}, **{k + "2": v for k, v in second.items()},
               "a": np.array([0]), "b": np.array([1]), "c": np.array([2]), "one": np.array([1])}
    nodes = [helper.make_node("Slice", ["state", "a", "b"], ["s1"]),
             helper.make_node("Slice", ["state", "b", "c"], ["s2"]),
             helper.make_node("GRU", ["X", "W1", "R1", "B1", "", "s1"], ["Y1", "H1"], hidden_size=HIDDEN,
                              linear_before_reset=1),
             helper.make_node("Squeeze", ["Y1", "one"], ["y1"]),
             helper.make_node("GRU", ["y1", "W2", "R2", "B2", "", "s2"], ["Y2", "H2"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["Y2", "one"], ["y"]),
             helper.make_node("Concat", ["H1", "H2"], ["new_state"], axis=0)]
    path = save(tmp_path / "m.onnx", nodes, [tensor("X", ["T", "N", FEATURES]), tensor("state", [2, "N", HIDDEN])],
                [tensor("y", None), tensor("new_state", None)], weights)
    model = load_onnx(path)
    x, state = data(), data(14, (2, BATCH, HIDDEN))
    expected, expected_state = run_ort(path, X=x.transpose(1, 0, 2), state=state)
    out, states = model.run(x, initial_state=[state[:1], state[1:]], return_state=True)
    assert_close(out, expected.transpose(1, 0, 2))
    assert_close(np.concatenate(states), expected_state)
    # onnx_outputs maps the same way
    ort_out, ort_states = onnx_outputs(path, x, initial_state=[state[:1], state[1:]], return_state=True)
    assert_close(ort_out, expected.transpose(1, 0, 2))
    assert_close(np.concatenate(ort_states), expected_state)


def test_last_step_of_padded_sequences_warns(tmp_path):
    weights = {**gru_weights(17, 1), "one": np.array([1]), "last": np.array(-1)}
    nodes = [helper.make_node("GRU", ["X", "W", "R", "B", "lens"], ["Y"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["Y", "one"], ["y"]),
             helper.make_node("Gather", ["y", "last"], ["out"], axis=0)]
    inputs = [tensor("X", ["T", "N", FEATURES]), tensor("lens", ["N"], TensorProto.INT32)]
    path = save(tmp_path / "m.onnx", nodes, inputs, [tensor("out", None)], weights)
    with pytest.warns(UserWarning, match="sequence_lens and selects the last time step"):
        model = load_onnx(path)
    x = data()
    full = np.full(BATCH, STEPS, np.int32)
    (expected,) = run_ort(path, X=x.transpose(1, 0, 2), lens=full)
    assert_close(model.run(x, lengths=full), expected)


# ---- graphs grurt refuses, by name ----

def test_graph_that_depends_on_the_input_size_runs_as_a_general_graph(tmp_path):
    """Gather index 2 of the time axis is the last step for 3 steps only: no fused layer means that,
    the general graph computes it at every size."""
    weights = {**gru_weights(18, 1), "one": np.array([1]), "two": np.array(2)}
    nodes = [helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["Y", "one"], ["y"]),
             helper.make_node("Gather", ["y", "two"], ["out"], axis=0)]
    path = save(tmp_path / "m.onnx", nodes, [tensor("X", ["T", "N", FEATURES])], [tensor("out", None)], weights)
    model = load_onnx(path)
    assert isinstance(model, TensorModel)
    for steps in (3, 7):
        x = data(shape=(steps, BATCH, FEATURES))
        assert_close(model.run(x), run_ort(path, X=x)[0])


def test_sequence_lens_of_one_gru_runs_as_a_general_graph(tmp_path):
    weights = {**gru_weights(19, 1), **{k + "2": v for k, v in gru_weights(20, 1, features=HIDDEN).items()},
               "one": np.array([1])}
    nodes = [helper.make_node("GRU", ["X", "W", "R", "B", "lens"], ["Y"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["Y", "one"], ["y"]),
             helper.make_node("GRU", ["y", "W2", "R2", "B2"], ["out"], hidden_size=HIDDEN)]
    inputs = [tensor("X", ["T", "N", FEATURES]), tensor("lens", ["N"], TensorProto.INT32)]
    path = save(tmp_path / "m.onnx", nodes, inputs, [tensor("out", None)], weights)
    model = load_onnx(path)                 # the fused layers take lengths for every GRU or none
    assert isinstance(model, TensorModel)
    x, lens = data(shape=(STEPS, BATCH, FEATURES)), np.array([6, 2, 4], np.int32)
    assert_close(model.run([x, lens]), run_ort(path, X=x, lens=lens)[0])


def simple_gru(extra_nodes, extra_weights, x_shape=("T", "N", FEATURES)):
    weights = {**gru_weights(15, 1), **extra_weights}
    nodes = [helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=HIDDEN, name="gru")] + extra_nodes
    return nodes, [tensor("X", list(x_shape))], weights


@pytest.mark.parametrize("case,error,message", [
    ("unknown_op", UnsupportedModelError, r"node 'det' \(Det\): operator Det is not supported"),
    ("custom_domain", UnsupportedModelError, r"node 'mine' \(Foo\): operators of domain 'com.example'"),
    ("first_step", None, "general"),
    ("h0_per_sequence", None, "general"),     # one for all: a learned state (tests/test_torch_learned_state.py)
    ("varying_scale", None, "general"),
])
def test_unsupported_graphs_are_refused(tmp_path, case, error, message):
    one = np.array([1])
    second_gru = gru_weights(16, 1, features=HIDDEN)
    graphs = {
        "residual": ([helper.make_node("Add", ["Y", "Y"], ["out"], name="add")], "out", {}),
        "unknown_op": ([helper.make_node("Det", ["Y"], ["out"], name="det")], "out", {}),
        "custom_domain": ([helper.make_node("Foo", ["Y"], ["out"], name="mine", domain="com.example")], "out", {}),
        "first_step": ([helper.make_node("Gather", ["Y", "zero"], ["out"], axis=0)], "out", {"zero": np.array(0)}),
        "intermediate_output": ([helper.make_node("Relu", ["Y"], ["out"])], "out", {}),
        "h0_per_sequence": ([helper.make_node("Squeeze", ["Y", "one"], ["y"]),
                        helper.make_node("GRU", ["y", "W2", "R2", "B2", "", "h0"], ["out"], hidden_size=HIDDEN,
                                         name="gru2")], "out",
                       {"one": one, "h0": np.arange(BATCH * HIDDEN, dtype=np.float32).reshape(1, BATCH, HIDDEN) / 9,
                        **{k + "2": v for k, v in second_gru.items()}}),
        "state_from_gru": ([helper.make_node("Squeeze", ["Y", "one"], ["y"]),
                            helper.make_node("GRU", ["y", "W2", "R2", "B2", "", "Y_h"], ["out"], hidden_size=HIDDEN,
                                             name="gru2")], "out",
                           {"one": one, **{k + "2": v for k, v in second_gru.items()}}),
        "varying_scale": ([helper.make_node("Mul", ["Y", "k"], ["out"], name="mul")], "out",
                          {"k": np.arange(STEPS * HIDDEN, dtype=np.float32).reshape(STEPS, 1, 1, HIDDEN)}),
    }
    nodes, output, weights = graphs[case]
    outputs = [output] + (["Y"] if case == "intermediate_output" else [])
    # a fixed shape, so that the constant of varying_scale can vary over time
    graph_nodes, inputs, all_weights = simple_gru(nodes, weights, (STEPS, BATCH, FEATURES))
    if case == "custom_domain":
        graph = helper.make_graph(graph_nodes, "g", inputs, [tensor(output, None)],
                                  [numpy_helper.from_array(np.asarray(v), k) for k, v in all_weights.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 22),
                                                        helper.make_operatorsetid("com.example", 1)], ir_version=10)
        path = str(tmp_path / "m.onnx")
        onnx.save(model, path)
    else:
        path = save(tmp_path / "m.onnx", graph_nodes, inputs, [tensor(name, None) for name in outputs], all_weights)
    if error is None:                       # beyond the fused layers: the general graph runs it
        model = load_onnx(path)
        assert isinstance(model, TensorModel)
        x = data(shape=(STEPS, BATCH, FEATURES))
        assert_close(model.run(x), run_ort(path, X=x)[0])
        return
    with pytest.raises(error, match=message):
        load_onnx(path)


def test_load_dispatches_onnx_files(tmp_path):
    path = gru_graph(tmp_path / "g.onnx")
    assert isinstance(grurt.load(path), grurt.Model)
