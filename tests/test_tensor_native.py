"""The native executor (grurt.tensor_native): runs of a plan's steps as one NativeProgram, without the GIL.

Every plan is made twice from the same graph and signature, with the native executor off (the Python steps: the
oracle of exactness) and on; the outputs must be the same bits (``np.array_equal``), and within ATOL
(tests/tolerances.py) of the float64 reference (``run_tensor_graph``) or PyTorch. Graphs: W9, W10 and W10s20
(bench/workloads_graph.py, W10 over hops with its states carried), hypothesis-drawn graphs of the ops that have a
native form (views, copies of any stride, broadcasting arithmetic, activations) broken into several runs by ops
that have none, and small graphs of each kernel's form (Conv, ConvTranspose, a causal conv on its history,
grouped linears, packed Gemms, GRU in both layouts, grurt.Chain); streams; two threads running one plan."""
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import grurt
from grurt import _kernels, tensor_native
from grurt.ops import REGISTRY, Value
from grurt.reference import run_tensor_graph
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_model import TensorModel
from grurt.tensor_plan import make_plan, signature
from test_chain_op import chain_graph, dense, gru
from test_tensor_stream import ConvStack
from tolerances import ATOL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import workloads_graph as wg  # noqa: E402

rng = np.random.default_rng(31)


def _f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def node(op, inputs, outputs, **attrs):
    return TensorNode(op, tuple(inputs), tuple(outputs), attrs, outputs[0])


def _plans(graph, inputs):
    """(the checked input arrays, the plan without native runs, the plan with them) of ``graph`` for ``inputs``."""
    arrays = TensorModel(graph)._inputs(inputs)
    before = tensor_native.ENABLED
    try:
        tensor_native.ENABLED = False
        python = make_plan(graph, signature(arrays))
        tensor_native.ENABLED = True
        native = make_plan(graph, signature(arrays))
    finally:
        tensor_native.ENABLED = before
    assert python.runs == python.steps
    return arrays, python, native


def _natives(plan):
    return [step for step in plan.runs if step[5].op == "native"]


def assert_same_bits(graph, inputs, runs=None, threads=1):
    """The plan's outputs with and without the native executor: the same bits, dtypes and shapes; ``runs``: how
    many native runs the plan must have. Returns the native outputs."""
    arrays, python, native = _plans(graph, inputs)
    if runs is not None:
        assert len(_natives(native)) == runs, native.describe()
    with grurt.ops.recurrent.call_threads(threads):
        expected, got = python.run(arrays), native.run(arrays)
    for a, b in zip(expected, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True), np.max(np.abs(a.astype(np.float64) - b))
        assert b.base is None and b.flags.writeable               # an array of the caller's own
    return got


def assert_near_reference(graph, inputs, got):
    """``got`` within ATOL of the float64 reference, times the largest magnitude of any tensor of the graph (a
    difference of large values carries their rounding); integers equal."""
    every = tuple(dict.fromkeys(graph.outputs + tuple(out for n in graph.nodes for out in n.outputs if out)))
    values = run_tensor_graph(TensorGraph(graph.inputs, graph.nodes, every, graph.constants), inputs)
    values = values if isinstance(values, tuple) else (values,)
    scale = max([1.0] + [float(np.max(np.abs(v))) for v in values if v.dtype.kind == "f" and v.size])
    for ours, want in zip(got, values):
        if ours.dtype == np.float32:
            assert np.max(np.abs(ours - want), initial=0.0) <= ATOL * scale
        else:
            assert np.array_equal(ours, want)


# ---- the workloads ----

@pytest.mark.parametrize("name", ["W9", "W10", "W10s20"])
def test_workloads_give_the_python_steps_bits_and_torchs_values(name):
    w = wg.get(name)
    graph = w.model.graph
    if name == "W9":
        got = assert_same_bits(graph, w.example[0])
        assert np.max(np.abs(got[0] - wg.torch_outputs(w, w.example)[0])) <= ATOL
        return
    names = list(wg.INPUT_NAMES)
    arrays, python, native = _plans(graph, dict(zip(names, w.example)))
    assert len(native.runs) == 1 if name == "W10" else len(_natives(native)) >= 2, native.describe()
    steppers = [wg.stepper(lambda a, plan=plan: plan.run(TensorModel(graph)._inputs(dict(zip(names, a)))))
                for plan in (python, native)]
    reference = wg.stepper(lambda a: wg.torch_outputs(w, a))
    for erb, spec in wg.hops(w.frames, 3):
        expected, got = (step(erb, spec) for step in steppers)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got))
        assert max(float(np.max(np.abs(g - t))) for g, t in zip(got, reference(erb, spec))) <= ATOL


def test_two_threads_split_the_kernels_and_give_the_same_bits():
    w = wg.get("W10s20")
    inputs = dict(zip(wg.INPUT_NAMES, w.example))
    assert_same_bits(w.model.graph, inputs, threads=2)


def test_two_threads_run_one_plan_at_once():
    """A plan is shared: each call has its own workspace and outputs."""
    w = wg.get("W10")
    model = TensorModel(w.model.graph)
    hops = [dict(zip(wg.INPUT_NAMES, (*hop, *wg.w10_zero_states()))) for hop in wg.hops(1, 6, seed=3)]
    expected = [model.run(hop) for hop in hops]
    assert _natives(model.plan(model._inputs(hops[0])))
    failures = []

    def worker(order):
        for _ in range(15):
            for k in order:
                got = model.run(hops[k], threads=1 + k % 2)
                if not all(np.array_equal(a, b) for a, b in zip(got, expected[k])):
                    failures.append(k)

    threads = [threading.Thread(target=worker, args=(order,)) for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 4, 2, 0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# ---- drawn graphs of the ops with a native form ----

_ACTS = ("Relu", "Sigmoid", "Tanh")
_BINARY = ("Add", "Sub", "Mul", "Div")


@st.composite
def graphs(draw):
    """x (float32, rank 1-4) and, sometimes, ids (int64): a chain of nodes, each on a tensor made before: views,
    Transpose, Slice (any steps, negative too), Concat, Split, Add/Sub/Mul/Div with broadcasting (against
    another tensor or a constant), activations, Softmax and LogSoftmax over any axis, and ops without a native form
    (Abs, ReduceSum, a Softmax over an axis whose rows are strided) that end a run. Outputs: the last tensor and some others (an input, a view of one, a constant's view)."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    tensors = {"x": (shape, np.float32)}
    inputs = [TensorInput("x", "float32", shape)]
    feed = {"x": _f32(*shape)}
    if draw(st.booleans()):
        ids_shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        inputs.append(TensorInput("ids", "int64", ids_shape))
        tensors["ids"] = (ids_shape, np.int64)
        feed["ids"] = rng.integers(-5, 5, ids_shape)
    nodes, constants = [], {}

    def new(shape, dtype):
        name = f"t{len(tensors)}"
        tensors[name] = (tuple(shape), dtype)
        return name

    def constant(value):
        name = f"c{len(constants)}"
        constants[name] = value
        return name

    for _ in range(draw(st.integers(1, 12))):
        name = draw(st.sampled_from(sorted(tensors)))
        shape, dtype = tensors[name]
        floats = dtype == np.float32
        kinds = ["view", "transpose", "slice", "concat", "split"] + (
            ["act", "binary", "binary", "other"] if floats else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "view":
            op = draw(st.sampled_from(["Reshape", "Flatten", "Unsqueeze", "Squeeze"]))
            if op == "Reshape":
                target = (-1,) if draw(st.booleans()) else (-1, shape[-1])
                out = new(np.empty(shape).reshape(target).shape, dtype)
                nodes.append(node("Reshape", [name, constant(np.array(target, np.int64))], [out]))
            elif op == "Flatten":
                axis = draw(st.integers(0, len(shape)))
                out = new((int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))), dtype)
                nodes.append(node("Flatten", [name], [out], axis=axis))
            elif op == "Unsqueeze" and len(shape) < 5:
                axis = draw(st.integers(0, len(shape)))
                out = new(shape[:axis] + (1,) + shape[axis:], dtype)
                nodes.append(node("Unsqueeze", [name, constant(np.array([axis], np.int64))], [out]))
            elif 1 in shape and len(shape) > 1:
                axis = shape.index(1)
                out = new(shape[:axis] + shape[axis + 1:], dtype)
                nodes.append(node("Squeeze", [name, constant(np.array([axis], np.int64))], [out]))
        elif kind == "transpose":
            perm = draw(st.permutations(range(len(shape))))
            out = new(tuple(shape[p] for p in perm), dtype)
            nodes.append(node("Transpose", [name], [out], perm=list(perm)))
        elif kind == "slice":
            axis = draw(st.integers(0, len(shape) - 1))
            dim = shape[axis]
            step = draw(st.sampled_from([1, 1, 2, -1, -2]))
            start, end = draw(st.integers(-dim - 1, dim + 1)), draw(st.integers(-dim - 1, dim + 1))
            args = [constant(np.array([v], np.int64)) for v in (start, end, axis, step)]
            values = [Value(shape, np.dtype(dtype))] + [Value((1,), np.dtype(np.int64), constants[a]) for a in args]
            (sliced, _), = REGISTRY["Slice"].infer({"starts": None, "ends": None, "axes": None}, values)
            if 0 in sliced:
                continue
            nodes.append(node("Slice", [name, *args], [new(sliced, dtype)]))
        elif kind == "concat":
            axis = draw(st.integers(0, len(shape) - 1))
            same = [n for n, (s, d) in tensors.items() if s == shape and d == dtype]
            other = draw(st.sampled_from(same))
            extra = shape[:axis] + (draw(st.integers(1, 3)),) + shape[axis + 1:]
            parts = [name, other, constant(_f32(*extra) if floats else rng.integers(-9, 9, extra))]
            parts = draw(st.permutations(parts))
            out = new(shape[:axis] + (2 * shape[axis] + extra[axis],) + shape[axis + 1:], dtype)
            nodes.append(node("Concat", parts, [out], axis=axis))
        elif kind == "split":
            axes = [a for a, d in enumerate(shape) if d >= 2]
            if not axes:
                continue
            axis = draw(st.sampled_from(axes))
            first = draw(st.integers(1, shape[axis] - 1))
            outs = [new(shape[:axis] + (n,) + shape[axis + 1:], dtype) for n in (first, shape[axis] - first)]
            nodes.append(node("Split", [name, constant(np.array([first, shape[axis] - first], np.int64))], outs,
                              axis=axis))
        elif kind == "act":
            op = draw(st.sampled_from(_ACTS))
            nodes.append(node(op, [name], [new(shape, dtype)]))
        elif kind == "binary":
            op = draw(st.sampled_from(_BINARY))
            same = [n for n, (s, d) in tensors.items() if s == shape and d == dtype and n != name]
            if op != "Div" and same and draw(st.booleans()):
                pair = draw(st.permutations([name, draw(st.sampled_from(same))]))
                out_shape = shape
            else:                   # a constant broadcast against it (dims of 1, fewer dims or one more)
                keep = draw(st.integers(0, len(shape)))
                small = tuple(1 if draw(st.booleans()) else d for d in shape[len(shape) - keep:])
                value = (rng.uniform(0.5, 2.0, small) * rng.choice([-1, 1], small)).astype(np.float32)
                if keep == len(shape) < 4 and draw(st.booleans()):
                    value = np.stack([value, -value])
                out_shape = np.broadcast_shapes(shape, value.shape)
                pair = [name, constant(value)]
                pair = pair if op == "Div" or draw(st.booleans()) else pair[::-1]
            nodes.append(node(op, pair, [new(out_shape, dtype)]))
        else:
            op = draw(st.sampled_from(["Abs", "Softmax", "LogSoftmax", "ReduceSum"]))
            if op == "ReduceSum":
                out = new(shape[:-1] + (1,), dtype)
                nodes.append(node(op, [name, constant(np.array([-1], np.int64))], [out]))
            elif op == "Abs":
                nodes.append(node(op, [name], [new(shape, dtype)]))
            else:                   # native over contiguous rows (only dims of 1 after the axis), numpy's otherwise
                axis = draw(st.integers(-len(shape), len(shape) - 1))
                nodes.append(node(op, [name], [new(shape, dtype)], axis=axis))
    if not nodes:
        nodes.append(node("Transpose", ["x"], [new(shape[::-1], np.float32)]))
    made = [out for n in nodes for out in n.outputs]
    outputs = [made[-1]] + draw(st.lists(st.sampled_from(made + ["x"]), max_size=3, unique=True))
    return TensorGraph(inputs, nodes, tuple(dict.fromkeys(outputs)), constants), feed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_drawn_graphs_give_the_python_steps_bits(case):
    graph, feed = case
    inputs = feed if len(feed) > 1 else feed["x"]
    got = assert_same_bits(graph, inputs)
    assert_near_reference(graph, inputs, got)


def test_runs_end_at_steps_without_a_native_form():
    x = _f32(2, 3, 4)
    graph = TensorGraph([TensorInput("x", "float32", x.shape)],
                        [node("Transpose", ["x"], ["a"], perm=[2, 0, 1]), node("Relu", ["a"], ["b"]),
                         node("Exp", ["b"], ["c"]),
                         node("Slice", ["c", "s", "e", "ax"], ["d"]), node("Mul", ["d", "k"], ["f"]),
                         node("ReduceSum", ["f", "ax"], ["g"]), node("Sigmoid", ["g"], ["h"])],
                        ["h", "b"], {"s": np.array([1], np.int64), "e": np.array([3], np.int64),
                                     "ax": np.array([0], np.int64), "k": _f32(1, 1, 3)})
    _, _, native = _plans(graph, x)
    assert [step[5].op for step in native.runs] == ["native", "Exp", "native", "ReduceSum", "Sigmoid"]
    described = native.describe()
    assert "  native run of 2 steps:\n    a: a = Transpose(x; perm=(2, 0, 1))\n    b: b = Relu(a)\n  c:" in described
    assert_near_reference(graph, x, assert_same_bits(graph, x))


def test_outputs_that_are_views_of_inputs_constants_and_each_other_are_arrays_of_their_own():
    x = _f32(2, 6)
    graph = TensorGraph([TensorInput("x", "float32", x.shape)],
                        [node("Reshape", ["x", "shape"], ["v"]), node("Transpose", ["v"], ["t"], perm=[0, 2, 1]),
                         node("Reshape", ["k", "flat"], ["kv"]), node("Add", ["t", "kv"], ["s"]),
                         node("Reshape", ["s", "flat"], ["sv"]), node("Relu", ["s"], ["r"])],
                        ["v", "kv", "sv", "r", "x"], {"shape": np.array([2, 1, 6], np.int64),
                                                      "flat": np.array([-1], np.int64), "k": _f32(1, 1, 6, 2)})
    model = TensorModel(graph)
    got = model.run(x)
    assert all(g.base is None and g.flags.writeable for g in got)
    assert_near_reference(graph, x, got)
    assert_same_bits(graph, x)
    got[0][...] = 7                         # nothing the caller holds is the model's or another output's
    assert np.array_equal(model.run(x)[0], x.reshape(2, 1, 6)) and not np.shares_memory(got[2], got[3])


# ---- each kernel's form ----

def test_convolutions_grouped_linears_and_packed_gemms():
    x = _f32(2, 3, 5, 16)
    graph = TensorGraph(
        [TensorInput("x", "float32", x.shape)],
        [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[0, 1, 0, 1], strides=[1, 2]), node("Relu", ["c1"], ["r1"]),
         node("Conv", ["r1", "dw"], ["c2"], group=4, pads=[0, 1, 0, 1]), node("Conv", ["c2", "pw"], ["c3"]),
         node("ConvTranspose", ["c3", "tw"], ["up"], group=6, strides=[1, 2], kernel_shape=[1, 2]),
         node("Sigmoid", ["up"], ["s"]), node("Transpose", ["s"], ["st"], perm=[0, 2, 1, 3]),
         node("Reshape", ["st", "groups"], ["g"]), node("Einsum", ["g", "gw"], ["e"], equation="btgi,gih->btgh"),
         node("Tanh", ["e"], ["et"]), node("Reshape", ["et", "rows"], ["flat"]),
         node("MatMul", ["flat", "lw"], ["m"]), node("Add", ["m", "lb"], ["lin"]), node("Sigmoid", ["lin"], ["y"])],
        ["y", "c3"],
        {"w1": _f32(4, 3, 1, 3, scale=0.3), "b1": _f32(4), "dw": _f32(4, 1, 1, 3), "pw": _f32(6, 4, 1, 1),
         "tw": _f32(6, 1, 1, 2), "groups": np.array([2, 5, 2, 48], np.int64), "gw": _f32(2, 48, 20, scale=0.2),
         "rows": np.array([10, 40], np.int64), "lw": _f32(40, 40, scale=0.2), "lb": _f32(40)})
    got = assert_same_bits(graph, x, runs=1)
    ops = {step[5].op for step in _plans(graph, x)[2].steps}
    assert {"Conv+Relu", "ConvTranspose+Sigmoid", "Einsum grouped+Tanh", "Gemm packed+Sigmoid"} <= ops, ops
    assert_near_reference(graph, x, got)


def test_a_causal_conv_on_its_history():
    """Concat(history, frames) read by a Conv and by the Slice that is the next history (Concat+Conv, Concat+Slice)."""
    hist, x = _f32(1, 4, 2, 8), _f32(1, 4, 3, 8)
    graph = TensorGraph([TensorInput("hist", "float32", hist.shape), TensorInput("x", "float32", x.shape)],
                        [node("Concat", ["hist", "x"], ["full"], axis=2), node("Conv", ["full", "w"], ["c"]),
                         node("Relu", ["c"], ["y"]), node("Slice", ["full", "s", "e", "ax"], ["next"])],
                        ["y", "next"], {"w": _f32(5, 4, 3, 1), "s": np.array([3], np.int64),
                                        "e": np.array([5], np.int64), "ax": np.array([2], np.int64)})
    inputs = {"hist": hist, "x": x}
    ops = [step[5].op for step in _plans(graph, inputs)[2].steps]
    assert ops == ["Concat+Conv+Relu", "Concat+Slice"], ops
    assert_near_reference(graph, inputs, assert_same_bits(graph, inputs, runs=1))


@pytest.mark.parametrize("layout, direction, batch, steps, h0, outputs", [
    (0, "forward", 1, 1, True, ("y", "hn")), (0, "bidirectional", 3, 4, True, ("y", "hn")),
    (1, "forward", 3, 4, True, ("y", "hn")), (1, "bidirectional", 2, 3, True, ("y", "")),
    (0, "reverse", 2, 5, False, ("", "hn")), (1, "bidirectional", 1, 2, False, ("y", "hn"))])
def test_gru_layouts_states_and_outputs(layout, direction, batch, steps, h0, outputs):
    D, H, I = 2 if direction == "bidirectional" else 1, 5, 3
    x = _f32(*((steps, batch, I) if layout == 0 else (batch, steps, I)))
    h = _f32(*((D, batch, H) if layout == 0 else (batch, D, H)))
    inputs = [TensorInput("x", "float32", x.shape)] + ([TensorInput("h", "float32", h.shape)] if h0 else [])
    read = [name for name in outputs if name]
    graph = TensorGraph(inputs, [
        node("GRU", ["x", "W", "R", "B", "", "h" if h0 else ""], list(outputs), hidden_size=H, direction=direction,
             layout=layout, linear_before_reset=1 if batch == 3 else 0),
        *[node("Relu", [name], [name + "_r"]) for name in read]], [name + "_r" for name in read],
        {"W": _f32(D, 3 * H, I, scale=0.5), "R": _f32(D, 3 * H, H, scale=0.5), "B": _f32(D, 6 * H, scale=0.2)})
    feed = {"x": x, "h": h} if h0 else x
    assert_near_reference(graph, feed, assert_same_bits(graph, feed, runs=1))


def test_chains_with_states_learned_and_given():
    layers = [gru(4, 6), dense(6, 5, "tanh"), gru(5, 3, direction="bidirectional", learned=True)]
    base = chain_graph(layers, states=1)
    x, h = _f32(2, 4, 4, scale=0.5), _f32(1, 2, 6, scale=0.5)
    graph = TensorGraph(base.inputs, base.nodes + (node("Transpose", ["y"], ["yt"], perm=[1, 0, 2]),
                                                   node("Add", ["hn1", "k"], ["hs"])),
                        ("yt", "hn0", "hs"), {"k": _f32(1, 1, 3)})
    feed = {"x": x, "h0": h}
    assert_near_reference(graph, feed, assert_same_bits(graph, feed, runs=1))


# ---- streams, the switch, the input checks a call skips ----

def test_streams_give_the_python_steps_bits():
    torch.manual_seed(0)
    module = ConvStack().eval()
    x = torch.randn(2, 1, 7, 8)
    model = grurt.from_torch(module, x)
    x = x.numpy()
    results = []
    for enabled in (False, True):
        tensor_native.ENABLED = enabled
        try:
            stream = TensorModel(model.graph).stream(batch=2, time_axes={"x": 2})
            results.append([stream.step(x[:, :, t]) for t in range(x.shape[2])] + [stream.run(x[:, :, :3])])
            assert any(step[5].op == "native" for step in stream._stream.step_plan.program) == enabled
        finally:
            tensor_native.ENABLED = True
    for python, native in zip(*results):
        assert all(np.array_equal(a, b) for a, b in zip(python, native))
    y_ref = run_tensor_graph(model.graph, x)[0]
    assert max(float(np.max(np.abs(step[0] - y_ref[:, t]))) for t, step in enumerate(results[1][:-1])) <= ATOL


def test_the_environment_switch():
    code = "import grurt.tensor_native as n; print(n.ENABLED)"
    for value, expected in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"GRURT_NATIVE": value, "PYTHONPATH": str(Path(grurt.__file__).parent.parent)})
        assert out.stdout.strip() == expected, out.stderr


def test_a_program_refuses_inputs_of_another_shape():
    x = _f32(3, 4)
    graph = TensorGraph([TensorInput("x", "float32", x.shape)],
                        [node("Relu", ["x"], ["a"]), node("Transpose", ["a"], ["b"])], ["b"])
    _, _, native = _plans(graph, x)
    (_, program, *_), = native.runs
    with pytest.raises(AssertionError, match="input 0 is float32 \\(4, 3\\)"):
        program.run([x.T.copy()], 1)
    assert isinstance(program, _kernels.NativeProgram)
    strided = _f32(3, 8)[:, ::2]                     # not contiguous: copied first
    assert np.array_equal(program.run([strided], 1)[0], np.maximum(strided, 0).T)


def test_calls_of_the_same_signature_skip_the_checks_and_others_do_not():
    x = _f32(2, 3)
    graph = TensorGraph([TensorInput("x", "float32", ("b", 3)), TensorInput("y", "float32", ("b", 3))],
                        [node("Add", ["x", "y"], ["s"]), node("Relu", ["s"], ["r"])], ["r"])
    model = TensorModel(graph)
    before = x.copy()
    first = model.run({"x": x, "y": x})
    assert model.plan(model._inputs([x, x])).whole is not None           # one C call from the inputs to the outputs
    assert np.array_equal(model.run([x, x]), first) and np.array_equal(model.run((x, x)), first)
    assert np.array_equal(model.run([x.astype(np.float64), x]), first)          # converted by the full checks
    assert np.array_equal(model.run([np.asfortranarray(x), x]), first)
    with pytest.raises(grurt.errors.InputError, match="unknown input 'z'"):
        model.run({"x": x, "z": x})
    with pytest.raises(grurt.errors.InputError, match="one size per dim parameter"):
        model.run([x, _f32(4, 3)])
    again = model.run([x, x])
    assert np.array_equal(again, first) and again is not first and np.array_equal(x, before)
    info = model.cache_info()
    assert (info.hits, info.misses) == (6, 1)
