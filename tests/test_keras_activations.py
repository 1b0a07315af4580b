"""Keras activation layers (issue 21) against Keras 3 ``predict`` and grurt.reference: ReLU
(max_value, negative_slope, threshold), LeakyReLU, ELU, Softmax, PReLU (per feature, per step,
shared), ThresholdedReLU (Keras 2), and the activations gelu, silu/swish, mish, selu,
hard_silu/hard_swish, relu6, hard_tanh; in Sequential and functional models, live, ``.keras`` and
``.h5``; all within ATOL. The C activations are measured against their float64 formulas."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.graph import Graph, Input, Node, PReLU  # noqa: E402
from grurt.importers.keras import translate  # noqa: E402
from grurt.spec import GRU, Activation, ModelSpec, activation  # noqa: E402
from tolerances import ATOL  # noqa: E402
from keras_testing import as_tuple, saved_files  # noqa: E402

STEPS, FEATURES = 9, 3
STEP_TOL = 1e-6         # a stream vs a whole-sequence run, as in tests/test_graph_stream.py


def relu_family():
    """Every ReLU option, LeakyReLU, ELU and a Softmax layer, one after the other."""
    return keras.Sequential([
        keras.Input((STEPS, FEATURES)), layers.Dense(6), layers.ReLU(max_value=0.8), layers.Dense(6),
        layers.ReLU(negative_slope=0.1), layers.Dense(6), layers.ReLU(threshold=0.2), layers.Dense(6),
        layers.LeakyReLU(), layers.Dense(6), layers.LeakyReLU(negative_slope=0.05), layers.Dense(6),
        layers.ELU(alpha=0.7), layers.GRU(5, return_sequences=True), layers.Dense(4), layers.ReLU(),
        layers.Dense(3), layers.Softmax()])


def smooth_activations():
    """gelu, silu, swish, mish, selu, hard_silu, relu6, hard_tanh: in Dense, Activation and a GRU."""
    return keras.Sequential([
        keras.Input((STEPS, FEATURES)), layers.Dense(6, activation="gelu"), layers.Activation("silu"),
        layers.Dense(6, activation="mish"), layers.Activation("selu"), layers.Dense(6),
        layers.Activation("hard_silu"), layers.Dense(6, activation="swish"), layers.Activation("relu6"),
        layers.Dense(6), layers.Activation("hard_tanh"), layers.Dense(6, activation="hard_swish"),
        layers.GRU(5, activation="gelu", recurrent_activation="hard_silu", return_sequences=True),
        layers.Dense(2, activation="selu")])


def prelu_functional():
    """PReLU per feature (shared over time), per step (a fixed number of steps), shared by all,
    on sequences and on a vector; two outputs."""
    x = keras.Input((STEPS, FEATURES), name="x")
    h = layers.PReLU(shared_axes=[1], name="per_feature")(layers.Dense(6, name="d0")(x))
    h = layers.GRU(5, return_sequences=True, name="gru")(h)
    h = layers.PReLU(name="per_step")(h)
    h = layers.PReLU(shared_axes=[1, 2], name="shared")(layers.Dense(4, name="d1")(h))
    last = layers.GRU(4, name="last")(h)
    return keras.Model(x, [layers.PReLU(name="vector")(last), layers.PReLU(shared_axes=[2], name="per_step_only")(h)])


def prelu_sequential():
    return keras.Sequential([keras.Input((None, FEATURES)), layers.Dense(6), layers.PReLU(shared_axes=[1]),
                             layers.GRU(5, return_sequences=True), layers.Dense(2)])


MODELS = {"relu_family": relu_family, "smooth": smooth_activations, "prelu_functional": prelu_functional,
          "prelu_sequential": prelu_sequential}


def randomize(model, rng):
    """Weights of scale 0.6 (recurrent 0.5), PReLU slopes around 0.3, so that every branch shows."""
    values = []
    for variable, value in zip(model.weights, model.get_weights()):
        if "alpha" in variable.path:
            values.append((0.3 + 0.2 * rng.standard_normal(value.shape)).astype(value.dtype))
        else:
            scale = 0.5 if "recurrent" in variable.path else 0.6
            values.append((scale * rng.standard_normal(value.shape)).astype(value.dtype))
    model.set_weights(values)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (live model, input, Keras outputs, {"keras": path, "h5": path})."""
    rng = np.random.default_rng(21)
    folder = tmp_path_factory.mktemp("keras_activations")
    out = {}
    for name, build in MODELS.items():
        model = build()
        randomize(model, rng)
        x = (1.5 * rng.standard_normal((4, STEPS, FEATURES))).astype(np.float32)
        files = saved_files(model, folder, name)
        out[name] = model, x, model.predict(x, verbose=0), files
    return out


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_keras_and_reference(zoo, name, source):
    model, x, expected, files = zoo[name]
    converted = grurt.from_keras(model) if source == "live" else grurt.load(files[source])
    outputs, oracle = as_tuple(converted.run(x)), as_tuple(reference.run(converted.spec, x))
    for out, want, ref in zip(outputs, as_tuple(expected), oracle):
        assert out.shape == want.shape
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)


def test_canonical_forms(zoo):
    """ReLU's options become relu, clip, leaky_relu, thresholded_relu; PReLU a graph layer, or a
    leaky_relu when its one slope is shared by every axis."""
    kinds = [(layer.function if isinstance(layer, Activation) else layer.activation).describe()
             for layer in grurt.from_keras(zoo["relu_family"][0]).layers if not isinstance(layer, GRU)]
    assert kinds[:10] == ["linear", "clip(alpha=0, beta=0.8)", "linear", "leaky_relu(alpha=0.1)", "linear",
                          "thresholded_relu(alpha=0.2)", "linear", "leaky_relu(alpha=0.3)", "linear",
                          "leaky_relu(alpha=0.05)"]
    graph = grurt.from_keras(zoo["prelu_functional"][0]).graph
    by_output = {node.outputs[0]: node.layer for node in graph.nodes}
    assert by_output["per_feature"].alpha.shape == (6,) and by_output["per_step"].alpha.shape == (STEPS, 5)
    assert by_output["shared"].function.kind == "leaky_relu"
    assert by_output["per_step_only"].alpha.shape == (STEPS, 4)
    assert isinstance(grurt.from_keras(zoo["prelu_sequential"][0]).spec, Graph)


def test_prelu_graph_streams_and_round_trips(zoo, tmp_path):
    model, x, expected, _ = zoo["prelu_sequential"]
    converted = grurt.from_keras(model)
    stream = converted.stream(batch=4)
    frames = np.stack([stream.step(x[:, t]) for t in range(STEPS)], axis=1)
    # per frame vs one product over all frames: the last bits differ (tests/test_graph_stream.py)
    np.testing.assert_allclose(frames, converted.run(x), rtol=0, atol=STEP_TOL)
    stream.reset()
    assert np.array_equal(stream.run(x), frames)
    grurt.save(converted, tmp_path / "prelu.npz")
    assert grurt.formats.npz.read_header(tmp_path / "prelu.npz")["format_version"] == "2.1"
    np.testing.assert_array_equal(grurt.load(tmp_path / "prelu.npz").run(x), converted.run(x))
    per_step = grurt.from_keras(zoo["prelu_functional"][0])
    with pytest.raises(grurt.InputError, match="alpha per step"):
        per_step.stream()
    with pytest.raises(grurt.InputError, match=f"sequences of exactly {STEPS} steps"):
        per_step.run(x[:, :5])


def test_chain_with_new_activations_round_trips(zoo, tmp_path):
    model, x, _, _ = zoo["smooth"]
    converted = grurt.from_keras(model)
    grurt.save(converted, tmp_path / "smooth.npz")
    assert grurt.formats.npz.read_header(tmp_path / "smooth.npz")["format_version"] == "1.3"
    np.testing.assert_array_equal(grurt.load(tmp_path / "smooth.npz").run(x), converted.run(x))


# ---- configs read from files: Keras 2 spellings, and what is refused ----

def _config(*stack, steps=STEPS):
    return {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, steps, FEATURES]}},
        {"class_name": "GRU", "config": {"name": "gru", "units": 2, "return_sequences": True}}, *stack]}}


def _gru_weights(rng):
    return {"gru": [rng.standard_normal((FEATURES, 6)), rng.standard_normal((2, 6)), rng.standard_normal((2, 6))]}


def test_keras2_leaky_relu_alpha_and_thresholded_relu():
    rng = np.random.default_rng(0)
    spec = translate(_config({"class_name": "LeakyReLU", "config": {"name": "l", "alpha": 0.25}},
                             {"class_name": "ThresholdedReLU", "config": {"name": "t", "theta": 0.5}}),
                     _gru_weights(rng), "2.12.0")
    assert [layer.function.describe() for layer in spec.layers[1:]] == ["leaky_relu(alpha=0.25)",
                                                                       "thresholded_relu(alpha=0.5)"]


@pytest.mark.parametrize("layer, weights, error, fragment", [
    ({"class_name": "PReLU", "config": {"name": "p"}}, [np.ones((STEPS, 3))], grurt.ModelFormatError,
     "alpha has shape (9, 3); an input sample is (9, 2)"),
    ({"class_name": "PReLU", "config": {"name": "p"}}, [np.ones((2,))], grurt.ModelFormatError, "alpha has shape"),
    ({"class_name": "PReLU", "config": {"name": "p"}}, [], grurt.ModelFormatError, "has 0 weight arrays"),
    ({"class_name": "PReLU", "config": {"name": "p"}}, [np.full((1, 2), np.nan)], grurt.ModelFormatError,
     "NaN or infinity"),
    ({"class_name": "ReLU", "config": {"name": "r", "max_value": 6.0, "negative_slope": 0.1}}, [],
     grurt.UnsupportedModelError, "one of them at most"),
    ({"class_name": "ReLU", "config": {"name": "r", "threshold": -1.0}}, [], grurt.ModelFormatError,
     "threshold must be a finite number >= 0"),
    ({"class_name": "LeakyReLU", "config": {"name": "l", "negative_slope": "x"}}, [], grurt.ModelFormatError,
     "negative_slope must be a finite number"),
    ({"class_name": "Softmax", "config": {"name": "s", "axis": 1}}, [], grurt.UnsupportedModelError, "axis=1"),
    ({"class_name": "Activation", "config": {"name": "a", "activation": "celu"}}, [], grurt.UnsupportedModelError,
     "unsupported Keras activation 'celu'"),
])
def test_bad_configs_are_named(layer, weights, error, fragment):
    rng = np.random.default_rng(0)
    with pytest.raises(error) as info:
        translate(_config(layer), {**_gru_weights(rng), layer["config"]["name"]: weights}, "3.6.0")
    assert fragment in str(info.value) and layer["config"]["name"] in str(info.value)


def test_prelu_layer_and_npz_checks(tmp_path):
    gru = GRU(np.ones((1, 6, 3)), np.ones((1, 6, 2)), np.ones((1, 12)))
    with pytest.raises(grurt.ModelFormatError, match="non-empty"):
        PReLU(np.ones((2, 3, 4)))
    with pytest.raises(grurt.ModelFormatError, match=r"alpha \(4,\) does not fit"):
        Graph((Input("x", 3),), (Node(gru, "x", "h"), Node(PReLU(np.ones(4)), "h", "y")), ("y",))
    grurt.save(Graph((Input("x", 3),), (Node(gru, "x", "h"), Node(PReLU(np.ones((5, 2))), "h", "y")), ("y",)),
               tmp_path / "g.npz")
    arrays = dict(np.load(tmp_path / "g.npz"))
    header = json.loads(str(arrays.pop("header")))
    header["nodes"][1]["layer"]["steps"] = 2**40
    np.savez(tmp_path / "bad.npz", header=np.array(json.dumps(header)), **arrays)
    with pytest.raises(grurt.ModelFormatError, match=r"'steps' must be a positive integer below 2\*\*31"):
        grurt.load(tmp_path / "bad.npz")
    header["nodes"][1]["layer"]["steps"] = 4
    np.savez(tmp_path / "bad.npz", header=np.array(json.dumps(header)), **arrays)
    with pytest.raises(grurt.ModelFormatError, match=r"array '1.alpha' has shape \(5, 2\), expected \(4, 2\)"):
        grurt.load(tmp_path / "bad.npz")


# ---- the C activations against their float64 formulas ----

GRID = np.linspace(-30.0, 30.0, 600_001).astype(np.float32)
EXTREMES = np.array([-1e30, -100.0, -88.0, -0.0, 0.0, 88.0, 100.0, 1e4], np.float32)

TORCH = {"gelu": "gelu", "silu": "silu", "mish": "mish", "selu": "selu", "hard_silu": "hardswish", "clip": "relu6"}


@pytest.mark.parametrize("kind", list(TORCH))
def test_new_activations_against_float64_and_torch(kind):
    """Within 2.5e-6 absolute of the float64 formula over [-30, 30] (the float32 ulp of |x| ≤ 30 is
    1.9e-6), finite at the extremes; PyTorch's float32 functions agree within ATOL."""
    torch = pytest.importorskip("torch")
    fn = activation(kind)
    x = np.concatenate([GRID, EXTREMES])
    out = grurt.Model(ModelSpec(1, (Activation(fn),))).run(x.reshape(1, -1, 1)).ravel()
    exact = reference.apply_activation(fn, x.astype(np.float64))
    assert np.abs(out - exact)[:GRID.size].max() < 2.5e-6
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, exact, rtol=1e-6, atol=2.5e-6)
    theirs = getattr(torch.nn.functional, TORCH[kind])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, theirs, rtol=1e-6, atol=ATOL)


def test_clip_bounds_are_checked():
    assert activation("clip", -1.0, 1.0).describe() == "clip(alpha=-1, beta=1)"
    with pytest.raises(grurt.ModelFormatError, match="must not exceed"):
        activation("clip", 2.0, 1.0)
