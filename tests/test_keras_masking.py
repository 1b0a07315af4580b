"""Masks as Keras computes them (issue 21): ``Masking`` and ``Embedding(mask_zero=True)`` anywhere
in Sequential and functional models, with masked steps at the start, the end, in between, or
everywhere (hypothesis draws the patterns). Against Keras 3 ``predict`` and grurt.reference,
ATOL, at every step: at masked steps a GRU repeats its previous output (a bidirectional GRU
returning sequences gives zeros), the layers after it compute on that, GlobalAveragePooling1D
averages the valid steps (NaN for none, as Keras) and GlobalMaxPooling1D ignores the mask."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Layer .* does not support masking:UserWarning")]

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.graph import Graph  # noqa: E402
from mask_testing import masks  # noqa: E402
from tolerances import ATOL  # noqa: E402
from keras_testing import as_tuple, saved_files  # noqa: E402

STEPS, FEATURES, BATCH, VOCABULARY = 8, 3, 5, 12
STEP_TOL = 1e-6         # a stream vs a whole-sequence run, as in tests/test_graph_stream.py


def seq(*stack, value=None):
    return keras.Sequential([keras.Input((STEPS, FEATURES)), *((layers.Masking(value),) if value is not None
                                                                 else ()), *stack])


def functional_branches():
    """One masked input into two GRUs (one backwards) merged (the same mask), a GRU after, averaged;
    a second, unmasked input added to a masked branch (Keras 3: the sum has no mask), and a GRU
    called with initial_state (Keras 3 does not hand it the mask)."""
    x, u, s = (keras.Input((STEPS, FEATURES), name="x"), keras.Input((STEPS, 2), name="u"),
               keras.Input((4,), name="s"))
    m = layers.Masking(name="m")(x)
    a = layers.GRU(4, return_sequences=True, name="a")(m)
    b = layers.GRU(4, return_sequences=True, go_backwards=True, name="b")(layers.Dense(3, name="pre")(m))
    g = layers.GRU(3, return_sequences=True, name="g")(layers.Concatenate(name="cat")([a, b]))
    plain = layers.GRU(3, return_sequences=True, name="plain")(layers.Add(name="add")([g, layers.Dense(3)(u)]))
    seeded = layers.GRU(4, return_sequences=True, name="seeded")(m, initial_state=s)
    return keras.Model([x, u, s], [layers.GlobalAveragePooling1D(name="avg")(g), layers.Dense(2, name="out")(plain),
                                   layers.GRU(2, return_sequences=True, name="after")(seeded)])


def functional_ids():
    """Token ids with mask_zero beside a masked feature sequence, concatenated after their GRUs."""
    ids, x = keras.Input((STEPS,), dtype="int32", name="ids"), keras.Input((STEPS, FEATURES), name="x")
    e = layers.Embedding(VOCABULARY, 4, mask_zero=True, name="e")(ids)
    h = layers.Bidirectional(layers.GRU(3, return_sequences=True), merge_mode="ave", name="bi")(e)
    y = layers.GRU(3, name="y")(layers.Masking(name="m")(x))
    return keras.Model([ids, x], layers.Concatenate(name="cat")([layers.GRU(3, name="last")(h), y]))


MODELS = {
    "gru_dense": lambda: seq(layers.GRU(5, return_sequences=True), layers.Dense(2), value=0.0),
    "stack": lambda: seq(layers.Dense(4, activation="tanh"), layers.GRU(5, return_sequences=True),
                         layers.GRU(4, return_sequences=True, reset_after=False),
                         layers.TimeDistributed(layers.Dense(2)), value=-1.0),
    "bidirectional": lambda: seq(layers.Bidirectional(layers.GRU(3, return_sequences=True), merge_mode="sum"),
                                 layers.Dense(2), value=0.0),
    "backwards": lambda: seq(layers.GRU(4, return_sequences=True, go_backwards=True), layers.GRU(3),
                             layers.Dense(2), value=0.0),
    "average": lambda: seq(layers.GRU(4, return_sequences=True), layers.GlobalAveragePooling1D(), layers.Dense(2),
                           value=0.0),
    "max_after_bidirectional": lambda: seq(layers.Bidirectional(layers.GRU(3, return_sequences=True)),
                                           layers.GlobalMaxPooling1D(), layers.Dense(2), value=0.0),
    "flatten": lambda: seq(layers.GRU(3, return_sequences=True), layers.Flatten(), layers.Dense(2), value=0.0),
    "masking_after_relu": lambda: seq(layers.Dense(2, activation="relu"), layers.Masking(0.0),
                                      layers.GRU(4, return_sequences=True), layers.Dense(2)),
    "ids": lambda: keras.Sequential([keras.Input((STEPS,), dtype="int32"),
                                     layers.Embedding(VOCABULARY, 4, mask_zero=True),
                                     layers.GRU(5, return_sequences=True), layers.Dense(3, activation="softmax")]),
    "functional_branches": functional_branches,
    "functional_ids": functional_ids,
}
MASK_VALUES = {"stack": -1.0}


def inputs(name, model, valid, rng):
    """Inputs of ``model`` with the steps where ``valid`` (B, T) is False masked."""
    values = []
    for tensor in model.inputs:
        shape = tuple(d or BATCH for d in (BATCH,) + tuple(tensor.shape[1:]))
        if "int" in str(tensor.dtype):
            values.append(np.where(valid, rng.integers(1, VOCABULARY, shape), 0).astype(np.int32))
        elif len(shape) == 3 and tensor.name != "u":
            x = rng.standard_normal(shape).astype(np.float32)
            values.append(np.where(valid[..., None], x, np.float32(MASK_VALUES.get(name, 0.0))))
        else:
            values.append(rng.standard_normal(shape).astype(np.float32))
    return values if len(values) > 1 else values[0]


def randomize(model, rng):
    model.set_weights([(0.6 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (Keras model, grurt Model, {"keras": path, "h5": path})."""
    rng = np.random.default_rng(2101)
    folder = tmp_path_factory.mktemp("keras_masking")
    out = {}
    for name, build in MODELS.items():
        model = build()
        randomize(model, rng)
        files = saved_files(model, folder, name)
        out[name] = model, grurt.from_keras(model), files
    return out


def assert_keras(converted, model, x):
    """grurt's outputs and the reference's against ``model.predict``, NaN where Keras gives NaN."""
    expected = as_tuple(model.predict(x, verbose=0))
    for out, ref, want in zip(as_tuple(converted.run(x)), as_tuple(reference.run(converted.spec, x)), expected):
        assert out.shape == want.shape
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(ref, want, rtol=0, atol=ATOL)


#: every row of a batch of this pattern: leading, trailing, interior, none and all masked
PATTERN = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 0, 1, 1],
                    [1] * STEPS, [0] * STEPS], bool)




@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid=masks(BATCH, STEPS), seed=st.integers(0, 2**16))
def test_drawn_masks_match_keras(zoo, name, valid, seed):
    model, converted, _ = zoo[name]
    assert_keras(converted, model, inputs(name, model, valid, np.random.default_rng(seed)))


@pytest.mark.parametrize("source", ["keras", "h5"])
@pytest.mark.parametrize("name", list(MODELS))
def test_files_match_keras(zoo, name, source):
    model, _, files = zoo[name]
    assert_keras(grurt.load(files[source]), model, inputs(name, model, PATTERN, np.random.default_rng(5)))


def test_chains_and_graphs(zoo):
    """What runs as a chain with a mask_value (the kernels' trailing-padding path) and what as a graph."""
    chains = {name for name, (_, converted, _) in zoo.items() if not isinstance(converted.spec, Graph)}
    assert chains == {"gru_dense", "stack", "bidirectional", "backwards", "average", "max_after_bidirectional",
                      "flatten", "ids"}
    assert zoo["stack"][1].spec.mask_value == -1.0 and zoo["ids"][1].spec.mask_value == 0


@pytest.mark.parametrize("name", ["gru_dense", "stack", "bidirectional", "average", "ids"])
def test_trailing_padding_runs_on_the_kernels(zoo, name):
    """Trailing padding only: each sequence's length goes to the kernels, the masked steps are then
    filled as Keras has them; the graph of masks is not built. ``lengths=`` given by hand keeps
    zeros past each length (the kernels' own rule)."""
    model, _, files = zoo[name]
    converted = grurt.load(files["keras"])
    valid = np.arange(STEPS) < np.array([STEPS, 1, 5, 7, 3])[:, None]
    x = inputs(name, model, valid, np.random.default_rng(9))
    assert_keras(converted, model, x)
    assert converted._masked is None
    lengths = valid.sum(axis=1)
    out = converted.run(x, lengths=lengths)
    if out.ndim == 3:
        assert not out[~valid].any()
        np.testing.assert_allclose(out[valid], as_tuple(model.predict(x, verbose=0))[0][valid], rtol=0, atol=ATOL)


def test_single_sequence_and_states(zoo):
    model, converted, _ = zoo["backwards"]
    x = inputs("backwards", model, PATTERN, np.random.default_rng(3))
    expected = model.predict(x, verbose=0)
    for b in range(BATCH):
        np.testing.assert_allclose(converted.run(x[b]), expected[b], rtol=0, atol=ATOL)
    out, states = converted.run(x, return_state=True)
    ref_out, ref_states = reference.run(converted.spec, x, return_state=True)
    for got, want in zip(states, ref_states):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    h0 = [np.full((1, BATCH, 4), 0.5, np.float32), np.full((1, BATCH, 3), -0.5, np.float32)]
    np.testing.assert_allclose(converted.run(x, initial_state=h0), reference.run(converted.spec, x, initial_state=h0),
                               rtol=0, atol=ATOL)


def test_streams_read_every_frame(zoo):
    """A stream treats each frame as valid (it does not skip masked frames): on unmasked data it
    gives what run gives, for a masked chain and a masked graph."""
    rng = np.random.default_rng(4)
    model, converted, _ = zoo["gru_dense"]
    x = inputs("gru_dense", model, np.ones((BATCH, STEPS), bool), rng)
    stream = converted.stream(batch=BATCH)
    frames = np.stack([stream.step(x[:, t]) for t in range(STEPS)], axis=1)
    np.testing.assert_allclose(frames, converted.run(x), rtol=0, atol=STEP_TOL)
    graph = grurt.from_keras(keras.Sequential([keras.Input((None, FEATURES)), layers.Dense(3),
                                               layers.Masking(0.0), layers.GRU(4, return_sequences=True),
                                               layers.Dense(2)]))
    assert isinstance(graph.spec, Graph)
    stream = graph.stream(batch=BATCH)
    frames = np.stack([stream.step(x[:, t]) for t in range(STEPS)], axis=1)
    np.testing.assert_allclose(frames, graph.run(x), rtol=0, atol=STEP_TOL)
    with pytest.raises(grurt.InputError, match="needs the whole sequence"):
        zoo["functional_branches"][1].stream(static={"s": np.zeros((1, 4), np.float32)})


def test_masked_graph_round_trips(zoo, tmp_path):
    model, converted, _ = zoo["functional_branches"]
    x = inputs("functional_branches", model, PATTERN, np.random.default_rng(6))
    grurt.save(converted, tmp_path / "masked.npz")
    assert grurt.formats.npz.read_header(tmp_path / "masked.npz")["format_version"] == "2.1"
    for a, b in zip(grurt.load(tmp_path / "masked.npz").run(x), converted.run(x)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(grurt.InputError, match="takes no lengths"):
        converted.run(x, lengths=np.full(BATCH, STEPS))


def test_masks_beyond_the_fused_layers_are_lowered():
    """What the fused layers refuse (sequences masked differently merged, a mask= given by hand) runs
    lowered onto ops (tests/test_keras_lower_masks.py), as Keras computes it."""
    x = keras.Input((STEPS, FEATURES))
    masked, other = layers.Masking(name="m")(x), layers.Masking(-1.0, name="o")(x)
    merged = layers.Add(name="add")([layers.GRU(3, return_sequences=True)(masked),
                                     layers.GRU(3, return_sequences=True)(other)])
    by_hand = layers.GRU(3, name="g")(x, mask=keras.ops.any(keras.ops.not_equal(x, 0.0), axis=-1))
    rng = np.random.default_rng(12)
    data = np.where(PATTERN[..., None], rng.standard_normal((BATCH, STEPS, FEATURES)), 0).astype(np.float32)
    data[1, 2] = -1.0
    for model in (keras.Model(x, layers.GRU(2)(merged)), keras.Model(x, by_hand)):
        randomize(model, rng)
        converted = grurt.from_keras(model)
        assert isinstance(converted, grurt.TensorModel)
        np.testing.assert_allclose(converted.run(data), model.predict(data, verbose=0), rtol=0, atol=ATOL)


def test_refused_masks_are_named():
    with pytest.raises(grurt.UnsupportedModelError, match="Softmax layer after Masking"):
        grurt.from_keras(seq(layers.GRU(3, return_sequences=True), layers.Softmax(), value=0.0))
