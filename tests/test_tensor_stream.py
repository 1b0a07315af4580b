"""Streaming a general tensor graph (issue 20, point 4): ``TensorModel.stream()``.

Tolerances: stepping (and blocks) against ``model.run`` on the whole sequence, against PyTorch
and against the float64 reference (``grurt.reference.run_tensor_graph``) are held to ``ATOL``.
A block against the same frames stepped is held to ``ATOL`` too, not to exactness: numpy's BLAS
sums a matrix product's rows in an order that depends on how many rows there are (a frame is
one row per sequence, a block n), so the last bits differ. ``reset`` and a state round trip are claims of exactness
(``np.array_equal``).
"""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt.errors import InputError, UnsupportedModelError
from grurt.reference import run_tensor_graph
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_plan import Plan
from grurt.tensor_stream import StepPlan

from tolerances import ATOL

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


class ConvStack(nn.Module):
    """DeepFilterNet's encoder in small: 2-D convolutions over (time, frequency) with causal time
    padding (F.pad), a frequency stride, a grouped linear as an einsum, a GRU, a head, and a
    running sum over time (CumSum)."""

    def __init__(self, freqs=8, channels=4, groups=2, hidden=12):
        super().__init__()
        self.c1 = nn.Conv2d(1, channels, (3, 3), padding=(0, 1))
        self.c2 = nn.Conv2d(channels, channels, (2, 3), padding=(0, 1), stride=(1, 2), groups=2)
        self.groups = groups
        self.w = nn.Parameter(torch.randn(groups, channels * freqs // 2 // groups, 6) * 0.3)
        self.gru = nn.GRU(groups * 6, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):                                   # (B, 1, T, F)
        y = torch.relu(self.c1(F.pad(x, (0, 0, 2, 0))))
        y = torch.relu(self.c2(F.pad(y, (0, 0, 1, 0))))     # (B, C, T, F/2)
        b, c, t, f = y.shape
        y = y.permute(0, 2, 1, 3).reshape(b, t, self.groups, c * f // self.groups)
        y = torch.einsum("btgi,gio->btgo", y, self.w).reshape(b, t, -1)
        y, h = self.gru(y)
        return self.head(y) + 0.1 * y[..., :3].cumsum(1), h


class AdditiveAttentionDecoder(nn.Module):
    """A decoder over token ids with additive (Bahdanau) attention on encoder outputs, a static
    input: energy = v · tanh(W·enc + U·h_t), softmax over the encoder's positions."""

    def __init__(self, vocab=11, hidden=10, attention=7, out=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.W = nn.Linear(hidden, attention, bias=False)
        self.U = nn.Linear(hidden, attention)
        self.v = nn.Linear(attention, 1, bias=False)
        self.out = nn.Linear(2 * hidden, out)

    def forward(self, tokens, enc):                         # tokens (B, T), enc (B, S, H)
        h, _ = self.gru(self.embed(tokens))                 # (B, T, H)
        energy = torch.tanh(self.W(enc)[:, None] + self.U(h)[:, :, None])   # (B, T, S, A)
        weights = torch.softmax(self.v(energy)[..., 0], dim=-1)              # (B, T, S)
        context = torch.bmm(weights, enc)                   # (B, T, H)
        return self.out(torch.cat([h, context], -1))


@pytest.fixture(scope="module")
def conv_stack():
    torch.manual_seed(0)
    module = ConvStack().eval()
    x = torch.randn(2, 1, 9, 8)
    return module, grurt.from_torch(module, x), x.numpy()


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(1)
    module = AdditiveAttentionDecoder().eval()
    tokens, enc = torch.randint(0, 11, (2, 6)), torch.randn(2, 5, 10)
    return module, grurt.from_torch(module, (tokens, enc)), tokens.numpy(), enc.numpy()


def test_conv_stack_steps_give_the_whole_sequence(conv_stack):
    module, model, x = conv_stack
    steps = x.shape[2]
    y, h = model.run(x)
    with torch.no_grad():
        y_torch, h_torch = (t.numpy() for t in module(torch.from_numpy(x)))
    y_ref, h_ref = run_tensor_graph(model.graph, x)
    assert max_diff(y, y_torch) < ATOL and max_diff(y, y_ref) < ATOL
    stream = model.stream(batch=2, time_axes={"x": 2})
    assert [s.split(":")[0] for s in stream.state_names] == [
        "history of node '/Pad' (Pad)", "history of node '/Pad_1' (Pad)",
        "GRU state of node '/gru/GRU' (grurt.Chain)",       # the GRU with its wiring: a Chain (fuse_regions)
        "running sum of node '/CumSum' (CumSum)"]
    outputs = [stream.step(x[:, :, t]) for t in range(steps)]
    for t, (y_t, h_t) in enumerate(outputs):
        assert y_t.shape == (2, 3) and h_t.shape == (1, 2, 12)
        prefix_ref = run_tensor_graph(model.graph, x[:, :, :t + 1])
        assert max_diff(y_t, y_ref[:, t]) < ATOL and max_diff(h_t, prefix_ref[1]) < ATOL
    stepped = np.stack([o[0] for o in outputs], 1)
    assert max_diff(stepped, y) < ATOL and max_diff(outputs[-1][1], h) < ATOL
    # blocks of any split, against the steps and the whole run
    stream.reset()
    first, second = stream.run(x[:, :, :4]), stream.run(x[:, :, 4:])
    assert first[0].shape == (2, 4, 3) and second[0].shape == (2, steps - 4, 3)
    blocks = np.concatenate([first[0], second[0]], 1)
    assert max_diff(blocks, stepped) < ATOL and max_diff(blocks, y) < ATOL
    assert max_diff(second[1], h) < ATOL


def test_conv_stack_reset_and_state_round_trip(conv_stack):
    _, model, x = conv_stack
    stream = model.stream(batch=2, time_axes={"x": 2})
    first = [stream.step(x[:, :, t])[0] for t in range(5)]
    saved = stream.state
    assert [s.shape for s in saved] == [(2, 1, 2, 8), (2, 4, 1, 8), (1, 2, 12), (2, 1, 3)]
    rest = [stream.step(x[:, :, t])[0] for t in range(5, 9)]
    stream.state = saved                                  # back to after frame 5
    again = [stream.step(x[:, :, t])[0] for t in range(5, 9)]
    assert all(np.array_equal(a, b) for a, b in zip(rest, again))
    stream.reset()
    assert all(not s.any() for s in stream.state)
    assert all(np.array_equal(a, stream.step(x[:, :, t])[0]) for t, a in enumerate(first))
    with pytest.raises(InputError, match=r"state\[2\].*GRU state"):
        stream.state = saved[:2] + [np.zeros((1, 2, 11))] + saved[3:]
    with pytest.raises(InputError, match="list of 4 arrays"):
        stream.state = saved[:2]
    with pytest.raises(InputError, match="a frame has shape"):
        stream.step(x[:, :, :2])


def test_attention_decoder_streams_with_static_encoder_outputs(decoder, monkeypatch):
    module, model, tokens, enc = decoder
    y = model.run([tokens, enc])
    with torch.no_grad():
        y_torch = module(torch.from_numpy(tokens), torch.from_numpy(enc)).numpy()
    y_ref = run_tensor_graph(model.graph, [tokens, enc])
    assert max_diff(y, y_torch) < ATOL and max_diff(y, y_ref) < ATOL

    runs = []                     # the arrays each plan run gets: the static part runs once per stream
    original = Plan.run
    monkeypatch.setattr(Plan, "run", lambda plan, arrays: runs.append([a.shape for a in arrays])
                        or original(plan, arrays))
    original_step = StepPlan.run                  # a step's plan of one frame
    monkeypatch.setattr(StepPlan, "run", lambda plan, arrays: runs.append([a.shape for a in arrays])
                        or original_step(plan, arrays))
    stream = model.stream(batch=2, time_axes={"tokens": 1}, static={"enc": enc})
    assert runs == [[enc.shape]]                          # W·enc, computed once
    steps = [stream.step(tokens[:, t]) for t in range(tokens.shape[1])]
    # each step gets the ids, W·enc[:, None] computed once, enc (for the context) and the GRU state
    assert runs[1:] == [[(2, 1), (2, 1, 5, 7), enc.shape, (1, 2, 10)]] * tokens.shape[1]
    assert max_diff(np.stack(steps, 1), y) < ATOL
    assert max_diff(np.stack(steps, 1), y_ref) < ATOL
    # a new stream with other encoder outputs (another length): computed once again
    enc2 = np.random.default_rng(3).standard_normal((2, 7, 10)).astype(np.float32)
    stream.reset(static={"enc": enc2})
    assert len(runs) == 2 + tokens.shape[1]
    block = stream.run(tokens[:, :4])
    stream.reset()                                        # the same static inputs: nothing recomputed
    assert len(runs) == 3 + tokens.shape[1]
    assert max_diff(block, model.run([tokens[:, :4], enc2])) < ATOL


def test_a_causal_conv_with_its_own_pads_and_the_default_time_axis():
    # x (B, C, T) with a dim named "T": the default rule finds time; Conv pads (2, 0) on time.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    graph = TensorGraph(
        (TensorInput("x", "float32", ("B", 3, "T")),),
        (TensorNode("Conv", ("x", "w"), ("c",), {"pads": (2, 0), "dilations": (1,)}, "conv"),
         TensorNode("MaxPool", ("c",), ("p",), {"kernel_shape": (2,), "pads": (1, 0)}, "pool"),
         TensorNode("Tanh", ("p",), ("y",), {}, "tanh")),
        ("y",), {"w": w})
    model = grurt.TensorModel(graph)
    x = rng.standard_normal((1, 3, 10)).astype(np.float32)
    y, y_ref = model.run(x), run_tensor_graph(graph, x)
    stream = model.stream()
    assert stream.time_axes == {"x": 2}
    stepped = np.stack([stream.step(x[:, :, t]) for t in range(10)], -1)
    assert max_diff(stepped, y) < ATOL and max_diff(stepped, y_ref) < ATOL
    stream.reset()
    assert max_diff(np.concatenate([stream.run(x[:, :, :3]), stream.run(x[:, :, 3:])], -1), y_ref) < ATOL


class _Head(nn.Module):
    """A linear layer (fixing the features' size), ``body``, and an einsum (a general graph)."""

    def __init__(self, body, width=3):
        super().__init__()
        self.linear, self.body = nn.Linear(3, 3), body
        self.w = nn.Parameter(torch.randn(width, 2))       # width: the body's output features

    def forward(self, x):                                   # (B, T, 3)
        return torch.einsum("btf,fo->bto", self.body(self.linear(x)), self.w)


class _Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=1)


class _Mean(nn.Module):
    def forward(self, x):
        return x - x.mean(1, keepdim=True)


class _BiGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 2, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.gru(x)[0]


class _Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose1d(3, 3, 2, stride=2)

    def forward(self, x):                                   # (B, T, C)
        return self.up(x.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("module, node, why", [
    (_Softmax(), r"node '/body/Softmax' \(Softmax\)", "mixes the frames along time"),
    (_Mean(), r"node '/body/ReduceMean' \(ReduceMean\)", "mixes the frames along time"),
    # the GRU with its wiring is a grurt.Chain named after it (grurt.fusion.fuse_regions)
    (_Head(_BiGRU(), width=4), r"node '/body/gru/GRU' \(grurt.Chain\)",
     "layer 0 is a bidirectional GRU, which reads the sequence from its end"),
    (_Upsample(), r"node '/body/up/ConvTranspose' \(ConvTranspose\)", "mixes the frames along time"),
])
def test_refusals_name_the_node(module, node, why):
    torch.manual_seed(0)
    module = module if isinstance(module, _Head) else _Head(module)
    model = grurt.from_torch(module.eval(), torch.randn(2, 6, 3))
    assert isinstance(model, grurt.TensorModel)
    with pytest.raises(UnsupportedModelError, match=f"{node}: {why}.*cannot stream"):
        model.stream(batch=2, time_axes={"x": 1})
    model.run(np.zeros((2, 6, 3), np.float32))             # it still runs whole


def test_time_axes_rule_and_errors(decoder):
    _, model, tokens, enc = decoder
    with pytest.raises(InputError, match=r"which axes are time\? inputs \['tokens', 'enc'\] could each be.*"
                                         "time_axes="):
        model.stream(batch=2, static={"enc": enc})
    with pytest.raises(InputError, match="'nope', which is not an input"):
        model.stream(time_axes={"nope": 1})
    with pytest.raises(InputError, match="not an axis"):
        model.stream(time_axes={"tokens": 2})
    with pytest.raises(InputError, match=r"static inputs \['enc'\] must be given"):
        model.stream(batch=2, time_axes={"tokens": 1})
    # enc as a second sequence: W·enc[:, None] + U·h[:, :, None] pairs every two frames
    with pytest.raises(UnsupportedModelError, match=r"node '/Add' \(Add\): gives '/Add_output_0' with time on "
                                                    "more than one axis; this model cannot stream"):
        model.stream(batch=2, time_axes={"tokens": 1, "enc": 1})
