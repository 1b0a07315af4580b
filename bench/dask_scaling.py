"""How ``grurt.dask.predict`` scales from one Dask worker to two, beside how the machine scales.

Scores 20,000 sequences with W1's shape (GRU(50) -> Dense(1) on the last step, T = 100, I = 1,
random weights) on a ``distributed.LocalCluster`` of 1 worker and then of 2 workers (one
process and one thread each, ``threads=1``), inputs generated and persisted on the workers
first so that only the scoring is timed, and prints the times and the ratio. For scale it also
prints the in-process time of ``model.run`` over the same blocks and how the machine itself
scales: the same fixed NumPy busy loop (elementwise, no BLAS) in one process alone, then in two
processes at once.

    pip install "grurt[dask]"
    python bench/dask_scaling.py [--sequences 20000] [--chunk 250] [--repeat 3]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import numpy as np

import grurt
import grurt.dask
from grurt.spec import GRU, Dense, ModelSpec

T, I, H = 100, 1, 50


def w1_model(seed: int = 0) -> grurt.Model:
    """GRU(50) -> Dense(1) on the last state, random weights of a trained model's scale."""
    rng = np.random.default_rng(seed)
    gru = GRU(W=rng.normal(size=(1, 3 * H, I)), R=rng.normal(size=(1, 3 * H, H)) * (0.4 / np.sqrt(H)),
              B=rng.normal(size=(1, 6 * H)) * 0.3, linear_before_reset=True, return_sequences=False)
    return grurt.Model(ModelSpec(I, (gru, Dense(W=rng.normal(size=(1, H)) / np.sqrt(H), b=[0.0]))))


def time_cluster(model, workers: int, sequences: int, chunk: int, repeat: int) -> float:
    """Best wall time of predict(...).compute() on a LocalCluster of ``workers`` single-thread workers."""
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        x = da.random.default_rng(1).standard_normal((sequences, T, I), chunks=(chunk, -1, -1),
                                                      dtype=np.float32).persist()
        wait(x)
        grurt.dask.predict(model, x[:workers * 8]).compute()     # warm up: grurt imported, model sent
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            client.compute(grurt.dask.predict(model, x, threads=1), sync=True)
            best = min(best, time.perf_counter() - start)
        return best


def time_local(model, sequences: int, chunk: int, repeat: int) -> float:
    """Best time of model.run over the same blocks in this process (one BLAS thread)."""
    x = np.random.default_rng(1).standard_normal((sequences, T, I), dtype=np.float32)
    best = float("inf")
    with grurt.dask.single_blas_thread():
        for _ in range(repeat):
            start = time.perf_counter()
            for i in range(0, sequences, chunk):
                model.run(x[i:i + chunk])
            best = min(best, time.perf_counter() - start)
    return best


def _busy(barrier, results, iterations: int):
    a = np.random.default_rng(0).random(4096)                   # 32 KB: stays in L1/L2
    barrier.wait()
    start = time.perf_counter()
    for _ in range(iterations):
        np.sin(a, out=a)
        a *= 1.0001
    results.put(time.perf_counter() - start)


def machine_scaling(iterations: int = 40_000) -> tuple[float, float]:
    """(one process alone, two processes at once: the slower one), seconds for the same busy loop."""
    ctx = multiprocessing.get_context("spawn")
    times = []
    for n in (1, 2):
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_busy, args=(barrier, results, iterations)) for _ in range(n)]
        for p in procs:
            p.start()
        elapsed = [results.get() for _ in procs]
        for p in procs:
            p.join()
        times.append(max(elapsed))
    return times[0], times[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")          # for the busy-loop children too
    model = w1_model()
    blocks = -(-args.sequences // args.chunk)
    print(f"W1 shape GRU(50) -> Dense(1), {args.sequences} sequences x {T} steps, {blocks} blocks of "
          f"{args.chunk}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    local = time_local(model, args.sequences, args.chunk, args.repeat)
    print(f"  in process, model.run per block:  {local:.3f} s  ({local / args.sequences * 1e6:.1f} us/sequence)")
    one = time_cluster(model, 1, args.sequences, args.chunk, args.repeat)
    print(f"  LocalCluster, 1 worker:            {one:.3f} s")
    two = time_cluster(model, 2, args.sequences, args.chunk, args.repeat)
    print(f"  LocalCluster, 2 workers:           {two:.3f} s   speed-up {one / two:.2f}x")
    alone, pair = machine_scaling()
    print(f"machine: NumPy busy loop, 1 process {alone:.3f} s, 2 processes at once {pair:.3f} s each: "
          f"throughput x{2 * alone / pair:.2f} from the second process (2.00 = perfect)")


if __name__ == "__main__":
    main()
