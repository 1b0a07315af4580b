"""RepeatVector (GRU autoencoders), Reshape (a flat vector to (T, F); a fixed-length sequence to a
vector) and Cropping1D (issue 21), in Sequential and functional models, live, ``.keras`` and
``.h5``, against Keras 3 ``predict`` and grurt.reference (ATOL); hostile counts are named errors."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Layer .* does not support masking:UserWarning")]

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.graph import MAX_STEPS, Crop, Graph, Input, Node, Repeat, Unflatten  # noqa: E402
from grurt.importers.keras import translate  # noqa: E402
from grurt.spec import Flatten  # noqa: E402
from tolerances import ATOL  # noqa: E402
from keras_testing import as_tuple, saved_files  # noqa: E402

STEPS, FEATURES = 7, 3


def seq(*stack):
    return keras.Sequential([keras.Input((STEPS, FEATURES)), *stack])


def functional():
    """An encoder's state repeated for a decoder, a Dense vector reshaped into a sequence, and a
    cropped sequence; three outputs."""
    x = keras.Input((None, FEATURES), name="x")
    code = layers.GRU(6, name="encoder")(x)
    decoded = layers.GRU(4, return_sequences=True, name="decoder")(layers.RepeatVector(5, name="repeat")(code))
    grid = layers.Reshape((-1, 2), name="grid")(layers.Dense(8, name="proj")(code))
    cropped = layers.Cropping1D((2, 1), name="crop")(layers.GRU(3, return_sequences=True, name="g")(x))
    return keras.Model(x, [layers.TimeDistributed(layers.Dense(3), name="out")(decoded), layers.GRU(2, name="g2")(grid),
                           cropped])


MODELS = {
    "autoencoder": lambda: seq(layers.GRU(5), layers.RepeatVector(STEPS), layers.GRU(4, return_sequences=True),
                               layers.TimeDistributed(layers.Dense(FEATURES))),
    "unflatten": lambda: seq(layers.GRU(6), layers.Dense(12), layers.Reshape((4, 3)), layers.GRU(2)),
    "flatten_by_reshape": lambda: seq(layers.GRU(4, return_sequences=True), layers.Reshape((-1,)), layers.Dense(2)),
    "same_shape": lambda: seq(layers.Reshape((STEPS, FEATURES)), layers.GRU(3)),
    "crop": lambda: seq(layers.GRU(5, return_sequences=True), layers.Cropping1D((1, 2)),
                        layers.GRU(2, return_sequences=True)),
    "crop_masked": lambda: seq(layers.Masking(), layers.GRU(5, return_sequences=True), layers.Cropping1D(1),
                               layers.GRU(2, return_sequences=True)),
    "functional": functional,
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    rng = np.random.default_rng(2103)
    folder = tmp_path_factory.mktemp("keras_reshaping")
    out = {}
    for name, build in MODELS.items():
        model = build()
        model.set_weights([(0.6 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])
        x = rng.standard_normal((4, STEPS, FEATURES)).astype(np.float32)
        x[1, :2] = 0.0                      # masked steps, for the model with a Masking
        files = saved_files(model, folder, name)
        out[name] = model, x, model.predict(x, verbose=0), files
    return out


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_keras_and_reference(zoo, name, source):
    model, x, expected, files = zoo[name]
    converted = grurt.from_keras(model) if source == "live" else grurt.load(files[source])
    for out, ref, want in zip(as_tuple(converted.run(x)), as_tuple(reference.run(converted.spec, x)),
                              as_tuple(expected)):
        assert out.shape == want.shape
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(ref, want, rtol=0, atol=ATOL)


def test_canonical_forms(zoo):
    layers_of = {name: [getattr(node, "layer", node) for node in grurt.from_keras(zoo[name][0]).graph.nodes]
                 for name in MODELS}
    assert any(isinstance(layer, Repeat) and layer.steps == STEPS for layer in layers_of["autoencoder"])
    assert any(isinstance(layer, Unflatten) and layer.steps == 4 for layer in layers_of["unflatten"])
    assert any(isinstance(layer, Flatten) and layer.steps == STEPS for layer in layers_of["flatten_by_reshape"])
    assert len(layers_of["same_shape"]) == 1
    assert any(isinstance(layer, Crop) and (layer.left, layer.right) == (1, 2) for layer in layers_of["crop"])
    assert isinstance(grurt.from_keras(zoo["autoencoder"][0]).spec, Graph)


def test_runs_with_other_steps_and_round_trips(zoo, tmp_path):
    """A decoder runs any number of input steps (the repeat count is the model's); a crop needs more
    steps than it cuts; no lengths and no streaming, each refusal naming the node."""
    model, x, _, _ = zoo["functional"]
    converted = grurt.from_keras(model)
    longer = np.random.default_rng(1).standard_normal((2, 11, FEATURES)).astype(np.float32)
    for out, want in zip(converted.run(longer), model.predict(longer, verbose=0)):
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
    with pytest.raises(grurt.InputError, match=r"Crop\(2, 1\).*crops 3 steps of a sequence of 3"):
        converted.run(x[:, :3])
    with pytest.raises(grurt.InputError, match="Repeat.5.*takes no lengths"):
        converted.run(x, lengths=np.full(4, STEPS))
    with pytest.raises(grurt.InputError, match="cannot stream"):
        converted.stream()
    grurt.save(converted, tmp_path / "f.npz")
    assert grurt.formats.npz.read_header(tmp_path / "f.npz")["format_version"] == "2.1"
    for a, b in zip(grurt.load(tmp_path / "f.npz").run(x), converted.run(x)):
        np.testing.assert_array_equal(a, b)


def test_repeat_memory_is_checked(monkeypatch):
    rng = np.random.default_rng(2)
    gru = grurt.layers.GRU(rng.standard_normal((1, 6, 5)), rng.standard_normal((1, 6, 2)), np.zeros((1, 12)))
    model = grurt.Model(Graph((Input("v", 5, "vector"),), (Node(Repeat(1000), "v", "r"), Node(gru, "r", "y")), ("y",)))
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 5 * 10**4)
    with pytest.raises(grurt.InputError, match=r"Repeat\(1000\).*: 4 × 1000 steps × 5 features would need more"):
        model.run(np.ones((4, 5), np.float32))


# ---- hostile configs and files ----

def _config(*stack, recurrent=False):
    gru = {"class_name": "GRU", "config": {"name": "gru", "units": 2, "return_sequences": recurrent}}
    return {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, STEPS, FEATURES]}},
        gru, *stack, {"class_name": "GRU", "config": {"name": "tail", "units": 2}}]}}


def _weights(rng):
    def gru(inputs):
        return [rng.standard_normal((inputs, 6)), rng.standard_normal((2, 6)), rng.standard_normal((2, 6))]
    return {"gru": gru(FEATURES), "tail": gru(2)}


@pytest.mark.parametrize("layer, recurrent, error, fragment", [
    ({"class_name": "RepeatVector", "config": {"name": "r", "n": 2**40}}, False, grurt.ModelFormatError,
     f"steps 1099511627776 is more than grurt makes ({MAX_STEPS}"),
    ({"class_name": "RepeatVector", "config": {"name": "r", "n": 0}}, False, grurt.ModelFormatError,
     "n must be a positive integer, got 0"),
    ({"class_name": "RepeatVector", "config": {"name": "r", "n": "3"}}, False, grurt.ModelFormatError,
     "n must be a positive integer"),
    ({"class_name": "RepeatVector", "config": {"name": "r", "n": 3}}, True, grurt.UnsupportedModelError,
     "repeats a vector; its input is a sequence"),
    ({"class_name": "Reshape", "config": {"name": "r", "target_shape": [3, 3]}}, False, grurt.ModelFormatError,
     "target_shape (3, 3) does not hold the 2 values"),
    ({"class_name": "Reshape", "config": {"name": "r", "target_shape": [-1, -1]}}, False, grurt.ModelFormatError,
     "one may be -1"),
    ({"class_name": "Reshape", "config": {"name": "r", "target_shape": [2, 1, 1]}}, False, grurt.UnsupportedModelError,
     "grurt's fused layers hold"),      # the lowered path takes it (tests/test_keras_lowered.py)
    ({"class_name": "Reshape", "config": {"name": "r", "target_shape": [1, 14]}}, True,
     grurt.UnsupportedModelError, "reshapes (7, 2) to (1, 14)"),
    ({"class_name": "Cropping1D", "config": {"name": "c", "cropping": [4, 3]}}, True, grurt.UnsupportedModelError,
     "crops 7 steps of the 7 steps it reads"),
    ({"class_name": "Cropping1D", "config": {"name": "c", "cropping": [-1, 0]}}, True, grurt.ModelFormatError,
     "left must be an integer >= 0, got -1"),
])
def test_bad_configs_are_named(layer, recurrent, error, fragment):
    stack = [layer] + ([{"class_name": "Reshape", "config": {"name": "back", "target_shape": [1, 2]}}]
                       if not recurrent and layer["class_name"] == "Reshape" else [])
    with pytest.raises(error) as info:
        translate(_config(*stack, recurrent=recurrent), _weights(np.random.default_rng(0)), "3.6.0")
    assert fragment in str(info.value) and f"'{layer['config']['name']}'" in str(info.value)


@pytest.mark.parametrize("field, value, fragment", [
    ("steps", 2**40, "steps 1099511627776 is more than grurt makes"),
    ("steps", MAX_STEPS + 1, f"steps {MAX_STEPS + 1} is more than grurt makes"),
    ("steps", 0, "steps must be an integer >= 1, got 0"),
])
def test_hostile_npz_counts(zoo, tmp_path, field, value, fragment):
    grurt.save(grurt.from_keras(zoo["autoencoder"][0]), tmp_path / "a.npz")
    arrays = dict(np.load(tmp_path / "a.npz"))
    header = json.loads(str(arrays.pop("header")))
    entry = next(node["layer"] for node in header["nodes"] if node["layer"]["type"] == "Repeat")
    entry[field] = value
    np.savez(tmp_path / "bad.npz", header=np.array(json.dumps(header)), **arrays)
    with pytest.raises(grurt.ModelFormatError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        grurt.load(tmp_path / "bad.npz")
