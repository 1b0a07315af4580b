"""The grurt command, run as a subprocess on the shipped example model."""
import os
import subprocess
import sys

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
    error = float(result.stdout.split("max abs error vs torch: ")[1].split()[0])
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
