"""Streaming lowered Keras models (issue 21; TensorModel.stream): models beyond grurt's fused layers
whose maths is causal — TimeDistributed(Dense) before a GRU, a causal Conv1D front-end, a Conv2D
front-end padded in time only before the frames, attention from each frame over a static input (a
second model input, an encoder's output, given once per stream with ``static=``) — stream frame by
frame and in blocks as the whole sequence runs, and the whole sequence as Keras 3 ``predict``
(ATOL: a stream's BLAS products differ from a block's in their last bits, tests/test_tensor_stream.py).
Attention over the sequence itself, a GRU reading it backwards and a GRU reading a mask need the
whole sequence: ``stream()`` refuses them naming the node and why."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt.tensor_model import TensorModel  # noqa: E402
from keras_testing import as_tuple  # noqa: E402
from test_keras_masking import randomize  # noqa: E402
from tolerances import ATOL  # noqa: E402

BATCH, STEPS, FEATURES = 2, 9, 4


def time_distributed():
    x = keras.Input((None, FEATURES), name="x")
    h = layers.TimeDistributed(layers.Dense(5, activation="relu"), name="td")(x)
    h = layers.GRU(6, return_sequences=True, name="gru")(h)
    h = layers.Permute((1, 2), name="same")(h)         # beyond the fused layers
    return keras.Model(x, layers.Dense(2, name="out")(h)), {}


def causal_conv1d():
    x = keras.Input((None, FEATURES), name="x")
    h = layers.Conv1D(5, 3, padding="causal", dilation_rate=2, activation="tanh", name="conv")(x)
    h = layers.GRU(6, return_sequences=True, name="gru")(layers.LayerNormalization(name="norm")(h))
    h = layers.TimeDistributed(layers.Dense(3), name="td")(h)
    return keras.Model(x, layers.Reshape((-1, 3, 1), name="r")(h)), {}


def conv2d_front_end():
    """(T, 8, 2) frames, padded in time only before them, Conv2D (3, 3) → (T, 8·3) → GRU → Dense."""
    x = keras.Input((None, 8, 2), name="x")
    h = layers.ZeroPadding2D(((2, 0), (1, 1)), name="pad")(x)
    h = layers.Conv2D(3, (3, 3), activation="relu", name="conv")(h)
    h = layers.Reshape((-1, 8 * 3), name="frames")(h)
    h = layers.GRU(5, return_sequences=True, name="gru")(h)
    return keras.Model(x, layers.Dense(2, name="out")(h)), {}


def static_attention():
    """Each frame's GRU output attends over a static encoder output: Attention, MultiHeadAttention,
    AdditiveAttention."""
    x, enc = keras.Input((None, FEATURES), name="x"), keras.Input((6, 5), name="enc")
    q = layers.GRU(5, return_sequences=True, name="q")(x)
    luong = layers.Attention(use_scale=True, name="luong")([q, enc])
    mha = layers.MultiHeadAttention(2, 3, name="mha")(q, enc)
    bahdanau = layers.AdditiveAttention(name="bahdanau")([q, enc])
    return keras.Model([x, enc], layers.Dense(2, name="out")(layers.Concatenate()([luong, mha, bahdanau]))), {
        "time_axes": {"x": 1}}


MODELS = {"time_distributed": time_distributed, "causal_conv1d": causal_conv1d,
          "conv2d_front_end": conv2d_front_end, "static_attention": static_attention}


def data(model, rng, steps=STEPS):
    """(frames, static inputs) of ``model``."""
    frames = rng.standard_normal((BATCH, steps, *model.inputs[0].shape[2:])).astype(np.float32)
    static = {t.name: rng.standard_normal((BATCH, *t.shape[1:])).astype(np.float32) for t in model.inputs[1:]}
    return frames, static


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(as_tuple(a), as_tuple(b)))


@pytest.fixture(scope="module", params=list(MODELS))
def case(request, tmp_path_factory):
    model, options = MODELS[request.param]()
    randomize(model, np.random.default_rng(21))
    path = tmp_path_factory.mktemp("keras_stream") / f"{request.param}.keras"
    model.save(path)
    return request.param, model, options, str(path)


def test_streams_as_the_whole_sequence_runs(case):
    name, model, options, path = case
    rng = np.random.default_rng(3)
    frames, static = data(model, rng)
    for converted in (grurt.from_keras(model), grurt.load(path)):
        assert isinstance(converted, TensorModel)
        inputs = [frames, *static.values()] if static else frames
        whole = converted.run(inputs)
        assert max_diff(whole, model.predict(inputs, verbose=0)) < ATOL
        stream = converted.stream(BATCH, static=static or None, **options)
        stepped = np.stack([stream.step(frames[:, t]) for t in range(STEPS)], axis=1)
        assert max_diff(stepped, whole) < ATOL, name
        stream.reset()
        blocks = np.concatenate([stream.run(frames[:, :4]), stream.run(frames[:, 4:])], axis=1)
        assert max_diff(blocks, whole) < ATOL, name


def test_static_inputs_change_on_reset():
    model, options = static_attention()
    randomize(model, np.random.default_rng(5))
    converted = grurt.from_keras(model)
    rng = np.random.default_rng(6)
    frames, first = data(model, rng)
    _, second = data(model, rng)
    stream = converted.stream(BATCH, static=first, **options)
    stream.run(frames)
    stream.reset(static=second)
    assert max_diff(stream.run(frames), converted.run([frames, second["enc"]])) < ATOL


def self_attention():
    x = keras.Input((None, FEATURES), name="x")
    q = layers.GRU(5, return_sequences=True, name="q")(x)
    return keras.Model(x, layers.Attention(name="self_att")([q, q]))


def causal_self_attention():
    x = keras.Input((None, FEATURES), name="x")
    q = layers.GRU(5, return_sequences=True, name="q")(x)
    return keras.Model(x, layers.MultiHeadAttention(2, 3, name="mha")(q, q, use_causal_mask=True))


def backwards():
    x = keras.Input((None, FEATURES), name="x")
    h = layers.Bidirectional(layers.GRU(3, return_sequences=True), name="bi")(x)
    return keras.Model(x, layers.Permute((1, 2))(h))


def masked():
    x = keras.Input((None, FEATURES), name="x")
    g = layers.GRU(3, return_sequences=True, name="g")(layers.Masking(name="m")(x))
    return keras.Model(x, layers.Attention(name="att")([g, g]))


@pytest.mark.parametrize("build, message", [
    (self_attention, r"node 'self_att/MatMul' \(MatMul\): multiplies two tensors over time \(attention over the "
                     r"frames\); this model cannot stream"),
    (causal_self_attention, r"node 'mha/MatMul' \(MatMul\): multiplies two tensors over time"),
    (backwards, r"node 'bi/GRU' \(GRU\): a bidirectional GRU reads the sequence from its end"),
    (masked, r"node 'g/grurt.MaskedGRU' \(grurt.MaskedGRU\): .*this model cannot stream"),
])
def test_whole_sequence_models_refuse_to_stream(build, message):
    model = build()
    converted = grurt.from_keras(model)
    assert isinstance(converted, TensorModel)
    with pytest.raises(grurt.UnsupportedModelError, match=message):
        converted.stream(BATCH)
