"""The elementwise ops (grurt.ops.elementwise) against grurt's float64 reference and onnxruntime.

Float outputs are held to ATOL (tests/tolerances.py) against both oracles, plus RTOL relative to
the value where values grow large (Exp, Pow); integer and bool outputs are exact
(np.array_equal). Shapes and broadcast patterns are drawn by hypothesis (rank 0 to 4, sides 1 to
4, one operand of lower rank); NaN and infinities are checked where onnxruntime is consistent
(docs/ops.md lists where it is not).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from grurt.errors import InputError, ModelFormatError, UnsupportedModelError
from grurt.ops import REGISTRY, time_rule
from op_testing import ort_op, reference_op, run_op
from tolerances import ATOL

#: relative tolerance where values grow large (Exp, Pow, ...): about 8 float32 ulps of the value
RTOL = 1e-6
#: the opset the one-node models are stamped with (its ops have their newest semantics there)
OPSET = 21

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/inf inputs, as numpy warns of them

PROFILE = settings(derandomize=True, deadline=None, database=None, print_blob=True, max_examples=25)
FEW = settings(PROFILE, max_examples=10)


def check(op, attrs, inputs, *, opset=OPSET, const=None, n_outputs=1, rtol=0.0, ort=True):
    """grurt vs its reference vs onnxruntime; grurt's outputs are arrays and its inputs untouched.
    ``const``: the inputs that are constants (initializers), default the op's const_inputs."""
    const = REGISTRY[op].const_inputs if const is None else const
    before = [None if a is None else np.array(a, copy=True) for a in inputs]
    ours = run_op(op, attrs, inputs, const=const)
    for a, b in zip(inputs, before):
        assert a is None or np.array_equal(np.asarray(a), b, equal_nan=True), f"{op} wrote into an input"
    oracles = [reference_op(op, attrs, inputs)]
    if ort:
        oracles.append(ort_op(op, attrs, inputs, n_outputs=n_outputs, opset=opset, const=const))
    for expected in oracles:
        assert len(expected) == len(ours)
        for got, want in zip(ours, expected):
            assert isinstance(got, np.ndarray) and got.shape == np.shape(want), (op, got.shape, np.shape(want))
            if got.dtype.kind == "f":
                np.testing.assert_allclose(got, want, rtol=rtol, atol=ATOL, equal_nan=True, err_msg=op)
            else:
                assert np.array_equal(got, np.asarray(want).astype(got.dtype)), (op, got, want)
    return ours


def floats(seed, shape, low=-3.0, high=3.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def ints(seed, shape, low=-20, high=20):
    return np.random.default_rng(seed).integers(low, high + 1, shape, dtype=np.int64)


def away_from_zero(seed, shape, low=0.5, high=3.0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(low, high, shape) * rng.choice([-1, 1], shape)).astype(np.float32)


pairs = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=1, max_side=4)
triples = mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=3)
shapes = st.lists(st.integers(1, 5), min_size=0, max_size=4).map(tuple)
seeds = st.integers(0, 2**32 - 1)


# ---- broadcasting arithmetic and comparisons ----

@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater",
                                "LessOrEqual", "GreaterOrEqual"])
@PROFILE
@given(shapes=pairs, seed=seeds)
def test_float_binary_broadcasting(op, shapes, seed):
    a, b = shapes.input_shapes
    x = floats(seed, a)
    y = away_from_zero(seed + 1, b) if op == "Div" else floats(seed + 1, b)
    if op.startswith("Equal") or op.endswith("OrEqual"):
        y = np.broadcast_to(x[(0,) * x.ndim] if x.size else 0, b).astype(np.float32) if seed % 2 else y
    check(op, {}, [x, y])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual",
                                "GreaterOrEqual", "Mod", "Pow"])
@PROFILE
@given(shapes=pairs, seed=seeds, fmod=st.sampled_from([0, 1]))
def test_integer_binary_exact(op, shapes, seed, fmod):
    """int64 arithmetic (the graph's shape arithmetic): Div truncates toward zero, Mod takes the
    divisor's sign (fmod=0) or the dividend's (fmod=1), Pow is exact."""
    a, b = shapes.input_shapes
    x, y = ints(seed, a), ints(seed + 1, b)
    attrs = {"fmod": fmod} if op == "Mod" else {}
    if op in ("Div", "Mod"):
        y[y == 0] = 7
    if op == "Pow":
        x, y = ints(seed, a, -6, 6), ints(seed + 1, b, 0, 5)
    out = check(op, attrs, [x, y])[0]
    assert out.dtype == (np.bool_ if op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
                         else np.int64)


def test_integer_division_and_modulo_signs():
    a, b = np.array([7, -7, 7, -7, 0, 6]), np.array([2, 2, -2, -2, 5, -3])
    assert np.array_equal(run_op("Div", {}, [a, b])[0], [3, -3, -3, 3, 0, -2])
    assert np.array_equal(run_op("Mod", {}, [a, b])[0], [1, 1, -1, -1, 0, 0])
    assert np.array_equal(run_op("Mod", {"fmod": 1}, [a, b])[0], [1, -1, 1, -1, 0, 0])
    big = np.array([2**62, -(2**62) - 1])
    assert np.array_equal(run_op("Div", {}, [big, np.array([3])])[0], [1537228672809129301, -1537228672809129301])


def test_integer_pow_negative_exponents_and_float_exponents():
    """a**-n truncates toward zero (onnxruntime's double power, cast); 3**39 is exact (onnxruntime
    rounds it through a double, beyond 2**53)."""
    base, exponent = np.array([1, -1, -1, 2, -3, 3]), np.array([-4, -3, -2, -1, -2, 39])
    assert np.array_equal(run_op("Pow", {}, [base, exponent])[0], [1, -1, 1, 0, 0, 3**39])
    check("Pow", {}, [np.array([1, -1, -1, 2, -3, 4]), np.array([-4, -3, -2, -1, -2, 3])])
    check("Pow", {}, [np.array([2, 3, -2, 5]), np.array([0.5, 2.5, 3.0, -1.0], np.float32)])


@PROFILE
@given(shapes=pairs, seed=seeds)
def test_float_pow_and_mod(shapes, seed):
    a, b = shapes.input_shapes
    base, exponent = floats(seed, a, 0.1, 4.0), floats(seed + 1, b, -3.0, 3.0)
    check("Pow", {}, [base, exponent], rtol=RTOL)
    check("Pow", {}, [floats(seed, a), ints(seed + 1, b, -3, 3)], rtol=RTOL)  # an integer exponent
    check("Mod", {"fmod": 1}, [floats(seed, a, -9, 9), away_from_zero(seed + 1, b)])
    check("Mod", {"fmod": 0}, [floats(seed, a, -9, 9), away_from_zero(seed + 1, b)], opset=28)


def test_pow_by_a_constant_two():
    x = floats(3, (4, 5), -1e3, 1e3)
    check("Pow", {}, [x, np.array(2.0, np.float32)], const=(1,), rtol=RTOL)
    check("Pow", {}, [x, np.array([2], np.int64)], const=(1,), rtol=RTOL)
    # a constant exponent that widens the output is not the square of x alone
    check("Pow", {}, [x[0], np.full((3, 1), 2.0, np.float32)], const=(1,), rtol=RTOL)


@pytest.mark.parametrize("op", ["Sum", "Max", "Min", "Mean"])
@FEW
@given(shapes=triples, seed=seeds)
def test_variadic(op, shapes, seed):
    inputs = [floats(seed + i, s) for i, s in enumerate(shapes.input_shapes)]
    check(op, {}, inputs)
    check(op, {}, inputs[:1])


@pytest.mark.parametrize("op", ["And", "Or", "Xor", "Equal"])
@FEW
@given(shapes=pairs, seed=seeds)
def test_logic(op, shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = shapes.input_shapes
    check(op, {}, [rng.random(a) < 0.5, rng.random(b) < 0.5])


@FEW
@given(shapes=triples, seed=seeds)
def test_where_and_not(shapes, seed):
    c, a, b = shapes.input_shapes
    condition = np.random.default_rng(seed).random(c) < 0.5
    check("Where", {}, [condition, floats(seed, a), floats(seed + 1, b)])
    check("Where", {}, [condition, ints(seed, a), ints(seed + 1, b)])
    check("Not", {}, [condition])


def test_nan_propagation_matches_onnxruntime():
    nan, inf = np.float32("nan"), np.float32("inf")
    x = np.array([nan, 1, -2, 0, nan, inf, -inf, 3], np.float32)
    y = np.array([0, nan, 3, -0.0, nan, 1, 2, -inf], np.float32)
    for op in ("Max", "Min", "Add", "Mul", "Div", "Sum", "Mean", "Less", "Equal", "GreaterOrEqual"):
        check(op, {}, [x, y])
    for op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Abs", "Neg", "Sign", "Floor", "Round", "Exp", "Softsign",
               "ThresholdedRelu", "Elu", "Selu", "IsNaN", "IsInf", "Sqrt", "Log", "Reciprocal"):
        check(op, {}, [x])
    check("Clip", {}, [x, np.float32(-1), np.float32(2)])


# ---- unary ----

UNARY = {  # op: (attributes to draw from, value range)
    "Relu": ([{}], 3), "Tanh": ([{}], 5), "Sigmoid": ([{}], 20), "Exp": ([{}], 10), "Erf": ([{}], 3),
    "Softplus": ([{}], 30), "Softsign": ([{}], 5), "Mish": ([{}], 10), "Abs": ([{}], 3), "Neg": ([{}], 3),
    "Floor": ([{}], 3), "Ceil": ([{}], 3), "Round": ([{}], 3), "Sign": ([{}], 3), "Sin": ([{}], 6),
    "Cos": ([{}], 6), "HardSwish": ([{}], 5), "Identity": ([{}], 3), "IsNaN": ([{}], 3),
    "LeakyRelu": ([{}, {"alpha": 0.3}, {"alpha": 1.5}, {"alpha": -0.5}], 3),
    "Elu": ([{}, {"alpha": 0.5}, {"alpha": 2.0}], 4),
    "Selu": ([{}, {"alpha": 1.2, "gamma": 0.9}], 4),
    "Celu": ([{}, {"alpha": 0.7}, {"alpha": 3.0}], 4),
    "Gelu": ([{}, {"approximate": "tanh"}, {"approximate": "none"}], 5),
    "HardSigmoid": ([{}, {"alpha": 0.5, "beta": 0.1}], 5),
    "ThresholdedRelu": ([{}, {"alpha": 0.5}, {"alpha": -1.0}], 3),
}


@pytest.mark.parametrize("op", sorted(UNARY))
@FEW
@given(shape=shapes, seed=seeds, pick=st.integers(0, 3))
def test_unary_float(op, shape, seed, pick):
    choices, scale = UNARY[op]
    x = floats(seed, shape, -scale, scale)
    if op in ("Round", "Floor", "Ceil") and x.size:
        x.flat[0] = 0.5 * (seed % 7 - 3)  # halves: Round goes to even
    check(op, choices[pick % len(choices)], [x], rtol=RTOL if op == "Exp" else 0.0)


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
@FEW
@given(shape=shapes, seed=seeds)
def test_unary_positive(op, shape, seed):
    check(op, {}, [floats(seed, shape, 0.05, 20.0)])


def test_unary_extremes():
    x = np.array([-1e4, -100, -30, -1e-20, 0, 1e-20, 30, 100, 1e4, 3e38], np.float32)
    for op in ("Sigmoid", "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Elu", "Selu", "Celu", "HardSwish",
               "HardSigmoid", "Erf", "LeakyRelu"):
        check(op, {}, [x], rtol=RTOL)
    assert run_op("Sigmoid", {}, [np.array([-80.0], np.float32)])[0][0] > 0  # 1.8e-35: no 1 / (1 + inf)
    check("IsInf", {"detect_negative": 0}, [np.array([np.inf, -np.inf, 1, np.nan], np.float32)])
    check("IsInf", {"detect_positive": 0}, [np.array([np.inf, -np.inf, 1, np.nan], np.float32)])
    check("IsInf", {"detect_positive": 0, "detect_negative": 0}, [np.array([np.inf, -np.inf], np.float32)])


@pytest.mark.parametrize("op", ["Abs", "Neg", "Sign", "Identity"])
def test_unary_integer(op):
    check(op, {}, [np.array([[-3, 0, 7], [2**62, -(2**62), 1]])])


def test_relu_integer_against_the_reference():
    """Relu of int64 is ONNX (opset 14) but not onnxruntime: checked against the reference only."""
    check("Relu", {}, [np.array([-3, 0, 7, -(2**63)])], ort=False)


@FEW
@given(shapes=pairs, seed=seeds)
def test_prelu_slope_broadcasts_to_x(shapes, seed):
    a, b = shapes.input_shapes
    x_shape = np.broadcast_shapes(a, b)
    check("PRelu", {}, [floats(seed, x_shape), floats(seed + 1, b)])


# ---- Clip ----

@FEW
@given(shape=shapes, seed=seeds, low=st.floats(-2, 1), width=st.floats(-0.5, 2), const=st.booleans())
def test_clip_inputs(shape, seed, low, width, const):
    """min and max as inputs, constant or not, either omitted; min > max gives max everywhere."""
    x = floats(seed, shape)
    lo, hi = np.array(low, np.float32), np.array(low + width, np.float32)
    for bounds in ([lo, hi], [lo], [None, hi], [lo.reshape(1), hi.reshape(1)]):
        check("Clip", {}, [x] + bounds, const=tuple(i + 1 for i, b in enumerate(bounds) if b is not None and const))
    check("Clip", {}, [ints(seed, shape), np.array(-3), np.array(int(seed % 9))])


def test_clip_attributes_of_opset_6():
    x = floats(0, (3, 4))
    check("Clip", {"min": -0.5, "max": 0.75}, [x], opset=6)
    check("Clip", {"max": 0.25}, [x], opset=6)


# ---- Cast ----

CAST_TARGETS = [1, 11, 10, 2, 3, 4, 5, 6, 7, 12, 13, 9]


@pytest.mark.parametrize("to", CAST_TARGETS)
def test_cast(to):
    """Every target from float, integer and bool; integers wrap to the target's width, floats
    round to float16's precision (kept float32); large integers round to float32 (RTOL)."""
    x = np.array([[0.0, -0.0, 1.5, -1.5, 2.9, -2.9], [255.7, 256.2, -129.9, 40000.0, 70000.0, 1e-3]], np.float32)
    check("Cast", {"to": to}, [x])
    check("Cast", {"to": to}, [np.array([0, 1, -1, 127, 128, 255, 256, -129, 65535, 2**31, -(2**31) - 1, 2**40 + 3])],
          rtol=RTOL)
    check("Cast", {"to": to}, [np.array([True, False])])


def test_cast_out_of_range_floats_give_int64_min_then_wrap():
    """What onnxruntime gives on x86 (C leaves it undefined); grurt gives it on every machine."""
    x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 9.3e18], np.float32)
    for to in (7, 3, 2):
        check("Cast", {"to": to}, [x])


def test_cast_to_bfloat16_rounds_to_nearest_even():
    """bfloat16 is not a numpy type: checked against the reference and a Cast-Cast onnxruntime model."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200),
                        [1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-9, 3.3895e38, 1e-39, np.inf, -np.inf, np.nan, 0.0]])
    x = x.astype(np.float32)
    ours = run_op("Cast", {"to": 16}, [x])[0]
    np.testing.assert_array_equal(ours, reference_op("Cast", {"to": 16}, [x])[0].astype(np.float32))
    nodes = [helper.make_node("Cast", ["x"], ["b"], to=16), helper.make_node("Cast", ["b"], ["y"], to=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [len(x)])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [len(x)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(ours, session.run(None, {"x": x})[0])


# ---- Dropout, Identity ----

def test_dropout_is_the_identity_with_an_all_true_mask():
    x = floats(1, (2, 3))
    check("Dropout", {}, [x], n_outputs=2)
    check("Dropout", {"seed": 3}, [x, np.array(0.5, np.float32), np.array(False)], n_outputs=2, const=(2,))
    with pytest.raises(UnsupportedModelError, match="training_mode"):
        run_op("Dropout", {}, [x, np.array(0.5, np.float32), np.array(True)])
    with pytest.raises(UnsupportedModelError, match="training_mode"):
        run_op("Dropout", {}, [x, None, np.array(False)], const=())


# ---- refusals, by name ----

def test_refusals_name_the_problem():
    f, i = np.ones((2, 3), np.float32), np.ones((2, 3), np.int64)
    with pytest.raises(ModelFormatError, match=r"Add: shapes \(2, 3\), \(4,\) do not broadcast"):
        run_op("Add", {}, [f, np.ones(4, np.float32)])
    with pytest.raises(ModelFormatError, match="Sum: shapes"):
        run_op("Sum", {}, [f, f, np.ones((3, 2), np.float32)])
    with pytest.raises(ModelFormatError, match=r"Mul: inputs of different dtypes \(float32, int64\)"):
        run_op("Mul", {}, [f, i])
    with pytest.raises(ModelFormatError, match="Add takes float or integer tensors, got bool"):
        run_op("Add", {}, [f > 0, f > 0])
    with pytest.raises(ModelFormatError, match="Mean takes float tensors, got int64"):
        run_op("Mean", {}, [i, i])
    with pytest.raises(ModelFormatError, match="Where takes bool tensors"):
        run_op("Where", {}, [f, f, f])
    with pytest.raises(ModelFormatError, match="Sigmoid takes float tensors"):
        run_op("Sigmoid", {}, [i])
    with pytest.raises(InputError, match="Div: integer division by zero"):
        run_op("Div", {}, [i, np.array([1, 0, 2])])
    with pytest.raises(InputError, match="Mod: integer modulo by zero"):
        run_op("Mod", {}, [i, np.array(0)])
    with pytest.raises(InputError, match="Pow: integer 0 to a negative power"):
        run_op("Pow", {}, [np.array([0, 2]), np.array(-1)])
    with pytest.raises(ModelFormatError, match=r"PRelu: the slope of shape \(3, 3\) does not broadcast to \(2, 3\)"):
        run_op("PRelu", {}, [f, np.ones((3, 3), np.float32)])
    with pytest.raises(ModelFormatError, match=r"Clip: min must be a scalar, got shape \(2,\)"):
        run_op("Clip", {}, [f, np.zeros(2, np.float32)])
    with pytest.raises(ModelFormatError, match="Clip: the attribute min .* the input min as well"):
        run_op("Clip", {"min": 0.0}, [f, np.float32(0)])
    with pytest.raises(ModelFormatError, match="attribute alpha of Celu: must not be 0"):
        run_op("Celu", {"alpha": 0.0}, [f])
    with pytest.raises(ModelFormatError, match="attribute approximate of Gelu: must be 'none' or 'tanh'"):
        run_op("Gelu", {"approximate": "erf"}, [f])
    with pytest.raises(ModelFormatError, match="attribute fmod of Mod: must be 0 or 1"):
        run_op("Mod", {"fmod": 2}, [f, f])
    with pytest.raises(ModelFormatError, match="attribute to of Cast: 99 is not an ONNX data type"):
        run_op("Cast", {"to": 99}, [f])
    with pytest.raises(UnsupportedModelError, match="Cast to string is not supported"):
        run_op("Cast", {"to": 8}, [f])
    with pytest.raises(ModelFormatError, match="attribute alpha of LeakyRelu must be a finite float"):
        run_op("LeakyRelu", {"alpha": math.inf}, [f])
    with pytest.raises(UnsupportedModelError, match="attribute beta=1 of Relu is not supported"):
        run_op("Relu", {"beta": 1}, [f])


def test_rank_zero_operands_give_arrays():
    s = np.array(2.5, np.float32)
    for op in ("Add", "Div", "Max", "Pow", "Less", "Where"):
        inputs = [s > 0, s, s] if op == "Where" else [s, s]
        assert type(run_op(op, {}, inputs)[0]) is np.ndarray
    for op in ("Relu", "Exp", "Sigmoid", "Gelu", "Elu", "Softplus", "Clip", "Cast"):
        out = run_op(op, {"to": 7} if op == "Cast" else {}, [s])[0]
        assert type(out) is np.ndarray and out.shape == ()


def test_elementwise_ops_act_step_by_step():
    ops = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Mod", "Where", "Equal", "Less", "Greater",
           "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Clip", "Cast", "Identity", "Dropout", "PRelu",
           "IsNaN", "IsInf"] + sorted(UNARY)
    for op in ops:
        assert REGISTRY[op].time == "step"
        assert time_rule(REGISTRY[op], {}, [], 1) == "step"
