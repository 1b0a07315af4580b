"""Running a model file's source framework, for ``grurt verify`` and ``grurt convert --check``.

Each runner takes a batch-first ``seq`` as :meth:`grurt.Model.run` does and shapes the
framework's result the way grurt returns it, so that the two compare element by element.
The frameworks (onnxruntime, Keras, torch) are imported lazily, by the runner that needs them.
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from .errors import InputError, UnsupportedModelError
from .importers.keras import _major, read_keras
from .importers.onnx import _import, _interpret
from .importers.onnx.graph import _lookup


def onnx_input_sizes(path):
    """(batch, steps) the ONNX file's sequence input fixes: an int where its shape is fixed, else None."""
    source, probe = _import(path)
    dims = {name: dims for name, _, dims in source.inputs}[probe.sequence_input]
    sizes = [d if isinstance(d, int) else None for d in dims[:2]]
    return tuple(sizes) if probe.batch_first else (sizes[1], sizes[0])


def onnx_outputs(path, seq, initial_state=None, return_state=False, lengths=None):
    """Run the ONNX file with onnxruntime on batch-first ``seq`` and shape the result as grurt does.

    Takes the arguments of :meth:`grurt.Model.run`. States that are not graph outputs are None.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running ONNX files needs onnxruntime: pip install onnxruntime") from None
    source, probe = _import(path)
    x = np.asarray(seq, np.float32)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[2] != probe.spec.input_size:
        raise InputError(f"input must be (B, T, {probe.spec.input_size}) or (T, {probe.spec.input_size}), "
                         f"got shape {np.shape(seq)}")
    batch, steps = x.shape[:2]
    dims = {name: dims for name, _, dims in source.inputs}
    fixed = {}
    for dim, size in zip(dims[probe.sequence_input], (batch, steps) if probe.batch_first else (steps, batch)):
        if isinstance(dim, int) and dim != size:
            raise InputError(f"the ONNX graph's input '{probe.sequence_input}' has fixed shape "
                             f"{dims[probe.sequence_input]}; it cannot run a batch of {batch} × {steps} steps")
        fixed[dim] = size
    run = _interpret(source, fixed)      # the exact element mapping at this size
    feeds = {name: np.zeros(run.inputs[name].shape, dtype) for name, dtype, _ in source.inputs}
    feeds[run.sequence_input] = x if run.batch_first else x.transpose(1, 0, 2)
    for k, state in enumerate(initial_state or ()):
        if k in run.state_inputs:
            name, ids = run.state_inputs[k]
            feeds[name].reshape(-1)[ids.ravel() - run.inputs[name].min()] = np.asarray(state, np.float32).ravel()
        elif np.any(np.asarray(state) != 0):
            raise InputError(f"the ONNX graph takes no initial state for GRU layer {k}")
    if run.lengths_input:
        feeds[run.lengths_input][:] = steps if lengths is None else np.asarray(lengths).reshape(batch)
    elif lengths is not None and np.any(np.asarray(lengths) != steps):
        raise InputError("the ONNX graph takes no sequence_lens input")
    try:
        session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        results = dict(zip(run.outputs, session.run(list(run.outputs), feeds)))
    except Exception as exc:
        raise UnsupportedModelError(f"onnxruntime cannot run {path}: {exc}") from None
    canonicals = [run.tip] + run.states
    arrays = [np.zeros(c.size, np.float32) for c in canonicals]
    filled = [np.zeros(c.size, bool) for c in canonicals]
    for name, ids in run.outputs.items():      # scatter each output element to where grurt puts it
        values = results[name].ravel()
        for array, seen, canonical in zip(arrays, filled, canonicals):
            positions = _lookup(ids.ravel(), canonical)
            array[positions[positions >= 0]] = values[positions >= 0]
            seen[positions[positions >= 0]] = True
    spec = probe.spec
    out = arrays[0].reshape((batch, steps, spec.output_size) if spec.returns_sequence else (batch, spec.output_size))
    states = [a.reshape(c.shape) if seen.all() else None for a, seen, c in zip(arrays[1:], filled[1:], run.states)]
    if single:
        out = out[0]
        states = [s[:, 0] if s is not None else None for s in states]
    return (out, states) if return_state else out


def keras_outputs(path, seq):
    """``model.predict(seq)`` computed by Keras itself, shaped as :meth:`grurt.Model.run` returns it.

    Imports Keras lazily (with the torch or jax backend when TensorFlow is absent). A file saved
    by Keras 2 is run by tf_keras when installed; without it, one that uses ``hard_sigmoid``
    raises ImportError rather than be checked against Keras 3's different numbers.
    """
    path = os.fspath(path)
    config, _, version = read_keras(path)
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None:
        for backend in ("torch", "jax"):
            if importlib.util.find_spec(backend):
                os.environ["KERAS_BACKEND"] = backend
                break
    if _major(version) < 3 and importlib.util.find_spec("tf_keras"):
        import tf_keras as keras
    else:
        import keras
    if _major(version) < _major(keras.__version__) and "hard_sigmoid" in json.dumps(config):
        raise ImportError(f"{path} was saved by Keras {version} and uses hard_sigmoid, which Keras "
                          f"{keras.__version__} computes differently (x/6 + 0.5, not 0.2·x + 0.5): "
                          "checking it needs tf_keras")
    model = keras.models.load_model(path, compile=False)
    x = np.asarray(seq, np.float32)
    out = np.asarray(model.predict(x[None] if x.ndim == 2 else x, verbose=0), np.float32)
    return out[0] if x.ndim == 2 else out


def torchscript_outputs(path, seq) -> np.ndarray:
    """A TorchScript module's output on ``seq`` (its first output when it returns several)."""
    import torch

    module = torch.jit.load(path, map_location="cpu")   # TorchScript: no arbitrary unpickling
    with torch.no_grad():
        out = module(torch.from_numpy(seq))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.numpy()
