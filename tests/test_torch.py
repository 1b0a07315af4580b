"""grurt.from_torch against PyTorch nn.GRU (torch 2.13.0 CPU). Tolerance: max abs difference
<= 1e-5 on outputs and on the returned states vs torch's h_n (default PyTorch init, inputs N(0, 1),
so every value is O(1)).

Layout conventions checked here: grurt always takes (B, T, I) (transpose for
batch_first=False); torch h0/h_n are (L·D, B, H) ordered [layer0 fwd, layer0 bwd, layer1 fwd, ...]
while grurt's initial_state/states are one (D, B, H) array per layer.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import torch
from torch import nn

import grurt
from tolerances import ATOL


@pytest.fixture(autouse=True)
def _torch_settings():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_run(gru: nn.GRU, x_btf: torch.Tensor, h0=None):
    """Run gru on batch-first x whatever its batch_first is; output (B, T, D*H) and h_n."""
    with torch.no_grad():
        out, h_n = gru(x_btf if gru.batch_first else x_btf.transpose(0, 1), h0)
    if not gru.batch_first:
        out = out.transpose(0, 1)
    return out.numpy(), h_n.numpy()


def split_state(h, layers, directions):
    """torch (L·D, B, H) -> grurt [(D, B, H)] * L."""
    return [np.ascontiguousarray(h[k * directions:(k + 1) * directions]) for k in range(layers)]


def max_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


CONFIGS = list(itertools.product((1, 2, 3), (False, True), (True, False), (True, False)))


@pytest.mark.parametrize("num_layers, bidirectional, batch_first, bias", CONFIGS,
                         ids=[f"L{c[0]}-{'bi' if c[1] else 'uni'}-{'bf' if c[2] else 'tf'}-{'bias' if c[3] else 'nobias'}"
                              for c in CONFIGS])
def test_gru_matches_torch(num_layers, bidirectional, batch_first, bias):
    torch.manual_seed(num_layers * 8 + bidirectional * 4 + batch_first * 2 + bias)
    I, H, B, T = 7, 33, 5, 23
    D = 2 if bidirectional else 1
    gru = nn.GRU(I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                 bias=bias, dropout=0.3 if num_layers > 1 else 0.0).eval()
    model = grurt.from_torch(gru)
    x = torch.randn(B, T, I)

    # no initial state
    want, want_h = torch_run(gru, x)
    got, states = model.run(x.numpy(), return_state=True)
    assert got.shape == (B, T, D * H)
    assert max_diff(got, want) <= ATOL
    assert [s.shape for s in states] == [(D, B, H)] * num_layers
    assert max_diff(np.concatenate(states), want_h) <= ATOL

    # with h0
    h0 = torch.randn(num_layers * D, B, H)
    want, want_h = torch_run(gru, x, h0)
    got, states = model.run(x.numpy(), initial_state=split_state(h0.numpy(), num_layers, D), return_state=True)
    assert max_diff(got, want) <= ATOL
    assert max_diff(np.concatenate(states), want_h) <= ATOL

    # one sequence, (T, I): torch's unbatched input is (T, I) too and h0 is (L·D, H)
    want, want_h = torch_run(gru, x[:1], h0[:, :1])
    got, states = model.run(x[0].numpy(), initial_state=[s[:, 0] for s in split_state(h0.numpy(), num_layers, D)],
                            return_state=True)
    assert max_diff(got, want[0]) <= ATOL
    assert max_diff(np.concatenate(states), want_h[:, 0]) <= ATOL


@pytest.mark.parametrize("H", [1, 64, 65, 130])
@pytest.mark.parametrize("B", [1, 4, 9])
def test_gru_sizes_match_torch(H, B):
    """One row, 3-row and 8-row tiles (B = 1, 4, 9); H = 64 is the largest the one-pass product
    covers (3H = 6 panels of 32 units), 65 the first beyond it, 130 a multi-pass product."""
    torch.manual_seed(H * 10 + B)
    gru = nn.GRU(5, H, batch_first=True, bidirectional=True)
    model = grurt.from_torch(gru)
    x = torch.randn(B, 40, 5)
    want, want_h = torch_run(gru, x)
    got, states = model.run(x.numpy(), return_state=True)
    assert max_diff(got, want) <= ATOL
    assert max_diff(states[0], want_h) <= ATOL


@pytest.mark.parametrize("container", ["sequential", "list", "tuple"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_linear_head_on_last_step(container, bidirectional):
    torch.manual_seed(11 + bidirectional)
    gru = nn.GRU(6, 20, num_layers=2, batch_first=True, bidirectional=bidirectional)
    fc = nn.Linear(gru.hidden_size * (2 if bidirectional else 1), 3)
    modules = {"sequential": nn.Sequential(gru, fc), "list": [gru, fc], "tuple": (gru, fc)}[container]
    model = grurt.from_torch(modules, last_step=True)
    x = torch.randn(4, 17, 6)
    with torch.no_grad():
        out, _ = gru(x)
        want = fc(out[:, -1]).numpy()
    got = model.run(x.numpy())
    assert got.shape == (4, 3)
    assert max_diff(got, want) <= ATOL
    # a single sequence gives the batch axis dropped
    assert max_diff(model.run(x[0].numpy()), want[0]) <= ATOL


def test_classifier_head_softmax_without_dim():
    """nn.Softmax() on (B, F) works over the features, as torch does after out[:, -1]."""
    torch.manual_seed(6)
    gru, fc = nn.GRU(3, 10, batch_first=True), nn.Linear(10, 4)
    model = grurt.from_torch([gru, fc, nn.Flatten(), nn.Softmax()], last_step=True)
    x = torch.randn(5, 8, 3)
    with torch.no_grad():
        want = torch.softmax(fc(gru(x)[0][:, -1]), dim=1).numpy()
    assert max_diff(model.run(x.numpy()), want) <= ATOL


def test_linear_head_on_every_step_with_activations():
    torch.manual_seed(5)
    gru = nn.GRU(4, 16, batch_first=True)
    fc1, fc2 = nn.Linear(16, 12), nn.Linear(12, 5, bias=False)
    acts = [nn.Tanh(), nn.ReLU(), nn.ELU(alpha=0.7), nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Softsign(),
            nn.Hardsigmoid(), nn.Identity()]
    x = torch.randn(3, 9, 4)
    for act in acts:
        model = grurt.from_torch([gru, nn.Dropout(0.5), fc1, act, fc2, nn.Softmax(dim=-1)])
        with torch.no_grad():
            out, _ = gru(x)
            want = torch.softmax(fc2(act(fc1(out))), dim=-1).numpy()
        got = model.run(x.numpy())
        assert got.shape == (3, 9, 5)
        assert max_diff(got, want) <= ATOL, type(act).__name__


def test_stacked_separate_grus():
    """Two nn.GRU modules in a row (the second one's input is the first one's output)."""
    torch.manual_seed(3)
    g1 = nn.GRU(3, 10, batch_first=True, bidirectional=True)
    g2 = nn.GRU(20, 8, batch_first=False)
    model = grurt.from_torch(nn.Sequential(g1, g2))
    x = torch.randn(2, 15, 3)
    with torch.no_grad():
        out1, h1 = g1(x)
        out2, h2 = g2(out1.transpose(0, 1))
    got, states = model.run(x.numpy(), return_state=True)
    assert max_diff(got, out2.transpose(0, 1).numpy()) <= ATOL
    assert max_diff(states[0], h1.numpy()) <= ATOL
    assert max_diff(states[1], h2.numpy()) <= ATOL


def test_nan_and_inf_positions_match_torch():
    """NaN/inf in the input propagate exactly as in PyTorch: same NaN positions, finite values
    within 1e-5, no crash."""
    torch.manual_seed(8)
    gru = nn.GRU(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    model = grurt.from_torch(gru)
    x = torch.randn(6, 9, 4)
    x[1, 3, 2] = float("nan")
    x[2, 5, 0] = float("inf")
    x[3, 2, :] = float("-inf")
    x[4, 0, 1], x[4, 0, 2] = float("inf"), float("-inf")
    want, want_h = torch_run(gru, x)
    got, states = model.run(x.numpy(), return_state=True)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(want).any() and not np.isnan(want[0]).any()
    finite = ~np.isnan(want)
    assert max_diff(got[finite], want[finite]) <= ATOL
    h = np.concatenate(states)
    assert np.array_equal(np.isnan(h), np.isnan(want_h))


def test_double_precision_module_is_converted():
    torch.manual_seed(2)
    gru = nn.GRU(3, 8, batch_first=True).double()
    model = grurt.from_torch(gru)
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    want, _ = torch_run(gru, x)
    assert max_diff(model.run(x.numpy()), want) <= ATOL


# ---- unsupported modules: UnsupportedModelError naming the module ----------------------------

@pytest.mark.parametrize("modules, fragment", [
    (lambda: nn.LSTM(3, 4), "LSTM"),
    (lambda: nn.RNN(3, 4), "RNN"),
    (lambda: [nn.GRU(3, 4), nn.Conv1d(4, 4, 1)], "Conv1d"),
    (lambda: nn.Sequential(nn.GRU(3, 4), nn.LayerNorm((5, 4))), "normalized_shape"),
    (lambda: [nn.GRU(3, 4), nn.Softmax(dim=1)], "dim=1"),
    (lambda: [nn.GRU(3, 4), nn.Softmax()], r"dim=None on a \(B, T, F\) input"),   # torch: over the batch
    (lambda: [nn.GRU(3, 4), nn.Flatten(), nn.Linear(20, 1)], "flattening a sequence"),
    (lambda: [nn.GRU(3, 4), "linear"], "str"),
    (lambda: nn.Linear(3, 4), "no nn.GRU"),
])
def test_unsupported_module(modules, fragment):
    with pytest.raises(grurt.UnsupportedModelError, match=fragment):
        grurt.from_torch(modules())
