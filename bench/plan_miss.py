"""The cost of a plan-cache miss of the general-graph workloads W9 and W10 (bench/workloads_graph.py):
``make_plan`` for a new input signature (batch sizes 1..), in µs, and the memory a model holds after
holding plans of 4 signatures (the growth of the process's resident memory from before its first plan,
so measured before any timing). Run it against two checkouts to compare:

    PYTHONPATH=src python bench/plan_miss.py W10
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import workloads_graph  # noqa: E402

from grurt.tensor_plan import make_plan, signature  # noqa: E402


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def main():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {cpu}  load {os.getloadavg()}")
    for name in sys.argv[1:] or ("W9", "W10"):
        w = workloads_graph.get(name)
        model = w.model
        # W9: batch sizes 1..8; W10 takes batch 1 and one hop only (fixed dims): the same signature planned
        # afresh, which does a new signature's work
        sigs = []
        for batch in range(1, 9):
            arrays = {t.name: np.repeat(a, batch, axis=0) if name == "W9" else a
                      for t, a in zip(model.graph.inputs, w.example)}
            sigs.append(signature(model._inputs(arrays)))
        gc.collect()
        before = _rss_kib()
        kept = [make_plan(model.graph, sig, weights=model.weights) for sig in sigs[:4]]
        gc.collect()
        grown = _rss_kib() - before
        times = []
        for sig in sigs[4:] + sigs[:4]:
            start = time.perf_counter()
            make_plan(model.graph, sig, weights=model.weights)
            times.append((time.perf_counter() - start) * 1e6)
        del kept
        print(f"{name}: plan miss median {statistics.median(times):.0f} µs (min {min(times):.0f}, "
              f"{len(times)} signatures); resident memory grown by 4 plans {grown} KiB")


if __name__ == "__main__":
    main()
