"""W9, W10 and W10s20 (``workloads_graph``) on two builds of grurt interleaved: e.g. main before the fusion pass on
regions and this checkout (their GRUs with their wiring as grurt.Chain nodes). docs/architecture-tensor-graph.md,
"Step 3: regions".

    PYTHONPATH=src python bench/regions_ab.py OTHER_SRC [rounds]
    PYTHONPATH=src python bench/regions_ab.py --same-process [calls]

Each build runs in a worker process of its own (``PYTHONPATH=<src>``) that builds the workloads as ``from_torch`` makes
them (the same seeded modules) and exports W9's and W10's files; rounds alternate the two workers, each timing a burst
of calls (``run`` on the workload's example, a W10 call with its six states; ``grurt.load`` of the file), and the table
gives the medians of all calls, wall and thread CPU time. The outputs are checked to be the same bits first.
``--same-process``: each workload's file (its graph as ``general.py`` reads it) run as it is and with its regions
fused, in one process, calls alternating: thread CPU time, medians and 25th percentiles.
"""
from __future__ import annotations

import datetime
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")      # before numpy loads OpenBLAS: one thread, as compare_graph

import numpy as np  # noqa: E402

WORKLOADS = ("W9", "W10", "W10s20")


def calls(folder):
    """(name, fn) of every timed call, and the steps of each workload's plan."""
    import grurt
    import compare_graph
    import workloads_graph as wg

    table, steps = [], {}
    for name in WORKLOADS:
        w = wg.get(name)
        feeds = dict(zip(w.model.input_names, w.example))
        model = w.model
        steps[name] = len(model.plan(model._inputs(feeds)).steps)
        table.append((f"run  {name}", lambda m=model, f=feeds: m.run(f)))
    for name in ("W9", "W10"):
        path = compare_graph.export(wg.get(name), folder)
        table.append((f"load {name}.onnx", lambda p=path: grurt.load(p)))
    return table, steps


def worker():
    """Read 'burst k n' lines: time n calls of call k; 'check' gives the outputs and the plans' steps."""
    import workloads_graph as wg

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as folder:
        table, steps = calls(folder)
        out = sys.stdout.buffer
        for line in sys.stdin:
            words = line.split()
            if words[0] == "check":
                results = []
                for name in WORKLOADS:
                    w = wg.get(name)
                    got = w.model.run(dict(zip(w.model.input_names, w.example)))
                    results.append(got if isinstance(got, tuple) else (got,))
                data = pickle.dumps((results, steps))
            else:
                _, fn = table[int(words[1])]
                fn()
                times = []
                for _ in range(int(words[2])):
                    t, c = time.perf_counter(), time.thread_time()
                    fn()
                    times.append((time.perf_counter() - t, time.thread_time() - c))
                data = pickle.dumps(times)
            out.write(len(data).to_bytes(8, "little") + data)
            out.flush()


def main(other_src, rounds=20):
    from graph_switch import ask        # its protocol: a line in, a length-prefixed pickle out

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**env, "PYTHONPATH": f"{src}{os.pathsep}{here}"})
             for src in (other_src, os.path.join(here, "..", "src"))]
    (a, steps_a), (b, steps_b) = (ask(p, "check") for p in procs)
    same = all(np.array_equal(x, y) for s, t in zip(a, b) for x, y in zip(s, t))
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M}  {cpu}  load {os.getloadavg()[0]:.1f}  rounds {rounds}  "
          f"same bits: {same}")
    print("# steps: " + ", ".join(f"{n} {steps_a[n]} -> {steps_b[n]}" for n in WORKLOADS))
    with tempfile.TemporaryDirectory() as folder:
        names = [name for name, _ in calls(folder)[0]]
    bursts = {"run  W9": 20, "run  W10": 100, "run  W10s20": 10, "load W9.onnx": 5, "load W10.onnx": 3}
    times = [[[], []] for _ in names]
    for r in range(rounds):
        for k, name in enumerate(names):
            for w in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[k][w] += ask(procs[w], f"burst {k} {bursts[name]}")
    print("| call | other: wall µs | this: wall µs | | other: CPU µs | this: CPU µs | |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (x, y) in zip(names, times):
        (wa, ca), (wb, cb) = (np.median(np.array(t), axis=0) * 1e6 for t in (x, y))
        print(f"| {name} | {wa:.1f} | {wb:.1f} | {wb / wa - 1:+.1%} | {ca:.1f} | {cb:.1f} | {cb / ca - 1:+.1%} |")
        (qa, _), (qb, _) = (np.percentile(np.array(t), 25, axis=0) * 1e6 for t in (x, y))
        print(f"|   25th percentile | {qa:.1f} | {qb:.1f} | {qb / qa - 1:+.1%} | | | |")
    for p in procs:
        p.stdin.close()
        p.wait()


def same_process(calls=400):
    import compare_graph
    import workloads_graph as wg
    from grurt.fusion import fuse_regions
    from grurt.importers.onnx.general import tensor_graph_from_source
    from grurt.importers.onnx.proto import _open
    from grurt.tensor_model import TensorModel

    warnings.simplefilter("ignore")
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M}  load {os.getloadavg()[0]:.1f}  {calls} calls each")
    with tempfile.TemporaryDirectory() as folder:
        for name in WORKLOADS:
            w = wg.get(name)
            graph = tensor_graph_from_source(_open(compare_graph.export(w, folder)))
            feeds = dict(zip(graph.input_names, w.example))
            models, times = (TensorModel(graph), TensorModel(fuse_regions(graph)[0])), ([], [])
            for r in range(calls):
                for k in ((0, 1) if r % 2 else (1, 0)):
                    start = time.thread_time()
                    models[k].run(feeds)
                    times[k].append(time.thread_time() - start)
            (ma, qa), (mb, qb) = ((np.median(t) * 1e6, np.percentile(t, 25) * 1e6) for t in times)
            print(f"{name}: as it is {ma:.1f} µs, regions fused {mb:.1f} µs ({mb / ma - 1:+.1%}); 25th percentiles "
                  f"{qa:.1f}, {qb:.1f} ({qb / qa - 1:+.1%})")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    elif sys.argv[1:2] == ["--same-process"]:
        same_process(*(int(a) for a in sys.argv[2:]))
    else:
        main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
