"""The reductions and normalizations (grurt.ops.reduce) against grurt's float64 reference and
onnxruntime.

Float outputs are held to ATOL (tests/tolerances.py) against both oracles, plus RTOL relative to
the value where values grow large (ReduceProd, ReduceLogSumExp, sums of squares); integer
outputs (ArgMax, TopK's indices, integer reductions) are exact. Shapes (rank 1 to 4, sides 1 to
4), axes (negative, several, none), keepdims and the attributes are drawn by hypothesis.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from grurt.errors import ModelFormatError, UnsupportedModelError
from grurt.ops import REGISTRY, time_rule
from op_testing import ort_op, reference_op, run_op
from test_ops_elementwise import RTOL, check, floats, ints

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

PROFILE = settings(derandomize=True, deadline=None, database=None, print_blob=True, max_examples=25)
FEW = settings(PROFILE, max_examples=12)

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def shape_and_axes(draw, min_rank=1):
    """A shape and a subset of its axes (each written positive or negative), in any order."""
    shape = draw(st.lists(st.integers(1, 4), min_size=min_rank, max_size=4).map(tuple))
    axes = draw(st.lists(st.sampled_from(range(len(shape))), unique=True, max_size=len(shape)))
    signs = draw(st.lists(st.booleans(), min_size=len(axes), max_size=len(axes)))
    return shape, [a - len(shape) if negative else a for a, negative in zip(axes, signs)]


def shape_and_axis(min_rank=1):
    return shapes.filter(lambda s: len(s) >= min_rank).flatmap(
        lambda s: st.tuples(st.just(s), st.integers(-len(s), len(s) - 1)))


# ---- Reduce* ----

REDUCE_VALUES = {"ReduceSum": (-3, 3), "ReduceMean": (-3, 3), "ReduceMax": (-3, 3), "ReduceMin": (-3, 3),
                 "ReduceProd": (0.5, 1.6), "ReduceL1": (-3, 3), "ReduceL2": (-3, 3), "ReduceSumSquare": (-3, 3),
                 "ReduceLogSumExp": (-30, 30)}


@pytest.mark.parametrize("op", sorted(REDUCE_VALUES))
@PROFILE
@given(case=shape_and_axes(), seed=seeds, keepdims=st.sampled_from([0, 1]), noop=st.sampled_from([0, 1]))
def test_reduce_float(op, case, seed, keepdims, noop):
    """axes as the (constant) input of opset 18; no axes: all of them, or none with noop_with_empty_axes."""
    shape, axes = case
    x = floats(seed, shape, *REDUCE_VALUES[op])
    attrs = {"keepdims": keepdims, "noop_with_empty_axes": noop}
    check(op, attrs, [x, np.array(axes, np.int64)] if axes else [x], opset=18, rtol=RTOL)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                                "ReduceSumSquare", "ReduceLogSumExp"])
@FEW
@given(case=shape_and_axes(), seed=seeds, keepdims=st.sampled_from([0, 1]))
def test_reduce_axes_attribute_of_opset_13(op, case, seed, keepdims):
    shape, axes = case
    attrs = {"keepdims": keepdims, **({"axes": axes} if axes else {})}
    check(op, attrs, [floats(seed, shape, *REDUCE_VALUES[op])], opset=13, rtol=RTOL)


def test_reduce_sum_axes_attribute_of_opset_11():
    check("ReduceSum", {"axes": [0, -1], "keepdims": 0}, [floats(1, (2, 3, 4))], opset=11)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                "ReduceSumSquare"])
@FEW
@given(case=shape_and_axes(), seed=seeds, keepdims=st.sampled_from([0, 1]))
def test_reduce_integer_exact(op, case, seed, keepdims):
    """int64 reductions are exact; ReduceMean truncates toward zero, as onnxruntime."""
    shape, axes = case
    x = ints(seed, shape, -3, 3) if op == "ReduceProd" else ints(seed, shape, -50, 50)
    check(op, {"keepdims": keepdims}, [x, np.array(axes, np.int64)] if axes else [x], opset=18)


def test_reduce_max_min_of_bool_opset_20():
    x = np.array([[True, False, False], [True, True, True]])
    for op in ("ReduceMax", "ReduceMin"):
        check(op, {"keepdims": 0}, [x, np.array([1])], opset=20)


def test_reduce_edges():
    x = floats(2, (2, 0, 3))
    for op in ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceLogSumExp", "ReduceL2"):
        check(op, {"keepdims": 0}, [x, np.array([1])], opset=18)  # an empty reduction: -inf, +inf, 0, 1, -inf, 0
    big = np.array([[1e4, 1e4 - 1, -np.inf], [-np.inf, -np.inf, -np.inf]], np.float32)
    check("ReduceLogSumExp", {"keepdims": 1}, [big, np.array([1])], opset=18, rtol=RTOL)
    check("ReduceSum", {"keepdims": 0}, [np.array(2.5, np.float32)], opset=18)  # rank 0: all (no) axes
    nan = np.float32("nan")
    y = np.array([[1, 2], [nan, 0]], np.float32)
    for op in ("ReduceMax", "ReduceMin"):  # onnxruntime agrees when the NaN comes first along the axis
        check(op, {"keepdims": 0}, [y, np.array([1])], opset=18)
        out = run_op(op, {"keepdims": 0}, [np.array([1, nan, 3], np.float32), np.array([0])])[0]
        assert np.isnan(out), "a NaN anywhere makes the max and min NaN"


# ---- ArgMax, ArgMin ----

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@PROFILE
@given(case=shape_and_axis(), seed=seeds, keepdims=st.sampled_from([0, 1]), last=st.sampled_from([0, 1]),
       integer=st.booleans())
def test_arg_extremes(op, case, seed, keepdims, last, integer):
    """Small integers make ties: select_last_index picks the last of them."""
    shape, axis = case
    x = ints(seed, shape, -2, 2) if integer else ints(seed, shape, -3, 3).astype(np.float32)
    check(op, {"axis": axis, "keepdims": keepdims, "select_last_index": last}, [x])


def test_arg_extremes_take_the_first_nan():
    x = np.array([1, np.nan, 3, np.nan], np.float32)
    assert run_op("ArgMax", {}, [x])[0] == 1 and run_op("ArgMin", {}, [x])[0] == 1
    assert run_op("ArgMax", {"select_last_index": 1}, [x])[0] == 3
    assert reference_op("ArgMin", {}, [x])[0] == 1


# ---- TopK ----

@PROFILE
@given(case=shape_and_axis(), seed=seeds, largest=st.sampled_from([0, 1]), pick=st.floats(0, 1),
       integer=st.booleans())
def test_topk(case, seed, largest, pick, integer):
    """Equal values come by increasing index, as onnxruntime gives them."""
    shape, axis = case
    k = round(pick * shape[axis])
    x = ints(seed, shape, -3, 3) if integer else ints(seed, shape, -4, 4).astype(np.float32)
    check("TopK", {"axis": axis, "largest": largest}, [x, np.array([k], np.int64)], opset=11, n_outputs=2)


def test_topk_unsorted_gives_the_same_elements():
    """sorted=0 leaves the order open (onnxruntime's is its heap's): grurt's is sorted."""
    x = floats(4, (3, 7))
    ours = run_op("TopK", {"sorted": 0}, [x, np.array([4])])
    theirs = ort_op("TopK", {"sorted": 0}, [x, np.array([4])], n_outputs=2, const=(1,))
    assert np.array_equal(np.sort(ours[1], axis=-1), np.sort(theirs[1], axis=-1))
    assert np.array_equal(ours, run_op("TopK", {"sorted": 1}, [x, np.array([4])]))


def test_topk_nan_is_the_largest():
    x = np.array([1, np.nan, 3, -2, np.nan, 0], np.float32)
    for largest in (0, 1):
        check("TopK", {"largest": largest}, [x, np.array([6])], opset=11, n_outputs=2)


# ---- CumSum ----

@PROFILE
@given(case=shape_and_axis(), seed=seeds, exclusive=st.sampled_from([0, 1]), reverse=st.sampled_from([0, 1]),
       integer=st.booleans(), scalar_axis=st.booleans())
def test_cumsum(case, seed, exclusive, reverse, integer, scalar_axis):
    shape, axis = case
    x = ints(seed, shape) if integer else floats(seed, shape)
    axis_input = np.array(axis if scalar_axis else [axis], np.int64)
    check("CumSum", {"exclusive": exclusive, "reverse": reverse}, [x, axis_input])


# ---- Softmax, LogSoftmax, Hardmax ----

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@PROFILE
@given(case=shape_and_axis(), seed=seeds, scale=st.sampled_from([1.0, 100.0, 1e4]))
def test_softmax_family(op, case, seed, scale):
    """Large inputs do not overflow (the max is subtracted); Hardmax ties go to the first."""
    shape, axis = case
    x = ints(seed, shape, -2, 2).astype(np.float32) if op == "Hardmax" else floats(seed, shape) * np.float32(scale)
    check(op, {"axis": axis}, [x], rtol=RTOL)


def test_softmax_of_infinities_and_nan():
    x = np.array([[-np.inf, -np.inf, -np.inf], [-np.inf, 1, 2], [np.inf, 1, 2], [np.nan, 1, 2]], np.float32)
    for op in ("Softmax", "LogSoftmax"):
        check(op, {}, [x])


# ---- normalization ----

@st.composite
def layer_norm_cases(draw):
    shape = draw(shapes)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    normalized = shape[axis % len(shape):]
    # Scale and B: the normalized shape, or one that broadcasts to it (fewer axes, ones)
    drop = draw(st.integers(0, len(normalized) - 1))
    ones = draw(st.lists(st.booleans(), min_size=len(normalized) - drop, max_size=len(normalized) - drop))
    scale_shape = tuple(1 if one else d for one, d in zip(ones, normalized[drop:]))
    return shape, axis, scale_shape, draw(st.booleans())


@PROFILE
@given(case=layer_norm_cases(), seed=seeds, epsilon=st.sampled_from([1e-5, 1e-3, 0.5]))
def test_layer_normalization(case, seed, epsilon):
    """Y, Mean and InvStdDev (as large as 1 / sqrt(epsilon): RTOL); B omitted or given."""
    shape, axis, scale_shape, with_bias = case
    x = floats(seed, shape) + np.float32(seed % 5)
    inputs = [x, floats(seed + 1, scale_shape)] + ([floats(seed + 2, scale_shape)] if with_bias else [])
    check("LayerNormalization", {"axis": axis, "epsilon": epsilon}, inputs, opset=17, n_outputs=3, rtol=RTOL)


@FEW
@given(shape=shapes.filter(lambda s: len(s) >= 2), seed=seeds, const=st.booleans())
def test_batch_normalization(shape, seed, const):
    """Folded once when the statistics are constants, computed per run when not."""
    channels = shape[1]
    params = [floats(seed + 1, channels), floats(seed + 2, channels), floats(seed + 3, channels),
              floats(seed + 4, channels, 0.1, 2.0)]
    check("BatchNormalization", {"epsilon": 1e-3}, [floats(seed, shape)] + params, opset=15,
          const=(1, 2, 3, 4) if const else ())


@FEW
@given(shape=shapes.filter(lambda s: len(s) >= 3), seed=seeds)
def test_instance_normalization(shape, seed):
    channels = shape[1]
    check("InstanceNormalization", {"epsilon": 1e-4},
          [floats(seed, shape), floats(seed + 1, channels), floats(seed + 2, channels)], opset=15)


@FEW
@given(n=st.integers(1, 2), groups=st.integers(1, 3), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 3), min_size=1, max_size=2), seed=seeds)
def test_group_normalization(n, groups, per_group, spatial, seed):
    """Scale and bias per channel (opset 21) or per group (opset 18)."""
    channels = groups * per_group
    x = floats(seed, (n, channels, *spatial))
    attrs = {"num_groups": groups, "epsilon": 1e-4}
    check("GroupNormalization", attrs, [x, floats(seed + 1, channels), floats(seed + 2, channels)], opset=21)
    check("GroupNormalization", attrs, [x, floats(seed + 1, groups), floats(seed + 2, groups)], opset=18)


@FEW
@given(case=shape_and_axis(), seed=seeds, p=st.sampled_from([1, 2]))
def test_lp_normalization(case, seed, p):
    shape, axis = case
    x = floats(seed, shape)
    x[(0,) * x.ndim] = 0 if seed % 2 else x[(0,) * x.ndim]
    check("LpNormalization", {"axis": axis, "p": p}, [x])
    check("LpNormalization", {"axis": axis, "p": p}, [np.zeros(shape, np.float32)])  # a zero vector stays zero


# ---- refusals, by name ----

def test_refusals_name_the_problem():
    x = floats(0, (2, 3, 4))
    with pytest.raises(ModelFormatError, match="ReduceSum: axis 3 is out of range for a tensor of rank 3"):
        run_op("ReduceSum", {}, [x, np.array([3])])
    with pytest.raises(ModelFormatError, match=r"ReduceMax: axes \(1, -2\) name an axis twice"):
        run_op("ReduceMax", {}, [x, np.array([1, -2])])
    with pytest.raises(ModelFormatError, match="ReduceMean: axes given both as an attribute and as an input"):
        run_op("ReduceMean", {"axes": [0]}, [x, np.array([1])])
    with pytest.raises(UnsupportedModelError, match="ReduceSum: axes is computed from the model's inputs"):
        run_op("ReduceSum", {}, [x, np.array([1])], const=())
    with pytest.raises(ModelFormatError, match="ReduceL2 takes float tensors"):
        run_op("ReduceL2", {}, [np.ones(3, np.int64)])
    with pytest.raises(ModelFormatError, match="attribute keepdims of ReduceSum: must be 0 or 1"):
        run_op("ReduceSum", {"keepdims": 2}, [x])
    with pytest.raises(ModelFormatError, match=r"TopK: K=5 for an axis of size 4 \(shape \(2, 3, 4\)\)"):
        run_op("TopK", {}, [x, np.array([5])])
    with pytest.raises(ModelFormatError, match="TopK: K=-1"):
        run_op("TopK", {}, [x, np.array([-1])])
    with pytest.raises(UnsupportedModelError, match="TopK: K is computed from the model's inputs"):
        run_op("TopK", {}, [x, np.array([1])], const=())
    with pytest.raises(UnsupportedModelError, match="CumSum: axis is computed from the model's inputs"):
        run_op("CumSum", {}, [x, np.array(1)], const=())
    with pytest.raises(ModelFormatError, match="CumSum: axis -4 is out of range"):
        run_op("CumSum", {}, [x, np.array(-4)])
    with pytest.raises(ModelFormatError, match="ArgMax over axis 1 of size 0"):
        run_op("ArgMax", {"axis": 1}, [np.ones((2, 0), np.float32)])
    with pytest.raises(ModelFormatError, match="Softmax: axis 3 is out of range"):
        run_op("Softmax", {"axis": 3}, [x])
    with pytest.raises(ModelFormatError,
                       match=r"LayerNormalization: Scale of shape \(3,\) does not broadcast to \(4,\)"):
        run_op("LayerNormalization", {}, [x, np.ones(3, np.float32)])
    with pytest.raises(ModelFormatError, match="attribute epsilon of LayerNormalization: must be >= 0"):
        run_op("LayerNormalization", {"epsilon": -1.0}, [x, np.ones(4, np.float32)])
    with pytest.raises(ModelFormatError, match="attribute stash_type of LayerNormalization: must name a float type"):
        run_op("LayerNormalization", {"stash_type": 7}, [x, np.ones(4, np.float32)])
    c = np.ones(3, np.float32)
    with pytest.raises(UnsupportedModelError, match="BatchNormalization with training_mode=1"):
        run_op("BatchNormalization", {"training_mode": 1}, [x, c, c, c, c])
    with pytest.raises(ModelFormatError, match=r"BatchNormalization: a parameter of shape \(4,\) for an input of "
                                               r"shape \(2, 3, 4\)"):
        run_op("BatchNormalization", {}, [x, c, c, c, np.ones(4, np.float32)])
    with pytest.raises(ModelFormatError, match="BatchNormalization needs an input of rank >= 2"):
        run_op("BatchNormalization", {}, [np.ones(3, np.float32), c, c, c, c])
    with pytest.raises(ModelFormatError, match="InstanceNormalization needs an input of rank >= 3"):
        run_op("InstanceNormalization", {}, [np.ones((2, 3), np.float32), c, c])
    with pytest.raises(ModelFormatError, match="GroupNormalization: num_groups=2 does not divide the 3 channels"):
        run_op("GroupNormalization", {"num_groups": 2}, [x, c, c])
    with pytest.raises(ModelFormatError, match="attribute num_groups of GroupNormalization: must be > 0"):
        run_op("GroupNormalization", {"num_groups": 0}, [x, c, c])
    with pytest.raises(ModelFormatError, match="attribute p of LpNormalization: must be 1 or 2, got 3"):
        run_op("LpNormalization", {"p": 3}, [x])


# ---- time rules ----

def test_time_rules_follow_the_axes():
    def rule(op, attrs, inputs, time_axis):
        from grurt.ops import Value, check_attributes
        spec = REGISTRY[op]
        values = [Value(a.shape, a.dtype, a) for a in inputs]
        return time_rule(spec, check_attributes(spec, attrs, op), values, time_axis)

    x = np.ones((2, 5, 3), np.float32)  # (batch, time, features)
    assert rule("ReduceMean", {}, [x, np.array([-1])], 1) == "step"
    assert rule("ReduceMean", {}, [x, np.array([1, 2])], 1) == "sequence"
    assert rule("ReduceMean", {}, [x], 1) == "sequence"  # no axes: all of them
    assert rule("ReduceMean", {"noop_with_empty_axes": 1}, [x], 1) == "step"
    assert rule("ReduceMax", {"axes": [-2]}, [x], 1) == "sequence"
    assert rule("ReduceSum", {}, [x, np.array([1])], None) == "step"  # no time axis
    assert rule("Softmax", {}, [x], 1) == "step" and rule("Softmax", {"axis": 1}, [x], 1) == "sequence"
    assert rule("ArgMax", {"axis": -2}, [x], 1) == "sequence" and rule("ArgMax", {}, [x], 1) == "step"
    assert rule("TopK", {"axis": 1}, [x, np.array([2])], 1) == "sequence"
    assert rule("TopK", {}, [x, np.array([2])], 1) == "step"
    assert rule("CumSum", {}, [x, np.array(1)], 1) == "causal"
    assert rule("CumSum", {"reverse": 1}, [x, np.array(1)], 1) == "sequence"
    assert rule("CumSum", {}, [x, np.array(2)], 1) == "step"
    assert rule("LayerNormalization", {}, [x, np.ones(3, np.float32)], 1) == "step"
    assert rule("LayerNormalization", {"axis": 1}, [x, np.ones((5, 3), np.float32)], 1) == "sequence"
    assert rule("LpNormalization", {"axis": 1}, [x], 1) == "sequence"
    c = np.ones(5, np.float32)
    xt = np.ones((2, 5, 7), np.float32)  # (batch, channels, time)
    assert rule("BatchNormalization", {}, [xt, c, c, c, c], 2) == "step"
    assert rule("InstanceNormalization", {}, [xt, c, c], 2) == "sequence"
    assert rule("GroupNormalization", {"num_groups": 5}, [xt, c, c], 2) == "sequence"
    assert all(REGISTRY[op].time is None for op in REDUCE_VALUES)
