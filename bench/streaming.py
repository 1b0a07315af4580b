#!/usr/bin/env python
"""Per-frame cost of small streaming GRUs, GRU(H) -> Dense(1), beside RTNeural.

    python bench/streaming.py [--quick] [--sizes 1x8,64x256]

For each (I, H), one model (random PyTorch weights, ``grurt.from_torch([gru, linear])``) and
256 random frames; per frame, in ns:

    Stream.step        one ``stream.step(frame, out=buf)`` call per frame, from a Python loop
                       over the 256 frames (rows of one array, prepared beforehand)
    stream.run         ``stream.run(block, out=buf)`` on blocks of 256 frames
    general loop       (H = 8, 16, 24, 32) stream.run with the small kernels off
                       (``_kernels.use_small_kernels(False)``): what they gain, interleaved
    kernel             (H <= 32) one step called 2,000 times from a C loop, no Python: the
                       kernel's own time; Stream.step minus this is the call overhead

RTNeural's numbers are fixed anchors (C++, ``ModelT<GRULayerT<1, H>, DenseT<H, 1>>``, Eigen
backend, -O3 -march=native, one ``forward`` call per frame, the minimum over 2,000 blocks of
256 frames), measured on the machine and day given in RTNEURAL_MACHINE; pass ``--rtneural
8=83,16=87`` to use figures measured in the same hour. Contenders are timed interleaved
(rounds of shuffled turns); medians are reported.
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import random
import time

import numpy as np
import torch

import grurt
from grurt import _kernels

SIZES = [(1, 8), (1, 16), (1, 24), (1, 32), (1, 64), (16, 64), (64, 64), (64, 128), (64, 256)]
RTNEURAL_MACHINE = "Intel Xeon (Sapphire Rapids class, 2 vCPUs), 2026-12-06, Eigen 3.4.0, GCC 12"
RTNEURAL_NS = {(1, 8): 83, (1, 16): 87, (1, 24): 123, (1, 32): 144}
FRAMES = 256


def build(I, H):
    torch.manual_seed(1000 * I + H)
    gru, head = torch.nn.GRU(I, H, batch_first=True), torch.nn.Linear(H, 1)
    return grurt.from_torch([gru, head])


def contenders(model, frames):
    I = model.input_size
    rows = [frames[t] for t in range(FRAMES)]
    step_stream, run_stream = model.stream(), model.stream()
    one = np.empty(1, np.float32)
    block_out = np.empty((FRAMES, 1), np.float32)

    def stepping():
        step = step_stream.step
        for row in rows:
            step(row, out=one)

    def blocks():
        run_stream.run(frames, out=block_out)

    calls = {"Stream.step": stepping, "stream.run": blocks}
    H = model.spec.gru_layers[0].hidden_size
    if H <= 32:
        general_stream = model.stream()

        def general():
            previous = _kernels.use_small_kernels(False)
            try:
                general_stream.run(frames, out=block_out)
            finally:
                _kernels.use_small_kernels(previous)
        calls["general loop"] = general
        calls["kernel"] = lambda: step_stream._kernel_ns(rows[0], 2_000)
    return calls


def measure(calls, budget):
    times = {name: [] for name in calls}
    order = list(calls)
    deadline = time.perf_counter() + budget
    rounds = 0
    while rounds < 5 or time.perf_counter() < deadline:
        random.shuffle(order)
        for name in order:
            call = calls[name]
            if name == "kernel":
                times[name].append(call())            # ns per step, timed in C
                continue
            call()                                    # warm
            start = time.perf_counter_ns()
            for _ in range(5):
                call()
            times[name].append((time.perf_counter_ns() - start) / 5 / FRAMES)
        rounds += 1
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=",".join(f"{i}x{h}" for i, h in SIZES))
    parser.add_argument("--rtneural", default="", help="H=ns,... measured now (I = 1), replacing the anchors")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    anchors = dict(RTNEURAL_NS)
    for item in filter(None, args.rtneural.split(",")):
        h, ns = item.split("=")
        anchors[(1, int(h))] = float(ns)
    torch.set_num_threads(1)
    random.seed(0)
    print(f"RTNeural anchors: {'measured now' if args.rtneural else RTNEURAL_MACHINE}\n")
    print("| I | H | Stream.step ns/frame | stream.run ns/frame (blocks of 256) | general loop ns/frame "
          "| RTNeural ns/frame | RTNeural / stream.run | kernel ns (one step) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for I, H in sizes:
        model = build(I, H)
        frames = np.random.default_rng(H).standard_normal((FRAMES, I), dtype=np.float32)
        # the two ways agree bit for bit
        a = np.stack([s for s in [model.stream()] for s in [s.step(f).copy() for f in frames]])
        assert np.array_equal(a, model.stream().run(frames)), (I, H)
        med = measure(contenders(model, frames), 1.0 if args.quick else 4.0)
        anchor = anchors.get((I, H))
        ratio = f"{anchor / med['stream.run']:.2f}" if anchor else "—"
        general = f"{med['general loop']:,.0f}" if "general loop" in med else "—"
        kernel = f"{med['kernel']:.0f}" if "kernel" in med else "—"
        print(f"| {I} | {H} | {med['Stream.step']:,.0f} | {med['stream.run']:,.0f} | {general} | "
              f"{f'{anchor:,.0f}' if anchor else '—'} | {ratio} | {kernel} |", flush=True)


if __name__ == "__main__":
    main()
