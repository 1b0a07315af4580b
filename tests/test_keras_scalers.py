"""Fitted scikit-learn scalers folded into Scale layers (from_keras, load, from_torch), against
scaling by hand with the scalers themselves. Outputs in real units agree within a relative 1e-5."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
preprocessing = pytest.importorskip("sklearn.preprocessing")
torch = pytest.importorskip("torch")
from keras import layers  # noqa: E402

# Keras's torch backend on NumPy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt.spec import Scale  # noqa: E402

MinMaxScaler, StandardScaler = preprocessing.MinMaxScaler, preprocessing.StandardScaler


def assert_close_relative(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def random_model(model, rng):
    model.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in model.get_weights()])
    return model


def scale_windows(scaler, windows):
    """A scaler applied per feature to (B, T, F) windows, as a Keras user prepares them."""
    return scaler.transform(windows.reshape(-1, windows.shape[-1])).reshape(windows.shape).astype(np.float32)


@pytest.fixture(scope="module")
def series_setup():
    """The issue's user: a MinMax-scaled price series, 100-step windows, GRU(50) + Dense(1)."""
    rng = np.random.default_rng(5)
    series = (200 + np.cumsum(rng.standard_normal(1000))).reshape(-1, 1)
    scaler = MinMaxScaler().fit(series)
    windows = np.stack([series[i:i + 100] for i in range(0, 800, 100)])
    model = keras.Sequential([keras.Input((100, 1)), layers.GRU(50), layers.Dense(1)])
    model.set_weights([(0.2 * rng.standard_normal(w.shape)).astype(np.float32) for w in model.get_weights()])
    return model, scaler, windows


def expected_minmax(setup):
    model, scaler, windows = setup
    return scaler.inverse_transform(model.predict(scale_windows(scaler, windows), verbose=0))


def test_minmax_from_keras(series_setup):
    model, scaler, windows = series_setup
    converted = grurt.from_keras(model, input_scaler=scaler, output_scaler=scaler)
    assert isinstance(converted.layers[0], Scale) and isinstance(converted.layers[-1], Scale)
    out = converted.run(windows)
    assert out.min() > 100  # real units, not the scaled [0, 1]
    assert_close_relative(out, expected_minmax(series_setup))


def test_minmax_from_file(series_setup, tmp_path):
    model, scaler, windows = series_setup
    model.save(tmp_path / "model.keras")
    converted = grurt.load(tmp_path / "model.keras", input_scaler=scaler, output_scaler=scaler)
    assert_close_relative(converted.run(windows), expected_minmax(series_setup))


@pytest.mark.parametrize("with_mean, with_std", [(True, True), (False, True), (True, False)])
def test_standard_scalers_on_sequences(with_mean, with_std):
    rng = np.random.default_rng(9)
    model = random_model(keras.Sequential([keras.Input((12, 3)), layers.GRU(6, return_sequences=True),
                                           layers.Dense(2)]), rng)
    inputs = rng.normal([5.0, -3.0, 100.0], [2.0, 0.5, 30.0], size=(4, 12, 3))
    targets = rng.normal([10.0, -50.0], [4.0, 20.0], size=(200, 2))
    input_scaler = StandardScaler(with_mean=with_mean, with_std=with_std).fit(inputs.reshape(-1, 3))
    output_scaler = StandardScaler(with_mean=with_mean, with_std=with_std).fit(targets)
    scaled_out = model.predict(scale_windows(input_scaler, inputs), verbose=0)
    expected = output_scaler.inverse_transform(scaled_out.reshape(-1, 2)).reshape(scaled_out.shape)
    out = grurt.from_keras(model, input_scaler=input_scaler, output_scaler=output_scaler).run(inputs)
    assert_close_relative(out, expected)


def test_from_torch_with_scalers():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    gru, linear = torch.nn.GRU(2, 8, batch_first=True), torch.nn.Linear(8, 1)
    inputs = rng.normal([50.0, 0.01], [10.0, 0.005], size=(3, 30, 2))
    input_scaler = StandardScaler().fit(inputs.reshape(-1, 2))
    output_scaler = MinMaxScaler(feature_range=(-1, 1)).fit(rng.uniform(1e3, 2e3, size=(50, 1)))
    with torch.no_grad():
        hidden, _ = gru(torch.from_numpy(scale_windows(input_scaler, inputs)))
        expected = output_scaler.inverse_transform(linear(hidden[:, -1]).numpy())
    converted = grurt.from_torch([gru, linear], last_step=True, input_scaler=input_scaler,
                                 output_scaler=output_scaler)
    assert_close_relative(converted.run(inputs), expected)


def test_scaler_errors(series_setup):
    model, scaler, _ = series_setup
    two_features = MinMaxScaler().fit(np.random.default_rng(0).random((10, 2)))
    with pytest.raises(grurt.ModelFormatError, match="input_scaler was fitted on 2 features, the model takes 1"):
        grurt.from_keras(model, input_scaler=two_features)
    with pytest.raises(grurt.ModelFormatError, match="output_scaler was fitted on 2 features, the model outputs 1"):
        grurt.from_keras(model, output_scaler=two_features)
    with pytest.raises(grurt.ModelFormatError, match="StandardScaler is not fitted"):
        grurt.from_keras(model, input_scaler=StandardScaler())
    with pytest.raises(grurt.UnsupportedModelError, match="unsupported scaler RobustScaler"):
        grurt.from_keras(model, input_scaler=preprocessing.RobustScaler().fit(np.ones((3, 1))))
    with pytest.raises(grurt.UnsupportedModelError, match="clip=True"):
        grurt.from_keras(model, input_scaler=MinMaxScaler(clip=True).fit(np.arange(5.0).reshape(-1, 1)))
