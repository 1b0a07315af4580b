"""Kernels vs the float64 reference for Embedding, LayerNorm, UnitNorm, GlobalPool, Flatten and
GRUCell-style models (issue 12); token-id input checks; streaming. Tolerance: ATOL (1e-5)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import grurt
from grurt import reference
from grurt.spec import (GRU, Dense, Embedding, Flatten, GlobalPool, LastStep, LayerNorm, ModelSpec,
                        UnitNorm)
from gru_testing import assert_matches_reference, max_abs_diff, random_gru, random_states
from tolerances import ATOL

#: stepping vs run: the same kernels, but the products run on other row counts (as in test_stream)
STEP_TOL = 1e-6


def layer_norm(rng, size, epsilon=1e-5):
    return LayerNorm(rng.uniform(0.5, 1.5, size), rng.normal(size=size) * 0.3, epsilon)


def embedding(rng, vocabulary, features):
    return Embedding(rng.normal(size=(vocabulary, features)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), steps=st.integers(1, 9),
       features=st.integers(1, 9), hidden=st.integers(1, 17), epsilon=st.sampled_from([1e-5, 1e-3, 0.1]),
       unit_epsilon=st.sampled_from([0.0, 1e-12, 1e-6]), pool=st.sampled_from(["average", "max", None]),
       padded=st.booleans(), initial=st.booleans())
def test_norm_and_pool_layers_match_reference(seed, batch, steps, features, hidden, epsilon, unit_epsilon, pool,
                                              padded, initial):
    rng = np.random.default_rng(seed)
    layers = [layer_norm(rng, features, epsilon), random_gru(rng, features, hidden),
              layer_norm(rng, hidden, epsilon), UnitNorm(unit_epsilon), random_gru(rng, hidden, 3)]
    layers.append(GlobalPool(pool) if pool else LastStep())
    layers.append(Dense(rng.normal(size=(2, 3)), rng.normal(size=2)))
    model = grurt.Model(ModelSpec(features, tuple(layers)))
    x = rng.normal(size=(batch, steps, features)).astype(np.float32)
    lengths = rng.integers(1, steps + 1, batch) if padded else None
    states = random_states(rng, model.spec, batch) if initial else None
    # A LayerNorm scales the float32 rounding of its input by about 1/σ: keep to data whose valid
    # steps vary (σ² ≥ 1e-3 at both LayerNorms), as a framework's own float32 result would differ too
    gru_out = reference.run(ModelSpec(features, tuple(layers[:2])), x, None if states is None else states[:1],
                            lengths=lengths)
    valid = np.arange(steps)[None, :] < (np.full(batch, steps) if lengths is None else lengths)[:, None]
    assume(min(x.var(axis=-1)[valid].min(), gru_out.var(axis=-1)[valid].min()) >= 1e-3)
    assert_matches_reference(model, x, initial_state=states, lengths=lengths)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), steps=st.integers(1, 8),
       vocabulary=st.integers(1, 30), features=st.integers(1, 8), hidden=st.integers(1, 12),
       padded=st.booleans())
def test_embedding_flatten_match_reference(seed, batch, steps, vocabulary, features, hidden, padded):
    rng = np.random.default_rng(seed)
    spec = ModelSpec(None, (embedding(rng, vocabulary, features), random_gru(rng, features, hidden),
                            layer_norm(rng, hidden), Flatten(steps), Dense(rng.normal(size=(3, steps * hidden)) * 0.3,
                                                                          np.zeros(3))))
    model = grurt.Model(spec)
    ids = rng.integers(0, vocabulary, (batch, steps))
    lengths = rng.integers(1, steps + 1, batch) if padded else None
    assert_matches_reference(model, ids, lengths=lengths)
    assert max_abs_diff(model.run(ids[0]), reference.run(spec, ids[0])) <= ATOL       # one sequence (T,)


def test_unit_norm_of_zero_steps_is_zero():
    spec = ModelSpec(2, (GRU(np.zeros((1, 6, 2)), np.zeros((1, 6, 2)), np.zeros((1, 12))), UnitNorm(0.0)))
    out = grurt.Model(spec).run(np.zeros((3, 2), np.float32))
    assert (out == 0).all()


def test_global_max_propagates_nan():
    rng = np.random.default_rng(0)
    spec = ModelSpec(2, (random_gru(rng, 2, 3), GlobalPool("max")))
    x = rng.normal(size=(1, 4, 2)).astype(np.float32)
    x[0, 1, 0] = np.nan
    assert np.isnan(grurt.Model(spec).run(x)).all()


# ---- token ids: checked before any table row is read ----

def ids_model(vocabulary=10, mask_value=None):
    rng = np.random.default_rng(1)
    return grurt.Model(ModelSpec(None, (embedding(rng, vocabulary, 3), random_gru(rng, 3, 4)), mask_value=mask_value))


@pytest.mark.parametrize("bad, fragment", [
    ([[1, -1]], "token id -1 is outside the vocabulary [0, 10)"),
    ([[10]], "token id 10 is outside"),
    (np.array([[2**62]]), "outside"),
    (np.array([2**64 - 1], np.uint64), "outside"),
    (np.array([-2**63], np.int64), "outside"),
    ([[1.0, 2.0]], "integer token ids, got dtype float64"),
    (np.ones((2, 3), np.float32), "dtype float32"),
    ([[True, False]], "dtype bool"),
    ([[2**70]], "dtype object"),
    (np.zeros((2, 3, 1), np.int64), "must be (T,) or (B, T)"),
    (np.zeros((0, 3), np.int64), "no time steps"),
    ("abc", "array of token ids"),
])
def test_bad_ids_are_input_errors(bad, fragment):
    with pytest.raises(grurt.InputError) as info:
        ids_model().run(bad)
    assert fragment in str(info.value)


@pytest.mark.parametrize("bad", [10, -1, 1.5, True, np.array([1, 2]), np.array([[1]]), np.int64(99)])
def test_bad_stream_ids_are_input_errors(bad):
    with pytest.raises(grurt.InputError):
        ids_model().stream().step(bad)


def test_any_integer_dtype():
    model = ids_model()
    ids = np.array([[1, 2, 3], [4, 5, 9]])
    expected = model.run(ids)
    for dtype in (np.int8, np.uint8, np.int16, np.int32, np.uint32, np.uint64):
        assert np.array_equal(model.run(ids.astype(dtype)), expected)
    assert np.array_equal(model.run(ids.tolist()), expected)
    assert np.array_equal(model.run(np.asfortranarray(ids)), expected)


def test_padding_id_gives_lengths():
    model = ids_model(mask_value=0)
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    out = model.run(ids)
    by_lengths = model.run(ids, lengths=np.array([3, 5]))
    assert np.array_equal(out[1], by_lengths[1]) and np.array_equal(out[0, :3], by_lengths[0, :3])
    assert (by_lengths[0, 3:] == 0).all()
    # issue 21: masked steps as Keras gives them (the GRU repeats its last output), anywhere in a sequence
    assert (out[0, 3:] == out[0, 2]).all()
    for masked in (np.array([[3, 0, 5]]), np.array([[0, 0]])):
        assert_matches_reference(model, masked)


# ---- streaming ----

def test_stream_ids_equals_run():
    rng = np.random.default_rng(2)
    spec = ModelSpec(None, (embedding(rng, 20, 5), random_gru(rng, 5, 8), layer_norm(rng, 8), UnitNorm(1e-12),
                            random_gru(rng, 8, 4), Dense(rng.normal(size=(2, 4)), np.zeros(2))))
    model = grurt.Model(spec)
    ids = rng.integers(0, 20, (3, 6))
    expected, states = model.run(ids, return_state=True)
    stream = model.stream(batch=3)
    out = np.empty((3, 2), np.float32)
    for t in range(6):
        assert stream.step(ids[:, t], out=out) is out
        assert max_abs_diff(out, expected[:, t]) <= STEP_TOL
    for got, want in zip(stream.state, states):
        assert max_abs_diff(got, want) <= STEP_TOL
    single = model.stream()
    assert max_abs_diff(np.stack([single.step(int(i)) for i in ids[1]]), expected[1]) <= STEP_TOL


def test_grucell_streams_as_decoder():
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    cell, head = torch.nn.GRUCell(4, 6), torch.nn.Linear(6, 4)
    model = grurt.from_torch([cell, head])
    x, h = torch.randn(2, 4), torch.randn(2, 6)
    stream = model.stream(batch=2)
    stream.state = [h.numpy()[None]]
    y = x.numpy()
    with torch.no_grad():
        for _ in range(5):
            h = cell(x, h)
            x = head(h)
            y = stream.step(y)
            assert max_abs_diff(y, x.numpy()) <= ATOL
            assert max_abs_diff(stream.state[0][0], h.numpy()) <= ATOL
            # run on one step with the state given is the same step
    out, (state,) = model.run(y[:, None], initial_state=[h.numpy()[None]], return_state=True)
    with torch.no_grad():
        assert max_abs_diff(out, head(cell(torch.from_numpy(y), h)).numpy()) <= ATOL


@pytest.mark.parametrize("layer", [GlobalPool("average"), Flatten(4)])
def test_whole_sequence_layers_refuse_to_stream(layer):
    rng = np.random.default_rng(4)
    model = grurt.Model(ModelSpec(2, (random_gru(rng, 2, 3), layer)))
    with pytest.raises(grurt.InputError, match=type(layer).__name__):
        model.stream()


def test_flatten_runs_only_on_its_steps():
    rng = np.random.default_rng(5)
    model = grurt.Model(ModelSpec(2, (random_gru(rng, 2, 3), Flatten(4), Dense(rng.normal(size=(1, 12)), [0.0]))))
    assert model.run(rng.normal(size=(4, 2))).shape == (1,)
    with pytest.raises(grurt.InputError, match="only on sequences of 4 steps"):
        model.run(rng.normal(size=(2, 5, 2)).astype(np.float32))


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    spec = ModelSpec(None, (embedding(rng, 12, 3), random_gru(rng, 3, 5), layer_norm(rng, 5, 1e-3),
                            UnitNorm(1e-12), Flatten(4), Dense(rng.normal(size=(2, 20)), np.zeros(2))), mask_value=0)
    path = str(tmp_path / "model.npz")
    grurt.save(grurt.Model(spec), path)
    loaded = grurt.load(path)
    assert [layer.describe() for layer in loaded.spec.layers] == [layer.describe() for layer in spec.layers]
    assert loaded.spec.mask_value == 0 and loaded.input_size is None
    ids = rng.integers(1, 12, (3, 4))
    assert np.array_equal(loaded.run(ids), grurt.Model(spec).run(ids))
    spec = ModelSpec(3, (random_gru(rng, 3, 5), GlobalPool("max")))
    grurt.save(spec, path)
    assert grurt.load(path).spec.layers[1].mode == "max"


def test_token_id_blocks_and_pools_equal_stepping():
    """stream.run on blocks of ids and a pool stepping sessions of ids give exactly what stepping
    one Stream per sequence gives; bad ids are refused by both."""
    rng = np.random.default_rng(5)
    model = grurt.Model(ModelSpec(None, (embedding(rng, 12, 4), random_gru(rng, 4, 7),
                                         Dense(rng.normal(size=(2, 7)), np.zeros(2)))))
    ids = rng.integers(0, 12, (3, 9))
    stepped = []
    for b in range(3):
        stream = model.stream()
        stepped.append(np.stack([stream.step(int(i)) for i in ids[b]]))
    stepped = np.stack(stepped)
    block = model.stream(batch=3)
    assert np.array_equal(np.concatenate([block.run(ids[:, :4]), block.run(ids[:, 4:])], axis=1), stepped)
    single = model.stream()
    assert np.array_equal(single.run(ids[1]), stepped[1])
    pool = model.stream_pool(8)
    sessions = np.array([pool.open() for _ in range(3)])
    got = np.stack([pool.step(sessions, ids[:, t]) for t in range(9)], axis=1)
    assert np.array_equal(got, stepped)
    with pytest.raises(grurt.InputError, match="token id 12 is outside the vocabulary"):
        pool.step(sessions, np.array([1, 12, 3]))
    with pytest.raises(grurt.InputError, match="integer token ids"):
        single.run(np.ones((4,), np.float32))
