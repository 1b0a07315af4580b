"""W10, the DeepFilterNet-style benchmark model (bench/workloads_graph.py: DeepFilterNet3's encoder,
ERB decoder and DF decoder with random weights, one 10 ms hop per call, conv histories and GRU
states carried), through grurt.load of its legacy ONNX export (the export grurt.from_torch makes;
bench/compare_graph.py checks from_torch's model the same way): every output
of every hop within ATOL (tests/tolerances.py) of PyTorch and of onnxruntime on the same file, and
hops of one frame carried from call to call equal to one call on the whole sequence (the histories
are DeepFilterNet's causal time padding)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import grurt
from tolerances import ATOL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import workloads_graph as wg  # noqa: E402

ort = pytest.importorskip("onnxruntime")
HOPS = 4


@pytest.fixture(scope="module")
def w10(tmp_path_factory):
    module = wg.w10_module()
    path = str(tmp_path_factory.mktemp("w10") / "w10.onnx")
    wg.export_w10(module, 1, path)          # the legacy export from_torch makes (it probes free axes besides)
    return module, grurt.load(path), path


def _torch_step(module):
    def run(arrays):
        with torch.no_grad():
            return [t.numpy() for t in module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))]
    return wg.stepper(run)


def _max_error(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - y))) for x, y in zip(a, b))


def test_hops_match_torch_and_onnxruntime(w10):
    module, model, path = w10
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = list(wg.INPUT_NAMES)
    steppers = {"grurt": wg.stepper(lambda arrays: list(model.run(dict(zip(names, arrays))))),
                "onnxruntime": wg.stepper(lambda arrays: session.run(None, dict(zip(names, arrays))))}
    reference = _torch_step(module)
    for erb, spec in wg.hops(1, HOPS):
        expected = reference(erb, spec)
        got = {name: step(erb, spec) for name, step in steppers.items()}
        assert [g.shape for g in got["grurt"]] == [e.shape for e in expected]
        assert _max_error(got["grurt"], expected) <= ATOL
        assert _max_error(got["grurt"], got["onnxruntime"]) <= ATOL
        assert _max_error(got["onnxruntime"], expected) <= ATOL


def test_hops_equal_one_call_on_the_sequence(w10):
    """Four hops of one frame through grurt, states carried == PyTorch on the four frames at once."""
    module, model, _ = w10
    erb, spec = wg.w10_features(3, HOPS)
    names = list(wg.INPUT_NAMES)
    step = wg.stepper(lambda arrays: list(model.run(dict(zip(names, arrays)))))
    hops = [step(erb[:, :, k:k + 1], spec[:, :, k:k + 1]) for k in range(HOPS)]
    with torch.no_grad():
        whole = [t.numpy() for t in module(*(torch.from_numpy(a) for a in [erb, spec] + wg.w10_zero_states()))]
    # per-frame outputs: the mask (B, 1, S, 32) on axis 2, coefs/alpha/lsnr (B, S, ...) on axis 1
    for index, axis in enumerate((2, 1, 1, 1)):
        assert _max_error([np.concatenate([h[index] for h in hops], axis)], [whole[index]]) <= ATOL
    assert _max_error(hops[-1][4:], whole[4:]) <= ATOL        # the states after the last frame


def test_threads_give_the_same_bits(w10):
    """run(threads=2): each GRU layer on up to two threads when that pays, the same bits as one thread, hop after
    hop; a bad ``threads`` is an InputError."""
    _, model, _ = w10
    names = list(wg.INPUT_NAMES)
    one = wg.stepper(lambda arrays: list(model.run(dict(zip(names, arrays)))))
    two = wg.stepper(lambda arrays: list(model.run(dict(zip(names, arrays)), threads=2)))
    for erb, spec in wg.hops(1, HOPS):
        assert all(np.array_equal(a, b) for a, b in zip(one(erb, spec), two(erb, spec)))
    inputs = dict(zip(names, [erb, spec] + wg.w10_zero_states()))
    for bad in (0, 65, 1.0, "2"):
        with pytest.raises(grurt.errors.InputError, match="threads"):
            model.run(inputs, threads=bad)
