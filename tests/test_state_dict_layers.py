"""grurt.from_state_dict with nn.Embedding, nn.Conv1d (+ nn.BatchNorm1d folded), nn.LayerNorm:
state dicts saved as .npz and .safetensors against the torch modules' own outputs (max abs
difference ≤ ATOL = 1e-5), and the options names cannot replace (conv padding, types, eps)."""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt.spec import GRU, Conv1D, Dense, Embedding, LastStep, LayerNorm, Scale

from gru_testing import ATOL

torch = pytest.importorskip("torch")
nn = torch.nn

from torch_testing import randomize_batchnorm  # noqa: E402 (needs torch)


class CausalCRNN(nn.Module):
    """(B, T, 5) → causal Conv1d 5→8 k=3 dilation 2 (left pad) → BatchNorm1d → ReLU → GRU(6) → Linear on the last step."""

    def __init__(self, affine=True, eps=1e-5):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv1d(5, 8, 3, dilation=2)
        self.bn = randomize_batchnorm(nn.BatchNorm1d(8, affine=affine, eps=eps), 2).eval()
        self.gru, self.fc = nn.GRU(8, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, x):
        h = nn.functional.pad(x.transpose(1, 2), (4, 0))
        h = torch.relu(self.bn(self.conv(h))).transpose(1, 2)
        return self.fc(self.gru(h)[0][:, -1])


class PaddedConvNet(nn.Module):
    """Conv1d with torch's own padding and stride → GRU → LayerNorm → Linear on every step."""

    def __init__(self, padding, stride=1):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv1d(4, 6, 4, padding=padding, stride=stride)
        self.gru, self.norm, self.fc = nn.GRU(6, 7, batch_first=True), nn.LayerNorm(7), nn.Linear(7, 3)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.fc(self.norm(self.gru(h)[0]))


class IdsNet(nn.Module):
    """nn.Embedding → GRU → Linear on the last step: the model takes token ids."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.emb, self.gru, self.fc = nn.Embedding(13, 4), nn.GRU(4, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, ids):
        return self.fc(self.gru(self.emb(ids))[0][:, -1])


def _state(net):
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _files(net, tmp_path):
    """The state dict as a mapping, an .npz and a .safetensors file."""
    state = _state(net)
    np.savez(tmp_path / "sd.npz", **state)
    sources = {"mapping": net.state_dict(), "npz": tmp_path / "sd.npz"}
    try:
        from safetensors.numpy import save_file
    except ImportError:
        return sources
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "sd.safetensors"))
    sources["safetensors"] = tmp_path / "sd.safetensors"
    return sources


def _expected(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("affine", [True, False])
def test_causal_crnn_with_batchnorm_folded(tmp_path, affine):
    net = CausalCRNN(affine).eval()
    x = np.random.default_rng(0).standard_normal((3, 11, 5)).astype(np.float32)
    want = _expected(net, x)
    for name, source in _files(net, tmp_path).items():
        model = grurt.from_state_dict(source, last_step=True, activations={"bn": "relu"},
                                      conv={"conv": {"padding": "causal", "dilation": 2}})
        assert [type(layer) for layer in model.layers] == [Conv1D, GRU, LastStep, Dense], name
        conv = model.layers[0]
        assert conv.causal and conv.activation.kind == "relu"             # BatchNorm and ReLU folded in
        assert np.abs(model.run(x) - want).max() <= ATOL, name                # ≤ 1e-5
        stream = model.stream(batch=3)                                      # a causal conv streams
        for t in range(x.shape[1]):
            out = stream.step(x[:, t])
        assert np.abs(out - want).max() <= ATOL, name


def test_batchnorm_eps_option(tmp_path):
    net = CausalCRNN(eps=1e-3).eval()
    x = np.random.default_rng(1).standard_normal((2, 9, 5)).astype(np.float32)
    options = dict(last_step=True, activations={"bn": "relu"}, conv={"conv": {"padding": (4, 0), "dilation": 2}})
    model = grurt.from_state_dict(net.state_dict(), eps={"bn": 1e-3}, **options)
    assert np.abs(model.run(x) - _expected(net, x)).max() <= ATOL
    default = grurt.from_state_dict(net.state_dict(), **options)          # torch's default 1e-5: a different model
    assert np.abs(default.run(x) - _expected(net, x)).max() > ATOL


@pytest.mark.parametrize("padding, stride, option", [
    (0, 1, "valid"), (2, 1, 2), ("same", 1, "same"), (1, 2, {"padding": 1, "stride": 2}),
])
def test_conv_padding_options_and_layer_norm(tmp_path, padding, stride, option):
    net = PaddedConvNet(padding, stride).eval()
    x = np.random.default_rng(2).standard_normal((2, 12, 4)).astype(np.float32)
    want = _expected(net, x)
    for name, source in _files(net, tmp_path).items():
        model = grurt.from_state_dict(source, conv={"conv": option})
        assert [type(layer) for layer in model.layers] == [Conv1D, GRU, LayerNorm, Dense], name
        got = model.run(x)
        assert got.shape == want.shape and np.abs(got - want).max() <= ATOL, name


def test_embedding_first_makes_an_ids_model(tmp_path):
    net = IdsNet().eval()
    ids = np.random.default_rng(3).integers(0, 13, (3, 7))
    want = _expected(net, ids)
    for name, source in _files(net, tmp_path).items():
        model = grurt.from_state_dict(source, last_step=True, types={"emb": "Embedding"})
        assert isinstance(model.layers[0], Embedding) and model.vocabulary == 13, name
        assert np.abs(model.run(ids) - want).max() <= ATOL, name


def test_embedding_needs_types_and_must_come_first():
    state = IdsNet().state_dict()
    with pytest.raises(grurt.UnsupportedModelError, match=r"types=\{'emb': 'Embedding'\}"):
        grurt.from_state_dict(state)
    with pytest.raises(grurt.ModelFormatError, match="must be the first module"):
        grurt.from_state_dict(state, types={"emb": "Embedding"}, modules=["gru", "emb", "fc"])
    with pytest.raises(grurt.ModelFormatError, match="not those of nn.Embedding"):
        grurt.from_state_dict(state, types={"emb": "Embedding", "gru": "Embedding"})


def test_conv_needs_its_padding():
    state = CausalCRNN().state_dict()
    with pytest.raises(grurt.UnsupportedModelError, match=r"does not store a Conv1d's padding: pass conv=\{'conv'"):
        grurt.from_state_dict(state)
    with pytest.raises(grurt.ModelFormatError, match="conv options"):
        grurt.from_state_dict(state, conv={"conv": {"stride": 2}})
    with pytest.raises(grurt.ModelFormatError, match="conv padding must be"):
        grurt.from_state_dict(state, conv={"conv": "left"})
    with pytest.raises(grurt.ModelFormatError, match="which is an nn.GRU"):
        grurt.from_state_dict(state, conv={"conv": 1, "gru": 1})
    with pytest.raises(grurt.ModelFormatError, match="which is an nn.Conv1d"):
        grurt.from_state_dict(state, conv={"conv": 1}, eps={"conv": 1e-3})


def test_batchnorm_after_a_gru_is_a_scale():
    torch.manual_seed(5)
    gru, bn, fc = nn.GRU(3, 4, batch_first=True), randomize_batchnorm(nn.BatchNorm1d(4), 6).eval(), nn.Linear(4, 2)
    state = {**{f"gru.{k}": v for k, v in gru.state_dict().items()},
             **{f"bn.{k}": v for k, v in bn.state_dict().items()}, **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    model = grurt.from_state_dict(state, last_step=True)
    assert [type(layer) for layer in model.layers] == [GRU, LastStep, Scale, Dense]
    x = np.random.default_rng(7).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        want = fc(bn(gru(torch.from_numpy(x))[0][:, -1])).numpy()
    assert np.abs(model.run(x) - want).max() <= ATOL


def test_lone_1d_weight_needs_types():
    torch.manual_seed(6)
    gru, norm = nn.GRU(3, 4, batch_first=True), nn.LayerNorm(4, bias=False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    state = {**{f"gru.{k}": v for k, v in gru.state_dict().items()}, "ln.weight": norm.weight.detach()}
    with pytest.raises(grurt.UnsupportedModelError, match=r"lone 1-D 'weight'.*types=\{'ln': 'LayerNorm'\}"):
        grurt.from_state_dict(state)
    model = grurt.from_state_dict(state, types={"ln": "LayerNorm"})
    x = np.random.default_rng(8).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        want = norm(gru(torch.from_numpy(x))[0]).numpy()
    assert np.abs(model.run(x) - want).max() <= ATOL
