#!/usr/bin/env python
"""grurt side by side with onnxruntime, PyTorch eager and OpenVINO, in one process.

    python bench/compare.py [--quick] [--workloads W1,W2] [--weights bf16,int8] [--plot out.png]

For each workload of ``workloads.py`` the PyTorch module is exported to ONNX (legacy
TorchScript exporter, dynamic batch/time axes) and run by every contender:

    grurt                          Model.run (W3: one Model.stream step; W7: one StreamPool
                                   step of 64 of 1,024 sessions), BLAS on 1 thread
    grurt (state fed each step)    W3 with the state held outside: ``stream.state = [h]``
                                   before each step, as onnxruntime is fed ``h0``
    grurt (64 x Stream.step)       W7 without a pool: one Stream per session, 64 calls
    grurt (2 threads)              W1-W5: run(threads=2) (W3: a stream made with threads=2), if
                                   Model.run has a ``threads`` option: each layer runs on grurt's
                                   worker pool when that measures faster, on one thread otherwise
    grurt bf16 / grurt int8        with ``--weights``: the same model with reduced-precision GRU
                                   weights (``Model.with_weights``), checked with the mode's budget;
                                   W7 always has grurt int8 (the pool on int8 weights)
    onnxruntime (1 thread)         intra_op_num_threads = inter_op_num_threads = 1: the baseline
    onnxruntime (default threads)
    torch eager (1 thread)         torch.set_num_threads(1), autograd off (W3: nn.GRUCell)

W8 (a residual graph: the module's own forward, ``GRU2(a) + a``) is exported like W1-W6; grurt
runs it as a graph (its chains as Models, the add between them in numpy); the issue's target
is a ratio >= 1.3 against onnxruntime on 1 thread.

W6s (a CRNN's streaming step) is exported as a step graph: the last 5 frames (B, 5, 40) and
the GRU state in, the head's output and the new state out; onnxruntime, OpenVINO and torch
keep those frames (shifted in place) and the state between calls, grurt's stream keeps the
conv history and the GRU state inside.
    openvino f32 (1 thread)        if installed; INFERENCE_PRECISION_HINT=f32 because it
                                   defaults to bf16 on CPUs with AVX-512 BF16 / AMX

Contenders are timed interleaved: each round gives every contender one turn, in a shuffled
order, so machine noise hits all of them alike. A turn is one timed call, or for short
calls an untimed warm-up call (the previous contender evicted the caches) and a ~2 ms burst
of timed calls: we measure a model called in a loop, as pytest-benchmark does. A 2 ms pause
before each turn lets the previous contender's worker threads go idle. Every output is
first checked against PyTorch (max abs error <= 1e-4, else the row says WRONG). The
ratio column is onnxruntime-1-thread median / contender median: > 1 means faster than ORT.
W7's other contenders keep the 1,024 sessions' states in a numpy array (1024, 256), gather
the 64 stepped sessions' rows into ``h0`` (1, 64, 256), run one batched step and scatter the
new states back (torch: ``nn.GRUCell`` on the gathered rows). Rounds adapt to a time budget per workload: the full run takes < 3 minutes,
``--quick`` < 40 s. With few calls (W4) p99 is close to the maximum.
The header gives the machine's own scaling (bench/scaling.py: a fixed one-thread loop alone
and twice at once; 2.00x = two free cores), measured before and after the run: thread
figures mean something only beside it.
"""
import os

# grurt calls scipy's OpenBLAS: one thread, set before numpy/scipy are loaded.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import datetime
import gc
import inspect
import platform
import random
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

import grurt
import scaling
import workloads

TOLERANCE = 1e-4
#: max abs error against PyTorch float32 that each reduced weight mode may reach (README, Accuracy)
WEIGHT_BUDGETS = {"bf16": 5e-3, "int8": 2e-2}
BURST_SECONDS = 0.002          # target length of one contender's turn
WARM_UP_BELOW_SECONDS = 0.005  # calls shorter than this get an untimed warm-up call per turn
SETTLE_SECONDS = 0.002         # pause before each turn, see interleaved()
BASELINE = "onnxruntime (1 thread)"


# ---- contenders: each factory returns call(x) -> output; stream steppers carry their state ----

def export_onnx(w: workloads.Workload, directory: str) -> str:
    """Export ``w`` with the legacy exporter: input "x", output "y" (W3: a one-step GRU x, h0 -> h_n)."""
    path = os.path.join(directory, f"{w.name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        if w.step_module is not None:       # W6s: the last `span` frames and the GRU state in, output and state out
            frames = torch.from_numpy(np.repeat(w.x[:, None], w.span, axis=1))
            h0 = torch.zeros(1, w.x.shape[0], w.gru.hidden_size)
            torch.onnx.export(w.step_module, (frames, h0), path, dynamo=False, opset_version=17,
                              input_names=["x", "h0"], output_names=["y", "h_n"],
                              dynamic_axes={"x": {0: "batch"}, "h0": {1: "batch"}, "y": {0: "batch"},
                                            "h_n": {1: "batch"}})
        elif w.stream:
            gru = w.gru
            frame = torch.from_numpy(w.x[:, None])
            h0 = torch.zeros(gru.num_layers, w.x.shape[0], gru.hidden_size)
            torch.onnx.export(_OneStep(gru), (frame, h0), path, dynamo=False, opset_version=17,
                              input_names=["x", "h0"], output_names=["h_n"],
                              dynamic_axes={"x": {0: "batch"}, "h0": {1: "batch"}, "h_n": {1: "batch"}})
        else:
            sequence_out = w.torch_module(torch.from_numpy(w.x)).ndim == 3
            torch.onnx.export(w.torch_module, (torch.from_numpy(w.x),), path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch", 1: "time"},
                                            "y": {0: "batch", 1: "time"} if sequence_out else {0: "batch"}})
    return path


class _OneStep(torch.nn.Module):
    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x, h0):
        return self.gru(x, h0)[1]


def grurt_factory(w, threads=None, variant=None, weights=None):
    def model():
        return w.model.with_weights(weights) if weights else w.model
    if variant == "state fed":
        return lambda: workloads.state_fed_stepper(w.model, batch=w.x.shape[0])
    if variant == "streams":
        return lambda: workloads.streams_stepper(w)
    if w.pool is not None:
        return lambda: workloads.pool_stepper(w, model())
    if w.stream:
        return lambda: workloads.stream_stepper(model(), batch=w.x.shape[0], threads=threads or 1)
    if threads:
        return lambda: (lambda x, m=model(): m.run(x, threads=threads))
    return lambda: model().run


def ort_factory(w, path, threads):
    import onnxruntime as ort

    def make():
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        if not w.stream:
            return lambda x: session.run(None, {"x": x})[0]
        if w.step_module is not None:
            return window_stepper(w, lambda frames, h: session.run(None, {"x": frames, "h0": h}))
        if w.pool is not None:
            return pooled(w, lambda frames, h0: session.run(None, {"x": frames[:, None], "h0": h0[None]})[0][0])
        h = np.zeros((1, w.x.shape[0], w.gru.hidden_size), np.float32)

        def step(frame):
            nonlocal h
            h = session.run(None, {"x": frame[:, None], "h0": h})[0]
            return h[0]
        return step
    return make


def pooled(w, batched_step):
    """W7 outside grurt: the sessions' states in one numpy array; each call gathers the rows
    of the stepped sessions, runs ``batched_step(frames, h0) -> h_n`` and scatters them back."""
    capacity, ids = w.pool
    states = np.zeros((capacity, w.gru.hidden_size), np.float32)

    def step(frames):
        h = batched_step(frames, states[ids])
        states[ids] = h
        return h
    return step


def openvino_factory(w, path):
    import openvino as ov

    def make():
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
        request = ov.Core().compile_model(path, "CPU", config).create_infer_request()
        if w.pool is not None:
            return pooled(w, lambda frames, h0: request.infer({"x": frames[:, None], "h0": h0[None]})[0][0])
        if not w.stream:
            return lambda x: request.infer({"x": x}, share_inputs=True)[0]
        if w.step_module is not None:
            return window_stepper(w, lambda frames, h: list(request.infer({"x": frames, "h0": h}).values()))
        h = np.zeros((1, w.x.shape[0], w.gru.hidden_size), np.float32)

        def step(frame):
            nonlocal h
            h = request.infer({"x": frame[:, None], "h0": h}, share_inputs=True)[0]  # outputs are copies
            return h[0]
        return step
    return make


def torch_factory(w):
    def make():
        if not w.stream:
            return lambda x: w.torch_module(torch.from_numpy(x)).numpy()
        if w.step_module is not None:
            return window_stepper(w, lambda frames, h: [t.numpy() for t in w.step_module(torch.from_numpy(frames),
                                                                                        torch.from_numpy(h))])
        gru = w.gru  # a GRUCell with the GRU's weights: the usual way to step in PyTorch
        cell = torch.nn.GRUCell(gru.input_size, gru.hidden_size).eval()
        cell.load_state_dict({"weight_ih": gru.weight_ih_l0, "weight_hh": gru.weight_hh_l0,
                              "bias_ih": gru.bias_ih_l0, "bias_hh": gru.bias_hh_l0})
        if w.pool is not None:
            return pooled(w, lambda frames, h0: cell(torch.from_numpy(frames), torch.from_numpy(h0)).numpy())
        h = torch.zeros(w.x.shape[0], gru.hidden_size)

        def step(frame):
            nonlocal h
            h = cell(torch.from_numpy(frame), h)
            return h.numpy()
        return step
    return make


def window_stepper(w, run_step):
    """W6s for a runtime without stream state: the caller keeps the last ``span`` frames (shifted
    in place) and the GRU state; ``run_step(frames, h)`` returns (output, new state)."""
    frames = np.zeros((w.x.shape[0], w.span, w.x.shape[1]), np.float32)
    h = np.zeros((1, w.x.shape[0], w.gru.hidden_size), np.float32)

    def step(frame):
        nonlocal h
        frames[:, :-1] = frames[:, 1:]
        frames[:, -1] = frame
        y, h = run_step(frames, h)
        return y
    return step


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
        return True
    except ImportError:
        return False


def grurt_has_threads() -> bool:
    return "threads" in inspect.signature(grurt.Model.run).parameters


# ---- measuring ----

@dataclass
class Row:
    contender: str
    status: str = "ok"                    # ok / WRONG ... / n/a ... / ERROR ...
    call: Optional[Callable] = None
    times: List[float] = field(default_factory=list)   # seconds per call
    cpu: List[float] = field(default_factory=list)     # the calling thread's CPU seconds per call

    @property
    def timed(self) -> bool:
        return self.call is not None and len(self.times) > 0

    def median_us(self) -> float:
        return float(np.median(self.times)) * 1e6

    def p99_us(self) -> float:
        return float(np.percentile(self.times, 99)) * 1e6


def check(w, call, tolerance=TOLERANCE) -> str:
    """Compare ``call``'s output with PyTorch's; a stepper is fed ``check_frames`` from a fresh state."""
    expected = workloads.reference(w)
    if w.stream:
        got = np.stack([np.array(call(np.ascontiguousarray(w.check_frames[:, t])))
                        for t in range(w.check_frames.shape[1])], axis=1)
    else:
        got = np.asarray(call(w.x))
    if got.shape != expected.shape:
        return f"WRONG (shape {got.shape}, expected {expected.shape})"
    error = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if not error <= tolerance:  # also catches NaN
        return f"WRONG (max abs err {error:.1e})"
    return f"ok ({error:.0e})"


def prepare(row: Row, w, factory, tolerance=TOLERANCE) -> None:
    """Build and check one contender; failures become the row's status."""
    try:
        row.call = factory()
        row.status = check(w, row.call, tolerance)  # a stepper then just goes on from the state it reached
    except Exception as error:  # report it and carry on with the other contenders
        row.status = f"ERROR ({type(error).__name__}: {str(error).splitlines()[0][:80]})"
        row.call = None


def interleaved(rows: List[Row], x: np.ndarray, budget: float, min_rounds: int, max_rounds: int) -> int:
    """Time every row's call on ``x``: rounds in which each row has a turn, in a shuffled order.

    Short calls run in bursts of several timed calls, after one untimed call: the contender
    before them evicted their caches, and a loop of calls is the case worth measuring (without
    this, a 10 µs call measures 30 µs after a torch call). Each turn starts after a short
    pause: onnxruntime's spinning pool threads and OpenVINO's workers stay busy for a moment
    after a call returns, and on 2 loaded cores that slowed the next contender 2-3x (torch on
    W2 after onnxruntime-default). Each call's CPU time is recorded too (``row.cpu``, the calling
    thread's): on cores shared with other processes, a call preempted midway measures its wall time
    inflated, its CPU time not. Returns the number of rounds.
    """
    live = [row for row in rows if row.call is not None]
    if not live:
        return 0
    cost = {}
    for row in live:  # each call's cost: the fastest of up to five warm calls (one if it is slow)
        samples = []
        while len(samples) < 5 and min(samples, default=0.0) < 0.02:
            start = time.perf_counter()
            row.call(x)
            samples.append(time.perf_counter() - start)
        cost[id(row)] = min(samples)
    burst = {key: max(1, min(100, round(BURST_SECONDS / c))) for key, c in cost.items()}
    warm_up = {key: c < WARM_UP_BELOW_SECONDS for key, c in cost.items()}
    round_cost = sum((burst[key] + warm_up[key]) * c + SETTLE_SECONDS for key, c in cost.items())
    rounds = int(min(max_rounds, max(min_rounds, budget / max(round_cost, 1e-9))))
    deadline = time.perf_counter() + 1.5 * budget  # the estimate is optimistic on a loaded machine
    order = list(live)
    shuffle = random.Random(0).shuffle  # not a fixed cycle: every contender follows every other
    gc.disable()  # a collection would land on whichever contender happens to run
    try:
        for done in range(rounds):
            if done >= min_rounds and time.perf_counter() > deadline:
                rounds = done
                break
            shuffle(order)
            for row in order:
                time.sleep(SETTLE_SECONDS)
                if warm_up[id(row)]:
                    row.call(x)
                for _ in range(burst[id(row)]):
                    cpu, start = time.thread_time(), time.perf_counter()
                    row.call(x)
                    row.times.append(time.perf_counter() - start)
                    row.cpu.append(time.thread_time() - cpu)
    finally:
        gc.enable()
    return rounds


def bench_workload(w, directory: str, quick: bool, weights=()) -> Tuple[List[Row], int]:
    path = export_onnx(w, directory)
    grurt_runs = (not w.stream or workloads.has_stream(w.model)) and (w.pool is None or workloads.has_pool(w.model))
    contenders = [("grurt", grurt_factory(w) if grurt_runs else None)]
    if w.name == "W3" and grurt_runs:
        contenders.append(("grurt (state fed each step)", grurt_factory(w, variant="state fed")))
    if w.pool is not None and workloads.has_stream(w.model):
        contenders.append((f"grurt ({len(w.pool[1])} x Stream.step)", grurt_factory(w, variant="streams")))
    if w.name in ("W1", "W2", "W3", "W4", "W5") and grurt_has_threads():
        contenders.append(("grurt (2 threads)", grurt_factory(w, threads=2)))
    # W7: the pool with int8 weights always, beside float32 (the serving section's two figures)
    for mode in weights if w.pool is None else sorted(set(weights) | {"int8"}):
        contenders.append((f"grurt {mode}", grurt_factory(w, weights=mode) if grurt_runs else None))
    contenders += [(BASELINE, ort_factory(w, path, 1)),
                   ("onnxruntime (default threads)", ort_factory(w, path, None)),
                   ("torch eager (1 thread)", torch_factory(w))]
    if openvino_available():
        contenders.append(("openvino f32 (1 thread)", openvino_factory(w, path)))
    rows = []
    for name, factory in contenders:
        row = Row(name)
        if factory is None:
            row.status = "n/a (no stream or pool API)"
        else:
            prepare(row, w, factory, WEIGHT_BUDGETS.get(name.rpartition(" ")[2], TOLERANCE))
        rows.append(row)
    budget, min_rounds, max_rounds = (1.5, 2, 300) if quick else (12.0, 5, 2000)
    return rows, interleaved(rows, w.x, budget, min_rounds, max_rounds)


# ---- reporting ----

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {os.cpu_count()} logical cores ({usable} usable)"


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> str:
    import onnxruntime
    parts = [f"python {platform.python_version()}", f"grurt {grurt.__version__}", f"numpy {np.__version__}",
             f"torch {torch.__version__}", f"onnxruntime {onnxruntime.__version__}"]
    if openvino_available():
        import openvino
        parts.append(f"openvino {openvino.__version__.split('-')[0]}")
    return ", ".join(parts)


def fmt_us(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def table(results) -> str:
    lines = ["| workload | contender | median µs | p99 µs | ORT-1t / this | calls | check |",
             "|---|---|---:|---:|---:|---:|---|"]
    for w, rows, rounds in results:
        baseline = next((r for r in rows if r.contender == BASELINE and r.timed), None)
        for row in rows:
            label = f"{w} ({rounds} rounds)" if row is rows[0] else ""
            if row.timed:
                ratio = f"{baseline.median_us() / row.median_us():.2f}" if baseline else "—"
                lines.append(f"| {label} | {row.contender} | {fmt_us(row.median_us())} | "
                             f"{fmt_us(row.p99_us())} | {ratio} | {len(row.times)} | {row.status} |")
            else:
                lines.append(f"| {label} | {row.contender} | — | — | — | — | {row.status} |")
    return "\n".join(lines)


def plot(results, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row.contender for _, rows, _ in results for row in rows))
    names.sort(key=lambda name: not name.startswith("grurt"))  # grurt rows first, stable otherwise
    colour = {name: f"C{k}" for k, name in enumerate(names)}
    width = 0.8 / max(len(rows) for _, rows, _ in results)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(results)), 4.5))
    labelled = set()
    for i, (_, rows, _) in enumerate(results):
        timed = sorted((row for row in rows if row.timed), key=lambda row: names.index(row.contender))
        for k, row in enumerate(timed):
            bad = not row.status.startswith("ok")  # a fast wrong answer must not look like a win
            label = None if row.contender in labelled else row.contender
            labelled.add(row.contender)
            ax.bar(i + (k - (len(timed) - 1) / 2) * width, row.median_us(), width, label=label,
                   color=colour[row.contender], hatch="xx" if bad else None, alpha=0.4 if bad else 1.0)
    ax.set_yscale("log")
    ax.set_ylabel("median µs per call (log)")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([str(w) for w, _, _ in results], fontsize=8)
    ax.set_title("grurt vs onnxruntime / torch / openvino (hatched = WRONG output)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda j: names.index(labels[j]))
    ax.legend([handles[j] for j in order], [labels[j] for j in order], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small time budget (< 40 s in total)")
    parser.add_argument("--workloads", default=",".join(workloads.NAMES),
                        help=f"comma-separated subset of {','.join(workloads.NAMES)}")
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare.png"),
                        help="where to write the PNG bar plot (default: bench/compare.png)")
    parser.add_argument("--weights", default="",
                        help="comma-separated reduced weight modes to add as grurt contenders (bf16,int8)")
    args = parser.parse_args(argv)
    weights = [mode.strip() for mode in args.weights.split(",") if mode.strip()]
    if any(mode not in WEIGHT_BUDGETS for mode in weights):
        parser.error(f"--weights: choose from {', '.join(WEIGHT_BUDGETS)}")
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in names if name not in workloads.NAMES]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(workloads.NAMES)}")

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)  # inference: no autograd bookkeeping for the torch contender
    started = time.perf_counter()
    print(f"# grurt comparison{' (--quick)' if args.quick else ''}\n")
    print(f"- machine: {machine()}")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- load average at start: {load_average()} (other processes share these cores)")
    print(f"- {scaling.describe()}, before the run", flush=True)
    print(f"- {versions()}")
    if not grurt_has_threads():
        print("- grurt (2 threads) skipped: Model.run has no `threads` option")
    if not openvino_available():
        print("- openvino not installed: skipped")
    print(flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="grurt-bench-") as directory:
        for name in names:
            w = workloads.get(name)
            rows, rounds = bench_workload(w, directory, args.quick, weights)
            results.append((w, rows, rounds))
            print(f"  {w}: {rounds} rounds, {time.perf_counter() - started:.0f} s elapsed", file=sys.stderr, flush=True)
    print(table(results))
    if args.plot:
        try:
            plot(results, args.plot)
            print(f"\nplot: {args.plot}")
        except ImportError as error:  # matplotlib is optional: the table is the result
            print(f"\nno plot ({error})")
    print(f"total time: {time.perf_counter() - started:.0f} s; load average at end: {load_average()}")
    print(f"{scaling.describe()}, after the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
