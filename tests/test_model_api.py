"""The Model API: output and state shapes, initial_state continuation, pickling, threads."""
from __future__ import annotations

import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import grurt
from grurt.spec import Dense, LastStep, ModelSpec, activation

from gru_testing import random_gru, random_states


def make(I, *layers):
    return grurt.Model(ModelSpec(I, tuple(layers)))


# ---- shapes ----------------------------------------------------------------------------------

def test_gru_dense_one_output():
    rng = np.random.default_rng(0)
    model = make(4, random_gru(rng, 4, 8, return_sequences=False), Dense(W=rng.normal(size=(1, 8)), b=[0.5]))
    x = rng.normal(size=(5, 12, 4)).astype(np.float32)
    out = model.run(x)
    assert out.shape == (5, 1) and out.dtype == np.float32
    assert model.run(x[0]).shape == (1,)
    assert model.output_size == 1 and model.input_size == 4
    # the same through LastStep on a sequence-returning GRU
    seq_model = make(4, random_gru(np.random.default_rng(0), 4, 8), LastStep(),
                     Dense(W=np.random.default_rng(0).normal(size=(1, 8)), b=[0.5]))
    assert seq_model.run(x).shape == (5, 1)


@pytest.mark.parametrize("B", [1, 3, 6])
def test_bidirectional_sequence_and_states(B):
    rng = np.random.default_rng(B)
    H, T = 7, 10
    model = make(3, random_gru(rng, 3, H, "bidirectional"), random_gru(rng, 2 * H, 5, "reverse"),
                 random_gru(rng, 5, 4, "bidirectional", return_sequences=False))
    x = rng.normal(size=(B, T, 3)).astype(np.float32)
    out, states = model.run(x, return_state=True)
    assert out.shape == (B, 2 * 4)                     # last layer returns its final states
    assert [s.shape for s in states] == [(2, B, H), (1, B, 5), (2, B, 4)]
    assert all(s.dtype == np.float32 for s in states)
    # the last-state output is [forward final, reverse final] of the last layer
    assert np.array_equal(out, np.concatenate([states[2][0], states[2][1]], axis=-1))

    out, states = model.run(x[0], return_state=True)
    assert out.shape == (8,)
    assert [s.shape for s in states] == [(2, H), (1, 5), (2, 4)]

    seq = make(3, random_gru(rng, 3, H, "bidirectional"))
    out, states = seq.run(x, return_state=True)
    assert out.shape == (B, T, 2 * H)
    assert [s.shape for s in states] == [(2, B, H)]
    # forward final state = forward output at the last step; reverse final = reverse output at step 0
    assert np.array_equal(states[0][0], out[:, -1, :H])
    assert np.array_equal(states[0][1], out[:, 0, H:])
    assert seq.run(x[0]).shape == (T, 2 * H)


def test_return_state_flag_and_call_alias():
    rng = np.random.default_rng(1)
    model = make(2, random_gru(rng, 2, 3))
    x = rng.normal(size=(2, 4, 2)).astype(np.float32)
    out = model.run(x)
    assert isinstance(out, np.ndarray)
    both = model.run(x, return_state=True)
    assert isinstance(both, tuple) and len(both) == 2 and isinstance(both[1], list)
    assert np.array_equal(model(x), out)
    assert np.array_equal(model.run(x), out)          # deterministic
    assert "GRU(hidden=3" in repr(model)


def test_model_needs_a_spec():
    with pytest.raises(TypeError, match="ModelSpec"):
        grurt.Model([random_gru(np.random.default_rng(0), 2, 3)])


# ---- initial_state: running in two halves = running the whole ---------------------------------

@pytest.mark.parametrize("B", [1, 3, 7])
@pytest.mark.parametrize("lbr", [True, False])
def test_two_halves_equal_the_whole(B, lbr):
    """Forward GRUs (stacked, sequence-returning): the states after the first half, fed as the
    initial state of the second half, continue the run (within 1e-6: the recurrent product alternates its summation order with the
    step's index within a call, so a half that starts at an odd step sums in the other order)."""
    rng = np.random.default_rng([B, lbr])
    model = make(4, random_gru(rng, 4, 9, linear_before_reset=lbr), random_gru(rng, 9, 70, linear_before_reset=lbr),
                 random_gru(rng, 70, 5, linear_before_reset=not lbr))
    x = rng.normal(size=(B, 30, 4)).astype(np.float32)
    h0 = random_states(rng, model.spec, B)
    whole, whole_states = model.run(x, initial_state=h0, return_state=True)
    for cut in (1, 13, 29):
        first, mid = model.run(x[:, :cut], initial_state=h0, return_state=True)
        second, end = model.run(x[:, cut:], initial_state=mid, return_state=True)
        assert np.abs(np.concatenate([first, second], axis=1) - whole).max() <= 1e-6
        assert all(np.abs(a - b).max() <= 1e-6 for a, b in zip(end, whole_states))
    # one sequence, (T, I), with (D, H) states
    first, mid = model.run(x[0, :11], initial_state=[s[:, 0] for s in h0], return_state=True)
    second, end = model.run(x[0, 11:], initial_state=mid, return_state=True)
    assert np.abs(np.concatenate([first, second]) - whole[0]).max() <= 1e-6
    assert all(np.abs(a - b[:, 0]).max() <= 1e-6 for a, b in zip(end, whole_states))


def test_zero_initial_state_is_the_default():
    rng = np.random.default_rng(2)
    model = make(3, random_gru(rng, 3, 6, "bidirectional"), random_gru(rng, 12, 4))
    x = rng.normal(size=(4, 8, 3)).astype(np.float32)
    zeros = [np.zeros((2, 4, 6)), np.zeros((1, 4, 4))]
    assert np.array_equal(model.run(x, initial_state=zeros), model.run(x))
    assert np.array_equal(model.run(x, initial_state=tuple(zeros), return_state=True)[0], model.run(x))


# ---- pickling --------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip(protocol):
    rng = np.random.default_rng(3)
    model = make(5, random_gru(rng, 5, 66, "bidirectional", False, activation("hard_sigmoid", 0.3, 0.4),
                               activation("softsign"), clip=2.0),
                 random_gru(rng, 132, 8, return_sequences=False), Dense(W=rng.normal(size=(2, 8)), b=[1.0, -1.0]))
    x = rng.normal(size=(6, 15, 5)).astype(np.float32)
    h0 = random_states(rng, model.spec, 6)
    model.run(x)                                      # a used model pickles the same
    clone = pickle.loads(pickle.dumps(model, protocol=protocol))
    assert isinstance(clone, grurt.Model) and clone is not model
    a, sa = model.run(x, initial_state=h0, return_state=True)
    b, sb = clone.run(x, initial_state=h0, return_state=True)
    assert np.array_equal(a, b)
    assert all(np.array_equal(p, q) for p, q in zip(sa, sb))
    assert repr(clone) == repr(model)



def _score(args):
    model, x = args
    return model.run(x)


def test_models_run_in_a_process_pool():
    """A Model sent to worker processes (pickled as spec and weights, no code) gives the same bits."""
    rng = np.random.default_rng(12)
    model = make(4, random_gru(rng, 4, 11, "bidirectional", False), random_gru(rng, 22, 6),
                 Dense(W=rng.normal(size=(2, 6)), b=np.ones(2)))
    payload = pickle.dumps(model)
    assert b"_kernels" not in payload and b"Plan" not in payload
    x = rng.normal(size=(4, 10, 4)).astype(np.float32)
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_score, [(model, x[i:i + 1]) for i in range(4)]))
    assert all(np.array_equal(r, model.run(x[i:i + 1])) for i, r in enumerate(results))

# ---- threads ---------------------------------------------------------------------------------

def test_concurrent_calls_equal_serial_calls():
    """4 threads calling one Model at once (the GIL is released in the kernels) give bit-identical
    results to the same calls made one after another."""
    rng = np.random.default_rng(4)
    model = make(6, random_gru(rng, 6, 40, "bidirectional"), random_gru(rng, 80, 65, linear_before_reset=False),
                 Dense(W=rng.normal(size=(3, 65)), b=np.zeros(3)))
    jobs = []
    for k in range(16):
        B = (1, 3, 5, 9)[k % 4]                        # one row, 3-row and 8-row tiles
        x = rng.normal(size=(B, 20 + k, 6)).astype(np.float32)
        lengths = rng.integers(1, 21 + k, size=B) if k % 3 == 0 else None
        jobs.append((x, lengths, 1 + k % 2))
    serial = [model.run(x, lengths=lengths, return_state=True, threads=threads) for x, lengths, threads in jobs]

    results = {}
    barrier = threading.Barrier(4)
    errors = []

    def worker(w):
        try:
            barrier.wait()
            for repeat in range(3):
                for j in range(w, len(jobs), 4) if repeat % 2 == 0 else range(len(jobs))[::-1]:
                    x, lengths, threads = jobs[j]
                    results.setdefault((w, repeat, j), model.run(x, lengths=lengths, return_state=True,
                                                                 threads=threads))
        except Exception as exc:   # reported below: an exception in a thread must fail the test
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    assert len(results) == 4 * (2 * 4 + len(jobs))
    for (w, repeat, j), (out, states) in results.items():
        assert np.array_equal(out, serial[j][0]), (w, repeat, j)
        assert all(np.array_equal(a, b) for a, b in zip(states, serial[j][1])), (w, repeat, j)
