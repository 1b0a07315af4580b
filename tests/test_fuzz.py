"""Hostile files: the fuzz regression corpus and short fuzz runs of every loader.

* tests/data/fuzz/<loader>/ holds files that once crashed, hung or escaped a loader with an
  exception other than GrurtError (found by ``python -m tests.fuzz``, most against the loaders
  of grurt 0.1.0, which read HDF5 with libhdf5): each must now load (and run) or be refused with
  a GrurtError.
* The short runs load a fixed number of seeded mutations of small valid files per loader, in a
  worker subprocess (memory capped, a timeout per file), so that a crash fails the test instead
  of killing pytest, and run what loads: byte mutations (slow), and mutations of meaning (a
  field at a boundary, an attribute of the wrong type, a false size: tests/fuzz/meaning.py), in
  the default run for the loaders whose seeds need no Keras (about 20 s). The long run is
  ``python -m tests.fuzz --count 3000`` (docs/hostile-files.md).
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
from seeds import KERAS_LOADERS, SUFFIXES, write_seeds  # noqa: E402
from worker import exercise, load  # noqa: E402

CORPUS = HERE / "data" / "fuzz"
#: Mutated files per loader in the short byte run (about 10 ms each, plus ~2 s of worker start).
SHORT_RUN = 150
#: Mutations of meaning per loader in the short run of the default test suite (about 20 ms each).
SHORT_MEANING = 30
_NEEDS = {"onnx": "onnx", "keras": "pyfive", "h5": "pyfive", "safetensors": "safetensors", "pt": "torch"}
_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


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
            model = load(loader, path)
            ran = exercise(model)
        except grurt.GrurtError:
            return
    assert isinstance(model, (grurt.Model, grurt.TensorModel)) and ran


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return write_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def light_seeds(tmp_path_factory):
    """The seeds that need no Keras (writing those takes ~30 s)."""
    return write_seeds(tmp_path_factory.mktemp("fuzz-light-seeds"), keras=False)


def _check(summary, count):
    print(summary.line())
    assert summary.total == count
    assert summary.counts["rejected"] >= count // 4                   # the mutations do reach the checks
    assert not summary.failures, summary.failures


@pytest.mark.parametrize("loader", sorted(set(SUFFIXES) - set(KERAS_LOADERS)))
def test_short_meaning_fuzz_run(loader, light_seeds):
    if loader not in light_seeds:
        pytest.skip(f"no writer for {loader} seeds is installed")
    _check(run(loader, light_seeds[loader], SHORT_MEANING, seed=0, batch=SHORT_MEANING, timeout=10.0,
               env=_ENV, mode="meaning"), SHORT_MEANING)


@pytest.mark.slow
@pytest.mark.parametrize("loader", KERAS_LOADERS)
def test_short_meaning_fuzz_run_of_keras_files(loader, seeds):
    if loader not in seeds:
        pytest.skip(f"no writer for {loader} seeds is installed")
    _check(run(loader, seeds[loader], 4 * SHORT_MEANING, seed=0, batch=4 * SHORT_MEANING, timeout=10.0,
               env=_ENV, mode="meaning"), 4 * SHORT_MEANING)


@pytest.mark.slow
@pytest.mark.parametrize("loader", sorted(SUFFIXES))
def test_short_fuzz_run(loader, seeds):
    if loader not in seeds:
        pytest.skip(f"no writer for {loader} seeds is installed")
    summary = run(loader, seeds[loader], SHORT_RUN, seed=0, batch=SHORT_RUN, timeout=10.0, env=_ENV)
    print(summary.line())
    assert summary.total == SHORT_RUN
    assert summary.counts["rejected"] > SHORT_RUN // 2            # the mutations do reach the checks
    assert not summary.failures, summary.failures


# ---- the limits of grurt.limits, each refused before the content is inflated or parsed ----

def _zip(path, members):
    import zipfile
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def test_every_keras_member_is_bounded(tmp_path, monkeypatch):
    pytest.importorskip("pyfive")
    import grurt.importers.keras.files as keras_importer
    config = '{"class_name": "Sequential", "config": {"layers": []}}'
    monkeypatch.setattr(keras_importer, "MAX_HDF5_BYTES", 1 << 20)
    bomb = _zip(tmp_path / "bomb.keras", {"config.json": config, "model.weights.h5": b"\0" * (4 << 20)})
    assert bomb.stat().st_size < 20_000                                 # 4 MiB of zeros, deflated
    with pytest.raises(grurt.ModelFormatError, match="model.weights.h5 is larger than 1 MiB"):
        grurt.load(bomb)


def test_json_nesting_is_bounded(tmp_path):
    pytest.importorskip("pyfive")
    deep = '{"class_name": "Sequential", "config": {"layers": [], "x": ' + "[" * 80 + "]" * 80 + "}}"
    with pytest.raises(grurt.ModelFormatError, match="nests deeper than 64 levels"):
        grurt.load(_zip(tmp_path / "deep.keras", {"config.json": deep, "model.weights.h5": b""}))


def test_state_dict_members_and_counts_are_bounded(tmp_path, monkeypatch):
    import numpy as np

    import grurt.importers.state_dict as state_dict
    path = tmp_path / "state.npz"
    np.savez(path, **{f"m{k}.weight": np.zeros((2, 2), np.float32) for k in range(5)})
    monkeypatch.setattr(state_dict, "MAX_ARRAYS", 4)
    with pytest.raises(grurt.ModelFormatError, match="5 members, more than 4"):
        grurt.from_state_dict(path)
    monkeypatch.setattr(state_dict, "MAX_ARRAYS", 100)
    monkeypatch.setattr(state_dict, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(grurt.ModelFormatError, match="member 'm0.weight.npy' is larger than"):
        grurt.from_state_dict(path)
