"""The machine's own scaling: a fixed single-threaded busy loop timed alone, then twice at once.

    python bench/scaling.py        prints e.g. "machine scaling 1.97x (alone 101 ms, two at once 103 ms)"

``measure()`` starts one process running a fixed float32 matrix-product loop (NumPy,
OpenBLAS on one thread), then two such processes together, and returns the throughput
ratio 2 × alone / together: 2.0 when the two cores are free, 1.0 when the second process
gets no core of its own (another process is busy). Every thread figure should be read
beside it: threads can only pay when this is near 2.
"""
import os
import subprocess
import sys
import time

CHILD = r"""
import os, sys, time
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np
a = np.random.default_rng(0).standard_normal((192, 192), dtype=np.float32)
b = a.copy()
start_at = float(sys.argv[1])
while time.time() < start_at:
    pass
start = time.perf_counter()
for _ in range(int(sys.argv[2])):
    np.matmul(a, b, out=b)
    b *= 0.01
print(time.perf_counter() - start)
"""


def _run(copies: int, iterations: int) -> float:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    start_at = time.time() + 0.4  # after the interpreters have started
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(start_at), str(iterations)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)]
    return max(float(p.communicate()[0]) for p in procs)


def measure(iterations: int = 300, repeats: int = 2):
    """(scaling, seconds alone, seconds for two at once): best of ``repeats`` each."""
    alone = min(_run(1, iterations) for _ in range(repeats))
    together = min(_run(2, iterations) for _ in range(repeats))
    return 2 * alone / together, alone, together


def describe() -> str:
    scaling, alone, together = measure()
    return (f"machine scaling {scaling:.2f}x (a fixed one-thread loop: alone {alone * 1e3:.0f} ms, "
            f"two at once {together * 1e3:.0f} ms each; 2.00x = two free cores)")


if __name__ == "__main__":
    print(describe())
