"""The shape family (grurt.ops.shape): every op three ways, grurt's run (through the registry,
as the planner runs it), grurt's float64 reference and onnxruntime on a one-node model.

Data movement is exact: each op's output equals the reference's (cast to float32) and
onnxruntime's with np.array_equal, on float32, int64 and bool tensors. Range computes values:
held to ATOL (tests/tolerances.py) relative to the largest magnitude. Refusals are asserted by
their class and the words that name what is wrong.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from grurt.errors import InputError, ModelFormatError, UnsupportedModelError
from grurt.ops import REGISTRY, Value, check_attributes, time_rule

from op_testing import ort_op, reference_op, run_op
from tolerances import ATOL

INT64_MAX, INT64_MIN = 2**63 - 1, -2**63
_SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=25,
                     suppress_health_check=[HealthCheck.too_slow])


def _data(shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind == "i":
        return rng.integers(-50, 50, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def agree(op, attrs, inputs, const=None, opset=17, n_outputs=1, ort_attrs=None, ort=True):
    """grurt's outputs, after asserting they equal the reference's and onnxruntime's (unless
    ``ort`` is False: a dtype onnxruntime does not implement for the op) exactly."""
    op_const = REGISTRY[op].const_inputs if const is None else const
    ours = run_op(op, attrs, inputs, const=const)
    ref = reference_op(op, attrs, inputs)
    ort = ort_op(op, attrs if ort_attrs is None else ort_attrs, inputs, n_outputs=n_outputs, opset=opset,
                 const=tuple(i for i in op_const if i < len(inputs) and inputs[i] is not None)) if ort else ours
    assert len(ours) == len(ref) == len(ort) == n_outputs
    for a, r, o in zip(ours, ref, ort):
        assert np.array_equal(a, r.astype(a.dtype)), (op, attrs, a, r)
        assert np.array_equal(a, o), (op, attrs, a, o)
        assert isinstance(a, np.ndarray) and a.flags.c_contiguous
    return ours


def ints(*values):
    return np.array(values, dtype=np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_transpose_any_perm_and_dtype(dtype):
    x = _data((2, 3, 4, 5), dtype)
    agree("Transpose", {}, [x])
    for perm in [(0, 2, 1, 3), (3, 0, 1, 2), (1, 3, 2, 0)]:
        agree("Transpose", {"perm": list(perm)}, [x])


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4).flatmap(
    lambda shape: st.tuples(st.just(shape), st.permutations(range(len(shape))))))
@_SETTINGS
def test_transpose_drawn(case):
    shape, perm = case
    agree("Transpose", {"perm": list(perm)}, [_data(shape)])


def test_shape_and_size():
    x = _data((2, 3, 4, 5))
    agree("Shape", {}, [x])
    for start, end in [(1, None), (-2, None), (0, -1), (-10, 10), (2, 3)]:
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        agree("Shape", attrs, [x])
    agree("Size", {}, [x])
    # Shape and Size never read the data: the planner folds them with run(ctx, [None])
    op = REGISTRY["Shape"]
    ctx = op.prepare(check_attributes(op, {"start": 1}, "s"), [Value((2, 3, 4), np.dtype(np.float32))])
    assert np.array_equal(op.run(ctx, [None])[0], ints(3, 4))
    assert run_op("Shape", {"start": 3, "end": 1}, [x])[0].shape == (0,)     # empty, as ONNX says


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_reshape(dtype):
    x = _data((2, 3, 4), dtype)
    for target in [(4, 6), (-1,), (0, -1), (0, 0, 2, 2), (2, -1, 2), (24, 1), (1, 0, 2, 4)]:
        agree("Reshape", {}, [x, ints(*target)], opset=14)
    agree("Reshape", {"allowzero": 1}, [x, ints(4, -1)], opset=14)


def test_reshape_refusals():
    x = _data((2, 3, 4))
    with pytest.raises(ModelFormatError, match="two -1"):
        run_op("Reshape", {}, [x, ints(-1, -1)])
    with pytest.raises(ModelFormatError, match=r"cannot reshape \(2, 3, 4\)"):
        run_op("Reshape", {}, [x, ints(5, 5)])
    with pytest.raises(ModelFormatError, match="cannot infer"):
        run_op("Reshape", {}, [x, ints(5, -1)])
    with pytest.raises(ModelFormatError, match="-2"):
        run_op("Reshape", {}, [x, ints(-2, 12)])
    with pytest.raises(ModelFormatError, match="does not have"):
        run_op("Reshape", {}, [x, ints(2, 3, 4, 0)])
    with pytest.raises(ModelFormatError, match="cannot infer"):
        run_op("Reshape", {"allowzero": 1}, [x, ints(0, -1)])
    with pytest.raises(UnsupportedModelError, match="constant"):
        run_op("Reshape", {}, [x, ints(4, 6)], const=())


def test_flatten_squeeze_unsqueeze():
    x = _data((2, 1, 3, 1))
    for axis in (0, 1, 2, 4, -1, -4):
        agree("Flatten", {"axis": axis}, [x])
    agree("Squeeze", {}, [x])
    agree("Squeeze", {}, [x, ints(-1)])
    agree("Squeeze", {}, [x, ints(1, 3)])
    agree("Squeeze", {"axes": [1]}, [x], opset=11)
    agree("Unsqueeze", {}, [x, ints(0)])
    agree("Unsqueeze", {}, [x, ints(-1, 1)])
    agree("Unsqueeze", {}, [x, ints(5, 0)])
    agree("Unsqueeze", {"axes": [2, -1]}, [x], opset=11)
    with pytest.raises(ModelFormatError, match="axis 2 .* not 1"):
        run_op("Squeeze", {}, [x, ints(2)])
    with pytest.raises(ModelFormatError, match="repeat"):
        run_op("Unsqueeze", {}, [x, ints(1, -5)])
    with pytest.raises(ModelFormatError, match="both"):
        run_op("Squeeze", {"axes": [1]}, [x, ints(1)])
    with pytest.raises(ModelFormatError, match="out of range"):
        run_op("Flatten", {"axis": 5}, [x])


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_concat(dtype):
    a, b, c = _data((2, 3, 4), dtype, 1), _data((2, 1, 4), dtype, 2), _data((2, 2, 4), dtype, 3)
    agree("Concat", {"axis": 1}, [a, b, c])
    agree("Concat", {"axis": -2}, [a, b])
    agree("Concat", {"axis": 0}, [a])
    with pytest.raises(ModelFormatError, match="differ off axis"):
        run_op("Concat", {"axis": 0}, [a, b])


def test_concat_of_shapes_folds_on_int64():
    """The planner's shape arithmetic: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, all on int64."""
    x = _data((2, 3, 4))
    dims = run_op("Shape", {}, [x])[0]
    batch = run_op("Gather", {"axis": 0}, [dims, ints(0)], const=(0, 1))[0]
    last = run_op("Gather", {"axis": 0}, [dims, np.array(2)], const=(0, 1))[0]
    assert isinstance(last, np.ndarray) and last.shape == ()
    last = run_op("Unsqueeze", {}, [last, ints(0)])[0]
    target = run_op("Concat", {"axis": 0}, [batch, ints(-1), last])[0]
    assert target.dtype == np.int64 and np.array_equal(target, ints(2, -1, 4))
    assert run_op("Reshape", {}, [x, target])[0].shape == (2, 3, 4)


def test_split():
    x = _data((2, 7, 3))
    agree("Split", {"axis": 1}, [x, ints(2, 4, 1)], n_outputs=3, opset=13)
    agree("Split", {"axis": -2, "split": [3, 4]}, [x], n_outputs=2, opset=11)
    agree("Split", {"axis": 1, "num_outputs": 3}, [x], n_outputs=3, opset=18)   # 3, 3, 1
    agree("Split", {"axis": 2, "num_outputs": 3}, [x], n_outputs=3, opset=18)
    agree("Split", {"axis": 0, "num_outputs": 2}, [_data((4, 2), np.int64)], n_outputs=2, opset=18)
    with pytest.raises(ModelFormatError, match="do not split"):
        run_op("Split", {"axis": 1}, [x, ints(3, 3)])
    with pytest.raises(ModelFormatError, match="num_outputs"):
        run_op("Split", {"axis": 1}, [x])


SLICES = [  # starts, ends, axes, steps
    ([1], [3], None, None),
    ([0, 1], [2, -1], [0, 2], None),
    ([-1], [INT64_MIN], [1], [-1]),                  # reversed
    ([INT64_MAX], [INT64_MIN], [-1], [-2]),         # reversed, every other one, clamped ends
    ([1, 0], [INT64_MAX, 5], [1, 2], [2, 3]),
    ([-100], [100], [0], [1]),
    ([3], [0], [2], [-1]),
    ([-2, 4], [-5, 1], [1, 2], [-2, -2]),
    ([0], [1], [-3], [5]),
]


@pytest.mark.parametrize("starts, ends, axes, steps", SLICES)
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_slice(starts, ends, axes, steps, dtype):
    x = _data((3, 4, 5), dtype)
    inputs = [x, ints(*starts), ints(*ends), None if axes is None else ints(*axes),
              None if steps is None else ints(*steps)]
    agree("Slice", {}, inputs)


def test_slice_opset9_attributes_and_refusals():
    x = _data((3, 4, 5))
    agree("Slice", {"starts": [1, -3], "ends": [3, INT64_MAX], "axes": [0, 2]}, [x], opset=9)
    agree("Slice", {}, [x, ints(3), ints(1), ints(0), ints(1)], const=(1, 2, 3, 4))   # empty
    with pytest.raises(ModelFormatError, match="step 0"):
        run_op("Slice", {}, [x, ints(0), ints(1), ints(0), ints(0)])
    with pytest.raises(ModelFormatError, match="differ in length"):
        run_op("Slice", {}, [x, ints(0, 1), ints(1), ints(0)])
    with pytest.raises(ModelFormatError, match="repeat an axis"):
        run_op("Slice", {}, [x, ints(0, 0), ints(1, 1), ints(0, -3)])


@given(st.data())
@_SETTINGS
def test_slice_drawn(data):
    shape = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape),
                              unique_by=lambda a: a % len(shape)))
    bound = st.one_of(st.integers(-8, 8), st.sampled_from([INT64_MAX, INT64_MIN]))
    starts = [data.draw(bound) for _ in axes]
    ends = [data.draw(bound) for _ in axes]
    steps = [data.draw(st.integers(-3, 3).filter(bool)) for _ in axes]
    x = _data(shape)
    inputs = [x, ints(*starts), ints(*ends), ints(*axes), ints(*steps)]
    try:
        ours = run_op("Slice", {}, inputs)
    except UnsupportedModelError:   # an empty result: what onnxruntime gives is empty too
        assert ort_op("Slice", {}, inputs, const=(1, 2, 3, 4))[0].size == 0
        return
    assert np.array_equal(ours[0], ort_op("Slice", {}, inputs, const=(1, 2, 3, 4))[0])
    assert np.array_equal(ours[0], reference_op("Slice", {}, inputs)[0].astype(np.float32))


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [np.array(1), ints(2, -1, 0), np.array([[0, -2], [1, 1]])])
def test_gather(axis, indices):
    x = _data((3, 4, 3))
    agree("Gather", {"axis": axis}, [x, indices], const=())       # indices from the inputs
    agree("Gather", {"axis": axis}, [x, indices], const=(1,))     # constant indices
    agree("Gather", {"axis": axis}, [_data((3, 4, 3), np.int64), indices], const=(0, 1))


def test_gather_out_of_range():
    x = _data((3, 4))
    with pytest.raises(InputError, match=r"index 4 .* axis of 4 \(indices from the model's inputs\)"):
        run_op("Gather", {"axis": 1}, [x, ints(0, 4)], const=())
    with pytest.raises(InputError, match="index -4"):
        run_op("Gather", {"axis": 0}, [x, ints(-4)], const=())
    with pytest.raises(ModelFormatError, match=r"index 3 .* \(constant indices\)"):
        run_op("Gather", {"axis": 0}, [x, ints(3)], const=(1,))
    with pytest.raises(ModelFormatError, match="integers"):
        run_op("Gather", {"axis": 0}, [x, np.zeros(1)], const=())


def test_gather_elements_nd_scatter_nd():
    x = _data((3, 4, 2))
    idx = np.random.default_rng(1).integers(-3, 3, size=(2, 4, 2))
    agree("GatherElements", {"axis": 0}, [x, idx], const=())
    agree("GatherElements", {"axis": -2}, [x, idx % 3 - 4], const=(1,))
    agree("GatherElements", {"axis": 1}, [x, np.zeros((1, 6, 1), np.int64)], const=())  # longer on the axis
    with pytest.raises(InputError, match=r"index 3 at \(1, 0, 0\) is out of range for an axis of 3"):
        run_op("GatherElements", {"axis": 0}, [x, np.array([[[0, 0]], [[3, 0]]])], const=())
    with pytest.raises(ModelFormatError, match="exceed data"):
        run_op("GatherElements", {"axis": 0}, [x, np.zeros((1, 5, 2), np.int64)], const=())
    agree("GatherND", {}, [x, ints(1, -1, 0).reshape(1, 3)], const=())
    agree("GatherND", {}, [x, np.array([[[0, 1]], [[2, -4]]])], const=(1,))
    agree("GatherND", {}, [x, np.array([[2], [0], [1]])], const=())
    agree("GatherND", {}, [x, np.array([2, 0, 1])], const=())        # one element, a scalar
    agree("Transpose", {}, [np.float32(3)])
    with pytest.raises(InputError, match="index 4"):
        run_op("GatherND", {}, [x, np.array([[0, 4]])], const=())
    with pytest.raises(UnsupportedModelError, match="batch_dims"):
        run_op("GatherND", {"batch_dims": 1}, [x, np.array([[0]])], const=())
    updates = _data((2, 2), seed=5)
    agree("ScatterND", {}, [x, np.array([[0, 1], [-1, 3]]), updates], const=())
    agree("ScatterND", {}, [x, np.array([[2], [0]]), _data((2, 4, 2), seed=6)], const=(1,))
    agree("ScatterND", {}, [_data((3, 4, 2), np.int64), np.array([[1, 1, 1]]), ints(7)], const=())
    with pytest.raises(ModelFormatError, match="updates"):
        run_op("ScatterND", {}, [x, np.array([[0, 1]]), updates], const=())
    with pytest.raises(InputError, match="index -5"):
        run_op("ScatterND", {}, [x, np.array([[0, 1], [-5, 0]]), updates], const=())


def test_tile_expand():
    x = _data((2, 1, 3))
    agree("Tile", {}, [x, ints(1, 3, 2)])
    agree("Tile", {}, [_data((2, 3), np.bool_), ints(2, 1)])
    agree("Expand", {}, [x, ints(2, 4, 3)])
    agree("Expand", {}, [x, ints(5, 1, 1, 1)])      # bidirectional: the 1s keep the input's dims
    agree("Expand", {}, [x, ints(4, 1)])
    with pytest.raises(ModelFormatError, match="do not broadcast"):
        run_op("Expand", {}, [x, ints(3, 1, 3)])
    with pytest.raises(ModelFormatError, match="MAX_PARAMETERS"):
        run_op("Tile", {}, [x, ints(1 << 20, 1 << 20, 1)])
    with pytest.raises(ModelFormatError, match="MAX_PARAMETERS"):
        run_op("Expand", {}, [x, ints(1 << 40, 1, 1)])
    assert run_op("Tile", {}, [x, ints(1, 0, 1)])[0].shape == (x.shape[0], 0, x.shape[2])


PADS = [(1, 2, 0, 1), (0, 0, 2, 3), (-1, 1, 2, -1), (3, 0, 0, 4), (0, -2, 0, 2)]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", PADS)
def test_pad_modes(mode, pads):
    x = _data((4, 5))
    agree("Pad", {"mode": mode}, [x, ints(*pads)], opset=19)
    agree("Pad", {"mode": mode}, [_data((4, 5), np.int64), ints(*pads)], opset=19)


def test_pad_value_axes_and_old_attributes():
    x = _data((2, 3, 4))
    agree("Pad", {}, [x, ints(1, 2, 0, 3), np.array(1.5, np.float32), ints(0, -1)], opset=18)
    agree("Pad", {}, [x, ints(1, 0, 2, 0, 1, 1), np.array(-2.0, np.float32)], const=(1,), opset=18)  # runtime value
    agree("Pad", {"mode": "reflect"}, [x, ints(1, 1, 0, 0, 2, 2), None, None], opset=18)
    agree("Pad", {"pads": [0, 1, 0, 0, 2, 1], "value": 3.0}, [x], opset=10)
    agree("Pad", {}, [_data((2, 3), np.bool_), ints(1, 1, 1, 1), np.array(True)], opset=18)


def test_pad_reflect_at_its_limit():
    x = _data((3, 5))
    agree("Pad", {"mode": "reflect"}, [x, ints(2, 4, 2, 4)], opset=19)     # dim - 1 on each side
    with pytest.raises(ModelFormatError, match="reflect padding of 3 on axis 0"):
        run_op("Pad", {"mode": "reflect"}, [x, ints(3, 0, 0, 0)])
    with pytest.raises(ModelFormatError, match="reflect padding of 4 on axis 1 .* has 4 after cropping"):
        run_op("Pad", {"mode": "reflect"}, [x, ints(0, -1, 0, 4)])
    agree("Pad", {"mode": "wrap"}, [x, ints(7, 11, 0, -3)], opset=19)     # wrap: any number of times
    with pytest.raises(ModelFormatError, match="to nothing"):
        run_op("Pad", {}, [x, ints(-2, 0, -1, 0)])
    with pytest.raises(ModelFormatError, match="6 pads for 2 axes"):
        run_op("Pad", {}, [x, ints(1, 1, 1, 1, 1, 1), None, ints(0, 1)])


def test_constant_of_shape_and_range():
    for value in [None, np.array([2.5], np.float32), np.array([7], np.int64), np.array([True])]:
        attrs = {} if value is None else {"value": value}
        ort_attrs = {} if value is None else {"value": numpy_helper.from_array(value)}
        agree("ConstantOfShape", attrs, [ints(2, 3)], ort_attrs=ort_attrs)
    agree("ConstantOfShape", {}, [np.zeros(0, np.int64)])  # a scalar
    with pytest.raises(ModelFormatError, match="MAX_PARAMETERS"):
        run_op("ConstantOfShape", {}, [ints(1 << 30, 4)])
    with pytest.raises(ModelFormatError, match="negative"):
        run_op("ConstantOfShape", {}, [ints(3, -1)])
    for start, limit, delta in [(0, 10, 3), (10, -3, -4), (5, 6, 1)]:
        agree("Range", {}, [np.array(start), np.array(limit), np.array(delta)])
    for start, limit, delta in [(0.5, 3.0, 0.25), (1.0, -2.0, -0.7), (-1e3, 1e3, 37.5)]:
        args = [np.array(v, np.float32) for v in (start, limit, delta)]
        ours = run_op("Range", {}, args)[0]
        ref = reference_op("Range", {}, args)[0]
        ort = ort_op("Range", {}, args, const=(0, 1, 2))[0]
        scale = max(1.0, np.abs(ref).max())
        assert ours.shape == ref.shape == ort.shape
        assert np.abs(ours - ref).max() <= ATOL * scale and np.abs(ours - ort).max() <= ATOL * scale
    with pytest.raises(ModelFormatError, match="delta is 0"):
        run_op("Range", {}, [np.array(0), np.array(4), np.array(0)])
    with pytest.raises(ModelFormatError, match="MAX_PARAMETERS"):
        run_op("Range", {}, [np.array(0), np.array(1 << 40), np.array(1)])
    assert run_op("Range", {}, [np.array(3), np.array(1), np.array(1)])[0].shape == (0,)
    with pytest.raises(UnsupportedModelError, match="limit is computed"):
        run_op("Range", {}, [np.array(3), np.array(1), np.array(1)], const=(0, 2))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_back(mode):
    x = _data((2, 8, 3, 2))
    agree("DepthToSpace", {"blocksize": 2, "mode": mode}, [x])
    agree("SpaceToDepth", {"blocksize": 2}, [_data((1, 3, 4, 6))])
    agree("SpaceToDepth", {"blocksize": 3}, [_data((2, 2, 3, 6), np.int64)], ort=False)  # float only in ort
    with pytest.raises(ModelFormatError, match="multiple of blocksize"):
        run_op("DepthToSpace", {"blocksize": 3}, [x])


def test_every_op_has_a_reference_and_a_time_rule():
    from grurt.reference_ops import shape as references
    names = [name for name, op in REGISTRY.items() if op.run.__module__ == "grurt.ops.shape"
             or getattr(op.prepare, "__module__", None) == "grurt.ops.shape"]
    assert sorted(names) == sorted(references.REFERENCE)
    for name in names:
        assert REGISTRY[name].time is not None or REGISTRY[name].time_of is not None, name


def test_time_rules():
    def rule(op, attrs, shapes, time_axis, consts=()):
        values = [Value(s, np.dtype(np.float32)) for s in shapes]
        for i, c in consts:
            values[i] = Value(c.shape, c.dtype, c)
        attrs = check_attributes(REGISTRY[op], attrs, op)
        return time_rule(REGISTRY[op], attrs, values, time_axis)

    assert rule("Transpose", {"perm": [0, 2, 1]}, [(1, 5, 3)], 0) == "step"
    assert rule("Transpose", {"perm": [0, 2, 1]}, [(1, 5, 3)], 1) == "sequence"
    assert rule("Reshape", {}, [(2, 5, 3, 4), (4,)], 1, [(1, ints(2, 5, 12))]) == "step"
    assert rule("Reshape", {}, [(2, 5, 3, 4), (4,)], 1, [(1, ints(10, 12))]) == "sequence"
    assert rule("Concat", {"axis": 2}, [(1, 5, 3), (1, 5, 2)], 1) == "step"
    assert rule("Concat", {"axis": 1}, [(1, 5, 3), (1, 4, 3)], 1) == "sequence"
    pad = [(1, 5, 3), (6,)]
    assert rule("Pad", {}, pad, 1, [(1, ints(0, 2, 0, 0, 0, 0))]) == "causal"
    assert rule("Pad", {}, pad, 1, [(1, ints(0, 0, 0, 0, 1, 0))]) == "sequence"
    assert rule("Pad", {}, pad, 1, [(1, ints(0, 0, 1, 0, 0, 1))]) == "step"
    assert rule("Pad", {"mode": "reflect"}, pad, 1, [(1, ints(0, 2, 0, 0, 0, 0))]) == "sequence"
    assert rule("Slice", {}, [(1, 5, 3), (1,), (1,), (1,)], 1,
                [(1, ints(0)), (2, ints(INT64_MAX)), (3, ints(1))]) == "step"
    assert rule("Slice", {}, [(1, 5, 3), (1,), (1,), (1,)], 1,
                [(1, ints(1)), (2, ints(INT64_MAX)), (3, ints(1))]) == "sequence"
    assert rule("Gather", {"axis": 2}, [(1, 5, 3), (2,)], 1) == "step"
    assert rule("Gather", {"axis": 0}, [(1, 5, 3), ()], 1) == "sequence"
