"""``TensorModel``: a :class:`~grurt.tensor_graph.TensorGraph` ready to run, planned per input
signature (:mod:`grurt.tensor_plan`), the plans kept in a bounded, thread-safe LRU cache."""
from __future__ import annotations

import collections
import operator
import threading

import numpy as np

from . import precision
from .errors import InputError
from .graph_model import by_name, input_array
from ._kernels import InputSignature, _memory_limit
from .chain_runner import check_threads
from .ops.recurrent import call_threads
from .ops import BOOL, FLOAT, INT
from .tensor_graph import TensorGraph
from .tensor_plan import make_plan, signature
from .tensor_pool import TensorStreamPool
from .tensor_stream import TensorStream

#: The dtype each declared input dtype computes in.
_DTYPES = {"float32": FLOAT, "int64": INT, "bool": BOOL}
#: What each declared input dtype accepts (numpy dtype kinds).
_ACCEPTS = {"float32": "fiub", "int64": "iu", "bool": "b"}


def _input_rule(declared):
    """What a call checks of an input, worked out once: (name, dtype kinds accepted, computing dtype, rank,
    (a getter of the fixed dims of a shape, their sizes) or None, ((axis, parameter) of each named dim), the
    declared input)."""
    axes = [a for a, d in enumerate(declared.dims) if isinstance(d, int)]
    fixed = None
    if axes:
        getter = operator.itemgetter(*axes)
        fixed = (getter, getter(declared.dims))
    named = tuple((a, d) for a, d in enumerate(declared.dims) if isinstance(d, str))
    return (declared.name, _ACCEPTS[declared.dtype], _DTYPES[declared.dtype], len(declared.dims), fixed, named,
            declared)


class TensorModel:
    """A model that is a general tensor graph: ONNX ops (:mod:`grurt.ops`) over named N-D
    tensors, its GRUs on grurt's kernels. Build one with :func:`grurt.load` (an ``.onnx`` file
    that grurt's fused layers do not cover) or :func:`grurt.from_torch`.

    ``run`` takes one array (a model of one input), a list in :attr:`input_names` order or a
    dict by name, and returns one array or a tuple in :attr:`output_names` order. A model is
    planned once per signature (the shapes and dtypes of the inputs): the ``cache_size``
    plans used last are kept. A TensorModel is immutable and may be shared by threads.
    """

    def __init__(self, graph: TensorGraph, cache_size: int = 16, weights: str = "float32"):
        if not isinstance(graph, TensorGraph):
            raise TypeError(f"TensorModel expects a grurt.tensor_graph.TensorGraph, got {type(graph).__name__}")
        if type(cache_size) is not int or cache_size < 1:
            raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
        self.graph = graph
        #: how the GRU weights are stored and multiplied: "float32", "bf16" or "int8" (grurt.precision)
        self.weights = precision.check_mode(weights)
        self._cache_size = cache_size
        self._plans = collections.OrderedDict()     # signature -> Plan, the last used last
        self._lock = threading.Lock()
        self._hits = self._misses = 0
        self._rules = tuple(_input_rule(i) for i in graph.inputs)
        self._recent = None         # (InputSignature, plan) of the plan used last: a call of it skips checks

    @property
    def input_names(self):
        return self.graph.input_names

    @property
    def output_names(self):
        return self.graph.output_names

    def __repr__(self) -> str:
        mode = "" if self.weights == "float32" else f" weights={self.weights}"
        return (f"<grurt.TensorModel inputs={list(self.input_names)} outputs={list(self.output_names)}{mode}: "
                f"{len(self.graph.nodes)} nodes>")

    def describe(self) -> str:
        """The graph, node by node."""
        return self.graph.describe()

    def __reduce__(self):
        return (TensorModel, (self.graph, self._cache_size, self.weights))

    def with_weights(self, weights: str) -> "TensorModel":
        """This model with its GRU weights stored and multiplied in another mode ("float32", "bf16"
        or "int8"; docs/precision.md), as a new TensorModel; the other ops stay float32."""
        if precision.check_mode(weights) == self.weights:
            return self
        return TensorModel(self.graph, self._cache_size, weights)

    def run(self, inputs, threads: int = 1):
        """The outputs for ``inputs`` (see the class's text): float tensors are float32, integer
        ones int64. Inputs are checked against the declared dtypes and dims; an InputError
        names the input. ``threads`` > 1 lets each GRU layer run on up to that many threads, as
        :meth:`grurt.Model.run` does (when that is measured to pay), and each convolution of
        enough work (about 1M multiply-adds); results are the same bits."""
        if threads != 1 or type(threads) is not int:
            check_threads(threads)
        recent = self._recent
        arrays = None
        if recent is not None:
            outputs = recent[0].outputs(inputs, threads)      # a plan run natively as a whole: one C call
            if outputs is not None:
                with self._lock:
                    self._hits += 1
                return self._result(outputs)
            arrays = recent[0].frozen(inputs)
        if arrays is None:
            arrays = self._inputs(inputs)
            plan = self.plan(arrays)
        else:                       # the signature of the plan used last: its checks passed when it was made
            plan = recent[1]
            with self._lock:
                self._hits += 1
        if threads == 1 and type(threads) is int:
            return self._result(plan.run(arrays))
        with call_threads(threads):
            return self._result(plan.run(arrays))

    __call__ = run

    def cached_plan(self, arrays):
        """The cached plan of the signature of ``arrays`` (marked used last), or None: a plan made is a
        signature checked, so a caller that finds one may skip the input checks (grurt.model.GraphModel)."""
        key = signature(arrays)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                self._hits += 1
            return plan

    def plan(self, arrays):
        """The plan for checked input arrays (from the cache, or made now); ``run`` calls it again without the
        checks while the signature stays the same."""
        plan = self.cached_plan(arrays)
        key = signature(arrays)
        if plan is None:
            with self._lock:
                self._misses += 1
            plan = make_plan(self.graph, key, weights=self.weights)   # outside the lock: other signatures keep running
            with self._lock:
                self._plans[key] = plan
                self._plans.move_to_end(key)
                while len(self._plans) > self._cache_size:
                    self._plans.popitem(last=False)
        recent = self._recent
        if recent is None or recent[1] is not plan:
            whole = () if plan.whole is None or plan.whole[0].writes_inputs else plan.whole[:3]
            self._recent = (InputSignature(self.input_names, key, *whole), plan)
        return plan

    def cache_info(self):
        """(hits, misses, plans kept, capacity) of the plan cache."""
        with self._lock:
            return collections.namedtuple("CacheInfo", "hits misses size capacity")(
                self._hits, self._misses, len(self._plans), self._cache_size)

    def stream(self, batch: int = 1, *, time_axes=None, static=None) -> TensorStream:
        """A :class:`~grurt.tensor_stream.TensorStream` of this model: ``step`` one frame, ``run`` a
        block, its states inside (docs/streaming-and-serving.md, "Streaming a general graph").
        ``time_axes`` ({input name: axis}) says which axis of each input is time (the inputs not
        listed are static, given once per stream in ``static``); by default, the dim named like
        time, else axis 1 of the one input of rank >= 3. A node that mixes the frames raises
        UnsupportedModelError naming it."""
        return TensorStream(self, batch, time_axes, static)

    def stream_pool(self, capacity: int, *, time_axes=None) -> TensorStreamPool:
        """A :class:`~grurt.tensor_pool.TensorStreamPool`: the states of up to ``capacity`` streaming
        sessions, any subset of them stepped together as one batch (``time_axes`` as in :meth:`stream`)."""
        return TensorStreamPool(self, capacity, time_axes)

    def _result(self, outputs):
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _inputs(self, inputs):
        """The inputs as read-only arrays of their computing dtype, in input order, their dims
        checked against the declared ones (each dim parameter one size across inputs)."""
        given = by_name(inputs, self.input_names)
        arrays, sizes = [], {}
        for name, kinds, dtype, rank, fixed, named, declared in self._rules:
            value = given[name]
            if type(value) is not np.ndarray:
                value = input_array(value, f"input '{name}'")
            if value.dtype.kind not in kinds:
                raise InputError(f"input '{name}' takes {declared.dtype} values, got dtype {value.dtype}"
                                 + (" (cast it if the values are whole numbers)"
                                    if declared.dtype == "int64" and value.dtype.kind == "f" else ""))
            shape = value.shape
            if len(shape) != rank or (fixed is not None and fixed[0](shape) != fixed[1]):
                dims = declared.dims
                raise InputError(f"input '{name}' must have shape ({', '.join(map(str, dims))}"
                                 f"{',' if len(dims) == 1 else ''}), got {shape}")
            for axis, dim in named:
                first = sizes.setdefault(dim, (shape[axis], name, axis))
                if first[0] != shape[axis]:
                    raise InputError(f"input '{name}' has size {shape[axis]} on axis {axis} ('{dim}'), but input "
                                     f"'{first[1]}' has size {first[0]} there: one size per dim parameter")
            if value.dtype != dtype or not value.flags.c_contiguous:
                needed = value.size * dtype.itemsize
                if needed > _memory_limit():
                    raise InputError(f"input '{name}' of shape {shape} would need {needed} bytes as {dtype}, more "
                                     f"than the limit of {_memory_limit()} (grurt.model.MEMORY_LIMIT_BYTES)")
                if dtype is INT and value.dtype == np.uint64 and value.size and value.max() > np.iinfo(np.int64).max:
                    raise InputError(f"input '{name}' holds integers beyond the int64 range")
                value = np.ascontiguousarray(value, dtype)
            else:
                value = value.view()
            value.setflags(write=False)                 # no op writes into an input
            arrays.append(value)
        return arrays
