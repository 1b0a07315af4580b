"""Layers over time (Conv1D, Pool1D, ZeroPad1D) together with the ids, normalisation, pooling
and flattening layers: Embedding → Conv1D → GRU, a Flatten after a strided convolution (the
Flatten's T is the frames that reach it), GlobalPool and lengths through causal convolutions,
streaming a causal Conv1D with LayerNorm, and the refusals (mask_value with convolutions)."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.errors import InputError, UnsupportedModelError  # noqa: E402
from grurt.spec import (GRU, Conv1D, Dense, Embedding, Flatten, GlobalPool, LayerNorm, ModelSpec, Pool1D,  # noqa: E402
                        ZeroPad1D, activation, fixed_input_steps, output_steps)

from gru_testing import ATOL  # noqa: E402


def _conv(cin, cout, k, seed=0, **kwargs):
    rng = np.random.default_rng(seed + cin * 100 + cout * 10 + k)
    return Conv1D(W=rng.standard_normal((cout, cin, k)) / np.sqrt(cin * k), b=rng.standard_normal(cout) * 0.1,
                  **kwargs)


def _gru(inputs, hidden=5, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return GRU(W=rng.standard_normal((1, 3 * hidden, inputs)) * 0.3,
               R=rng.standard_normal((1, 3 * hidden, hidden)) * 0.3,
               B=rng.standard_normal((1, 6 * hidden)) * 0.1, linear_before_reset=True, **kwargs)


def _dense(inputs, outputs, seed=0):
    rng = np.random.default_rng(seed)
    return Dense(W=rng.standard_normal((outputs, inputs)) * 0.3, b=rng.standard_normal(outputs) * 0.1)


def _embedding(vocabulary=11, dims=4, seed=0):
    return Embedding(np.random.default_rng(seed).standard_normal((vocabulary, dims)))


def _layer_norm(size, seed=0):
    rng = np.random.default_rng(seed)
    return LayerNorm(rng.uniform(0.5, 1.5, size), rng.uniform(-0.5, 0.5, size), 1e-5)


# ---- Embedding → Conv1D → GRU ----

def _ids_crnn(causal=True):
    padding = (2, 0) if causal else (1, 1)
    return grurt.Model(ModelSpec(None, (_embedding(), _conv(4, 6, 3, padding=padding, activation=activation("relu")),
                                        _gru(6), _dense(5, 3))))


@pytest.mark.parametrize("causal", [True, False])
def test_embedding_conv_gru_matches_reference(causal):
    model = _ids_crnn(causal)
    assert model.spec.takes_ids and model.vocabulary == 11 and model.input_size is None
    ids = np.random.default_rng(1).integers(0, 11, (3, 9))
    expected = reference.run(model, ids)
    np.testing.assert_allclose(model.run(ids), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.run(ids[0]), expected[0], rtol=0, atol=ATOL)
    out, states = model.run(ids, return_state=True)
    ref_out, ref_states = reference.run(model, ids, return_state=True)
    np.testing.assert_allclose(states[0], ref_states[0], rtol=0, atol=ATOL)
    with pytest.raises(InputError, match="vocabulary"):
        model.run(np.array([[1, 2, 11]]))


def test_embedding_conv_gru_streams_with_its_conv_history():
    model = _ids_crnn(causal=True)
    ids = np.random.default_rng(2).integers(0, 11, (2, 7))
    expected = model.run(ids)
    stream = model.stream(batch=2)
    outputs = np.stack([stream.step(ids[:, t]) for t in range(ids.shape[1])], axis=1)
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=ATOL)
    state = stream.state
    assert len(state) == 2 and state[1].shape == (2, 2, 4)      # GRU state, then the conv's last 2 input frames
    table = model.spec.layers[0].table
    np.testing.assert_array_equal(state[1], table[ids[:, -2:]])
    # one id at a time (batch 1)
    one = model.stream()
    outs = np.stack([one.step(int(i)) for i in ids[0]])
    np.testing.assert_allclose(outs, expected[0], rtol=0, atol=ATOL)


def test_embedding_conv_gru_refuses_to_stream_a_non_causal_conv():
    with pytest.raises(InputError, match="cannot stream"):
        _ids_crnn(causal=False).stream()


def test_embedding_conv_gru_npz_round_trip(tmp_path):
    model = _ids_crnn()
    grurt.save(model, tmp_path / "m.npz")
    assert grurt.formats.read_header(tmp_path / "m.npz")["format_version"] == "1.1"
    ids = np.random.default_rng(3).integers(0, 11, (2, 6))
    np.testing.assert_array_equal(grurt.load(tmp_path / "m.npz").run(ids), model.run(ids))


def test_embedding_conv_gru_from_torch():
    torch = pytest.importorskip("torch")
    from torch import nn
    torch.manual_seed(0)
    emb, conv, gru, fc = nn.Embedding(11, 4), nn.Conv1d(4, 6, 3, padding=1), nn.GRU(6, 5, batch_first=True), \
        nn.Linear(5, 3)
    model = grurt.from_torch([emb, conv, nn.ReLU(), gru, fc], last_step=True)
    assert [type(layer) for layer in model.layers][:2] == [Embedding, Conv1D]
    ids = np.random.default_rng(4).integers(0, 11, (3, 8))
    with torch.no_grad():
        h = torch.relu(conv(emb(torch.from_numpy(ids)).transpose(1, 2))).transpose(1, 2)
        expected = fc(gru(h)[0][:, -1]).numpy()
    np.testing.assert_allclose(model.run(ids), expected, rtol=0, atol=ATOL)


def test_mask_value_with_convolutions_is_refused():
    with pytest.raises(UnsupportedModelError, match="mask_value"):
        ModelSpec(None, (_embedding(), _conv(4, 6, 3), _gru(6)), mask_value=0)
    with pytest.raises(UnsupportedModelError, match="mask_value"):
        ModelSpec(4, (_conv(4, 6, 3, padding=(2, 0)), _gru(6)), mask_value=0.0)


# ---- Flatten after layers that change T ----

def _flatten_model():
    """(B, T, 4) → Conv1D stride 2 (valid, k=3) → GRU(5) → Flatten(4) → Dense: T = 9 or 10 gives 4 frames."""
    return grurt.Model(ModelSpec(4, (_conv(4, 6, 3, stride=2), _gru(6), Flatten(4), _dense(20, 2))))


def test_flatten_after_a_strided_conv_counts_the_frames_that_reach_it():
    model = _flatten_model()
    assert model.spec.fixed_steps == 4 and fixed_input_steps(model.spec) == 9
    assert output_steps(model.spec, 10) == 4
    for steps in (9, 10):
        x = np.random.default_rng(steps).standard_normal((2, steps, 4)).astype(np.float32)
        np.testing.assert_allclose(model.run(x), reference.run(model, x), rtol=0, atol=ATOL)
    for steps in (8, 11):
        x = np.zeros((1, steps, 4), np.float32)
        with pytest.raises(InputError, match="flattens exactly 4 frames"):
            model.run(x)
        with pytest.raises(ValueError):
            reference.run(model, x)


def test_fixed_input_steps():
    assert fixed_input_steps(ModelSpec(4, (_gru(4), Flatten(3), _dense(15, 2)))) == 3
    assert fixed_input_steps(ModelSpec(4, (_gru(4),))) is None
    pooled = ModelSpec(4, (ZeroPad1D(1, 0), Pool1D("max", 2, 2), _gru(4), Flatten(5), _dense(25, 2)))
    assert fixed_input_steps(pooled) == 9 and output_steps(pooled, 9) == 5


def test_keras_flatten_after_conv_and_pooling_reads_the_pooled_length(tmp_path):
    keras = pytest.importorskip("keras")
    L = keras.layers
    model = keras.Sequential([keras.Input((13, 4)), L.Conv1D(6, 3, strides=2), L.MaxPooling1D(2),
                              L.GRU(5, return_sequences=True), L.Flatten(), L.Dense(2)])
    x = np.random.default_rng(0).standard_normal((3, 13, 4)).astype(np.float32)
    expected = np.asarray(model.predict(x, verbose=0))
    model.save(tmp_path / "m.keras")
    for converted in (grurt.from_keras(model), grurt.load(tmp_path / "m.keras")):
        assert converted.spec.fixed_steps == 3       # 13 → 6 (conv, stride 2) → 3 (pool)
        np.testing.assert_allclose(converted.run(x), expected, rtol=0, atol=ATOL)
        np.testing.assert_allclose(reference.run(converted, x), expected, rtol=0, atol=ATOL)


# ---- GlobalPool, LayerNorm and lengths through causal convolutions ----

@pytest.mark.parametrize("mode", ["average", "max"])
def test_global_pool_with_lengths_through_a_causal_conv(mode):
    model = grurt.Model(ModelSpec(4, (_conv(4, 6, 3, padding=(2, 0), dilation=1), _layer_norm(6), _gru(6),
                                      GlobalPool(mode), _dense(5, 2))))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 4)).astype(np.float32)
    lengths = np.array([8, 3, 5])
    x[1, 3:] = 0.0
    x[2, 5:] = 0.0
    got = model.run(x, lengths=lengths)
    np.testing.assert_allclose(got, reference.run(model, x, lengths=lengths), rtol=0, atol=ATOL)
    for b, n in enumerate(lengths):        # a padded batch gives what each sequence gives alone
        np.testing.assert_allclose(got[b], model.run(x[b, :n]), rtol=0, atol=ATOL)


def test_lengths_refused_through_a_strided_conv_before_global_pool():
    model = grurt.Model(ModelSpec(4, (_conv(4, 6, 3, stride=2), _gru(6), GlobalPool("average"))))
    with pytest.raises(InputError, match="lengths cannot be used"):
        model.run(np.zeros((2, 9, 4), np.float32), lengths=np.array([9, 5]))


def test_causal_conv_layer_norm_gru_streams():
    model = grurt.Model(ModelSpec(4, (_conv(4, 6, 4, padding=(6, 0), dilation=2), _layer_norm(6), _gru(6),
                                      _dense(5, 2))))
    x = np.random.default_rng(6).standard_normal((2, 10, 4)).astype(np.float32)
    expected = model.run(x)
    np.testing.assert_allclose(expected, reference.run(model, x), rtol=0, atol=ATOL)
    stream = model.stream(batch=2)
    outputs = np.stack([stream.step(x[:, t]) for t in range(10)], axis=1)
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=ATOL)


def test_global_pool_and_flatten_still_refuse_to_stream_after_a_causal_conv():
    for tail in ((GlobalPool("max"),), (Flatten(3), _dense(15, 2))):
        model = grurt.Model(ModelSpec(4, (_conv(4, 6, 3, padding=(2, 0)), _gru(6)) + tail))
        with pytest.raises(InputError, match="whole sequence"):
            model.stream()
