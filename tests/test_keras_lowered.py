"""Keras models beyond grurt's fused layers, lowered onto ONNX ops (grurt.importers.keras.lower): each
model is converted live, from a ``.keras`` archive and from an ``.h5`` file, and compared with Keras 3
``model.predict`` and with grurt's float64 reference of the lowered graph (``run_tensor_graph``),
within ATOL. Weights are random (batch-norm statistics too), so every weight matters."""
import copy
import json
import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

import grurt  # noqa: E402
from grurt.importers.keras import _live_triple, read_keras  # noqa: E402
from grurt.importers.keras.lower import lower_keras  # noqa: E402
from grurt.reference import run_tensor_graph  # noqa: E402
from tolerances import ATOL  # noqa: E402

BATCH, STEPS = 3, 10


def randomized(model, seed=0):
    """The model with random weights: variances in [0.5, 1.5], everything else N(0, 0.4²)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "variance" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            weight.assign((0.4 * rng.standard_normal(shape)).astype(np.float32))
    return model


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ---- the models ----

def mha_model():
    """The issue's model, small: BiGRU → MultiHeadAttention(4 heads) → GlobalAveragePooling1D → Dense."""
    x = keras.Input((STEPS, 5), name="x")
    h = layers.Bidirectional(layers.GRU(8, return_sequences=True), name="bigru")(x)
    a = layers.MultiHeadAttention(num_heads=4, key_dim=4, name="mha")(h, h)
    return keras.Model(x, layers.Dense(3, name="out")(layers.GlobalAveragePooling1D(name="pool")(a)))


def attention_model():
    """GRU → Attention([q, v]) (scaled, causal, with its scores), Attention(concat) with a key,
    AdditiveAttention; MultiHeadAttention with a gate, output_shape, a causal and sliding-window mask."""
    x = keras.Input((STEPS, 4), name="x")
    q = layers.GRU(6, return_sequences=True, name="q")(x)
    v = layers.GRU(6, return_sequences=True, go_backwards=True, name="v")(x)
    luong, scores = layers.Attention(use_scale=True, name="luong")([q, v], use_causal_mask=True,
                                                                   return_attention_scores=True)
    concat = layers.Attention(use_scale=True, score_mode="concat", name="concat")([q, v, q])
    additive = layers.AdditiveAttention(name="additive")([q, v])
    gated = layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=5, use_gate=True, output_shape=(2, 4),
                                      sliding_window=3, name="gated")(q, v, use_causal_mask=True)
    return keras.Model(x, [layers.Concatenate(name="joined")([luong, concat, additive]), scores, gated])


def permute_model():
    """A Sequential model: Permute (B, F, T) → (B, T, F) → GRU → Dense."""
    return keras.Sequential([keras.Input((4, STEPS)), layers.Permute((2, 1)), layers.GRU(5), layers.Dense(2)])


def time_distributed_model():
    """TimeDistributed(GRU) over (B, S, W, F), then a GRU over the sentences."""
    x = keras.Input((4, 6, 3), name="x")
    words = layers.TimeDistributed(layers.GRU(5), name="words")(x)
    return keras.Model(x, layers.Dense(2, name="out")(layers.GRU(4, name="sentences")(words)))


def attention_pooling(h, units, name):
    """Attention pooling as hierarchical attention networks write it: u = tanh(W h), a = softmax(u·c),
    s = Σ a h."""
    u = layers.Dense(units, activation="tanh", name=f"{name}_u")(h)
    score = layers.Flatten(name=f"{name}_flat")(layers.Dense(1, use_bias=False, name=f"{name}_score")(u))
    weights = layers.Softmax(name=f"{name}_weights")(score)
    return layers.Dot(axes=1, name=f"{name}_sum")([weights, h])


def han_model():
    """A small hierarchical attention network: a word encoder (Embedding → BiGRU → attention pooling) run
    on each sentence by TimeDistributed(sub-model), then a sentence BiGRU and attention pooling."""
    words = keras.Input((6,), dtype="int32", name="words")
    h = layers.Bidirectional(layers.GRU(5, return_sequences=True), name="word_gru")(
        layers.Embedding(30, 4, name="embed")(words))
    encoder = keras.Model(words, attention_pooling(h, 6, "word"), name="word_encoder")
    doc = keras.Input((4, 6), dtype="int32", name="doc")
    sentences = layers.TimeDistributed(encoder, name="sentences")(doc)
    s = layers.Bidirectional(layers.GRU(4, return_sequences=True), name="sentence_gru")(sentences)
    return keras.Model(doc, layers.Dense(3, activation="softmax", name="out")(attention_pooling(s, 5, "doc")))


def conv2d_model():
    """A chord-recognition front-end, small: (T, 16, 2) → BatchNorm → Conv2D 3×3 same → Conv2D 1×16 valid →
    Reshape to (T, C) → Bidirectional GRU → Dense."""
    x = keras.Input((STEPS, 16, 2), name="cqt")
    h = layers.BatchNormalization(name="bn")(x)
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(h)
    h = layers.Conv2D(6, (1, 16), name="squash")(h)
    h = layers.Reshape((STEPS, 6), name="squeeze")(h)
    h = layers.Bidirectional(layers.GRU(5, return_sequences=True), name="bigru")(h)
    return keras.Model(x, layers.Dense(3, activation="softmax", name="chords")(h))


def autoencoder_model():
    """A GRU autoencoder: GRU → RepeatVector → GRU → TimeDistributed(Dense)."""
    x = keras.Input((STEPS, 3), name="x")
    code = layers.GRU(6, name="encoder")(x)
    h = layers.GRU(6, return_sequences=True, name="decoder")(layers.RepeatVector(STEPS, name="repeat")(code))
    return keras.Model(x, layers.TimeDistributed(layers.Dense(3), name="out")(h))


def recurrent_model():
    """GRU variants: Bidirectional merge modes sum / ave / mul / None and a non-mirrored pair, go_backwards,
    reset_after=False, hard_sigmoid, return_state, initial_state."""
    x = keras.Input((STEPS, 3), name="x")
    h0 = keras.Input((4,), name="h0")
    seqs = [layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode=mode, name=f"bi_{mode}")(x)
            for mode in ("sum", "ave", "mul")]
    fwd, bwd = layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode=None, name="bi_none")(x)
    odd = layers.Bidirectional(layers.GRU(4, return_sequences=True, reset_after=False),
                               backward_layer=layers.GRU(3, return_sequences=True, go_backwards=True),
                               name="bi_odd")(x)
    back = layers.GRU(4, return_sequences=True, go_backwards=True, recurrent_activation="hard_sigmoid",
                      name="back")(x)
    last, state = layers.GRU(4, return_state=True, name="stateful")(x, initial_state=h0)
    bi_last, h_f, h_b = layers.Bidirectional(layers.GRU(4, return_state=True), name="bi_state")(x)
    joined = layers.Concatenate(name="joined")([*seqs, fwd, bwd, odd, back])
    return keras.Model([x, h0], [joined, last, state, bi_last, h_f, h_b])


def layers_model():
    """Activation layers, normalizations, 1-D convolutions and pools, cropping, padding, merges, Dot,
    EinsumDense, keras.ops operations."""
    x = keras.Input((STEPS, 4), name="x")
    g = layers.GRU(6, return_sequences=True, name="gru")(x)
    acts = [layers.ReLU(max_value=0.5, negative_slope=0.1, threshold=0.2, name="relu")(g),
            layers.LeakyReLU(negative_slope=0.25, name="leaky")(g), layers.PReLU(name="prelu")(g),
            layers.ELU(alpha=0.7, name="elu")(g), layers.Softmax(axis=1, name="softmax")(g),
            layers.ThresholdedReLU(theta=0.1, name="thresholded")(g) if hasattr(layers, "ThresholdedReLU") else g,
            layers.Activation("gelu", name="gelu")(g), layers.Activation("hard_sigmoid", name="hsig")(g),
            layers.Activation("swish", name="swish")(g), layers.Activation("selu", name="selu")(g),
            layers.LayerNormalization(name="ln")(g), layers.UnitNormalization(name="unit")(g),
            layers.BatchNormalization(name="bn")(g)]
    merged = [layers.Add(name="add")(acts[:3]), layers.Subtract(name="sub")(acts[3:5]),
              layers.Multiply(name="mul")(acts[5:7]), layers.Average(name="avg")(acts[7:10]),
              layers.Maximum(name="max")(acts[10:12]), layers.Minimum(name="min")([acts[12], g])]
    h = layers.Concatenate(name="cat")(merged)                                   # (B, T, 36)
    c = layers.Conv1D(5, 3, padding="causal", dilation_rate=2, name="causal")(h)
    c = layers.Conv1D(6, 4, padding="same", strides=2, activation="tanh", name="strided")(c)
    c = layers.ZeroPadding1D((1, 2), name="pad")(c)
    c = layers.MaxPooling1D(2, padding="same", name="maxpool")(c)
    c = layers.AveragePooling1D(3, strides=1, padding="same", name="avgpool")(c)
    c = layers.Cropping1D((1, 0), name="crop")(c)
    pooled = layers.GlobalMaxPooling1D(name="gmax")(c)
    similarity = layers.Dot(axes=(2, 2), normalize=True, name="cosine")([g, g])  # (B, T, T)
    einsum = layers.EinsumDense("btf,fo->bto", output_shape=(None, 3), bias_axes="o", activation="relu",
                                name="einsum")(g)
    ops = keras.ops.mean(keras.ops.transpose(keras.ops.expand_dims(g * 2.0, -1), (0, 2, 1, 3)), axis=2)
    ops = keras.ops.squeeze(1.0 - ops, axis=-1)                                  # (B, 6)
    return keras.Model(x, [pooled, similarity, einsum, ops])


def layers_2d_model():
    """2-D pools, padding and cropping, global pooling, Flatten and Dense."""
    x = keras.Input((8, 6, 2), name="x")
    h = layers.ZeroPadding2D(((1, 0), (0, 1)), name="pad")(x)
    h = layers.Conv2D(3, (2, 3), strides=(1, 2), padding="same", name="conv")(h)
    h = layers.MaxPooling2D((2, 2), padding="same", name="maxpool")(h)
    h = layers.AveragePooling2D((2, 1), strides=1, name="avgpool")(h)
    h = layers.Cropping2D(((1, 0), (0, 1)), name="crop")(h)
    g = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(x, [g, layers.Dense(2, name="out")(layers.Flatten(name="flat")(h))])


def extras_model():
    """MultiHeadAttention over two axes (B, S, W, F) with its scores, Normalization, Rescaling, grouped and
    channels-first convolutions, TimeDistributed(Dense), EinsumDense with an ellipsis, a model called as a
    layer, Dot of vectors, keras.ops reshape / max / softmax / concatenate / matmul."""
    x = keras.Input((STEPS, 4), name="x")
    h = layers.Normalization(mean=[0.1, -0.2, 0.3, 0.0], variance=[1.5, 0.5, 2.0, 1.0], name="norm")(x)
    h = layers.Rescaling(0.5, offset=0.1, name="rescale")(h)
    h = layers.Conv1D(6, 3, padding="same", groups=2, name="grouped")(h)
    h = layers.TimeDistributed(layers.Dense(4, activation="elu"), name="td")(h)
    grid = layers.Reshape((2, STEPS // 2, 4), name="grid")(h)
    attended, scores = layers.MultiHeadAttention(2, 3, name="mha2d")(grid, grid, return_attention_scores=True)
    first = layers.Conv2D(3, 2, data_format="channels_first", name="cf")(layers.Permute((3, 1, 2), name="cl")(grid))
    inner_x = keras.Input((4,))
    inner = keras.Model(inner_x, layers.Dense(3, activation="tanh")(inner_x), name="inner")
    pooled = layers.GlobalAveragePooling1D(name="gap")(h)
    vector = inner(pooled)
    dot = layers.Dot(axes=1, name="dot")([vector, vector])
    e = layers.EinsumDense("...f,fo->...o", output_shape=5, bias_axes="o", name="einsum")(h)
    flat = keras.ops.softmax(keras.ops.reshape(e, (-1, STEPS * 5)), axis=-1)
    square = keras.ops.matmul(keras.ops.expand_dims(vector, 1), keras.ops.expand_dims(vector, 2))     # (B, 1, 1)
    ops = keras.ops.concatenate([keras.ops.max(e, axis=1), flat, keras.ops.squeeze(square, axis=-1)], axis=-1)
    return keras.Model(x, [attended, scores, first, dot, ops])


def layers_3d_model():
    """3-D convolution, pools, cropping and global pooling with keepdims."""
    x = keras.Input((8, 7, 6, 3), name="x")
    h = layers.MaxPooling3D((2, 1, 1), name="maxpool")(layers.Conv3D(2, 2, padding="same", name="conv")(x))
    h = layers.Cropping3D(((1, 0), (0, 1), (1, 1)), name="crop")(layers.AveragePooling3D(2, padding="same",
                                                                                         name="avgpool")(h))
    return keras.Model(x, layers.GlobalMaxPooling3D(keepdims=True, name="gmax")(h))


def more_model():
    """Flatten channels_first, LayerNormalization and Softmax over two axes, default ReLU, strided 2-D
    pooling, causal Attention, TimeDistributed(Conv1D), ZeroPadding2D, cross MultiHeadAttention with a
    sliding window alone, unscaled AdditiveAttention, normalized Dot of sequences, keras.ops.sum keepdims."""
    x = keras.Input((8, 4), name="x")
    grid = layers.Reshape((8, 2, 2), name="grid")(x)
    y = layers.GRU(3, return_sequences=True, name="gru")(x)
    return keras.Model(x, [
        layers.Flatten(data_format="channels_first", name="flat")(grid),
        layers.LayerNormalization(axis=[-2, -1], name="ln")(grid), layers.Softmax(axis=[1, 2], name="sm")(grid),
        layers.ReLU(name="relu")(layers.MaxPooling2D((2, 2), strides=(1, 2), name="pool")(grid)),
        layers.Attention(name="luong")([y, y], use_causal_mask=True),
        layers.TimeDistributed(layers.Conv1D(2, 2), name="td")(grid), layers.ZeroPadding2D(1, name="pad")(grid),
        layers.MultiHeadAttention(2, 3, sliding_window=2, name="cross")(y, x),
        layers.AdditiveAttention(use_scale=False, name="additive")([x, x]),
        layers.Dot(axes=(1, 1), normalize=True, name="dot")([x, y]), keras.ops.sum(y, axis=1, keepdims=True)])


MODELS = {"mha": mha_model, "attention": attention_model, "permute": permute_model,
          "time_distributed": time_distributed_model, "han": han_model, "conv2d": conv2d_model,
          "autoencoder": autoencoder_model, "recurrent": recurrent_model, "layers": layers_model,
          "layers_2d": layers_2d_model, "extras": extras_model, "layers_3d": layers_3d_model, "more": more_model}


def inputs_for(model, rng):
    arrays = []
    for tensor in model.inputs:
        shape = (BATCH, *tensor.shape[1:])
        if "int" in str(tensor.dtype):
            arrays.append(rng.integers(0, 30, shape).astype(np.int32))
        else:
            arrays.append(rng.standard_normal(shape).astype(np.float32))
    return arrays


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (model, inputs, Keras outputs, {"keras": path, "h5": path})."""
    folder = tmp_path_factory.mktemp("lowered")
    built = {}
    for seed, (name, build) in enumerate(MODELS.items()):
        model = randomized(build(), seed)
        x = inputs_for(model, np.random.default_rng(seed))
        expected = [np.asarray(y) for y in as_list(model.predict(x if len(x) > 1 else x[0], verbose=0))]
        files = {}
        for ext in ("keras", "h5"):
            files[ext] = str(folder / f"{name}.{ext}")
            model.save(files[ext])
        built[name] = (model, x, expected, files)
    return built


def grurt_outputs(converted, x):
    return [np.asarray(y) for y in as_list(converted.run(x if len(x) > 1 else x[0]))]


def assert_close(actual, expected, what):
    assert len(actual) == len(expected), what
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what}: output {k} has shape {a.shape}, Keras {e.shape}"
        error = np.abs(a - e).max()
        assert error <= ATOL, f"{what}: output {k} differs from Keras by {error}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("source", ["live", "keras", "h5"])
def test_lowered_model_matches_keras(zoo, name, source):
    model, x, expected, files = zoo[name]
    converted = grurt.from_keras(model) if source == "live" else grurt.load(files[source])
    if name != "autoencoder":          # the fused layers may take RepeatVector: then the Model stays fused
        assert isinstance(converted, grurt.TensorModel)
    assert_close(grurt_outputs(converted, x), expected, f"{name} ({source})")


@pytest.mark.parametrize("name", MODELS)
def test_lowered_graph_matches_the_float64_reference(zoo, name):
    """The lowered graph itself (whichever path from_keras takes): its float64 reference and its plan."""
    model, x, expected, files = zoo[name]
    graph = lower_keras(*read_keras(files["keras"]))
    reference = [np.asarray(y) for y in as_list(run_tensor_graph(graph, x if len(x) > 1 else x[0]))]
    assert_close(reference, expected, f"{name} (float64 reference)")
    assert_close(grurt_outputs(grurt.TensorModel(graph), x), expected, f"{name} (lowered graph)")


def test_names_follow_keras(zoo):
    model, x, _, _ = zoo["recurrent"]
    converted = grurt.from_keras(model)
    assert converted.input_names == ("x", "h0")
    assert converted.output_names == ("joined", "stateful", "stateful:1", "bi_state", "bi_state:1", "bi_state:2")
    by_name = converted.run({"x": x[0], "h0": x[1]})
    assert np.array_equal(by_name[0], converted.run(x)[0])


def test_fused_models_stay_fused():
    """A model grurt's fused layers take keeps their path (and its bits)."""
    x = keras.Input((STEPS, 3))
    model = keras.Model(x, layers.Dense(2)(layers.GRU(4)(x)))
    assert isinstance(grurt.from_keras(model), grurt.Model)


def test_conv_layers_share_their_transposes(zoo):
    """Consecutive channels-first ops read each other's channels-first tensors: one Transpose in, one out."""
    model = zoo["conv2d"][0]
    graph = lower_keras(*_live_triple(model))
    assert [node.op for node in graph.nodes].count("Transpose") == 2


def test_keras_2_inbound_nodes(zoo):
    """The same models with Keras 2's inbound nodes ([[layer, call, index, kwargs], ...]; MultiHeadAttention's
    value and a GRU's initial state as keyword tensors) lower to the same outputs."""
    for name in ("mha", "recurrent", "permute"):
        model, x, expected, _ = zoo[name]
        config, weights, version = _live_triple(model)
        graph = lower_keras(keras2_config(config), weights, version)     # the nodes only: hard_sigmoid stays 3's
        outputs = [np.asarray(y) for y in as_list(grurt.TensorModel(graph).run(x if len(x) > 1 else x[0]))]
        assert_close(outputs, expected, f"{name} (Keras 2 config)")


def keras2_config(model_config):
    """A Keras 3 functional config rewritten with Keras 2's inbound nodes and input/output lists; a
    Sequential one with its input shape on the first layer (batch_input_shape), no InputLayer."""
    config = json.loads(json.dumps(model_config, default=list))
    if config["class_name"] == "Sequential":
        declared, *rest = config["config"]["layers"]
        rest[0]["config"]["batch_input_shape"] = declared["config"]["batch_shape"]
        config["config"]["layers"] = rest
        return config

    def ref(tensor):
        return list(tensor["config"]["keras_history"])

    def tensors(value):
        if isinstance(value, dict) and "keras_history" in value.get("config", {}):
            return ref(value)
        if isinstance(value, list):
            return [tensors(v) for v in value]
        return value

    for layer in config["config"]["layers"]:
        nodes = []
        for node in layer.get("inbound_nodes", []):
            args, kwargs = node["args"], {k: tensors(v) for k, v in node["kwargs"].items()}
            if layer["class_name"] == "MultiHeadAttention":        # tf.keras: mha(query, value=...)
                kwargs["value"] = ref(args[1])
                args = args[:1]
            entries = [ref(t) for t in (args[0] if isinstance(args[0], list) else args)]
            entries[0] = entries[0] + [kwargs]
            nodes.append(entries)
        layer["inbound_nodes"] = nodes
    return config


def test_hard_sigmoid_follows_the_keras_version():
    """Keras 3's hard_sigmoid is clip(x/6 + 1/2, 0, 1), Keras 2's clip(0.2·x + 1/2, 0, 1)."""
    x = keras.Input((4,))
    model = randomized(keras.Model(x, layers.Dense(5, activation="hard_sigmoid", name="d")(x)))
    config, weights, _ = _live_triple(model)
    data = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32) * 4
    kernel, bias = weights["d"]
    z = data.astype(np.float64) @ kernel + bias
    for version, slope in (("3.15.1", 1 / 6), ("2.15.0", 0.2)):
        out = grurt.TensorModel(lower_keras(config, weights, version)).run(data)
        assert np.abs(out - np.clip(slope * z + 0.5, 0, 1)).max() <= ATOL


# ---- refusals and hostile configs: named errors ----

def lowered_error(model_config, weights, version="3.15.1"):
    with pytest.raises(grurt.GrurtError) as info:
        lower_keras(model_config, weights, version)
    return info.value


def layer_config(config, name):
    return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)


@pytest.fixture(scope="module")
def mha_triple(zoo):
    return _live_triple(zoo["mha"][0])


@pytest.mark.parametrize("change, message", [
    (lambda c, w: layer_config(c, "mha")["config"].update(num_heads=10**9),
     r"layer 'mha' \(MultiHeadAttention\): (num_heads must be an integer|query kernel has shape \(16, 4, 4\), "
     r"expected \(16, 1000000000, 4\))"),
    (lambda c, w: layer_config(c, "mha")["config"].update(key_dim=2**40), r"layer 'mha' .*key_dim must be an integer"),
    (lambda c, w: layer_config(c, "mha")["config"].update(key_dim="4"), r"layer 'mha' .*key_dim must be an integer"),
    (lambda c, w: layer_config(c, "mha")["config"].update(num_heads=True), r"layer 'mha' .*num_heads must be"),
    (lambda c, w: layer_config(c, "mha")["config"].update(value_dim=5),
     r"layer 'mha' .*value kernel has shape \(16, 4, 4\), expected \(16, 4, 5\)"),
    (lambda c, w: w.update(mha=[w["mha"][0][:, :, :3]] + w["mha"][1:]),
     r"layer 'mha' .*query kernel has shape \(16, 4, 3\), expected \(16, 4, 4\)"),
    (lambda c, w: w.update(mha=w["mha"][:-1]), r"layer 'mha' .*has 7 weight arrays, expected 8"),
    (lambda c, w: layer_config(c, "mha")["config"].update(attention_axes=[5]), r"layer 'mha' .*attention_axes"),
    (lambda c, w: layer_config(c, "bigru")["config"]["layer"]["config"].update(units=-3),
     r"layer 'bigru' \(Bidirectional\): units must be an integer from 1"),
    (lambda c, w: w.update(out=[w["out"][0].T, w["out"][1]]), r"layer 'out' \(Dense\): kernel has shape \(3, 16\)"),
    (lambda c, w: layer_config(c, "out")["inbound_nodes"][0]["args"][0]["config"].update(
        keras_history=["nowhere", 0, 0]), r"layer 'out' reads tensor \['nowhere', 0, 0\]"),
])
def test_hostile_configs_are_named(mha_triple, change, message):
    config, weights, version = copy.deepcopy(mha_triple)
    change(config, weights)
    error = lowered_error(config, weights, version)
    assert isinstance(error, grurt.ModelFormatError)
    assert __import__("re").search(message, str(error)), str(error)


def test_hostile_archive_is_a_model_format_error(zoo, tmp_path):
    """A .keras archive whose MultiHeadAttention claims 10⁹ heads: grurt.load names the layer."""
    source = zoo["mha"][3]["keras"]
    hostile = tmp_path / "hostile.keras"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(hostile, "w") as out:
        for item in archive.namelist():
            data = archive.read(item)
            if item == "config.json":
                config = json.loads(data)
                layer_config(config, "mha")["config"]["num_heads"] = 10**9
                data = json.dumps(config).encode()
            out.writestr(item, data)
    with pytest.raises(grurt.ModelFormatError, match=r"layer 'mha' \(MultiHeadAttention\)"):
        grurt.load(str(hostile))


@pytest.mark.parametrize("build, message", [
    (lambda x: layers.Lambda(lambda t: t * 2, name="code")(x), r"layer 'code' \(Lambda\): a Lambda layer holds "
                                                               r"Python code"),
    (lambda x: layers.Softmax(name="sm")(layers.MultiHeadAttention(2, 3, name="mha")(layers.Masking()(x), x)),
     r"layer 'sm' \(Softmax\): reads a masked sequence"),
    (lambda x: layers.LSTM(3, name="lstm")(x), r"layer 'lstm' \(LSTM\) is not supported"),
])
def test_refusals_are_named(build, message):
    x = keras.Input((STEPS, 4), name="x")
    model = keras.Model(x, build(x))
    with pytest.raises(grurt.UnsupportedModelError, match=message):
        grurt.from_keras(model)
