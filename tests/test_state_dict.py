"""grurt.from_state_dict: PyTorch parameter names → models, from .npz, .safetensors, .pt and
mappings, against the torch modules' own outputs (max abs difference ≤ ATOL = 1e-5), and the
errors for what names cannot tell."""
from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest

import grurt
from grurt.spec import GRU, Activation, Dense, LastStep

from gru_testing import ATOL

torch = pytest.importorskip("torch")
nn = torch.nn


class GRUHead(nn.Module):
    """nn.GRU (any settings) → nn.Linear, on the last step or on every step."""

    def __init__(self, inputs=3, hidden=6, layers=1, bidirectional=False, bias=True, out=2, last=True):
        super().__init__()
        self.gru = nn.GRU(inputs, hidden, layers, batch_first=True, bidirectional=bidirectional, bias=bias)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), out)
        self.last = last

    def forward(self, x):
        y = self.gru(x)[0]
        return self.fc(y[:, -1] if self.last else y)


class CellNet(nn.Module):
    """nn.GRUCell stepped over the sequence, nn.Linear on every step's state."""

    def __init__(self, inputs=3, hidden=5, bias=True):
        super().__init__()
        self.cell, self.out = nn.GRUCell(inputs, hidden, bias=bias), nn.Linear(hidden, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            states.append(h)
        return self.out(torch.stack(states, 1))


NETS = {
    "gru_linear_last": (lambda: GRUHead(), {"last_step": True}),
    "gru_linear_per_step": (lambda: GRUHead(last=False), {}),
    "bidirectional_2_layers": (lambda: GRUHead(layers=2, bidirectional=True), {"last_step": True}),
    "bias_false": (lambda: GRUHead(layers=2, bias=False), {"last_step": True}),
    "gru_cell": (lambda: CellNet(), {}),
    "gru_cell_bias_false": (lambda: CellNet(bias=False), {}),
}


def torch_output(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def save_state_dict(net, path):
    state = net.state_dict()
    if path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("source", ["mapping", ".npz", ".safetensors", ".pt"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_state_dict_matches_torch(name, source, tmp_path):
    if source == ".safetensors":
        pytest.importorskip("safetensors")
    torch.manual_seed(hash(name) % 1000)
    make, options = NETS[name]
    net = make().eval()
    x = np.random.default_rng(0).standard_normal((4, 9, 3)).astype(np.float32)
    what = net.state_dict() if source == "mapping" else save_state_dict(net, tmp_path / f"net{source}")
    model = grurt.from_state_dict(what, **options)
    out = model.run(x)
    want = torch_output(net, x)
    assert out.shape == want.shape
    assert np.abs(out - want).max() <= ATOL                  # ≤ 1e-5 against torch
    grus = [layer for layer in model.layers if isinstance(layer, GRU)]
    assert all(layer.linear_before_reset for layer in grus)


def test_state_dict_of_numpy_arrays_and_a_bare_gru(tmp_path):
    """A bare nn.GRU's names have no prefix; values may be numpy arrays."""
    torch.manual_seed(1)
    gru = nn.GRU(2, 4, batch_first=True)
    model = grurt.from_state_dict({k: v.numpy() for k, v in gru.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((2, 5, 2)).astype(np.float32)
    with torch.no_grad():
        want = gru(torch.from_numpy(x))[0].numpy()
    assert np.abs(model.run(x) - want).max() <= ATOL         # ≤ 1e-5


def test_activations_scalers_modules_and_key(tmp_path):
    sklearn = pytest.importorskip("sklearn.preprocessing")
    torch.manual_seed(2)
    net = GRUHead(out=3)
    x = np.random.default_rng(2).standard_normal((3, 7, 3)).astype(np.float32)
    # activations by module prefix: into the Dense for a Linear, an Activation layer after a GRU
    model = grurt.from_state_dict(net.state_dict(), last_step=True, activations={"fc": "softmax", "gru": "relu"})
    assert isinstance(model.layers[-1], Dense) and model.layers[-1].activation.kind == "softmax"
    assert [type(layer) for layer in model.layers] == [GRU, LastStep, Activation, Dense]
    with torch.no_grad():
        hidden = torch.relu(net.gru(torch.from_numpy(x))[0][:, -1])
        want = torch.softmax(net.fc(hidden), -1).numpy()
    assert np.abs(model.run(x) - want).max() <= ATOL          # ≤ 1e-5
    # scalers: raw input in, real units out
    scaler_in = sklearn.StandardScaler().fit(np.random.default_rng(3).normal(5, 2, (50, 3)))
    scaler_out = sklearn.MinMaxScaler().fit(np.random.default_rng(4).normal(0, 9, (50, 3)))
    scaled = grurt.from_state_dict(net.state_dict(), last_step=True, input_scaler=scaler_in, output_scaler=scaler_out)
    raw = (x * 2 + 5).astype(np.float32)
    want = scaler_out.inverse_transform(torch_output(net, scaler_in.transform(raw.reshape(-1, 3)).reshape(
        raw.shape).astype(np.float32)))
    assert np.abs(scaled.run(raw) - want).max() <= 1e-4        # outputs in units of ~9: 1e-5 relative
    # a checkpoint dict: key= picks the state dict
    checkpoint = {"epoch": torch.tensor(3), "model_state_dict": net.state_dict()}
    with pytest.raises(grurt.ModelFormatError, match="pass key='model_state_dict'"):
        grurt.from_state_dict(checkpoint)
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    loaded = grurt.from_state_dict(tmp_path / "ckpt.pt", key="model_state_dict", last_step=True)
    assert np.abs(loaded.run(x) - torch_output(net, x)).max() <= ATOL     # ≤ 1e-5


class HeadFirst(nn.Module):
    """The Linear is assigned before the GRU in __init__: the state dict lists it first."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.gru = nn.GRU(3, 6, batch_first=True)

    def forward(self, x):
        return self.fc(self.gru(x)[0])


def test_module_order_not_the_call_order(tmp_path):
    torch.manual_seed(3)
    net = HeadFirst()
    with pytest.raises(grurt.ModelFormatError, match=r"module 'gru' \(GRU\) takes 3 features.*modules=\[\.\.\.\]"):
        grurt.from_state_dict(net.state_dict())
    x = np.random.default_rng(5).standard_normal((2, 4, 3)).astype(np.float32)
    model = grurt.from_state_dict(net.state_dict(), modules=["gru", "fc"])
    assert np.abs(model.run(x) - torch_output(net, x)).max() <= ATOL     # ≤ 1e-5
    # safetensors stores names sorted: the sizes fix the order when exactly one chains
    pytest.importorskip("safetensors")
    model = grurt.from_state_dict(save_state_dict(net, tmp_path / "net.safetensors"))
    assert np.abs(model.run(x) - torch_output(net, x)).max() <= ATOL     # ≤ 1e-5


def test_safetensors_order_that_sizes_cannot_fix(tmp_path):
    pytest.importorskip("safetensors")
    net = nn.Sequential(nn.GRU(4, 4, batch_first=True))
    state = {"a.weight": torch.zeros(4, 4), "a.bias": torch.zeros(4),
             **{"b." + k: v for k, v in nn.GRU(4, 4).state_dict().items()}}
    del net
    from safetensors.torch import save_file
    save_file(state, tmp_path / "square.safetensors")
    with pytest.raises(grurt.ModelFormatError, match="chain in more than one order: pass modules="):
        grurt.from_state_dict(tmp_path / "square.safetensors")
    assert len(grurt.from_state_dict(tmp_path / "square.safetensors", modules=["b", "a"]).layers) == 2


@pytest.mark.parametrize("module, match", [
    (nn.Embedding(10, 3), r"module 'm' has a lone 2-D 'weight' \(10, 3\).*types=\{'m': 'Linear'\}"),
    (nn.Conv1d(3, 4, 2), r"module 'm' \(nn.Conv1d\): a state dict does not store a Conv1d's padding"),
    (nn.Conv2d(3, 4, 2), r"module 'm' \(an unknown module\).*grurt reads the parameters of nn.GRU, nn.GRUCell, "),
    (nn.BatchNorm1d(3), None),                # read since the conv/norm merge: a Scale after the GRU
    (nn.LayerNorm(3), None),
    (nn.LSTM(3, 4), r"nn.LSTM/LSTMCell parameters; grurt runs GRUs"),
    (nn.RNNCell(3, 4), r"nn.RNN/RNNCell parameters"),
    (nn.GRU(3, 4), None),
])
def test_modules_grurt_does_not_read(module, match):
    gru = {f"g.{k}": v for k, v in nn.GRU(3, 3).state_dict().items()}
    state = {**gru, **{f"m.{k}": v for k, v in module.state_dict().items()}}
    if match is None:
        grurt.from_state_dict(state)          # a plain GRU, BatchNorm1d or LayerNorm after a GRU: fine
        return
    with pytest.raises(grurt.UnsupportedModelError, match=match):
        grurt.from_state_dict(state)


def test_linear_without_bias_needs_types():
    torch.manual_seed(4)
    gru, fc = nn.GRU(3, 5, batch_first=True), nn.Linear(5, 2, bias=False)
    state = {**{f"gru.{k}": v for k, v in gru.state_dict().items()}, "fc.weight": fc.weight.detach()}
    with pytest.raises(grurt.UnsupportedModelError, match="nn.Linear\\(bias=False\\) or nn.Embedding"):
        grurt.from_state_dict(state)
    model = grurt.from_state_dict(state, types={"fc": "Linear"})
    x = np.random.default_rng(6).standard_normal((2, 4, 3)).astype(np.float32)
    with torch.no_grad():
        want = fc(gru(torch.from_numpy(x))[0]).numpy()
    assert np.abs(model.run(x) - want).max() <= ATOL                     # ≤ 1e-5


def test_option_and_content_errors():
    state = {f"gru.{k}": v for k, v in nn.GRU(3, 4, 2).state_dict().items()}
    with pytest.raises(grurt.ModelFormatError, match=r"activations names \['head'\]"):
        grurt.from_state_dict(state, activations={"head": "tanh"})
    with pytest.raises(grurt.ModelFormatError, match=r"modules names \['rnn'\]"):
        grurt.from_state_dict(state, modules=["rnn"])
    with pytest.raises(grurt.UnsupportedModelError, match="unsupported activation 'swish'"):
        grurt.from_state_dict(state, activations={"gru": "swish"})
    broken = dict(state)
    del broken["gru.bias_hh_l1"]
    with pytest.raises(grurt.ModelFormatError, match=r"missing \['bias_hh_l1'\]"):
        grurt.from_state_dict(broken)
    with pytest.raises(grurt.ModelFormatError, match="NaN or infinity"):
        grurt.from_state_dict({**state, "gru.weight_hh_l0": torch.full((12, 4), float("nan"))})
    with pytest.raises(grurt.ModelFormatError, match="dtype bool"):
        grurt.from_state_dict({**state, "gru.weight_hh_l0": np.ones((12, 4), bool)})
    with pytest.raises(grurt.UnsupportedModelError, match="no nn.GRU or nn.GRUCell"):
        grurt.from_state_dict({"fc.weight": np.ones((2, 3)), "fc.bias": np.ones(2)})
    with pytest.raises(TypeError, match="a path or a mapping"):
        grurt.from_state_dict([1, 2])


def test_files_grurt_load_and_from_state_dict_tell_apart(tmp_path):
    state = {f"gru.{k}": v.numpy() for k, v in nn.GRU(3, 4).state_dict().items()}
    np.savez(tmp_path / "state.npz", **state)
    with pytest.raises(grurt.ModelFormatError, match=r"grurt.from_state_dict\(path\)"):
        grurt.load(tmp_path / "state.npz")
    grurt.save(grurt.from_state_dict(tmp_path / "state.npz"), tmp_path / "model.npz")
    with pytest.raises(grurt.ModelFormatError, match="a grurt model file, not a state dict; load it with grurt.load"):
        grurt.from_state_dict(tmp_path / "model.npz")
    with pytest.raises(grurt.UnsupportedModelError, match="unknown state-dict file type '.h5'"):
        (tmp_path / "x.h5").write_bytes(b"")
        grurt.from_state_dict(tmp_path / "x.h5")


def test_npz_state_dict_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "pickled.npz", **{"gru.weight_ih_l0": np.array([object()], dtype=object)})
    with pytest.raises(grurt.ModelFormatError, match="dtype object, expected numbers"):
        grurt.from_state_dict(tmp_path / "pickled.npz")
    # a member declaring far more elements than the limits allow is refused before it is read
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
        header["shape"] = (2**20, 2**20)
        with archive.open("gru.weight_ih_l0.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
    with pytest.raises(grurt.ModelFormatError, match="more than 268435456"):
        grurt.from_state_dict(tmp_path / "huge.npz")


def test_pt_without_torch_says_what_to_do(tmp_path, monkeypatch):
    torch.save(nn.GRU(2, 3).state_dict(), tmp_path / "state.pt")
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch now raises ImportError
    with pytest.raises(ImportError, match="needs torch.*save the state dict as .npz or .safetensors"):
        grurt.from_state_dict(tmp_path / "state.pt")


def test_pt_files_are_loaded_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))
    torch.save({"gru.weight_ih_l0": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(grurt.ModelFormatError, match="not a readable .pt state dict"):
        grurt.from_state_dict(tmp_path / "evil.pt")


_NAMES = [f"gru.{kind}_l{k}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
          for k in (0, 1) for suffix in ("", "_reverse")] + \
    ["cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh", "fc.weight", "fc.bias", "weight",
     "bn.running_mean", "gru.weight_hr_l0", "x.y.weight_ih_l0"]


@pytest.mark.slow
def test_any_combination_of_names_and_shapes_loads_or_is_refused():
    """Hypothesis: state dicts made of known names with arbitrary shapes (0 to 7 per axis, 0-3 axes)
    give a Model or a GrurtError, never another exception."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(st.dictionaries(st.sampled_from(_NAMES), st.lists(st.sampled_from([0, 1, 2, 3, 4, 6, 12]),
                                                                         max_size=3), max_size=10))
    def check(shapes):
        state = {name: np.full(shape, 0.1, np.float32) for name, shape in shapes.items()}
        try:
            model = grurt.from_state_dict(state)
        except grurt.GrurtError:
            return
        model.run(np.zeros((1, 2, model.input_size), np.float32))

    check()
