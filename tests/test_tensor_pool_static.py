"""Pools of a general graph with static inputs: ``TensorModel.stream_pool`` of attention decoders, each
session's encoder outputs given at ``pool.open(static=...)`` / ``pool.reset(sid, static=...)``.

Oracles and tolerances:
* PyTorch on each session's whole sequence, and each session's own ``model.stream(static=...)``, when
  sessions are stepped in batches that change from step to step (sessions of two encoder lengths mixed in
  one call): ``ATOL``, not exact, because BLAS sums a product of n rows in another order than of one row;
* each session's own stream when the pool steps it alone: ``np.array_equal`` (the same stream graph, the same
  kernels, the same row);
* state round trips, resets and refused calls that change nothing: ``np.array_equal``.
"""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt.errors import InputError
from grurt.tensor_stream import Compiled

from test_tensor_stream import AdditiveAttentionDecoder, decoder, max_diff  # noqa: F401 (fixture)
from tolerances import ATOL

torch = pytest.importorskip("torch")
nn = torch.nn

AXES = {"tokens": 1}


class InitDecoder(AdditiveAttentionDecoder):
    """The attention decoder whose GRU starts from a state computed from the encoder outputs (a static
    tensor as a state's start: each session's own)."""

    def __init__(self):
        super().__init__()
        self.init = nn.Linear(10, 10)

    def forward(self, tokens, enc):
        h0 = torch.tanh(self.init(enc.mean(1)))[None]        # (1, B, H)
        h, _ = self.gru(self.embed(tokens), h0)
        energy = torch.tanh(self.W(enc)[:, None] + self.U(h)[:, :, None])
        weights = torch.softmax(self.v(energy)[..., 0], dim=-1)
        return self.out(torch.cat([h, torch.bmm(weights, enc)], -1))


@pytest.fixture(scope="module")
def init_decoder():
    torch.manual_seed(2)
    module = InitDecoder().eval()
    model = grurt.from_torch(module, (torch.randint(0, 11, (2, 6)), torch.randn(2, 5, 10)))
    return module, model


def _sessions(seed, lengths=(5, 7, 5, 7, 5), steps=6):
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(0, 11, (1, steps)) for _ in lengths]
    encs = [rng.standard_normal((1, s, 10)).astype(np.float32) for s in lengths]
    return tokens, encs


def _torch(module, tokens, enc):
    with torch.no_grad():
        return module(torch.from_numpy(tokens), torch.from_numpy(enc)).numpy()[0]      # (T, V)


def _own_stream(model, tokens, enc):
    stream = model.stream(batch=1, time_axes=AXES, static={"enc": enc})
    return np.stack([stream.step(tokens[:, t])[0] for t in range(tokens.shape[1])])


@pytest.mark.parametrize("which", ["decoder", "init_decoder"])
def test_sessions_with_their_own_encoder_outputs_in_changing_batches(which, request):
    module, model = request.getfixturevalue(which)[:2]
    tokens, encs = _sessions(4)
    n, steps = len(tokens), tokens[0].shape[1]
    pool = model.stream_pool(8, time_axes=AXES)
    ids = [pool.open(static={"enc": enc}) for enc in encs]
    assert ids == list(range(n))
    rng = np.random.default_rng(5)
    done, got, mixed = np.zeros(n, int), np.zeros((n, steps, 5), np.float32), 0
    while (done < steps).any():
        ready = [s for s in range(n) if done[s] < steps and rng.random() < 0.7] or \
                [int(np.flatnonzero(done < steps)[0])]
        rng.shuffle(ready)
        mixed += len({encs[s].shape for s in ready}) > 1
        y = pool.step(np.array(ready), np.concatenate([tokens[s][:, done[s]] for s in ready]))
        assert y.shape == (len(ready), 5)
        for k, s in enumerate(ready):
            got[s, done[s]] = y[k]
            done[s] += 1
    assert mixed > 0                                      # sessions of both encoder lengths stepped together
    for s in range(n):
        assert max_diff(got[s], _torch(module, tokens[s], encs[s])) < ATOL
        assert max_diff(got[s], _own_stream(model, tokens[s], encs[s])) < ATOL
    # each session stepped alone: its own stream's bits
    for s in range(n):
        pool.reset(s)
        alone = np.stack([pool.step(np.array([s]), tokens[s][:, t])[0] for t in range(steps)])
        assert np.array_equal(alone, _own_stream(model, tokens[s], encs[s]))


def test_static_tensors_are_computed_once_per_session(decoder, monkeypatch):
    _, model, _, _ = decoder
    tokens, encs = _sessions(6)
    calls = []
    original = Compiled.static_values
    monkeypatch.setattr(Compiled, "static_values", lambda self, arrays: calls.append(arrays[0].shape)
                        or original(self, arrays))
    pool = model.stream_pool(4, time_axes=AXES)
    a, b = pool.open(static=encs[0]), pool.open(static={"enc": encs[1]})      # the one array, or by name
    assert calls == [encs[0].shape, encs[1].shape]
    for t in range(3):
        pool.step(np.array([b, a]), np.array([tokens[1][0, t], tokens[0][0, t]]))
    pool.reset(a)                                          # the same encoder outputs: nothing computed
    assert len(calls) == 2
    pool.reset(a, static={"enc": encs[2]})
    assert calls[2:] == [encs[2].shape]


def test_reset_with_other_static_inputs_state_round_trip_and_close(decoder):
    module, model, _, _ = decoder
    tokens, encs = _sessions(7)
    pool = model.stream_pool(3, time_axes=AXES)
    a, b = pool.open(static=encs[0]), pool.open(static=encs[1])
    for t in range(2):
        pool.step(np.array([a, b]), np.array([tokens[0][0, t], tokens[1][0, t]]))
    saved = pool.state(b)
    after = pool.step(np.array([b]), tokens[1][:, 2])
    pool.set_state(b, saved)
    assert np.array_equal(pool.step(np.array([b]), tokens[1][:, 2]), after)
    # session a starts again on encoder outputs of the other length
    pool.reset(a, static=encs[1])
    y = np.stack([pool.step(np.array([a]), tokens[3][:, t])[0] for t in range(6)])
    assert max_diff(y, _torch(module, tokens[3], encs[1])) < ATOL
    stream = model.stream(batch=1, time_axes=AXES, static=encs[1])
    pool.reset(b)
    assert all(np.array_equal(p, s) for p, s in zip(pool.state(b), stream.state))
    pool.close(a)
    assert len(pool._groups) == 1                          # the group of length-5 encoders went with its last session
    assert pool.open(static=encs[0]) == a


def test_refusals_name_the_input_and_change_nothing(decoder):
    _, model, _, _ = decoder
    tokens, encs = _sessions(8)
    pool = model.stream_pool(2, time_axes=AXES)
    a = pool.open(static=encs[0])
    pool.step(np.array([a]), tokens[0][:, 0])
    before = pool.state(a)
    refused = [
        (lambda: pool.open(), r"static inputs \['enc'\]: give each session's at pool.open\(static="),
        (lambda: pool.open(static=np.concatenate([encs[0], encs[0]])),
         r"static input 'enc' of one session must have 1 on axis 0 .* got shape \(2, 5, 10\)"),
        (lambda: pool.open(static=encs[0][..., :9]), r"input 'enc' must have shape \(tokens_0, enc_1, 10\)"),
        (lambda: pool.open(static={"encoder": encs[0]}), "enc"),
        (lambda: pool.open(static=encs[0].astype(np.complex64)), r"input 'enc' takes float32 values"),
        (lambda: pool.reset(a, static=encs[0][:, :, :3]), r"input 'enc' must have shape"),
        (lambda: pool.step(np.array([a]), tokens[0][0, :2]), "time input 'tokens'"),
    ]
    for call, message in refused:
        with pytest.raises(InputError, match=message):
            call()
        assert all(np.array_equal(s, t) for s, t in zip(pool.state(a), before))
    assert pool.open(static=encs[1]) == 1                  # no id was taken by a refused open
    b = 1
    with pytest.raises(InputError, match="the frames of 2 sessions have shape"):
        pool.step(np.array([a, b]), tokens[0][0, :3])         # sessions of two groups, frames of 3
    assert all(np.array_equal(s, t) for s, t in zip(pool.state(a), before))


def test_a_model_without_static_inputs_takes_no_static(conv_stack_model):
    pool = conv_stack_model.stream_pool(2, time_axes={"x": 2})
    with pytest.raises(InputError, match="has no static inputs, got static="):
        pool.open(static=np.zeros((1, 1)))
    assert pool.open() == 0


@pytest.fixture(scope="module")
def conv_stack_model():
    from test_tensor_stream import ConvStack
    torch.manual_seed(0)
    return grurt.from_torch(ConvStack().eval(), torch.randn(2, 1, 9, 8))
