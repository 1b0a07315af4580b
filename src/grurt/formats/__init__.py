"""Model files, chosen by file extension: grurt's own .npz format (:mod:`.npz`), and the ONNX and
Keras files their importers read (:mod:`grurt.importers`)."""
from __future__ import annotations

import os

from ..errors import UnsupportedModelError
from .npz import load_npz, read_header, save

__all__ = ["load", "save", "read_header"]


def load(path, weights=None, **options):
    """Load a model file: ``.npz`` (grurt), ``.onnx``, ``.keras`` or ``.h5``; returns a Model.

    ``weights`` ("float32", "bf16", "int8"; see :mod:`grurt.precision`) sets how the GRU
    weights are stored and multiplied; None keeps the file's (float32 unless a grurt file
    says otherwise)."""
    model = _load(path, **options)
    return model if weights is None else model.with_weights(weights)


def _load(path, **options):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        return load_npz(path, **options)
    if suffix == ".onnx":
        from ..importers.onnx import load_onnx
        return load_onnx(path, **options)
    if suffix in (".keras", ".h5", ".hdf5"):
        from ..importers.keras import load_keras
        return load_keras(path, **options)
    raise UnsupportedModelError(f"{path}: unknown model file type {suffix!r}; expected .npz, .onnx, .keras or .h5")
