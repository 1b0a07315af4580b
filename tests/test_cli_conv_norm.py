"""grurt verify / convert --check on models with the ids, convolution and flattening layers:
an Embedding → GRU ONNX export (integer ids input), a CRNN whose strided convolution changes
the output length, and a Keras CRNN that flattens the frames its convolution leaves (≤ 1e-5)."""
import subprocess
import sys
import warnings

import pytest

from test_cli import grurt_cmd

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
nn = torch.nn


def _export(module, example, path, axes):
    with warnings.catch_warnings():          # the legacy exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": axes, "y": {0: "b"}})


def _max_error(stdout, marker):
    return float(stdout.split(marker)[1].split()[0])


class IdsNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.gru, self.fc = nn.Embedding(20, 4), nn.GRU(4, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(self.gru(self.emb(ids))[0][:, -1])


class StridedCRNN(nn.Module):
    """Conv1d stride 2 (T → (T − 3) // 2 + 1 frames) + ReLU → GRU → Linear on every frame."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.gru, self.fc = nn.Conv1d(3, 5, 3, stride=2), nn.GRU(5, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.fc(self.gru(h)[0])


@pytest.mark.slow
def test_embedding_gru_onnx_convert_check_and_verify(tmp_path):
    path = tmp_path / "ids.onnx"
    _export(IdsNet(), torch.randint(0, 20, (2, 7)), path, {0: "b", 1: "t"})
    result = grurt_cmd("convert", path, tmp_path / "ids.npz", "--check")
    assert result.returncode == 0, result.stderr
    assert _max_error(result.stdout, "max abs difference vs onnxruntime: ") <= 1e-5
    result = grurt_cmd("verify", tmp_path / "ids.npz", "--against", path)
    assert result.returncode == 0, result.stderr
    assert "output: max abs error vs onnxruntime" in result.stdout
    assert all(float(line.rsplit(": ", 1)[1]) <= 1e-5 for line in result.stdout.strip().splitlines())


def test_strided_crnn_onnx_convert_check_and_verify(tmp_path):
    path = tmp_path / "crnn.onnx"
    _export(StridedCRNN(), torch.randn(2, 11, 3), path, {0: "b", 1: "t"})
    result = grurt_cmd("convert", path, tmp_path / "crnn.npz", "--check")
    assert result.returncode == 0, result.stderr
    assert _max_error(result.stdout, "max abs difference vs onnxruntime: ") <= 1e-5
    result = grurt_cmd("verify", tmp_path / "crnn.npz", "--against", path, "--steps", "12")
    assert result.returncode == 0, result.stderr
    assert all(float(line.rsplit(": ", 1)[1]) <= 1e-5 for line in result.stdout.strip().splitlines())


@pytest.mark.slow
def test_keras_crnn_with_flatten_convert_check(tmp_path):
    pytest.importorskip("keras")
    script = (
        "import os; os.environ.setdefault('KERAS_BACKEND', 'torch'); import keras\n"
        "L = keras.layers\n"
        "m = keras.Sequential([keras.Input((10, 3)), L.Conv1D(4, 3, strides=2, activation='relu'),\n"
        "                      L.GRU(5, return_sequences=True), L.Flatten(), L.Dense(2)])\n"
        f"m.save({str(tmp_path / 'm.keras')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    result = grurt_cmd("convert", tmp_path / "m.keras", tmp_path / "m.npz", "--check")
    assert result.returncode == 0, result.stderr
    assert _max_error(result.stdout, "max abs difference vs keras: ") <= 1e-5
    result = grurt_cmd("info", tmp_path / "m.npz")
    assert "time steps: 4 at its Flatten (e.g. 9 input frames" in result.stdout
