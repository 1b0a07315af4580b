"""Fuzz grurt's file loaders: ``python -m tests.fuzz --loader h5 --count 1000`` (from the repository root).

Two kinds of mutation (``--mode``, both by default): ``bytes`` (bit flips, chunks, truncation:
:mod:`mutate`) and ``meaning`` (a field at a boundary, an attribute of the wrong type, a false
size: :mod:`meaning`). Every mutated file must load or be refused with a GrurtError, and what
loads must run (and stream one frame) or be refused with a GrurtError; files that make grurt
raise anything else, hang, crash or hog memory are saved under tests/data/fuzz/<loader>/
(--save-dir) so that tests/test_fuzz.py keeps them as regression files. Exit code 1 if any was found.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import BAD, run  # noqa: E402
from seeds import SUFFIXES, write_seeds  # noqa: E402
from worker import sweep_cases  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--loader", action="append", choices=sorted(SUFFIXES),
                        help="loader to fuzz (repeatable; default: all)")
    parser.add_argument("--count", type=int, default=1000, help="mutated files per loader and mode (default 1000)")
    parser.add_argument("--mode", action="append", choices=("bytes", "meaning", "sweep"),
                        help="kind of mutation (repeatable; default: bytes and meaning); sweep: every numeric "
                             "field of every seed set to every boundary value, in order (--count 0: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="run seed: the same seed mutates the same way")
    parser.add_argument("--batch", type=int, default=250, help="files per worker process")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one file may take")
    parser.add_argument("--save-dir", default=os.path.join(ROOT, "tests", "data", "fuzz"),
                        help="where failing files go, one folder per loader ('' to not save)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="grurt-fuzz-seeds-") as directory:
        seeds = write_seeds(directory)
        found = 0
        for loader in args.loader or sorted(SUFFIXES):
            if loader not in seeds:
                print(f"{loader}: skipped (its writer is not installed)")
                continue
            save_dir = os.path.join(args.save_dir, loader) if args.save_dir else None
            for mode in args.mode or ("bytes", "meaning"):
                count = args.count or (sum(n for _, n in sweep_cases(loader, seeds[loader])) if mode == "sweep"
                                       else 1000)
                if not count:
                    print(f"{loader}: no sweep (its files hold no JSON or ONNX attributes)")
                    continue
                summary = run(loader, seeds[loader], count, seed=args.seed, batch=args.batch,
                              timeout=args.timeout, save_dir=save_dir, mode=mode)
                print(summary.line(), flush=True)
                for index, outcome, detail, saved in summary.failures:
                    print(f"  {outcome} #{index}: {detail}" + (f" -> {saved}" if saved else ""))
                found += sum(summary.counts[k] for k in BAD)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
