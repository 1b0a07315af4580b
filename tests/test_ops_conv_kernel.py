"""Conv and ConvTranspose on the C kernel (src/grurt/_conv2d.h, grurt.ops.conv: constant weights over 1 or 2
spatial axes) against grurt's float64 reference and onnxruntime, on drawn shapes, groups, strides, dilations and
pads, each way the kernel reads its input (rows in place, one run, gathered blocks, the depthwise flat planes, packed
blocks of aliasing planes, the tails of fewer than 16 positions), with the activations tensor_passes fuses.

Tolerance: as tests/test_ops_conv.py, ATOL times the largest magnitude of the oracle's output (at least 1);
a fused Relu is exact against the unfused step (np.array_equal).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import grurt
from grurt.ops import REGISTRY, Value, check_attributes
from grurt.ops import conv as conv_ops

from op_testing import ort_op, reference_op, run_op
from test_ops_conv import _data, agree, close

_SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=40,
                     suppress_health_check=[HealthCheck.too_slow])


def _plan(op, attrs, x, w, b=None):
    values = [Value(x.shape, x.dtype), Value(w.shape, w.dtype, w)] + ([] if b is None else [Value(b.shape, b.dtype, b)])
    return REGISTRY[op].prepare(check_attributes(REGISTRY[op], attrs, op), values)


def _on_kernel(op, attrs, x, w, b=None):
    """grurt's output, after asserting the C kernel runs it and it matches the reference and onnxruntime."""
    assert _plan(op, attrs, x, w, b).native is not None
    return agree(op, attrs, [x, w] + ([] if b is None else [b]), const=(1, 2))


@given(st.data())
@_SETTINGS
def test_conv_drawn(data):
    n = data.draw(st.sampled_from([1, 2]), "spatial axes")
    group = data.draw(st.sampled_from([1, 2, 3, 5]), "group")
    cg, mg = data.draw(st.integers(1, 12), "C/group"), data.draw(st.integers(1, 19), "M/group")
    kernel = [data.draw(st.integers(1, 3)) for _ in range(n)]
    dilations = [data.draw(st.integers(1, 2)) for _ in range(n)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(n)]
    pads = [data.draw(st.integers(0, 2)) for _ in range(2 * n)]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = [data.draw(st.integers(max(1, s - pads[i] - pads[i + n]), 40 if i == n - 1 else 6))
               for i, s in enumerate(spans)]
    batch = data.draw(st.integers(1, 2), "N")
    attrs = {"group": group, "strides": strides, "dilations": dilations, "pads": pads}
    bias = _data((mg * group,), 3) if data.draw(st.booleans(), "bias") else None
    _on_kernel("Conv", attrs, _data([batch, cg * group] + spatial, 1), _data([mg * group, cg] + kernel, 2), bias)


@given(st.data())
@_SETTINGS
def test_depthwise_drawn(data):
    """One input channel per group: the depthwise kernel (one output per group: the flat padded plane, narrow
    rows, column strides 1, 2 and 3, pads and dilations on both axes, batch 2) or the tiles (several)."""
    channels, mg = data.draw(st.integers(1, 20), "channels"), data.draw(st.sampled_from([1, 1, 2, 3]), "M/group")
    kernel = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))]
    strides = [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))]
    dilations = [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))]
    pads = [data.draw(st.integers(0, 2)) for _ in range(4)]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    height = data.draw(st.integers(max(1, spans[0] - pads[0] - pads[2]), spans[0] + 3), "H")
    width = data.draw(st.integers(max(1, spans[1] - pads[1] - pads[3]), 70), "W")
    x = _data((data.draw(st.integers(1, 2), "N"), channels, height, width), 1)
    attrs = {"group": channels, "strides": strides, "dilations": dilations, "pads": pads}
    _on_kernel("Conv", attrs, x, _data((channels * mg, 1) + tuple(kernel), 2), _data((channels * mg,), 3))


CONVS = [  # x, W, attributes: each way the kernel reads B's rows
    ((1, 64, 1, 96), (64, 64, 1, 1), {}),                                          # one run, tail of 0
    ((1, 16, 20, 9), (10, 16, 5, 1), {}),                                          # one run of 144 positions
    ((1, 8, 24, 64), (24, 8, 1, 1), {}),                                           # aliasing plane (1536 floats)
    ((1, 8, 32, 32), (20, 8, 1, 1), {}),                                           # ... 1024 floats, packed
    ((1, 2, 3, 96), (64, 2, 3, 3), {"pads": [0, 1, 0, 1]}),                        # rows in place, 96 wide
    ((1, 64, 1, 8), (64, 64, 1, 3), {"pads": [0, 1, 0, 1]}),                       # gathered: 8 wide
    ((1, 64, 20, 32), (64, 64, 1, 3), {"pads": [0, 1, 0, 1], "strides": [1, 2]}),  # gathered blocks, stride 2
    ((1, 3, 7, 700), (5, 3, 2, 3), {"pads": [1, 2, 0, 1], "strides": [2, 3]}),     # several gathered blocks
    ((1, 64, 20, 96), (64, 1, 1, 3), {"group": 64, "pads": [0, 1, 0, 1], "strides": [1, 2]}),   # depthwise
    ((1, 64, 20, 8), (64, 1, 1, 3), {"group": 64, "pads": [0, 1, 0, 1]}),                       # ... rows of 8
    ((2, 64, 20, 16), (64, 1, 1, 3), {"group": 64, "pads": [0, 1, 0, 1], "strides": [1, 2]}),   # ... of 8, stride 2
    ((2, 6, 40), (4, 6, 3), {"pads": [2, 0], "dilations": [2]}),                   # 1-D
    ((1, 512, 1, 4), (4, 512, 1, 1), {}),                                          # 512 taps: the kernel's most
    ((1, 16, 2, 5), (128, 16, 1, 1), {}),                        # under 16 positions: vectorized over channels
    ((1, 8, 1, 7), (128, 4, 1, 3), {"group": 2, "pads": [0, 1, 0, 1]}),           # ... per group of 64
]


@pytest.mark.parametrize("x, w, attrs", CONVS)
def test_conv_shapes(x, w, attrs):
    _on_kernel("Conv", attrs, _data(x, 1), _data(w, 2), _data((w[0],), 3))


def test_many_taps_run_on_blas():
    """More than KERNEL_MAX_TAPS products per output: the numpy path (BLAS), same results."""
    x, w = _data((1, 513, 1, 4), 1), _data((4, 513, 1, 1), 2)
    assert _plan("Conv", {}, x, w).native is None
    agree("Conv", {}, [x, w], const=(1,))


def test_non_contiguous_input():
    x = _data((1, 5, 20, 6), 1).transpose(0, 1, 3, 2)
    ctx = _plan("Conv", {"pads": [1, 1, 1, 1]}, np.ascontiguousarray(x), _data((3, 5, 3, 3), 2))
    close(ctx([x])[0], reference_op("Conv", {"pads": [1, 1, 1, 1]}, [x, _data((3, 5, 3, 3), 2)])[0])


@pytest.mark.parametrize("activation", sorted(conv_ops.ACTIVATIONS))
@pytest.mark.parametrize("op, x, w, attrs", [
    ("Conv", (1, 4, 3, 37), (6, 4, 2, 3), {"pads": [0, 1, 0, 1]}),
    ("Conv", (1, 4, 1, 37), (4, 1, 1, 3), {"group": 4, "pads": [0, 1, 0, 1], "strides": [1, 2]}),
    ("ConvTranspose", (1, 4, 2, 9), (4, 1, 1, 3), {"group": 4, "strides": [1, 2], "pads": [0, 1, 0, 1],
                                                   "output_padding": [0, 1]}),
])
def test_fused_activation(activation, op, x, w, attrs):
    x, w, b = _data(x, 1), 3 * _data(w, 2), _data((w[0] if op == "Conv" else w[1] * attrs.get("group", 1),), 3)
    plain = _plan(op, attrs, x, w, b)
    fused = plain.fused(activation)
    got = fused([x, w, b])[0]
    conv = plain([x, w, b])[0]
    expected = reference_op(activation, {}, [reference_op(op, attrs, [x, w, b])[0]])[0]
    close(got, expected)
    close(got, ort_op(activation, {}, [conv])[0])
    if activation == "Relu":
        assert np.array_equal(got, np.maximum(conv, 0))
    assert np.array_equal(plain([x, w, b])[0], conv)          # the plan fused from is unchanged


def _conv_relu_model(x_shape, w, attrs, activation="Relu"):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs), helper.make_node(activation, ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w"),
                                           numpy_helper.from_array(_data((w.shape[0],), 3), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid"])
def test_graph_fuses_conv_and_activation(tmp_path, activation):
    """A Conv read only by its activation is one step of the plan, matching onnxruntime on the file."""
    import onnxruntime as ort

    x, w = _data((1, 3, 5, 33), 1), _data((8, 3, 3, 3), 2)
    data = _conv_relu_model(x.shape, w, {"pads": [1, 1, 1, 1]}, activation)
    path = tmp_path / "conv.onnx"
    path.write_bytes(data)
    model = grurt.load(str(path))
    plan = model.plan(model._inputs(x))
    assert [node.op for *_, node in plan.steps] == [f"Conv+{activation}"]
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    close(model.run(x), expected.astype(np.float64))


@given(st.data())
@_SETTINGS
def test_conv_transpose_drawn(data):
    n = data.draw(st.sampled_from([1, 2]), "spatial axes")
    group = data.draw(st.integers(1, 6), "group")
    cg, mg = data.draw(st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 2), (1, 4), (4, 1)]), "C/group, M/group")
    kernel = [data.draw(st.integers(1, 3)) for _ in range(n)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(n)]
    dilations = [data.draw(st.integers(1, 2)) for _ in range(n)]
    extra = [data.draw(st.integers(0, s - 1)) for s in strides]      # onnxruntime refuses more than stride - 1
    spatial = [data.draw(st.integers(1, 5 if i < n - 1 else 20)) for i in range(n)]
    full = [(x - 1) * s + (k - 1) * d + 1 + e for x, s, k, d, e in zip(spatial, strides, kernel, dilations, extra)]
    before = [data.draw(st.integers(0, min(2, f - 1))) for f in full]
    after = [data.draw(st.integers(0, min(2, f - 1 - b))) for f, b in zip(full, before)]
    attrs = {"group": group, "strides": strides, "dilations": dilations, "pads": before + after,
             "output_padding": extra}
    b = _data((mg * group,), 3) if data.draw(st.booleans(), "bias") else None
    batch = data.draw(st.integers(1, 2), "N")
    _on_kernel("ConvTranspose", attrs, _data([batch, cg * group] + spatial, 1), _data([cg * group, mg] + kernel, 2), b)


@pytest.mark.parametrize("width, batch", [(8, 1), (16, 1), (16, 2)])
def test_depthwise_upsampling(width, batch):
    """DeepFilterNet's depthwise ConvTranspose (64 groups, (1, 3), column stride 2, pads 1, output_padding 1) over 20
    frames: each channel spread once, its output rows sums of contiguous runs."""
    attrs = {"group": 64, "strides": [1, 2], "pads": [0, 1, 0, 1], "output_padding": [0, 1]}
    y = _on_kernel("ConvTranspose", attrs, _data([batch, 64, 20, width], 1), _data([64, 1, 1, 3], 2), _data((64,), 3))
    assert y.shape == (batch, 64, 20, 2 * width)


@pytest.mark.parametrize("op, attrs, x", [
    ("Conv", {"strides": [1 << 40]}, (1, 2, 5)), ("Conv", {"dilations": [1, 1 << 40]}, (1, 2, 3, 5)),
    ("ConvTranspose", {"strides": [1 << 40, 1]}, (1, 2, 1, 3)), ("ConvTranspose", {"dilations": [1 << 31]}, (1, 2, 4)),
])
def test_strides_beyond_the_kernels_ints(op, attrs, x):
    """A stride or dilation that never steps (one output, a one-tap kernel) may be any number: beyond a C int the
    numpy path runs it, with the oracles' results."""
    w = _data((2, 2) + (1,) * (len(x) - 2), 2)
    assert _plan(op, attrs, _data(x, 1), w).native is None
    agree(op, attrs, [_data(x, 1), w], const=(1,))


@pytest.mark.parametrize("x, w, attrs", [
    ((2, 64, 20, 96), (10, 64, 5, 1), {}),                                         # one run: chunks of positions
    ((1, 64, 20, 48), (64, 64, 1, 1), {}),
    ((1, 2, 22, 96), (64, 2, 3, 3), {"pads": [0, 1, 0, 1]}),                       # rows in place: output rows
    ((1, 64, 20, 32), (64, 64, 1, 3), {"pads": [0, 1, 0, 1], "strides": [1, 2]}),  # gathered blocks of rows
    ((1, 64, 120, 96), (64, 1, 1, 3), {"group": 64, "pads": [0, 1, 0, 1], "strides": [1, 2]}),  # depthwise: channels
    ((1, 64, 100, 96), (64, 1, 3, 3), {"group": 64}),                              # depthwise unpadded
    ((1, 64, 200, 12), (64, 1, 1, 3), {"group": 64, "pads": [0, 1, 0, 1], "strides": [1, 3]}),  # gathered channels
])
@pytest.mark.parametrize("activation", [None, "Relu"])
def test_threads_give_the_same_bits(x, w, attrs, activation):
    """A Conv of at least 1M multiply-adds splits its items over the worker pool: the same bits on 1, 2 and 3
    threads (each output computed by one thread, in one order), matching the reference."""
    x, w, b = _data(x, 1), _data(w, 2), _data((w[0],), 3)
    plan = _plan("Conv", attrs, x, w, b)
    plan = plan.fused(activation) if activation else plan
    one = plan.native(x, 1)
    assert all(np.array_equal(one, plan.native(x, threads)) for threads in (2, 3, 2))
    expected = reference_op("Conv", attrs, [x, w, b])[0]
    close(one, np.maximum(expected, 0) if activation else expected)


@pytest.mark.parametrize("op, x, w", [
    ("Conv", (0, 2, 3, 3), (4, 2, 1, 1)), ("Conv", (1, 2, 3, 3), (0, 2, 1, 1)), ("Conv", (1, 0, 3, 3), (4, 0, 3, 3)),
    ("Conv", (1, 2, 5), (0, 2, 3)), ("ConvTranspose", (1, 0, 2, 3), (0, 1, 1, 3)),
    ("ConvTranspose", (1, 2, 2, 3), (2, 0, 1, 3)), ("ConvTranspose", (0, 4, 2, 3), (4, 1, 1, 3)),
])
@pytest.mark.parametrize("const", [(1,), ()])
def test_empty_tensors(op, x, w, const):
    """No images, no output channels or no input channels: the reference's shape and values (zeros where
    nothing is summed), never an error (the numpy path's packing used to reshape with -1)."""
    x, w = _data(x, 1), _data(w, 2)
    ours = run_op(op, {}, [x, w], const=const)[0]
    expected = reference_op(op, {}, [x, w])[0]
    assert ours.shape == expected.shape and np.array_equal(ours, expected.astype(np.float32))
