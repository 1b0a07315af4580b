#!/usr/bin/env python
"""grurt vs onnxruntime on a Keras functional model beyond grurt's fused layers (issue 21's target).

    python bench/keras_mha.py [--rounds N] [--steps T] [--profile]

The model: Input (T, 40) → Bidirectional(GRU(64)) → MultiHeadAttention(4 heads, key_dim 32) →
GlobalAveragePooling1D → Dense(10), B = 1, T = 100. grurt runs ``grurt.from_keras(model)`` (a
TensorModel: the model lowered onto ONNX ops, the GRU on grurt's kernels). onnxruntime runs the
same model as PyTorch computes it — ``nn.GRU(bidirectional)``, ``nn.MultiheadAttention``, a mean
over time, ``nn.Linear``, the Keras weights copied in — exported by the TorchScript exporter (ONNX
``GRU`` op; attention as MatMul/Softmax), on 1 thread (intra_op = inter_op = 1); grurt's BLAS
on 1 thread too. Outputs are checked first: torch and grurt against Keras ``predict``.

Timing: interleaved rounds (each round gives each contender one ~20 ms burst of calls after an
untimed warm-up call, in shuffled order), per-call medians over rounds; ratio = onnxruntime median
/ grurt median (> 1: grurt faster). ``--profile``: grurt's plan step by step (median µs per step).
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import datetime
import platform
import random
import tempfile
import time

import numpy as np
import torch

from compare_graph import step_times

FEATURES, UNITS, HEADS, KEY_DIM, CLASSES = 40, 64, 4, 32, 10
BURST_SECONDS = 0.02


def keras_model(steps):
    import keras
    from keras import layers

    x = keras.Input((steps, FEATURES), name="features")
    h = layers.Bidirectional(layers.GRU(UNITS, return_sequences=True), name="bigru")(x)
    a = layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, name="mha")(h, h)
    y = layers.Dense(CLASSES, name="label")(layers.GlobalAveragePooling1D(name="pool")(a))
    model = keras.Model(x, y)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign((0.2 * rng.standard_normal(tuple(weight.shape))).astype(np.float32))
    return model


class TorchTwin(torch.nn.Module):
    """The Keras model as PyTorch computes it."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(FEATURES, UNITS, batch_first=True, bidirectional=True)
        self.mha = torch.nn.MultiheadAttention(2 * UNITS, HEADS, batch_first=True)
        self.head = torch.nn.Linear(2 * UNITS, CLASSES)

    def forward(self, x):
        h, _ = self.gru(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.head(a.mean(dim=1))


def torch_twin(model):
    """TorchTwin with the Keras weights: GRU gates z, r, h → r, z, n; kernels transposed; the
    attention's einsum kernels (F, N, K) flattened to in_proj rows n·K + k."""
    twin = TorchTwin().eval()
    weights = {layer.name: layer.get_weights() for layer in model.layers}

    def gates(array):        # z, r, h blocks along axis 0 → r, z, h
        z, r, h = np.split(array, 3, axis=0)
        return np.concatenate([r, z, h], axis=0)

    state = {}
    bigru = weights["bigru"]
    for suffix, (kernel, recurrent, bias) in (("", bigru[:3]), ("_reverse", bigru[3:])):
        state[f"gru.weight_ih_l0{suffix}"] = gates(kernel.T)
        state[f"gru.weight_hh_l0{suffix}"] = gates(recurrent.T)
        state[f"gru.bias_ih_l0{suffix}"] = gates(bias[0])
        state[f"gru.bias_hh_l0{suffix}"] = gates(bias[1])
    qk, qb, kk, kb, vk, vb, ok, ob = weights["mha"]
    state["mha.in_proj_weight"] = np.concatenate([k.reshape(k.shape[0], -1).T for k in (qk, kk, vk)])
    state["mha.in_proj_bias"] = np.concatenate([b.reshape(-1) for b in (qb, kb, vb)])
    state["mha.out_proj.weight"] = ok.reshape(-1, ok.shape[-1]).T
    state["mha.out_proj.bias"] = ob
    state["head.weight"], state["head.bias"] = weights["label"][0].T, weights["label"][1]
    twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()})
    return twin


def onnx_session(twin, x, folder, profile=False):
    import onnxruntime

    path = os.path.join(folder, "keras_mha.onnx")
    torch.backends.mha.set_fastpath_enabled(False)       # the fused native kernel has no ONNX export
    with torch.no_grad():
        torch.onnx.export(twin, (torch.from_numpy(x),), path, input_names=["features"], output_names=["label"],
                          dynamo=False, opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort_profile")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    import onnx
    ops = sorted({node.op_type for node in onnx.load(path).graph.node})
    return session, ops


def burst(fn):
    """Median-friendly per-call time of ``fn``: a warm-up call, then calls for about BURST_SECONDS."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= BURST_SECONDS:
            return elapsed / calls


def ort_profile(twin, x, rounds):
    """Median µs of each onnxruntime node (its own profiler; it adds a little per node)."""
    import json

    with tempfile.TemporaryDirectory() as folder:
        session, _ = onnx_session(twin, x, folder, profile=True)
        for _ in range(rounds):
            session.run(None, {"features": x})
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    times = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times.setdefault((event["args"]["op_name"], event["name"][:-len("_kernel_time")]), []).append(event["dur"])
    print(f"\nonnxruntime's nodes (median µs over {rounds} runs, nodes above 2 µs):")
    for (op, name), values in sorted(times.items(), key=lambda item: -np.median(item[1])):
        if np.median(values) > 2:
            print(f"  {np.median(values):8.1f}  {name}: {op}")
    print(f"  {sum(np.median(v) for v in times.values()):8.1f}  sum of nodes")


def profile(model, x, rounds):
    """Min and median µs of each step of grurt's plan (the op's run on its inputs, as Plan.run calls it, or inside its native run),
    and of the whole ``model.run`` in the same rounds (its excess over the sum: the call's own cost)."""
    arrays = model._inputs(x)
    plan = model.plan(arrays)
    times = {index: [] for index in range(len(plan.steps))}
    whole = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.run(x)
        whole.append(time.perf_counter() - start)
        for index, (_, seconds) in enumerate(step_times(plan, arrays, time.perf_counter)):
            times[index].append(seconds)
    print(f"\ngrurt's plan, {len(plan.steps)} steps (µs per step over {rounds} runs):")
    print(f"  {'min':>8} {'median':>8}")
    for index, (_, _, _, _, _, node) in enumerate(plan.steps):
        print(f"  {1e6 * min(times[index]):8.1f} {1e6 * np.median(times[index]):8.1f}  {node.name}: {node.op}")
    print(f"  {sum(1e6 * min(v) for v in times.values()):8.1f} {sum(1e6 * np.median(v) for v in times.values()):8.1f}"
          "  sum of steps")
    print(f"  {1e6 * min(whole):8.1f} {1e6 * np.median(whole):8.1f}  model.run (inputs checked, plan looked up, the steps)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    import grurt

    torch.set_num_threads(1)
    model = keras_model(args.steps)
    x = np.random.default_rng(1).standard_normal((1, args.steps, FEATURES)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    converted = grurt.from_keras(model)
    twin = torch_twin(model)
    with torch.no_grad():
        torch_out = twin(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory() as folder:
        session, ops = onnx_session(twin, x, folder)
    feed = {"features": x}
    checks = {"grurt vs Keras": np.abs(converted.run(x) - expected).max(),
              "torch vs Keras": np.abs(torch_out - expected).max(),
              "onnxruntime vs Keras": np.abs(session.run(None, feed)[0] - expected).max()}

    contenders = {"grurt (TensorModel)": lambda: converted.run(x),
                  "onnxruntime (1 thread)": lambda: session.run(None, feed)}
    samples = {name: [] for name in contenders}
    names = list(contenders)
    for _ in range(args.rounds):
        random.shuffle(names)
        for name in names:
            time.sleep(0.002)
            samples[name].append(burst(contenders[name]))

    print(f"grurt {grurt.__version__}, onnxruntime {__import__('onnxruntime').__version__}, torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()} ({_cpu()}), {os.cpu_count()} cores; "
          f"{datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"model: Input ({args.steps}, {FEATURES}) → Bidirectional(GRU({UNITS})) → MultiHeadAttention({HEADS} "
          f"heads, key_dim {KEY_DIM}) → GlobalAveragePooling1D → Dense({CLASSES}); B = 1")
    print(f"grurt: {type(converted).__name__}, {len(converted.graph.nodes)} nodes; onnxruntime file ops: "
          f"{', '.join(ops)}")
    for what, error in checks.items():
        print(f"  max abs error {what}: {error:.2e}")
    medians = {name: float(np.median(values)) for name, values in samples.items()}
    baseline = medians["onnxruntime (1 thread)"]
    print(f"\n{'contender':<24} {'median µs':>10} {'p10 µs':>9} {'p90 µs':>9} {'ratio':>7}")
    for name, values in samples.items():
        print(f"{name:<24} {1e6 * medians[name]:10.1f} {1e6 * np.percentile(values, 10):9.1f} "
              f"{1e6 * np.percentile(values, 90):9.1f} {baseline / medians[name]:6.2f}x")
    print(f"(ratio: onnxruntime median / contender median; {args.rounds} interleaved rounds; target >= 1.5x)")
    if args.profile:
        profile(converted, x, 200)
        ort_profile(twin, x, 200)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
