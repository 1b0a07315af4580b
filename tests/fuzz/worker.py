"""Loads mutated files in this process, runs what loads, and reports each outcome as a JSON line.

Run by :mod:`tests.fuzz.harness` in a subprocess, so that a crash (a segfault in a C library)
kills this process only; the harness then knows, from the last ``begin`` line, which file did it.
The process's address space is capped (RLIMIT_AS) and each file has a timeout. A model that
loads is run (``run`` on a small input of the shapes it takes, then ``stream().step`` on one
frame): a GrurtError there is a refusal too, anything else an escape.

    python tests/fuzz/worker.py '{"loader": ..., "mode": "bytes" or "meaning", "seeds": [...], "seed": 0,
                                  "start": 0, "count": 100, "directory": ..., "timeout": 10}'
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

from meaning import mutate_meaning, sweep  # noqa: E402
from mutate import mutate  # noqa: E402
from seeds import SUFFIXES, ZIP_LOADERS  # noqa: E402

#: Address space a worker may use: an allocation a size check should have refused becomes a
#: MemoryError (an escape) instead of swapping the machine.
MEMORY_LIMIT = 6 << 30
#: Growth of the worker's peak memory (above what it had before the file) that marks a file as
#: a memory hog: more than grurt's limits let a file allocate (a 2**28-element constant, float64).
MEMORY_FLAG_BYTES = 3 << 30
#: Time steps of the inputs a loaded model runs on (more when a layer's window needs them).
STEPS = 5


class Hang(BaseException):
    """Raised by the alarm: one file took longer than the per-file timeout."""


def sweep_cases(loader: str, seeds: list) -> list:
    """(seed file, number of cases) of the sweep of each seed (meaning.sweep), in order; [] for a
    loader without one."""
    cases = []
    for source in sorted(seeds):
        with open(source, "rb") as handle:
            result = sweep(loader, handle.read(), 2**62)
        if result is None:
            return []
        cases.append((source, result[1]))
    return cases


def mutated(loader: str, seeds: list, seed: int, index: int, mode: str = "bytes") -> bytes:
    """Mutation ``index`` of run ``seed``: the same bytes on every machine (byte mutations, or
    mutations of meaning, :mod:`meaning`; ``sweep``: case ``index`` of every numeric field of every
    seed set to every boundary value, in order, round and round; a mutation of meaning for loaders
    without a sweep)."""
    if mode == "sweep":
        cases = sweep_cases(loader, seeds)
        if cases:
            index %= sum(n for _, n in cases)
            for source, n in cases:
                if index < n:
                    with open(source, "rb") as handle:
                        return sweep(loader, handle.read(), index)[0]
                index -= n
        mode = "meaning"
    rng = random.Random(f"{loader}:{seed}:{index}" if mode == "bytes" else f"{loader}:{mode}:{seed}:{index}")
    source = sorted(seeds)[rng.randrange(len(seeds))]
    with open(source, "rb") as handle:
        data = handle.read()
    if mode == "meaning":
        try:
            return mutate_meaning(loader, data, rng)
        except Exception:   # noqa: BLE001 - a mutator that cannot parse what it mutated: bytes instead
            pass
    return mutate(data, rng, loader in ZIP_LOADERS)


def load(loader: str, path: str):
    import grurt
    if loader in ("safetensors", "sdnpz", "pt"):
        return grurt.from_state_dict(path)
    return grurt.load(path)


def exercise(model) -> str:
    """``run`` on a small input of the shapes the model takes, then ``stream().step`` on one frame;
    returns what happened ('ran', or the GrurtError that refused it). Anything else propagates."""
    from grurt import GrurtError
    try:
        model.run(_inputs(model))
    except GrurtError as exc:
        return f"run refused ({type(exc).__name__})"
    try:
        stream = model.stream()
        stream.step(_frame(model))
    except GrurtError as exc:
        return f"ran; stream refused ({type(exc).__name__})"
    return "ran and streamed"


def _inputs(model):
    """{name: array} for every input, batch 1: (1, T, F) sequences, (1, F) vectors, (D, 1, H) states,
    (1, T) ids, and any dims of a TensorModel's inputs (parameters get STEPS)."""
    import numpy as np
    from grurt.spec import min_steps
    rng = np.random.default_rng(0)
    graph = model.graph
    if hasattr(graph.inputs[0], "dims"):              # a TensorModel: dims and dtypes of its own
        inputs = {}
        for i in graph.inputs:
            shape = tuple(d if isinstance(d, int) else STEPS for d in i.dims)
            if np.prod(shape, dtype=float) > 1e6:
                shape = tuple(min(d, 8) for d in shape)
            inputs[i.name] = (rng.normal(size=shape).astype(np.float32) if i.dtype == "float32"
                              else np.ones(shape, i.dtype))
        return inputs
    steps = STEPS
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "fixed_steps"):
        from grurt.spec import fixed_input_steps
        steps = fixed_input_steps(spec) or min(max(STEPS, min_steps(spec)), 4096)
    inputs = {}
    for i in graph.inputs:
        if i.kind == "sequence":
            inputs[i.name] = rng.normal(size=(1, steps, i.size)).astype(np.float32)
        elif i.kind == "ids":
            inputs[i.name] = rng.integers(0, max(1, model.vocabulary or 1), size=(1, steps))
        elif i.kind == "vector":
            inputs[i.name] = rng.normal(size=(1, i.size)).astype(np.float32)
        else:
            inputs[i.name] = rng.normal(size=(i.directions, 1, i.size // i.directions)).astype(np.float32)
    return inputs


def _frame(model):
    """One frame of the model's (first) sequence input, as stream().step takes it."""
    inputs = {name: value[:, 0] if value.ndim >= 2 and value.shape[0] == 1 else value
              for name, value in _inputs(model).items()}
    return next(iter(inputs.values())) if len(inputs) == 1 else inputs


def classify(loader: str, path: str, timeout: float):
    import warnings

    from grurt import GrurtError

    def on_alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    stage = "load"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load(loader, path)
            stage = "run"
            outcome = "loaded", exercise(model)
    except Hang:
        outcome = "hang", f"no result after {timeout} s ({stage})"
    except GrurtError as exc:
        outcome = "rejected", type(exc).__name__
    except Exception as exc:    # noqa: BLE001 - the point: anything else escaped grurt's checks
        outcome = "escaped", f"{stage}: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    if peak - before > MEMORY_FLAG_BYTES and outcome[0] != "escaped":
        return "memory", f"peak memory grew by {(peak - before) / 2**30:.1f} GiB ({outcome[0]}: {outcome[1]})"
    return outcome


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
            handle.write(mutated(job["loader"], job["seeds"], job["seed"], index, job.get("mode", "bytes")))
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
