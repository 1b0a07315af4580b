"""Conv1D, Pool1D and ZeroPad1D (issue 12): each importer against its framework, through the
float64 reference (``grurt.reference.run``), at 1e-5 absolute (ATOL); BatchNorm folding;
the npz format; the lengths, streaming and short-input rules."""
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.spec import GRU, Conv1D, Dense, LastStep, ModelSpec, Pool1D, Scale, ZeroPad1D, activation  # noqa: E402

from gru_testing import ATOL
from torch_testing import randomize_batchnorm  # noqa: E402

CHANNELS_FIRST = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.ConstantPad1d, nn.ZeroPad1d)


def torch_forward(modules, x, last_step):
    """The module list applied to grurt's (B, T, C) input, with the transposes implied around
    the channels-first modules (the from_torch convention)."""
    h = torch.from_numpy(x)
    with torch.no_grad():
        for m in modules:
            if isinstance(m, CHANNELS_FIRST) and h.ndim == 3:
                h = m(h.transpose(1, 2)).transpose(1, 2)
            elif isinstance(m, nn.GRU):
                h = m(h)[0]
                if last_step and m is [c for c in modules if isinstance(c, nn.GRU)][-1]:
                    h = h[:, -1]
            else:
                h = m(h)
    return h.numpy()


def crnn(front, seed=0, channels=6, hidden=7):
    torch.manual_seed(seed)
    mods = [m() if isinstance(m, type) else m for m in front(channels)]
    out = [m for m in mods if isinstance(m, nn.Conv1d)]
    width = out[-1].out_channels if out else channels
    mods += [nn.GRU(width, hidden, batch_first=True), nn.Linear(hidden, 3)]
    for i, m in enumerate(mods):
        if isinstance(m, nn.BatchNorm1d):
            randomize_batchnorm(m, seed + i)
        m.eval()
    return mods


TORCH_FRONTS = {
    "conv_pad1_bn_relu": lambda c: [nn.Conv1d(c, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU()],
    "conv_same_even_k_dilated": lambda c: [nn.Conv1d(c, 8, 4, padding="same", dilation=2), nn.Tanh()],
    "conv_valid_stride2": lambda c: [nn.Conv1d(c, 8, 5, stride=2)],
    "conv_groups2_nobias": lambda c: [nn.Conv1d(c, 8, 3, groups=2, bias=False, padding=2)],
    "depthwise_pointwise": lambda c: [nn.Conv1d(c, 2 * c, 3, groups=c, padding=1), nn.Conv1d(2 * c, 5, 1)],
    "causal_left_pad": lambda c: [nn.ConstantPad1d((4, 0), 0.0), nn.Conv1d(c, 8, 5), nn.BatchNorm1d(8), nn.ReLU()],
    "causal_dilated": lambda c: [nn.ZeroPad1d((6, 0)), nn.Conv1d(c, 8, 4, dilation=2)],
    "maxpool": lambda c: [nn.Conv1d(c, 8, 3), nn.MaxPool1d(3, 2, padding=1)],
    "avgpool_count_pad": lambda c: [nn.AvgPool1d(3, 2, padding=1)],
    "avgpool_exclude_pad": lambda c: [nn.AvgPool1d(4, 3, padding=2, count_include_pad=False)],
    "pad_then_gru": lambda c: [nn.ZeroPad1d((2, 3))],
    "bn_alone_no_affine": lambda c: [nn.BatchNorm1d(c, affine=False)],
}


@pytest.mark.parametrize("name", sorted(TORCH_FRONTS))
@pytest.mark.parametrize("last_step", [False, True])
def test_torch_modules_match_torch(name, last_step):
    mods = crnn(TORCH_FRONTS[name])
    if name in ("avgpool_count_pad", "avgpool_exclude_pad", "pad_then_gru", "bn_alone_no_affine"):
        mods[0:0] = [nn.Conv1d(6, 6, 1).eval()]       # the input size comes from the first layer
    model = grurt.from_torch(mods, last_step=last_step)
    for steps in (11, 16):
        x = np.random.default_rng(steps).standard_normal((2, steps, 6)).astype(np.float32)
        np.testing.assert_allclose(reference.run(model, x), torch_forward(mods, x, last_step), rtol=0, atol=ATOL)


def test_torch_batchnorm_folds_into_conv_and_linear():
    """Conv1d → BatchNorm1d → ReLU is one Conv1D (relu); Linear → BatchNorm1d one Dense."""
    mods = crnn(lambda c: [nn.Conv1d(c, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU()])
    bn = randomize_batchnorm(nn.BatchNorm1d(3), 7).eval()
    mods.append(bn)
    model = grurt.from_torch(mods, last_step=True)
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [Conv1D, GRU, LastStep, Dense], kinds
    assert model.layers[0].activation.kind == "relu"
    x = np.random.default_rng(0).standard_normal((3, 9, 6)).astype(np.float32)
    np.testing.assert_allclose(reference.run(model, x), torch_forward(mods, x, True), rtol=0, atol=ATOL)
    # standalone BatchNorm (after the GRU, before an activation) stays a Scale
    alone = grurt.from_torch([nn.GRU(6, 4, batch_first=True), randomize_batchnorm(nn.BatchNorm1d(4), 1).eval()])
    assert isinstance(alone.layers[-1], Scale)


def test_torch_refusals():
    gru = nn.GRU(8, 4, batch_first=True)
    with pytest.raises(grurt.UnsupportedModelError, match="padding_mode='reflect'"):
        grurt.from_torch([nn.Conv1d(3, 8, 3, padding=1, padding_mode="reflect"), gru])
    with pytest.raises(grurt.UnsupportedModelError, match="ceil_mode"):
        grurt.from_torch([nn.Conv1d(3, 8, 3), nn.MaxPool1d(2, ceil_mode=True), gru])
    with pytest.raises(grurt.UnsupportedModelError, match="track_running_stats"):
        grurt.from_torch([nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8, track_running_stats=False), gru])
    with pytest.raises(grurt.UnsupportedModelError, match="padding value"):
        grurt.from_torch([nn.ConstantPad1d(2, 1.0), nn.Conv1d(3, 8, 3), gru])


# ---- the spec's rules: folding, output lengths, lengths, streaming ----

def _conv(cin, cout, k, **kwargs):
    rng = np.random.default_rng(cin * 100 + cout * 10 + k)
    groups = kwargs.get("groups", 1)
    return Conv1D(W=rng.standard_normal((cout, cin // groups, k)) / np.sqrt(cin * k / groups),
                  b=rng.standard_normal(cout) * 0.1, **kwargs)


def _gru(inputs, hidden=5, seed=0):
    rng = np.random.default_rng(seed)
    return GRU(W=rng.standard_normal((1, 3 * hidden, inputs)) * 0.3, R=rng.standard_normal((1, 3 * hidden, hidden)) * 0.3,
               B=rng.standard_normal((1, 6 * hidden)) * 0.1, linear_before_reset=True)


def test_padding_rules():
    # SAME with stride 1 is explicit: the odd frame at the end (upper) or the start (lower)
    assert _conv(2, 2, 4, padding="same_upper").padding == (1, 2)
    assert _conv(2, 2, 4, padding="same_lower").padding == (2, 1)
    assert _conv(2, 2, 3, dilation=3, padding="same_upper").padding == (3, 3)
    strided = _conv(2, 2, 3, stride=2, padding="same_upper")
    assert strided.padding == "same_upper" and [strided.output_steps(t) for t in (1, 2, 5, 6)] == [1, 1, 3, 3]
    assert strided.pads(5) == (1, 1) and strided.pads(6) == (0, 1)
    assert _conv(2, 2, 5, padding=(4, 0)).causal and not _conv(2, 2, 5, padding=(2, 2)).causal
    with pytest.raises(grurt.ModelFormatError, match="smaller than the window"):
        Pool1D("max", 2, 2, (2, 0))


def test_short_input_is_a_named_error():
    spec = ModelSpec(3, (_conv(3, 4, 5), Pool1D("max", 2, 2), _gru(4)))
    assert grurt.spec.min_steps(spec) == 6
    reference.run(spec, np.zeros((6, 3)))
    with pytest.raises(grurt.InputError, match=r"layer 1 \(Pool1D.*shorter than its window.*at least 6"):
        reference.run(spec, np.zeros((5, 3)))
    with pytest.raises(grurt.InputError, match=r"layer 0 \(Conv1D"):
        reference.run(spec, np.zeros((4, 3)))


def test_lengths_only_with_causal_convolutions():
    causal = ModelSpec(3, (_conv(3, 4, 3, padding=(2, 0)), _gru(4)))
    x = np.random.default_rng(1).standard_normal((2, 8, 3))
    lengths = np.array([8, 5])
    padded = reference.run(causal, x, lengths=lengths)
    np.testing.assert_allclose(padded[1, :5], reference.run(causal, x[1, :5]), rtol=0, atol=1e-6)
    assert not padded[1, 5:].any()
    for layer in (_conv(3, 4, 3, padding=(1, 1)), _conv(3, 4, 3, stride=2, padding=(2, 0)), Pool1D("max", 2, 1)):
        spec = ModelSpec(3, (layer, _gru(layer.W.shape[0] if isinstance(layer, Conv1D) else 3)))
        with pytest.raises(grurt.InputError, match="lengths cannot be used with layer 0"):
            reference.run(spec, x, lengths=lengths)


def test_mask_value_refused_with_time_layers():
    with pytest.raises(grurt.UnsupportedModelError, match="mask_value"):
        ModelSpec(3, (_conv(3, 4, 3, padding=(2, 0)), _gru(4)), mask_value=0.0)


def test_stream_refuses_frame_rate_layers():
    for layer, features in ((_conv(3, 4, 3, padding=(1, 1)), 4), (Pool1D("average", 2, 2), 3), (ZeroPad1D(1, 0), 3),
                            (_conv(3, 4, 3, stride=2, padding=(2, 0)), 4)):
        model = grurt.Model(ModelSpec(3, (layer, _gru(features))))
        with pytest.raises(grurt.InputError, match=r"layer 0 \((Conv1D|Pool1D|ZeroPad1D).*cannot stream"):
            model.stream()


def test_fold_layer_is_exact():
    conv = _conv(4, 6, 3, padding=(1, 1))
    rng = np.random.default_rng(3)
    scale = Scale(rng.uniform(0.5, 2, 6), rng.standard_normal(6))
    folded = grurt.spec.fold_layer(conv, scale)
    x = rng.standard_normal((2, 9, 4))
    unfolded = ModelSpec(4, (conv, scale, _gru(6)))
    np.testing.assert_allclose(reference.run(ModelSpec(4, (folded, _gru(6))), x), reference.run(unfolded, x),
                               rtol=0, atol=ATOL)
    padded = grurt.spec.fold_layer(ZeroPad1D(2, 1), conv)
    assert padded.padding == (3, 2)
    assert grurt.spec.fold_layer(conv, grurt.spec.Activation(activation("softmax"))) is None


# ---- Keras: live models, .keras and .h5 files, against model.predict ----

def _keras_models():
    keras = pytest.importorskip("keras")
    L = keras.layers

    def model(steps, *stack):
        return keras.Sequential([keras.Input((steps, 4)), *stack, L.GRU(6), L.Dense(2)])

    return {
        "valid_bn_relu": lambda: model(12, L.Conv1D(8, 3), L.BatchNormalization(), L.Activation("relu")),
        "same_even_k": lambda: model(12, L.Conv1D(8, 4, padding="same", activation="tanh")),
        "causal_dilated": lambda: model(12, L.Conv1D(8, 3, padding="causal", dilation_rate=2)),
        "same_stride2": lambda: model(11, L.Conv1D(8, 3, strides=2, padding="same")),
        "groups": lambda: model(12, L.Conv1D(8, 3, groups=2, use_bias=False)),
        "maxpool_same": lambda: model(11, L.Conv1D(8, 2), L.MaxPooling1D(3, strides=2, padding="same")),
        "avgpool_same": lambda: model(11, L.AveragePooling1D(3, strides=2, padding="same")),
        "avgpool_valid": lambda: model(12, L.AveragePooling1D(2)),
        "zero_padding": lambda: model(12, L.ZeroPadding1D((2, 1)), L.Conv1D(8, 3)),
        "zero_padding_alone": lambda: model(12, L.ZeroPadding1D(2)),
    }


KERAS_NAMES = ("valid_bn_relu", "same_even_k", "causal_dilated", "same_stride2", "groups", "maxpool_same",
               "avgpool_same", "avgpool_valid", "zero_padding", "zero_padding_alone")


@pytest.mark.parametrize("name", KERAS_NAMES)
def test_keras_layers_match_predict(name, tmp_path):
    model = _keras_models()[name]()
    rng = np.random.default_rng(5)
    for layer in model.layers:       # non-trivial BatchNormalization statistics
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, 8), rng.uniform(-0.5, 0.5, 8), rng.uniform(-0.5, 0.5, 8),
                               rng.uniform(0.5, 2, 8)])
    steps = model.input_shape[1]
    x = rng.standard_normal((3, steps, 4)).astype(np.float32)
    expected = np.asarray(model.predict(x, verbose=0))
    sources = {"live": grurt.from_keras(model)}
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"m{suffix}"
        model.save(path)
        sources[suffix] = grurt.load(path)
    for source, converted in sources.items():
        np.testing.assert_allclose(reference.run(converted, x), expected, rtol=0, atol=ATOL, err_msg=source)
    if name == "valid_bn_relu":      # BatchNormalization and the Activation folded into the Conv1D
        assert [type(layer) for layer in sources["live"].layers] == [Conv1D, GRU, Dense]
        assert sources["live"].layers[0].activation.kind == "relu"


# ---- ONNX: torch exports (legacy and dynamo) and hand-built graphs, against onnxruntime ----

class TorchCRNN(nn.Module):
    """(B, T, C) → causal Conv1d (left pad, then conv) + BatchNorm + ReLU → max pool → GRU → Linear on the last step."""

    def __init__(self, pool=True):
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.bn = nn.Conv1d(5, 8, 3), randomize_batchnorm(nn.BatchNorm1d(8), 3)
        self.pool = nn.AvgPool1d(2, padding=1, count_include_pad=False) if pool else nn.Identity()
        self.gru, self.fc = nn.GRU(8, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, x):
        h = nn.functional.pad(x.transpose(1, 2), (2, 0))
        h = self.pool(torch.relu(self.bn(self.conv(h))))
        y, _ = self.gru(h.transpose(1, 2))
        return self.fc(y[:, -1])


def _ort(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("pool", [False, True])
def test_onnx_torch_crnn(tmp_path, dynamo, pool):
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    module = TorchCRNN(pool).eval()
    x = np.random.default_rng(0).standard_normal((2, 9, 5)).astype(np.float32)
    path = tmp_path / "crnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch 2.13's dynamo exporter keeps the time axis static here: onnxruntime runs the export's length
        kwargs = dict(dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False) \
            if dynamo else dict(dynamic_axes={"x": {0: "batch", 1: "time"}})
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=dynamo, input_names=["x"], **kwargs)
    model = grurt.load(path)
    assert isinstance(model.layers[0], Conv1D) and model.layers[0].causal and model.layers[0].activation.kind == "relu"
    for steps in (9, 12):
        xs = np.random.default_rng(steps).standard_normal((3, steps, 5)).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(xs)).numpy()
        np.testing.assert_allclose(reference.run(model, xs), expected, rtol=0, atol=ATOL)
        if not dynamo or steps == 9:
            np.testing.assert_allclose(_ort(path, xs), expected, rtol=0, atol=ATOL)


def _onnx_graph(path, nodes, initializers, steps, channels, opset=17):
    """A (B, T, C) input "x", transposed to (B, C, T), the given nodes from "h0" to "h", transposed
    back to (B, T, C'), then a GRU(4) whose final state is the output."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    state = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    width = initializers.pop("_width")
    gru_w = {"W": rng.standard_normal((1, 12, width)) * 0.3, "R": rng.standard_normal((1, 12, 4)) * 0.3,
             "B": rng.standard_normal((1, 24)) * 0.1}
    all_nodes = [helper.make_node("Transpose", ["x"], ["h0"], perm=[0, 2, 1]), *nodes,
                 helper.make_node("Transpose", ["h"], ["seq"], perm=[2, 0, 1]),
                 helper.make_node("GRU", ["seq", "W", "R", "B"], ["", "y3"], hidden_size=4),
                 helper.make_node("Squeeze", ["y3", "axes0"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in {**initializers, **gru_w}.items()]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    graph = helper.make_graph(all_nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["batch", "time", channels])],
                              [state], inits)
    import onnx
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


ONNX_CASES = {
    # name: (nodes, initializers (with "_width": features into the GRU))
    "conv_same_upper_stride2": lambda: (
        ["Conv", dict(auto_pad="SAME_UPPER", strides=[2], kernel_shape=[4])], {"_width": 6}, True),
    "conv_same_lower_even_k": lambda: (["Conv", dict(auto_pad="SAME_LOWER", kernel_shape=[4])], {"_width": 6}, True),
    "conv_pads_dilated": lambda: (["Conv", dict(pads=[4, 0], dilations=[2])], {"_width": 6}, True),
    "conv_pads_groups": lambda: (["Conv", dict(pads=[3, 1], group=3)], {"_width": 6}, True),
    "conv_valid": lambda: (["Conv", dict(auto_pad="VALID", strides=[3])], {"_width": 6}, True),
    "avgpool_exclude": lambda: (["AveragePool", dict(kernel_shape=[3], strides=[2], pads=[1, 1])],
                                {"_width": 3}, False),
    "avgpool_include": lambda: (["AveragePool", dict(kernel_shape=[3], strides=[2], pads=[2, 1],
                                                     count_include_pad=1)], {"_width": 3}, False),
    "avgpool_same_upper": lambda: (["AveragePool", dict(kernel_shape=[4], strides=[3], auto_pad="SAME_UPPER")],
                                   {"_width": 3}, False),
    "maxpool_pads": lambda: (["MaxPool", dict(kernel_shape=[3], strides=[1], pads=[2, 0])], {"_width": 3}, False),
}


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_onnx_handbuilt_conv_and_pool(tmp_path, name):
    from onnx import helper
    pytest.importorskip("onnxruntime")
    (op, attrs), inits, is_conv = ONNX_CASES[name]()
    rng = np.random.default_rng(2)
    inputs = ["h0"]
    if is_conv:
        k = attrs.get("kernel_shape", [3])[0]
        groups = attrs.get("group", 1)
        inits.update(Wc=rng.standard_normal((6, 3 // groups, k)) * 0.4, Bc=rng.standard_normal(6) * 0.1)
        inputs += ["Wc", "Bc"]
    nodes = [helper.make_node(op, inputs, ["h"], **attrs)]
    path = tmp_path / f"{name}.onnx"
    _onnx_graph(path, nodes, inits, None, 3)
    model = grurt.load(path)
    for steps in (7, 10):
        x = rng.standard_normal((2, steps, 3)).astype(np.float32)
        np.testing.assert_allclose(reference.run(model, x), _ort(path, x), rtol=0, atol=ATOL)


def test_onnx_pad_and_batchnorm(tmp_path):
    """Pad (time axis, zeros) then Conv folds into the conv's padding; BatchNormalization after it folds."""
    from onnx import helper
    rng = np.random.default_rng(4)
    inits = {"_width": 6, "pads": np.array([0, 0, 2, 0, 0, 1], np.int64), "Wc": rng.standard_normal((6, 3, 3)) * 0.4,
             "Bc": rng.standard_normal(6) * 0.1, "g": rng.uniform(0.5, 1.5, 6), "be": rng.standard_normal(6) * 0.2,
             "mu": rng.standard_normal(6) * 0.2, "var": rng.uniform(0.5, 2, 6)}
    nodes = [helper.make_node("Pad", ["h0", "pads"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "Wc", "Bc"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["h"])]
    path = tmp_path / "pad_bn.onnx"
    pads = inits.pop("pads")
    from onnx import numpy_helper
    _onnx_graph(path, nodes, inits, None, 3)
    import onnx
    m = onnx.load(str(path))
    m.graph.initializer.append(numpy_helper.from_array(pads, "pads"))
    onnx.save(m, str(path))
    model = grurt.load(path)
    assert [type(layer) for layer in model.layers] == [Conv1D, GRU]
    assert model.layers[0].padding == (2, 1) and model.layers[0].activation.kind == "relu"
    x = rng.standard_normal((2, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(reference.run(model, x), _ort(path, x), rtol=0, atol=ATOL)


# ---- the npz format ----

def test_npz_roundtrip_and_version(tmp_path):
    spec = ModelSpec(3, (ZeroPad1D(1, 2), _conv(3, 4, 3, stride=2, padding="same_lower", activation=activation("elu")),
                         _conv(4, 4, 2, groups=4, dilation=3, padding=(3, 0)),
                         Pool1D("average", 3, 2, (1, 1), count_include_pad=True), Pool1D("max", 2, 2, "same_upper"),
                         _gru(4)))
    path = tmp_path / "m.npz"
    grurt.save(grurt.Model(spec), path)
    assert grurt.formats.npz.read_header(path)["format_version"] == "1.1"
    loaded = grurt.load(path)
    assert [layer.describe() for layer in loaded.layers] == [layer.describe() for layer in spec.layers]
    x = np.random.default_rng(0).standard_normal((2, 13, 3))
    np.testing.assert_array_equal(reference.run(loaded, x), reference.run(spec, x))
    plain = tmp_path / "plain.npz"
    grurt.save(grurt.Model(ModelSpec(3, (_gru(3),))), plain)
    assert grurt.formats.npz.read_header(plain)["format_version"] == "1.0"


# ---- the kernels against the reference ----

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@st.composite
def conv_models(draw):
    """A Conv1D (kernel 1-20, stride, dilation, groups incl. depthwise, any padding), maybe a
    Pool1D and a ZeroPad1D, then a GRU; and an input batch of 1-8 sequences of T frames."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 4))
    depthwise = groups > 1 and draw(st.booleans())
    cout = cin if depthwise else groups * draw(st.integers(1, 6))
    groups = cin if depthwise else groups
    k = draw(st.integers(1, 20))
    stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    span = (k - 1) * dilation + 1
    padding = draw(st.one_of(st.tuples(st.integers(0, span), st.integers(0, span)),
                             st.sampled_from(["same_upper", "same_lower", (span - 1, 0)])))
    act = draw(st.sampled_from(["linear", "relu", "tanh"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    layers = [Conv1D(W=rng.standard_normal((cout, cin // groups, k)) / np.sqrt(cin // groups * k),
                     b=rng.standard_normal(cout) * 0.1, stride=stride, dilation=dilation, groups=groups,
                     padding=padding, activation=activation(act))]
    if draw(st.booleans()):
        size = draw(st.integers(1, 4))
        layers.append(Pool1D(draw(st.sampled_from(POOL_MODES)), size, draw(st.integers(1, 3)),
                             draw(st.sampled_from([(0, 0), (size - 1, 0), "same_upper"])),
                             count_include_pad=draw(st.booleans())))
    if draw(st.booleans()):
        layers.append(ZeroPad1D(draw(st.integers(0, 2)), draw(st.integers(0, 2))))
    layers.append(_gru(cout, seed=int(rng.integers(1000))))
    spec = ModelSpec(cin, tuple(layers))
    batch, steps = draw(st.integers(1, 8)), draw(st.integers(1, 40))
    return spec, rng.standard_normal((batch, steps, cin)).astype(np.float32)


from grurt.spec import POOL_MODES  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_models())
def test_kernels_match_reference(case):
    """Every shape: at most ATOL from the float64 reference; too short an input is the same InputError."""
    spec, x = case
    model = grurt.Model(spec)
    if x.shape[1] < grurt.spec.min_steps(spec):
        with pytest.raises(grurt.InputError, match="shorter than its window"):
            model.run(x)
        with pytest.raises(grurt.InputError, match="shorter than its window"):
            reference.run(spec, x)
        return
    expected = reference.run(spec, x)
    np.testing.assert_allclose(model.run(x), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.run(x[:1].copy()), expected[:1], rtol=0, atol=ATOL)   # the fast path
    np.testing.assert_allclose(model.run(x[0].astype(np.float64)), expected[0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("k, dilation, groups", [(1, 1, 1), (5, 1, 1), (4, 3, 1), (3, 2, 2), (7, 1, 6)])
def test_stream_equals_run(k, dilation, groups):
    """A causal Conv1D streams: stepping equals run on each prefix; state holds the conv history."""
    span = (k - 1) * dilation + 1
    conv = _conv(6, 6, k, dilation=dilation, groups=groups, padding=(span - 1, 0), activation=activation("relu"))
    spec = ModelSpec(6, (conv, _gru(6), LastStep(), Dense(np.random.default_rng(0).standard_normal((2, 5)), np.zeros(2))))
    model = grurt.Model(spec)
    x = np.random.default_rng(k).standard_normal((3, 12, 6)).astype(np.float32)
    stream = model.stream(batch=3)
    out = np.empty((3, 2), np.float32)
    for t in range(12):
        stream.step(x[:, t], out=out)
        np.testing.assert_allclose(out, reference.run(spec, x[:, :t + 1]), rtol=0, atol=ATOL)
    state = stream.state
    assert len(state) == 2 and state[1].shape == (3, span - 1, 6)
    np.testing.assert_array_equal(state[1], x[:, 12 - (span - 1):] if span > 1 else x[:, :0])
    # a stream restored from that state continues exactly
    other = model.stream(batch=3)
    other.state = state
    np.testing.assert_array_equal(other.step(x[:, 0]), stream.step(x[:, 0]))
    # the GRU states alone: the history starts from zeros, as run(initial_state=...) does
    _, states = model.run(x, return_state=True)
    other.state = states
    assert not other.state[1].any()
    stream.reset()
    assert not any(s.any() for s in stream.state)
    with pytest.raises(grurt.InputError, match=r"state\[1\] \(Conv1D history\)"):
        other.state = [states[0], np.zeros((3, span, 6))]


def test_model_run_lengths_and_short_input():
    spec = ModelSpec(3, (_conv(3, 4, 5, padding=(2, 2)), _gru(4)))
    model = grurt.Model(spec)
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    with pytest.raises(grurt.InputError, match="lengths cannot be used with layer 0"):
        model.run(x, lengths=[6, 3])
    valid = grurt.Model(ModelSpec(3, (_conv(3, 4, 5), _gru(4))))
    with pytest.raises(grurt.InputError, match=r"layer 0 \(Conv1D.*at least 5 input frames"):
        valid.run(x[:, :4])
    causal = grurt.Model(ModelSpec(3, (_conv(3, 4, 3, padding=(2, 0)), _gru(4))))
    np.testing.assert_allclose(causal.run(x, lengths=[6, 3]), reference.run(causal, x, lengths=[6, 3]),
                               rtol=0, atol=ATOL)


def test_w6_crnn_from_torch_runs_and_streams():
    """The benchmark's CRNN: from_torch with left padding, kernels vs torch and the stream vs run."""
    torch.manual_seed(0)
    conv, bn = nn.Conv1d(40, 64, 5), randomize_batchnorm(nn.BatchNorm1d(64), 0)
    gru, fc = nn.GRU(64, 128, batch_first=True), nn.Linear(128, 12)
    mods = [nn.ConstantPad1d((4, 0), 0.0), conv, bn, nn.ReLU(), gru, fc]
    for m in mods:
        m.eval()
    model = grurt.from_torch(mods, last_step=True)
    assert [type(layer) for layer in model.layers] == [Conv1D, GRU, LastStep, Dense]
    x = np.random.default_rng(0).standard_normal((1, 100, 40)).astype(np.float32)
    expected = torch_forward(mods, x, last_step=True)
    np.testing.assert_allclose(model.run(x), expected, rtol=0, atol=ATOL)
    stream = model.stream()
    for t in range(100):
        y = stream.step(x[0, t])
    np.testing.assert_allclose(y, expected[0], rtol=0, atol=ATOL)


def test_cli_info_describes_time_layers(tmp_path, capsys):
    from grurt import cli
    path = tmp_path / "m.npz"
    grurt.save(grurt.Model(ModelSpec(3, (_conv(3, 4, 5, stride=2, padding="same_upper"), Pool1D("max", 2, 2),
                                         _gru(4)))), path)
    cli.main(["info", str(path)])
    text = capsys.readouterr().out
    assert "Conv1D(3 -> 4, k=5, stride=2, same_upper, linear)" in text and "Pool1D(max, size=2, stride=2" in text
    assert "1.1" in text
