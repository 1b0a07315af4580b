"""Graphs from PyTorch modules with their own ``forward`` (issue 11): ``grurt.from_torch(module, example)``
against torch, and the modules' ONNX exports (legacy and dynamo) loaded with ``grurt.load`` against
onnxruntime on the same file, at ATOL. Then graph errors from ONNX files, each naming what is wrong."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import grurt  # noqa: E402
import grurt.verify  # noqa: E402
from grurt.errors import InputError, ModelFormatError, UnsupportedModelError  # noqa: E402
from grurt.graph import Combine, Concat, Slice  # noqa: E402
from tolerances import ATOL  # noqa: E402

F, H, B, T = 5, 8, 3, 7


class Residual(nn.Module):
    """o + h around a GRU, then a head on the last step."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(F, H)
        self.gru = nn.GRU(H, H, batch_first=True)
        self.fc = nn.Linear(H, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        o, _ = self.gru(h)
        return self.fc((o + h)[:, -1])


class TwoBranches(nn.Module):
    """Two GRUs on the same input, joined by torch.cat; one of them reads the sequence reversed."""

    def __init__(self, flip=False):
        super().__init__()
        self.a = nn.GRU(F, H, batch_first=True)
        self.b = nn.GRU(F, 4, batch_first=True, bidirectional=True)
        self.flip = flip
        self.fc = nn.Linear(H + 8, 3)

    def forward(self, x):
        a, _ = self.a(x)
        b, _ = self.b(torch.flip(x, [1]) if self.flip else x)
        if self.flip:
            b = torch.flip(b, [1])
        return self.fc(torch.cat([a, b], dim=-1))


class Gated(nn.Module):
    """a * sigmoid(b) from two halves of one projection of a GRU's output."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(F, H, batch_first=True)
        self.proj = nn.Linear(H, 2 * H)
        self.out = nn.Linear(H, 1)

    def forward(self, x):
        o, _ = self.gru(x)
        a, b = self.proj(o).chunk(2, dim=-1)
        return self.out(a * torch.sigmoid(b))


class WithState(nn.Module):
    """forward(x, h0) -> (probs, h_n) with a 2-layer GRU (time-major, as nn.GRU's default)."""

    def __init__(self, residual=False):
        super().__init__()
        self.gru = nn.GRU(F, H, num_layers=2)
        self.fc = nn.Linear(H, 4)
        self.residual = residual
        self.skip = nn.Linear(F, H)

    def forward(self, x, h0):
        o, h_n = self.gru(x, h0)
        if self.residual:
            o = o + self.skip(x)
        return torch.softmax(self.fc(o), dim=-1), h_n


class TwoInputs(nn.Module):
    """Two sequence inputs, each through its own GRU, merged by a difference and a max."""

    def __init__(self):
        super().__init__()
        self.a = nn.GRU(F, H, batch_first=True)
        self.b = nn.GRU(3, H, batch_first=True)
        self.fc = nn.Linear(H, 2)

    def forward(self, speech, noise):
        a, _ = self.a(speech)
        b, _ = self.b(noise)
        return self.fc(a - b), torch.maximum(a, b)


def randomized(module, seed):
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return module.eval()


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_outputs(module, args):
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in args))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


CASES = {
    "residual": (Residual, lambda b, t: (rand(b, t, F, seed=t),)),
    "cat": (TwoBranches, lambda b, t: (rand(b, t, F, seed=t),)),
    "flip": (lambda: TwoBranches(flip=True), lambda b, t: (rand(b, t, F, seed=t),)),
    "gated": (Gated, lambda b, t: (rand(b, t, F, seed=t),)),
    "two_inputs": (TwoInputs, lambda b, t: (rand(b, t, F, seed=t), rand(b, t, 3, seed=t + 1))),
    "state_residual": (lambda: WithState(residual=True), lambda b, t: (rand(t, b, F, seed=t), rand(2, b, H, seed=b))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_torch_graph_matches_torch(case):
    make, inputs = CASES[case]
    net = randomized(make(), 1)
    model = grurt.from_torch(net, tuple(torch.from_numpy(a) for a in inputs(2, 4)))
    assert model.graph.as_chain() is None       # a graph, not a chain
    names = list(model.input_names)
    for b, t in ((B, T), (1, 11)):              # sizes other than the example's
        args = inputs(b, t)
        expected = torch_outputs(net, args)
        if "state" in case:                      # grurt's sequences are batch first
            given = [args[0].transpose(1, 0, 2), args[1]]
        else:
            given = list(args)
        # one input: the array itself (a list would be read as the array's data); several: a list in order
        for call in (given if len(given) > 1 else given[0], dict(zip(names, given))):
            got = model.run(call)
            got = got if isinstance(got, tuple) else (got,)
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                if "state" in case and g.ndim == 3 and e.shape[0] == t:
                    e = e.transpose(1, 0, 2)
                assert_close(g, e)


def test_names_come_from_forward_and_its_return():
    net = randomized(TwoInputs(), 2)
    model = grurt.from_torch(net, (rand(2, 4, F), rand(2, 4, 3)))
    assert model.input_names == ("speech", "noise")
    assert model.output_names == ("output_0", "output_1")
    assert {type(n.layer) for n in model.graph.nodes} >= {Combine}
    assert [n.layer.op for n in model.graph.nodes if isinstance(n.layer, Combine)] == ["sub", "max"]
    single = grurt.from_torch(randomized(Residual(), 3), torch.from_numpy(rand(2, 4, F)))
    assert single.input_names == ("x",) and single.output_names == ("output",)


def test_state_graph_slices_h0_and_concatenates_h_n():
    """forward(x, h0) -> (probs, h_n), a graph (a residual): h0 (2, B, H) is a state input sliced per
    layer, h_n a state output concatenated from the two layers' final states."""
    net = randomized(WithState(residual=True), 4)
    model = grurt.from_torch(net, (rand(4, 2, F), rand(2, 2, H)))
    assert model.input_names == ("x", "h0") and model.output_names == ("output_0", "output_1")
    h0_input = model.graph.inputs[1]
    assert (h0_input.kind, h0_input.directions, h0_input.size) == ("state", 2, 2 * H)
    assert model.graph.outputs[1].directions == 2
    layers = [type(n.layer) for n in model.graph.nodes]
    assert layers.count(Slice) == 2 and Concat in layers
    x, h0 = rand(T, B, F, seed=5), rand(2, B, H, seed=6)
    probs, h_n = torch_outputs(net, (x, h0))
    got_probs, got_h = model.run({"x": x.transpose(1, 0, 2), "h0": h0})
    assert_close(got_probs, probs.transpose(1, 0, 2))
    assert_close(got_h, h_n)
    # return_state gives each GRU node's final state; together they are h_n
    (_, _), states = model.run([x.transpose(1, 0, 2), h0], return_state=True)
    assert_close(np.concatenate(states), h_n)


def test_one_path_with_state_stays_a_chain():
    """forward(x, h0) -> (probs, h_n) without a branch is a chain: h0 is initial_state, h_n return_state."""
    net = randomized(WithState(), 5)
    model = grurt.from_torch(net, (rand(4, 2, F), rand(2, 2, H)))
    assert model.graph.as_chain() is not None and model.input_names == ("x",)
    x, h0 = rand(T, B, F, seed=7), rand(2, B, H, seed=8)
    probs, h_n = torch_outputs(net, (x, h0))
    out, states = model.run(x.transpose(1, 0, 2), initial_state=list(h0[:, None]), return_state=True)
    assert_close(out, probs.transpose(1, 0, 2))
    assert_close(np.concatenate(states), h_n)


def test_modules_without_example_convert_as_before():
    gru = randomized(nn.GRU(F, H, batch_first=True), 6)
    x = rand(B, T, F)
    assert_close(grurt.from_torch(gru).run(x), torch_outputs(gru, (x,))[0])
    with pytest.raises(UnsupportedModelError, match="from_torch\\(module, example_input\\)"):
        grurt.from_torch(Residual())
    with pytest.raises(UnsupportedModelError, match="last_step"):
        grurt.from_torch(Residual(), rand(2, 4, F), last_step=True)


def test_run_time_input_errors_name_the_input():
    model = grurt.from_torch(randomized(TwoInputs(), 7), (rand(2, 4, F), rand(2, 4, 3)))
    speech, noise = rand(B, T, F), rand(B, T, 3)
    with pytest.raises(InputError, match="'noise' is missing"):
        model.run({"speech": speech})
    with pytest.raises(InputError, match="unknown input 'extra'"):
        model.run({"speech": speech, "noise": noise, "extra": noise})
    with pytest.raises(InputError, match="takes 2 inputs"):
        model.run([speech])
    with pytest.raises(InputError, match="input 'noise' has 5 features"):
        model.run([speech, rand(B, T, 5)])


# ---- ONNX exports of the same modules: grurt.load vs onnxruntime on the file ----

def export(net, args, path, names, dynamo, time_major):
    """``time_major``: the sequences are (T, B, F) and the state (L, B, H) is the argument named h0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensors = tuple(torch.from_numpy(a) for a in args)
        if dynamo:
            batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
            dims = {"batch": batch, "time": time}
        else:
            dims = {"batch": "batch", "time": "time"}
        sequence = {0: dims["time"], 1: dims["batch"]} if time_major else {0: dims["batch"], 1: dims["time"]}
        axes = {name: ({1: dims["batch"]} if name == "h0" else sequence) for name in names}
        if dynamo:
            torch.onnx.export(net, tensors, path, input_names=names, dynamo=True, dynamic_shapes=axes, verbose=False)
        else:
            torch.onnx.export(net, tensors, path, input_names=names, dynamo=False, opset_version=17,
                              dynamic_axes=axes)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_exports_match_onnxruntime(tmp_path, case, dynamo):
    make, inputs = CASES[case]
    net = randomized(make(), 8)
    path = str(tmp_path / "m.onnx")
    example = inputs(2, 4)
    import inspect
    names = list(inspect.signature(net.forward).parameters)
    export(net, example, path, names, dynamo, time_major="state" in case)
    model = grurt.load(path)
    assert list(model.input_names) == names
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert list(model.output_names) == [o.name for o in session.get_outputs()]
    b, t = (2, 4) if dynamo else (B, T)      # the dynamo export keeps the time axis static (docs/onnx.md)
    args = inputs(b, t)
    expected = session.run(None, dict(zip(names, args)))
    given = [args[0].transpose(1, 0, 2), args[1]] if "state" in case else list(args)
    got = model.run(given if len(given) > 1 else given[0])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if "state" in case and e.shape[0] == t and g.ndim == 3 and e.shape != g.shape:
            e = e.transpose(1, 0, 2)
        assert_close(g, e)
    for g, e in zip(got, torch_outputs(net, args)):     # and the file means the torch module
        if "state" in case and e.shape[0] == t and g.ndim == 3 and e.shape != g.shape:
            e = e.transpose(1, 0, 2)
        assert_close(g, e)


# ---- hand-built ONNX graphs: what is supported and what is refused, by name ----

def save(path, nodes, inputs, outputs, weights):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=9), path)
    return str(path)


def value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def gru_weights(suffix, features, hidden=H, seed=0):
    rng = np.random.default_rng(seed)
    return {f"W{suffix}": rng.uniform(-0.5, 0.5, (1, 3 * hidden, features)).astype(np.float32),
            f"R{suffix}": rng.uniform(-0.5, 0.5, (1, 3 * hidden, hidden)).astype(np.float32),
            f"B{suffix}": rng.uniform(-0.5, 0.5, (1, 6 * hidden)).astype(np.float32)}


def two_grus(tmp_path, merge_nodes, outputs, hidden2=H, extra=None):
    """X (T, N, F) through GRUs g1 (hidden H) and g2 (hidden2); y1, y2 (T, N, ·) then ``merge_nodes``."""
    weights = {**gru_weights(1, F, seed=1), **gru_weights(2, F, hidden2, seed=2), "one": np.array([1]),
               **(extra or {})}
    nodes = [helper.make_node("GRU", ["X", "W1", "R1", "B1"], ["Y1", "H1"], hidden_size=H, name="g1"),
             helper.make_node("GRU", ["X", "W2", "R2", "B2"], ["Y2", "H2"], hidden_size=hidden2, name="g2"),
             helper.make_node("Squeeze", ["Y1", "one"], ["y1"]),
             helper.make_node("Squeeze", ["Y2", "one"], ["y2"])] + merge_nodes
    return save(tmp_path / "m.onnx", nodes, [value("X", ["T", "N", F])], [value(o, None) for o in outputs], weights)


def test_handbuilt_merges_and_outputs_match_onnxruntime(tmp_path):
    """Add, Mul, Max, Min, Mean, Sum and a feature Concat of two GRU branches; an intermediate result and a
    final state as outputs; a GRU whose initial state is another GRU's final state."""
    weights3 = gru_weights(3, 2 * H, seed=3)
    nodes = [helper.make_node("Add", ["y1", "y2"], ["add"], name="add"),
             helper.make_node("Mul", ["add", "y2"], ["mul"]),
             helper.make_node("Max", ["mul", "y1"], ["max"]),
             helper.make_node("Min", ["max", "y2", "add"], ["min"]),
             helper.make_node("Mean", ["min", "y1"], ["mean"]),
             helper.make_node("Sum", ["mean", "y1", "y2"], ["sum"]),
             helper.make_node("Concat", ["sum", "y1"], ["cat"], axis=2),
             helper.make_node("GRU", ["cat", "W3", "R3", "B3", "", "H1"], ["Y3"], hidden_size=H, name="g3")]
    path = two_grus(tmp_path, nodes, ["Y3", "add", "H2"], extra=weights3)
    model = grurt.load(path)
    assert model.output_names == ("Y3", "add", "H2") and model.graph.outputs[2].directions == 1
    x = rand(B, T, F, seed=9)
    Y3, add, H2 = ort.InferenceSession(path).run(None, {"X": x.transpose(1, 0, 2)})
    got = model.run(x)
    assert_close(got[0], Y3[:, 0].transpose(1, 0, 2))
    assert_close(got[1], add.transpose(1, 0, 2))
    assert_close(got[2], H2)
    expected = grurt.verify.onnx_outputs(path, x)
    for g, e in zip(got, expected):
        assert_close(g, e)


def test_add_of_incompatible_shapes_names_node_and_shapes(tmp_path):
    path = two_grus(tmp_path, [helper.make_node("Add", ["y1", "y2"], ["out"], name="join")], ["out"], hidden2=6)
    with pytest.raises(ModelFormatError, match=r"node 'join' \(Add\): combines tensors of incompatible shapes "
                                               r"\(\d+, \d+, 8\), \(\d+, \d+, 6\)"):
        grurt.load(path)


def test_merges_beyond_the_fused_layers_run_as_a_general_graph(tmp_path):
    """A broadcasting Mul and a Div of two model tensors: the fused layers refuse them, the general graph
    runs them (vs onnxruntime)."""
    x = np.random.default_rng(5).standard_normal((6, 2, F)).astype(np.float32)
    for nodes, extra in (([helper.make_node("Gather", ["y2", "last"], ["y2_last"], axis=0),
                           helper.make_node("Mul", ["y1", "y2_last"], ["out"], name="scale_by_last")],
                          {"last": np.array(-1)}),
                         ([helper.make_node("Add", ["y2", "two"], ["away_from_0"]),      # y2 in (-1, 1)
                           helper.make_node("Div", ["y1", "away_from_0"], ["out"], name="ratio")],
                          {"two": np.array(2, np.float32)})):
        path = two_grus(tmp_path, nodes, ["out"], extra=extra)
        model = grurt.load(path)
        assert isinstance(model, grurt.TensorModel)
        import onnxruntime
        (expected,) = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"X": x})
        assert_close(model.run(x), expected)        # the file's layout: X (T, N, F)


def test_unsupported_op_in_a_graph_is_named(tmp_path):
    nodes = [helper.make_node("Add", ["y1", "y2"], ["add"]), helper.make_node("Det", ["add"], ["out"], name="det")]
    with pytest.raises(UnsupportedModelError, match=r"node 'det' \(Det\): operator Det is not supported"):
        grurt.load(two_grus(tmp_path, nodes, ["out"]))
