#!/usr/bin/env python
"""grurt's general tensor graph side by side with onnxruntime and PyTorch: W9 and W10.

    python bench/compare_graph.py [--quick] [--workloads W9,W10,W10s20] [--profile]

Workloads (``workloads_graph.py``): W9, a BiGRU(128) + attention pooling classifier on
(1, 100, 40); W10, a DeepFilterNet-style encoder + ERB decoder + DF decoder, one call per hop
(S = 1 frame; W10s20: S = 20 frames), its six states (conv histories and GRU states) carried
from call to call by each contender.

    grurt                       the model of ``grurt.from_torch(module, example)``, ``run``
    grurt (load of the file)    ``grurt.load`` of the very file onnxruntime runs
    grurt bf16 weights          ``model.with_weights("bf16")`` (opt-in reduced precision: the GRU
                                weights in half the bytes), checked against PyTorch with the bf16
                                budget (5e-3) instead of 1e-5
    grurt (threads=2)           ``run(..., threads=2)``: each GRU layer on up to two threads
                                when grurt measures that it pays, convolutions of 1M
                                multiply-adds or more split (the same bits); its CPU columns
                                count the calling thread only: compare its wall times
    onnxruntime (1 thread)      intra_op_num_threads = inter_op_num_threads = 1: the baseline;
                                the legacy (TorchScript) export, opset 17, as from_torch makes
    torch eager (1 thread)      torch.set_num_threads(1), autograd off

Each contender's outputs are first checked against PyTorch (max abs error <= 1e-5 on every
output, W10 over 4 hops from zero states). Timing as in compare.py: interleaved rounds in a
shuffled order, a warm-up call and a ~2 ms burst per turn, medians; the ratio column is
onnxruntime-1-thread median / contender median (> 1: faster than onnxruntime); the CPU columns
are the same from the calling thread's CPU time (``time.thread_time``), which a loaded machine
does not inflate when it preempts a call. A W10 call is
one hop (the features of S frames and the six states in, ten outputs out, the states fed back).
``--profile`` adds, per workload, grurt's CPU time per op type (each plan step timed alone, inside a native run
by its clock), the
cost of a plan-cache miss, and of a general op above the numpy call it makes.
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import collections
import datetime
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

import grurt
import workloads_graph as wg
from compare import BASELINE, Row, fmt_us, interleaved, load_average, machine, versions

TOLERANCE = 1e-5
BF16_BUDGET = 5e-3             # tests/tolerances.py LOWP_BUDGETS["bf16"]
CHECK_HOPS = 4


def export(w, directory):
    path = os.path.join(directory, f"{w.name}.onnx")
    if w.name == "W9":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(w.torch_module, (torch.from_numpy(w.example[0]),), path, dynamo=False,
                              opset_version=17, input_names=["x"], output_names=["output"],
                              dynamic_axes={"x": {0: "batch", 1: "time"}, "output": {0: "batch"}})
    else:
        wg.export_w10(w.torch_module, w.frames, path)
    return path


def contenders(w, path):
    """(name, make) pairs; make() -> call(features) -> list of outputs, a W10 call carrying its states."""
    import onnxruntime as ort

    names = list(wg.INPUT_NAMES) if w.name != "W9" else ["x"]

    def grurt_call(model, threads=1):
        if w.name == "W9":
            return lambda x: [model.run(x, threads=threads)]
        return wg.stepper(lambda arrays: list(model.run(dict(zip(names, arrays)), threads=threads)))

    def ort_call():
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        if w.name == "W9":
            return lambda x: session.run(None, {"x": x})
        return wg.stepper(lambda arrays: session.run(None, dict(zip(names, arrays))))

    def torch_call():
        if w.name == "W9":
            return lambda x: wg.torch_outputs(w, (x,))
        return wg.stepper(lambda arrays: wg.torch_outputs(w, arrays))

    return [("grurt", lambda: grurt_call(w.model), TOLERANCE),
            ("grurt (load of the file)", lambda: grurt_call(grurt.load(path)), TOLERANCE),
            ("grurt bf16 weights", lambda: grurt_call(w.model.with_weights("bf16")), BF16_BUDGET),
            ("grurt (threads=2)", lambda: grurt_call(w.model, 2), TOLERANCE),
            (BASELINE, ort_call, TOLERANCE),
            ("torch eager (1 thread)", torch_call, TOLERANCE)]


def check(w, call, tolerance=TOLERANCE) -> str:
    """Max abs error of ``call`` against PyTorch over every output (W10: CHECK_HOPS hops from zero states)."""
    if w.name == "W9":
        pairs = [(call(w.example[0]), wg.torch_outputs(w, w.example))]
    else:
        reference = wg.stepper(lambda arrays: wg.torch_outputs(w, arrays))
        pairs = [(call(*hop), reference(*hop)) for hop in wg.hops(w.frames, CHECK_HOPS)]
    error = max(float(np.max(np.abs(np.asarray(g, np.float64) - e))) for got, expected in pairs
                for g, e in zip(got, expected))
    return f"ok ({error:.0e})" if error <= tolerance else f"WRONG (max abs err {error:.1e})"


def bench(w, directory, quick):
    path = export(w, directory)
    rows = []
    for name, make, tolerance in contenders(w, path):
        row = Row(name)
        try:
            row.status = check(w, make(), tolerance)
            row.call = make()                      # fresh states for timing
        except Exception as error:                 # report it, carry on
            row.status = f"ERROR ({type(error).__name__}: {str(error).splitlines()[0][:80]})"
        rows.append(row)
    if w.name == "W9":
        x = w.example[0]
    else:
        hop = wg.hops(w.frames, 1, seed=11)[0]
        for row in rows:                            # interleaved() calls call(x): one argument
            if row.call is not None:
                row.call = (lambda step: lambda features: step(*features))(row.call)
        x = hop
    budget, min_rounds, max_rounds = (1.5, 2, 300) if quick else (10.0, 5, 2000)
    return rows, interleaved(rows, x, budget, min_rounds, max_rounds)


def table(results) -> str:
    lines = ["| workload | contender | median µs | p99 µs | ORT-1t / this | CPU µs (median) | ORT-1t / this, CPU | "
             "calls | check |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for w, rows, rounds in results:
        baseline = next((r for r in rows if r.contender == BASELINE and r.timed), None)
        for row in rows:
            label = f"{w} ({rounds} rounds)" if row is rows[0] else ""
            if row.timed:
                cpu = float(np.median(row.cpu)) * 1e6
                ratio = f"{baseline.median_us() / row.median_us():.2f}" if baseline else "—"
                cpu_ratio = f"{float(np.median(baseline.cpu)) * 1e6 / cpu:.2f}" if baseline else "—"
                lines.append(f"| {label} | {row.contender} | {fmt_us(row.median_us())} | {fmt_us(row.p99_us())} | "
                             f"{ratio} | {fmt_us(cpu)} | {cpu_ratio} | {len(row.times)} | {row.status} |")
            else:
                lines.append(f"| {label} | {row.contender} | — | — | — | — | — | — | {row.status} |")
    return "\n".join(lines)


# ---- profile ----

def _median_us(fn, repeat):
    """Median CPU time of ``fn()`` (the calling thread's: a preempted call is not inflated)."""
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return float(np.median(times)) * 1e6


def profile(w, repeat=200) -> str:
    """grurt's CPU time per op type (each step timed alone, medians summed; the steps of a native run timed
    inside it), the whole run's median, and the cost of a plan-cache miss."""
    model = w.model
    inputs = dict(zip(model.input_names, w.example))
    arrays = model._inputs(inputs)
    plan = model.plan(arrays)
    per_node = collections.defaultdict(list)
    for _ in range(repeat):
        for node, seconds in step_times(plan, arrays, time.thread_time):
            per_node[id(node)].append((node, seconds))
    by_op = collections.Counter()
    count = collections.Counter()
    for times in per_node.values():
        op = times[0][0].op
        by_op[op] += float(np.median([s for _, s in times])) * 1e6
        count[op] += 1
    total = _median_us(lambda: model.run(inputs), repeat)
    miss = _median_us(lambda: grurt.tensor_plan.make_plan(model.graph, grurt.tensor_plan.signature(arrays)),
                      max(5, repeat // 20))
    native = [len(ctx.nodes) for _, ctx, *_ in plan.runs if isinstance(ctx, grurt._kernels.NativeProgram)]
    lines = [f"{w.name}: run median {total:.0f} µs CPU; {len(plan.steps)} steps ({sum(native)} of them in "
             f"{len(native)} native runs); plan-cache miss (make_plan) {miss:.0f} µs", "",
             "| op | steps | CPU µs (sum of step medians) |", "|---|---:|---:|"]
    lines += [f"| {op} | {count[op]} | {us:.1f} |" for op, us in by_op.most_common()]
    lines.append(f"| (dispatch, input checks, cache lookup) | | {total - sum(by_op.values()):.1f} |")
    return "\n".join(lines)


def step_times(plan, arrays, clock):
    """One run of ``plan`` on the checked ``arrays`` as Plan.run makes it, each step timed alone by ``clock`` (the
    steps of a native run by the run's own clock, in C): (node, seconds) of each step, in order."""
    slots = list(plan.slots)
    for slot, array in zip(plan.input_slots, arrays):
        slots[slot] = array
    seconds = []
    for run, ctx, ins, outs, _, node in plan.runs:
        args = [slots[i] for i in ins]
        if isinstance(ctx, grurt._kernels.NativeProgram):
            results, ns, _ = ctx.profile(args, 1)
            spent = [0] * len(ctx.nodes)
            for owner, t in zip(ctx.owners, ns):
                spent[owner] += t
            seconds += [(inner, t * 1e-9) for inner, t in zip(ctx.nodes, spent)]
        else:
            start = clock()
            results = run(ctx, args)
            seconds.append((node, clock() - start))
        for k, slot in outs:
            slots[slot] = results[k]
    return seconds


def general_op_cost(repeat=2000) -> str:
    """A general op through its registry ``run`` (and through Plan.run: dispatch) vs the numpy call it makes."""
    from grurt.ops import REGISTRY

    x = np.random.default_rng(0).standard_normal((1, 100, 256)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((1, 100, 1)).astype(np.float32)
    relu = REGISTRY["Relu"]
    mul = REGISTRY["Mul"]
    cases = [("Relu (1, 4)", lambda: relu.run({}, [x[0, :1, :4]]), lambda: np.maximum(x[0, :1, :4], 0)),
             ("Relu (1, 100, 256)", lambda: relu.run({}, [x]), lambda: np.maximum(x, 0)),
             ("Mul (1, 100, 256) x (1, 100, 1)", lambda: mul.run({}, [x, w]), lambda: np.multiply(x, w))]
    lines = ["| op | registry run µs | numpy µs | above numpy µs |", "|---|---:|---:|---:|"]
    for name, op_call, np_call in cases:
        a, b = _median_us(op_call, repeat), _median_us(np_call, repeat)
        lines.append(f"| {name} | {a:.2f} | {b:.2f} | {a - b:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small time budget")
    parser.add_argument("--workloads", default=",".join(wg.NAMES), help=f"subset of {','.join(wg.NAMES)}")
    parser.add_argument("--profile", action="store_true", help="grurt's time per op type, plan-cache miss, op cost")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in wg.NAMES]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(wg.NAMES)}")
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    print(f"# grurt general graphs{' (--quick)' if args.quick else ''}\n")
    print(f"- machine: {machine()}")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- load average at start: {load_average()} (other processes share these cores)")
    print(f"- {versions()}\n", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="grurt-bench-graph-") as directory:
        for name in names:
            w = wg.get(name)
            rows, rounds = bench(w, directory, args.quick)
            results.append((w, rows, rounds))
            print(f"  {w}: {rounds} rounds, {time.perf_counter() - started:.0f} s elapsed", file=sys.stderr,
                  flush=True)
    print(table(results))
    if args.profile:
        for w, _, _ in results:
            print("\n" + profile(w))
        print("\n" + general_op_cost())
    print(f"\ntotal time: {time.perf_counter() - started:.0f} s; load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
