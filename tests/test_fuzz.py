"""Hostile files: the fuzz regression corpus and a short fuzz run of every loader.

* tests/data/fuzz/<loader>/ holds files that once crashed, hung or escaped a loader with an
  exception other than GrurtError (found by ``python -m tests.fuzz``, most against the loaders
  of grurt 0.1.0, which read HDF5 with libhdf5): each must now be refused with a GrurtError.
* The short run loads a fixed number of seeded mutations of small valid files per loader, in a
  worker subprocess, so that a crash fails the test instead of killing pytest. The long run is
  ``python -m tests.fuzz --count 1000`` (README).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest

import grurt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fuzz"))

from harness import run  # noqa: E402
from seeds import SUFFIXES, write_seeds  # noqa: E402

CORPUS = HERE / "data" / "fuzz"
#: Mutated files per loader in the short run (about 10 ms each, plus ~2 s of worker start).
SHORT_RUN = 150
_NEEDS = {"onnx": "onnx", "keras": "pyfive", "h5": "pyfive", "safetensors": "safetensors"}


def _load(loader, path):
    if loader in ("safetensors", "sdnpz"):
        return grurt.from_state_dict(path)
    return grurt.load(path)


def _corpus():
    return sorted((folder.name, path) for folder in CORPUS.iterdir() if folder.is_dir()
                  for path in folder.iterdir() if path.suffix == SUFFIXES.get(folder.name))


@pytest.mark.parametrize("loader, path", _corpus(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_regression_file_loads_or_is_refused_with_a_grurt_error(loader, path):
    """Some of these files only broke libhdf5 (a mutated B-tree or heap grurt never reads): pyfive
    reads them, and the model is whatever the intact weights say. Anything else than a Model or a
    GrurtError fails the test."""
    if loader in _NEEDS and importlib.util.find_spec(_NEEDS[loader]) is None:
        pytest.skip(f"{_NEEDS[loader]} is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = _load(loader, path)
        except grurt.GrurtError:
            return
    assert isinstance(model, grurt.Model)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return write_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.mark.parametrize("loader", sorted(SUFFIXES))
def test_short_fuzz_run(loader, seeds):
    if loader not in seeds:
        pytest.skip(f"no writer for {loader} seeds is installed")
    summary = run(loader, seeds[loader], SHORT_RUN, seed=0, batch=SHORT_RUN, timeout=10.0,
                  env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    print(summary.line())
    assert summary.total == SHORT_RUN
    assert summary.counts["rejected"] > SHORT_RUN // 2            # the mutations do reach the checks
    assert not summary.failures, summary.failures
