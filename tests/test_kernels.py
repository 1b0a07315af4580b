"""The Cython kernels (grurt.Model.run) against the float64 numpy reference (grurt.reference.run).

Tolerance everywhere: max abs difference <= 1e-5 (gru_testing.ATOL) on outputs *and* returned
states, with weights scaled so that every value stays O(1) (gru_testing asserts the reference
stays below 20), i.e. about 100 float32 ulps. What must not change the numbers at all (the
batch a sequence runs in, threads, a single sequence against a batch of one) is compared bit
for bit (np.array_equal).

Kinks: relu, leaky_relu, hard_sigmoid, elu, affine and clip are continuous (Lipschitz), so a
float32 rounding error e in a pre-activation changes their output by at most L*e, kink or not:
no special care needed. thresholded_relu is discontinuous (it jumps by alpha at x = alpha): it is
kept out of the big property tests and compared only on examples whose every pre-activation is
more than 1e-4 away from alpha (gru_testing.kink_monitor measures this in the reference).

Hypothesis runs derandomized with a fixed number of examples, so CI is reproducible.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import grurt
from grurt import _kernels, reference
from grurt.spec import Activation, Dense, LastStep, ModelSpec, Reverse, Scale, activation

from gru_testing import (CONTINUOUS_ACTIVATIONS, DIRECTIONS, GRU_ACTIVATIONS, assert_matches_reference,
                         max_abs_diff, random_activation, random_gru, random_states, run_both)

_BASE = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def profile(**options):
    """Derandomized (reproducible in CI), no deadline, no example database."""
    return settings(_BASE, **options)

# Hidden sizes around the edges of the products' packed column panels (GRURT_PANEL = 32
# columns; the one-row kernel takes panels in pairs, and with AVX-512 3-6 panels, 96-192
# columns, in one pass). The recurrent products have 3H (lbr=1) or 2H + H (lbr=0) output
# columns, so edges of H, 2H and 3H all matter.
PANEL_EDGES = (1, 2, 10, 11, 16, 17, 21, 22, 31, 32, 33, 42, 43, 63, 64, 65, 95, 96, 97, 127, 128, 129, 160)
hidden_sizes = st.one_of(st.sampled_from(PANEL_EDGES), st.integers(1, 160))
BOUNDED_GATES = ("sigmoid", "hard_sigmoid", "tanh", "softsign", "scaled_tanh")


def _lengths(rng, batch, steps):
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[rng.integers(batch)] = steps      # the full length is the common case
    return lengths


# ---------------------------------------------------------------------------------------------
# One GRU layer, every option, many shapes
# ---------------------------------------------------------------------------------------------

@profile(max_examples=150)
@given(I=st.integers(1, 64), H=hidden_sizes, T=st.integers(1, 120), B=st.integers(1, 8),
       lbr=st.booleans(), direction=st.sampled_from(DIRECTIONS),
       f=st.sampled_from(CONTINUOUS_ACTIVATIONS), g=st.sampled_from(CONTINUOUS_ACTIVATIONS),
       clip=st.one_of(st.none(), st.floats(0.25, 4.0)), with_state=st.booleans(),
       return_sequences=st.booleans(), with_lengths=st.booleans(), threads=st.sampled_from((1, 1, 2, 3, 4)),
       seed=st.integers(0, 2**32 - 1))
@pytest.mark.slow
def test_gru_layer_matches_reference(I, H, T, B, lbr, direction, f, g, clip, with_state, return_sequences,
                                     with_lengths, threads, seed):
    """threads > 1 splits directions and batch slices over threads (each slice has its own
    batch size, so its own mix of the products' row tiles)."""
    rng = np.random.default_rng(seed)
    layer = random_gru(rng, I, H, direction, lbr, random_activation(rng, f), random_activation(rng, g),
                       clip, return_sequences)
    model = grurt.Model(ModelSpec(I, (layer,)))
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    h0 = random_states(rng, model.spec, B) if with_state else None
    lengths = _lengths(rng, B, T) if with_lengths else None
    assert_matches_reference(model, x, h0, lengths, threads=threads)


@pytest.mark.parametrize("g", GRU_ACTIVATIONS)
@pytest.mark.parametrize("f", GRU_ACTIVATIONS)
def test_every_activation_pair(f, g):
    """Each activation as gate (f) and as candidate (g), both reset positions, clip on and off,
    bidirectional with lengths and initial state; batches of 1 (the one-row product), 3 (a
    3-row tile), 8 and 9 (an AVX-512 8-row tile, or 3-row tiles and one-row leftovers without
    AVX-512)."""
    for variant, (lbr, clip, batch) in enumerate([(True, None, 3), (False, None, 9), (True, 1.5, 8),
                                                  (False, 0.75, 1)]):
        # thresholded_relu jumps at alpha: try seeds until no pre-activation is within 1e-4 of it
        for seed in range(40):
            rng = np.random.default_rng([GRU_ACTIVATIONS.index(f), GRU_ACTIVATIONS.index(g), variant, seed])
            layer = random_gru(rng, 5, 9, "bidirectional", lbr, random_activation(rng, f),
                               random_activation(rng, g), clip)
            model = grurt.Model(ModelSpec(5, (layer,)))
            x = rng.normal(size=(batch, 12, 5)).astype(np.float32)
            h0 = random_states(rng, model.spec, batch)
            lengths = _lengths(rng, batch, 12)
            *_, margin = run_both(model, x, h0, lengths)
            if margin > 1e-4:
                break
        assert_matches_reference(model, x, h0, lengths)


@profile(max_examples=60, suppress_health_check=list(HealthCheck))
@given(I=st.integers(1, 8), H=st.integers(1, 12), T=st.integers(1, 16), B=st.integers(1, 6),
       lbr=st.booleans(), direction=st.sampled_from(DIRECTIONS), as_gate=st.booleans(),
       other=st.sampled_from(GRU_ACTIVATIONS), clip=st.one_of(st.none(), st.floats(0.5, 3.0)),
       seed=st.integers(0, 2**32 - 1))
def test_thresholded_relu(I, H, T, B, lbr, direction, as_gate, other, clip, seed):
    """thresholded_relu on small shapes, examples with a pre-activation near the jump discarded."""
    rng = np.random.default_rng(seed)
    fns = [random_activation(rng, "thresholded_relu"), random_activation(rng, other)]
    f, g = fns if as_gate else fns[::-1]
    model = grurt.Model(ModelSpec(I, (random_gru(rng, I, H, direction, lbr, f, g, clip),)))
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    h0 = random_states(rng, model.spec, B)
    *_, margin = run_both(model, x, h0)
    assume(margin > 1e-4)
    assert_matches_reference(model, x, h0)


# ---------------------------------------------------------------------------------------------
# Stacks: 1-3 GRU layers with Dense / Activation / Scale / Reverse / LastStep around them
# ---------------------------------------------------------------------------------------------

@st.composite
def stacked_models(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    I = draw(st.integers(1, 24))
    n_gru = draw(st.integers(1, 3))
    layers, features = [], I
    if draw(st.booleans()):
        layers.append(Scale(a=rng.uniform(0.5, 1.5, I), c=rng.normal(size=I) * 0.2))
    for k in range(n_gru):
        last = k == n_gru - 1
        H = draw(st.sampled_from((1, 7, 33, 64, 65, 100)))
        direction = draw(st.sampled_from(DIRECTIONS))
        # deeper layers get inputs of unknown scale: unbounded gate functions there could push
        # z above 1 and the stack would diverge, so they take bounded gates (the single-layer
        # tests cover every gate function on unit-scale inputs)
        f = random_activation(rng, draw(st.sampled_from(CONTINUOUS_ACTIVATIONS if k == 0 else BOUNDED_GATES)))
        g = random_activation(rng, draw(st.sampled_from(CONTINUOUS_ACTIVATIONS)))
        clip = draw(st.one_of(st.none(), st.floats(0.5, 3.0)))
        return_sequences = (not last) or draw(st.booleans())
        layers.append(random_gru(rng, features, H, direction, draw(st.booleans()), f, g, clip, return_sequences))
        features = layers[-1].output_size
        if not last:
            extra = draw(st.sampled_from(("none", "dense", "activation", "scale", "reverse")))
            if extra == "dense":
                out = draw(st.integers(1, 40))
                layers.append(Dense(W=rng.normal(size=(out, features)) / np.sqrt(features), b=rng.normal(size=out) * 0.2,
                                    activation=activation(draw(st.sampled_from(("linear", "tanh", "relu", "softmax"))))))
                features = out
            elif extra == "activation":
                layers.append(Activation(activation(draw(st.sampled_from(("softmax", "tanh", "elu", "softsign"))))))
            elif extra == "scale":
                layers.append(Scale(a=rng.uniform(0.5, 1.5, features), c=rng.normal(size=features) * 0.2))
            elif extra == "reverse":
                layers.append(Reverse())
    has_time = layers[-1].return_sequences
    tail = draw(st.sampled_from(("none", "reverse", "laststep", "dense", "dense_softmax", "softmax", "scale")))
    if tail == "reverse" and has_time:
        layers.append(Reverse())
    elif tail == "laststep" and has_time:
        layers.append(LastStep())
    elif tail in ("dense", "dense_softmax"):
        out = draw(st.integers(1, 12))
        fn = activation("softmax" if tail == "dense_softmax" else "linear")
        layers.append(Dense(W=rng.normal(size=(out, features)) / np.sqrt(features), b=rng.normal(size=out), activation=fn))
    elif tail == "softmax":
        layers.append(Activation(activation("softmax")))
    elif tail == "scale":
        layers.append(Scale(a=rng.uniform(-2, 2, features), c=rng.normal(size=features)))
    return ModelSpec(I, tuple(layers)), seed


@profile(max_examples=80)
@given(model_and_seed=stacked_models(), T=st.integers(1, 60), B=st.integers(1, 8), with_state=st.booleans(),
       with_lengths=st.booleans(), threads=st.sampled_from((1, 2, 4)))
@pytest.mark.slow
def test_stacked_models_match_reference(model_and_seed, T, B, with_state, with_lengths, threads):
    spec, seed = model_and_seed
    rng = np.random.default_rng(seed + 1)
    model = grurt.Model(spec)
    x = rng.normal(size=(B, T, spec.input_size)).astype(np.float32)
    h0 = random_states(rng, spec, B) if with_state else None
    lengths = _lengths(rng, B, T) if with_lengths else None
    assert_matches_reference(model, x, h0, lengths, threads=threads)
    # and a single (T, I) sequence gives bit for bit what a batch of one gives
    single = model.run(x[0], initial_state=None if h0 is None else [s[:, 0] for s in h0])
    batch_of_one = model.run(x[:1], initial_state=None if h0 is None else [s[:, :1] for s in h0])[0]
    assert np.array_equal(single, batch_of_one)


# ---------------------------------------------------------------------------------------------
# Batch sizes (the products' row tiles, thread slices) and the panel boundaries
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lbr", [True, False], ids=["lbr1", "lbr0"])
@pytest.mark.parametrize("H", [1, 21, 22, 31, 32, 33, 63, 64, 65, 128, 129])
def test_batch_sizes_across_panel_edges(H, lbr):
    """Batch sizes from 1 to 17 (the products have separate kernels for one row, tiles of 3
    rows and AVX-512 tiles of 8 rows, and batches split over threads) matches the reference,
    and every sequence of a batch gives bit for bit what it gives alone (B = 1): each kernel
    sums the same products in the same order, which alternates from step to step."""
    rng = np.random.default_rng([H, lbr])
    I, T = 11, 25
    f = random_activation(rng, "hard_sigmoid") if H % 2 else None      # the generic gate pass too
    model = grurt.Model(ModelSpec(I, (random_gru(rng, I, H, "bidirectional", lbr, gate=f),)))
    x = rng.normal(size=(17, T, I)).astype(np.float32)
    h0 = random_states(rng, model.spec, 17)
    alone = [model.run(x[b], initial_state=[s[:, b] for s in h0], return_state=True) for b in range(17)]
    for B in (1, 2, 3, 4, 5, 6, 8, 9, 17):
        state = [s[:, :B] for s in h0]
        assert_matches_reference(model, x[:B], state)
        # threads=4 with two directions: two batch slices per direction, each with its own
        # row tiles (B=17 -> slices of 8 and 9; B=5 -> 2 and 3)
        for threads in (1, 4):
            out, states = model.run(x[:B], initial_state=state, return_state=True, threads=threads)
            for b in range(B):
                assert np.array_equal(out[b], alone[b][0])
                assert np.array_equal(states[0][:, b], alone[b][1][0])


@pytest.mark.parametrize("n_out", [1, 12, 31, 32, 33, 70])
def test_dense_rows_do_not_depend_on_the_batch(n_out):
    """Dense runs on the packed panel kernels (not BLAS sgemm, whose per-row results change
    with the number of rows): a sequence's outputs are bit for bit the same alone and in
    batches of 1 to 17, for output sizes around the 32-column panels."""
    rng = np.random.default_rng(n_out)
    I, H, T = 3, 40, 9
    model = grurt.Model(ModelSpec(I, (random_gru(rng, I, H), Dense(rng.normal(size=(n_out, H)) * 0.3,
                                                                    rng.normal(size=n_out), activation("tanh")))))
    x = rng.normal(size=(17, T, I)).astype(np.float32)
    alone = [model.run(x[b]) for b in range(17)]
    for B in (1, 2, 3, 5, 8, 9, 16, 17):
        out = model.run(x[:B])
        for b in range(B):
            assert np.array_equal(out[b], alone[b])
    assert_matches_reference(model, x)


def test_fast_and_generic_gate_pass_agree():
    """sigmoid/tanh without clip takes the fused fast pass; the same functions through the
    generic pass (a clip too large to act) must give the same numbers within 1e-6."""
    rng = np.random.default_rng(7)
    layer = random_gru(rng, 6, 70, "forward", True)
    clipped = random_gru(np.random.default_rng(7), 6, 70, "forward", True, clip=1e30)
    x = rng.normal(size=(5, 40, 6)).astype(np.float32)
    a = grurt.Model(ModelSpec(6, (layer,))).run(x)
    b = grurt.Model(ModelSpec(6, (clipped,))).run(x)
    assert max_abs_diff(a, b) <= 1e-6
    assert_matches_reference(grurt.Model(ModelSpec(6, (layer,))), x)


# ---------------------------------------------------------------------------------------------
# lengths: a padded batch gives what each sequence gives alone
# ---------------------------------------------------------------------------------------------

def _padded_model(rng, direction, lbr, return_sequences, tail):
    layers = [random_gru(rng, 4, 20, direction, lbr)]
    features = layers[0].output_size
    layers.append(random_gru(rng, features, 13, direction, not lbr, return_sequences=return_sequences))
    features = layers[-1].output_size
    if return_sequences and tail == "reverse":
        layers.append(Reverse())
    if return_sequences and tail == "laststep":
        layers.append(LastStep())
    if tail == "dense":
        layers.append(Dense(W=rng.normal(size=(3, features)), b=np.ones(3), activation=activation("softmax")))
    return grurt.Model(ModelSpec(4, tuple(layers)))


@pytest.mark.parametrize("tail", ["none", "reverse", "laststep", "dense"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("B", [3, 7], ids=["B3", "B7"])     # B3: lbr=1 then lbr=0 layers; B7: lbr=0 then 1
def test_lengths_match_each_sequence_alone(B, direction, return_sequences, tail):
    rng = np.random.default_rng([B, DIRECTIONS.index(direction), return_sequences, len(tail)])
    model = _padded_model(rng, direction, B == 3, return_sequences, tail)
    T = 17
    lengths = np.array([17, 1, 9, 16, 2, 11, 5][:B])
    x = rng.normal(size=(B, T, 4)).astype(np.float32)
    x[np.arange(T)[None, :] >= lengths[:, None]] = rng.normal(size=(1, 4)) * 100   # loud padding
    h0 = random_states(rng, model.spec, B)
    out, states = model.run(x, initial_state=h0, lengths=lengths, return_state=True, threads=2)
    assert_matches_reference(model, x, h0, lengths)
    for b, L in enumerate(lengths):
        alone, alone_states = model.run(x[b, :L], initial_state=[s[:, b] for s in h0], return_state=True)
        # bit for bit: every kernel (Dense too) treats each row of a batch alike, and the
        # recurrent sums alternate with the step index, the same alone and padded
        if model.spec.returns_sequence:
            assert np.array_equal(out[b, :L], alone)
            assert np.all(out[b, L:] == 0), "outputs past a sequence's length must be exactly zero"
        else:
            assert np.array_equal(out[b], alone)
        for s, a in zip(states, alone_states):
            assert np.array_equal(s[:, b], a)


# ---------------------------------------------------------------------------------------------
# The non-GRU layers, checked against their plain definitions (not only the reference)
# ---------------------------------------------------------------------------------------------

def test_layers_follow_their_definitions():
    rng = np.random.default_rng(3)
    I, B, T = 6, 5, 9
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    x64 = x.astype(np.float64)
    lengths = np.array([9, 3, 1, 7, 8])
    W, b = rng.normal(size=(4, I)), rng.normal(size=4)
    a, c = rng.normal(size=I), rng.normal(size=I)
    W32, b32, a32, c32 = (v.astype(np.float32).astype(np.float64) for v in (W, b, a, c))

    def run(*layers, **kw):
        return grurt.Model(ModelSpec(I, layers)).run(x, **kw)

    # Dense: x·Wᵀ + b
    assert max_abs_diff(run(Dense(W=W, b=b)), x64 @ W32.T + b32) <= 1e-5
    # softmax over the feature axis: rows sum to 1
    y = run(Dense(W=W, b=b, activation=activation("softmax")))
    e = np.exp(x64 @ W32.T + b32)
    assert max_abs_diff(y, e / e.sum(-1, keepdims=True)) <= 1e-6
    assert max_abs_diff(y.sum(-1), np.ones((B, T))) <= 1e-6
    y = run(Activation(activation("softmax")))
    e = np.exp(x64)
    assert max_abs_diff(y, e / e.sum(-1, keepdims=True)) <= 1e-6
    # Scale: x·a + c
    assert max_abs_diff(run(Scale(a=a, c=c)), x64 * a32 + c32) <= 1e-6
    # Reverse: the time axis flipped (exactly: it is a copy)
    assert np.array_equal(run(Reverse()), x[:, ::-1])
    # ... each sequence within its own length; padding zero
    y = run(Reverse(), lengths=lengths)
    for i, L in enumerate(lengths):
        assert np.array_equal(y[i, :L], x[i, :L][::-1])
        assert np.all(y[i, L:] == 0)
    # LastStep: out[:, -1], or each sequence's last valid step
    assert np.array_equal(run(LastStep()), x[:, -1])
    assert np.array_equal(run(LastStep(), lengths=lengths), x[np.arange(B), lengths - 1])
    assert np.array_equal(run(Reverse(), LastStep(), lengths=lengths), x[:, 0])
    # an Activation after LastStep works on (B, F)
    y = run(LastStep(), Activation(activation("tanh")))
    assert y.shape == (B, I) and max_abs_diff(y, np.tanh(x64[:, -1])) <= 3e-7


@pytest.mark.parametrize("kind", [k for k in GRU_ACTIVATIONS] + ["linear"])
def test_activation_layer_matches_reference(kind):
    """Every elementwise function as a layer (the same C code as inside the GRU)."""
    rng = np.random.default_rng(list(GRU_ACTIVATIONS + ("linear",)).index(kind))
    fn = random_activation(rng, kind)
    x = rng.uniform(-6, 6, size=(3, 200, 7)).astype(np.float32)
    if kind == "thresholded_relu":      # keep inputs 1e-4 away from the jump at alpha
        x[np.abs(x - fn.alpha) < 1e-4] += 1e-3
    model = grurt.Model(ModelSpec(7, (Activation(fn),)))
    assert max_abs_diff(model.run(x), reference.run(model, x)) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Threads: the same numbers, bit for bit, and the number of threads asked for
# ---------------------------------------------------------------------------------------------

def _plan_run(model, x, h0, lengths, threads):
    """Plan.run as Model.run calls it: (output, final states, the number of threads that ran
    the largest GRU layer)."""
    B, T = x.shape[:2]
    out = np.empty((B, T, model.output_size) if model.spec.returns_sequence else (B, model.output_size), np.float32)
    states = [np.array(s, np.float32, order="C") for s in h0]
    used = model._plan.run(x, states, None if lengths is None else np.asarray(lengths, np.int32), out, threads)
    return out, states, used


def _assert_threads(model, x, h0, lengths, threads, expected_threads, against_reference=True):
    """threads > 1 against the float64 reference, bit for bit against one thread, and run on
    up to ``expected_threads`` threads: split whatever the machine measures
    (set_split_policy("always")), and a split that silently fell back to one thread fails
    (a worker may find the work done when it wakes, so some call of a few must report more
    than one thread)."""
    previous = _kernels.set_split_policy("always")
    try:
        one = _plan_run(model, x, h0, lengths, 1)
        assert one[2] == 1
        most = 1
        for attempt in range(50):
            many = _plan_run(model, x, h0, lengths, threads)
            assert 1 <= many[2] <= expected_threads
            assert np.array_equal(many[0], one[0])
            assert all(np.array_equal(a, b) for a, b in zip(many[1], one[1]))
            most = max(most, many[2])
            if most == expected_threads and attempt >= 2:
                break
        assert most == expected_threads, f"threads={threads}: at most {most} threads ran the layer, not {expected_threads}"
        if against_reference:
            assert_matches_reference(model, x, h0, lengths, threads=threads)
        # zero initial states kept in the workspace (another path through Model.run), bit for bit too
        assert np.array_equal(model.run(x, threads=threads), model.run(x))
    finally:
        _kernels.set_split_policy(previous)


@pytest.mark.parametrize("H, direction, return_sequences", [
    (1056, "reverse", True)] + [pytest.param(*case, marks=pytest.mark.slow) for case in [
        (1024, "forward", True), (1024, "forward", False), (1024, "reverse", False)]])
def test_units_split_over_threads(H, direction, return_sequences):
    """threads > batch and a large one-direction GRU (H >= 1024, whole panels of 32 units,
    sigmoid/tanh, linear_before_reset = 1): each step's units are split into groups that the
    threads claim, a group of step s starting once step s - 1 is complete. Every unit's
    arithmetic is that of one thread, so outputs and states must be identical (H = 1056: 33
    panels, groups of unequal size). The pool runs at most one thread per usable CPU."""
    cpus = os.cpu_count()
    if cpus == 1:
        pytest.skip("one CPU: the unit split runs at most one thread per CPU, so it cannot run here")
    rng = np.random.default_rng([H, len(direction)])
    I, T = 16, 37
    model = grurt.Model(ModelSpec(I, (random_gru(rng, I, H, direction, return_sequences=return_sequences),)))
    for B, threads in ((1, 2), (1, 3), (2, 4)):
        x = rng.normal(size=(B, T, I)).astype(np.float32)
        h0 = random_states(rng, model.spec, B)
        lengths = np.array([T, 20][:B])
        # the float64 reference (about a second for H = 1024) once per layer
        _assert_threads(model, x, h0, lengths, threads, min(threads, cpus), against_reference=B == 2)


@pytest.mark.parametrize("direction, H, lbr, B, threads, expected", [
    ("bidirectional", 40, True, 1, 2, 2),       # a direction per thread
    ("bidirectional", 33, False, 3, 4, 4),      # two batch slices per direction
    ("bidirectional", 40, True, 5, 3, 2),       # threads left over: each direction on one
    ("forward", 65, False, 5, 3, 3),            # batch slices of 1, 2 and 2
    ("reverse", 40, True, 9, 2, 2),
    ("forward", 1024, True, 4, 2, 2),           # a large layer: batch slices, no unit split
])
def test_directions_and_batch_split_over_threads(direction, H, lbr, B, threads, expected):
    """Directions and slices of the batch are independent recurrences, one per thread: each
    gives bit for bit what it gives on one thread."""
    rng = np.random.default_rng([H, B, threads])
    I, T = 7, 29
    f = None if lbr else random_activation(rng, "hard_sigmoid")         # the generic gate pass too
    model = grurt.Model(ModelSpec(I, (random_gru(rng, I, H, direction, lbr, gate=f),)))
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    h0 = random_states(rng, model.spec, B)
    _assert_threads(model, x, h0, _lengths(rng, B, T), threads, min(expected, os.cpu_count()))
