"""Serving many streams (Model.stream_pool) and blocks of frames (Stream.run).

Bit for bit (np.array_equal), not within a tolerance:

* a session stepped through a StreamPool, whatever other sessions share its steps and in
  whatever order, against a Stream of its own: every kernel computes each row of a batch
  with the same sequence of operations (the GRU products and Dense layers on grurt's packed
  panel kernels; streaming steps always sum the recurrent product in forward order);
* ``stream.run`` on any split of a sequence into blocks against stepping frame by frame.

Against ``model.run`` on the whole sequence (which alternates the order of the recurrent
sums from step to step, 4-6% faster) the tolerance is 1e-6 (gru_testing's models keep every
value O(1): a few float32 ulps).
"""
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grurt
from grurt.spec import Activation, Dense, LastStep, ModelSpec, Scale, activation

from gru_testing import random_gru

RUN_TOL = 1e-6    # stream.run / stepping vs model.run on the whole sequence

_SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=60,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _models():
    """Streamable models covering every layer kind a stream runs, and both GRU variants."""
    rng = np.random.default_rng(2024)
    I = 5
    return {
        "gru": ModelSpec(I, (random_gru(rng, I, 9),)),
        "gru-dense": ModelSpec(I, (random_gru(rng, I, 33), Dense(rng.normal(size=(3, 33)) * 0.5, rng.normal(size=3)))),
        "stack-laststep": ModelSpec(I, (Scale(rng.uniform(0.5, 2, I), rng.normal(size=I)),
                                        random_gru(rng, I, 40, linear_before_reset=False),
                                        random_gru(rng, 40, 17), LastStep(),
                                        Dense(rng.normal(size=(37, 17)) * 0.5, rng.normal(size=37),
                                              activation("softmax")))),
        "last-state": ModelSpec(I, (random_gru(rng, I, 70, return_sequences=False),
                                    Dense(rng.normal(size=(1, 70)) * 0.3, np.zeros(1), activation("tanh")),
                                    Activation(activation("sigmoid")))),
    }


MODELS = {name: grurt.Model(spec) for name, spec in _models().items()}


def _frames(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


# ---- the pool against one Stream per session -----------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
@_SETTINGS
@given(data=st.data())
def test_pool_equals_one_stream_per_session(name, data):
    """Random arrivals: each round some open sessions (in random order) step together; between
    rounds sessions open, close, reset or get a new state. Outputs and states bit for bit."""
    model = MODELS[name]
    capacity = data.draw(st.integers(1, 12), label="capacity")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    pool = model.stream_pool(capacity)
    streams = {}                         # session id -> its own Stream
    for _ in range(data.draw(st.integers(1, 25), label="rounds")):
        action = data.draw(st.sampled_from(["open", "open", "close", "reset", "set_state", "step", "step", "step"]))
        if action == "open" and len(streams) < capacity:
            sid = pool.open()
            assert sid not in streams and 0 <= sid < capacity
            streams[sid] = model.stream()
        elif action == "close" and streams:
            sid = data.draw(st.sampled_from(sorted(streams)))
            pool.close(sid)
            del streams[sid]
        elif action == "reset" and streams:
            sid = data.draw(st.sampled_from(sorted(streams)))
            pool.reset(sid)
            streams[sid].reset()
        elif action == "set_state" and streams:
            sid = data.draw(st.sampled_from(sorted(streams)))
            states = [rng.normal(size=s.shape[:1] + s.shape[2:]).astype(np.float32) * 0.5
                      for s in streams[sid].state]
            pool.set_state(sid, states)
            streams[sid].state = [s[:, None] for s in states]
        elif action == "step" and streams:
            ids = np.array(data.draw(st.permutations(sorted(streams))), np.int64)
            ids = ids[:data.draw(st.integers(1, len(ids)))]
            frames = _frames(rng, len(ids), model.input_size)
            out = pool.step(ids, frames)
            assert out.shape == (len(ids), model.output_size) and out.dtype == np.float32
            for k, sid in enumerate(ids):
                assert np.array_equal(out[k], streams[sid].step(frames[k]))
        assert len(pool) == len(streams)
        for sid, stream in streams.items():
            for got, want in zip(pool.state(sid), stream.state):
                assert np.array_equal(got, want[:, 0])


def test_pool_large_batch_tiles():
    """Batches past the 8-row and 3-row tiles of the product kernels: each row as alone."""
    model = MODELS["stack-laststep"]
    rng = np.random.default_rng(1)
    pool = model.stream_pool(40)
    ids = np.array([pool.open() for _ in range(40)])
    streams = [model.stream() for _ in range(40)]
    for n in (40, 17, 9, 8, 3, 1, 25):
        chosen = rng.permutation(40)[:n]
        frames = _frames(rng, n, model.input_size)
        out = np.empty((n, model.output_size), np.float32)
        assert pool.step(ids[chosen], frames, out=out) is out
        for k, i in enumerate(chosen):
            assert np.array_equal(out[k], streams[i].step(frames[k]))


def test_open_close_reuse_and_capacity():
    model = MODELS["gru"]
    pool = model.stream_pool(3)
    assert pool.capacity == 3 and len(pool) == 0
    a, b, c = pool.open(), pool.open(), pool.open()
    assert sorted((a, b, c)) == [0, 1, 2] and len(pool) == 3
    with pytest.raises(grurt.InputError, match="all 3 sessions .* are open"):
        pool.open()
    pool.step(np.array([b]), np.ones((1, 5), np.float32))
    assert np.any(pool.state(b)[0])
    pool.close(b)
    assert not pool.is_open(b) and len(pool) == 2
    assert pool.open() == b
    assert not np.any(pool.state(b)[0]), "a reopened session starts from zero states"
    assert pool.state(a)[0].shape == (1, 9)


def test_pool_step_empty_and_dtypes():
    model = MODELS["gru-dense"]
    pool = model.stream_pool(4)
    sids = [pool.open() for _ in range(3)]
    assert pool.step(np.array([], np.int64), np.zeros((0, 5), np.float32)).shape == (0, 3)
    other = model.stream_pool(4)
    for _ in range(3):
        other.open()
    frames = np.random.default_rng(0).normal(size=(3, 5))            # float64, int32 ids: converted
    got = pool.step(np.array(sids, np.int32), frames)
    assert np.array_equal(got, other.step(np.array(sids), frames.astype(np.float32)))


@pytest.mark.parametrize("ids, frames, message", [
    ([0, 0], (2, 5), "session 0 appears more than once"),
    ([0, 1, 0], (3, 5), "session 0 appears more than once"),
    ([0, 2, 0], (3, 5), "session 2 is not open"),
    ([1, 3], (2, 5), "session 3 is not open"),
    ([1, 7], (2, 5), r"session id 7 is out of range \(0 to 3\)"),
    ([-1], (1, 5), r"session id -1 is out of range"),
    ([0, 1], (2, 4), r"frames must be \(2, 5\)"),
    ([0, 1], (3, 5), r"frames must be \(2, 5\)"),
    ([0, 1], (10,), r"frames must be \(2, 5\)"),
    ([[0, 1]], (2, 5), "ids must be a 1-D array of integer"),
    ([0.0, 1.0], (2, 5), "ids must be a 1-D array of integer"),
])
def test_pool_bad_steps(ids, frames, message):
    model = MODELS["gru-dense"]
    pool = model.stream_pool(4)
    for _ in range(3):
        pool.open()
    pool.close(2)
    before = [pool.state(s) for s in (0, 1)]
    with pytest.raises(grurt.InputError, match=message):
        pool.step(np.array(ids), np.zeros(frames, np.float32))
    for s, b in zip((0, 1), before):
        assert all(np.array_equal(x, y) for x, y in zip(pool.state(s), b)), "a refused call changes nothing"


def test_pool_bad_calls():
    model = MODELS["stack-laststep"]
    pool = model.stream_pool(2)
    sid = pool.open()
    with pytest.raises(grurt.InputError, match="frames must be real numbers"):
        pool.step(np.array([sid]), np.array([["a"] * 5]))
    with pytest.raises(grurt.InputError, match="out must be"):
        pool.step(np.array([sid]), np.zeros((1, 5), np.float32), out=np.empty((1, 37), np.float64))
    with pytest.raises(grurt.InputError, match="session 1 is not open"):
        pool.close(1)
    with pytest.raises(grurt.InputError, match="session 1 is not open"):
        pool.reset(1)
    with pytest.raises(grurt.InputError, match="session 1 is not open"):
        pool.state(1)
    with pytest.raises(grurt.InputError, match="session id 5 is out of range"):
        pool.set_state(5, None)
    with pytest.raises(grurt.InputError, match="must be an integer"):
        pool.reset("0")
    with pytest.raises(grurt.InputError, match=r"states\[1\] must be .*\(1, 17\)"):
        pool.set_state(sid, [np.zeros((1, 40)), np.zeros((1, 18))])
    with pytest.raises(grurt.InputError, match="one per GRU layer"):
        pool.set_state(sid, [np.zeros((1, 40))])
    with pytest.raises(grurt.InputError, match="capacity must be a positive integer"):
        model.stream_pool(0)
    bidirectional = grurt.Model(ModelSpec(3, (random_gru(np.random.default_rng(0), 3, 4, "bidirectional"),)))
    with pytest.raises(grurt.InputError, match="cannot stream"):
        bidirectional.stream_pool(2)


def test_pool_step_with_out_allocates_nothing():
    model = MODELS["gru-dense"]
    pool = model.stream_pool(64)
    ids = np.array([pool.open() for _ in range(64)])[::3].copy()
    frames = np.ones((len(ids), 5), np.float32)
    out = np.empty((len(ids), 3), np.float32)
    pool.step(ids, frames, out=out)               # the workspace for this many sessions
    tracemalloc.start()
    try:
        pool.step(ids, frames, out=out)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current == 0


def _concurrent_refusals(step, other):
    """Run ``step`` 30 times on a thread while this one calls ``other`` in a loop: the
    messages of the InputErrors ``other`` raised, and any error of the stepping thread."""
    refused, errors = [], []

    def stepper():
        try:
            for _ in range(30):
                step()
        except Exception as exc:              # pragma: no cover - reported by the caller
            errors.append(exc)

    thread = threading.Thread(target=stepper)
    thread.start()
    while thread.is_alive():
        try:
            other()
        except grurt.InputError as exc:
            refused.append(str(exc))
    thread.join()
    return refused, errors


def test_pool_and_stream_refuse_a_concurrent_call():
    """One caller at a time: a call while another thread's step runs (without the GIL)
    raises InputError, never waits and never corrupts a state."""
    rng = np.random.default_rng(3)
    model = grurt.Model(ModelSpec(64, (random_gru(rng, 64, 512),)))
    pool = model.stream_pool(256)
    ids = np.array([pool.open() for _ in range(256)])
    frames = np.ones((256, 64), np.float32)
    refused, errors = _concurrent_refusals(lambda: pool.step(ids, frames), lambda: pool.reset(int(ids[0])))
    assert not errors
    assert refused and all("StreamPool is in use by another thread" in m for m in refused)
    stream = model.stream(256)
    refused, errors = _concurrent_refusals(lambda: stream.step(frames), lambda: stream.step(frames))
    assert all("Stream is in use by another thread" in str(e) for e in errors)
    assert refused and all("Stream is in use by another thread" in m for m in refused)


# ---- blocks of frames: Stream.run --------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("batch", [1, 4])
@_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_run_on_any_split_equals_stepping(name, batch, seed, cuts):
    model = MODELS[name]
    rng = np.random.default_rng(seed)
    x = _frames(rng, batch, 40, model.input_size)
    initial = [(0.5 * rng.normal(size=s.shape)).astype(np.float32) for s in model.stream(batch).state]
    stepper = model.stream(batch)
    stepper.state = initial
    stepped = np.stack([stepper.step(x[:, t]) for t in range(40)], axis=1)
    blocks = model.stream(batch)
    blocks.state = initial
    edges = [0] + sorted(cuts) + [40]
    parts = [blocks.run(x[0, a:b] if batch == 1 else x[:, a:b]) for a, b in zip(edges, edges[1:])]
    got = np.concatenate(parts, axis=-2)
    assert got.shape == (stepped[0] if batch == 1 else stepped).shape
    assert np.array_equal(got, stepped[0] if batch == 1 else stepped)
    for a, b in zip(blocks.state, stepper.state):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", list(MODELS))
def test_run_blocks_match_model_run(name):
    """Within RUN_TOL of model.run: per-frame outputs where run returns the sequence, and
    the last frame's output and the final states where it returns one output per sequence."""
    model = MODELS[name]
    rng = np.random.default_rng(5)
    x = _frames(rng, 3, 50, model.input_size)
    stream = model.stream(3)
    got = np.concatenate([stream.run(x[:, :20]), stream.run(x[:, 20:21]), stream.run(x[:, 21:])], axis=1)
    expected, states = model.run(x, return_state=True)
    if model.spec.returns_sequence:
        assert np.abs(got - expected).max() <= RUN_TOL
    else:
        assert np.abs(got[:, -1] - expected).max() <= RUN_TOL
        for t in (0, 7, 30):
            assert np.abs(got[:, t] - model.run(x[:, :t + 1])).max() <= RUN_TOL
    for a, b in zip(stream.state, states):
        assert np.abs(a - b).max() <= RUN_TOL


def test_run_shapes_out_and_errors():
    model = MODELS["gru-dense"]
    stream = model.stream()
    x = np.random.default_rng(6).normal(size=(12, 5)).astype(np.float32)
    out = np.empty((12, 3), np.float32)
    assert stream.run(x, out=out) is out
    assert stream.run(x[None]).shape == (1, 12, 3)
    assert stream.run(x[:0]).shape == (0, 3)
    assert stream.run(x.astype(np.float64)[:, ::1]).shape == (12, 3)
    batch = model.stream(2)
    with pytest.raises(grurt.InputError, match=r"frames must be \(2, n, 5\)"):
        batch.run(x)
    with pytest.raises(grurt.InputError, match=r"frames must be \(1, n, 5\) or \(n, 5\)"):
        stream.run(x[:, :4])
    with pytest.raises(grurt.InputError, match="out must be"):
        stream.run(x, out=np.empty((11, 3), np.float32))
    with pytest.raises(grurt.InputError, match="real numbers"):
        stream.run(np.array([["a"] * 5]))


def test_run_with_out_allocates_nothing():
    model = MODELS["stack-laststep"]
    stream = model.stream(2)
    x = np.ones((2, 64, 5), np.float32)
    out = np.empty((2, 64, 37), np.float32)
    stream.run(x, out=out)
    tracemalloc.start()
    try:
        stream.run(x, out=out)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current == 0


# ---- the state setter ------------------------------------------------------------------------

def test_state_setter_fast_path_and_checks():
    model = MODELS["stack-laststep"]
    stream = model.stream(2)
    rng = np.random.default_rng(7)
    states = [rng.normal(size=(1, 2, 40)).astype(np.float32), rng.normal(size=(1, 2, 17)).astype(np.float32)]
    stream.state = states
    states[0][...] = 0                                   # the stream keeps a copy
    assert np.any(stream.state[0])
    twin = model.stream(2)
    twin.state = [s.astype(np.float64) for s in stream.state]     # the checked path converts
    x = _frames(rng, 2, 5)
    assert np.array_equal(stream.step(x), twin.step(x))
    with pytest.raises(grurt.InputError, match=r"state\[1\] must be .*\(1, 2, 17\)"):
        stream.state = [np.zeros((1, 2, 40), np.float32), np.zeros((1, 2, 16), np.float32)]
    with pytest.raises(grurt.InputError, match="one per GRU layer"):
        stream.state = (np.zeros((1, 2, 40), np.float32),)
    stream.state = None
    assert not any(s.any() for s in stream.state)
