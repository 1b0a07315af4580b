"""Softmax and LogSoftmax over the last axis of a C-contiguous float32 tensor run in C
(grurt._kernels.softmax_rows, _softmax.h): against grurt's float64 reference and onnxruntime on
drawn shapes (rows of 1 to 300 values: below, at and across the 16-float vectors and LogSoftmax's
chunks of 256; empty tensors) and extreme logits (large, offset by 1e4, -inf among finite values).

Tolerances: ATOL against both oracles (tests/tolerances.py); against the float64 reference,
Softmax also within SOFTMAX_RTOL of each value, however small (the kernel's claim), LogSoftmax
within RTOL of its value's size (its float32 rounding).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from grurt import _kernels
from grurt.ops import REGISTRY, Value, check_attributes
from op_testing import ort_op, reference_op, run_op
from tolerances import ATOL

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

PROFILE = settings(derandomize=True, deadline=None, database=None, print_blob=True, max_examples=30)
#: Softmax's claim against float64: exp(x - max) to grurt_exp's 3e-7 (the difference's rounding
#: corrected), the sum in double, one scale.
SOFTMAX_RTOL = 1e-6
#: ... down to the values exp(x - max) < e^-87 that the kernel gives as 0 (their true value is below 2e-38)
SOFTMAX_FLOOR = 2e-38
#: LogSoftmax: (x - max) - log(sum), two float32 roundings of values as large as the logits.
RTOL = 1e-6


@st.composite
def logits(draw):
    """A float32 tensor of rank 1 to 4 (the last axis 1 to 300 long, another may be 0) of extreme
    values: scaled by up to 1e4, offset by up to ±1e4, some entries -inf (never a whole row)."""
    lead = draw(st.lists(st.integers(0, 3), max_size=3))
    last = draw(st.one_of(st.integers(1, 20), st.integers(14, 18), st.integers(250, 300)))
    shape = tuple(lead) + (last,)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 30.0, 1e4]))
    offset = draw(st.sampled_from([0.0, 1e4, -1e4]))
    x = rng.standard_normal(shape) * scale + offset
    if draw(st.booleans()) and last > 1:
        holes = rng.random(shape) < 0.3
        holes[..., 0] = False                                   # each row keeps a finite value
        x[holes] = -np.inf
    return x.astype(np.float32)


def _check(op, x):
    ours = run_op(op, {"axis": -1}, [x])[0]
    want = reference_op(op, {"axis": -1}, [x])[0]
    assert ours.shape == x.shape and ours.dtype == np.float32
    rtol = SOFTMAX_RTOL if op == "Softmax" else RTOL
    np.testing.assert_allclose(ours, want, rtol=rtol, atol=SOFTMAX_FLOOR if op == "Softmax" else ATOL,
                               err_msg=op)
    np.testing.assert_allclose(ours, ort_op(op, {"axis": -1}, [x])[0], atol=ATOL, err_msg=f"{op} vs onnxruntime")
    return ours


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@PROFILE
@given(x=logits())
def test_last_axis_against_float64_and_onnxruntime(op, x):
    ours = _check(op, x)
    if op == "Softmax" and x.size:
        np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=ATOL)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_rows_of_one_and_empty_tensors(op):
    """A row of one value is 1 (0 for LogSoftmax) whatever the value; empty tensors stay empty."""
    x = np.array([[3e38], [-3e38], [0.0]], np.float32)
    y = run_op(op, {"axis": -1}, [x])[0]
    assert np.array_equal(y, np.full((3, 1), 1.0 if op == "Softmax" else 0.0, np.float32))
    for shape in [(0,), (2, 0), (0, 5), (3, 0, 4)]:
        y = run_op(op, {"axis": -1}, [np.zeros(shape, np.float32)])[0]
        assert y.shape == shape and y.dtype == np.float32


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_special_rows(op):
    """NaN or +inf anywhere makes the row NaN; a row of -inf only is NaN; -inf among finite values
    is 0 (-inf for LogSoftmax): what the float64 reference and onnxruntime give."""
    x = np.array([[np.nan] + [1.0] * 20, [2.0] * 20 + [np.inf], [-np.inf] * 21,
                  [-np.inf] * 10 + [5.0] + [-np.inf] * 10], np.float32)
    y = run_op(op, {"axis": -1}, [x])[0]
    assert np.isnan(y[:3]).all()
    want = np.where(np.isinf(x[3]), 0.0 if op == "Softmax" else -np.inf, 1.0 if op == "Softmax" else 0.0)
    assert np.array_equal(y[3], want.astype(np.float32))
    for oracle in (reference_op(op, {"axis": -1}, [x])[0], ort_op(op, {"axis": -1}, [x])[0]):
        np.testing.assert_allclose(y, oracle, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_other_axes_and_layouts_take_numpy(op):
    """Another axis, or a view that is not C-contiguous, runs numpy's path: same values as the
    C path's within ATOL, and the reference's."""
    x = np.random.default_rng(3).standard_normal((3, 40, 5)).astype(np.float32) * 10
    spec = REGISTRY[op]
    for axis, view in ((1, x), (-1, x.transpose(0, 2, 1)), (-1, x[:, ::2])):
        attrs = check_attributes(spec, {"axis": axis}, op)
        ctx = spec.prepare(attrs, [Value(view.shape, view.dtype)])
        ours = spec.run(ctx, [view])[0]
        np.testing.assert_allclose(ours, reference_op(op, {"axis": axis}, [view])[0], rtol=RTOL, atol=ATOL)
        c_path = run_op(op, {"axis": -1}, [np.ascontiguousarray(np.moveaxis(view, axis, -1))])[0]
        np.testing.assert_allclose(np.moveaxis(ours, axis, -1), c_path, atol=ATOL)


def test_kernel_in_place():
    """softmax_rows may write over its input (the fused attention's scores do)."""
    x = np.random.default_rng(4).standard_normal((5, 33)).astype(np.float32)
    want = reference_op("Softmax", {"axis": -1}, [x])[0]
    _kernels.softmax_rows(x, x, False)
    np.testing.assert_allclose(x, want, rtol=SOFTMAX_RTOL, atol=SOFTMAX_FLOOR)
