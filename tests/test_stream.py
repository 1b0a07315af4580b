"""Streaming: Model.stream() / Stream.step against Model.run and the reference."""
import os
import threading
import tracemalloc

import numpy as np
import pytest

import grurt
from grurt.cli import EXAMPLES
from grurt.spec import Dense, LastStep, ModelSpec, Reverse

from gru_testing import random_gru, random_states

# step-by-step vs whole-sequence: same kernels, same order of operations per step
STEP_TOL = 1e-6


def stacked(rng, layers, lbr, head=True, input_size=5):
    grus, features = [], input_size
    for hidden in layers:
        grus.append(random_gru(rng, features, hidden, linear_before_reset=lbr))
        features = hidden
    tail = (Dense(rng.normal(size=(3, features)) * 0.5, rng.normal(size=3)),) if head else ()
    return grurt.Model(ModelSpec(input_size, tuple(grus) + tail))


@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("layers", [(8,), (70, 9), (16, 33, 4)])
@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 6])
def test_stepping_equals_run(lbr, layers, head, batch):
    rng = np.random.default_rng(len(layers) * 100 + batch)
    model = stacked(rng, layers, lbr, head)
    x = rng.normal(size=(batch, 30, 5)).astype(np.float32)
    expected, expected_state = model.run(x, return_state=True)
    stream = model.stream(batch=batch)
    outs = np.stack([stream.step(x[:, t]) for t in range(30)], axis=1)
    assert outs.shape == expected.shape
    assert np.abs(outs - expected).max() <= STEP_TOL
    for got, want in zip(stream.state, expected_state):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= STEP_TOL


def test_single_frames_and_out_buffer():
    rng = np.random.default_rng(1)
    model = stacked(rng, (12,), True)
    seq = rng.normal(size=(20, 5)).astype(np.float32)
    expected = model.run(seq)                      # (T, 3)
    stream = model.stream()
    out = np.empty(3, np.float32)
    for t in range(20):
        returned = stream.step(seq[t], out=out)
        assert returned is out
        assert np.abs(out - expected[t]).max() <= STEP_TOL


def test_state_round_trip_and_reset():
    rng = np.random.default_rng(2)
    model = stacked(rng, (10, 7), False)
    x = rng.normal(size=(2, 16, 5)).astype(np.float32)
    initial = random_states(rng, model.spec, 2)
    expected = model.run(x, initial_state=initial)
    stream = model.stream(batch=2)
    stream.state = initial
    assert all(np.array_equal(a, b) for a, b in zip(stream.state, initial))
    outs = np.stack([stream.step(x[:, t]) for t in range(16)], axis=1)
    assert np.abs(outs - expected).max() <= STEP_TOL
    # state is a copy: changing it does not touch the stream
    snapshot = stream.state
    snapshot[0][...] = 99.0
    assert not np.any(stream.state[0] == 99.0)
    stream.reset()
    assert all(not s.any() for s in stream.state)
    again = np.stack([stream.step(x[:, t]) for t in range(16)], axis=1)
    assert np.abs(again - model.run(x)).max() <= STEP_TOL


def test_last_state_models_yield_current_state():
    """A GRU returning its last state (and LastStep → Dense) gives each step what run gives for the prefix."""
    rng = np.random.default_rng(3)
    gru = random_gru(rng, 4, 9, return_sequences=False)
    for spec in (ModelSpec(4, (gru,)),
                 ModelSpec(4, (random_gru(rng, 4, 9), LastStep(), Dense(rng.normal(size=(2, 9)), np.zeros(2))))):
        model = grurt.Model(spec)
        x = rng.normal(size=(1, 12, 4)).astype(np.float32)
        stream = model.stream()
        for t in range(12):
            got = stream.step(x[0, t])
            assert np.abs(got - model.run(x[0, :t + 1])).max() <= STEP_TOL


@pytest.mark.parametrize("direction", ["reverse", "bidirectional"])
def test_models_that_need_the_whole_sequence_refuse_to_stream(direction):
    rng = np.random.default_rng(4)
    model = grurt.Model(ModelSpec(3, (random_gru(rng, 3, 5, direction=direction),)))
    with pytest.raises(grurt.InputError, match=f"{direction} GRU.*cannot stream"):
        model.stream()
    model = grurt.Model(ModelSpec(3, (random_gru(rng, 3, 5), Reverse())))
    with pytest.raises(grurt.InputError, match="reverses time.*cannot stream"):
        model.stream()


def test_bad_frames_and_states():
    rng = np.random.default_rng(5)
    model = stacked(rng, (6,), True)
    stream = model.stream(batch=2)
    with pytest.raises(grurt.InputError, match=r"frame must be \(2, 5\)"):
        stream.step(np.zeros(5, np.float32))             # single frame needs batch=1
    with pytest.raises(grurt.InputError, match=r"frame must be \(2, 5\)"):
        stream.step(np.zeros((2, 4), np.float32))
    with pytest.raises(grurt.InputError, match="real numbers"):
        stream.step(np.array([["a"] * 5] * 2))
    with pytest.raises(grurt.InputError, match="out must be"):
        stream.step(np.zeros((2, 5), np.float32), out=np.empty((2, 3), np.float64))
    readonly = np.zeros((2, 3), np.float32)
    readonly.setflags(write=False)
    with pytest.raises(grurt.InputError, match="out must be a writeable"):
        stream.step(np.zeros((2, 5), np.float32), out=readonly)
    assert not readonly.any()
    for frame in (np.float32(1.0), np.array(1.0, np.float32), np.zeros((1, 2, 5), np.float32),
                  np.zeros((2, 5), ">f4")[:, :4]):
        with pytest.raises(grurt.InputError, match=r"frame must be \(2, 5\)"):
            stream.step(frame)
    with pytest.raises(grurt.InputError, match=r"state\[0\] must be .*\(1, 2, 6\)"):
        stream.state = [np.zeros((1, 3, 6))]
    with pytest.raises(grurt.InputError, match="one per GRU layer"):
        stream.state = []
    with pytest.raises(grurt.InputError, match="batch must be a positive integer"):
        model.stream(batch=0)
    # any real dtype and strides are accepted for frames
    frames = rng.normal(size=(2, 10))[:, ::2]
    assert np.abs(stream.step(frames) - model.stream(batch=2).step(frames.astype(np.float32))).max() == 0


def test_step_with_out_allocates_nothing():
    model = grurt.load(os.path.join(EXAMPLES, "forecaster.npz"))
    stream = model.stream()
    frame = np.array([12.5], np.float32)
    out = np.empty(1, np.float32)
    stream.step(frame, out=out)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(2000):
            stream.step(frame, out=out)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # grurt's own files: its package directory (a substring "grurt" would also match this test
    # file in a clone named grurt, whose loop allocates)
    package = os.path.dirname(os.path.abspath(grurt.__file__)) + os.sep
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename")
                if os.path.abspath(stat.traceback[0].filename).startswith(package))
    assert grown == 0
    # and a single step allocates no Python object at all
    tracemalloc.start()
    try:
        stream.step(frame, out=out)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current == 0


def test_a_stream_per_thread():
    """4 threads, each stepping its own Stream of one shared Model (and resetting it), get exactly
    the frames' outputs of a Stream stepped alone."""
    rng = np.random.default_rng(11)
    model = stacked(rng, (11, 6), True, input_size=4)
    frames = rng.normal(size=(50, 4)).astype(np.float32)
    alone = model.stream()
    expected = np.stack([alone.step(f) for f in frames])
    failures, errors = [], []

    def worker(seed):
        try:
            stream = model.stream()
            for repeat in range(20):
                stream.reset()
                if not np.array_equal(np.stack([stream.step(f) for f in frames]), expected):
                    failures.append((seed, repeat))
        except Exception as exc:   # reported below: an exception in a thread must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert failures == []
