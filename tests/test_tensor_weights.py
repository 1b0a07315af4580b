"""Reduced-precision GRU weights (bf16, int8) in a general graph: ``TensorModel.with_weights``.

Tolerances: against the float64 reference of the graph with its GRU weights rounded as the mode
stores them (``precision.values(precision.stored(W))``): ``ATOL`` where this CPU multiplies the
stored weights exactly (the widening path), ``LOWP_BUDGETS[mode]`` where its dot path rounds the
inputs too; against PyTorch's float32 module: ``LOWP_BUDGETS[mode]``. The GRU node of a general
graph and the fused Model of the same GRU in the same mode give the same bits (``np.array_equal``),
as do save/load and pickle round trips.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest

import grurt
from grurt import _kernels, precision
from grurt.errors import InputError, UnsupportedModelError
from grurt.reference import run_tensor_graph
from grurt.tensor_graph import TensorGraph

from tolerances import ATOL, LOWP_BUDGETS

torch = pytest.importorskip("torch")
MODES = ("bf16", "int8")


class AttentionPooling(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.gru = torch.nn.GRU(6, 24, batch_first=True, bidirectional=True)
        self.score, self.head = torch.nn.Linear(48, 1), torch.nn.Linear(48, 4)

    def forward(self, x):
        y, _ = self.gru(x)
        pooled = (y * torch.softmax(self.score(y), dim=1)).sum(1)
        return self.head(pooled), y


@pytest.fixture(scope="module")
def net():
    module = AttentionPooling().eval()
    x = np.random.default_rng(4).standard_normal((3, 20, 6)).astype(np.float32)
    model = grurt.from_torch(module, torch.from_numpy(x))
    assert isinstance(model, grurt.TensorModel)
    return module, model, x


def _rounded(graph: TensorGraph, mode: str) -> TensorGraph:
    """The graph with every GRU's W and R replaced by the float32 values ``mode`` stores."""
    constants = dict(graph.constants)
    for node in graph.nodes:
        if node.op == "GRU":
            for name in node.inputs[1:3]:
                constants[name] = precision.values(precision.stored(constants[name], mode), mode)
    return TensorGraph(graph.inputs, graph.nodes, graph.outputs, constants)


@pytest.mark.parametrize("mode", MODES)
def test_against_the_reference_of_rounded_weights_and_pytorch(net, mode):
    module, model, x = net
    reduced = model.with_weights(mode)
    assert reduced.weights == mode and model.weights == "float32"
    assert f"weights={mode}" in repr(reduced)
    logits, y = reduced.run(x)
    ref_logits, ref_y = run_tensor_graph(_rounded(model.graph, mode), x)
    limit = LOWP_BUDGETS[mode] if _kernels.lowp_paths()[mode] == "dot" else ATOL
    assert np.abs(logits - ref_logits).max() <= limit and np.abs(y - ref_y).max() <= limit
    with torch.no_grad():
        torch_logits, torch_y = (t.numpy() for t in module(torch.from_numpy(x)))
    error = max(np.abs(logits - torch_logits).max(), np.abs(y - torch_y).max())
    assert error <= LOWP_BUDGETS[mode]
    float_logits, _ = model.run(x)
    assert not np.array_equal(logits, float_logits)          # the mode is in effect


@pytest.mark.parametrize("mode", MODES)
def test_the_gru_node_gives_the_fused_models_bits(net, mode):
    module, model, x = net
    _, y = model.with_weights(mode).run(x)
    fused = grurt.from_torch([module.gru]).with_weights(mode)
    assert np.array_equal(y, fused.run(x))


@pytest.mark.parametrize("mode", MODES)
def test_save_pickle_stream_and_load_keep_the_mode(net, mode, tmp_path):
    _, model, x = net
    reduced = model.with_weights(mode)
    expected = reduced.run(x)
    grurt.save(reduced, tmp_path / "m.npz")
    for again in (grurt.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(reduced)),
                  grurt.load(tmp_path / "m.npz", weights="float32").with_weights(mode)):
        assert again.weights == mode
        assert all(np.array_equal(a, b) for a, b in zip(again.run(x), expected))
    assert grurt.load(tmp_path / "m.npz", weights="float32").weights == "float32"
    assert reduced.with_weights("float32").weights == "float32" and reduced.with_weights(mode) is reduced


def test_a_stream_keeps_the_mode(tmp_path):
    torch.manual_seed(5)
    conv = torch.nn.Conv1d(3, 8, 3)

    class Causal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gru = conv, torch.nn.GRU(8, 16, batch_first=True)

        def forward(self, x):                       # (B, T, 3)
            y = torch.nn.functional.gelu(self.conv(torch.nn.functional.pad(x.transpose(1, 2), (2, 0))))
            return self.gru(y.transpose(1, 2))[0]

    x = np.random.default_rng(6).standard_normal((2, 9, 3)).astype(np.float32)
    model = grurt.from_torch(Causal().eval(), torch.from_numpy(x)).with_weights("int8")
    whole = model.run(x)
    stream = model.stream(batch=2, time_axes={"x": 1})
    stepped = np.stack([stream.step(x[:, t]) for t in range(x.shape[1])], 1)
    assert np.abs(stepped - whole).max() <= ATOL
    assert np.abs(stepped - model.with_weights("float32").run(x)).max() > ATOL   # int8 in the stream too


def test_bad_modes_are_refused_by_name(net, tmp_path):
    _, model, _ = net
    with pytest.raises(InputError, match="weights must be one of 'float32', 'bf16', 'int8', got 'fp8'"):
        model.with_weights("fp8")
    grurt.save(model.with_weights("bf16"), tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as archive:                 # the header says another mode
        members = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(np.load(tmp_path / "m.npz")["header"].item())
    header["weights"] = "fp8"
    buffer = io.BytesIO()
    np.save(buffer, np.array(json.dumps(header)))
    members["header.npy"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(UnsupportedModelError, match="header: weights 'fp8' are not supported"):
        grurt.load(tmp_path / "bad.npz")


def test_a_static_part_keeps_the_mode():
    """An encoder GRU over a static input (computed once per stream) runs in the model's mode too."""
    torch.manual_seed(7)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = torch.nn.GRU(4, 8, batch_first=True), torch.nn.GRU(3, 8, batch_first=True)

        def forward(self, x, enc):                  # x (B, T, 3) frames, enc (B, S, 4) static
            keys, _ = self.encoder(enc)
            y, _ = self.decoder(x)
            return torch.softmax(y @ keys.transpose(1, 2), dim=-1) @ keys

    rng = np.random.default_rng(8)
    x, enc = (rng.standard_normal(s).astype(np.float32) for s in ((2, 6, 3), (2, 5, 4)))
    model = grurt.from_torch(Decoder().eval(), (torch.from_numpy(x), torch.from_numpy(enc))).with_weights("int8")
    whole = model.run([x, enc])
    stream = model.stream(batch=2, time_axes={"x": 1}, static={"enc": enc})
    stepped = np.stack([stream.step(x[:, t]) for t in range(x.shape[1])], 1)
    assert np.abs(stepped - whole).max() <= ATOL
