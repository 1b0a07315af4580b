"""Running one registered op three ways: grurt's float32 implementation (through the registry,
as the planner runs it), grurt's float64 reference (:mod:`grurt.reference_ops`) and
onnxruntime on a one-node ONNX model."""
import numpy as np

from grurt.ops import REGISTRY, Value, check_attributes
from grurt import reference_ops


def _values(inputs, const_inputs):
    return [Value(tuple(a.shape), a.dtype, a if i in const_inputs else None) if a is not None
            else None for i, a in enumerate(inputs)]


def run_op(op_type, attrs, inputs, const=None):
    """grurt's float32 run of ``op_type``: float inputs cast to float32, integers to int64.
    ``const``: indices of the inputs that are constants at plan time (default: the op's own
    const_inputs). Asserts each output has the shape and dtype the op's shape rule gives."""
    op = REGISTRY[op_type]
    attrs = check_attributes(op, attrs, f"node '{op_type}'")
    inputs = [None if a is None else np.asarray(a) for a in inputs]
    inputs = [None if a is None else a.astype(np.float32) if a.dtype.kind == "f"
              else a.astype(np.int64) if a.dtype.kind in "iu" else a for a in inputs]
    const = set(op.const_inputs if const is None else const)
    values = _values(inputs, const)
    inferred = op.infer(attrs, values)
    ctx = op.prepare(attrs, values) if op.prepare is not None else attrs
    outputs = op.run(ctx, inputs)
    assert len(outputs) == len(inferred), (len(outputs), len(inferred))
    for out, (shape, dtype) in zip(outputs, inferred):
        assert tuple(out.shape) == tuple(shape), (op_type, out.shape, shape)
        assert out.dtype == np.dtype(dtype), (op_type, out.dtype, dtype)
    return outputs


def reference_op(op_type, attrs, inputs):
    """grurt's float64 reference: float inputs cast to float64."""
    attrs = check_attributes(REGISTRY[op_type], attrs, f"node '{op_type}'")
    inputs = [None if a is None else np.asarray(a) for a in inputs]
    inputs = [None if a is None else a.astype(np.float64) if a.dtype.kind == "f" else a for a in inputs]
    return reference_ops.REFERENCE[op_type](attrs, inputs)


def ort_op(op_type, attrs, inputs, n_outputs=1, opset=17, const=()):
    """onnxruntime's outputs of a one-node model; the inputs in ``const`` are initializers."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names, graph_inputs, initializers, feed = [], [], [], {}
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        name = f"in{i}"
        names.append(name)
        if i in const:
            initializers.append(numpy_helper.from_array(a, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
            feed[name] = a
    outs = [f"out{k}" for k in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outs],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def assert_within(got, oracles, atol):
    """grurt's outputs ``got`` (one array or a tuple) against each oracle's (one array or a list): as many, the
    same shapes, float32, each within ``atol``."""
    got = got if isinstance(got, tuple) else (got,)
    for oracle in oracles:
        oracle = oracle if isinstance(oracle, (list, tuple)) else [oracle]
        assert len(oracle) == len(got)
        for ours, want in zip(got, oracle):
            assert ours.shape == np.shape(want) and ours.dtype == np.float32
            assert np.max(np.abs(ours - want)) <= atol
