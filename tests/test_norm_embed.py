"""Embedding, LayerNorm, UnitNorm, GRUCell, global pooling and Flatten (issue 12) against the frameworks.

Each importer's model, run by grurt (the float64 reference and the kernels), against the framework
itself: PyTorch modules, Keras ``predict`` on live models and their .keras/.h5 files, onnxruntime
on torch.onnx exports (legacy exporter at opsets 14 and 17, where LayerNorm is decomposed and an
operator respectively, and the dynamo exporter) and on hand-built graphs. Tolerance: ATOL
(1e-5) absolute, float32.
"""
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import grurt  # noqa: E402
from grurt import reference  # noqa: E402
from grurt.spec import (GRU, Embedding, Flatten, GlobalPool, LayerNorm, ModelSpec,  # noqa: E402
                        UnitNorm)

from gru_testing import max_abs_diff  # noqa: E402
from tolerances import ATOL  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def kinds(spec):
    return [type(layer).__name__ for layer in spec.layers]


def assert_runs_like(spec, x, expected, **run_args):
    """The reference on ``spec`` and the kernels (a Model of it) give ``expected`` within ATOL."""
    expected = np.asarray(expected)
    out = reference.run(spec, x, **run_args)
    assert max_abs_diff(np.reshape(out, expected.shape), expected) <= ATOL
    kernels = grurt.Model(spec).run(x, **run_args)
    assert max_abs_diff(np.reshape(kernels, expected.shape), expected) <= ATOL
    return out


# ---------------------------------------------------------------- PyTorch

torch = pytest.importorskip("torch")
from grurt.importers.torch import spec_from_torch  # noqa: E402


def test_torch_embedding_gru():
    torch.manual_seed(0)
    emb, gru = torch.nn.Embedding(50, 8, padding_idx=0), torch.nn.GRU(8, 16, batch_first=True)
    ids = torch.randint(0, 50, (3, 7))
    ids[0, 2] = 0                                        # padding_idx: its row is whatever the table holds
    spec = spec_from_torch(torch.nn.Sequential(emb, gru))
    assert spec.input_size is None and spec.takes_ids and kinds(spec) == ["Embedding", "GRU"]
    with torch.no_grad():
        expected = gru(emb(ids))[0].numpy()
    assert_runs_like(spec, ids.numpy(), expected)
    assert_runs_like(spec, ids[1].numpy(), expected[1])                  # one sequence of ids (T,)
    assert_runs_like(spec, ids.numpy().astype(np.int32), expected)      # any integer dtype


def test_torch_gru_layernorm():
    torch.manual_seed(1)
    gru, norm = torch.nn.GRU(4, 12, batch_first=True), torch.nn.LayerNorm(12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 9, 4)
    spec = spec_from_torch([gru, norm])
    assert spec.layers[1].epsilon == pytest.approx(1e-5)
    with torch.no_grad():
        assert_runs_like(spec, x.numpy(), norm(gru(x)[0]).numpy())


@pytest.mark.parametrize("options", [dict(elementwise_affine=False), dict(bias=False), dict(eps=0.1)])
def test_torch_layernorm_options(options):
    torch.manual_seed(2)
    gru, norm = torch.nn.GRU(3, 6, batch_first=True), torch.nn.LayerNorm(6, **options)
    if norm.weight is not None:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        assert_runs_like(spec_from_torch([gru, norm]), x.numpy(), norm(gru(x)[0]).numpy())


def test_torch_layernorm_over_several_axes_is_refused():
    from grurt import UnsupportedModelError
    with pytest.raises(UnsupportedModelError, match="normalized_shape"):
        spec_from_torch([torch.nn.GRU(3, 6, batch_first=True), torch.nn.LayerNorm((5, 6))])


def test_torch_grucell_decoder_steps():
    """GRUCell → Linear as a decoder: each step's output and state, fed back, for 6 steps."""
    torch.manual_seed(3)
    cell, head = torch.nn.GRUCell(5, 7), torch.nn.Linear(7, 5)
    spec = spec_from_torch([cell, head])
    assert kinds(spec) == ["GRU", "Dense"] and not spec.layers[0].return_sequences
    x, h = torch.randn(4, 5), torch.randn(4, 7)
    state = h.numpy()[None]
    out_grurt = x.numpy()
    with torch.no_grad():
        for _ in range(6):
            h = cell(x, h)
            x = head(h)
            kernels, (kernel_state,) = grurt.Model(spec).run(out_grurt[:, None], initial_state=[state],
                                                             return_state=True)
            out_grurt, (state,) = reference.run(spec, out_grurt[:, None], initial_state=[state], return_state=True)
            assert max_abs_diff(out_grurt, x.numpy()) <= ATOL
            assert max_abs_diff(state[0], h.numpy()) <= ATOL
            assert max_abs_diff(kernels, x.numpy()) <= ATOL and max_abs_diff(kernel_state[0], h.numpy()) <= ATOL


def test_torch_grucell_without_bias():
    torch.manual_seed(4)
    cell = torch.nn.GRUCell(3, 4, bias=False)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    with torch.no_grad():
        assert_runs_like(spec_from_torch(cell), x.numpy()[:, None], cell(x, h).numpy(),
                         initial_state=[h.numpy()[None]])


def test_torch_embedding_max_norm_refused():
    from grurt import UnsupportedModelError
    with pytest.raises(UnsupportedModelError, match="max_norm"):
        spec_from_torch([torch.nn.Embedding(5, 3, max_norm=1.0), torch.nn.GRU(3, 2)])


# ---------------------------------------------------------------- Keras

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from grurt.importers.keras import live_keras_spec, read_keras, spec_from_keras  # noqa: E402


def keras_specs(model, folder):
    """The spec of a live Keras model and of its .keras and .h5 files."""
    yield "live", live_keras_spec(model)
    for suffix in ("keras", "h5"):
        path = os.path.join(folder, "model." + suffix)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(path)
        yield suffix, spec_from_keras(*read_keras(path))


def randomize(model, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * scale for w in layer.get_weights()])


STEPS, FEATURES = 7, 4


def keras_inputs(seed=0, masked=False):
    x = np.random.default_rng(seed).normal(size=(4, STEPS, FEATURES)).astype(np.float32)
    if masked:
        x[0, 5:] = 0.0
        x[1, 2:] = 0.0
    return x


KERAS_MODELS = {
    "gru_layernorm_gru": lambda: [layers.GRU(10, return_sequences=True), layers.LayerNormalization(),
                                  layers.GRU(5)],
    "layernorm_options": lambda: [layers.GRU(10, return_sequences=True),
                                  layers.LayerNormalization(axis=[2], epsilon=0.1, center=False), layers.GRU(5)],
    "layernorm_no_scale": lambda: [layers.GRU(10, return_sequences=True), layers.LayerNormalization(scale=False)],
    "flatten_dense": lambda: [layers.GRU(10, return_sequences=True), layers.Flatten(), layers.Dense(3)],
    "global_average": lambda: [layers.GRU(10, return_sequences=True), layers.GlobalAveragePooling1D(),
                               layers.Dense(3)],
    "global_max": lambda: [layers.GRU(10, return_sequences=True), layers.GlobalMaxPooling1D(), layers.Dense(3)],
    "unit_norm": lambda: [layers.GRU(10, return_sequences=True), layers.UnitNormalization(), layers.GRU(3)],
    "unit_norm_last": lambda: [layers.GRU(10), layers.Dense(4), layers.UnitNormalization()],
    "masked_global_average": lambda: [layers.Masking(0.0), layers.GRU(10, return_sequences=True),
                                      layers.GlobalAveragePooling1D(), layers.Dense(3)],
    "masked_global_max": lambda: [layers.Masking(0.0), layers.GRU(10, return_sequences=True), layers.Dense(3),
                                  layers.GlobalMaxPooling1D()],
}


@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_keras_models(name, tmp_path):
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), *KERAS_MODELS[name]()])
    randomize(model, seed=len(name))
    x = keras_inputs(masked=name.startswith("masked"))
    expected = model.predict(x, verbose=0)
    for source, spec in keras_specs(model, str(tmp_path)):
        assert_runs_like(spec, x, expected)


def sentiment_model(mask_zero):
    return keras.Sequential([keras.Input((9,), dtype="int32"), layers.Embedding(30, 8, mask_zero=mask_zero),
                             layers.GRU(12), layers.Dense(1, activation="sigmoid")])


def sentiment_ids():
    ids = np.random.default_rng(5).integers(1, 30, (4, 9))
    ids[0, 6:] = 0          # trailing padding
    ids[1, 3:] = 0
    return ids


@pytest.mark.parametrize("mask_zero", [True, False])
def test_keras_sentiment_model(mask_zero, tmp_path):
    """The classic sentiment model: Embedding → GRU → Dense(sigmoid) on padded token ids."""
    model = sentiment_model(mask_zero)
    ids = sentiment_ids()
    expected = model.predict(ids, verbose=0)
    for source, spec in keras_specs(model, str(tmp_path)):
        assert spec.takes_ids and spec.input_size is None
        assert spec.mask_value == (0 if mask_zero else None)
        assert_runs_like(spec, ids, expected)


def test_keras_unit_norm_epsilon_by_version():
    """Keras ≥ 3.6 floors the norm at 1e-12; tf.keras 2 and Keras < 3.6 the squared norm (norm at 1e-6)."""
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), layers.GRU(3), layers.UnitNormalization()])
    config = {"class_name": "Sequential", "config": model.get_config()}
    weights = {layer.name: layer.get_weights() for layer in model.layers}
    for version, epsilon in (("3.15.1", 1e-12), ("3.6.0", 1e-12), ("3.5.0", 1e-6), ("2.15.0", 1e-6)):
        assert spec_from_keras(config, weights, version).layers[-1].epsilon == pytest.approx(epsilon)


def test_keras_flatten_needs_fixed_steps():
    from grurt import UnsupportedModelError
    model = keras.Sequential([keras.Input((None, FEATURES)), layers.GRU(4, return_sequences=True), layers.Flatten()])
    with pytest.raises(UnsupportedModelError, match="fixed number of time steps"):
        live_keras_spec(model)


def test_keras_refusals():
    from grurt import UnsupportedModelError
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), layers.GRU(4, return_sequences=True),
                              layers.LayerNormalization(axis=1)])
    with pytest.raises(UnsupportedModelError, match="axis"):
        live_keras_spec(model)
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), layers.GRU(4, return_sequences=True),
                              layers.GlobalAveragePooling1D(keepdims=True)])
    with pytest.raises(UnsupportedModelError, match="keepdims"):
        live_keras_spec(model)


# ---------------------------------------------------------------- ONNX

ort = pytest.importorskip("onnxruntime")
from grurt.importers.onnx import _import  # noqa: E402


class EmbeddingGRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.gru, self.fc = torch.nn.Embedding(40, 8), torch.nn.GRU(8, 12, batch_first=True), \
            torch.nn.Linear(12, 1)

    def forward(self, ids):
        return torch.sigmoid(self.fc(self.gru(self.emb(ids))[0][:, -1]))


class GRULayerNormGRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.norm, self.gru2 = torch.nn.GRU(4, 12, batch_first=True), torch.nn.LayerNorm(12), \
            torch.nn.GRU(12, 5, batch_first=True)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.gru2(self.norm(self.gru(x)[0]))[0]


class Pooled(torch.nn.Module):
    pool = "mean"

    def __init__(self, head_inputs=12):
        super().__init__()
        self.gru, self.fc = torch.nn.GRU(4, 12, batch_first=True), torch.nn.Linear(head_inputs, 3)

    def forward(self, x):
        y = self.gru(x)[0]
        if self.pool == "mean":
            y = y.mean(dim=1)
        elif self.pool == "max":
            y = y.amax(dim=1)
        elif self.pool == "adaptive":       # exported as GlobalAveragePool on (B, F, T)
            y = torch.nn.functional.adaptive_avg_pool1d(y.transpose(1, 2), 1)[..., 0]
        return self.fc(y)


class MaxPooled(Pooled):
    pool = "max"


class AdaptivePooled(Pooled):
    pool = "adaptive"


class Flattened(Pooled):
    pool = "flatten"

    def __init__(self):
        super().__init__(head_inputs=12 * 6)

    def forward(self, x):
        return self.fc(self.gru(x)[0].flatten(1))


class Normalized(Pooled):
    def forward(self, x):
        return torch.nn.functional.normalize(self.gru(x)[0], dim=-1)


ONNX_MODELS = {"embedding": EmbeddingGRU, "layernorm": GRULayerNormGRU, "mean": Pooled, "max": MaxPooled,
               "global_average_pool": AdaptivePooled, "flatten": Flattened, "normalize": Normalized}
EXPORTERS = {"legacy14": dict(dynamo=False, opset_version=14), "legacy17": dict(dynamo=False, opset_version=17),
             "dynamo": dict(dynamo=True)}
EXPECTED_LAYERS = {"embedding": "Embedding", "layernorm": "LayerNorm", "mean": "GlobalPool", "max": "GlobalPool",
                   "global_average_pool": "GlobalPool", "flatten": "Flatten", "normalize": "UnitNorm"}


def export(module, x, path, exporter, dynamic=True):
    options = dict(EXPORTERS[exporter])
    args = dict(input_names=["x"], output_names=["y"])
    if dynamic and options.get("dynamo"):
        args["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif dynamic:
        args["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), path, verbose=False, **args, **options)
    return path


@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
@pytest.mark.parametrize("name", sorted(ONNX_MODELS))
def test_torch_onnx_exports(name, exporter, tmp_path):
    torch.manual_seed(6)
    module = ONNX_MODELS[name]().eval()
    x = torch.randint(0, 40, (3, 6)) if name == "embedding" else torch.randn(3, 6, 4)
    path = export(module, x, str(tmp_path / f"{name}.onnx"), exporter, dynamic=name != "flatten")
    expected = ort.InferenceSession(path).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert max_abs_diff(expected, module(x).numpy()) <= ATOL
    *_, result = _import(path)
    assert EXPECTED_LAYERS[name] in kinds(result.spec)
    if name == "layernorm":
        assert result.spec.layers[1].epsilon == pytest.approx(1e-5)
    assert_runs_like(result.spec, x.numpy(), expected)


def onnx_graph(nodes, inputs, output_shape, initializers=(), opset=17, input_type=None):
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(name, input_type or TensorProto.FLOAT, shape)
                     for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(value, name) for name, value in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def gru_node(rng, inputs, hidden, source="x", batch_first=True):
    """An ONNX GRU (layout 0) over ``source``, (B, T, inputs) when ``batch_first`` else (T, B, inputs),
    with its weights; its output "h" in the same layout."""
    from onnx import helper
    W = (rng.normal(size=(1, 3 * hidden, inputs)) * 0.5).astype(np.float32)
    R = (rng.normal(size=(1, 3 * hidden, hidden)) * 0.3).astype(np.float32)
    B = (rng.normal(size=(1, 6 * hidden)) * 0.3).astype(np.float32)
    if batch_first:
        nodes = [helper.make_node("Transpose", [source], ["xT"], perm=[1, 0, 2]),
                 helper.make_node("GRU", ["xT", "W", "R", "B"], ["Y"], hidden_size=hidden, linear_before_reset=1),
                 helper.make_node("Squeeze", ["Y", "axis1"], ["hT"]),
                 helper.make_node("Transpose", ["hT"], ["h"], perm=[1, 0, 2])]
    else:
        nodes = [helper.make_node("GRU", [source, "W", "R", "B"], ["Y"], hidden_size=hidden, linear_before_reset=1),
                 helper.make_node("Squeeze", ["Y", "axis1"], ["h"])]
    return nodes, [("W", W), ("R", R), ("B", B), ("axis1", np.array([1], np.int64))]


def run_handbuilt(model, feeds, tmp_path):
    import onnx
    path = str(tmp_path / "model.onnx")
    onnx.save(model, path)
    expected = ort.InferenceSession(path).run(None, feeds)[0]
    return expected, _import(path)[-1].spec


def int64_array(values):
    return np.asarray(values, np.int64)


@pytest.mark.parametrize("op", ["LayerNormalization", "LpNormalization", "GlobalAveragePool", "GlobalMaxPool",
                                "ReduceMean", "ReduceMax"])
def test_onnx_handbuilt_ops(op, tmp_path):
    from onnx import helper
    rng = np.random.default_rng(7)
    nodes, inits = gru_node(rng, 3, 6)
    gamma, beta = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    shape = ["B", 5, 6]
    if op == "LayerNormalization":
        nodes.append(helper.make_node(op, ["h", "gamma", "beta"], ["y"], epsilon=0.01))
        inits += [("gamma", gamma), ("beta", beta)]
    elif op == "LpNormalization":
        nodes.append(helper.make_node(op, ["h"], ["y"], axis=-1, p=2))
    elif op.startswith("Global"):
        nodes += [helper.make_node("Transpose", ["h"], ["hF"], perm=[0, 2, 1]), helper.make_node(op, ["hF"], ["y"])]
        shape = ["B", 6, 1]
    else:
        nodes.append(helper.make_node(op, ["h"], ["y"], axes=[1], keepdims=0))
        shape = ["B", 6]
    model = onnx_graph(nodes, [("x", ["B", 5, 3])], shape, inits, opset=17)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    expected, spec = run_handbuilt(model, {"x": x}, tmp_path)
    if op == "LayerNormalization":
        assert spec.layers[1].epsilon == pytest.approx(0.01)
    if op == "LpNormalization":
        assert spec.layers[1].epsilon == 0
    assert_runs_like(spec, x, expected)


def test_onnx_gather_ids_time_major(tmp_path):
    """Ids (T, B) from the graph input: Gather → a time-major GRU."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(8)
    table = rng.normal(size=(11, 3)).astype(np.float32)
    nodes, inits = gru_node(rng, 3, 4, source="e", batch_first=False)
    nodes.insert(0, helper.make_node("Gather", ["table", "ids"], ["e"], axis=0))
    nodes[-1].output[0] = "y"
    model = onnx_graph(nodes, [("ids", ["T", "B"])], ["T", "B", 4], inits + [("table", table)],
                       input_type=TensorProto.INT64)
    ids = rng.integers(0, 11, (5, 2))
    expected, spec = run_handbuilt(model, {"ids": ids}, tmp_path)
    assert spec.takes_ids and spec.vocabulary == 11
    assert_runs_like(spec, ids.T, expected.transpose(1, 0, 2))


def test_onnx_unit_norm_of_zeros_is_zero(tmp_path):
    """onnxruntime's LpNormalization gives 0 for a zero vector; UnitNorm(epsilon=0) does the same."""
    spec = ModelSpec(2, (GRU(np.zeros((1, 6, 2)), np.zeros((1, 6, 2)), np.zeros((1, 12))), UnitNorm(0.0)))
    assert not np.isnan(reference.run(spec, np.zeros((3, 2)))).any()
    assert (reference.run(spec, np.zeros((3, 2))) == 0).all()


# ---------------------------------------------------------------- the canonical layers

def test_spec_rules():
    from grurt import ModelFormatError
    table = np.ones((4, 2))
    gru = GRU(np.zeros((1, 9, 2)), np.zeros((1, 9, 3)), np.zeros((1, 18)))
    with pytest.raises(ModelFormatError, match="first layer"):
        ModelSpec(2, (gru, Embedding(table)))
    with pytest.raises(ModelFormatError, match="input_size must be None"):
        ModelSpec(4, (Embedding(table), gru))
    with pytest.raises(ModelFormatError, match="integer id"):
        ModelSpec(None, (Embedding(table), gru), mask_value=0.5)
    with pytest.raises(ModelFormatError, match="needs a sequence"):
        ModelSpec(2, (GlobalPool("average"), gru))
    spec = ModelSpec(None, (Embedding(table), gru, LayerNorm(np.ones(3), np.zeros(3)), Flatten(5)))
    assert spec.output_size == 15 and not spec.returns_sequence and spec.fixed_steps == 5
    with pytest.raises(ModelFormatError, match="epsilon"):
        LayerNorm(np.ones(3), np.zeros(3), -1.0)
