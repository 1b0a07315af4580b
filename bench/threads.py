#!/usr/bin/env python
"""grurt on 1 thread against 2 threads, interleaved, beside the machine's own scaling.

    python bench/threads.py [--workloads W1,W2] [--hog] [--seconds 4]

For each workload the 1-thread and 2-thread calls take turns in short bursts (the order
shuffled each round) and the medians are compared: "2t/1t" above 1 means 2 threads are
faster. ``--hog`` runs a busy-loop process (``while True: pass``) during the measurement,
the case of a neighbour keeping the other core busy. W3 steps a ``Model.stream`` created
with ``threads=`` when the stream accepts it.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import inspect
import random
import subprocess
import sys
import time

import numpy as np

import scaling
import workloads


def caller(w, threads):
    if w.stream:
        if "threads" in inspect.signature(w.model.stream).parameters:
            stream = w.model.stream(batch=w.x.shape[0], threads=threads)
        else:
            stream = w.model.stream(batch=w.x.shape[0])
        buf = np.empty((w.x.shape[0], w.model.output_size), np.float32)
        return lambda x: stream.step(x, out=buf)
    return lambda x: w.model.run(x, threads=threads)


def compare(w, seconds):
    calls = {t: caller(w, t) for t in (1, 2)}
    for t, call in calls.items():
        expected = w.model.run(w.x) if not w.stream else None
        got = call(w.x)
        if expected is not None:
            assert np.array_equal(got, expected), f"{w.name}: threads={t} differs from one thread"
    start = time.perf_counter()
    calls[1](w.x)
    cost = max(time.perf_counter() - start, 1e-6)
    burst = max(1, min(200, int(0.003 / cost)))
    times = {1: [], 2: []}
    order = [1, 2]
    shuffle = random.Random(0).shuffle
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times[1]) < 5:
        shuffle(order)
        for t in order:
            calls[t](w.x)
            for _ in range(burst):
                start = time.perf_counter()
                calls[t](w.x)
                times[t].append(time.perf_counter() - start)
    return {t: float(np.median(v)) for t, v in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    parser.add_argument("--hog", action="store_true", help="run a busy-loop process meanwhile")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    print(scaling.describe() + " (before)", flush=True)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.hog else None
    try:
        if hog:
            time.sleep(0.3)
            print(f"busy-loop process {hog.pid} running", flush=True)
        print("| workload | 1 thread | 2 threads | 2t/1t |\n|---|---:|---:|---:|")
        for name in args.workloads.split(","):
            w = workloads.get(name.strip())
            med = compare(w, args.seconds)
            print(f"| {w} | {med[1] * 1e6:,.1f} µs | {med[2] * 1e6:,.1f} µs | {med[1] / med[2]:.2f} |", flush=True)
    finally:
        if hog:
            hog.kill()
            hog.wait()
    print(scaling.describe() + " (after)", flush=True)


if __name__ == "__main__":
    main()
