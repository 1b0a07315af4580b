#!/usr/bin/env python
"""Per-frame cost of small streaming GRUs, GRU(H) -> Dense(1), beside RTNeural.

    python bench/streaming.py [--quick] [--sizes 1x8,64x256]

For each (I, H), one model (random PyTorch weights, ``grurt.from_torch([gru, linear])``) and
256 random frames; per frame, in ns:

    Stream.step        one ``stream.step(frame, out=buf)`` call per frame, from a Python loop
                       over the 256 frames (rows of one array, prepared beforehand)
    stream.run         ``stream.run(block, out=buf)`` on blocks of 256 frames
    kernel             (H = 8 only) the same step called 2,000 times from a C loop, no Python:
                       the kernel's own time; Stream.step minus this is the call overhead

RTNeural's numbers are fixed anchors measured on this machine (C++, ``ModelT<GRULayerT,
DenseT>``, best of its Eigen and xsimd backends, -O3 -march=native, one frame per call).
Contenders are timed interleaved (rounds of shuffled turns); medians are reported.
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import random
import time

import numpy as np
import torch

import grurt

SIZES = [(1, 8), (1, 16), (1, 32), (1, 64), (16, 64), (64, 64), (64, 128), (64, 256)]
RTNEURAL_NS = {(1, 8): 59, (1, 16): 55, (1, 32): 167, (1, 64): 560, (16, 64): 703, (64, 64): 1064,
               (64, 128): 2951, (64, 256): 10364}
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
    kernel = getattr(step_stream, "_kernel_ns", None)
    if kernel is not None and model.spec.gru_layers[0].hidden_size == 8:
        calls["kernel"] = lambda: kernel(rows[0], 2_000)
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
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    torch.set_num_threads(1)
    random.seed(0)
    print("| I | H | Stream.step ns/frame | stream.run ns/frame (blocks of 256) | RTNeural ns/frame "
          "| RTNeural / stream.run | kernel ns (H=8) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for I, H in sizes:
        model = build(I, H)
        frames = np.random.default_rng(H).standard_normal((FRAMES, I), dtype=np.float32)
        # the two ways agree bit for bit
        a = np.stack([s for s in [model.stream()] for s in [s.step(f).copy() for f in frames]])
        assert np.array_equal(a, model.stream().run(frames)), (I, H)
        med = measure(contenders(model, frames), 1.0 if args.quick else 4.0)
        anchor = RTNEURAL_NS.get((I, H))
        ratio = f"{anchor / med['stream.run']:.2f}" if anchor else "—"
        kernel = f"{med['kernel']:.0f}" if "kernel" in med else ""
        print(f"| {I} | {H} | {med['Stream.step']:,.0f} | {med['stream.run']:,.0f} | "
              f"{anchor if anchor else '—':,} | {ratio} | {kernel} |", flush=True)


if __name__ == "__main__":
    main()
