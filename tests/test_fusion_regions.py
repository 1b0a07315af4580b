"""The fusion pass on the regions of a general graph (``grurt.fusion.fuse_regions``): a graph the fused layers
do not cover whole keeps its ops, but each GRU with the layout and state wiring around it becomes a
``grurt.Chain`` node (docs/architecture-tensor-graph.md, "Step 3: regions").

Each model is checked against PyTorch and onnxruntime (``ATOL``), and against the same file run without the
pass (its TensorGraph as ``general.py`` reads it) bit for bit (``np.array_equal``): a GRU node and a chain
of GRUs run the same kernels, and the pass moves data only. The regions fused are counted (the GRU nodes left,
the grurt.Chain nodes made), and the fused graph streams, pools, saves and loads, and runs its bf16/int8
weights and threads as the unfused one does, to the same bits.
"""
from __future__ import annotations

import collections
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import grurt
from grurt.fusion import fuse_regions
from grurt.importers.onnx.general import tensor_graph_from_source
from grurt.importers.onnx.proto import _open
from grurt.tensor_model import TensorModel

from tolerances import ATOL, LOWP_BUDGETS

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import workloads_graph as wg  # noqa: E402 (W9's and W10's modules, built smaller here)


# ---- the models ----

class AutoEncoder(nn.Module):
    """An encoder GRU's last state repeated over time into a decoder GRU; a running sum over time (CumSum, which
    the fused layers do not have) after the output layer."""

    def __init__(self, features=5, hidden=7):
        super().__init__()
        self.enc = nn.GRU(features, hidden, batch_first=True)
        self.dec = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, features)

    def forward(self, x):
        _, h = self.enc(x)
        y, _ = self.dec(h[-1].unsqueeze(1).repeat(1, x.shape[1], 1))
        return torch.cumsum(self.out(y), dim=1)


class StreamingBlock(nn.Module):
    """A causal block that streams: grouped linear, a GRU from zeros, grouped linear out."""

    def __init__(self, features=8, hidden=12, groups=4):
        super().__init__()
        self.linear_in = wg.GroupedLinearEinsum(features, hidden, groups)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.linear_out = wg.GroupedLinearEinsum(hidden, 4, groups)

    def forward(self, x):
        return self.linear_out(self.gru(torch.relu(self.linear_in(x)))[0])


class DecoderStep(nn.Module):
    """One step of an attention decoder, its recurrence ``cell``: nn.GRUCell, or nn.GRU on one step."""

    def __init__(self, cell, features=4, hidden=6):
        super().__init__()
        self.cell = nn.GRUCell(features, hidden) if cell else nn.GRU(features, hidden, batch_first=True)
        self.query = nn.Linear(hidden, features)

    def forward(self, x, h, memory):          # x (B, F), h (B, H) or (1, B, H), memory (B, M, F)
        if isinstance(self.cell, nn.GRUCell):
            h = self.cell(x, h)
            state = h
        else:
            h = self.cell(x.unsqueeze(1), h)[1]
            state = h[0]
        w = torch.softmax(torch.bmm(memory, self.query(state).unsqueeze(2)), dim=1)
        return (memory * w).sum(1), h


def _cases():
    """name -> (module, example inputs, their names, dynamic axes, (GRU nodes in the file, GRU nodes after the pass,
    grurt.Chain nodes after the pass))."""
    torch.manual_seed(0)
    return {
        "attention": (wg.AttentionPooling(6, 8, 3), (torch.randn(2, 7, 6),), ["x"], {"x": {0: "batch", 1: "time"}},
                      (1, 0, 1)),
        "autoencoder": (AutoEncoder(), (torch.randn(2, 9, 5),), ["x"], {"x": {0: "batch", 1: "time"}}, (2, 0, 2)),
        # DeepFilterNet3's SqueezedGRU: grouped linear + ReLU (Einsum), a two-layer GRU from h0, grouped linear out
        "deepfilter": (wg.SqueezedGRU(16, 16, output_size=16, layers=2, groups=4), (torch.randn(1, 5, 16),
                                                                                    torch.randn(2, 1, 16)),
                       ["x", "h"], {"x": {1: "time"}}, (2, 0, 1)),
        # nn.GRU on one step of a vector: the fused layers read sequences (a GRU reading x.unsqueeze(1) is refused,
        # "X has no time axis"), and the GRU alone would need more layout nodes than it has: it stays
        "gru_step": (DecoderStep(cell=False), (torch.randn(3, 4), torch.randn(1, 3, 6), torch.randn(3, 5, 4)),
                     ["x", "h", "memory"], {"x": {0: "batch"}, "h": {1: "batch"}, "memory": {0: "batch", 1: "steps"}},
                     (1, 1, 0)),
    }


CASES = sorted(_cases())


def _export(module, args, names, path, dynamic):
    with torch.no_grad():
        returned = module(*args)
    outputs = [f"out{i}" for i in range(len(returned))] if isinstance(returned, tuple) else ["out0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=outputs, opset_version=17,
                          dynamo=False, dynamic_axes=dynamic)


def ops(model):
    return collections.Counter(node.op for node in model.graph.nodes)


def outputs(model, feeds):
    result = model.run(feeds)
    return result if isinstance(result, tuple) else (result,)


def torch_outputs(module, args):
    with torch.no_grad():
        result = module(*args)
    return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory):
    """(name, module, args, path of the file, the fused TensorModel, the unfused one, feeds by name)."""
    module, args, names, dynamic, counts = _cases()[request.param]
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    _export(module.eval(), args, names, path, dynamic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = grurt.load(str(path))
    unfused = TensorModel(tensor_graph_from_source(_open(str(path))))
    feeds = dict(zip(names, (a.numpy() for a in args)))
    return request.param, module, args, path, fused, unfused, feeds, counts


# ---- the regions fused, and what they compute ----

def test_regions_fused_and_outputs_exact(case):
    """Every GRU node is in a region that became grurt.Chain nodes; the outputs are the unfused graph's bits, and
    within ATOL of PyTorch and onnxruntime."""
    name, module, args, path, fused, unfused, feeds, (grus, grus_left, chains) = case
    assert isinstance(fused, TensorModel)
    assert ops(unfused)["GRU"] == grus and ops(unfused)["grurt.Chain"] == 0
    assert ops(fused)["GRU"] == grus_left and ops(fused)["grurt.Chain"] == chains
    assert len(fused.graph.nodes) < len(unfused.graph.nodes) if chains else fused.describe() == unfused.describe()
    assert fused.input_names == unfused.input_names and fused.output_names == unfused.output_names
    assert [i.describe() for i in fused.graph.inputs] == [i.describe() for i in unfused.graph.inputs]
    assert ("grurt.Chain" in fused.describe()) == bool(chains)
    got, plain = outputs(fused, feeds), outputs(unfused, feeds)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, plain))
    for a, b in zip(got, torch_outputs(module, args)):
        assert a.shape == b.shape and np.abs(a - b).max() <= ATOL
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for a, b in zip(got, session.run(None, feeds)):
        assert np.abs(a - b).max() <= ATOL


def test_other_sizes_exact(case):
    """At other sizes of the dynamic axes the fused graph still computes the unfused one's bits."""
    name, module, args, path, fused, unfused, feeds, *_ = case
    rng = np.random.default_rng(1)
    grown = {}
    for tensor_input in unfused.graph.inputs:
        shape = [d if isinstance(d, int) else feeds[tensor_input.name].shape[k] + 3
                 for k, d in enumerate(tensor_input.dims)]
        grown[tensor_input.name] = rng.standard_normal(shape).astype(np.float32)
    got, plain = outputs(fused, grown), outputs(unfused, grown)
    assert all(np.array_equal(a, b) for a, b in zip(got, plain))
    for a, b in zip(got, torch_outputs(module, [torch.from_numpy(grown[n]) for n in fused.input_names])):
        assert np.abs(a - b).max() <= ATOL


def test_from_torch_and_the_session_fuse_the_regions(case):
    """from_torch's general path and grurt.InferenceSession give the same regions fused, the same bits."""
    name, module, args, path, fused, unfused, feeds, (grus, grus_left, chains) = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = grurt.from_torch(module, args)
    assert isinstance(model, TensorModel) and ops(model)["GRU"] == grus_left and ops(model)["grurt.Chain"] == chains
    for a, b in zip(outputs(model, feeds), outputs(fused, feeds)):
        assert np.array_equal(a, b)
    session = grurt.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == list(fused.output_names)
    for a, b in zip(session.run(None, feeds), outputs(fused, feeds)):
        assert np.array_equal(a, b)


def test_save_load_weights_and_threads(case, tmp_path):
    """Format 3.0 round trip (the same graph, the same bits); bf16 and int8 weights and threads=2: the same bits
    as the unfused graph in that mode, and bf16/int8 within their budgets of PyTorch."""
    name, module, args, path, fused, unfused, feeds, *_ = case
    saved = tmp_path / "model.npz"
    grurt.save(fused, str(saved))
    loaded = grurt.load(str(saved))
    assert loaded.describe() == fused.describe()
    for a, b in zip(outputs(loaded, feeds), outputs(fused, feeds)):
        assert np.array_equal(a, b)
    expected = torch_outputs(module, args)
    for mode in ("bf16", "int8"):
        a, b = fused.with_weights(mode), unfused.with_weights(mode)
        got = outputs(a, feeds)
        assert all(np.array_equal(x, y) for x, y in zip(got, outputs(b, feeds)))
        assert all(np.abs(x - y).max() <= LOWP_BUDGETS[mode] for x, y in zip(got, expected))
    threaded = fused.run(feeds, threads=2)
    for a, b in zip(threaded if isinstance(threaded, tuple) else (threaded,), outputs(fused, feeds)):
        assert np.array_equal(a, b)


# ---- streams and pools ----

@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    torch.manual_seed(4)
    module = StreamingBlock().eval()
    path = tmp_path_factory.mktemp("streaming") / "model.onnx"
    _export(module, (torch.randn(1, 6, 8),), ["x"], path, {"x": {0: "batch", 1: "time"}})     # batch 1: see _cases
    return module, grurt.load(str(path)), TensorModel(tensor_graph_from_source(_open(str(path))))


def test_stream_frame_by_frame(streaming):
    """The fused graph streams as the unfused one did: frame by frame the same bits as the unfused stream, and
    within ATOL of PyTorch on the whole sequence."""
    module, fused, unfused = streaming
    assert ops(fused)["GRU"] == 0 and ops(fused)["grurt.Chain"] == 1 and ops(unfused)["GRU"] == 1
    x = np.random.default_rng(5).standard_normal((2, 9, 8)).astype(np.float32)
    streams = [model.stream(batch=2, time_axes={"x": 1}) for model in (fused, unfused)]
    frames = [[stream.step(x[:, t]) for t in range(x.shape[1])] for stream in streams]
    assert all(np.array_equal(a, b) for a, b in zip(*frames))
    assert np.abs(np.stack(frames[0], 1) - torch_outputs(module, [torch.from_numpy(x)])[0]).max() <= ATOL


def test_pool_sessions(streaming):
    """Sessions of a pool stepped in batches that change: the bits of the unfused graph's pool stepped alike, and
    within ATOL of each session's own stream (a batch of n rows is summed in another order than one row)."""
    _, fused, unfused = streaming
    x = np.random.default_rng(6).standard_normal((3, 5, 8)).astype(np.float32)
    expected = []
    for s in range(3):
        stream = unfused.stream(batch=1, time_axes={"x": 1})
        expected.append([stream.step(x[s:s + 1, t])[0] for t in range(5)])
    pools = [model.stream_pool(4, time_axes={"x": 1}) for model in (fused, unfused)]
    ids = [[pool.open() for _ in range(3)] for pool in pools]
    done = [0, 0, 0]
    for ready in ([0, 1, 2], [2], [0, 2], [1, 0], [2, 1, 0], [1, 0], [1, 2]):
        frames = np.stack([x[s, done[s]] for s in ready])
        got, plain = (pool.step(np.array([i[s] for s in ready]), frames) for pool, i in zip(pools, ids))
        assert np.array_equal(got, plain)
        for k, s in enumerate(ready):
            assert np.abs(got[k] - expected[s][done[s]]).max() <= ATOL
            done[s] += 1
    assert done == [5, 5, 5]


# ---- what stays as it is ----

def test_a_gru_cell_is_not_a_gru_node():
    """nn.GRUCell exports as MatMul/Sigmoid/Tanh arithmetic, no GRU node: nothing to fuse, the graph as it is."""
    torch.manual_seed(2)
    module = DecoderStep(cell=True).eval()
    args = (torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 5, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = grurt.from_torch(module, args)
    assert isinstance(model, TensorModel) and ops(model)["GRU"] == 0 and ops(model)["grurt.Chain"] == 0
    assert fuse_regions(model.graph) == (model.graph, [])
    for a, b in zip(outputs(model, dict(zip(model.input_names, (a.numpy() for a in args)))),
                    torch_outputs(module, args)):
        assert np.abs(a - b).max() <= ATOL


def _onnx_file(path, nodes, inputs, outputs, initializers):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_a_boundary_in_a_layout_that_costs_more_stays_a_gru_node(tmp_path):
    """A time-major GRU whose raw Y (T, D, B, H) an Erf reads: the chain would need a Transpose in and a Reshape and a
    Transpose out, more steps than it saves: the GRU node stays, the graph as it is."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    W, R = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    path = _onnx_file(tmp_path / "m.onnx", [helper.make_node("GRU", ["x", "W", "R"], ["Y"], hidden_size=4),
                                             helper.make_node("Erf", ["Y"], ["z"])],
                      [("x", TensorProto.FLOAT, ["t", "b", 3])], ["z"], {"W": W, "R": R})
    model = grurt.load(path)
    graph = tensor_graph_from_source(_open(path))
    assert ops(model)["GRU"] == 1 and model.describe() == TensorModel(graph).describe()


def test_what_the_chain_cannot_give_stays_outside(tmp_path):
    """A GRU whose output is read every other step (a Slice of step 2 over time, which the fused layers do not
    read) and its state read with lengths given: the Slice stays a general op (the GRU and its Transposes
    fuse, the bits unchanged); a GRU given sequence_lens stays a GRU node."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(8)
    W, R = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    ints = {"starts": np.array([0]), "ends": np.array([1 << 30]), "axes": np.array([1]), "steps": np.array([2]),
            "squeeze": np.array([1]), "W": W, "R": R}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R"], ["Y"], hidden_size=4),
             helper.make_node("Squeeze", ["Y", "squeeze"], ["s"]),
             helper.make_node("Transpose", ["s"], ["y"], perm=[1, 0, 2]),
             helper.make_node("Slice", ["y", "starts", "ends", "axes", "steps"], ["every_other"]),
             helper.make_node("Erf", ["every_other"], ["z"])]
    path = _onnx_file(tmp_path / "slice.onnx", nodes, [("x", TensorProto.FLOAT, ["b", "t", 3])], ["z"], ints)
    model, plain = grurt.load(path), TensorModel(tensor_graph_from_source(_open(path)))
    assert ops(model) == {"grurt.Chain": 1, "Slice": 1, "Erf": 1}
    x = rng.standard_normal((2, 9, 3)).astype(np.float32)
    assert np.array_equal(model.run(x), plain.run(x))

    lengths = [helper.make_node("GRU", ["xt", "W", "R", "", "lens"], ["Y", "h"], hidden_size=4),
               helper.make_node("Erf", ["h"], ["z"])]
    path = _onnx_file(tmp_path / "lens.onnx", nodes[:1] + lengths,
                      [("x", TensorProto.FLOAT, ["b", "t", 3]), ("lens", TensorProto.INT32, ["b"])], ["z"],
                      {"W": W, "R": R})
    model = grurt.load(path)
    assert ops(model)["GRU"] == 1 and ops(model)["grurt.Chain"] == 0


def test_a_graph_without_gru_or_whose_sizes_cannot_change_alone_is_returned_as_it_is(tmp_path):
    """No GRU node: nothing to do. Two dims that must agree but are named apart (a state's batch and the
    sequence's): the shapes cannot be followed one parameter at a time, the pass leaves the graph."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(9)
    path = _onnx_file(tmp_path / "erf.onnx", [helper.make_node("Erf", ["x"], ["z"])],
                      [("x", TensorProto.FLOAT, ["b", 3])], ["z"], {})
    graph = tensor_graph_from_source(_open(path))
    assert fuse_regions(graph) == (graph, [])
    W, R = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    path = _onnx_file(tmp_path / "apart.onnx", [helper.make_node("GRU", ["x", "W", "R", "", "", "h0"], ["Y"],
                                                                  hidden_size=4),
                                                 helper.make_node("Erf", ["Y"], ["z"])],
                      [("x", TensorProto.FLOAT, ["t", "b", 3]), ("h0", TensorProto.FLOAT, [1, "batch", 4])], ["z"],
                      {"W": W, "R": R})
    graph = tensor_graph_from_source(_open(path))
    assert fuse_regions(graph) == (graph, [])


def test_the_regions_fused_are_named():
    """fuse_regions names the nodes of each region it fused; the Chain is named after its GRU nodes."""
    torch.manual_seed(0)
    module, args, *_ = _cases()["deepfilter"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = grurt.from_torch(module.eval(), args)
    (chain,) = [node for node in model.graph.nodes if node.op == "grurt.Chain"]
    assert chain.name == "/gru/GRU+/gru/GRU_1" and len(chain.attrs["layers"]) == 2
    slices = [node for node in model.graph.nodes if node.op == "Slice" and node.inputs[0] == "h"]
    assert len(slices) == 2 and set(chain.inputs[2:]) == {node.outputs[0] for node in slices}


class AttentionWeights(nn.Module):
    """The attention weights themselves as the output: a softmax over time of a one-feature score."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(5, 6, batch_first=True)
        self.score = nn.Linear(6, 1)

    def forward(self, x):
        return torch.softmax(self.score(self.gru(x)[0]), dim=1)


def test_a_softmax_over_time_is_not_one_over_a_feature(tmp_path):
    """A softmax over the time axis of a (B, T, 1) score is a softmax over the T steps of each sequence: the pass
    read it as a softmax over the one feature (every weight 1.0) before. With dynamic steps the file is a general
    graph (its GRU a region); with fixed steps it fuses whole, as a softmax over the flattened steps."""
    torch.manual_seed(3)
    module = AttentionWeights().eval()
    x = torch.randn(2, 7, 5)
    expected = torch_outputs(module, [x])[0]
    dynamic, fixed = tmp_path / "dynamic.onnx", tmp_path / "fixed.onnx"
    _export(module, (x,), ["x"], dynamic, {"x": {0: "batch", 1: "time"}})
    _export(module, (x,), ["x"], fixed, {})
    model = grurt.load(str(dynamic))
    assert isinstance(model, TensorModel) and ops(model)["grurt.Chain"] == 1 and ops(model)["Softmax"] == 1
    assert np.abs(model.run(x.numpy()) - expected).max() <= ATOL
    model = grurt.load(str(fixed))
    assert not isinstance(model, TensorModel)
    assert np.abs(model.run(x.numpy()) - expected[..., 0]).max() <= ATOL      # (B, T): grurt's layout of (B, T·1)


def test_long_chains_around_regions(tmp_path):
    """3000 shape-arithmetic nodes read a region's output (the GRU's, through its Squeeze) and 200 GRU nodes run one
    after the other, each a region of its own between Erf nodes: the pass keeps to loops (no recursion), each region
    fused, the same bits."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(10)
    W, R = rng.standard_normal((1, 6, 2)).astype(np.float32) * 0.5, rng.standard_normal((1, 6, 2)).astype(np.float32)
    initializers = {"W": W, "R": R, "one": np.array([1]), "two": np.array([2], np.int64)}
    nodes, x = [], "x"
    for k in range(200):
        nodes += [helper.make_node("Transpose", [x], [f"t{k}"], perm=[1, 0, 2]),
                  helper.make_node("GRU", [f"t{k}", "W", "R"], [f"Y{k}"], hidden_size=2),
                  helper.make_node("Squeeze", [f"Y{k}", "one"], [f"s{k}"]),
                  helper.make_node("Transpose", [f"s{k}"], [f"y{k}"], perm=[1, 0, 2]),
                  helper.make_node("Erf", [f"y{k}"], [f"e{k}"])]
        x = f"e{k}"
    nodes.append(helper.make_node("Shape", ["s0"], ["n0"]))
    for k in range(3000):
        nodes.append(helper.make_node("Add", [f"n{k}", "two"], [f"n{k + 1}"]))
    nodes += [helper.make_node("Cast", ["n3000"], ["size"], to=TensorProto.FLOAT),
              helper.make_node("ReduceSum", ["size"], ["total"], keepdims=0),
              helper.make_node("Mul", [x, "total"], ["z"])]
    path = _onnx_file(tmp_path / "long.onnx", nodes, [("x", TensorProto.FLOAT, ["b", "t", 2])], ["z"], initializers)
    model, plain = grurt.load(path), TensorModel(tensor_graph_from_source(_open(path)))
    assert ops(model)["GRU"] == 0 and ops(model)["grurt.Chain"] == 200 and ops(model)["Add"] == 3000
    x = rng.standard_normal((2, 5, 2)).astype(np.float32)
    assert np.array_equal(model.run(x), plain.run(x))


def test_a_path_leaving_a_region_and_coming_back_splits_it(tmp_path):
    """y = GRU₁(x); z = GRU₂(Concat(y, Erf(y))): the Concat, a region op, reads y and the Erf of y, computed
    outside the region. One region would have to run before and after the Erf: it splits at the Concat, and both
    parts fuse (two Chains, the Concat and the Erf between them), the same bits."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(11)
    W1, R1 = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    W2, R2 = rng.standard_normal((1, 15, 8)).astype(np.float32), rng.standard_normal((1, 15, 5)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W1", "R1"], ["Y1"], hidden_size=4),
             helper.make_node("Squeeze", ["Y1", "one"], ["s1"]),
             helper.make_node("Transpose", ["s1"], ["y"], perm=[1, 0, 2]),
             helper.make_node("Erf", ["y"], ["e"]),
             helper.make_node("Concat", ["y", "e"], ["c"], axis=2),
             helper.make_node("Transpose", ["c"], ["ct"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["ct", "W2", "R2"], ["Y2"], hidden_size=5),
             helper.make_node("Squeeze", ["Y2", "one"], ["s2"]),
             helper.make_node("Transpose", ["s2"], ["z"], perm=[1, 0, 2])]
    path = _onnx_file(tmp_path / "back.onnx", nodes, [("x", TensorProto.FLOAT, ["b", "t", 3])], ["z"],
                      {"W1": W1, "R1": R1, "W2": W2, "R2": R2, "one": np.array([1])})
    graph = tensor_graph_from_source(_open(path))
    fused, regions = fuse_regions(graph)
    assert sorted(map(len, regions)) == [4, 5] and ops(TensorModel(fused)) == {"grurt.Chain": 2, "Concat": 1, "Erf": 1}
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    assert np.array_equal(TensorModel(fused).run(x), TensorModel(graph).run(x))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert np.abs(TensorModel(fused).run(x) - session.run(None, {"x": x})[0]).max() <= ATOL
