"""Keras functional models that are graphs (issue 11) against ``model.predict``: branches, merges,
several inputs and outputs, a GRU's initial_state and returned state. Each model is converted live,
from a saved ``.keras`` archive and from a saved ``.h5`` file; outputs agree within ATOL."""
import json
import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

# Keras's torch backend on NumPy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt.graph import Combine, Concat, Slice  # noqa: E402
from grurt.spec import Activation, Dense  # noqa: E402
from tolerances import ATOL  # noqa: E402

STEPS, FEATURES, BATCH = 12, 3, 4


def seq(name="seq", features=FEATURES, steps=STEPS):
    return keras.Input((steps, features), name=name)


def branches_concat():
    """Two GRU branches (one reading backwards) joined on the feature axis."""
    x = seq()
    a = layers.GRU(6, return_sequences=True, name="fwd")(x)
    b = layers.GRU(4, return_sequences=True, go_backwards=True, reset_after=False, name="bwd")(x)
    return keras.Model(x, layers.Dense(2, name="out")(layers.Concatenate(name="cat")([a, b])))


def residual_add():
    """Dense(8) → GRU(8) with a residual Add around the GRU → GRU → Dense."""
    x = seq()
    d = layers.Dense(8, name="proj")(x)
    g = layers.GRU(8, return_sequences=True, name="gru")(d)
    s = layers.Add(name="residual")([d, g])
    return keras.Model(x, layers.Dense(1, name="out")(layers.GRU(5, name="gru2")(s)))


def gating_multiply():
    """A GRU's outputs gated by a sigmoid of the input (BatchNormalization folded into the gate's Dense)."""
    x = seq()
    g = layers.GRU(6, return_sequences=True, name="gru")(x)
    gate = layers.Dense(6, name="gate_dense")(x)
    gate = layers.BatchNormalization(name="gate_bn")(gate)
    gate = layers.Activation("sigmoid", name="gate")(gate)
    return keras.Model(x, layers.Dense(2, name="out")(layers.Multiply(name="gated")([g, gate])))


def elementwise_merges():
    """Subtract, Average (of three), Maximum and Minimum, concatenated."""
    x = seq()
    a = layers.GRU(5, return_sequences=True, name="a")(x)
    b = layers.GRU(5, return_sequences=True, reset_after=False, name="b")(x)
    c = layers.Bidirectional(layers.GRU(5, return_sequences=True), merge_mode="sum", name="c")(x)
    merged = [layers.Subtract(name="sub")([a, b]), layers.Average(name="avg")([a, b, c]),
              layers.Maximum(name="max")([a, c]), layers.Minimum(name="min")([b, c])]
    return keras.Model(x, layers.Dense(3, name="out")(layers.Concatenate(name="cat")(merged)))


def two_sequences():
    """Two sequence inputs: a GRU each, added; and their raw features concatenated into a third GRU."""
    x1, x2 = seq("left"), seq("right", features=2)
    a = layers.GRU(4, return_sequences=True, name="ga")(x1)
    b = layers.GRU(4, return_sequences=True, name="gb")(x2)
    both = layers.GRU(4, return_sequences=True, name="gboth")(layers.Concatenate(name="raw")([x1, x2]))
    return keras.Model([x1, x2], layers.Dense(2, name="out")(layers.Add(name="sum")([a, b, both])))


def static_initial_state():
    """A static vector turned into the GRU's initial state (a tensor; and a list of one)."""
    x, static = seq(), keras.Input((4,), name="static")
    h0 = layers.Dense(6, activation="tanh", name="h0")(static)
    y = layers.GRU(6, return_sequences=True, name="gru")(x, initial_state=h0)
    y = layers.GRU(6, name="gru2")(y, initial_state=[layers.Dense(6, name="h0b")(static)])
    return keras.Model([x, static], layers.Dense(2, name="out")(y))


def two_outputs():
    """A class from the last step and a value per step (an output that is a Dropout's: the same tensor)."""
    x = seq()
    y = layers.GRU(8, return_sequences=True, name="gru")(x)
    label = layers.Dense(3, activation="softmax", name="label")(layers.GRU(4, name="last")(y))
    value = layers.Dropout(0.5, name="value")(layers.TimeDistributed(layers.Dense(1), name="per_step")(y))
    return keras.Model(x, [label, value])


def returned_state():
    """return_state=True: the state handed to another GRU and returned; a Bidirectional's two states
    returned and handed on as [forward, backward]."""
    x = seq()
    y, h = layers.GRU(6, return_sequences=True, return_state=True, name="gru")(x)
    y2 = layers.GRU(6, return_sequences=True, go_backwards=True, name="gru2")(y, initial_state=[h])
    z, hf, hb = layers.Bidirectional(layers.GRU(3, return_sequences=True, return_state=True), name="bi")(y2)
    last = layers.Bidirectional(layers.GRU(3), merge_mode="ave", name="bi2")(z, initial_state=[hf, hb])
    return keras.Model(x, [layers.Dense(2, name="out")(last), h, hb, y])


def shared_and_ids():
    """Token ids into an Embedding; a static input into the GRU's state; a Dense called twice."""
    ids, static = keras.Input((STEPS,), dtype="int32", name="ids"), keras.Input((5,), name="static")
    shared = layers.Dense(5, activation="tanh", name="shared")
    e = layers.Embedding(11, 5, name="embed")(ids)
    y = layers.GRU(5, return_sequences=True, name="gru")(shared(e), initial_state=shared(static))
    return keras.Model([ids, static], layers.Maximum(name="out")([y, shared(e)]))


# the same merges written as keras.ops operations on tensors

def ops_residual():
    """y = gru(d) + d, as an operator."""
    x = seq()
    d = layers.Dense(8, name="proj")(x)
    s = layers.GRU(8, return_sequences=True, name="gru")(d) + d
    return keras.Model(x, layers.Dense(1, name="out")(layers.GRU(5, name="gru2")(s)))


def ops_gating():
    """A GRU's outputs times keras.ops.sigmoid of a Dense of the input."""
    x = seq()
    g = layers.GRU(6, return_sequences=True, name="gru")(x)
    gated = g * keras.ops.sigmoid(layers.Dense(6, name="gate_dense")(x))
    return keras.Model(x, layers.Dense(2, name="out")(gated))


def ops_concatenate():
    """Two GRU branches and the input joined by keras.ops.concatenate."""
    x = seq()
    a = layers.GRU(6, return_sequences=True, name="fwd")(x)
    b = layers.GRU(4, return_sequences=True, go_backwards=True, name="bwd")(x)
    return keras.Model(x, layers.Dense(2, name="out")(keras.ops.concatenate([a, b, x], axis=-1)))


def ops_maximum():
    """keras.ops.maximum, minimum, subtract and x - y over GRU outputs (vectors too)."""
    x = seq()
    a = layers.GRU(5, return_sequences=True, name="a")(x)
    b = layers.GRU(5, return_sequences=True, reset_after=False, name="b")(x)
    y = keras.ops.subtract(keras.ops.maximum(a, b), keras.ops.minimum(a, b)) - a
    last = layers.GRU(4, name="last")(y)
    return keras.Model(x, layers.Dense(3, name="out")(keras.ops.maximum(last, layers.GRU(4, name="other")(x))))


MODELS = {f.__name__: f for f in (branches_concat, residual_add, gating_multiply, elementwise_merges,
                                  two_sequences, static_initial_state, two_outputs, returned_state,
                                  shared_and_ids, ops_residual, ops_gating, ops_concatenate, ops_maximum)}


def randomize(model, rng):
    """Weights of scale 0.5 (variances positive) so that every weight and bias matters."""
    values = []
    for variable, value in zip(model.weights, model.get_weights()):
        if "variance" in variable.path:
            values.append((0.5 + rng.random(value.shape)).astype(value.dtype))
        else:
            values.append((0.5 * rng.standard_normal(value.shape)).astype(value.dtype))
    model.set_weights(values)
    return model


def inputs_for(model, rng, batch=BATCH):
    arrays = []
    for tensor in model.inputs:
        shape = (batch,) + tuple(tensor.shape[1:])
        arrays.append(rng.integers(0, 11, shape).astype("int32") if "int" in str(tensor.dtype)
                      else rng.standard_normal(shape).astype(np.float32))
    return arrays


def converted(model, source, tmp_path):
    if source == "live":
        return grurt.from_keras(model)
    path = str(tmp_path / f"{model.name}.{source}")
    model.save(path)
    return grurt.load(path)


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


@pytest.fixture(scope="module")
def built():
    """Each model with random weights, its inputs and Keras's outputs (built once per module)."""
    cache = {}

    def get(name):
        if name not in cache:
            rng = np.random.default_rng(sorted(MODELS).index(name))
            model = randomize(MODELS[name](), rng)
            x = inputs_for(model, rng)
            cache[name] = model, x, as_list(model.predict(x, verbose=0))
        return cache[name]
    return get


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_keras_predict(built, tmp_path, name, source):
    model, x, expected = built(name)
    grurt_model = converted(model, source, tmp_path)
    assert grurt_model.graph.as_chain() is None            # a graph, not a chain
    assert list(grurt_model.input_names) == [t.name for t in model.inputs]
    out = as_list(grurt_model.run(x if len(x) > 1 else x[0]))     # a list in input order, or the one input
    assert len(out) == len(expected) == len(grurt_model.output_names)
    for a, b in zip(out, expected):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= ATOL
    # by name, and one sequence without the batch axis
    named = as_list(grurt_model.run(dict(zip(grurt_model.input_names, x))))
    assert all(np.array_equal(a, b) for a, b in zip(named, out))
    single = as_list(grurt_model.run({name: a[1] for name, a in zip(grurt_model.input_names, x)}))
    assert all(np.abs(a - b[1]).max() <= ATOL for a, b in zip(single, expected))


def test_output_names_follow_keras(built):
    model, x, _ = built("two_outputs")
    assert grurt.from_keras(model).output_names == tuple(model.output_names) == ("label", "value")
    # several outputs of one layer: the first output tensor keeps the layer's name, the others add their index
    model, x, _ = built("returned_state")
    assert model.output_names == ["out", "gru", "bi", "gru"]
    assert grurt.from_keras(model).output_names == ("out", "gru:1", "bi", "gru")
    assert grurt.from_keras(model).input_names == ("seq",)


def test_dict_inputs_and_outputs_take_the_keys(tmp_path):
    x, static = seq(), keras.Input((4,), name="static")
    y, h = layers.GRU(5, return_sequences=True, return_state=True, name="gru")(x, initial_state=layers.Dense(5)(static))
    model = randomize(keras.Model({"frames": x, "context": static}, {"per_step": y, "final": h}),
                      np.random.default_rng(5))
    rng = np.random.default_rng(6)
    feed = {"frames": rng.standard_normal((2, STEPS, FEATURES)).astype(np.float32),
            "context": rng.standard_normal((2, 4)).astype(np.float32)}
    expected = model.predict(feed, verbose=0)
    for source in ("live", "keras", "h5"):
        grurt_model = converted(model, source, tmp_path)
        assert set(grurt_model.input_names) == {"frames", "context"}
        assert grurt_model.output_names == ("per_step", "final")
        out = grurt_model.run(feed)
        for name, value in zip(grurt_model.output_names, out):
            assert np.abs(value - expected[name]).max() <= ATOL


def test_graph_translation(built):
    """What the importer builds: merges as Combine/Concat nodes, a Bidirectional's states as Slices
    of its h_n, BatchNormalization folded into the Dense before it, a shared layer's calls as nodes."""
    def layer_types(name):
        return [type(node.layer) for node in grurt.from_keras(built(name)[0]).graph.nodes]
    assert layer_types("gating_multiply").count(Dense) == 2          # gate_dense with gate_bn folded in; out
    assert Combine in layer_types("elementwise_merges") and Concat in layer_types("elementwise_merges")
    assert layer_types("returned_state").count(Slice) == 2
    graph = grurt.from_keras(built("returned_state")[0]).graph
    assert [len(node.inputs) for node in graph.gru_nodes] == [1, 2, 1, 2]
    assert layer_types("shared_and_ids").count(Dense) == 3            # three calls of one Dense
    assert grurt.from_keras(built("shared_and_ids")[0]).graph.inputs[0].kind == "ids"
    assert grurt.from_keras(built("static_initial_state")[0]).graph.inputs[1].kind == "vector"
    # keras.ops operations: the merge layers' nodes; keras.ops.sigmoid an Activation
    graph = grurt.from_keras(built("ops_maximum")[0]).graph
    assert [node.layer.op for node in graph.nodes if isinstance(node.layer, Combine)] == ["max", "min", "sub", "sub",
                                                                                          "max"]
    assert layer_types("ops_concatenate").count(Concat) == 1 and Combine in layer_types("ops_residual")
    assert [node.layer.function.kind for node in grurt.from_keras(built("ops_gating")[0]).graph.nodes
            if isinstance(node.layer, Activation)] == ["sigmoid"]


def test_state_in_and_out_of_run(built):
    """run's initial_state / return_state per GRU node, in graph order, alongside graph-fed states."""
    model, x, expected = built("static_initial_state")
    grurt_model = grurt.from_keras(model)
    assert len(grurt_model.graph.gru_nodes) == 2
    out, states = grurt_model.run(x, return_state=True)      # two inputs: a list in input order
    assert np.abs(out - expected[0]).max() <= ATOL
    assert [s.shape for s in states] == [(1, BATCH, 6), (1, BATCH, 6)]
    with pytest.raises(grurt.InputError, match="takes its state from tensor"):
        grurt_model.run(x, initial_state=[np.zeros((1, BATCH, 6)), None])


def test_streaming_equals_run(built):
    """A streamable functional model (forward GRUs, merges, a static input into a GRU's state):
    stepping frame by frame gives run()'s outputs within 1e-6 (not bit for bit: a stream step
    multiplies one frame where run multiplies the whole sequence's inputs at once)."""
    x, static = seq(), keras.Input((4,), name="static")
    d = layers.Dense(6, name="proj")(x)
    y = layers.GRU(6, return_sequences=True, name="gru")(d, initial_state=layers.Dense(6, name="h0")(static))
    s = layers.Add(name="residual")([d, y])
    out = layers.Concatenate(name="cat")([layers.GRU(4, return_sequences=True, name="gru2")(s), d])
    rng = np.random.default_rng(9)
    model = randomize(keras.Model([x, static], layers.Dense(2, name="out")(out)), rng)
    frames = rng.standard_normal((2, STEPS, FEATURES)).astype(np.float32)
    context = rng.standard_normal((2, 4)).astype(np.float32)
    grurt_model = grurt.from_keras(model)
    expected = grurt_model.run([frames, context])
    assert np.abs(expected - model.predict([frames, context], verbose=0)).max() <= ATOL
    stream = grurt_model.stream(batch=2, static={"static": context})
    stepped = np.stack([stream.step({"seq": frames[:, t]}) for t in range(STEPS)], axis=1)
    assert np.abs(stepped - expected).max() <= 1e-6
    # blocks of frames after a reset: as step by step, bit for bit
    stream.reset(static={"static": context})
    blocks = np.concatenate([stream.run({"seq": frames[:, :5]}), stream.run({"seq": frames[:, 5:]})], axis=1)
    assert np.array_equal(blocks, stepped)


def test_sequential_and_chains_stay_chains():
    chain = keras.Sequential([keras.Input((STEPS, FEATURES)), layers.GRU(4), layers.Dense(1)])
    x = seq()
    functional = keras.Model(x, layers.Dense(1)(layers.GRU(4)(layers.Dropout(0.1)(x))))
    for model in (chain, functional):
        spec = grurt.importers.keras.live_keras_spec(model)
        assert isinstance(spec, grurt.ModelSpec)


# ---- refused by the fused layers, each with a named error (from_keras and load then lower these onto ONNX
# ops: test_keras_lowered.py) ----

def fused(model, source, tmp_path):
    """What grurt's fused layers make of the model (live, or saved as .keras / .h5)."""
    if source == "live":
        return grurt.importers.keras.live_keras_spec(model)
    path = str(tmp_path / f"{model.name}.{source}")
    model.save(path)
    return grurt.importers.keras.translate(*grurt.importers.keras.read_keras(path))


def test_unsupported_merge_layer_is_named():
    x = seq()
    a, b = layers.GRU(4, name="a")(x), layers.GRU(4, name="b")(x)
    model = keras.Model(x, layers.Dot(axes=1, name="similarity")([a, b]))
    with pytest.raises(grurt.UnsupportedModelError, match=r"layer 'similarity' \(Dot\) is not supported"):
        fused(model, "live", None)


@pytest.mark.parametrize("build, shapes", [
    # Keras broadcasts a vector over the time steps; grurt merges tensors of one shape
    (lambda x, v: layers.Add(name="merge")([layers.GRU(5, return_sequences=True, name="g")(x),
                                             layers.Dense(5, name="d")(v)]), r"'g' \(B, T, 5\), 'd' \(B, 5\)"),
    # and features of size 1 over the feature axis
    (lambda x, v: layers.Multiply(name="merge")([layers.GRU(5, return_sequences=True, name="g")(x),
                                                  layers.Dense(1, name="d")(x)]), r"'g' \(B, T, 5\), 'd' \(B, T, 1\)"),
])
def test_merge_of_incompatible_shapes_names_layer_and_shapes(build, shapes):
    x, v = seq(), keras.Input((4,), name="v")
    model = keras.Model([x, v], layers.GRU(3)(build(x, v)))
    with pytest.raises(grurt.UnsupportedModelError, match=r"layer 'merge' \((Add|Multiply)\): merges tensors of "
                                                          r"incompatible shapes: " + shapes):
        fused(model, "live", None)


@pytest.mark.parametrize("build, message", [
    (lambda y, v: y * 0.5,
     r"layer 'multiply[_0-9]*' \(Multiply\): keras.ops operation Multiply of 'gru' \(B, T, 4\), 0.5 is not "
     r"supported; grurt converts x \+ y"),
    (lambda y, v: keras.ops.add(y, 1.0),
     r"layer 'add[_0-9]*' \(Add\): keras.ops operation Add of 'gru' \(B, T, 4\), 1.0 "),
    (lambda y, v: keras.ops.concatenate([y, keras.ops.tanh(y)]),
     r"layer 'tanh[_0-9]*' \(Tanh\): keras.ops operation Tanh of 'gru' \(B, T, 4\) is not supported"),
    # Keras broadcasts a vector over the time steps
    (lambda y, v: y + layers.Dense(4, name="d")(v),
     r"layer 'add[_0-9]*' \(Add\): merges tensors of incompatible shapes: 'gru' \(B, T, 4\), 'd' \(B, 4\)"),
])
def test_keras_ops_with_constants_or_broadcasting_are_named(tmp_path, build, message):
    x, v = seq(), keras.Input((3,), name="v")
    y = layers.GRU(4, return_sequences=True, name="gru")(x)
    model = keras.Model([x, v], layers.GRU(2)(build(y, v)))
    with pytest.raises(grurt.UnsupportedModelError, match=message):
        fused(model, "live", tmp_path)
    with pytest.raises(grurt.UnsupportedModelError, match=message):
        fused(model, "keras", tmp_path)


def test_masking_scalers_and_repeated_outputs_are_refused():
    x = seq()
    masked = layers.Masking(name="mask")(x)
    other = layers.Masking(-1.0, name="other")(x)
    y = layers.Add(name="add")([layers.GRU(3, return_sequences=True)(masked),
                                layers.GRU(3, return_sequences=True)(other)])
    with pytest.raises(grurt.UnsupportedModelError, match="'add' .Add.: merges sequences masked differently"):
        grurt.importers.keras.live_keras_spec(keras.Model(x, y))    # fused only; from_keras lowers it
    y, h = layers.GRU(3, return_state=True, name="g")(x)
    model = keras.Model(x, [y, h])
    with pytest.raises(grurt.UnsupportedModelError, match="outputs 0 and 1 of the model are the same tensor"):
        grurt.from_keras(keras.Model(x, [h, h]))
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(np.ones((3, FEATURES)))
    with pytest.raises(grurt.UnsupportedModelError, match="scalers? fold into models that are a chain"):
        grurt.from_keras(model, input_scaler=scaler)


def test_malformed_graph_config_is_a_format_error(tmp_path):
    """A .keras archive whose config references a layer that does not exist."""
    model = residual_add()
    path = tmp_path / "model.keras"
    model.save(path)
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "config.json":
                config = json.loads(data)
                add = next(layer for layer in config["config"]["layers"] if layer["name"] == "residual")
                add["inbound_nodes"][0]["args"][0][1]["config"]["keras_history"][0] = "nowhere"
                data = json.dumps(config).encode()
            target.writestr(item, data)
    with pytest.raises(grurt.ModelFormatError, match=r"layer 'residual' reads tensor \['nowhere', 0, 0\]"):
        grurt.load(str(broken))
