"""A causal conv on its history without the concatenation (grurt.tensor_passes._conv_histories,
grurt._kernels.Conv2d.history, _conv2d.h grurt_conv2d_run_history): Concat(history, frames) along H read by a Conv on
the C kernel and by Slices of H (the next call's history) runs as the Conv reading the two inputs' rows in turn and
the Slices copying from them.

The kernel: bit-equal to the same Conv of the concatenation (np.array_equal: an output's sum does not depend on
which array its rows come from) and within ATOL (tests/tolerances.py) of a float64 convolution, on drawn shapes
(groups, (kh, 1) kernels, row dilations, histories longer and shorter than the output, empty histories and frames,
batch 2, the fused activations). The rewrite: where it applies (the plan's description names it, the Concat is gone)
and where it must not (the concatenation read by another op or a graph output, a padded conv), each model's outputs
against onnxruntime and grurt's float64 reference (ATOL) and bit-equal to the same plan without the rewrite.
"""
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


def _conv64(x, w, b, group, dh):
    """float64 Conv of (N, C, H, W) by (M, C/group, kh, 1), no padding, strides 1, row dilation dh."""
    n, c, h, width = x.shape
    m, cg, kh, _ = w.shape
    ho = h - (kh - 1) * dh
    y = np.zeros((n, m, ho, width)) + b[None, :, None, None]
    mg = m // group
    for o in range(m):
        g = o // mg
        for ci in range(cg):
            for i in range(kh):
                y[:, o] += w[o, ci, i, 0] * x[:, g * cg + ci, i * dh:i * dh + ho]
    return y


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(group=st.sampled_from([1, 2, 3]), cg=st.integers(1, 9), mg=st.integers(1, 13), kh=st.integers(1, 5),
       dh=st.integers(1, 2), hist=st.integers(0, 6), frames=st.integers(0, 21), width=st.integers(1, 40),
       batch=st.integers(1, 2), act=st.sampled_from(sorted(ACTS)), seed=st.integers(0, 2**16))
def test_kernel_reads_history(group, cg, mg, kh, dh, hist, frames, width, batch, act, seed):
    h = hist + frames
    ho = h - (kh - 1) * dh
    if ho < 1:
        return
    rng = np.random.default_rng(seed)
    c, m = group * cg, group * mg
    w = (rng.standard_normal((m, cg, kh, 1)) / np.sqrt(cg * kh)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    past = rng.standard_normal((batch, c, hist, width)).astype(np.float32)
    x = rng.standard_normal((batch, c, frames, width)).astype(np.float32)
    conv = _kernels.Conv2d(False, (batch, c, h, width), (batch, m, ho, width), w, b, group, (1, 1), (dh, 1),
                           (0, 0, 0, 0), _kernels.ACTIVATION_CODES[act])
    assert conv.reads_history == (cg > 1 or mg > 1)        # not a depthwise one (one channel in and out per group)
    if not conv.reads_history:
        return
    full = np.concatenate((past, x), axis=2)
    y = conv.history(past, x)
    assert y.shape == (batch, m, ho, width) and y.dtype == np.float32
    assert np.array_equal(y, conv(full))
    want = ACTS[act](_conv64(full.astype(np.float64), w.astype(np.float64), b.astype(np.float64), group, dh))
    assert np.max(np.abs(y - want)) <= ATOL * max(1.0, float(np.max(np.abs(want))))
    if x.size and ho * width * m * cg * kh >= 10**6:
        assert np.array_equal(conv.history(past, x, 2), y)       # on two threads: the same bits


def test_kernel_not_for_padded_or_strided_columns():
    w = np.ones((4, 4, 3, 3), np.float32)
    strided = _kernels.Conv2d(False, (1, 4, 8, 10), (1, 4, 6, 8), w, None, 1, (1, 1), (1, 1), (0, 0, 0, 0))
    assert not strided.reads_history
    assert not _kernels.Conv2d(False, (1, 4, 8, 10), (1, 4, 6, 10), w, None, 1, (1, 1), (1, 1),
                               (0, 1, 0, 1)).reads_history


def _history_file(tmp_path, case, batch=1, channels=6, out_channels=5, hist=4, frames=1, width=12, kernel=(5, 1)):
    """hist (N, C, hist, W), x (N, C, frames, W) -> full = Concat axis 2 -> Conv kernel + Relu -> y; the last `hist`
    rows of full (a Slice) -> new_hist; ``case`` varies it where the rewrite must (not) apply."""
    rng = np.random.default_rng(hist * 10 + frames)
    w = (rng.standard_normal((out_channels, channels) + kernel) / np.sqrt(channels * kernel[0])).astype(np.float32)
    b = rng.standard_normal(out_channels).astype(np.float32)
    total = hist + frames
    starts, ends = {"middle slice": (1, 3), "history slice": (0, 2)}.get(case, (frames, total))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([starts], np.int64), "starts"),
             numpy_helper.from_array(np.array([ends], np.int64), "ends"),
             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    pads = [0, 1, 0, 1] if case == "padded conv" else [0, 0, 0, 0]
    nodes = [helper.make_node("Concat", ["hist", "x"], ["full"], axis=2),
             helper.make_node("Conv", ["full", "w", "b"], ["c"], kernel_shape=list(kernel), pads=pads),
             helper.make_node("Relu", ["c"], ["y"]),
             helper.make_node("Slice", ["full", "starts", "ends", "axes"], ["new_hist"])]
    outputs = ["y", "new_hist"]
    if case == "concatenation read elsewhere":
        nodes.append(helper.make_node("Neg", ["full"], ["n"]))
        outputs.append("n")
    if case == "concatenation an output":
        outputs.append("full")
    if case == "history an output":
        outputs.append("hist_copy")
        nodes.append(helper.make_node("Identity", ["hist"], ["hist_copy"]))
    c = channels
    inputs = [helper.make_tensor_value_info("hist", TensorProto.FLOAT, [batch, c, hist, width]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, frames, width])]
    model = helper.make_model(
        helper.make_graph(nodes, "history", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                     for o in outputs], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "history.onnx")
    onnx.save(model, path)
    feed = {"hist": rng.standard_normal((batch, c, hist, width)).astype(np.float32),
            "x": rng.standard_normal((batch, c, frames, width)).astype(np.float32)}
    return path, feed


def _run_all(path, feed, monkeypatch):
    """grurt's outputs and plan description, checked against onnxruntime and the float64 reference (ATOL) and
    bit-equal to the same model planned without the history rewrite."""
    model = grurt.load(path)
    got = model.run(feed)
    described = model.plan(model._inputs(feed)).describe()
    with monkeypatch.context() as patch:
        patch.setattr(tensor_passes, "_conv_histories", lambda steps, known: steps)
        unfused = grurt.load(path).run(feed)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert_within(got, (session.run(None, feed), run_tensor_graph(model.graph, feed)), ATOL)
    assert all(np.array_equal(a, b) for a, b in zip(got, unfused))
    assert not any(np.shares_memory(a, v) for a in got for v in feed.values())
    return got, described


@pytest.mark.parametrize("batch, hist, frames, width", [(1, 4, 1, 96), (1, 4, 20, 96), (2, 4, 3, 12), (1, 2, 9, 5)])
def test_history_rewrite(tmp_path, monkeypatch, batch, hist, frames, width):
    path, feed = _history_file(tmp_path, "tail", batch, hist=hist, frames=frames, width=width,
                               kernel=(hist + 1, 1))
    _, described = _run_all(path, feed, monkeypatch)
    assert "Concat+Conv+Relu(" in described and "Concat+Slice(" in described
    assert "= Concat(" not in described
    assert described.splitlines()[0].startswith("2 steps")


@pytest.mark.parametrize("case", ["middle slice", "history slice", "history an output"])
def test_history_rewrite_slices(tmp_path, monkeypatch, case):
    """Slices straddling the two inputs or of the history alone; an input that is also an output."""
    path, feed = _history_file(tmp_path, case, frames=3)
    _, described = _run_all(path, feed, monkeypatch)
    assert "Concat+Conv+Relu(" in described and "Concat+Slice(" in described


@pytest.mark.parametrize("case", ["concatenation read elsewhere", "concatenation an output", "padded conv"])
def test_history_rewrite_not_applied(tmp_path, monkeypatch, case):
    path, feed = _history_file(tmp_path, case, frames=3)
    _, described = _run_all(path, feed, monkeypatch)
    assert "Concat+" not in described and "Concat(" in described
