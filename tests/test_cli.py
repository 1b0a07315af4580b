"""The grurt command, run as a subprocess on the shipped example model."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import grurt
from grurt.cli import EXAMPLES

MODEL = os.path.join(EXAMPLES, "forecaster.npz")
WINDOW = os.path.join(EXAMPLES, "forecaster_input.npy")


def grurt_cmd(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "grurt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_demo_prints_the_prediction_of_the_example():
    result = grurt_cmd("demo")
    assert result.returncode == 0, result.stderr
    expected = grurt.load(MODEL).run(np.load(WINDOW))[0]
    assert f"predicted next day: {expected:6.2f} °C" in result.stdout
    window = np.load(WINDOW)
    assert f"{window[-1, 0]:6.2f}" in result.stdout.splitlines()[1]
    assert 0 < expected < 25            # a plausible temperature: the model is trained


def test_info_describes_layers_and_format():
    result = grurt_cmd("info", MODEL)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "grurt 1.0" in out
    assert "parameters: 8005" in out                  # 3*50*(1+50+2) + 50 + 1 + 2*2
    assert "1: GRU(hidden=50, forward, linear_before_reset=1" in out
    assert "output:     (batch, 1)" in out


def test_run_writes_the_model_output(tmp_path):
    x = np.random.default_rng(0).normal(10, 5, size=(3, 100, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = grurt_cmd("run", MODEL, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), grurt.load(MODEL).run(x))


def test_run_with_lengths(tmp_path):
    x = np.random.default_rng(1).normal(10, 5, size=(2, 30, 1)).astype(np.float32)
    lengths = np.array([30, 7])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", lengths)
    result = grurt_cmd("run", MODEL, tmp_path / "x.npy", "--lengths", tmp_path / "l.npy", "-o", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), grurt.load(MODEL).run(x, lengths=lengths))


def test_convert_npz_round_trip_with_check(tmp_path):
    result = grurt_cmd("convert", MODEL, tmp_path / "copy.npz", "--check")
    assert result.returncode == 0, result.stderr
    assert "max abs difference" in result.stdout
    x = np.load(WINDOW)
    assert np.array_equal(grurt.load(tmp_path / "copy.npz").run(x), grurt.load(MODEL).run(x))


@pytest.mark.parametrize("extra", [[], ["--stream"], ["--threads", "2", "--batch", "3"]])
def test_bench_reports_latency_and_throughput(extra):
    result = grurt_cmd("bench", MODEL, "--calls", "50", "--steps", "20", *extra)
    assert result.returncode == 0, result.stderr
    assert "latency µs: median" in result.stdout and "p90" in result.stdout and "p99" in result.stdout
    assert "calls/s" in result.stdout


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_verify_against_torchscript(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.fc = torch.nn.GRU(3, 8, batch_first=True), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.gru(x)[0][:, -1])

    net = Net()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    grurt.save(grurt.from_torch([net.gru, net.fc], last_step=True), tmp_path / "net.npz")
    result = grurt_cmd("verify", tmp_path / "net.npz", "--against", tmp_path / "net.pt")
    assert result.returncode == 0, result.stderr
    error = float(result.stdout.split("output: max abs error vs torch: ")[1].split()[0])
    assert error <= 1e-5


@pytest.mark.parametrize("args, message", [
    (["info", "missing.npz"], "no such model file"),
    (["run", MODEL, "missing.npy"], "input file not found"),
    (["info", "README.md"], "unknown model file type"),
    (["bench", MODEL, "--batch", "0"], "--batch must be at least 1"),
    (["verify", MODEL, "--against", "x.txt"], "cannot check against"),
])
def test_errors_are_one_line_and_nonzero(args, message, tmp_path):
    result = grurt_cmd(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_garbage_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "bad.npy").write_bytes(b"nonsense")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 2), np.float32))
    for args, message in ((["info", tmp_path / "bad.npz"], "not a readable .npz"),
                          (["run", MODEL, tmp_path / "bad.npy"], "not a readable .npy"),
                          (["run", MODEL, tmp_path / "wrong.npy"], "the model expects 1")):
        result = grurt_cmd(*args)
        assert result.returncode == 1
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """A legacy torch.onnx export of GRU(3 → 8) + Linear, returning the head and h_n."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.fc = torch.nn.GRU(3, 8, batch_first=True), torch.nn.Linear(8, 2)

        def forward(self, x):
            out, h_n = self.gru(x)
            return self.fc(out[:, -1]), h_n

    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    with warnings.catch_warnings():          # the legacy exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(Net(), (torch.randn(2, 5, 3),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y", "h_n"],
                          dynamic_axes={"x": {0: "b", 1: "t"}, "y": {0: "b"}, "h_n": {1: "b"}})
    return path


def test_convert_check_and_verify_against_onnxruntime(onnx_file, tmp_path):
    result = grurt_cmd("convert", onnx_file, tmp_path / "net.npz", "--check")
    assert result.returncode == 0, result.stderr
    error = float(result.stdout.split("max abs difference vs onnxruntime: ")[1].split()[0])
    assert error <= 1e-5
    result = grurt_cmd("verify", tmp_path / "net.npz", "--against", onnx_file)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": max abs error vs onnxruntime: ") for line in result.stdout.strip().splitlines())
    assert set(lines) == {"output", "state[0]"}          # one line per graph output
    assert all(float(value) <= 1e-5 for value in lines.values())


def test_verify_fails_loudly_when_models_differ(onnx_file, tmp_path):
    other = grurt.load(onnx_file).spec
    layers = list(other.layers)
    layers[-1] = type(layers[-1])(W=layers[-1].W + 0.1, b=layers[-1].b)      # a wrong head
    grurt.save(grurt.spec.ModelSpec(other.input_size, tuple(layers)), tmp_path / "wrong.npz")
    result = grurt_cmd("verify", tmp_path / "wrong.npz", "--against", onnx_file)
    assert result.returncode == 1
    assert "exceeds the tolerance" in result.stderr


@pytest.mark.slow
def test_convert_check_against_keras(tmp_path):
    pytest.importorskip("keras")
    script = (
        "import os; os.environ.setdefault('KERAS_BACKEND', 'torch'); import keras\n"
        "m = keras.Sequential([keras.Input((6, 2)), keras.layers.GRU(4), keras.layers.Dense(1)])\n"
        f"m.save({str(tmp_path / 'm.keras')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    result = grurt_cmd("convert", tmp_path / "m.keras", tmp_path / "m.npz", "--check")
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("max abs difference vs keras: ")[1].split()[0]) <= 1e-5


@pytest.mark.parametrize("layout", [0, 1])
def test_verify_and_convert_check_use_the_fixed_sizes_of_an_onnx_input(tmp_path, layout):
    """An ONNX file whose input has fixed shape (2, 5, 3) runs at those sizes, not 4 × 16 (≤ 1e-5)."""
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper, save
    rng = np.random.default_rng(3)
    W, R, B = (rng.normal(size=s).astype(np.float32) * 0.5 for s in ((1, 12, 3), (1, 12, 4), (1, 24)))
    shape = [5, 2, 3] if layout == 0 else [2, 5, 3]
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=4, linear_before_reset=1)
    if layout:   # onnxruntime refuses GRU layout=1: transpose around a layout-0 GRU instead
        nodes = [helper.make_node("Transpose", ["X"], ["Xt"], perm=[1, 0, 2]),
                 helper.make_node("GRU", ["Xt", "W", "R", "B"], ["Y", "Y_h"], hidden_size=4, linear_before_reset=1)]
    else:
        nodes = [node]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))])
    path = tmp_path / "fixed.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=9), path)
    result = grurt_cmd("verify", path, "--against", path)
    assert result.returncode == 0, result.stderr
    assert all(float(line.rsplit(": ", 1)[1]) <= 1e-5 for line in result.stdout.strip().splitlines())
    result = grurt_cmd("convert", path, tmp_path / "fixed.npz", "--check")
    assert result.returncode == 0, result.stderr
    assert "vs onnxruntime: " in result.stdout
    assert float(result.stdout.split("vs onnxruntime: ")[1].split()[0]) <= 1e-5
