"""Causal Conv1D through the serving paths (_serve.pxi): Stream.step, Stream.run on blocks and
StreamPool sessions each carry the conv's input history, and all give the same bits."""
import numpy as np
import pytest

import grurt
from grurt.spec import GRU, Conv1D, Dense, LastStep, ModelSpec, Pool1D, activation

TOL = 1e-5


def _crnn(k=5, dilation=1, groups=1, channels=6, hidden=8, head=3, last_step=True):
    rng = np.random.default_rng(k * 10 + dilation)
    span = (k - 1) * dilation + 1
    conv = Conv1D(W=rng.standard_normal((channels, channels // groups, k)) / np.sqrt(channels * k / groups),
                  b=rng.standard_normal(channels) * 0.1, dilation=dilation, groups=groups,
                  padding=(span - 1, 0), activation=activation("relu"))
    gru = GRU(W=rng.standard_normal((1, 3 * hidden, channels)) * 0.3, R=rng.standard_normal((1, 3 * hidden, hidden)) * 0.3,
              B=rng.standard_normal((1, 6 * hidden)) * 0.1, linear_before_reset=True)
    dense = Dense(rng.standard_normal((head, hidden)) * 0.5, rng.standard_normal(head) * 0.1)
    layers = (conv, gru, LastStep(), dense) if last_step else (conv, gru, dense)
    return grurt.Model(ModelSpec(channels, layers)), span


def _splits(rng, n):
    """Random block boundaries of n frames (blocks of 1 .. 7 frames, some of 0)."""
    cuts, t = [0], 0
    while t < n:
        t = min(n, t + int(rng.integers(0, 8)))
        cuts.append(t)
    return cuts


@pytest.mark.parametrize("k, dilation, groups, last_step", [(5, 1, 1, True), (5, 1, 1, False), (4, 3, 2, True),
                                                            (1, 1, 1, True)])
def test_crnn_step_run_pool_agree(k, dilation, groups, last_step):
    model, span = _crnn(k, dilation, groups, last_step=last_step)
    B, T, C = 2, 23, 6
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, T, C)).astype(np.float32)

    stream = model.stream(batch=B)
    stepped = np.empty((B, T, model.output_size), np.float32)
    for t in range(T):
        stepped[:, t] = stream.step(x[:, t])
        expected = model.run(x[:, :t + 1])
        expected = expected if last_step else expected[:, t]
        np.testing.assert_allclose(stepped[:, t], expected, rtol=0, atol=TOL)
    final = stream.state
    assert len(final) == 2 and final[1].shape == (B, span - 1, C)
    np.testing.assert_array_equal(final[1], x[:, T - (span - 1):])

    for trial in range(4):                               # run() on random splits: the same bits
        blocks = model.stream(batch=B)
        cuts = _splits(np.random.default_rng(trial), T)
        pieces = [blocks.run(np.ascontiguousarray(x[:, a:b])) for a, b in zip(cuts, cuts[1:])]
        np.testing.assert_array_equal(np.concatenate(pieces, axis=1), stepped)
        for got, want in zip(blocks.state, final):
            np.testing.assert_array_equal(got, want)
        single = model.stream()                          # batch 1, (n, I) blocks, one long block
        np.testing.assert_array_equal(np.concatenate([single.run(x[1, a:b]) for a, b in zip(cuts, cuts[1:])]),
                                      stepped[1])
    whole = model.stream(batch=B)
    np.testing.assert_array_equal(whole.run(x), stepped)

    # a pool: each session steps in changing company, and gives the same bits
    pool = model.stream_pool(5)
    other = pool.open()
    sessions = [pool.open() for _ in range(B)]
    pooled = np.empty_like(stepped)
    noise = rng.standard_normal((T, C)).astype(np.float32)
    for t in range(T):
        order = list(rng.permutation(B))
        ids = [sessions[b] for b in order]
        frames = [x[b, t] for b in order]
        if t % 3:
            ids.insert(int(rng.integers(0, len(ids) + 1)), other)
            frames.insert(ids.index(other), noise[t])
        out = pool.step(np.array(ids, np.int64), np.stack(frames))
        for row, sid in enumerate(ids):
            if sid != other:
                pooled[sessions.index(sid), t] = out[row]
    np.testing.assert_array_equal(pooled, stepped)
    for b in range(B):
        state = pool.state(sessions[b])
        np.testing.assert_array_equal(state[0], final[0][:, b])
        np.testing.assert_array_equal(state[1], final[1][b])


def test_state_setter_reset_and_pool_state():
    model, span = _crnn(5)
    x = np.random.default_rng(1).standard_normal((1, 12, 6)).astype(np.float32)
    stream = model.stream()
    stream.run(x[0])
    state = stream.state
    assert state[1].any()
    twin = model.stream()
    twin.state = state                                   # the full list: GRU state then history
    np.testing.assert_array_equal(twin.step(x[0, 3]), stream.step(x[0, 3]))
    _, gru_states = model.run(x, return_state=True)
    twin.state = [s.astype(np.float32) for s in gru_states]   # the fast setter: histories zeroed
    assert not twin.state[1].any()
    np.testing.assert_array_equal(twin.state[0], gru_states[0])
    twin.state = [s.astype(np.float64) for s in stream.state]  # the checked path
    np.testing.assert_array_equal(twin.state[1], stream.state[1])
    with pytest.raises(grurt.InputError, match=r"state\[1\] \(Conv1D history\)"):
        twin.state = [gru_states[0], np.zeros((1, span, 6))]
    stream.reset()
    assert not any(s.any() for s in stream.state)

    pool = model.stream_pool(2)
    sid = pool.open()
    pool.set_state(sid, [s[:, 0] for s in state[:1]] + [state[1][0]])
    np.testing.assert_array_equal(pool.state(sid)[1], state[1][0])
    fresh = model.stream()
    fresh.state = state
    np.testing.assert_array_equal(pool.step(np.array([sid]), x[0, :1])[0], fresh.step(x[0, 0]))
    pool.set_state(sid, [state[0][:, 0]])                # GRU states alone: the history zeroed
    assert not pool.state(sid)[1].any()
    pool.step(np.array([sid]), x[0, :1])
    pool.reset(sid)
    assert not any(s.any() for s in pool.state(sid))
    with pytest.raises(grurt.InputError, match=r"states\[1\] \(Conv1D history\)"):
        pool.set_state(sid, [state[0][:, 0], np.zeros((span, 6))])


def test_non_causal_conv_and_pooling_refuse_to_stream():
    rng = np.random.default_rng(0)
    conv = Conv1D(W=rng.standard_normal((4, 3, 3)), b=np.zeros(4), padding=(1, 1))
    model = grurt.Model(ModelSpec(3, (conv, GRU(W=rng.standard_normal((1, 12, 4)), R=rng.standard_normal((1, 12, 4)),
                                                 B=np.zeros((1, 24))))))
    for make in (model.stream, model.stream_pool):
        with pytest.raises(grurt.InputError, match=r"layer 0 \(Conv1D"):
            make(2)
    pooled = grurt.Model(ModelSpec(3, (Pool1D(mode="max", size=2, stride=2),)))
    with pytest.raises(grurt.InputError, match=r"layer 0 \(.*Pool"):
        pooled.stream_pool(2)
