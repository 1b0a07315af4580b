"""Keras 3 models against ``model.predict``: live objects, .keras and .h5 files, and files
loaded where keras cannot be imported. Outputs agree within 1e-5 (absolute, float32)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

# Keras's torch backend on NumPy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import grurt  # noqa: E402
from grurt.verify import keras_outputs  # noqa: E402
from grurt.spec import GRU, Merge, Reverse  # noqa: E402
from tolerances import ATOL

STEPS, FEATURES = 20, 3


def seq_model(*stack, steps=STEPS, features=FEATURES):
    return keras.Sequential([keras.Input((steps, features)), *stack])


def functional_model():
    inputs = keras.Input((STEPS, FEATURES))
    x = layers.Rescaling(0.5, offset=0.1)(inputs)
    x = layers.Normalization()(x)
    x = layers.GRU(6, return_sequences=True)(x)
    x = layers.GaussianNoise(0.3)(x)
    x = layers.TimeDistributed(layers.Dense(4, activation="elu"))(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Activation("softsign")(x)
    return keras.Model(inputs, x)


MODELS = {
    # the deployment the issue is about: 100-step windows of a univariate series
    "gru50": lambda: seq_model(layers.GRU(50), layers.Dense(1), steps=100, features=1),
    "reset_before": lambda: seq_model(layers.GRU(8, reset_after=False, return_sequences=True), layers.Dense(2)),
    "hard_sigmoid": lambda: seq_model(layers.GRU(8, recurrent_activation="hard_sigmoid"), layers.Dense(1)),
    "hard_sigmoid_reset_before": lambda: seq_model(
        layers.GRU(8, recurrent_activation="hard_sigmoid", reset_after=False), layers.Dense(1)),
    "backwards_sequence": lambda: seq_model(layers.GRU(6, go_backwards=True, return_sequences=True),
                                            layers.Dense(2)),
    "backwards_last": lambda: seq_model(layers.GRU(6, go_backwards=True), layers.Dense(1)),
    "bidirectional_concat": lambda: seq_model(layers.Bidirectional(layers.GRU(5, return_sequences=True)),
                                              layers.Dense(2)),
    "bidirectional_sum": lambda: seq_model(
        layers.Bidirectional(layers.GRU(5, return_sequences=True), merge_mode="sum"), layers.Dense(2)),
    "bidirectional_ave": lambda: seq_model(
        layers.Bidirectional(layers.GRU(5, return_sequences=True), merge_mode="ave"), layers.Dense(2)),
    "bidirectional_mul": lambda: seq_model(
        layers.Bidirectional(layers.GRU(5, return_sequences=True), merge_mode="mul"), layers.Dense(2)),
    "bidirectional_last_sum": lambda: seq_model(
        layers.Bidirectional(layers.GRU(5, reset_after=False), merge_mode="sum"), layers.Dense(1)),
    "bidirectional_activations": lambda: seq_model(
        layers.Bidirectional(layers.GRU(5, return_sequences=True, recurrent_activation="hard_sigmoid",
                                        activation="softsign"), merge_mode="ave"),
        layers.GRU(3, go_backwards=True, activation="relu"), layers.Dense(1)),
    "stacked": lambda: seq_model(layers.GRU(8, return_sequences=True), layers.GRU(6, return_sequences=True),
                                 layers.GRU(4, return_sequences=True), layers.Dense(1)),
    "classifier": lambda: seq_model(layers.GRU(8), layers.Dense(4, activation="softmax")),
    "no_bias": lambda: seq_model(layers.GRU(6, use_bias=False, return_sequences=True),
                                 layers.GRU(4, use_bias=False, reset_after=False),
                                 layers.Dense(1, use_bias=False)),
    "batchnorm": lambda: seq_model(layers.GRU(6, return_sequences=True), layers.BatchNormalization(),
                                   layers.Dense(3, activation="relu"), layers.BatchNormalization(center=False)),
    "functional": functional_model,
    "normalization_given": lambda: seq_model(
        layers.Normalization(mean=[0.1, -0.2, 0.3], variance=[1.5, 0.5, 2.0]), layers.GRU(4), layers.Dense(2),
        layers.Normalization(mean=[1.0, 2.0], variance=[4.0, 9.0], invert=True)),
}


def randomize(model, rng):
    """Non-trivial weights (scale 0.5) so that every check can fail; variances stay positive.

    Recurrent kernels wider than 8 units shrink as 1/√H to keep the recurrence as well
    conditioned as at 8 units: GRU(50) at 0.5 is chaotic enough over 100 steps that float32
    Keras itself strays 1e-5 from a float64 evaluation.
    """
    values = []
    for variable, value in zip(model.weights, model.get_weights()):
        if "count" in variable.path:
            values.append(value)
        elif "variance" in variable.path:
            values.append((0.5 + rng.random(value.shape)).astype(value.dtype))
        else:
            scale = 0.5 * min(1.0, np.sqrt(8 / value.shape[0])) if "recurrent" in variable.path else 0.5
            values.append((scale * rng.standard_normal(value.shape)).astype(value.dtype))
    model.set_weights(values)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (live model, input, Keras output, {.keras path, .h5 path})."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("keras_models")
    out = {}
    for name, build in MODELS.items():
        model = build()
        randomize(model, rng)
        steps, features = model.input_shape[1:]
        x = rng.standard_normal((4, steps, features)).astype(np.float32)
        files = {ext: str(folder / f"{name}.{ext}") for ext in ("keras", "h5")}
        for path in files.values():
            model.save(path)
        out[name] = model, x, model.predict(x, verbose=0), files
    return out


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_keras_predict(zoo, name, source):
    model, x, expected, files = zoo[name]
    converted = grurt.from_keras(model) if source == "live" else grurt.load(files[source])
    out = converted.run(x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)


def test_single_sequence_and_state(zoo):
    model, x, expected, _ = zoo["gru50"]
    converted = grurt.from_keras(model)
    np.testing.assert_allclose(converted.run(x[1]), expected[1], rtol=0, atol=ATOL)
    # the last GRU's final state is what Dense reads
    _, (state,) = converted.run(x, return_state=True)
    dense = converted.layers[-1]
    np.testing.assert_allclose(state[0] @ dense.W.T + dense.b, expected, rtol=0, atol=ATOL)


def test_canonical_layers(zoo):
    """go_backwards is a reverse GRU plus Reverse; sum/ave/mul merges are a Merge layer."""
    backwards = grurt.from_keras(zoo["backwards_sequence"][0]).layers
    assert backwards[0].direction == "reverse" and isinstance(backwards[1], Reverse)
    assert len(grurt.from_keras(zoo["backwards_last"][0]).layers) == 2
    gru, merge, _ = grurt.from_keras(zoo["bidirectional_ave"][0]).layers
    assert gru.direction == "bidirectional" and isinstance(merge, Merge) and merge.mode == "ave"
    hard = grurt.from_keras(zoo["hard_sigmoid"][0]).layers[0]
    assert isinstance(hard, GRU) and hard.gate_activation.alpha == pytest.approx(1 / 6)
    assert hard.linear_before_reset
    assert not grurt.from_keras(zoo["reset_before"][0]).layers[0].linear_before_reset


def test_model_built_without_input_layer():
    rng = np.random.default_rng(3)
    model = keras.Sequential([layers.GRU(4), layers.Dense(2)])
    model.build((None, STEPS, FEATURES))
    randomize(model, rng)
    x = rng.standard_normal((2, STEPS, FEATURES)).astype(np.float32)
    np.testing.assert_allclose(grurt.from_keras(model).run(x), model.predict(x, verbose=0), rtol=0, atol=ATOL)


def test_files_load_without_keras(zoo, tmp_path):
    """A serving machine has h5py but neither keras nor tensorflow."""
    cases = [(path, x, expected) for _, x, expected, files in zoo.values() for path in files.values()]
    np.savez(tmp_path / "cases.npz", **{f"x{i}": x for i, (_, x, _) in enumerate(cases)},
             **{f"y{i}": y for i, (_, _, y) in enumerate(cases)})
    script = textwrap.dedent(f"""
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in ("keras", "tensorflow", "tf_keras"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Blocker())
        import numpy as np
        import grurt

        cases = np.load(sys.argv[1])
        for i, path in enumerate(sys.argv[2:]):
            out = grurt.load(path).run(cases[f"x{{i}}"])
            error = np.abs(out - cases[f"y{{i}}"]).max()
            assert error <= {ATOL}, (path, error)
        assert not any(m.partition(".")[0] in ("keras", "tensorflow") for m in sys.modules)
        print("loaded", len(sys.argv) - 2)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cases.npz"),
                             *[path for path, _, _ in cases]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"loaded {len(cases)}"


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_framework_outputs(zoo, ext):
    _, x, expected, files = zoo["bidirectional_sum"]
    np.testing.assert_allclose(keras_outputs(files[ext], x), expected, rtol=0, atol=1e-6)
    single = keras_outputs(files[ext], x[0])
    assert single.shape == expected[0].shape
    np.testing.assert_allclose(single, expected[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("build, fragment", [
    (lambda: seq_model(layers.Bidirectional(layers.GRU(3), merge_mode=None)), "merge_mode=None"),
    (lambda: seq_model(layers.LSTM(3)), "'lstm' (LSTM) is not supported"),
    (lambda: seq_model(layers.GRU(3, return_state=True)), "return_state=True"),
    (lambda: seq_model(layers.GRU(3, activation="celu")), "unsupported Keras activation 'celu'"),
    (lambda: seq_model(layers.Dense(3)), "no GRU layer"),
    (lambda: seq_model(layers.Masking(), layers.GRU(3, return_sequences=True, zero_output_for_mask=True)),
     "zero_output_for_mask=True"),
])
def test_unsupported_layers_are_named(build, fragment):
    # grurt's fused layers refuse these (from_keras then lowers some onto ONNX ops: test_keras_lowered.py)
    with pytest.raises(grurt.UnsupportedModelError) as info:
        grurt.importers.keras.live_keras_spec(build())
    assert fragment in str(info.value)


@pytest.mark.parametrize("source", ["live", "keras", "h5"])
def test_masking_of_trailing_padding(tmp_path, source):
    """Masking → each sequence's length (the kernels' fast path): outputs match model.predict on a
    padded batch, at the masked steps too (Keras repeats a GRU's last output there, and a
    bidirectional GRU gives zeros); a masked step before real ones is skipped as Keras skips it."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, STEPS, FEATURES)).astype(np.float32)
    lengths = np.array([STEPS, 1, 7, 13])
    for b, n in enumerate(lengths):
        x[b, n:] = -1.0
    holes = x.copy()
    holes[0, 3] = -1.0
    last = seq_model(layers.Masking(mask_value=-1.0), layers.GRU(6), layers.Dense(2))
    sequence = seq_model(layers.Masking(mask_value=-1.0), layers.GRU(5, return_sequences=True),
                         layers.Bidirectional(layers.GRU(3, return_sequences=True), merge_mode="mul"),
                         layers.Dense(2))
    for model in (last, sequence):
        randomize(model, rng)
        if source == "live":
            converted = grurt.from_keras(model)
        else:
            path = str(tmp_path / f"{model.name}.{source}")
            model.save(path)
            converted = grurt.load(path)
        assert converted.spec.mask_value == -1.0
        for batch in (x, holes):
            expected = model.predict(batch, verbose=0)
            out = converted.run(batch)
            assert out.shape == expected.shape
            assert np.abs(out - expected).max() <= ATOL
