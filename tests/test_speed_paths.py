"""The fast paths of issue 23, each against independent oracles and for its exactness claims.

* Small GRU layers (H = 8, 16, 24, 32, sigmoid/tanh, linear_before_reset = 1) run on their own
  kernels (_gru_math.h, GRURT_DEFINE_GRU_SMALL) where the CPU has AVX2: within ``ATOL`` of
  the float64 reference and of PyTorch; a block gives the bits of single steps, a pool session
  those of its own stream, a batch row those it has alone, threads those of one thread; NaN
  stays NaN. ``use_small_kernels(False)`` runs the general loop, held to the same oracles.
* A Dense layer of fewer than 4 outputs (grurt_dense_few): rows independent, within ``ATOL``.
* Large batches run in chunks of sequences (Plan.run): bit for bit the unchunked results.
"""
import numpy as np
import pytest
import torch

import grurt
from grurt import _kernels
from grurt.spec import Dense, ModelSpec, activation
from gru_testing import assert_matches_reference, random_gru, random_states
from tolerances import ATOL

SMALL = (8, 16, 24, 32)


@pytest.fixture(params=[True, False], ids=["small kernels", "general loop"])
def kernels(request):
    previous = _kernels.use_small_kernels(request.param)
    yield request.param
    _kernels.use_small_kernels(previous)


def small_model(seed, I, H, direction="forward", head=1, **kwargs):
    rng = np.random.default_rng(seed)
    layers = [random_gru(rng, I, H, direction, **kwargs)]
    if head:
        D = 2 if direction == "bidirectional" else 1
        layers.append(Dense((rng.normal(size=(head, D * H)) / np.sqrt(D * H)).astype(np.float32),
                            rng.normal(size=head).astype(np.float32) * 0.1))
    return grurt.Model(ModelSpec(I, tuple(layers))), rng


def test_small_layers_have_their_kernel():
    """Every small size gets a kernel on an x86-64 CPU with AVX2 (this machine), nothing else does."""
    model, _ = small_model(0, 3, 8)
    has = model._plan.small_kernels()[0]
    for H in (8, 16, 24, 32, 40, 12, 64):
        m, _ = small_model(H, 3, H)
        assert m._plan.small_kernels() == [has and H in SMALL]
    lbr0, _ = small_model(1, 3, 8, linear_before_reset=False)
    assert lbr0._plan.small_kernels() == [False]


@pytest.mark.parametrize("H", SMALL)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_small_gru_matches_reference(kernels, H, direction):
    model, rng = small_model([H, len(direction)], 5, H, direction, head=0)
    x = rng.normal(size=(6, 37, 5)).astype(np.float32)
    h0 = random_states(rng, model.spec, 6)
    lengths = rng.integers(1, 38, size=6)
    assert_matches_reference(model, x, h0, lengths)
    assert_matches_reference(model, x[:1, :1])


@pytest.mark.parametrize("H", SMALL)
@pytest.mark.parametrize("I", [1, 16])
def test_small_gru_dense_matches_pytorch(kernels, H, I):
    torch.manual_seed(H + I)
    gru, head = torch.nn.GRU(I, H, batch_first=True), torch.nn.Linear(H, 1)
    model = grurt.from_torch([gru, head])
    x = np.random.default_rng(H).standard_normal((3, 300, I), dtype=np.float32)
    with torch.no_grad():
        expected = head(gru(torch.from_numpy(x))[0]).numpy()
    assert np.max(np.abs(model.run(x) - expected)) <= ATOL
    stream = model.stream(batch=3)
    assert np.max(np.abs(stream.run(x) - expected)) <= ATOL


@pytest.mark.parametrize("H", SMALL)
def test_small_gru_stream_blocks_pool_and_rows_are_exact(kernels, H):
    """Blocks == steps, pool == stream, a batch row == that sequence alone, bit for bit."""
    model, rng = small_model([H, 7], 4, H, head=2)
    frames = rng.normal(size=(3, 41, 4)).astype(np.float32)
    stepped = model.stream(batch=3)
    steps = np.stack([stepped.step(frames[:, t]).copy() for t in range(41)], axis=1)
    blocks = model.stream(batch=3)
    got = np.concatenate([blocks.run(np.ascontiguousarray(frames[:, a:b])) for a, b in ((0, 1), (1, 17), (17, 41))],
                         axis=1)
    assert np.array_equal(steps, got)
    for a, b in zip(stepped.state, blocks.state):
        assert np.array_equal(a, b)
    alone = [model.stream().run(frames[b]) for b in range(3)]
    assert all(np.array_equal(steps[b], alone[b]) for b in range(3))
    pool = model.stream_pool(8)
    ids = np.array([pool.open() for _ in range(5)], np.int64)[[4, 1, 3]]
    pooled = np.stack([pool.step(ids, np.ascontiguousarray(frames[:, t])).copy() for t in range(41)], axis=1)
    assert np.array_equal(pooled, steps)
    # model.run: each batch row as alone, with lengths too
    x = rng.normal(size=(5, 23, 4)).astype(np.float32)
    lengths = np.array([23, 1, 7, 16, 23])
    together = model.run(x, lengths=lengths)
    for b in range(5):
        assert np.array_equal(together[b, :lengths[b]], model.run(x[b:b + 1, :lengths[b]])[0])


@pytest.mark.parametrize("H", SMALL)
def test_small_gru_threads_are_exact(H):
    previous = _kernels.set_split_policy("always")
    try:
        model, rng = small_model([H, 3], 6, H, "bidirectional", head=0)
        stack = grurt.Model(ModelSpec(6, (random_gru(rng, 6, H), random_gru(rng, H, H))))
        for m in (model, stack):
            x = rng.normal(size=(9, 30, 6)).astype(np.float32)
            h0 = random_states(rng, m.spec, 9)
            one = m.run(x, initial_state=h0, return_state=True)
            two = m.run(x, initial_state=h0, return_state=True, threads=2)
            assert np.array_equal(one[0], two[0])
            assert all(np.array_equal(a, b) for a, b in zip(one[1], two[1]))
            single = rng.normal(size=(1, 40, 6)).astype(np.float32)
            assert np.array_equal(m.run(single), m.run(single, threads=2))
    finally:
        _kernels.set_split_policy(previous)


def test_small_gru_propagates_nan(kernels):
    model, rng = small_model(11, 2, 8, head=0)
    x = rng.normal(size=(2, 5, 2)).astype(np.float32)
    x[0, 2, 1] = np.nan
    out = model.run(x)
    assert np.isnan(out[0, 2:]).all() and not np.isnan(out[0, :2]).any() and not np.isnan(out[1]).any()


def test_bf16_small_gru_runs_its_kernel():
    """bf16 weights of a small GRU are float32 panels of the bf16 values: the small kernel runs them."""
    model, rng = small_model(5, 3, 16, head=0)
    low = model.with_weights("bf16")
    assert low._plan.small_kernels() == model._plan.small_kernels()
    x = rng.normal(size=(2, 50, 3)).astype(np.float32)
    if low._plan.small_kernels() == [True]:     # model.run sums in the stream's order there
        assert np.array_equal(low.stream(batch=2).run(x), low.run(x))
    assert np.max(np.abs(low.run(x) - model.run(x))) <= 5e-3


@pytest.mark.parametrize("n_in", [1, 7, 8, 19, 50])
@pytest.mark.parametrize("n_out", [1, 2, 3])
def test_dense_few_outputs(n_in, n_out):
    rng = np.random.default_rng(n_in * 10 + n_out)
    W = rng.normal(size=(n_out, n_in)).astype(np.float32)
    b = rng.normal(size=n_out).astype(np.float32)
    model = grurt.Model(ModelSpec(n_in, (Dense(W, b, activation("sigmoid")),)))
    x = rng.normal(size=(13, 9, n_in)).astype(np.float32)
    out = model.run(x)
    expected = 1 / (1 + np.exp(-(x.astype(np.float64) @ W.T.astype(np.float64) + b)))
    assert np.max(np.abs(out - expected)) <= ATOL
    for r in (0, 5, 12):
        assert np.array_equal(out[r], model.run(x[r:r + 1])[0])
        assert np.array_equal(out[r, 3], model.run(x[r:r + 1, 3:4])[0, 0])


@pytest.fixture
def slice_rows():
    previous = _kernels.set_slice_rows(64)
    yield
    _kernels.set_slice_rows(previous)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_batches_in_slices_are_exact(slice_rows, direction, threads):
    """Model.run of more than 64 sequences runs in slices: outputs and states bit for bit those
    of one pass (set_slice_rows(0)) and of other slice sizes, with lengths and initial states."""
    rng = np.random.default_rng(len(direction) + threads)
    layers = (random_gru(rng, 3, 40, direction), random_gru(rng, 80 if direction == "bidirectional" else 40, 24),
              Dense(rng.normal(size=(2, 24)).astype(np.float32), np.zeros(2, np.float32)))
    model = grurt.Model(ModelSpec(3, layers))
    B, T = 203, 19
    x = rng.normal(size=(B, T, 3)).astype(np.float32)
    h0 = random_states(rng, model.spec, B)
    lengths = rng.integers(1, T + 1, size=B)
    previous = _kernels.set_split_policy("always" if threads > 1 else "auto")
    try:
        results = {}
        for rows in (0, 64, 7, 202):
            _kernels.set_slice_rows(rows)
            results[rows] = (model.run(x, initial_state=h0, lengths=lengths, return_state=True, threads=threads),
                             model.run(x, threads=threads))
        for rows in (64, 7, 202):
            (out, states), plain = results[rows]
            assert np.array_equal(out, results[0][0][0]) and np.array_equal(plain, results[0][1])
            assert all(np.array_equal(a, b) for a, b in zip(states, results[0][0][1]))
        _kernels.set_slice_rows(64)
        assert_matches_reference(model, x, h0, lengths, threads=threads)
    finally:
        _kernels.set_split_policy(previous)


def test_large_batch_of_a_model_with_convolutions(slice_rows):
    """Layers that change the frame count (Conv1D, Pool1D) before a GRU, in slices."""
    torch.manual_seed(3)
    conv, pool, gru = torch.nn.Conv1d(4, 6, 3, padding=1), torch.nn.MaxPool1d(2), torch.nn.GRU(6, 8, batch_first=True)
    model = grurt.from_torch([conv, torch.nn.ReLU(), pool, gru])
    x = np.random.default_rng(3).standard_normal((130, 10, 4), dtype=np.float32)
    _kernels.set_slice_rows(0)
    whole = model.run(x)
    _kernels.set_slice_rows(64)
    assert np.array_equal(model.run(x), whole)
    with torch.no_grad():
        frames = pool(torch.relu(conv(torch.from_numpy(x).transpose(1, 2)))).transpose(1, 2)
        expected = gru(frames)[0].numpy()
    assert np.max(np.abs(whole - expected)) <= ATOL
