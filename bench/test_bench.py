"""pytest-benchmark cases for grurt: workloads W1-W8 (W8: a residual graph) and the Python overhead of ``run()``.

For regression tracking (results land in .benchmarks/, which git ignores):

    pytest bench/ --benchmark-autosave            # record a baseline
    pytest bench/ --benchmark-compare             # compare with the latest saved run
    pytest bench/ --benchmark-compare --benchmark-compare-fail=median:10%
    pytest bench/test_bench.py --benchmark-disable   # smoke run: every case once, outputs checked

Threads: everything runs single-threaded so that numbers are comparable between runs and
machines. ``OPENBLAS_NUM_THREADS=1`` (grurt calls scipy's OpenBLAS) and ``OMP_NUM_THREADS=1``
/ ``MKL_NUM_THREADS=1`` (torch, used to build the workloads) are set below before numpy,
scipy or torch are imported; threadpoolctl, when installed, enforces the BLAS limit in case
they were imported earlier. The ``threads=2`` case runs only if ``Model.run`` has that option.

These are not part of the test suite (``testpaths`` is tests/); each case also checks its
output against PyTorch so that a fast wrong kernel does not pass as an improvement.
"""
import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import inspect

import numpy as np
import pytest

import grurt
import workloads

try:
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
except ImportError:
    pass

TOLERANCE = 1e-4
RUN_WORKLOADS = ["W1", "W2", "W4", "W5", "W6", "W8", "overhead"]


def assert_matches_torch(w, out):
    expected = workloads.reference(w)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", RUN_WORKLOADS)
def test_run(benchmark, name):
    w = workloads.get(name)
    benchmark.group = str(w)
    benchmark.extra_info["input_shape"] = list(w.x.shape)
    out = benchmark(w.model.run, w.x)
    assert_matches_torch(w, out)


#: max abs error against PyTorch float32 of each reduced weight mode (README, Accuracy)
WEIGHT_BUDGETS = {"bf16": 5e-3, "int8": 2e-2}


@pytest.mark.parametrize("mode", sorted(WEIGHT_BUDGETS))
@pytest.mark.parametrize("name", ["W1", "W2", "W5"])
def test_run_reduced(benchmark, name, mode):
    """The workloads with bf16 or int8 GRU weights, held to the mode's budget."""
    w = workloads.get(name)
    if not hasattr(w.model, "with_weights"):
        pytest.skip("n/a: grurt.Model has no with_weights()")
    model = w.model.with_weights(mode)
    benchmark.group = f"{w} {mode}"
    out = benchmark(model.run, w.x)
    expected = workloads.reference(w)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=WEIGHT_BUDGETS[mode])


@pytest.mark.parametrize("name", ["W3", "W6s"])
def test_stream_step(benchmark, name):
    w = workloads.get(name)
    if not workloads.has_stream(w.model):
        pytest.skip("n/a (no stream API): grurt.Model has no stream()")
    benchmark.group = str(w)
    # The state check first, on a fresh stream: step() must carry the state between frames.
    check = workloads.stream_stepper(w.model)
    got = np.stack([check(np.ascontiguousarray(w.check_frames[:, t])).copy()
                    for t in range(w.check_frames.shape[1])], axis=1)
    np.testing.assert_allclose(got, workloads.reference(w), rtol=0, atol=TOLERANCE)
    step = workloads.stream_stepper(w.model)
    out = benchmark(step, w.x)
    assert out.shape == (1, w.model.output_size) and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["W4", "W5"])
def test_run_two_threads(benchmark, name):
    w = workloads.get(name)
    if "threads" not in inspect.signature(type(w.model).run).parameters:
        pytest.skip("Model.run has no threads option")
    benchmark.group = str(w)
    out = benchmark(w.model.run, w.x, threads=2)
    assert_matches_torch(w, out)


def _check_stepper(w, step):
    got = np.stack([np.array(step(np.ascontiguousarray(w.check_frames[:, t])))
                    for t in range(w.check_frames.shape[1])], axis=1)
    np.testing.assert_allclose(got, workloads.reference(w), rtol=0, atol=TOLERANCE)


def test_stream_step_state_fed(benchmark):
    """W3 with the state held outside and set before every step (``stream.state = [h]``)."""
    w = workloads.get("W3")
    benchmark.group = str(w)
    _check_stepper(w, workloads.state_fed_stepper(w.model))
    out = benchmark(workloads.state_fed_stepper(w.model), w.x)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("how", ["pool", "streams"])
def test_pool_step(benchmark, how):
    """W7: 64 of 1,024 open sessions stepped together (pool), or one Stream.step per session."""
    w = workloads.get("W7")
    if not workloads.has_pool(w.model):
        pytest.skip("n/a (no pool API): grurt.Model has no stream_pool()")
    benchmark.group = str(w)
    make = workloads.pool_stepper if how == "pool" else workloads.streams_stepper
    _check_stepper(w, make(w))
    out = benchmark(make(w), w.x)
    assert out.shape == (64, w.model.output_size) and np.isfinite(out).all()


@pytest.mark.parametrize("H", [8, 16, 32])
def test_small_stream_block(benchmark, H):
    """GRU(H) -> Dense(1), I = 1, ``stream.run`` on blocks of 256 frames (bench/streaming.py's table)."""
    import torch
    torch.manual_seed(1000 + H)
    gru, head = torch.nn.GRU(1, H, batch_first=True), torch.nn.Linear(H, 1)
    model = grurt.from_torch([gru, head])
    frames = np.random.default_rng(H).standard_normal((256, 1), dtype=np.float32)
    with torch.no_grad():
        expected = head(gru(torch.from_numpy(frames)[None])[0])[0].numpy()
    np.testing.assert_allclose(model.stream().run(frames), expected, rtol=0, atol=TOLERANCE)
    benchmark.group = f"small stream GRU({H}), blocks of 256"
    stream, out = model.stream(), np.empty((256, 1), np.float32)
    benchmark(stream.run, frames, out=out)


@pytest.mark.parametrize("name, batch", [("W1", 10_000), ("W2", 2_000)])
def test_run_large_batch(benchmark, name, batch):
    """W1 and W2 shapes on a large batch (run in slices of 64 sequences): per-sequence cost
    should stay within 10% of B = 64 (bench/batch_scaling.py)."""
    w = workloads.get(name)
    x = np.ascontiguousarray(np.repeat(w.x, batch, axis=0))
    benchmark.group = f"{w} B={batch}"
    out = benchmark(w.model.run, x)
    np.testing.assert_allclose(out, np.repeat(workloads.reference(w), batch, axis=0), rtol=0, atol=TOLERANCE)


# ---- general graphs (workloads_graph.py): W9, W10 (S = 1), W10s20 ----

import workloads_graph  # noqa: E402

GRAPH_TOLERANCE = 1e-5


@pytest.mark.parametrize("name", workloads_graph.NAMES)
def test_run_graph(benchmark, name):
    """W9 on its input; W10/W10s20 one hop with the states carried, checked against PyTorch over 4 hops first."""
    w = workloads_graph.get(name)
    benchmark.group = str(w)
    names = list(w.model.input_names)
    if name == "W9":
        out = benchmark(w.model.run, w.example[0])
        np.testing.assert_allclose(out, workloads_graph.torch_outputs(w, w.example)[0], rtol=0, atol=GRAPH_TOLERANCE)
        return
    step = workloads_graph.stepper(lambda arrays: list(w.model.run(dict(zip(names, arrays)))))
    reference = workloads_graph.stepper(lambda arrays: workloads_graph.torch_outputs(w, arrays))
    for hop in workloads_graph.hops(w.frames, 4):
        for got, expected in zip(step(*hop), reference(*hop)):
            np.testing.assert_allclose(got, expected, rtol=0, atol=GRAPH_TOLERANCE)
    benchmark(step, *workloads_graph.hops(w.frames, 1, seed=11)[0])


# ---- grurt.InferenceSession: onnxruntime's calling convention over W1 (issue 22: <= 1 us above Model.run) ----

@pytest.mark.parametrize("entry", ["session.run", "model.run"])
def test_session_overhead_w1(benchmark, tmp_path, entry):
    import torch

    w = workloads.get("W1")
    path = str(tmp_path / "w1.onnx")
    torch.onnx.export(w.torch_module, (torch.from_numpy(w.x),), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}}, dynamo=False)
    session = grurt.InferenceSession(path)
    assert session.model is not None and session._fused        # W1's file runs on the fused Model
    benchmark.group = "W1: InferenceSession.run vs Model.run"
    feed = {"x": w.x}
    call = (lambda: session.run(None, feed)[0]) if entry == "session.run" else (lambda: session.model.run(w.x))
    out = benchmark(call)
    np.testing.assert_allclose(out, workloads.reference(w), rtol=0, atol=TOLERANCE)
