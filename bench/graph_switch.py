"""A graph Model's run and one-frame stream step, two builds of grurt interleaved (e.g. main before the switch:
the fused GraphRunner / GraphStream; this checkout: the lowered TensorGraph), the same bits checked.
docs/architecture-tensor-graph.md, "Step 2".

    PYTHONPATH=src python bench/graph_switch.py OLD_SRC [rounds]

Each build runs in a worker process of its own (``PYTHONPATH=<src>``) building the same seeded graphs; rounds
alternate the two workers (a burst of timed calls each), and the table gives the medians of all calls.
"""
from __future__ import annotations

import datetime
import os
import pickle
import platform
import subprocess
import sys
import time

import numpy as np

from grurt.graph import Combine, Concat, Graph, Input, Masking, Node
from grurt.spec import GRU, Dense, GlobalPool, activation


def gru(rng, i, h, direction="forward", seq=True):
    d = 2 if direction == "bidirectional" else 1
    return GRU(rng.normal(size=(d, 3 * h, i)) / np.sqrt(i), rng.normal(size=(d, 3 * h, h)) * 0.3 / np.sqrt(h),
               rng.normal(size=(d, 6 * h)) * 0.1, direction=direction, linear_before_reset=True, return_sequences=seq)


def dense(rng, i, o, fn="linear"):
    return Dense(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1, activation(fn))


def cases():
    rng = np.random.default_rng(0)
    yield "residual GRU(128), B 1, T 100", Graph(
        (Input("x", 128),), (Node(gru(rng, 128, 128), "x", "g"), Node(Combine("add"), ("g", "x"), "y")), ("y",)), \
        rng.standard_normal((1, 100, 128)).astype(np.float32)
    yield "fwd + rev GRU(64), Concat, B 8, T 50", Graph(
        (Input("x", 32),), (Node(gru(rng, 32, 64), "x", "a"), Node(gru(rng, 32, 64, "reverse"), "x", "b"),
                            Node(Concat(), ("a", "b"), "y")), ("y",)), \
        rng.standard_normal((8, 50, 32)).astype(np.float32)
    x = rng.standard_normal((4, 50, 16)).astype(np.float32)
    x[:, 40:] = 0
    x[1, 5:9] = 0
    yield "Masking + GRU(64) + masked mean, B 4, T 50", Graph(
        (Input("x", 16),), (Node(Masking(0.0), "x", ("m", "mask")), Node(gru(rng, 16, 64), ("m", "mask"), "g"),
                            Node(GlobalPool("average"), ("g", "mask"), "y")), ("y",)), x
    yield "GRU(16) + Dense, B 1, T 10", Graph(
        (Input("x", 8),), (Node(gru(rng, 8, 16), "x", "g"), Node(dense(rng, 16, 16), "g", "d"),
                           Node(Combine("add"), ("g", "d"), "y")), ("y",)), \
        rng.standard_normal((1, 10, 8)).astype(np.float32)


def stream_cases():
    for h in (128, 32):
        rng = np.random.default_rng(h)
        yield f"Dense + GRU({h}) + residual + Dense, B 1", Graph(
            (Input("x", 40),), (Node(dense(rng, 40, h, "relu"), "x", "a"), Node(gru(rng, h, h), "a", "g"),
                                Node(Combine("add"), ("a", "g"), "r"), Node(dense(rng, h, 10), "r", "y")), ("y",)), \
            rng.standard_normal((200, 40)).astype(np.float32)


def calls():
    """(name, fn, arg) of every timed call: each case's run, each stream case's step."""
    import grurt
    for name, graph, x in cases():
        yield f"run  {name}", grurt.Model(graph).run, x
    for name, graph, frames in stream_cases():
        stream = grurt.Model(graph).stream()
        it = iter(range(10**9))
        yield f"step {name}", lambda f, s=stream, fr=frames, i=it: s.step(fr[next(i) % 200]), None


def worker():
    """Read 'burst k n' lines: time n calls of call k; 'check' gives the outputs (a fresh stream's first steps)."""
    import grurt
    table = list(calls())
    out = sys.stdout.buffer
    for line in sys.stdin:
        words = line.split()
        if words[0] == "check":
            results = [grurt.Model(g).run(x) for _, g, x in cases()]
            for _, g, frames in stream_cases():
                s = grurt.Model(g).stream()
                results.append([s.step(f) for f in frames[:5]])
            data = pickle.dumps(results)
        else:
            _, fn, arg = table[int(words[1])]
            fn(arg)
            times = []
            for _ in range(int(words[2])):
                t = time.perf_counter()
                fn(arg)
                times.append(time.perf_counter() - t)
            data = pickle.dumps(times)
        out.write(len(data).to_bytes(8, "little") + data)
        out.flush()


def ask(proc, line):
    proc.stdin.write((line + "\n").encode())
    proc.stdin.flush()
    size = int.from_bytes(proc.stdout.read(8), "little")
    return pickle.loads(proc.stdout.read(size))


def main(old_src, rounds=30):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    new_src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": src}) for src in (old_src, new_src)]
    old, new = (ask(p, "check") for p in procs)
    same = all(np.array_equal(a, b) for a, b in zip(old[:4], new[:4])) and all(
        np.array_equal(a, b) for s, t in zip(old[4:], new[4:]) for a, b in zip(s, t))
    print(f"# {datetime.date.today()}  {cpu}  load {os.getloadavg()[0]:.1f}  rounds {rounds}  same bits: {same}")
    names = [name for name, _, _ in calls()]
    times = [[[], []] for _ in names]
    for r in range(rounds):
        for k, name in enumerate(names):
            n = 20 if name.startswith("run") else 200
            for w in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[k][w] += ask(procs[w], f"burst {k} {n}")
    for name, (a, b) in zip(names, times):
        a, b = np.median(a) * 1e6, np.median(b) * 1e6
        print(f"{name:50s} old {a:8.1f} µs  new {b:8.1f} µs  ({b / a - 1:+6.1%})")
    for p in procs:
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
