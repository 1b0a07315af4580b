#!/usr/bin/env python
"""Model.run's cost per sequence as the batch grows: W1 and W2 shapes at B = 64 .. 10,000.

    python bench/batch_scaling.py [--workloads W1,W2] [--batches 64,1000,10000] [--rounds 5]

For each workload (workloads.py: W1 GRU(50) -> Dense(1), W2 2 x GRU(128) -> Dense(12), both
on the last of 100 steps), B copies of random sequences of its shape are run with threads=1
and threads=2, every (B, threads) once per round in a shuffled order (the machine's noise
hits all of them alike); printed: the median µs per sequence, wall-clock and CPU time of the
process (``time.process_time``: on a shared machine, the time this process ran, whatever
other processes took from it; with threads, the sum over them), each with its ratio to
B = 64 with the same threads. A batch larger than 64 runs in slices of 64 sequences (Plan.run); with
``--compare-unsliced`` each round also runs one pass over the whole batch
(``_kernels.set_slice_rows(0)``), the way it ran before. Every output row is checked against
PyTorch (max abs error <= 1e-4) once. The header and footer give the machine's scaling
(bench/scaling.py: 2.00x = two free cores): thread figures mean something only beside it.
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import datetime
import random
import time

import numpy as np
import torch

import scaling
import workloads
from grurt import _kernels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--batches", default="64,1000,10000", help="the first is the reference")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare-unsliced", action="store_true")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)
    print(f"# batch scaling, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {scaling.describe()}, before\n")
    print("| workload | B | threads | wall µs per sequence | vs B = 64 | CPU µs per sequence | vs B = 64 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.workloads.split(","):
        w = workloads.get(name)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((max(batches),) + w.x.shape[1:], dtype=np.float32)
        with torch.inference_mode():
            expected = w.torch_module(torch.from_numpy(x)).numpy()
        slice_rows = _kernels.set_slice_rows(64)
        ways = [(B, t, True) for B in batches for t in (1, 2)]
        if args.compare_unsliced:
            ways += [(B, t, False) for B in batches if B > 64 for t in (1, 2)]
        inputs = {B: np.ascontiguousarray(x[:B]) for B in batches}
        for B in batches:
            assert np.max(np.abs(w.model.run(inputs[B]) - expected[:B])) <= 1e-4, (name, B)
        times = {way: [] for way in ways}
        cpu = {way: [] for way in ways}
        order = random.Random(0)
        for _ in range(args.rounds):
            order.shuffle(ways)
            for B, threads, sliced in ways:
                _kernels.set_slice_rows(64 if sliced else 0)
                calls = max(1, 2000 // B)       # short calls: a few in a row
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    w.model.run(inputs[B], threads=threads)
                times[(B, threads, sliced)].append((time.perf_counter() - start) / calls / B * 1e6)
                cpu[(B, threads, sliced)].append((time.process_time() - start_cpu) / calls / B * 1e6)
        _kernels.set_slice_rows(slice_rows)
        for B, threads, sliced in sorted(times, key=lambda way: (not way[2], way[1], way[0])):
            med, base = (float(np.median(times[(B, threads, sliced)])),
                         float(np.median(times[(batches[0], threads, True)])))
            med_cpu, base_cpu = (float(np.median(cpu[(B, threads, sliced)])),
                                 float(np.median(cpu[(batches[0], threads, True)])))
            label = "" if sliced else " (one pass)"
            print(f"| {name} | {B:,}{label} | {threads} | {med:.1f} | {med / base:.2f} | {med_cpu:.1f} | "
                  f"{med_cpu / base_cpu:.2f} |", flush=True)
    print(f"\n- load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {scaling.describe()}, after")


if __name__ == "__main__":
    main()
