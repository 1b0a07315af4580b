"""Pools of streaming sessions of a general graph: ``TensorModel.stream_pool``.

Each session stepped through the pool, in batches of other sessions that change from step to
step, is checked against PyTorch on its own sequence and against ``model.run`` (``ATOL``: a
batch of n rows is summed by BLAS in another order than one row, so not bit for bit). State
round trips, ``reset`` and refusals that change nothing are exact (``np.array_equal``).
"""
from __future__ import annotations

import numpy as np
import pytest

from grurt.errors import InputError

from test_tensor_stream import conv_stack, max_diff  # noqa: F401 (fixtures)
from tolerances import ATOL

torch = pytest.importorskip("torch")


def test_sessions_stepped_in_changing_batches_match_their_own_sequences(conv_stack):
    module, model, _ = conv_stack
    rng = np.random.default_rng(3)
    sessions, steps = 5, 7
    x = rng.standard_normal((sessions, 1, steps, 8)).astype(np.float32)
    with torch.no_grad():
        y_torch, h_torch = (t.numpy() for t in module(torch.from_numpy(x)))
    pool = model.stream_pool(8, time_axes={"x": 2})
    ids = [pool.open() for _ in range(sessions)]
    assert ids == list(range(sessions))
    done = np.zeros(sessions, int)
    got = np.zeros((sessions, steps, 3), np.float32)
    last_h = {}
    while (done < steps).any():
        ready = [s for s in range(sessions) if done[s] < steps and rng.random() < 0.6] or \
                [int(np.flatnonzero(done < steps)[0])]
        rng.shuffle(ready)
        frames = np.stack([x[s, :, done[s]] for s in ready])               # (n, 1, F)
        y, h = pool.step(np.array(ready), frames)
        assert y.shape == (len(ready), 3) and h.shape == (1, len(ready), 12)
        for k, s in enumerate(ready):
            got[s, done[s]] = y[k]
            last_h[s] = h[:, k]
            done[s] += 1
    assert max_diff(got, y_torch) < ATOL
    assert max_diff(np.stack([last_h[s] for s in range(sessions)], 1), h_torch) < ATOL
    y_run, _ = model.run(x)
    assert max_diff(got, y_run) < ATOL


def test_state_round_trip_reset_and_close(conv_stack):
    _, model, x = conv_stack
    pool = model.stream_pool(3, time_axes={"x": 2})
    a, b = pool.open(), pool.open()
    for t in range(3):
        pool.step(np.array([a, b]), x[:, :, t])
    saved = pool.state(a)
    stream = model.stream(batch=1, time_axes={"x": 2})
    assert [s.shape for s in saved] == [s.shape for s in stream.state]
    after = pool.step(np.array([a]), x[:1, :, 3])[0]
    pool.set_state(a, saved)
    assert np.array_equal(pool.step(np.array([a]), x[:1, :, 3])[0], after)
    pool.reset(b)
    assert all(np.array_equal(s, z) for s, z in zip(pool.state(b), stream.state))
    pool.close(a)
    assert pool.open() == a                       # the lowest free id, its states at their start
    assert all(np.array_equal(s, z) for s, z in zip(pool.state(a), stream.state))


def test_refusals_name_the_problem_and_change_nothing(conv_stack):
    _, model, x = conv_stack
    pool = model.stream_pool(2, time_axes={"x": 2})
    a, b = pool.open(), pool.open()
    pool.step(np.array([a, b]), x[:, :, 0])
    before = [pool.state(a), pool.state(b)]
    with pytest.raises(InputError, match="all 2 sessions of this pool are open"):
        pool.open()
    with pytest.raises(InputError, match="appears more than once"):
        pool.step(np.array([a, a]), x[:, :, 1])
    with pytest.raises(InputError, match="session ids must be 0 to 1"):
        pool.step(np.array([a, 5]), x[:, :, 1])
    with pytest.raises(InputError, match="1-D array of integer session ids"):
        pool.step(np.array([0.0, 1.0]), x[:, :, 1])
    with pytest.raises(InputError, match="a frame has shape"):
        pool.step(np.array([a, b]), x[:1, :, 1])
    with pytest.raises(InputError, match=r"states\[2\] must be float32 of shape \(1, 1, 12\)"):
        pool.set_state(a, before[0][:2] + [np.zeros((1, 2, 12))] + before[0][3:])
    pool.close(b)
    with pytest.raises(InputError, match="session 1 is not open"):
        pool.step(np.array([a, b]), x[:, :, 1])
    with pytest.raises(InputError, match="session 1 is not open"):
        pool.state(b)
    assert all(np.array_equal(s, t) for s, t in zip(pool.state(a), before[0]))
    with pytest.raises(InputError, match="capacity must be a positive integer"):
        model.stream_pool(0, time_axes={"x": 2})
    with pytest.raises(InputError, match="more than the limit"):
        model.stream_pool(10**12, time_axes={"x": 2})


def test_a_second_caller_is_refused_while_a_call_runs(conv_stack):
    _, model, x = conv_stack
    pool = model.stream_pool(2, time_axes={"x": 2})
    sid = pool.open()
    with pool._using():                      # as if another thread's step were running
        with pytest.raises(InputError, match="in use by another thread"):
            pool.step(np.array([sid]), x[:1, :, 0])
    assert pool.step(np.array([sid]), x[:1, :, 0])[0].shape == (1, 3)
