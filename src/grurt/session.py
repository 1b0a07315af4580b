"""``InferenceSession``: onnxruntime's calling convention over a grurt model.

Code written against onnxruntime switches by one line::

    sess = grurt.InferenceSession("model.onnx")        # was: onnxruntime.InferenceSession(...)
    y, h_n = sess.run(None, {"x": x, "h0": h0})

The session presents exactly the file's inputs and outputs: their names, their order, their
shapes with the file's symbolic dims, their type strings, and its outputs in the file's layouts
(time-major where the file is time-major, GRU states (D, B, H), a raw GRU ``Y`` as
(T, D, B, H)). It runs the file through grurt's fused layers when their inputs and outputs are
the file's own (same names, same layouts: the importer's element ids say so), otherwise as the
general tensor graph of the file's ops.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple, Union

import numpy as np

from .errors import InputError, ModelFormatError

#: onnxruntime's type strings, by numpy dtype kind and size.
_TYPE_NAMES = {"float32": "tensor(float)", "float64": "tensor(double)", "float16": "tensor(float16)",
               "int64": "tensor(int64)", "int32": "tensor(int32)", "int16": "tensor(int16)", "int8": "tensor(int8)",
               "uint8": "tensor(uint8)", "uint16": "tensor(uint16)", "uint32": "tensor(uint32)",
               "uint64": "tensor(uint64)", "bool": "tensor(bool)"}


@dataclasses.dataclass(frozen=True)
class NodeArg:
    """An input or output of the file, as onnxruntime's ``NodeArg``: ``name``, ``shape`` (ints,
    dim-parameter names, None for a dim the file leaves unknown) and ``type`` (``"tensor(float)"``)."""

    name: str
    shape: list
    type: str

    def __repr__(self) -> str:
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


class InferenceSession:
    """An ONNX file (a path, or its bytes) with onnxruntime's ``InferenceSession`` interface.

    ``sess_options``, ``providers`` and ``provider_options`` are accepted and ignored: grurt
    runs on the CPU, and a call uses one thread (several threads may call one session).
    """

    def __init__(self, path_or_bytes: Union[str, bytes, "os.PathLike"], sess_options=None, providers=None,
                 provider_options=None, **kwargs):
        from .importers.onnx import session_model

        self._model, self._fused, source = session_model(path_or_bytes)
        self._inputs = _node_args(source, inputs=True)
        self._outputs = _node_args(source, inputs=False)
        self._output_index = {arg.name: i for i, arg in enumerate(self._outputs)}
        self._input_names = tuple(arg.name for arg in self._inputs)
        self._expected = tuple((_FEED_DTYPES.get(arg.type), len(arg.shape)) for arg in self._inputs)
        # the fused model of one input takes the array itself (name, dtype, rank); any other the feed by name
        self._single = ((self._input_names[0],) + self._expected[0]
                        if self._fused and len(self._inputs) == 1 else None)

    def get_inputs(self) -> list:
        return list(self._inputs)

    def get_outputs(self) -> list:
        return list(self._outputs)

    def get_overridable_initializers(self) -> list:
        return []

    def get_providers(self) -> list:
        return ["CPUExecutionProvider"]

    def get_provider_options(self) -> dict:
        return {"CPUExecutionProvider": {}}

    @property
    def model(self):
        """The grurt model that runs the file (a :class:`grurt.Model` or a general tensor graph)."""
        return self._model

    def run(self, output_names, input_feed: dict, run_options=None) -> list:
        """The outputs named in ``output_names`` (None: every output, in the file's order), for
        ``input_feed`` {input name: array}, as a list of numpy arrays."""
        if self._single is not None and type(input_feed) is dict and len(input_feed) == 1:
            # the common call, checked in a few operations: a fused model's one input, of the right dtype and rank
            value = input_feed.get(self._single[0])
            if type(value) is np.ndarray and value.dtype is self._single[1] and value.ndim == self._single[2]:
                outputs = self._model.run(value)
                if output_names is None and type(outputs) is not tuple:
                    return [outputs]
                return self._selected(output_names, outputs)
        try:
            values = [input_feed[name] for name in self._input_names]
        except (KeyError, TypeError):
            values = None
        if values is None or len(input_feed) != len(values):
            self._refuse_feed(input_feed)
        for value, (dtype, rank) in zip(values, self._expected):
            # `is` first: a builtin dtype is one object, and the check is on every call
            if type(value) is not np.ndarray or (value.dtype is not dtype and value.dtype != dtype) \
                    or value.ndim != rank:
                self._refuse_value(self._input_names[values.index(value)], value)
        return self._selected(output_names, self._model.run(values[0] if self._single is not None else input_feed))

    def _selected(self, output_names, outputs) -> list:
        if type(outputs) is not tuple:
            outputs = (outputs,)
        if output_names is None:
            return list(outputs)
        return [outputs[self._index(name)] for name in output_names]

    def _index(self, name) -> int:
        index = self._output_index.get(name)
        if index is None:
            raise InputError(f"unknown output name {name!r}: this model's outputs are "
                             f"{[arg.name for arg in self._outputs]}")
        return index

    def _refuse_feed(self, input_feed):
        if type(input_feed) is not dict:
            raise InputError(f"input_feed must be a dict {{input name: array}}, got {type(input_feed).__name__}")
        unknown = [name for name in input_feed if name not in self._input_names]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}: this model's inputs are {list(self._input_names)}")
        missing = [name for name in self._input_names if name not in input_feed]
        raise InputError(f"input {missing[0]!r} is missing from the feed: this model's inputs are "
                         f"{list(self._input_names)}")

    def _refuse_value(self, name, value):
        index = self._input_names.index(name)
        arg, dtype = self._inputs[index], self._expected[index][0]
        if type(value) is not np.ndarray:
            raise InputError(f"input {name!r} must be a numpy array ({arg.type}), got {type(value).__name__}")
        if value.dtype != dtype:
            raise InputError(f"input {name!r} must be {arg.type}, got {_TYPE_NAMES.get(str(value.dtype), value.dtype)}"
                             f": convert it with .astype(np.{dtype})")
        raise InputError(f"input {name!r} must have rank {len(arg.shape)} (shape {arg.shape}), got shape "
                         f"{value.shape}")


#: the numpy dtype a feed must have, by type string (onnxruntime does not convert either)
_FEED_DTYPES = {text: np.dtype(name) for name, text in _TYPE_NAMES.items()}


def _node_args(source, inputs: bool) -> Tuple[NodeArg, ...]:
    """The file's graph inputs (without initializers) or outputs, with shapes as the file declares
    them or, for outputs it leaves without a shape, as ONNX shape inference gives them."""
    graph = source.model.graph
    if inputs:
        initializers = {t.name for t in graph.initializer}
        infos = [info for info in graph.input if info.name not in initializers]
    else:
        inferred = _inferred_outputs(source.model)
        infos = [info if info.type.tensor_type.HasField("shape") else inferred.get(info.name, info)
                 for info in graph.output]
    return tuple(NodeArg(info.name, _shape(info), _type_name(info)) for info in infos)


def _inferred_outputs(model) -> dict:
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:          # shape inference is a convenience here: the declared types stand
        return {}
    return {info.name: info for info in inferred.graph.output}


def _shape(info) -> Optional[list]:
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]


def _type_name(info) -> str:
    from onnx import helper

    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"'{info.name}' has an element type grurt does not read "
                               f"({info.type.tensor_type.elem_type})") from None
    return _TYPE_NAMES.get(str(dtype), f"tensor({dtype})")
