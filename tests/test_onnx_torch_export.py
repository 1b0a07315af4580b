"""Models written by ``torch.onnx.export``, legacy (``dynamo=False``) and dynamo exporters.

Each file is loaded with grurt and compared with the torch module itself and with
onnxruntime on the same file, at 1e-5 absolute (ATOL). The files are exported with
dynamic batch and time and run at sizes other than the export's (torch 2.13's dynamo
exporter keeps the time axis of most GRU graphs static: onnxruntime then runs them at the
export's length, while grurt, like the torch module, runs any length).
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

from grurt.importers.onnx import load_onnx  # noqa: E402
from grurt.verify import onnx_outputs  # noqa: E402
from grurt.spec import GRU, Activation, Dense, LastStep  # noqa: E402
from tolerances import ATOL

EXPORT_SIZE, RUN_SIZE = (2, 5), (3, 7)   # (batch, time)


class Forecaster(nn.Module):
    """GRU(50) + Linear(1) on the last step, batch first: the classic time-series forecaster."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 50, batch_first=True)
        self.fc = nn.Linear(50, 1)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y[:, -1])


class Stacked(nn.Module):
    """2-layer GRU(128) + Linear on every step."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 128, num_layers=2, batch_first=True)
        self.fc = nn.Linear(128, 3)

    def forward(self, x):
        return self.fc(self.gru(x)[0])


class Bidirectional(nn.Module):
    """Bidirectional 2-layer GRU; both directions' final states → Linear, ReLU6, Linear, Softmax."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(16, 6), nn.ReLU6(), nn.Linear(6, 3), nn.Softmax(dim=-1))

    def forward(self, x):
        _, h = self.gru(x)
        return self.head(torch.cat([h[-2], h[-1]], dim=1))


class Streaming(nn.Module):
    """3 layers, h0 in and h_n out: the streaming export."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8, num_layers=3, batch_first=True)

    def forward(self, x, h0):
        return self.gru(x, h0)


class NoBias(nn.Module):
    """bias=False and time-major input (batch_first=False), Linear on the last step."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8, bias=False)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.gru(x)[0][-1])


class OneFeature(nn.Module):
    """input_size 1, sequence to sequence with a Tanh and a Sigmoid."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(1, 6, batch_first=True)
        self.fc = nn.Linear(6, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(torch.tanh(self.gru(x)[0])))


ARCHITECTURES = {"forecaster": Forecaster, "stacked": Stacked, "bidirectional": Bidirectional,
                 "streaming": Streaming, "no_bias": NoBias, "one_feature": OneFeature}
EXPORTERS = ["legacy", "dynamo"]


def example_inputs(name, model, batch, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    time_major = name == "no_bias"
    x = torch.randn((steps, batch, model.gru.input_size) if time_major else (batch, steps, model.gru.input_size),
                    generator=generator)
    if name == "streaming":
        return x, torch.randn((3, batch, 8), generator=generator)
    return (x,)


def export(name, exporter, folder):
    torch.manual_seed(0)
    model = ARCHITECTURES[name]().eval()
    args = example_inputs(name, model, *EXPORT_SIZE)
    names = ["x", "h0"][:len(args)]
    batch_axis, time_axis = (1, 0) if name == "no_bias" else (0, 1)
    path = str(folder / f"{name}_{exporter}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            axes = {"x": {batch_axis: "batch", time_axis: "time"}, "h0": {1: "batch"}}
            torch.onnx.export(model, args, path, input_names=names, dynamo=False,
                              dynamic_axes={k: axes[k] for k in names})
        else:
            batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
            shapes = {"x": {batch_axis: batch, time_axis: time}, "h0": {1: batch}}
            torch.onnx.export(model, args, path, input_names=names, dynamo=True,
                              dynamic_shapes={k: shapes[k] for k in names}, verbose=False)
    return model, path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_onnx")
    return {(name, exporter): export(name, exporter, folder) for name in ARCHITECTURES for exporter in EXPORTERS}


def batch_first(name, x):
    return x.numpy().transpose(1, 0, 2) if name == "no_bias" else x.numpy()


def onnxruntime_size(path):
    """RUN_SIZE, with the export's length when the file fixes its time axis."""
    dims = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    return RUN_SIZE if not any(dims[:2]) else (RUN_SIZE[0], EXPORT_SIZE[1])


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if n != "streaming"])
def test_exported_model_matches_torch_and_onnxruntime(exported, name, exporter):
    module, path = exported[name, exporter]
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a correct export loads without warnings
        model = load_onnx(path)
    (x,) = example_inputs(name, module, *RUN_SIZE, seed=1)
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(model.run(batch_first(name, x)), expected, rtol=0, atol=ATOL)
    (x,) = example_inputs(name, module, *onnxruntime_size(path), seed=1)
    np.testing.assert_allclose(model.run(batch_first(name, x)), onnx_outputs(path, batch_first(name, x)),
                               rtol=0, atol=ATOL)


@pytest.mark.slow
def test_layers_read_from_the_exports(exported):
    for exporter in EXPORTERS:
        kinds = {name: [type(layer) for layer in load_onnx(exported[name, exporter][1]).layers]
                 for name in ARCHITECTURES}
        assert kinds["forecaster"] == [GRU, LastStep, Dense]
        assert kinds["stacked"] == [GRU, GRU, Dense]
        assert kinds["streaming"] == [GRU, GRU, GRU]
        assert kinds["no_bias"] == [GRU, LastStep, Dense]
        assert kinds["one_feature"] == [GRU, Activation, Dense, Activation]
        bidirectional = load_onnx(exported["bidirectional", exporter][1]).layers
        assert [layer.return_sequences for layer in bidirectional[:2]] == [True, False]
        assert all(layer.linear_before_reset for layer in bidirectional[:2])


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_streaming_export_maps_state_input_and_output(exported, exporter):
    module, path = exported["streaming", exporter]
    model = load_onnx(path)
    x, h0 = example_inputs("streaming", module, *RUN_SIZE, seed=2)
    with torch.no_grad():
        expected, expected_h = (t.numpy() for t in module(x, h0))
    # h0 (layers, B, H) → one (1, B, H) state per GRU layer; h_n is their concatenation
    out, states = model.run(x.numpy(), initial_state=list(h0.numpy()[:, None]), return_state=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.concatenate(states), expected_h, rtol=0, atol=ATOL)
    x, h0 = example_inputs("streaming", module, *onnxruntime_size(path), seed=2)
    out, states = model.run(x.numpy(), initial_state=list(h0.numpy()[:, None]), return_state=True)
    ort_out, ort_states = onnx_outputs(path, x.numpy(), initial_state=list(h0.numpy()[:, None]),
                                       return_state=True)
    np.testing.assert_allclose(out, ort_out, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.concatenate(states), np.concatenate(ort_states), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_framework_outputs_is_onnxruntime_reshaped(exported):
    module, path = exported["no_bias", "legacy"]
    (x,) = example_inputs("no_bias", module, *RUN_SIZE, seed=3)
    (raw,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_array_equal(onnx_outputs(path, batch_first("no_bias", x)), raw)


def test_static_dynamo_export(tmp_path):
    """Without dynamic shapes the dynamo exporter hard-codes the sizes (Reshape to [T, B, H])."""
    torch.manual_seed(0)
    module = Forecaster().eval()
    x = torch.randn(2, 5, 3)
    path = str(tmp_path / "static.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), path, input_names=["x"], dynamo=True, verbose=False)
    model = load_onnx(path)
    with torch.no_grad():
        np.testing.assert_allclose(model.run(x.numpy()), module(x).numpy(), rtol=0, atol=ATOL)
        other = torch.randn(4, 9, 3)     # grurt runs any size, as the torch module does
        np.testing.assert_allclose(model.run(other.numpy()), module(other).numpy(), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_dynamo_export_without_linear_before_reset_warns(exported, tmp_path):
    """onnxscript < 0.7.1 wrote the dynamo export's GRU without linear_before_reset=1."""
    module, path = exported["forecaster", "dynamo"]
    broken = onnx.load(path)
    for node in broken.graph.node:
        if node.op_type == "GRU":
            kept = [a for a in node.attribute if a.name != "linear_before_reset"]
            del node.attribute[:]
            node.attribute.extend(kept)
    broken_path = str(tmp_path / "broken.onnx")
    onnx.save(broken, broken_path)
    expected_warning = r"linear_before_reset=0 in node .*GRU.*onnxscript older than 0.7.1.*onnxscript>=0.7.1"
    with pytest.warns(UserWarning, match=expected_warning):
        model = load_onnx(broken_path)
    (x,) = example_inputs("forecaster", module, *RUN_SIZE)
    with torch.no_grad():
        expected = module(x).numpy()
    # the file is wrong (it is not the torch model) and grurt reads it as written, like onnxruntime
    assert np.abs(model.run(x.numpy()) - expected).max() > 1e-3
    # only the first dynamo export of a process keeps time dynamic (torch 2.13): later ones (after
    # test_conv's, say) fix it at the export's length, which onnxruntime then needs
    (x,) = example_inputs("forecaster", module, *onnxruntime_size(path))
    np.testing.assert_allclose(model.run(x.numpy()), onnx_outputs(broken_path, x.numpy()), rtol=0, atol=ATOL)
