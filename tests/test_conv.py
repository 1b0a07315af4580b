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

from gru_testing import ATOL  # noqa: E402

CHANNELS_FIRST = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.ConstantPad1d, nn.ZeroPad1d)


def _randomize_bn(bn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
    return bn


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
            _randomize_bn(m, seed + i)
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
    bn = _randomize_bn(nn.BatchNorm1d(3), 7).eval()
    mods.append(bn)
    model = grurt.from_torch(mods, last_step=True)
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [Conv1D, GRU, LastStep, Dense], kinds
    assert model.layers[0].activation.kind == "relu"
    x = np.random.default_rng(0).standard_normal((3, 9, 6)).astype(np.float32)
    np.testing.assert_allclose(reference.run(model, x), torch_forward(mods, x, True), rtol=0, atol=ATOL)
    # standalone BatchNorm (after the GRU, before an activation) stays a Scale
    alone = grurt.from_torch([nn.GRU(6, 4, batch_first=True), _randomize_bn(nn.BatchNorm1d(4), 1).eval()])
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
