"""Whole models beyond the fused layers, each run by grurt's general tensor graph and compared,
on inputs of other sizes than the export's example, with

* PyTorch (the module itself), through ``grurt.from_torch(module, example)``;
* onnxruntime on the very file ``from_torch`` exports (the TorchScript exporter, opset 17,
  every input axis but those of size 1 dynamic), loaded with ``grurt.load``;
* grurt's float64 reference (``grurt.reference.run_tensor_graph``) on that file's graph.

All to ATOL (tests/tolerances.py); integer outputs (argmax) exactly. Every model is also exported
with ``torch.onnx.export(..., dynamo=True)`` and loaded with ``grurt.load`` (vs PyTorch and onnxruntime).
"""
import math
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import grurt  # noqa: E402
from grurt.importers.torch_export import _input_names, _output_names, export_general  # noqa: E402
from grurt.reference import run_tensor_graph  # noqa: E402
from grurt.tensor_model import TensorModel  # noqa: E402
from tolerances import ATOL  # noqa: E402


# ---- the models ----

class AttentionPooling(nn.Module):
    """BiGRU, attention pooling over time, a classifier."""

    def __init__(self, features=6, hidden=8, classes=4):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * hidden, 1)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        weights = torch.softmax(self.score(out), dim=1)        # (B, T, 1)
        return self.out((out * weights).sum(1))


class Autoencoder(nn.Module):
    """A GRU encoder's last state repeated over time into a GRU decoder."""

    def __init__(self, features=5, hidden=7):
        super().__init__()
        self.encoder = nn.GRU(features, hidden, batch_first=True)
        self.decoder = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, features)

    def forward(self, x):
        _, h = self.encoder(x)                                  # (1, B, H)
        code = h.transpose(0, 1)                                # (B, 1, H)
        y, _ = self.decoder(code.repeat(1, x.shape[1], 1))
        return self.out(y) + code.expand(-1, x.shape[1], -1).mean(-1, keepdim=True)


class GeluPreluHead(nn.Module):
    def __init__(self, features=4, hidden=8):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.hidden = nn.Linear(hidden, 12)
        self.prelu = nn.PReLU(12, init=0.1)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.out(self.prelu(F.gelu(self.hidden(y[:, -1]))))


class BmmAttention(nn.Module):
    def __init__(self, features=5, hidden=8):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.query = nn.Linear(hidden, hidden)
        self.out = nn.Linear(2 * hidden, 3)

    def forward(self, x):
        y, _ = self.gru(x)
        scores = torch.bmm(self.query(y), y.transpose(1, 2)) / math.sqrt(y.shape[-1])
        context = torch.bmm(torch.softmax(scores, dim=-1), y)
        return self.out(torch.cat([y, context], dim=-1))


class DecoderStep(nn.Module):
    """One greedy step of a GRUCell decoder: token ids (B,) and the state in, the next ids and state out."""

    def __init__(self, vocabulary=11, embedding=6, hidden=9):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.cell = nn.GRUCell(embedding, hidden)
        self.out = nn.Linear(hidden, vocabulary)

    def forward(self, tok, h):
        h = self.cell(self.embed(tok), h)
        return self.out(h).argmax(-1), h


class BahdanauStep(nn.Module):
    """One step of an additive-attention (Bahdanau) decoder: a token id per sequence (B,), the
    hidden state (B, H) and the encoder outputs (B, S, E) in; logits, the next id and state out."""

    def __init__(self, vocabulary=13, embedding=6, hidden=8, encoded=10, attention=7):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.keys = nn.Linear(encoded, attention, bias=False)
        self.query = nn.Linear(hidden, attention)
        self.energy = nn.Linear(attention, 1, bias=False)
        self.cell = nn.GRUCell(embedding + encoded, hidden)
        self.out = nn.Linear(hidden + encoded, vocabulary)

    def forward(self, tok, h, enc):
        energy = self.energy(torch.tanh(self.keys(enc) + self.query(h)[:, None]))   # (B, S, 1)
        weights = torch.softmax(energy, dim=1)
        context = (weights * enc).sum(1)                                             # (B, E)
        h = self.cell(torch.cat([self.embed(tok), context], -1), h)
        logits = self.out(torch.cat([h, context], -1))
        return logits, logits.argmax(-1), h


class SiluMishHead(nn.Module):
    """SiLU and Mish on attention-pooled GRU outputs (on a chain of layers they are fused activations)."""

    def __init__(self, features=5, hidden=9):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.score = nn.Linear(hidden, 1)
        self.hidden = nn.Linear(hidden, 10)
        self.out = nn.Linear(10, 4)

    def forward(self, x):
        y, _ = self.gru(x)
        pooled = (y * torch.softmax(self.score(y), dim=1)).sum(1)
        return self.out(F.mish(F.silu(self.hidden(pooled))))


class GroupedLinear(nn.Module):
    """A linear layer per group of features, as DeepFilterNet writes it: an einsum."""

    def __init__(self, inputs, outputs, groups):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.randn(groups, inputs // groups, outputs // groups) / math.sqrt(inputs))

    def forward(self, x):                                       # (B, T, inputs)
        x = x.unflatten(-1, (self.groups, -1))                  # exported: an empty slice of the shape
        return torch.einsum("btgi,gio->btgo", x, self.weight).flatten(2)


class GroupedAroundGRU(nn.Module):
    def __init__(self, features=8, hidden=12, groups=4):
        super().__init__()
        self.inp = GroupedLinear(features, hidden, groups)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.outp = GroupedLinear(hidden, features, groups)

    def forward(self, x):
        y, _ = self.gru(torch.relu(self.inp(x)))
        return self.outp(y)


class DeepFilterEncoder(nn.Module):
    """The shape of DeepFilterNet's encoder: (B, 1, T, F) features, Conv2d over (time, freq) with
    causal time padding (F.pad), a strided Conv2d on frequency, a grouped linear (einsum), a GRU with
    its state in and out."""

    def __init__(self, freqs=8, channels=4, hidden=16, groups=2):
        super().__init__()
        self.conv0 = nn.Conv2d(1, channels, (3, 3), padding=(0, 1))
        self.conv1 = nn.Conv2d(channels, channels, (1, 3), stride=(1, 2), padding=(0, 1), groups=2)
        self.linear = GroupedLinear(channels * freqs // 2, hidden, groups)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, feat, h0):
        x = F.pad(feat, (0, 0, 2, 0))                           # two frames of history on time
        x = torch.relu(self.conv0(x))
        x = torch.relu(self.conv1(x))                           # (B, C, T, F/2)
        x = x.permute(0, 2, 1, 3).flatten(2)                    # (B, T, C·F/2)
        y, h = self.gru(self.linear(x), h0)
        return y, h


# ---- the checks ----

def _numpy(value):
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _args(inputs):
    """What run takes: the array of a model of one input, else the list."""
    return inputs[0] if len(inputs) == 1 else list(inputs)


def _torch_outputs(module, inputs):
    with torch.no_grad():
        out = module(*[torch.from_numpy(a) for a in inputs])
    return [_numpy(o) for o in (out if isinstance(out, tuple) else (out,))]


def _close(name, got, expected, what):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (name, what, got.shape, expected.shape)
    if expected.dtype.kind in "iub":
        assert np.array_equal(got, expected), (name, what)
        return 0.0
    error = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    assert error <= ATOL, (name, what, error)
    return error


def _export_file(module, example, path):
    """The file from_torch reads when the fused layers do not cover the module."""
    names = _input_names(module, len(example))
    args = tuple(torch.from_numpy(a) for a in example)
    with torch.no_grad():
        output_names = _output_names(module(*args))
    export_general(torch, module, args, path, names, output_names)


def check(name, module, example, others, tmp_path):
    """from_torch vs torch, and the exported file in grurt vs onnxruntime and the reference, on
    ``others`` (inputs of other sizes); returns the largest error seen."""
    torch.manual_seed(0)
    module.eval()
    model = grurt.from_torch(module, tuple(torch.from_numpy(a) for a in example))
    assert isinstance(model, TensorModel), (name, model)
    path = os.path.join(tmp_path, f"{name}.onnx")
    _export_file(module, example, path)
    loaded = grurt.load(path)
    assert isinstance(loaded, TensorModel)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for inputs in [example] + others:
        expected = _torch_outputs(module, inputs)
        got = model.run(_args(inputs))
        got = list(got) if isinstance(got, tuple) else [got]
        feed = {arg.name: a for arg, a in zip(session.get_inputs(), inputs)}
        from_ort = session.run(None, feed)
        from_file = loaded.run(_args(inputs))
        from_file = list(from_file) if isinstance(from_file, tuple) else [from_file]
        reference = run_tensor_graph(loaded.graph, _args(inputs))
        reference = list(reference) if isinstance(reference, tuple) else [reference]
        for k, e in enumerate(expected):
            worst = max(worst, _close(name, got[k], e, "grurt vs torch"),
                        _close(name, from_file[k], from_ort[k], "grurt vs onnxruntime"),
                        _close(name, reference[k], from_file[k], "grurt vs reference"),
                        _close(name, from_ort[k], e, "onnxruntime vs torch"))
    return worst


def _randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_attention_pooling(tmp_path):
    rng = np.random.default_rng(1)
    check("attention", AttentionPooling(), (_randn(rng, 2, 7, 6),), [(_randn(rng, 3, 11, 6),), (_randn(rng, 1, 4, 6),)],
          tmp_path)


def test_autoencoder_repeat_expand(tmp_path):
    rng = np.random.default_rng(2)
    check("autoencoder", Autoencoder(), (_randn(rng, 2, 6, 5),), [(_randn(rng, 3, 9, 5),)], tmp_path)


def test_gelu_prelu_head(tmp_path):
    rng = np.random.default_rng(3)
    check("gelu_prelu", GeluPreluHead(), (_randn(rng, 2, 5, 4),), [(_randn(rng, 4, 8, 4),)], tmp_path)


def test_bmm_attention(tmp_path):
    rng = np.random.default_rng(4)
    check("bmm", BmmAttention(), (_randn(rng, 2, 6, 5),), [(_randn(rng, 3, 10, 5),)], tmp_path)


def test_gru_cell_decoder_step(tmp_path):
    rng = np.random.default_rng(5)

    def inputs(batch):
        return (rng.integers(0, 11, batch).astype(np.int64), _randn(rng, batch, 9))

    check("decoder_step", DecoderStep(), inputs(3), [inputs(5), inputs(2)], tmp_path)


def test_bahdanau_decoder_step(tmp_path):
    rng = np.random.default_rng(10)

    def inputs(batch, steps):
        return (rng.integers(0, 13, batch).astype(np.int64), _randn(rng, batch, 8), _randn(rng, batch, steps, 10))

    check("bahdanau_step", BahdanauStep(), inputs(2, 5), [inputs(4, 9), inputs(1, 3)], tmp_path)


def test_silu_mish_head(tmp_path):
    rng = np.random.default_rng(11)
    check("silu_mish", SiluMishHead(), (_randn(rng, 2, 6, 5),), [(_randn(rng, 3, 4, 5),)], tmp_path)


def test_grouped_linear_einsum(tmp_path):
    """A batch of 1 in the example: the exporter bakes the zero state of this GRU (no h0) at the
    example's batch size, which then broadcasts to any batch only from 1 (its own warning says so)."""
    rng = np.random.default_rng(6)
    check("grouped", GroupedAroundGRU(), (_randn(rng, 1, 5, 8),), [(_randn(rng, 3, 7, 8),)], tmp_path)


class SqueezeChannel(nn.Module):
    """(B, 1, T, F) → squeeze(1) → GRU: exported with the size-1 axis dynamic, torch writes an If."""

    def __init__(self, features=6, hidden=5):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)

    def forward(self, x):
        return self.gru(x.squeeze(1))[0]


def test_squeezed_axis_stays_fixed(tmp_path):
    rng = np.random.default_rng(9)
    check("squeeze", SqueezeChannel(), (_randn(rng, 2, 1, 4, 6),), [(_randn(rng, 3, 1, 7, 6),)], tmp_path)


def test_deepfilter_encoder(tmp_path):
    rng = np.random.default_rng(7)
    check("deepfilter", DeepFilterEncoder(), (_randn(rng, 1, 1, 6, 8), _randn(rng, 1, 1, 16)),
          [(_randn(rng, 3, 1, 10, 8), _randn(rng, 1, 3, 16))], tmp_path)


# ---- the dynamo exporter ----

def _dynamo_file(module, example, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(torch.from_numpy(a) for a in example), path, dynamo=True,
                          verbose=False)


@pytest.mark.parametrize("name, make, example", [
    ("attention", AttentionPooling, lambda rng: (_randn(rng, 2, 7, 6),)),
    ("deepfilter", DeepFilterEncoder, lambda rng: (_randn(rng, 2, 1, 6, 8), _randn(rng, 1, 2, 16))),
    ("autoencoder", Autoencoder, lambda rng: (_randn(rng, 2, 6, 5),)),
    ("gelu_prelu", GeluPreluHead, lambda rng: (_randn(rng, 2, 5, 4),)),
    ("silu_mish", SiluMishHead, lambda rng: (_randn(rng, 2, 6, 5),)),
    ("bmm", BmmAttention, lambda rng: (_randn(rng, 2, 6, 5),)),
    ("decoder_step", DecoderStep, lambda rng: (rng.integers(0, 11, 3).astype(np.int64), _randn(rng, 3, 9))),
    ("bahdanau_step", BahdanauStep, lambda rng: (rng.integers(0, 13, 2).astype(np.int64), _randn(rng, 2, 8),
                                                 _randn(rng, 2, 5, 10))),
    ("grouped", GroupedAroundGRU, lambda rng: (_randn(rng, 1, 5, 8),)),
])
def test_dynamo_export(name, make, example, tmp_path):
    rng = np.random.default_rng(8)
    torch.manual_seed(1)
    module = make().eval()
    inputs = example(rng)
    path = os.path.join(tmp_path, f"{name}.onnx")
    _dynamo_file(module, inputs, path)
    model = grurt.load(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = model.run(_args(inputs))
    got = list(got) if isinstance(got, tuple) else [got]
    from_ort = session.run(None, {arg.name: a for arg, a in zip(session.get_inputs(), inputs)})
    for k, expected in enumerate(_torch_outputs(module, inputs)):
        _close(name, got[k], expected, "grurt vs torch")
        _close(name, got[k], from_ort[k], "grurt vs onnxruntime")
