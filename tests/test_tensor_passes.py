"""The plan rewrites of grurt.tensor_passes: a weighted sum as one matrix product, elementwise ops
in place. Each rewrite is checked to happen where it applies (the plan's description names it),
not to happen where it would be wrong (an input, a constant, a tensor another view still reads),
and every output against grurt's float64 reference (ATOL, tests/tolerances.py); an op run in place
against the same op run on its own with np.array_equal (the same calls, the same bits).
"""
import numpy as np
import pytest

from grurt.ops import REGISTRY
from grurt.reference import run_tensor_graph
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_model import TensorModel
from tolerances import ATOL

rng = np.random.default_rng(7)


def _f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def node(op, inputs, outputs, **attrs):
    return TensorNode(op, tuple(inputs), tuple(outputs), attrs, outputs[0])


def run_and_describe(graph, inputs):
    model = TensorModel(graph)
    outputs = model.run(inputs)
    return outputs, model.plan(model._inputs(inputs)).describe()


def assert_close(got, expected):
    as_tuple = (lambda v: v if isinstance(v, tuple) else (v,))
    for g, e in zip(as_tuple(got), as_tuple(expected)):
        assert g.shape == e.shape
        assert np.max(np.abs(g - e)) <= ATOL


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("swap", [False, True])
def test_weighted_sum_is_one_product(keepdims, swap):
    """(x * softmax(scores)).sum(1) as in attention pooling: x (N, T, C), w (N, T, 1), either order."""
    x, w = _f32(3, 50, 16), _f32(3, 50, 1)
    graph = TensorGraph([TensorInput("x", "float32", ("n", "t", 16)), TensorInput("w", "float32", ("n", "t", 1))],
                        [node("Mul", ["w", "x"] if swap else ["x", "w"], ["p"]),
                         node("ReduceSum", ["p", "axes"], ["y"], keepdims=keepdims)],
                        ["y"], {"axes": np.array([1], np.int64)})
    got, described = run_and_describe(graph, [x, w])
    assert "Mul+ReduceSum" in described and "= ReduceSum(" not in described
    assert got.shape == ((3, 1, 16) if keepdims else (3, 16))
    assert_close(got, run_tensor_graph(graph, [x, w]))


@pytest.mark.parametrize("case", ["product also an output", "another axis", "w broadcast on C"])
def test_weighted_sum_left_alone(case):
    x = _f32(2, 10, 8)
    w = _f32(2, 1, 8) if case == "w broadcast on C" else _f32(2, 10, 1)
    axes = [2] if case == "another axis" else [1]
    outputs = ["y", "p"] if case == "product also an output" else ["y"]
    graph = TensorGraph([TensorInput("x", "float32", x.shape), TensorInput("w", "float32", w.shape)],
                        [node("Mul", ["x", "w"], ["p"]), node("ReduceSum", ["p", "axes"], ["y"], keepdims=0)],
                        outputs, {"axes": np.array(axes, np.int64)})
    got, described = run_and_describe(graph, [x, w])
    assert "Mul+ReduceSum" not in described
    assert_close(got, run_tensor_graph(graph, [x, w]))


def test_elementwise_in_place_where_the_plan_owns_the_input():
    """MatMul -> Add (a bias per row and output: no linear step) -> Relu -> Reshape -> Sigmoid -> Tanh:
    each after the first writes into the array the MatMul made (through the Reshape's view), and gives
    the bits of the op on its own."""
    x, weight, bias = _f32(4, 6), _f32(6, 10), _f32(4, 10)
    graph = TensorGraph([TensorInput("x", "float32", ("n", 6))],
                        [node("MatMul", ["x", "W"], ["m"]), node("Add", ["m", "b"], ["a"]),
                         node("Relu", ["a"], ["r"]), node("Reshape", ["r", "shape"], ["v"]),
                         node("Sigmoid", ["v"], ["s"]), node("Tanh", ["s"], ["y"])],
                        ["y"], {"W": weight, "b": bias, "shape": np.array([-1, 5, 2], np.int64)})
    got, described = run_and_describe(graph, x)
    for op in ("Add", "Relu", "Sigmoid", "Tanh"):
        assert f"{op} in place(" in described
    expected = x @ weight
    for op, args in (("Add", [bias]), ("Relu", []), ("Sigmoid", []), ("Tanh", [])):
        if op == "Sigmoid":
            expected = expected.reshape(-1, 5, 2)
        expected = REGISTRY[op].run({}, [expected] + args)[0]
    assert np.array_equal(got, expected)
    assert_close(got, run_tensor_graph(graph, x))


def test_inputs_constants_and_shared_arrays_are_never_written():
    """Relu of an input, Add into a constant, and Relu of a MatMul's output that a Reshape's view still
    reads afterwards: none runs in place, the inputs and constants are unchanged."""
    x, weight, c = _f32(3, 4), _f32(4, 4), _f32(3, 4)
    graph = TensorGraph([TensorInput("x", "float32", (3, 4))],
                        [node("Relu", ["x"], ["rx"]), node("Add", ["rx", "c"], ["a"]),
                         node("MatMul", ["a", "W"], ["m"]), node("Reshape", ["m", "shape"], ["v"]),
                         node("Relu", ["m"], ["r"]), node("Add", ["r", "v2"], ["y"]),
                         node("Reshape", ["v", "back"], ["v2"])],
                        ["y", "v"], {"W": weight, "c": c, "shape": np.array([12], np.int64),
                                     "back": np.array([3, 4], np.int64)})
    x_before, c_before = x.copy(), graph.constants["c"].copy()
    got, described = run_and_describe(graph, x)
    assert "Relu in place(x)" not in described and "Relu in place(m)" not in described
    assert np.array_equal(x, x_before) and np.array_equal(graph.constants["c"], c_before)
    assert_close(got, run_tensor_graph(graph, x))
    again, _ = run_and_describe(graph, x)         # a second call on the same plan: nothing left over
    assert all(np.array_equal(a, b) for a, b in zip(got, again))


@pytest.mark.parametrize("groups, cin, frames", [(4, 4, 1), (2, 2, 20), (1, 3, 2)])
def test_separable_conv_is_one_conv(groups, cin, frames):
    """Conv (groups, (1, 3), frequency stride 2, bias) -> Conv 1x1 (bias) as one Conv of the combined
    weights, where that costs little more (DeepFilterNet's separable convs at a few frames)."""
    mid, m = 8, 6
    x = _f32(1, cin, frames, 16)
    graph = TensorGraph([TensorInput("x", "float32", x.shape)],
                        [node("Conv", ["x", "D", "bd"], ["c"], group=groups, pads=[0, 1, 0, 1], strides=[1, 2]),
                         node("Conv", ["c", "P", "bp"], ["y"])],
                        ["y"], {"D": _f32(mid, cin // groups, 1, 3), "bd": _f32(mid), "P": _f32(m, mid, 1, 1),
                                "bp": _f32(m)})
    got, described = run_and_describe(graph, x)
    assert described.startswith("1 steps")
    assert_close(got, run_tensor_graph(graph, x))


def test_separable_conv_left_alone_when_its_output_is_read_elsewhere():
    x = _f32(1, 4, 2, 16)
    graph = TensorGraph([TensorInput("x", "float32", x.shape)],
                        [node("Conv", ["x", "D"], ["c"], group=4, pads=[0, 1, 0, 1]), node("Conv", ["c", "P"], ["y"])],
                        ["y", "c"], {"D": _f32(4, 1, 1, 3), "P": _f32(6, 4, 1, 1)})
    got, described = run_and_describe(graph, x)
    assert described.startswith("2 steps")
    assert_close(got, run_tensor_graph(graph, x))
