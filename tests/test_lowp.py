"""Reduced-precision GRU weights (bf16, int8): budgets against PyTorch on the benchmark
workloads' shapes, exactness where it is claimed (float32 default, batches, streams, threads,
files). The kernels against the numpy reference of the rounded weights: tests/test_lowp_kernels.py."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import grurt
from grurt import reference
from grurt.cli import main as cli_main
from grurt.errors import InputError, ModelFormatError, UnsupportedModelError
from grurt.formats import read_header
from grurt.precision import dequantize_int8, from_bf16, quantize_int8, reduced_spec, to_bf16

from tolerances import ATOL, LOWP_BUDGETS

MODES = ("bf16", "int8")


def _gru(seed, input_size, hidden, **kwargs):
    torch.manual_seed(seed)
    return torch.nn.GRU(input_size, hidden, batch_first=True, **kwargs).eval()


def _input(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _workload(name):
    """The benchmark workloads' networks (bench/workloads.py): torch output, grurt model, input."""
    if name == "W1":
        gru, head = _gru(1, 1, 50), torch.nn.Linear(50, 1)
        x = _input(1, (1, 100, 1))
        with torch.no_grad():
            expected = head(gru(torch.from_numpy(x))[0][:, -1]).numpy()
        return grurt.from_torch([gru, head], last_step=True), x, expected
    if name == "W2":
        gru, head = _gru(2, 40, 128, num_layers=2), torch.nn.Linear(128, 12)
        x = _input(2, (1, 100, 40))
        with torch.no_grad():
            expected = head(gru(torch.from_numpy(x))[0][:, -1]).numpy()
        return grurt.from_torch([gru, head], last_step=True), x, expected
    shapes = {"W3": (64, 256, {}, (1, 9, 64)), "W4": (64, 256, {"bidirectional": True}, (64, 200, 64)),
              "W5": (512, 1024, {}, (1, 50, 512)), "denoiser": (257, 400, {"num_layers": 2}, (1, 100, 257))}
    input_size, hidden, kwargs, shape = shapes[name]
    gru = _gru(3, input_size, hidden, **kwargs)
    x = _input(3, shape)
    with torch.no_grad():
        expected = gru(torch.from_numpy(x))[0].numpy()
    return grurt.from_torch([gru]), x, expected


@pytest.mark.parametrize("name", ["W1", "W2", "W3", "W4", "W5", "denoiser"])
def test_budget_against_pytorch(name):
    model, x, expected = _workload(name)
    assert model.weights == "float32"
    assert np.abs(model.run(x) - expected).max() <= ATOL     # float32 stays the default and exact
    for mode in MODES:
        reduced = model.with_weights(mode)
        error = np.abs(reduced.run(x) - expected).max()
        assert error <= LOWP_BUDGETS[mode], (mode, error)
        assert model.run(x) is not None and np.array_equal(model.run(x), grurt.Model(model.spec).run(x))
    if name == "W3":   # streaming: stepping frame by frame gives the sequence's outputs (up to the
        # order of the sums: a sequence alternates it from step to step, see GRURT_K)
        for mode in MODES:
            stream = model.with_weights(mode).stream()
            stepped = np.stack([stream.step(x[0, t]) for t in range(x.shape[1])])
            assert np.abs(stepped - model.with_weights(mode).run(x[0])).max() <= ATOL


@pytest.mark.parametrize("mode", MODES)
def test_units_split_over_threads_is_exact(mode, lowp_path):
    gru = _gru(5, 48, 1024)
    model = grurt.from_torch([gru], weights=mode)
    x = _input(5, (1, 6, 48))
    assert np.array_equal(model.run(x, threads=2), model.run(x))


def test_quantizers():
    a = np.random.default_rng(0).standard_normal((7, 33)).astype(np.float32)
    bits = to_bf16(a)
    assert bits.dtype == np.uint16
    assert np.abs(from_bf16(bits) - a).max() <= np.abs(a).max() * 2.0 ** -8
    assert np.array_equal(to_bf16(from_bf16(bits)), bits)               # bf16 values round to themselves
    assert to_bf16(np.float32(1 + 2 ** -8)) == to_bf16(np.float32(1.0))   # a tie rounds to even
    q, scale = quantize_int8(a)
    assert q.dtype == np.int8 and scale.shape == (7,) and np.abs(q).max(axis=1).tolist() == [127] * 7
    assert np.all(np.abs(dequantize_int8(q, scale) - a) <= scale[:, None] / 2 * 1.0001)
    q0, s0 = quantize_int8(np.zeros((2, 5), np.float32))
    assert not q0.any() and not s0.any()


def test_api():
    rng = np.random.default_rng(12)
    model = grurt.from_torch([_gru(6, 4, 8)])
    assert model.with_weights("float32") is model
    int8 = model.with_weights("int8")
    assert int8.weights == "int8" and "weights=int8" in repr(int8) and "weights" not in repr(model)
    assert int8.with_weights("float32").weights == "float32"
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    assert np.array_equal(pickle.loads(pickle.dumps(int8)).run(x), int8.run(x))
    with pytest.raises(InputError, match="weights must be one of"):
        model.with_weights("fp8")
    with pytest.raises(InputError):
        grurt.from_torch([_gru(6, 4, 8)], weights="int4")


@pytest.mark.parametrize("mode", MODES)
def test_file_round_trip(tmp_path, mode):
    model = grurt.from_torch([_gru(7, 6, 40, num_layers=2), torch.nn.Linear(40, 3)], weights=mode)
    rng = np.random.default_rng(13)
    path = tmp_path / "m.npz"
    grurt.save(model, path)
    header = read_header(path)
    assert header["format_version"] == "1.2"
    assert [layer.get("weights") for layer in header["layers"]] == [mode, mode, None]
    with np.load(path) as arrays:
        assert arrays["0.R"].dtype == (np.uint16 if mode == "bf16" else np.int8)
        assert arrays["2.W"].dtype == np.float32
        assert ("0.R_scale" in arrays) == (mode == "int8")
    loaded = grurt.load(path)
    x = rng.standard_normal((3, 9, 6)).astype(np.float32)
    assert loaded.weights == mode and np.array_equal(loaded.run(x), model.run(x))
    # again, bit for bit: the stored arrays are kept
    grurt.save(loaded, tmp_path / "again.npz")
    assert np.array_equal(grurt.load(tmp_path / "again.npz").run(x), model.run(x))
    # as float32: the float32 model of the stored values
    as_float = grurt.load(path, weights="float32")
    assert as_float.weights == "float32"
    assert np.abs(as_float.run(x) - reference.run(reduced_spec(model.spec, mode), x)).max() <= ATOL
    grurt.save(grurt.from_torch([_gru(7, 6, 40)]), tmp_path / "plain.npz")
    assert read_header(tmp_path / "plain.npz")["format_version"] == "1.0"


def _edit(path, out, header_edit=None, arrays_edit=None):
    with np.load(path) as archive:
        arrays = dict(archive)
    header = json.loads(str(arrays["header"]))
    if header_edit:
        header_edit(header)
    if arrays_edit:
        arrays_edit(arrays)
    arrays["header"] = np.array(json.dumps(header))
    np.savez(out, **arrays)


def test_file_refusals(tmp_path):
    path = tmp_path / "m.npz"
    grurt.save(grurt.from_torch([_gru(8, 3, 16)], weights="int8"), path)
    bad = tmp_path / "bad.npz"
    _edit(path, bad, lambda h: h["layers"][0].update(weights="fp8"))
    with pytest.raises(UnsupportedModelError, match="weights 'fp8' are not supported.*upgrade"):
        grurt.load(bad)
    _edit(path, bad, arrays_edit=lambda a: a.update({"0.R": a["0.R"].astype(np.float32)}))
    with pytest.raises(ModelFormatError, match="expected int8"):
        grurt.load(bad)
    _edit(path, bad, arrays_edit=lambda a: a.pop("0.W_scale"))
    with pytest.raises(ModelFormatError, match="W_scale' is missing"):
        grurt.load(bad)
    _edit(path, bad, arrays_edit=lambda a: a.update({"0.W_scale": np.full_like(a["0.W_scale"], np.inf)}))
    with pytest.raises(ModelFormatError, match="NaN or infinity"):
        grurt.load(bad)
    _edit(path, bad, lambda h: h["layers"][0].pop("weights"))   # int8 arrays in a float32 layer
    with pytest.raises(ModelFormatError):
        grurt.load(bad)


def test_cli(tmp_path, capsys):
    source = tmp_path / "m.npz"
    grurt.save(grurt.from_torch([_gru(9, 5, 24)]), source)
    out = tmp_path / "m8.npz"
    assert cli_main(["convert", str(source), str(out), "--weights", "int8"]) == 0
    assert cli_main(["info", str(out)]) == 0
    assert "weights:    int8" in capsys.readouterr().out
    assert cli_main(["info", str(source)]) == 0
    assert "weights:    float32" in capsys.readouterr().out


def test_verify_cli(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    gru = _gru(10, 5, 24)
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(gru, (torch.zeros(1, 3, 5),), str(onnx_path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "batch", 1: "time"}})
    model = tmp_path / "m.npz"
    assert cli_main(["convert", str(onnx_path), str(model)]) == 0
    capsys.readouterr()
    assert cli_main(["verify", str(model), "--against", str(onnx_path), "--weights", "int8",
                     "--tolerance", "2e-2"]) == 0
    printed = capsys.readouterr().out
    assert "int8 vs float32 grurt: max abs error" in printed and "max relative error" in printed
    assert cli_main(["verify", str(model), "--against", str(onnx_path), "--weights", "int8",
                     "--tolerance", "1e-9"]) == 1
