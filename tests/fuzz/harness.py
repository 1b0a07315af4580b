"""Drives the fuzz workers: batches of mutated files per loader, each batch in a subprocess.

Outcomes per file: ``loaded`` (the mutation left a valid model, which then ran or was refused
at run with a GrurtError), ``rejected`` (a GrurtError: what every malformed file must give),
``escaped`` (any other exception, at load or at run), ``hang`` (longer than the per-file
timeout), ``crash`` (the worker process died, e.g. a segfault) and ``memory`` (the worker's peak
memory grew by more than grurt's limits allow one file). The files that escaped, hung, crashed
or hogged memory are written to ``save_dir`` (tests/data/fuzz/<loader>/ from the command line) so
that they become regression files.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
BAD = ("escaped", "hang", "crash", "memory")


@dataclass
class Summary:
    loader: str
    mode: str = "bytes"
    counts: collections.Counter = field(default_factory=collections.Counter)
    failures: list = field(default_factory=list)        # (index, outcome, detail, saved path or None)
    seconds: float = 0.0
    slowest: float = 0.0
    slowest_index: int = -1
    ran: int = 0             # loaded files whose run (and stream step) went through

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {self.counts[k]}" + (f" (ran {self.ran})" if k == "loaded" else "")
                          for k in ("loaded", "rejected", *BAD) if self.counts[k])
        return (f"{self.loader} ({self.mode}): {self.total} mutated files in {self.seconds:.1f} s ({parts}); "
                f"slowest file {self.slowest * 1e3:.0f} ms (#{self.slowest_index})")


def _save(loader, seeds, seed, index, outcome, save_dir, mode="bytes"):
    if not save_dir:
        return None
    sys.path.insert(0, HERE)
    from seeds import SUFFIXES
    from worker import mutated
    os.makedirs(save_dir, exist_ok=True)
    tag = "" if mode == "bytes" else f"{mode}-"
    path = os.path.join(save_dir, f"{outcome}-{tag}{seed}-{index}{SUFFIXES[loader]}")
    with open(path, "wb") as handle:
        handle.write(mutated(loader, seeds, seed, index, mode))
    return path


def run(loader: str, seeds: list, count: int, seed: int = 0, batch: int = 250, timeout: float = 10.0,
        save_dir=None, env=None, progress=None, mode: str = "bytes") -> Summary:
    """Load (and run) ``count`` mutations of ``seeds`` with ``loader``, ``batch`` per worker process;
    ``mode`` "bytes" mutates bytes (:mod:`mutate`), "meaning" fields (:mod:`meaning`)."""
    summary = Summary(loader, mode)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"grurt-fuzz-{loader}-") as directory:
        index, end = 0, count
        while index < end:
            job = {"loader": loader, "mode": mode, "seeds": list(seeds), "seed": seed, "start": index,
                   "count": min(batch, end - index), "directory": directory, "timeout": timeout}
            # a batch may take timeout per file at most, plus the imports
            limit = 60 + job["count"] * 0.5 + timeout
            try:
                proc = subprocess.run([sys.executable, os.path.join(HERE, "worker.py"), json.dumps(job)],
                                      capture_output=True, text=True, timeout=limit, env=env)
                stdout, returncode = proc.stdout, proc.returncode
                stderr = proc.stderr
            except subprocess.TimeoutExpired as exc:
                stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                returncode, stderr = None, ""
            in_flight, last = None, index - 1
            for line in stdout.splitlines():
                record = json.loads(line)
                if "begin" in record:
                    in_flight = record["begin"]
                    continue
                in_flight, last = None, record["index"]
                summary.counts[record["outcome"]] += 1
                summary.ran += record["outcome"] == "loaded" and record["detail"].startswith("ran")
                if record["seconds"] > summary.slowest:
                    summary.slowest, summary.slowest_index = record["seconds"], record["index"]
                if record["outcome"] in BAD:
                    saved = _save(loader, seeds, seed, record["index"], record["outcome"], save_dir, mode)
                    summary.failures.append((record["index"], record["outcome"], record["detail"], saved))
            if in_flight is not None or returncode != 0:
                if in_flight is None and last < index:     # died before the first file: a broken setup
                    raise RuntimeError(f"fuzz worker for {loader} failed: {stderr[-2000:]}")
                culprit = in_flight if in_flight is not None else last + 1
                outcome = "hang" if returncode is None else "crash"
                detail = f"worker killed after {limit:.0f} s" if returncode is None else \
                    f"worker exited with {returncode}: {stderr.strip().splitlines()[-1:] }"
                summary.counts[outcome] += 1
                saved = _save(loader, seeds, seed, culprit, outcome, save_dir, mode)
                summary.failures.append((culprit, outcome, detail, saved))
                last = culprit
            index = last + 1
            if progress:
                progress(summary)
    summary.seconds = time.perf_counter() - started
    return summary
