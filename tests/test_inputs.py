"""Model.run's input checks: every bad input is a grurt.InputError whose message names the
problem; odd-but-valid inputs (any real dtype, any strides, NaN/inf) give the same result as
contiguous float32; the caller's arrays are never modified."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

import grurt
import grurt.model
from grurt.spec import Dense, LastStep, ModelSpec, Reverse, Scale

from gru_testing import random_gru, random_states

I = 3


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    return grurt.Model(ModelSpec(I, (random_gru(rng, I, 5, "bidirectional"), random_gru(rng, 10, 4))))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).normal(size=(2, 6, I)).astype(np.float32)


def refuses(fragment, model, *args, **kwargs):
    with pytest.raises(grurt.InputError, match=fragment):
        model.run(*args, **kwargs)


# ---- shape, type and size of the input ---------------------------------------------------

@pytest.mark.parametrize("shape", [(I,), (1, 2, 4, I), (), (2, 2, 2, 2, I)])
def test_wrong_rank(model, shape):
    refuses(r"input must be \(T, 3\) or \(B, T, 3\), got shape", model, np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(6, 4), (2, 6, 2), (2, 6, 1), (6, 0)])
def test_wrong_feature_count(model, shape):
    refuses(rf"input has {shape[-1]} features per step, the model expects 3", model, np.zeros(shape))


@pytest.mark.parametrize("shape", [(0, I), (2, 0, I), (0, 6, I), (0, 0, I)])
def test_no_steps_or_no_sequences(model, shape):
    refuses(r"input has no time steps or no sequences \(shape", model, np.zeros(shape, np.float32))


@pytest.mark.parametrize("value, dtype", [
    (np.full((2, 6, I), "1.5"), "<U3"), (np.zeros((2, 6, I), object), "object"),
    (np.zeros((2, 6, I), np.complex64), "complex64"), (np.zeros((6, I), np.complex128), "complex128"),
    (np.zeros((6, I), "datetime64[s]"), r"datetime64\[s\]"), (np.zeros((6, I), "timedelta64[s]"), r"timedelta64\[s\]"),
    (np.zeros((6, I), "S2"), r"\|S2"), (np.zeros((6, I), "V4"), r"\|V4"),
    ([["a", "b", "c"]] * 6, "<U1"), ([[1, None, 2]] * 6, "object"),
])
def test_non_numeric_dtypes(model, value, dtype):
    refuses(rf"input must be real numbers, got dtype {dtype}", model, value)


@pytest.mark.parametrize("value", [None, 3.0, "abc", object()])
def test_not_an_array(model, value):
    refuses(r"input must be an array of numbers, got", model, value)


def test_a_dict_names_the_input(model):
    """A dict is inputs by name (issue 11): a chain's one input is 'input'."""
    refuses(r"this model's one input is 'input', got \['x'\]", model, {"x": 1})
    refuses(r"input must be an array of numbers, got dict", model, {"input": {"x": 1}})


def test_ragged_nested_list(model):
    refuses(r"input must be a rectangular array of numbers", model, [[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]])


@pytest.mark.parametrize("shape", [(10**6, 10**6, I), (1, 10**12, I), (10**12, 1, I), (2**31, 2, I)])
def test_huge_input_refused_before_allocating(model, shape):
    """A broadcast view claims petabytes without owning them; run must refuse it from the
    shape alone (numpy allocating first would raise MemoryError or thrash instead)."""
    huge = np.broadcast_to(np.float32(0.5), shape)
    tracemalloc.start()
    try:
        refuses(r"too large for 32-bit BLAS indexing|would need .* GiB", model, huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated before refusing"


def test_memory_limit_applies_to_ordinary_arrays(model, monkeypatch):
    """A C-contiguous float32 batch (the call checked in C) is held to the same limit."""
    x = np.ones((4, 50, I), np.float32)
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 1000)
    refuses(r"input of 4 sequences × 50 steps would need 0\.0 GiB, more than the limit of 0\.0 GiB", model, x)
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 2**30)
    assert model.run(x).shape[0] == 4


def test_memory_limit(model, monkeypatch):
    """Below the 32-bit limit but above grurt.model.MEMORY_LIMIT_BYTES: refused, not allocated."""
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 8 * 2**20)
    big = np.broadcast_to(np.float32(1), (1000, 1000, I))       # needs ~0.2 GiB with workspaces
    tracemalloc.start()
    try:
        refuses(r"input of 1000 sequences × 1000 steps would need 0\.\d GiB, more than the limit of 0\.0 GiB "
                r"\(grurt.model.MEMORY_LIMIT_BYTES\)", model, big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    # a small input still runs under the low limit
    assert model.run(np.ones((4, 10, I))).shape == (4, 10, 4)


# ---- initial_state --------------------------------------------------------------------------

@pytest.mark.parametrize("state", [[], [np.zeros((2, 2, 5))], [np.zeros((2, 2, 5))] * 3, np.zeros((2, 2, 2, 5)),
                                   np.zeros((2, 2, 5)), "zeros", 0.0])
def test_initial_state_count(model, x, state):
    refuses(r"initial_state must be a list of 2 arrays, one per GRU layer", model, x, initial_state=state)


@pytest.mark.parametrize("index, state, got", [
    (0, np.zeros((1, 2, 5)), r"float64 \(1, 2, 5\)"),          # directions
    (0, np.zeros((2, 3, 5)), r"float64 \(2, 3, 5\)"),          # batch
    (0, np.zeros((2, 2, 4)), r"float64 \(2, 2, 4\)"),          # hidden
    (1, np.zeros((1, 4)), r"float64 \(1, 4\)"),               # the single-sequence form for a batch
    (1, np.zeros((2, 4)), r"float64 \(2, 4\)"),
    (1, np.zeros((1, 2, 4), np.complex64), r"complex64 \(1, 2, 4\)"),
    (1, np.full((1, 2, 4), "0"), r"<U1 \(1, 2, 4\)"),
    (1, None, r"object \(\)"),
])
def test_initial_state_shape_and_dtype(model, x, index, state, got):
    states = [np.zeros((2, 2, 5), np.float32), np.zeros((1, 2, 4), np.float32)]
    states[index] = state
    expected = r"\(2, 2, 5\)" if index == 0 else r"\(1, 2, 4\)"
    refuses(rf"initial_state\[{index}\] must be a real array of shape {expected}, got {got}", model, x,
            initial_state=states)


def test_initial_state_for_a_single_sequence(model, x):
    refuses(r"initial_state\[0\] must be a real array of shape \(2, 5\), got float64 \(2, 1, 5\)", model, x[0],
            initial_state=[np.zeros((2, 1, 5)), np.zeros((1, 4))])
    out = model.run(x[0], initial_state=[np.zeros((2, 5)), np.zeros((1, 4))])
    assert np.array_equal(out, model.run(x[0]))


def test_initial_state_ragged(model, x):
    refuses(r"initial_state\[1\] must be a rectangular array", model, x,
            initial_state=[np.zeros((2, 2, 5)), [[[0, 0, 0, 0], [0]]]])


# ---- lengths --------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, fragment", [
    ([0, 6], r"lengths must be between 1 and 6 \(the number of steps\), got 0\.\.6"),
    ([-3, 2], r"lengths must be between 1 and 6 .*got -3\.\.2"),
    ([7, 6], r"lengths must be between 1 and 6 .*got 6\.\.7"),
    ([2**40, 1], r"lengths must be between 1 and 6"),
    (np.array([2**64 - 1, 1], np.uint64), r"lengths must be between 1 and 6"),
    ([6], r"lengths must be integers of shape \(2,\), got int64 \(1,\)"),
    ([6, 6, 6], r"lengths must be integers of shape \(2,\), got int64 \(3,\)"),
    ([[6, 6]], r"lengths must be integers of shape \(2,\), got int64 \(1, 2\)"),
    (6, r"lengths must be integers of shape \(2,\), got int64 \(\)"),
    ([6.0, 5.0], r"lengths must be integers of shape \(2,\), got float64 \(2,\)"),
    ([True, True], r"lengths must be integers of shape \(2,\), got bool \(2,\)"),
    (["6", "5"], r"lengths must be integers of shape \(2,\), got <U1 \(2,\)"),
    ([[6], [5, 4]], r"lengths must be a rectangular array"),
])
def test_bad_lengths(model, x, lengths, fragment):
    refuses(fragment, model, x, lengths=lengths)


def test_lengths_for_a_single_sequence(model, x):
    full = model.run(x[0, :4])
    for lengths in (4, [4], np.int32(4)):
        out = model.run(x[0], lengths=lengths)
        assert np.array_equal(out[:4], full) and not out[4:].any()
    refuses(r"lengths must be between 1 and 6", model, x[0], lengths=9)


# ---- threads --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, 65, 1.5, True, "2"])
def test_bad_threads(model, x, bad):
    refuses(r"threads must be an integer from 1 to 64", model, x, threads=bad)


# ---- NaN and inf: as PyTorch, without crashing ----------------------------------------------

@pytest.mark.parametrize("batch", [4, 9], ids=["3-row tiles", "8-row tiles"])
def test_nan_and_inf_propagate_as_in_torch(batch):
    torch.manual_seed(batch)
    torch.set_num_threads(1)
    gru = nn.GRU(I, 9, num_layers=2, bidirectional=True, batch_first=True)
    model = grurt.from_torch(gru)
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 8, I)).astype(np.float32)
    x[0, 2, 1] = np.nan
    x[1, 7, :] = np.inf
    x[2, 0, 0], x[2, 0, 1] = np.inf, -np.inf                  # inf - inf: NaN inside the projection
    if batch > 4:
        x[3, 4, 2] = -np.inf
        x[4, 3, 0] = np.float32(3e38)                           # finite, but the projection overflows
    h0 = rng.normal(size=(4, batch, 9)).astype(np.float32)
    h0[:, 1, 0] = np.nan                                        # a NaN initial state; the last row stays clean
    with torch.no_grad():
        want, want_h = (t.numpy() for t in gru(torch.from_numpy(x), torch.from_numpy(h0)))
    for threads in (1, 3):
        got, states = model.run(x, initial_state=[h0[:2], h0[2:]], return_state=True, threads=threads)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isnan(np.concatenate(states)), np.isnan(want_h))
        finite = ~np.isnan(want)
        assert np.abs(got[finite] - want[finite]).max() <= 1e-5
    assert np.isnan(want).any() and (~np.isnan(want)).any()     # the test exercises both


@pytest.mark.parametrize("tail", ["dense", "reverse", "laststep"])
def test_nan_in_padding_does_not_leak(tail):
    """Past a sequence's length the input may hold anything, NaN included: the output there is 0
    and nothing reaches the valid steps or the state."""
    rng = np.random.default_rng(4)
    layers = [Scale(a=np.ones(I), c=np.zeros(I)), random_gru(rng, I, 6, "bidirectional"),
              {"dense": Dense(W=rng.normal(size=(2, 12)), b=np.ones(2)), "reverse": Reverse(),
               "laststep": LastStep()}[tail]]
    model = grurt.Model(ModelSpec(I, tuple(layers)))
    lengths = np.array([5, 2, 8, 1, 3, 8])
    x = rng.normal(size=(6, 8, I)).astype(np.float32)
    x[np.arange(8)[None, :] >= lengths[:, None]] = np.nan
    out, states = model.run(x, lengths=lengths, return_state=True)
    assert not np.isnan(out).any() and not np.isnan(states[0]).any()
    for b, n in enumerate(lengths):
        alone, alone_state = model.run(x[b, :n], return_state=True)
        # bit for bit: every kernel (Dense too) treats each row of a batch alike
        if tail == "laststep":
            assert np.array_equal(out[b], alone)
        else:
            assert np.array_equal(out[b, :n], alone) and not out[b, n:].any()
        assert np.array_equal(states[0][:, b], alone_state[0])


# ---- dtypes, strides and layouts: the same as contiguous float32 -----------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                   np.uint64, np.bool_, ">f4", ">f8", np.longdouble])
def test_real_dtypes_equal_float32(model, dtype):
    rng = np.random.default_rng(5)
    if np.dtype(dtype).kind == "b":
        data = rng.random(size=(3, 7, I)) > 0.5
    elif np.dtype(dtype).kind in "iu":
        data = rng.integers(0, 4, size=(3, 7, I)).astype(dtype)
    else:
        data = (rng.normal(size=(3, 7, I)) * 2).astype(dtype)
    out = model.run(data)
    assert out.dtype == np.float32
    assert np.array_equal(out, model.run(np.ascontiguousarray(data, dtype=np.float32)))


def test_strided_and_non_contiguous_inputs(model):
    rng = np.random.default_rng(6)
    base = rng.normal(size=(4, 16, 2 * I)).astype(np.float32)
    views = {
        "every other step": base[:, ::2, :I],
        "every other feature": base[:, :8, ::2],
        "negative strides": base[::-1, ::-1, I:],
        "transposed (T, B, I) -> (B, T, I)": np.swapaxes(np.ascontiguousarray(np.swapaxes(base[:, :, :I], 0, 1)), 0, 1),
        "fortran order": np.asfortranarray(base[:, :, :I]),
        "broadcast batch": np.broadcast_to(base[:1, :, :I], (4, 16, I)),
        "float64 strided": base.astype(np.float64)[:, 1::3, 1::2],
        "big-endian float32": base[:, :, :I].astype(">f4"),
    }
    for name, view in views.items():
        expected = model.run(np.ascontiguousarray(view, dtype=np.float32))
        assert np.array_equal(model.run(view), expected), name
    readonly = base[:, :, :I].copy()
    readonly.setflags(write=False)
    assert np.array_equal(model.run(readonly), model.run(readonly.copy()))


def test_lists_and_tensors_are_accepted(model, x):
    assert np.array_equal(model.run(x.tolist()), model.run(x))
    assert np.array_equal(model.run(torch.from_numpy(x)), model.run(x))
    assert np.array_equal(model.run(tuple(map(tuple, x[0].tolist()))), model.run(x[0]))


def test_single_sequence_drops_the_batch_axis(model, x):
    out, states = model.run(x[1], return_state=True)
    batch_out, batch_states = model.run(x[1:2], return_state=True)
    assert out.shape == (6, 4) and out.dtype == np.float32
    assert np.array_equal(out, batch_out[0])
    assert [s.shape for s in states] == [(2, 5), (1, 4)]
    assert all(np.array_equal(s, b[:, 0]) for s, b in zip(states, batch_states))


def test_inputs_are_never_modified(model):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 9, I)).astype(np.float32)
    x[0, 0, 0] = np.nan
    h0 = random_states(rng, model.spec, 5)
    lengths = np.array([9, 3, 5, 1, 9])
    copies = [a.copy() for a in [x, lengths] + h0]
    for arguments in [dict(), dict(initial_state=h0), dict(lengths=lengths), dict(initial_state=h0, lengths=lengths)]:
        for threads in (1, 2):
            model.run(x, return_state=True, threads=threads, **arguments)
    for before, after in zip(copies, [x, lengths] + h0):
        assert before.tobytes() == after.tobytes()
    # nor a float64 input or a single sequence
    x64 = rng.normal(size=(9, I))
    copy64 = x64.copy()
    model.run(x64)
    assert np.array_equal(x64, copy64)


def test_returned_arrays_are_fresh(model, x):
    """Two calls never share output or state buffers (a caller may keep and modify them)."""
    out1, states1 = model.run(x, return_state=True)
    keep = out1.copy(), [s.copy() for s in states1]
    out1[...] = 7
    for s in states1:
        s[...] = 7
    out2, states2 = model.run(x, return_state=True)
    assert np.array_equal(out2, keep[0])
    assert all(np.array_equal(a, b) for a, b in zip(states2, keep[1]))


def test_single_sequence_forms_agree(model, x):
    """(T, I) gives the batch-of-one result without the batch axis, whichever path checks
    it (float32 C-contiguous input is checked in C, anything else in Python)."""
    last_state = grurt.Model(ModelSpec(I, model.spec.layers[:1] + (LastStep(),)))
    for m in (model, last_state):
        want = m.run(x[:1])[0]
        for seq in (np.ascontiguousarray(x[0]), x[0].astype(np.float64), x[0].tolist()):
            got = m.run(seq)
            assert got.shape == want.shape and np.array_equal(got, want)


def test_a_list_of_inputs_for_a_chain_says_it_has_one(model):
    """A chain (one input) called as a graph of two: the message names its input and initial_state=."""
    x, h0 = np.zeros((6, I), np.float32), np.zeros((2, 5), np.float32)
    refuses(r"this model has one input, 'input', got a list of 2 arrays of different shapes "
            r"\(GRU states go in initial_state=\)", model, [x, h0])
