"""The conv family (grurt.ops.conv): Conv, ConvTranspose, MaxPool, AveragePool, LpPool and the
global pools three ways, grurt's run (through the registry, as the planner runs it), grurt's
float64 reference (loops over positions) and onnxruntime.

Tolerance: float32 outputs are held to ATOL (tests/tolerances.py) times the largest magnitude
of the reference's output (at least 1): a convolution sums C/groups · kernel products.
Maxima are exact (np.array_equal): a maximum picks one of its inputs.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grurt.errors import ModelFormatError, UnsupportedModelError
from grurt.ops import REGISTRY, Value, check_attributes, time_rule
from grurt.ops import conv as conv_ops

from op_testing import ort_op, reference_op, run_op
from tolerances import ATOL

_SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=25,
                     suppress_health_check=[HealthCheck.too_slow])


def _data(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def close(ours, oracle):
    assert ours.shape == oracle.shape, (ours.shape, oracle.shape)
    error = float(np.abs(ours.astype(np.float64) - oracle).max())
    assert error <= ATOL * max(1.0, float(np.abs(oracle).max())), error
    return error


def agree(op, attrs, inputs, const=(), opset=17, exact=False):
    """grurt's output, after asserting it matches the reference and onnxruntime."""
    ours = run_op(op, attrs, inputs, const=const)[0]
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32 and ours.flags.c_contiguous
    ref = reference_op(op, attrs, inputs)[0]
    ort = ort_op(op, attrs, inputs, opset=opset, const=tuple(const))[0]
    if exact:
        assert np.array_equal(ours, ref.astype(np.float32)) and np.array_equal(ours, ort), op
    else:
        close(ours, ref)
        close(ours, ort)
    return ours


CONVS = [  # x shape, W shape, attributes
    ((2, 3, 9), (4, 3, 3), {}),
    ((1, 4, 11), (6, 2, 3), {"group": 2, "strides": [2], "pads": [2, 1]}),
    ((1, 4, 12), (4, 1, 3), {"group": 4, "dilations": [3], "pads": [6, 0]}),          # depthwise, causal
    ((1, 3, 10), (2, 3, 4), {"auto_pad": "SAME_UPPER", "strides": [3]}),
    ((1, 3, 10), (2, 3, 4), {"auto_pad": "SAME_LOWER", "strides": [3]}),
    ((1, 3, 10), (2, 3, 4), {"auto_pad": "VALID", "dilations": [2]}),
    ((2, 3, 5, 6), (4, 3, 3, 3), {"pads": [1, 0, 2, 1]}),
    ((1, 4, 7, 8), (8, 2, 2, 3), {"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 1, 2]}),
    ((1, 6, 5, 9), (6, 1, 3, 3), {"group": 6, "auto_pad": "SAME_UPPER", "strides": [1, 2]}),
    ((1, 6, 5, 9), (6, 1, 3, 3), {"group": 6, "auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((1, 8, 4, 6), (12, 8, 1, 1), {}),                                                  # pointwise
    ((1, 8, 4, 6), (12, 4, 1, 1), {"group": 2, "strides": [2, 2]}),
    ((1, 2, 4, 5, 6), (3, 2, 2, 3, 2), {"pads": [1, 0, 1, 0, 1, 1], "strides": [1, 2, 1]}),  # 3-D
    ((1, 4, 20, 8), (4, 1, 3, 3), {"group": 4, "pads": [2, 1, 0, 1], "strides": [1, 2]}),  # DeepFilterNet-like
]


@pytest.mark.parametrize("x, w, attrs", CONVS)
@pytest.mark.parametrize("bias", [False, True])
def test_conv(x, w, attrs, bias, monkeypatch):
    inputs = [_data(x, 1), _data(w, 2)] + ([_data((w[0],), 3)] if bias else [])
    agree("Conv", attrs, inputs, const=(1, 2))
    monkeypatch.setattr(conv_ops, "KERNEL_AXES", ())      # the numpy path too
    agree("Conv", attrs, inputs, const=(1, 2))
    monkeypatch.undo()
    agree("Conv", dict(attrs, kernel_shape=list(w[2:])), inputs, const=())   # weights from the inputs


@given(st.data())
@_SETTINGS
def test_conv_drawn(data):
    n = data.draw(st.integers(1, 2))
    group = data.draw(st.sampled_from([1, 2, 3]))
    cg, mg = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    kernel = [data.draw(st.integers(1, 4)) for _ in range(n)]
    dilations = [data.draw(st.integers(1, 3)) for _ in range(n)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(n)]
    pads = [data.draw(st.integers(0, 3)) for _ in range(2 * n)]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = [data.draw(st.integers(max(1, s - pads[i] - pads[i + n]), 9)) for i, s in enumerate(spans)]
    attrs = {"group": group, "strides": strides, "dilations": dilations, "pads": pads}
    agree("Conv", attrs, [_data([1, cg * group] + spatial, 1), _data([mg * group, cg] + kernel, 2),
                          _data((mg * group,), 3)], const=(1, 2))


@pytest.mark.parametrize("bias", [False, True])
def test_conv_kernel_along_the_first_axis_by_slabs(bias, monkeypatch):
    """A (4, 1) kernel over (1, 32, 12, 64) with time padding and dilation, off the C kernel (a 3-D Conv or one
    of more than KERNEL_MAX_TAPS products is): im2col's columns would hold 73,728 elements, so the Conv runs one
    product per tap on views of the padded input (conv.SLABS_FROM)."""
    monkeypatch.setattr(conv_ops, "KERNEL_AXES", ())
    attrs = {"dilations": [2, 1], "pads": [3, 0, 1, 0]}
    x, w = _data((1, 32, 12, 64), 1), _data((8, 32, 4, 1), 2)
    ctx = REGISTRY["Conv"].prepare(check_attributes(REGISTRY["Conv"], attrs, "Conv"),
                                   [Value(x.shape, x.dtype), Value(w.shape, w.dtype, w)])
    assert ctx.slabs is not None
    agree("Conv", attrs, [x, w] + ([_data((8,), 3)] if bias else []), const=(1, 2))


def test_conv_refusals():
    x, w = _data((1, 4, 8)), _data((6, 2, 3))
    with pytest.raises(ModelFormatError, match="X needs 6 channels"):
        run_op("Conv", {"group": 3}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="does not fit axis 0 of 8 padded by 0 \\+ 0"):
        run_op("Conv", {"group": 2, "dilations": [5]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="together with auto_pad=SAME_UPPER"):
        run_op("Conv", {"group": 2, "auto_pad": "SAME_UPPER", "pads": [1, 1]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="kernel_shape"):
        run_op("Conv", {"group": 2, "kernel_shape": [2]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="strides of Conv: must be positive"):
        run_op("Conv", {"group": 2, "strides": [0]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="B \\(5,\\) for 6 output channels"):
        run_op("Conv", {"group": 2}, [x, w, _data((5,))], const=(1,))
    with pytest.raises(UnsupportedModelError, match="1 to 3 spatial axes"):
        run_op("Conv", {}, [_data((1, 1, 2, 2, 2, 2)), _data((1, 1, 1, 1, 1, 1))], const=(1,))
    with pytest.raises(ModelFormatError, match="float"):
        run_op("Conv", {}, [np.ones((1, 1, 3), np.int64), np.ones((1, 1, 1), np.int64)], const=(1,))


CONV_TRANSPOSES = [
    ((1, 3, 5), (3, 2, 3), {}),
    ((2, 4, 5), (4, 1, 3), {"group": 2, "strides": [2], "pads": [1, 2], "output_padding": [1]}),
    ((1, 2, 6), (2, 3, 4), {"strides": [3], "dilations": [2], "pads": [0, 3]}),
    ((1, 2, 5), (2, 2, 3), {"strides": [2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 5), (2, 2, 3), {"strides": [2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 5), (2, 2, 3), {"strides": [2], "output_shape": [10]}),
    ((1, 2, 5), (2, 2, 3), {"strides": [2], "output_shape": [9], "auto_pad": "SAME_UPPER"}),
    ((1, 3, 4, 5), (3, 2, 3, 2), {"strides": [2, 1], "pads": [1, 0, 0, 1]}),
    ((1, 4, 3, 4), (4, 3, 2, 3), {"group": 2, "strides": [2, 3], "dilations": [2, 1], "output_padding": [1, 2]}),
    ((1, 4, 3, 4), (4, 1, 3, 3), {"group": 4, "strides": [1, 2], "pads": [1, 1, 1, 1]}),
]


@pytest.mark.parametrize("x, w, attrs", CONV_TRANSPOSES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose(x, w, attrs, bias, monkeypatch):
    m = w[1] * attrs.get("group", 1)
    inputs = [_data(x, 1), _data(w, 2)] + ([_data((m,), 3)] if bias else [])
    agree("ConvTranspose", attrs, inputs, const=(1, 2))
    agree("ConvTranspose", attrs, inputs, const=())
    monkeypatch.setattr(conv_ops, "KERNEL_AXES", ())      # the numpy path too
    agree("ConvTranspose", attrs, inputs, const=(1, 2))


def test_hostile_attributes_bounded_before_allocation():
    """Pads, strides and kernels from attributes that would make run allocate absurd buffers
    (a padded input, im2col's columns, the full transposed product) though the output is small."""
    x, w = _data((1, 2, 5)), _data((2, 2, 1))
    huge = 1 << 40
    with pytest.raises(ModelFormatError, match="Conv: the padded input .*MAX_PARAMETERS"):
        run_op("Conv", {"pads": [huge, 0], "strides": [huge]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="ConvTranspose: the full product .*MAX_PARAMETERS"):
        run_op("ConvTranspose", {"strides": [huge], "pads": [4 * huge - 1, 0]}, [x, w], const=(1,))   # 2 outputs
    with pytest.raises(ModelFormatError, match="MaxPool: the padded input .*MAX_PARAMETERS"):
        run_op("MaxPool", {"kernel_shape": [huge], "pads": [huge - 1, huge - 1], "strides": [huge]}, [x])
    with pytest.raises(ModelFormatError, match="Conv: the im2col columns .*MAX_PARAMETERS"):
        run_op("Conv", {}, [np.zeros((1, 1, 1 << 20), np.float32), _data((1, 1, 512))], const=(1,))  # 512 x 2^20


def test_conv_transpose_refusals():
    x, w = _data((1, 2, 5)), _data((2, 2, 3))
    with pytest.raises(ModelFormatError, match="output size 13 on axis 0 exceeds the 11"):
        run_op("ConvTranspose", {"strides": [2], "output_shape": [13]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="output_padding 2 on axis 0 must be below the stride 2"):
        run_op("ConvTranspose", {"strides": [2], "output_padding": [2]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="leave no output"):
        run_op("ConvTranspose", {"pads": [4, 3]}, [x, w], const=(1,))
    with pytest.raises(ModelFormatError, match="W must be"):
        run_op("ConvTranspose", {}, [x, _data((3, 2, 3))], const=(1,))


POOLS = [  # x shape, attributes
    ((1, 2, 9), {"kernel_shape": [3]}),
    ((2, 3, 10), {"kernel_shape": [3], "strides": [2], "pads": [1, 2]}),
    ((1, 2, 5), {"kernel_shape": [2], "strides": [2], "ceil_mode": 1}),                 # a window past the end
    ((1, 2, 5), {"kernel_shape": [2], "strides": [2], "pads": [1, 1], "ceil_mode": 1}),
    ((1, 2, 8), {"kernel_shape": [3], "strides": [3], "pads": [2, 2], "ceil_mode": 1}),
    ((1, 2, 10), {"kernel_shape": [4], "strides": [3], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 10), {"kernel_shape": [4], "strides": [3], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 10), {"kernel_shape": [3], "strides": [2], "auto_pad": "VALID"}),
    ((1, 3, 6, 7), {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 0, 0, 2]}),
    ((2, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((1, 4, 20, 8), {"kernel_shape": [1, 2], "strides": [1, 2]}),
    ((1, 2, 3, 4, 5), {"kernel_shape": [2, 2, 3], "strides": [1, 2, 2], "pads": [1, 0, 0, 0, 1, 1]}),
]


@pytest.mark.parametrize("x, attrs", POOLS)
def test_max_pool(x, attrs):
    agree("MaxPool", attrs, [_data(x)], exact=True)
    if "auto_pad" not in attrs and min(x[2:]) >= 2 * max(attrs["kernel_shape"]):
        agree("MaxPool", dict(attrs, dilations=[2] * (len(x) - 2)), [_data(x)], exact=True)


@pytest.mark.parametrize("x, attrs", POOLS)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool(x, attrs, include_pad):
    agree("AveragePool", dict(attrs, count_include_pad=include_pad), [_data(x)])


@pytest.mark.parametrize("x, attrs", [p for p in POOLS if "ceil_mode" not in p[1]])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool(x, attrs, p):
    agree("LpPool", dict(attrs, p=p), [_data(x)])


def test_dilated_pools_opset19():
    x = _data((1, 2, 9, 8))
    attrs = {"kernel_shape": [2, 3], "dilations": [3, 2], "strides": [1, 2], "pads": [1, 1, 0, 2]}
    agree("MaxPool", attrs, [x], opset=19, exact=True)
    agree("AveragePool", dict(attrs, count_include_pad=1), [x], opset=19)
    agree("AveragePool", attrs, [x], opset=19)


@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 4, 5, 6), (1, 2, 3, 4, 2)])
def test_global_pools(shape):
    agree("GlobalAveragePool", {}, [_data(shape)])
    agree("GlobalMaxPool", {}, [_data(shape)], exact=True)


def test_pool_refusals():
    x = _data((1, 2, 8))
    with pytest.raises(ModelFormatError, match="pads \\(2, 0\\) on axis 0 must be smaller than the kernel 2"):
        run_op("MaxPool", {"kernel_shape": [2], "pads": [2, 0]}, [x])
    with pytest.raises(ModelFormatError, match="needs kernel_shape"):
        run_op("AveragePool", {}, [x])
    with pytest.raises(ModelFormatError, match="kernel_shape \\(2, 2\\) for 1 spatial axes"):
        run_op("MaxPool", {"kernel_shape": [2, 2]}, [x])
    with pytest.raises(UnsupportedModelError, match="storage_order"):
        run_op("MaxPool", {"kernel_shape": [2], "storage_order": 1}, [x])
    with pytest.raises(ModelFormatError, match="does not fit"):
        run_op("AveragePool", {"kernel_shape": [9]}, [x])
    assert "MaxPool" in REGISTRY and REGISTRY["MaxPool"].outputs == (1, 1)   # the Indices output is refused
    assert "Resize" not in REGISTRY


def test_every_op_has_a_reference_and_a_time_rule():
    from grurt.reference_ops import conv as references
    names = [name for name, op in REGISTRY.items() if op.run.__module__ == "grurt.ops.conv"
             or getattr(op.prepare, "__module__", None) == "grurt.ops.conv"]
    assert sorted(names) == sorted(references.REFERENCE)
    for name in names:
        assert REGISTRY[name].time is not None or REGISTRY[name].time_of is not None, name


def test_time_rules():
    def rule(op, attrs, x, w=None, time_axis=2):
        attrs = check_attributes(REGISTRY[op], attrs, op)
        values = [Value(x, np.dtype(np.float32))] + ([Value(w, np.dtype(np.float32))] if w else [])
        return time_rule(REGISTRY[op], attrs, values, time_axis), \
            conv_ops.history(op, attrs, values, time_axis) if time_axis >= 2 and not op.startswith("Global") else None

    x = (1, 64, 20, 32)
    assert rule("Conv", {"pads": [2, 1, 0, 1]}, x, (64, 64, 3, 3)) == ("causal", 2)
    assert rule("Conv", {"pads": [4, 1, 0, 1], "dilations": [2, 1]}, x, (64, 64, 3, 3)) == ("causal", 4)
    assert rule("Conv", {"pads": [1, 1, 1, 1]}, x, (64, 64, 3, 3)) == ("sequence", 2)
    assert rule("Conv", {"pads": [0, 1, 0, 1]}, x, (64, 64, 1, 3)) == ("step", 0)
    assert rule("Conv", {"pads": [2, 1, 0, 1], "strides": [2, 1]}, x, (64, 64, 3, 3)) == ("sequence", 2)
    assert rule("Conv", {}, x, (64, 64, 3, 3), time_axis=0) == ("step", None)
    assert rule("Conv", {}, x, (64, 64, 3, 3), time_axis=1) == ("sequence", None)
    assert rule("ConvTranspose", {"strides": [2, 1]}, x, (64, 64, 3, 1))[0] == "sequence"
    assert rule("MaxPool", {"kernel_shape": [1, 2], "strides": [1, 2]}, x) == ("step", 0)
    assert rule("AveragePool", {"kernel_shape": [2, 1], "pads": [1, 0, 0, 0]}, x) == ("causal", 1)
    assert rule("GlobalAveragePool", {}, x)[0] == "sequence"
    assert rule("GlobalAveragePool", {}, x, time_axis=0)[0] == "step"
