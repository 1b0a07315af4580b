"""Layers of the user's own classes (issue 21): ``custom_layers={"ClassName": ...}`` on
``grurt.from_keras`` and ``grurt.load`` says what each computes, as a function of its config and
weights or as a list of grurt layers; without it the error names the class and shows the keyword.
Lambda layers stay refused (arbitrary code). Outputs against Keras 3 ``predict``, ATOL."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.spec import Activation, Scale, activation  # noqa: E402
from tolerances import ATOL  # noqa: E402
from keras_testing import as_tuple, saved_files  # noqa: E402

STEPS, FEATURES = 6, 3


class SqueezeLayer(layers.Layer):
    """The chord model's squeeze of a unit axis: in grurt's (batch, time, features) world, the identity."""

    def call(self, x):
        return x


@keras.saving.register_keras_serializable(package="grurt_tests")
class ChannelScale(layers.Layer):
    """x·w + b per feature, with weights."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), name="w")
        self.b = self.add_weight(shape=(shape[-1],), name="b")

    def call(self, x):
        return x * self.w + self.b


class Swish(layers.Layer):
    """x·sigmoid(beta·x) with beta in the config."""

    def __init__(self, beta=1.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def call(self, x):
        return x * keras.ops.sigmoid(self.beta * x)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


CUSTOM = {"SqueezeLayer": [],
          "grurt_tests>ChannelScale": lambda config, weights: [Scale(weights[0], weights[1])],
          "Swish": lambda config, weights: [Activation(activation("silu"))] if config["beta"] == 1.0 else None}


def sequential():
    return keras.Sequential([keras.Input((STEPS, FEATURES)), SqueezeLayer(), ChannelScale(),
                             layers.GRU(4, return_sequences=True), Swish(), layers.Dense(2)])


def functional():
    x = keras.Input((STEPS, FEATURES), name="x")
    a = ChannelScale(name="scale")(SqueezeLayer(name="squeeze")(x))
    g = layers.GRU(4, return_sequences=True, name="g")(a)
    return keras.Model(x, [Swish(name="swish")(g), layers.Add(name="add")([g, layers.Dense(4, name="d")(a)])])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    rng = np.random.default_rng(2105)
    folder = tmp_path_factory.mktemp("keras_custom")
    out = {}
    for name, build in (("sequential", sequential), ("functional", functional)):
        model = build()
        model.set_weights([(0.6 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])
        x = rng.standard_normal((3, STEPS, FEATURES)).astype(np.float32)
        files = saved_files(model, folder, name)
        out[name] = model, x, model.predict(x, verbose=0), files
    return out


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_custom_layers_match_keras(zoo, name, source):
    model, x, expected, files = zoo[name]
    converted = (grurt.from_keras(model, custom_layers=CUSTOM) if source == "live"
                 else grurt.load(files[source], custom_layers=CUSTOM))
    for out, ref, want in zip(as_tuple(converted.run(x)), as_tuple(reference.run(converted.spec, x)),
                              as_tuple(expected)):
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(ref, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
def test_without_the_keyword_the_class_is_named(zoo, source):
    model, _, _, files = zoo["sequential"]
    with pytest.raises(grurt.UnsupportedModelError) as info:
        grurt.from_keras(model) if source == "live" else grurt.load(files[source])
    message = str(info.value)
    assert "'squeeze_layer' (SqueezeLayer) is not supported" in message
    assert "custom_layers={'SqueezeLayer': lambda config, weights: [grurt layers]}" in message
    with pytest.raises(grurt.UnsupportedModelError, match=r"'recurrent' \(LSTM\) is not supported; grurt converts"):
        grurt.from_keras(keras.Sequential([keras.Input((STEPS, FEATURES)), layers.LSTM(2, name="recurrent")]))


def test_bad_mappings_are_named(zoo):
    model = zoo["sequential"][0]
    with pytest.raises(grurt.UnsupportedModelError,
                       match=r"'swish' \(Swish\): custom_layers\['Swish'\] must give a list of grurt layers.*None"):
        grurt.from_keras(model, custom_layers={**CUSTOM, "Swish": lambda config, weights: None})

    def broken(config, weights):
        return [Scale(weights[5], weights[5])]
    with pytest.raises(grurt.UnsupportedModelError, match=r"custom_layers\['ChannelScale'\] raised IndexError"):
        grurt.from_keras(model, custom_layers={**CUSTOM, "ChannelScale": broken})
    with pytest.raises(grurt.ModelFormatError, match=r"'channel_scale' \(ChannelScale\).*expects 5 input features"):
        grurt.from_keras(model, custom_layers={**CUSTOM, "ChannelScale": [Scale(np.ones(5), np.zeros(5))]})
    with pytest.raises(TypeError, match="custom_layers must be a dict"):
        grurt.from_keras(model, custom_layers={"Swish": 3})
    with pytest.raises(TypeError, match="custom_layers must be a dict"):
        grurt.load(zoo["sequential"][3]["h5"], custom_layers=["Swish"])


def test_lambda_layers_stay_refused():
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), layers.Lambda(lambda x: 2 * x), layers.GRU(2)])
    for custom in (None, {"Lambda": []}):
        with pytest.raises(grurt.UnsupportedModelError,
                           match="Lambda layer holds Python code .* that grurt does not run"):
            grurt.from_keras(model, custom_layers=custom)
