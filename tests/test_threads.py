"""run(threads=N) on grurt's worker pool (src/grurt/_pool.h, run_gru in _kernels.pyx).

Whatever the split (directions and batch slices claimed as tasks, or the units of each step
in groups), every output and state must be bit for bit that of one thread, and within 1e-5
of the float64 reference. ``set_split_policy("always")`` makes every eligible layer split
whatever the machine measures, so that these tests run the threaded paths; the default
("auto") is tested too. The pool survives fork (the child creates its own workers) and is
shared by concurrent callers.
"""
import multiprocessing
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

import grurt
from grurt import _kernels
from grurt.spec import Dense, LastStep, ModelSpec
from gru_testing import assert_matches_reference, random_gru, random_states

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def always_split():
    previous = _kernels.set_split_policy("always")
    yield
    _kernels.set_split_policy(previous)


def gru_model(seed, I, H, direction="forward", return_sequences=True, layers=1, **kwargs):
    rng = np.random.default_rng(seed)
    grus = tuple(random_gru(rng, I if k == 0 else H * (2 if direction == "bidirectional" else 1), H, direction,
                            return_sequences=return_sequences or k < layers - 1, **kwargs)
                 for k in range(layers))
    return grurt.Model(ModelSpec(I, grus)), rng


def assert_same_as_one_thread(model, rng, B, T, threads, with_state=True, with_lengths=True):
    x = rng.normal(size=(B, T, model.input_size)).astype(np.float32)
    h0 = random_states(rng, model.spec, B) if with_state else None
    lengths = rng.integers(1, T + 1, size=B) if with_lengths else None
    one = model.run(x, initial_state=h0, return_state=True, lengths=lengths)
    many = model.run(x, initial_state=h0, return_state=True, lengths=lengths, threads=threads)
    assert np.array_equal(one[0], many[0])
    for a, b in zip(one[1], many[1]):
        assert np.array_equal(a, b)
    assert np.array_equal(model.run(x, threads=threads), model.run(x))     # the C fast path
    assert_matches_reference(model, x, h0, lengths, threads=threads)


@pytest.mark.parametrize("H", [128, 256, 1056])     # 1056: 33 panels, groups of unequal size
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_units_split_is_bit_exact(always_split, H, direction, return_sequences):
    model, rng = gru_model([H, len(direction), return_sequences], 24, H, direction, return_sequences)
    for B, T, threads in ((1, 37, 2), (1, 5, 3), (1, 16, 2), (1, 17, 4)):
        assert_same_as_one_thread(model, rng, B, T, threads)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("B", [2, 3, 17, 64])
def test_batch_and_direction_tasks_are_bit_exact(always_split, direction, B):
    model, rng = gru_model([B, len(direction)], 12, 64, direction, layers=2)
    for threads in (2, 3, 8):
        assert_same_as_one_thread(model, rng, B, 23, threads)


@pytest.mark.parametrize("lbr", [0, 1])
def test_layers_outside_the_units_split(always_split, lbr):
    """linear_before_reset = 0, or other activations: no units split, batch tasks still."""
    model, rng = gru_model([lbr], 10, 128, "forward", layers=2, linear_before_reset=bool(lbr))
    for B in (1, 5):
        assert_same_as_one_thread(model, rng, B, 30, 2)


def test_auto_policy_is_bit_exact():
    """The default: each call runs split or on one thread as measured; the results do not
    depend on which (a stack of two GRU(128) and a Dense: the W2 shape)."""
    rng = np.random.default_rng(7)
    spec = ModelSpec(40, (random_gru(rng, 40, 128), random_gru(rng, 128, 128, return_sequences=True),
                          LastStep(), Dense(rng.normal(size=(12, 128)).astype(np.float32) * 0.1,
                                            np.zeros(12, np.float32))))
    model = grurt.Model(spec)
    x = rng.normal(size=(1, 60, 40)).astype(np.float32)
    expected = model.run(x)
    for _ in range(40):
        assert np.array_equal(model.run(x, threads=2), expected)


def test_plan_run_returns_the_threads_that_ran(always_split):
    model, rng = gru_model(3, 8, 128, "bidirectional")
    x = rng.normal(size=(4, 40, 8)).astype(np.float32)
    out = np.empty((4, 40, 256), np.float32)
    assert model._plan.run(x, None, None, out, 1) == 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ran = model._plan.run(x, None, None, out, 2)
    assert 1 <= ran <= min(2, usable)
    assert _kernels.pool_workers() <= max(usable - 1, 0)
    assert np.array_equal(out, model.run(x))


def test_concurrent_callers_share_the_pool(always_split):
    """Python threads calling run(threads=2) at once: each takes the workers that are free
    (the others run on their own thread); the pool never has more workers than CPUs - 1."""
    model, rng = gru_model(4, 16, 256, "forward", return_sequences=False)
    xs = [rng.normal(size=(1, 40, 16)).astype(np.float32) for _ in range(4)]
    expected = [model.run(x) for x in xs]
    errors = []

    def work(k):
        try:
            for _ in range(30):
                if not np.array_equal(model.run(xs[k], threads=2), expected[k]):
                    errors.append(k)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _kernels.pool_workers() <= max(os.cpu_count() - 1, 0)


def _child_run(args):
    model, x = args
    return model.run(x, threads=2), _kernels.pool_workers()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pool_after_fork(always_split):
    """A child forked after the pool started has no workers (threads do not survive fork):
    it creates its own when it needs them, and computes the same results."""
    model, rng = gru_model(5, 16, 256, "forward", return_sequences=False)
    x = rng.normal(size=(1, 40, 16)).astype(np.float32)
    expected = model.run(x)
    assert np.array_equal(model.run(x, threads=2), expected)       # the parent's pool is running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report 1 on success; never return into pytest
        ok = 0
        try:
            ok = int(np.array_equal(model.run(x, threads=2), expected)
                     and _kernels.pool_workers() <= max(os.cpu_count() - 1, 0))
        finally:
            os.write(write, bytes([ok]))
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"\x01"
    os.close(read)
    os.waitpid(pid, 0)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for out, workers in pool.map(_child_run, [(model, x)] * 4):
            assert np.array_equal(out, expected)
            assert workers <= max(os.cpu_count() - 1, 0)
    assert np.array_equal(model.run(x, threads=2), expected)       # and the parent's still works


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_pool_c_harness(tmp_path):
    """tests/c/pool_harness.c: every item of a job runs once, phase order holds, concurrent
    callers and a forked child work (the pool in C, without Python)."""
    binary = tmp_path / "pool_harness"
    subprocess.run(["cc", "-O2", "-pthread", "-I", os.path.join(HERE, "..", "src", "grurt"),
                    os.path.join(HERE, "c", "pool_harness.c"), "-o", str(binary)], check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


@pytest.mark.parametrize("H", [128, 256])
def test_stream_threads_are_bit_exact(always_split, H):
    """A stream made with threads=2 (each step's units in groups, summed forwards as streams
    do) steps bit for bit as a one-thread stream, frame by frame and in blocks."""
    model, rng = gru_model([H, 9], 16, H, "forward", layers=2)
    frames = rng.normal(size=(1, 20, 16)).astype(np.float32)
    one, two = model.stream(), model.stream(threads=2)
    assert two.threads == 2
    for t in range(frames.shape[1]):
        assert np.array_equal(one.step(frames[:, t]), two.step(frames[:, t]))
    assert np.array_equal(one.run(frames), two.run(frames))
    with pytest.raises(grurt.InputError, match="threads"):
        model.stream(threads=0)
