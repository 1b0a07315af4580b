"""Model files, chosen by file extension: grurt's own .npz format (:mod:`.npz`), and the ONNX and
Keras files their importers read (:mod:`grurt.importers`)."""
from __future__ import annotations

import os

from ..errors import InputError, UnsupportedModelError
from .npz import load_npz, read_header
from .npz import save as save_npz

__all__ = ["load", "save", "read_header"]

#: files that hold PyTorch weights or modules, which grurt.load cannot read on its own
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


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
    if suffix in _TORCH_SUFFIXES:
        raise UnsupportedModelError(
            f"{path}: a PyTorch file holds weights, not the forward pass, so grurt.load cannot read it: a state dict "
            f"(torch.save(model.state_dict(), ...), or .safetensors) loads with grurt.from_state_dict({path!r}); a "
            "torch.nn.Module converts with grurt.from_torch(module), or grurt.from_torch(module, example_input) when "
            "it has its own forward")
    raise UnsupportedModelError(f"{path}: unknown model file type {suffix!r}; expected .npz, .onnx, .keras or .h5 "
                                "(PyTorch: grurt.from_torch or grurt.from_state_dict)")


def save(model, path, metadata: dict | None = None) -> None:
    """Write a Model (or ModelSpec, or Graph) to ``path`` in grurt's .npz format; ``path`` must end in ``.npz``
    (the only format :func:`load` reads back as grurt's own)."""
    name = os.fspath(path)
    if not name.lower().endswith(".npz"):
        raise InputError(f"grurt.save writes grurt's .npz format; {name!r} does not end in .npz (grurt does "
                         "not write .onnx, .keras or .pt files): name it e.g. "
                         f"{os.path.splitext(name)[0] + '.npz'!r}")
    save_npz(model, name, metadata)
