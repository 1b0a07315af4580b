"""Learned initial states (issue 21): a GRU whose state starts from a stored vector per direction,
the same for every sequence. From a Keras layer of the user's own mapped to
``grurt.layers.LearnedState`` (against Keras 3 ``predict``), from the builders
(``GRU.from_torch(..., initial_state=h0)`` against PyTorch), in the .npz file, in streams (which start
from it and return to it on reset) and stream pools; ``initial_state=`` at run time replaces it.
ATOL against the frameworks and grurt.reference; exactness claims with np.array_equal."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
from keras import layers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.layers import GRU, Dense, LearnedState  # noqa: E402
from grurt.spec import ModelSpec  # noqa: E402
from tolerances import ATOL  # noqa: E402
from keras_testing import saved_files  # noqa: E402

STEPS, FEATURES = 7, 3
STEP_TOL = 1e-6         # a stream vs a whole-sequence run, as in tests/test_graph_stream.py


class LearnedInitialState(layers.Layer):
    """A learned (units,) vector tiled over the batch: what Keras models use as a trained h0."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, shape):
        self.h0 = self.add_weight(shape=(self.units,), name="h0")

    def call(self, x):
        return keras.ops.broadcast_to(self.h0[None, :], (keras.ops.shape(x)[0], self.units))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


CUSTOM = {"LearnedInitialState": lambda config, weights: [LearnedState(weights[0])]}


def keras_model():
    """A GRU and a Bidirectional GRU starting from learned states, a masked branch beside them."""
    x = keras.Input((None, FEATURES), name="x")
    g = layers.GRU(4, return_sequences=True, name="g")(x, initial_state=LearnedInitialState(4, name="s0")(x))
    b = layers.Bidirectional(layers.GRU(3, return_sequences=True), name="bi")(
        g, initial_state=[LearnedInitialState(3, name="sf")(x), LearnedInitialState(3, name="sb")(x)])
    m = layers.GRU(2, name="masked")(layers.Masking(name="mask")(x), initial_state=LearnedInitialState(2, name="sm")(x))
    return keras.Model(x, [layers.Dense(2, name="d")(b), m])


@pytest.fixture(scope="module")
def keras_case(tmp_path_factory):
    rng = np.random.default_rng(2106)
    model = keras_model()
    model.set_weights([(0.6 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])
    x = rng.standard_normal((3, STEPS, FEATURES)).astype(np.float32)
    x[0, :2] = 0.0
    folder = tmp_path_factory.mktemp("keras_initial_state")
    files = saved_files(model, folder, "m")
    return model, x, model.predict(x, verbose=0), files


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
def test_keras_learned_states(keras_case, source):
    model, x, expected, files = keras_case
    converted = (grurt.from_keras(model, custom_layers=CUSTOM) if source == "live"
                 else grurt.load(files[source], custom_layers=CUSTOM))
    learned = {node.outputs[0]: node.layer.initial_state for node in converted.graph.gru_nodes}
    assert learned["g"].shape == (1, 4) and learned["bi"].shape == (2, 3) and learned["masked"].shape == (1, 2)
    for out, ref, want in zip(converted.run(x), reference.run(converted.spec, x), expected):
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(ref, want, rtol=0, atol=ATOL)


def test_learned_state_goes_only_into_a_gru(keras_case):
    x = keras.Input((STEPS, FEATURES))
    h = LearnedInitialState(4, name="s")(x)
    model = keras.Model(x, layers.Add()([layers.GRU(4)(x), h]))
    with pytest.raises(grurt.UnsupportedModelError, match="LearnedState, which goes only into a GRU's initial_state"):
        grurt.from_keras(model, custom_layers=CUSTOM)


# ---- the canonical layer: builders, runs, streams, files ----

@pytest.fixture(scope="module")
def torch_case():
    """nn.GRU with an nn.Parameter h0 expanded over the batch, then Linear."""
    torch.manual_seed(21)
    gru, fc = torch.nn.GRU(FEATURES, 5, batch_first=True), torch.nn.Linear(5, 2)
    h0 = torch.nn.Parameter(0.5 * torch.randn(1, 1, 5))
    x = torch.randn(4, STEPS, FEATURES)
    with torch.no_grad():
        y, h_n = gru(x, h0.expand(1, 4, 5).contiguous())
        expected = fc(y).numpy()
    model = grurt.Model.chain([GRU.from_torch(gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0,
                                              initial_state=h0), Dense.from_torch(fc.weight, fc.bias)])
    return model, x.numpy(), expected, h_n.numpy(), h0.detach().numpy().reshape(1, 5)


def test_builder_matches_torch(torch_case):
    model, x, expected, h_n, h0 = torch_case
    np.testing.assert_array_equal(model.layers[0].initial_state, h0.astype(np.float32))
    np.testing.assert_allclose(model.run(x), expected, rtol=0, atol=ATOL)
    out, (state,) = model.run(x, return_state=True)
    np.testing.assert_allclose(state, h_n, rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.run(x[1]), expected[1], rtol=0, atol=ATOL)
    np.testing.assert_allclose(out, reference.run(model.spec, x), rtol=0, atol=ATOL)


def test_run_time_state_replaces_the_learned_one(torch_case):
    model, x, _, _, _ = torch_case
    plain = grurt.Model(ModelSpec(FEATURES, (GRU(model.layers[0].W, model.layers[0].R, model.layers[0].B,
                                                  linear_before_reset=True), model.layers[1])))
    given = np.full((1, 4, 5), 0.3, np.float32)
    assert np.array_equal(model.run(x, initial_state=[given]), plain.run(x, initial_state=[given]))
    zeros = [np.zeros((1, 4, 5), np.float32)]
    assert np.array_equal(model.run(x, initial_state=zeros), plain.run(x))
    learned = [model.layers[0].default_state(4)]
    assert np.array_equal(model.run(x, initial_state=learned), model.run(x))


def test_streams_start_from_the_learned_state(torch_case):
    model, x, expected, _, _ = torch_case
    stream = model.stream(batch=4)
    frames = np.stack([stream.step(x[:, t]) for t in range(STEPS)], axis=1)
    np.testing.assert_allclose(frames, model.run(x), rtol=0, atol=STEP_TOL)
    stream.reset()
    assert np.array_equal(stream.run(x), frames)
    stream.state = None
    assert np.array_equal(stream.run(x), frames)
    pool = model.stream_pool(3)
    first, second = pool.open(), pool.open()
    stepped = np.stack([pool.step([first, second], x[:2, t]) for t in range(STEPS)], axis=1)
    np.testing.assert_allclose(stepped, frames[:2], rtol=0, atol=STEP_TOL)
    pool.reset(first)
    np.testing.assert_allclose(pool.step([first], x[:1, 0]), frames[:1, 0], rtol=0, atol=STEP_TOL)


def test_npz_round_trip_and_hostile_fields(torch_case, tmp_path):
    model, x, _, _, h0 = torch_case
    grurt.save(model, tmp_path / "h0.npz")
    header = grurt.formats.npz.read_header(tmp_path / "h0.npz")
    assert header["format_version"] == "1.3" and header["layers"][0]["initial_state"] is True
    loaded = grurt.load(tmp_path / "h0.npz")
    assert np.array_equal(loaded.run(x), model.run(x))
    arrays = dict(np.load(tmp_path / "h0.npz"))
    header = json.loads(str(arrays.pop("header")))
    cases = [("initial_state", "yes", "'initial_state' must be true or false"),
             ("h0", np.ones((2, 5), np.float32), r"array '0.h0' has shape \(2, 5\), expected \(1, 5\)"),
             ("h0", None, "array '0.h0' is missing"),
             ("h0", np.full((1, 5), np.inf, np.float32), "initial_state contains NaN or infinity")]
    for key, value, message in cases:
        bad_header, bad_arrays = json.loads(json.dumps(header)), dict(arrays)
        if key == "initial_state":
            bad_header["layers"][0]["initial_state"] = value
        elif value is None:
            del bad_arrays["0.h0"]
        else:
            bad_arrays["0.h0"] = value
        np.savez(tmp_path / "bad.npz", header=np.array(json.dumps(bad_header)), **bad_arrays)
        with pytest.raises(grurt.ModelFormatError, match=message):
            grurt.load(tmp_path / "bad.npz")
    del header["layers"][0]["initial_state"]           # the array without the field: an unexpected array
    np.savez(tmp_path / "bad.npz", header=np.array(json.dumps(header)), **arrays)
    with pytest.raises(grurt.ModelFormatError, match=r"unexpected arrays in the file: \['0.h0'\]"):
        grurt.load(tmp_path / "bad.npz")


def test_builder_shapes_are_checked():
    rng = np.random.default_rng(0)
    w_ih, w_hh, b = rng.standard_normal((15, 3)), rng.standard_normal((15, 5)), rng.standard_normal(15)
    bidirectional = GRU.from_torch(w_ih, w_hh, b, b, reverse=(w_ih, w_hh, b, b), initial_state=np.ones((2, 1, 5)))
    assert bidirectional.initial_state.shape == (2, 5)
    with pytest.raises(grurt.ModelFormatError, match=r"initial_state has shape \(1, 3\), expected \(1, 5\)"):
        GRU.from_torch(w_ih, w_hh, b, b, initial_state=np.ones(3))
    with pytest.raises(grurt.ModelFormatError, match=r"initial_state has shape \(3, 5\); expected \(H,\) per "):
        GRU.from_torch(w_ih, w_hh, b, b, reverse=(w_ih, w_hh, b, b), initial_state=np.ones((3, 5)))
    keras_gru = GRU.from_keras(rng.standard_normal((3, 15)), rng.standard_normal((5, 15)), initial_state=np.ones(5))
    assert keras_gru.initial_state.shape == (1, 5)
