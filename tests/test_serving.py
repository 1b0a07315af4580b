"""Serving: padded batches with lengths, concurrent calls, run(threads=N), process pools."""
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import grurt
from grurt.spec import Dense, LastStep, ModelSpec

from gru_testing import assert_matches_reference, random_gru, random_states

ATOL = 1e-5   # kernels vs the float64 reference


def padded_model(rng, direction, lbr):
    return grurt.Model(ModelSpec(4, (random_gru(rng, 4, 11, direction=direction, linear_before_reset=lbr),
                                     random_gru(rng, 11 * (2 if direction == "bidirectional" else 1), 6,
                                                direction=direction, linear_before_reset=lbr),
                                     Dense(rng.normal(size=(2, 12 if direction == "bidirectional" else 6)),
                                           np.ones(2)))))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("batch", [3, 7])
def test_padded_batch_equals_each_sequence_alone(direction, lbr, batch):
    rng = np.random.default_rng(batch)
    model = padded_model(rng, direction, lbr)
    T = 13
    lengths = np.array(([1, T] + list(rng.integers(1, T + 1, batch)))[:batch])
    x = rng.normal(size=(batch, T, 4)).astype(np.float32)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 1e3          # padding must not leak in
    initial = random_states(rng, model.spec, batch)
    out, states = model.run(x, initial_state=initial, lengths=lengths, return_state=True)
    for b, n in enumerate(lengths):
        alone, alone_states = model.run(x[b, :n], initial_state=[s[:, b] for s in initial], return_state=True)
        assert np.abs(out[b, :n] - alone).max() <= ATOL
        assert not out[b, n:].any(), "outputs past a sequence's end are zero"
        for s, a in zip(states, alone_states):
            assert np.abs(s[:, b] - a).max() <= ATOL
    # and the reference agrees on the padded batch as a whole
    x[x == 1e3] = 0.0
    assert_matches_reference(model, x, initial_state=initial, lengths=lengths)


def test_lengths_with_last_step_pick_each_sequences_end():
    rng = np.random.default_rng(8)
    model = grurt.Model(ModelSpec(2, (random_gru(rng, 2, 5), LastStep())))
    x = rng.normal(size=(3, 9, 2)).astype(np.float32)
    lengths = np.array([9, 1, 4])
    out = model.run(x, lengths=lengths)
    for b, n in enumerate(lengths):
        assert np.abs(out[b] - model.run(x[b, :n])).max() <= ATOL


@pytest.mark.parametrize("lengths, message", [
    (np.array([0, 3]), "between 1 and 5"),
    (np.array([6, 3]), "between 1 and 5"),
    (np.array([3]), r"shape \(2,\)"),
    (np.array([[3, 3]]), r"shape \(2,\)"),
    (np.array([2.0, 3.0]), "integers"),
])
def test_bad_lengths_are_refused(lengths, message):
    model = grurt.Model(ModelSpec(2, (random_gru(np.random.default_rng(0), 2, 3),)))
    with pytest.raises(grurt.InputError, match=message):
        model.run(np.zeros((2, 5, 2), np.float32), lengths=lengths)


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_run_with_threads_equals_one_thread(threads):
    rng = np.random.default_rng(threads)
    model = grurt.Model(ModelSpec(6, (random_gru(rng, 6, 40, direction="bidirectional"),
                                      random_gru(rng, 80, 20, linear_before_reset=False))))
    x = rng.normal(size=(9, 25, 6)).astype(np.float32)
    lengths = rng.integers(1, 26, 9)
    expected = model.run(x, lengths=lengths)
    got = model.run(x, lengths=lengths, threads=threads)
    assert np.abs(got - expected).max() <= ATOL
    assert_matches_reference(model, x, lengths=lengths, threads=threads)


def test_bad_threads_are_refused():
    model = grurt.Model(ModelSpec(2, (random_gru(np.random.default_rng(0), 2, 3),)))
    for bad in (0, 65, 1.5, True):
        with pytest.raises(grurt.InputError, match="threads must be"):
            model.run(np.zeros((1, 2, 2)), threads=bad)


def test_many_threads_one_model():
    """4 threads × 1,000 calls of mixed shapes (and streams) give exactly the serial results."""
    rng = np.random.default_rng(11)
    model = padded_model(rng, "forward", True)
    shapes = [(1, 1), (1, 17), (3, 5), (6, 12), (2, 40)]
    inputs = [rng.normal(size=(b, t, 4)).astype(np.float32) for b, t in shapes]
    expected = [model.run(x) for x in inputs]
    frames = rng.normal(size=(50, 4)).astype(np.float32)
    failures = []

    def worker(seed):
        order = np.random.default_rng(seed).integers(0, len(inputs), 1000)
        stream = model.stream()                    # a Stream per thread: they hold state
        for i, k in enumerate(order):
            if not np.array_equal(model.run(inputs[k]), expected[k]):
                failures.append((seed, i, k))
            if i % 20 == 0:
                stream.reset()
                stepped = np.stack([stream.step(f) for f in frames])
                if not np.array_equal(stepped, stream_expected):
                    failures.append((seed, i, "stream"))

    stream_expected = np.stack([s for s in [model.stream()] for s in [s.step(f) for f in frames]])
    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def _score(args):
    model, x = args
    return model.run(x)


def test_pickle_and_process_pool():
    rng = np.random.default_rng(12)
    model = padded_model(rng, "bidirectional", False)
    clone = pickle.loads(pickle.dumps(model))
    assert isinstance(clone, grurt.Model)
    x = rng.normal(size=(4, 10, 4)).astype(np.float32)
    assert np.array_equal(clone.run(x), model.run(x))
    # the pickle carries data only: no code objects, no grurt internals but the spec classes
    payload = pickle.dumps(model)
    assert b"_kernels" not in payload and b"Plan" not in payload
    chunks = [x[i:i + 1] for i in range(4)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_score, [(model, c) for c in chunks]))
    assert np.array_equal(np.concatenate(results), model.run(x))
