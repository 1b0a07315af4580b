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
from .fusion import Budget, interpret
from .importers.onnx import _import


def onnx_input_sizes(path):
    """(batch, steps) the ONNX file's sequence input fixes: an int where its shape is fixed, else None."""
    _, graph, probe = _import(path)
    data = [i.name for i in probe.graph.inputs if i.kind in ("sequence", "ids")]
    if not data:
        return None, None
    dims = {i.name: i.dims for i in graph.inputs}[data[0]]
    sizes = [d if isinstance(d, int) else None for d in dims[:2]]
    return (sizes[1], sizes[0]) if data[0] in probe.time_major else tuple(sizes)


def keras_input_sizes(path):
    """(batch, steps) the Keras file's declared input shape fixes: an int where it does, else None.
    For a graph, those of its first sequence input."""
    from .importers.keras import _chain
    from .importers.keras.layers import _batch_shape, model_layers
    config, _, _ = read_keras(path)
    try:
        _, batch_shape = _chain(config)
    except UnsupportedModelError:      # a graph
        declared = [_batch_shape(layer) for layer in model_layers(config)[2] if layer["class_name"] == "InputLayer"]
        batch_shape = next((shape for shape in declared if shape and len(shape) == 3), None)
    sizes = list(batch_shape or ())[:2] + [None, None]
    return tuple(size if isinstance(size, int) and not isinstance(size, bool) else None for size in sizes[:2])


def onnx_outputs(path, seq, initial_state=None, return_state=False, lengths=None):
    """Run the ONNX file with onnxruntime on batch-first inputs and shape the result as grurt does.

    Takes the arguments of :meth:`grurt.Model.run` (``seq`` one input, a list in input order or a
    dict by name). ``initial_state`` is for the GRUs of a chain whose states are graph inputs.
    States that are not graph outputs are None.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running ONNX files needs onnxruntime: pip install onnxruntime") from None
    budget = Budget()                    # one budget of element ids for both interpretations, as for one load
    source, graph, probe = _import(path, budget)
    inputs = {i.name: i for i in probe.graph.inputs}
    arrays, single = _onnx_inputs(probe.graph, seq)
    batch = next(iter(arrays.values())).shape[0]
    dims = {i.name: i.dims for i in graph.inputs}
    fixed = {}
    for name, a in arrays.items():
        kind = inputs[name].kind
        if kind in ("sequence", "ids"):
            given = (a.shape[1], batch) if name in probe.time_major else (batch, a.shape[1])
        elif kind == "state":
            given = (a.shape[1],) if probe.state_batch_axis[name] == 0 else (a.shape[0], a.shape[1])
        else:
            given = (batch,)
        for dim, size in zip(dims[name], given):
            if isinstance(dim, int) and dim != size:
                raise InputError(f"the ONNX graph's input '{name}' has fixed shape {dims[name]}; it cannot run "
                                 f"an input of shape {a.shape}")
            fixed[dim] = size
    run = interpret(graph, fixed, budget=budget)      # the exact element mapping at these sizes
    feeds = {name: np.zeros(run.inputs[name].shape, dtype) for name, dtype, _ in source.inputs}
    for name, a in arrays.items():
        if name in run.time_major:
            a = a.swapaxes(0, 1)
        elif inputs[name].kind == "state" and run.state_batch_axis[name] == 0:
            a = a.transpose(1, 0, 2)
        feeds[name] = np.ascontiguousarray(a, feeds[name].dtype)
    for k, state in enumerate(initial_state or ()):
        if state is None:
            continue
        if k in run.state_inputs:
            name, ids = run.state_inputs[k]
            feeds[name].reshape(-1)[ids.ravel() - run.inputs[name].min()] = np.asarray(state, np.float32).ravel()
        elif np.any(np.asarray(state) != 0):
            raise InputError(f"the ONNX graph takes no initial state for GRU layer {k}")
    steps = next((a.shape[1] for n, a in arrays.items() if inputs[n].kind in ("sequence", "ids")), None)
    if run.lengths_input:
        feeds[run.lengths_input][:] = steps if lengths is None else np.asarray(lengths).reshape(batch)
    elif lengths is not None and np.any(np.asarray(lengths) != steps):
        raise InputError("the ONNX graph takes no sequence_lens input")
    try:
        session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        results = dict(zip(run.outputs, session.run(list(run.outputs), feeds)))
    except Exception as exc:
        raise UnsupportedModelError(f"onnxruntime cannot run {path}: {exc}") from None
    canonicals = list(run.returned.values()) + run.states
    arrays_out = [np.zeros(c.size, np.float32) for c in canonicals]
    filled = [np.zeros(c.size, bool) for c in canonicals]
    for name, ids in run.outputs.items():      # scatter each output element to where grurt puts it
        values = results[name].ravel()
        for array, seen, canonical in zip(arrays_out, filled, canonicals):
            positions = _lookup(ids.ravel(), canonical.ravel())
            array[positions[positions >= 0]] = values[positions >= 0]
            seen[positions[positions >= 0]] = True
    shaped = [a.reshape(c.shape) if seen.all() else None for a, seen, c in zip(arrays_out, filled, canonicals)]
    outs, states = shaped[:len(run.returned)], shaped[len(run.returned):]
    if single:
        outs = [o[:, 0] if output.directions else o[0] for o, output in zip(outs, run.graph.outputs)]
        states = [s[:, 0] if s is not None else None for s in states]
    out = outs[0] if len(outs) == 1 else tuple(outs)
    return (out, states) if return_state else out


def _onnx_inputs(graph, seq):
    """{input name: batched array} from what :meth:`grurt.Model.run` takes, and whether the batch axis was
    left out."""
    names = graph.input_names
    if isinstance(seq, dict):
        if set(seq) != set(names):
            raise InputError(f"the inputs are {list(names)}, got {sorted(seq)}")
        values = dict(seq)
    elif len(names) == 1:
        values = {names[0]: seq}
    elif isinstance(seq, (list, tuple)) and len(seq) == len(names):
        values = dict(zip(names, seq))
    else:
        raise InputError(f"this model takes {len(names)} inputs {list(names)}: a list in that order or a dict")
    arrays, single = {}, None
    for spec in graph.inputs:
        a = np.asarray(values[spec.name])
        base = {"sequence": 2, "vector": 1, "state": 2, "ids": 1}[spec.kind]
        if spec.kind == "ids" and a.dtype.kind not in "iu":
            raise InputError(f"input '{spec.name}' must be integer token ids, got {a.dtype}")
        if a.ndim not in (base, base + 1) or (spec.kind not in ("ids", "state") and a.shape[-1] != spec.size):
            raise InputError(f"input '{spec.name}' has shape {a.shape}, which does not fit {spec.describe()}")
        single = a.ndim == base
        a = (a[:, None] if spec.kind == "state" else a[None]) if single else a
        arrays[spec.name] = a if spec.kind == "ids" else a.astype(np.float32)
    return arrays, single


def _lookup(ids, canonical):
    """Position of each id in ``canonical`` (1-D); -1 where it is not there."""
    order = np.argsort(canonical)
    found = np.searchsorted(canonical[order], ids)
    found[found >= canonical.size] = 0
    return np.where(canonical[order][found] == ids, order[found], -1)


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
    if isinstance(seq, dict):      # a graph's batched inputs by name; several outputs as a tuple
        out = model.predict({name: np.asarray(value) for name, value in seq.items()}, verbose=0)
        return tuple(np.asarray(o, np.float32) for o in out) if isinstance(out, (list, tuple)) \
            else np.asarray(out, np.float32)
    x = np.asarray(seq, np.float32)
    out = np.asarray(model.predict(x[None] if x.ndim == 2 else x, verbose=0), np.float32)
    return out[0] if x.ndim == 2 else out


def torchscript_outputs(path, seq) -> np.ndarray:
    """A TorchScript module's output on ``seq`` (its first output when it returns several); any other .pt
    file is an UnsupportedModelError saying what to verify against."""
    import torch

    try:
        module = torch.jit.load(path, map_location="cpu")   # TorchScript: no arbitrary unpickling
    except (RuntimeError, ValueError):
        raise UnsupportedModelError(
            f"{path} is not a TorchScript file (torch.jit.load cannot read it): verify runs the source model, and "
            "a state dict (or a pickled module) holds weights without the forward pass. Export the module to "
            "ONNX, torch.onnx.export(module, example_input, 'model.onnx', dynamo=False), or save it as "
            "TorchScript, torch.jit.script(module).save('model.pt'), and verify against that") from None
    with torch.no_grad():
        out = module(torch.from_numpy(seq))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.numpy()
