"""Any ``torch.nn.Module`` with an example input → grurt, through the ONNX importer.

``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, opset 17) traces the module's
``forward`` on the example into ONNX, which :mod:`grurt.importers.onnx` reads like any file: one
graph importer for both. Names: the inputs take the names of ``forward``'s parameters (``input_0``,
``input_1``, ... for ``*args``); the outputs are ``output`` for a tensor, ``output_0``,
``output_1``, ... for a tuple or list of tensors.

The module is exported twice: once at the example's sizes, which tells the importer's reading of
each input (a sequence batch first or time first, a state (L·D, B, H), a vector, token ids), then
with those batch and time axes dynamic, so that the importer checks at two probe sizes that the
graph means one model whatever the sizes (a hard-coded time index is refused, as for any file).

A module the fused layers do not cover (attention, broadcasting, reductions, 2-D convolutions, ...)
is read as a general graph (:mod:`grurt.importers.onnx.general`), its free axes found on the graph
(:func:`export_general`), its GRUs with their wiring fused where the graph allows
(:func:`grurt.fusion.fuse_regions`).
"""
from __future__ import annotations

import inspect
import itertools
import os
import tempfile

import numpy as np

from ..errors import UnsupportedModelError

OPSET = 17


def graph_from_torch(module, example_input):
    """The :class:`~grurt.fusion.Fused` layers of ``module`` traced on ``example_input`` or, when the
    fused layers do not cover it, the :class:`~grurt.tensor_graph.TensorGraph` of its ops, the regions around its
    GRUs as ``grurt.Chain`` nodes (:func:`grurt.fusion.fuse_regions`, at the example's sizes)."""
    import torch

    from ..fusion import fuse_regions
    from .onnx import _import

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    args = tuple(_tensor(torch, a, i) for i, a in enumerate(args))
    names = _input_names(module, len(args))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            returned = module(*args)
        output_names = _output_names(returned)
        with tempfile.TemporaryDirectory(prefix="grurt-export-") as folder:
            path = os.path.join(folder, "module.onnx")
            _export(torch, module, args, path, names, output_names, None)
            try:
                *_, fixed = _import(path)         # static: interpreted at the example's sizes
                _export(torch, module, args, path, names, output_names, _dynamic_axes(fixed, args, names))
                *_, result = _import(path)
            except UnsupportedModelError:         # beyond the fused layers: the general graph of the module's ops,
                graph = export_general(torch, module, args, path, names, output_names)    # its GRUs fused where
                shapes = dict(zip(names, (tuple(arg.shape) for arg in args)))             # the regions allow
                sizes = {d: shapes[t.name][axis] for t in graph.inputs for axis, d in enumerate(t.dims)
                         if isinstance(d, str)}
                result = fuse_regions(graph, sizes)[0]
    finally:
        module.train(was_training)
    return result


def _tensor(torch, value, index):
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise UnsupportedModelError(f"example_input[{index}]: expected a tensor or an array of numbers, "
                                        f"got {type(value).__name__}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.float() if tensor.dtype.is_floating_point else tensor.long()


def _input_names(module, count):
    """The forward's parameter names for ``count`` positional arguments."""
    parameters = list(inspect.signature(module.forward).parameters.values())
    names = []
    for index in range(count):
        if index < len(parameters) and parameters[index].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.append(parameters[index].name)
        elif any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters):
            names.append(f"input_{index}")
        else:
            raise UnsupportedModelError(f"example_input gives {count} arguments, {type(module).__name__}.forward "
                                        f"takes {len(parameters)}")
    return names


def _output_names(returned):
    import torch

    if isinstance(returned, torch.Tensor):
        return ["output"]
    if isinstance(returned, (tuple, list)) and returned and all(isinstance(r, torch.Tensor) for r in returned):
        return [f"output_{i}" for i in range(len(returned))]
    raise UnsupportedModelError("forward must return a tensor or a tuple/list of tensors, got "
                                f"{type(returned).__name__}")


def _dynamic_axes(result, args, names):
    """Batch and time axes of each input, as the importer read them at the example's sizes."""
    kinds = {i.name: i.kind for i in result.graph.inputs}
    axes = {}
    for name, arg in zip(names, args):
        kind = kinds.get(name)
        if kind in ("sequence", "ids"):
            batch, time = (1, 0) if name in result.time_major else (0, 1)
            axes[name] = {batch: "batch", time: "time"}
        elif kind == "state":
            axes[name] = {result.state_batch_axis[name]: "batch"}
        elif kind == "vector":
            axes[name] = {0: "batch"}
        elif result.lengths_input == name:
            axes[name] = {0: "batch"}
    return axes


def export_general(torch, module, args, path, names, output_names):
    """Export ``module`` to ``path`` for the general graph, its free axes dynamic, and return the graph.

    Which axes are free (batch, time, frames, ...) is found on the graph itself. It is exported
    with every axis dynamic (if the exporter then writes control flow, an ``If`` for a squeeze of
    an axis of size 1, with the axes of size 1 fixed); an axis is free when the graph can be
    planned at another size of it (a size a weight fixes cannot), and axes that can only change
    together (a batch shared by a sequence and a state) share one dim parameter. The module is
    then exported again with just those axes dynamic, so that the file declares its real sizes
    (and a wrong feature size is refused by name when the model is called).
    """
    from .onnx.general import tensor_graph_from_source
    from .onnx.proto import _open

    shapes = [tuple(arg.shape) for arg in args]
    for fixed in (0, 1):            # the sizes that stay as in the example: none, then those of 1
        every = {name: {axis: f"{name}_{axis}" for axis, size in enumerate(shape) if size != fixed}
                 for name, shape in zip(names, shapes)}
        _export(torch, module, args, path, names, output_names, every)
        try:
            graph = tensor_graph_from_source(_open(path))
            break
        except UnsupportedModelError:
            if fixed:
                raise
    dtypes = [np.dtype(np.float32 if arg.dtype.is_floating_point else np.int64) for arg in args]
    free = _free_axes(graph, shapes, dtypes, [(i, axis) for i, name in enumerate(names) for axis in every[name]])
    axes = {name: {} for name in names}
    for (index, axis), (first, first_axis) in free.items():
        axes[names[index]][axis] = f"{names[first]}_{first_axis}"
    _export(torch, module, args, path, names, output_names, axes)
    return tensor_graph_from_source(_open(path))


def _free_axes(graph, shapes, dtypes, axes):
    """{(input index, axis): (input index, axis) naming its dim parameter} of the ``axes`` the graph
    can be planned at other sizes of: alone, or together with axes of the same size in the example
    (the largest such set that plans; the first of them names it)."""
    from ..errors import GrurtError
    from ..tensor_plan import make_plan

    def plans(changed):
        for grow in (lambda size: size + 1, lambda size: 2 * size):
            signature = [(tuple(grow(size) if (i, a) in changed else size for a, size in enumerate(shape)), dtype)
                         for i, (shape, dtype) in enumerate(zip(shapes, dtypes))]
            try:
                make_plan(graph, signature)
                return True
            except GrurtError:
                pass
        return False

    free = {axis: axis for axis in axes if plans({axis})}
    by_size = {}
    for i, a in axes:
        if (i, a) not in free:
            by_size.setdefault(shapes[i][a], []).append((i, a))
    for group in by_size.values():
        while len(group) > 1:
            # the largest set of these axes that plans (all subsets of a small group, else the whole group)
            sizes = range(len(group), 1, -1) if len(group) <= 8 else (len(group),)
            linked = next((s for k in sizes for s in itertools.combinations(group, k) if plans(set(s))), None)
            if linked is None:
                break
            free.update((axis, linked[0]) for axis in linked)
            group = [axis for axis in group if axis not in linked]
    return free


def _export(torch, module, args, path, names, output_names, dynamic_axes):
    try:
        torch.onnx.export(module, args, path, input_names=names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
    except Exception as exc:     # torch raises many kinds of errors on modules it cannot trace
        raise UnsupportedModelError(f"torch.onnx.export cannot trace {type(module).__name__}: "
                                    f"{type(exc).__name__}: {exc}") from None
