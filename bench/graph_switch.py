"""A Graph model's call on the fused runner (GraphRunner / GraphStream) against the same graph lowered onto a
TensorGraph (grurt.graph_lower) run by the planner (TensorModel.run, and its plan called directly) and streamed
(TensorStream.step): interleaved medians, the same bits checked. docs/architecture-tensor-graph.md, "Step 2".

    PYTHONPATH=src python bench/graph_switch.py [rounds]
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time

import numpy as np

import grurt
from grurt.graph import Combine, Concat, Graph, Input, Masking, Node
from grurt.graph_lower import lower
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


def timed(fn, arg):
    t = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t


def interleave(fns, arg, rounds):
    times = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            times[k].append(timed(fn, arg))
    return [np.median(t) * 1e6 for t in times]


def main(rounds=400):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# {datetime.date.today()}  {cpu}  load {os.getloadavg()[0]:.1f}  rounds {rounds}")
    for name, graph, x in cases():
        model = grurt.Model(graph)
        lowered = grurt.TensorModel(lower(graph).graph)
        arrays = lowered._inputs(x)
        plan = lowered.plan(arrays)
        assert np.array_equal(model.run(x), lowered.run(x)), name
        us = interleave([model.run, lowered.run, lambda a: plan.run(arrays)], x, rounds)
        print(f"run  {name:45s} fused {us[0]:8.1f} µs  TensorModel.run {us[1]:8.1f} ({us[1] / us[0] - 1:+6.1%})  "
              f"plan.run {us[2]:8.1f} ({us[2] / us[0] - 1:+6.1%})")
    for name, graph, frames in stream_cases():
        model = grurt.Model(graph)
        lowered = grurt.TensorModel(lower(graph).graph)
        a, b = model.stream(), lowered.stream()
        for f in frames[:5]:
            assert np.array_equal(a.step(f), b.step(f[None])[0]), name
        it = iter(range(10**9))
        us = interleave([lambda f: a.step(frames[next(it) % 200]), lambda f: b.step(frames[next(it) % 200][None])],
                        None, rounds * 5)
        print(f"step {name:45s} GraphStream {us[0]:6.1f} µs  TensorStream {us[1]:6.1f} ({us[1] / us[0]:.2f}x)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
