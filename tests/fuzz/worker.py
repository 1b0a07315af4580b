"""Loads mutated files in this process and reports each outcome as a JSON line on stdout.

Run by :mod:`tests.fuzz.harness` in a subprocess, so that a crash (a segfault in a C library)
kills this process only; the harness then knows, from the last ``begin`` line, which file did it.

    python tests/fuzz/worker.py '{"loader": ..., "seeds": [...], "seed": 0, "start": 0, "count": 100,
                                  "directory": ..., "timeout": 10}'
"""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mutate import mutate  # noqa: E402
from seeds import SUFFIXES, ZIP_LOADERS  # noqa: E402

#: Address space a worker may use: an allocation a size check should have refused becomes a
#: MemoryError (an escape) instead of swapping the machine.
MEMORY_LIMIT = 6 << 30


class Hang(BaseException):
    """Raised by the alarm: one file took longer than the per-file timeout."""


def mutated(loader: str, seeds: list, seed: int, index: int) -> bytes:
    """Mutation ``index`` of run ``seed``: the same bytes on every machine."""
    rng = random.Random(f"{loader}:{seed}:{index}")
    source = sorted(seeds)[rng.randrange(len(seeds))]
    with open(source, "rb") as handle:
        data = handle.read()
    return mutate(data, rng, loader in ZIP_LOADERS)


def load(loader: str, path: str):
    import grurt
    if loader in ("safetensors", "sdnpz"):
        return grurt.from_state_dict(path)
    return grurt.load(path)


def classify(loader: str, path: str, timeout: float):
    import warnings

    from grurt import GrurtError

    def on_alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load(loader, path)
        return "loaded", ""
    except Hang:
        return "hang", f"no result after {timeout} s"
    except GrurtError as exc:
        return "rejected", type(exc).__name__
    except Exception as exc:    # noqa: BLE001 - the point: anything else escaped grurt's checks
        return "escaped", f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv):
    job = json.loads(argv[1])
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):
        pass
    import grurt  # noqa: F401 - import once, before the first file (not timed)
    out = sys.stdout
    for index in range(job["start"], job["start"] + job["count"]):
        path = os.path.join(job["directory"], f"{index}{SUFFIXES[job['loader']]}")
        with open(path, "wb") as handle:
            handle.write(mutated(job["loader"], job["seeds"], job["seed"], index))
        out.write(json.dumps({"begin": index}) + "\n")
        out.flush()
        start = time.perf_counter()
        outcome, detail = classify(job["loader"], path, job["timeout"])
        out.write(json.dumps({"index": index, "outcome": outcome, "detail": detail,
                              "seconds": round(time.perf_counter() - start, 4)}) + "\n")
        out.flush()
        os.unlink(path)


if __name__ == "__main__":
    main(sys.argv)
