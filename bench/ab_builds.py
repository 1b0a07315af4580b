#!/usr/bin/env python
"""Two builds of grurt on W1-W8 (and the general graphs W9, W10, W10s20), interleaved: is the new one slower, are its
outputs the same bits?

    python bench/ab_builds.py OLD_SRC [--new NEW_SRC] [--rounds N] [--workloads W1,W2,W10]

OLD_SRC and NEW_SRC (default: this checkout's src/) are the ``src`` directories of two checkouts
with their kernels built (``python setup.py build_ext --inplace`` in each), e.g. a worktree of
the commit before a change::

    git worktree add /tmp/old fc6aed9 && (cd /tmp/old && python setup.py -q build_ext --inplace)
    python bench/ab_builds.py /tmp/old/src

Each build runs in a worker process of its own (``PYTHONPATH=<src>``), which builds the
workloads of ``workloads.py`` with its grurt (the same seeded PyTorch weights) and times what
``compare.py`` times for grurt: ``Model.run``, W3/W6s a stream step, W7 a stream-pool step (W9-W10s20: the
graphs of ``workloads_graph.py``, a W10 call one hop with its states carried, as ``compare_graph.py`` times them).
Rounds alternate the two workers in a shuffled order (one turn: an untimed warm-up call, then
a ~5 ms burst of timed calls, ``time.perf_counter`` per call); while one worker runs, the other
waits on its pipe. The table gives per-call medians over all turns and new / old (< 1: the new
build is faster), with the median of the per-round ratios beside it (a round's two turns are
seconds apart, so that ratio is robust to drifting load). Before timing, each worker computes
its outputs (``w.x``; for a stream, the steps over ``check_frames`` from a fresh state) and the
parent compares them bit for bit (``np.array_equal``; when they differ, the table gives the largest difference).
"""
import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W6s", "W7", "W8")
GRAPHS = ("W9", "W10", "W10s20")
BURST_SECONDS = 0.005


# ---- the worker: one build of grurt, commands on stdin, one JSON line per answer ----

def worker() -> None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    sys.path.insert(0, HERE)
    import grurt
    import workloads

    callers = {}

    def fresh(w):
        if w.pool is not None:
            return workloads.pool_stepper(w)
        if w.stream:
            return workloads.stream_stepper(w.model, batch=w.x.shape[0])
        return w.model.run

    def answer(value):
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    answer({"grurt": grurt.__file__})
    def graph(name):
        """(call, input) of a general graph: W9's run, a W10 hop with its states carried."""
        import workloads_graph as wg

        w = wg.get(name)
        if name == "W9":
            return lambda x: [w.model.run(x)], w.example[0]
        step = wg.stepper(lambda arrays: list(w.model.run(dict(zip(wg.INPUT_NAMES, arrays)))))
        return lambda hop: step(*hop), wg.hops(w.frames, 1, seed=11)[0]

    def burst(call, x):
        call(x)                               # the other build evicted the caches
        times, end = [], time.perf_counter() + BURST_SECONDS
        while True:
            start = time.perf_counter()
            call(x)
            now = time.perf_counter()
            times.append(now - start)
            if now >= end:
                return times

    for line in sys.stdin:
        command, name, *rest = line.split()
        if name in GRAPHS:
            if command == "outputs":
                call, x = graph(name)
                np.save(rest[0], np.concatenate([np.ravel(o) for o in call(x)]))
                callers[name] = graph(name)
                answer({"ok": True})
            else:
                answer(burst(*callers[name]))
            continue
        w = workloads.get(name)
        if command == "outputs":          # bit-for-bit check: written to the file named
            call = fresh(w)
            if w.stream:
                out = np.stack([np.array(call(np.ascontiguousarray(w.check_frames[:, t])))
                                for t in range(w.check_frames.shape[1])], axis=1)
            else:
                out = np.asarray(call(w.x))
            np.save(rest[0], out)
            callers[name] = fresh(w)
            answer({"ok": True})
        elif command == "turn":
            answer(burst(callers[name], w.x))


class Worker:
    def __init__(self, src: str):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(src), OPENBLAS_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE)
        self.module = self.read()["grurt"]

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.module if hasattr(self, 'module') else '?'} stopped")
        return json.loads(line)

    def ask(self, *words):
        self.process.stdin.write(" ".join(words) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="src directory of the old build")
    parser.add_argument("--new", default=os.path.join(HERE, "..", "src"), help="src directory of the new build")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    if "--worker" in sys.argv:
        return 0
    builds = {"old": Worker(args.old), "new": Worker(args.new)}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# grurt old vs new build, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    for label, w in builds.items():
        print(f"# {label}: {w.module}")
    print("\n| workload | old µs | new µs | new / old (medians) | new / old (median of rounds) | outputs |")
    print("|---|---:|---:|---:|---:|---|")
    rng = random.Random(0)
    worst = 0.0
    for name in args.workloads.split(","):
        saved = {}
        for label, w in builds.items():
            saved[label] = os.path.join("/tmp", f"ab_{os.getpid()}_{label}_{name}.npy")
            w.ask("outputs", name, saved[label])
        old_out, new_out = np.load(saved["old"]), np.load(saved["new"])
        same = "bit-identical" if np.array_equal(old_out, new_out) else (
            f"max diff {np.max(np.abs(old_out.astype(np.float64) - new_out)):.0e}" if old_out.shape == new_out.shape
            else "DIFFERENT")
        for path in saved.values():
            os.remove(path)
        times = {label: [] for label in builds}
        per_round = []
        for _ in range(args.rounds):
            order = list(builds)
            rng.shuffle(order)
            medians = {}
            for label in order:
                burst = builds[label].ask("turn", name)
                times[label] += burst
                medians[label] = np.median(burst)
            per_round.append(medians["new"] / medians["old"])
        old, new = (float(np.median(times[label])) * 1e6 for label in ("old", "new"))
        ratio = float(np.median(per_round))
        worst = max(worst, ratio)
        print(f"| {name} | {old:,.1f} | {new:,.1f} | {new / old:.3f} | {ratio:.3f} | "
              f"{same} |", flush=True)
    for w in builds.values():
        w.close()
    print(f"\nslowest new / old (median of rounds): {worst:.3f}; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        sys.exit(main())
