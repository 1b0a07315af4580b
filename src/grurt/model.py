"""``Model``: a validated spec, planned once, run many times — the top of the package's runtime.

``Model(spec)`` of a :class:`~grurt.spec.ModelSpec` (or of a :class:`~grurt.graph.Graph` that is one path) is a
:class:`~grurt.chain_runner.ChainRunner`, whose common call is checked and run in C; any other Graph is lowered
onto a tensor graph (:mod:`grurt.graph_lower`: its chains ``grurt.Chain`` nodes) that the planner runs, one variant
per kind of call (lengths, initial states given, return_state; streams: :mod:`grurt.graph_stream`), its inputs
checked as :class:`~grurt.graph_model.GraphInputs` declares them. ``MEMORY_LIMIT_BYTES`` here is the knob users
set; the modules below read it through ``_kernels._memory_limit()``.
"""
from __future__ import annotations

import os

import numpy as np

from . import chain_runner, precision
from .chain_runner import ChainRunner, _allocating, check_threads, reduced_arrays
from .chain_runner import Stream, StreamPool   # noqa: F401 (public: grurt.model.Stream, grurt.model.StreamPool)
from .errors import InputError, ModelFormatError
from .graph import Graph
from .graph_lower import lower
from .graph_model import GraphInputs
from .graph_stream import GraphStream
from .ops.recurrent import call_threads
from .spec import Embedding, ModelSpec, Scale
from .tensor_model import TensorModel


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


#: A call that would need more bytes than this (input copy, workspace, output) is refused
#: before anything is allocated. Defaults to the machine's physical memory.
MEMORY_LIMIT_BYTES = _physical_memory()


class Model:
    """A GRU model ready to run. Build one with :func:`grurt.load` or the ``from_*`` functions

    A Model is immutable and may be shared by any number of threads: each call allocates
    its own workspace, and the kernels run without the GIL.

    ``weights`` ("float32", the default; "bf16"; "int8") is how the GRU input and recurrent
    weights are stored and multiplied (:mod:`grurt.precision`); ``spec`` holds their float32
    values (for a model read from a reduced-precision file, the values the file stores).
    ``stored`` (internal: from a file) maps (layer index, or node index of a graph, "W" or "R") to the arrays the mode
    stores, when they are known exactly; they are otherwise computed from ``spec``.

    ``Model(spec)`` is a chain model (:class:`ChainModel`) or a graph model (:class:`GraphModel`), by what ``spec``
    is; both are Models.
    """

    def __new__(cls, spec=None, weights: str = "float32", stored=None, file_states=None):
        if cls is Model:
            if isinstance(spec, Graph):
                cls = ChainModel if spec.as_chain() is not None else GraphModel
            elif isinstance(spec, ModelSpec):
                cls = ChainModel
            else:
                raise TypeError(f"Model expects a grurt.graph.Graph or grurt.spec.ModelSpec, got {type(spec).__name__}")
        return object.__new__(cls)

    @classmethod
    def chain(cls, layers, input_size=None, mask_value=None) -> "Model":
        """A Model of canonical layers applied in order (``grurt.layers`` builds them from any
        framework's weights). ``input_size`` defaults to that of the first GRU, Dense or Scale.
        Put ``LastStep()`` after the last GRU to keep only the last time step."""
        layers = tuple(layers)
        if layers and isinstance(layers[0], Embedding):      # the model takes token ids
            return Model(ModelSpec(None, layers, mask_value=mask_value))
        for layer in layers if input_size is None else ():
            input_size = layer.size if isinstance(layer, Scale) else getattr(layer, "input_size", None)
            if input_size is not None:
                break
        if input_size is None:
            raise ModelFormatError("Model.chain: no GRU, Dense or Scale layer tells the input size; pass input_size=")
        return Model(ModelSpec(input_size, layers, mask_value=mask_value))

    def run(self, seq, initial_state=None, return_state=False, lengths=None, threads=1):
        """Run the model on ``seq``: (T, I) for one sequence or (B, T, I) for a batch.

        A model with several inputs takes a list of them in :attr:`input_names` order, or a dict
        by name (any model takes the dict); each input has its batch axis, or none has. Several
        outputs come back as a tuple in :attr:`output_names` order. A model that is a graph takes
        ``initial_state`` and gives ``return_state`` per GRU node, in the graph's order
        (``model.graph.gru_nodes``); a GRU whose h0 is a tensor of the graph takes None there.

        Returns float32 output shaped as the model defines ((B, T, F) if the model returns a
        sequence, (B, F) otherwise; the batch axis is dropped for a (T, I) input). With
        ``return_state=True`` returns ``(output, states)``: one (directions, B, H) array per
        GRU layer ((directions, H) for a single sequence). ``initial_state`` takes the same
        form. ``lengths`` (B,) gives each sequence's valid length for padded batches.
        ``threads`` > 1 lets each GRU layer run on up to that many threads of grurt's worker
        pool, when that is measured to be faster (docs/performance-and-threads.md); results are bit for bit
        those of one thread.
        """
        raise NotImplementedError    # ChainModel (the chain runner's) and GraphModel run

    def stream(self, batch: int = 1, threads: int = 1, static=None):
        """A stream that feeds this model ``batch`` sequences one frame (or block of frames) at a time
        (docs/streaming-and-serving.md); ``static`` gives a graph's static inputs once per stream."""
        raise NotImplementedError    # ChainModel and GraphModel stream

    def __reduce__(self):
        if self.weights == "float32" and self._file_states is None:
            return (Model, (self._source,))
        return (Model, (self._source, self.weights, self._stored, self._file_states))

    def with_weights(self, weights: str) -> "Model":
        """This model with its GRU weights in another mode ("float32", "bf16" or "int8"), as a
        new Model. Reduced precision is rounded from this model's float32 values (``spec``)."""
        if precision.check_mode(weights) == self.weights:
            return self
        return Model(self._source, weights, file_states=self._file_states)


class ChainModel(ChainRunner, Model):   # the runner's methods first: run, stream, ...
    """A :class:`Model` that is one chain of layers: a :class:`~grurt.chain_runner.ChainRunner` (``run``,
    ``stream``, ``stream_pool``)."""

    def __init__(self, spec, weights: str = "float32", stored=None, file_states=None):
        self._source = spec                 # what the model was made of: a Graph, or a ModelSpec (for pickling)
        self._file_states = file_states
        graph = spec if isinstance(spec, Graph) else None
        ChainRunner.__init__(self, spec.as_chain() if graph is not None else spec, weights, stored, graph)

    __reduce__ = Model.__reduce__
    with_weights = Model.with_weights


_NONE = frozenset()


class GraphModel(Model):
    """A :class:`Model` that is a graph of chains (:class:`grurt.graph.Graph`)."""

    _file_states = None

    def __init__(self, spec: Graph, weights: str = "float32", stored=None, file_states=None):
        self._source = spec
        self._file_states = file_states
        self.weights = precision.check_mode(weights)
        self._stored = reduced_arrays([node.layer for node in spec.nodes], self.weights, stored)
        self.spec = self.graph = spec
        self._graph = GraphInputs(spec)
        self._variants = {}        # (lengths, initial states given, return_state, stream) -> (Lowered, TensorModel)
        self._directions = [output.directions for output in spec.outputs]

    def _stream_model(self):
        """The TensorModel of the graph lowered for streaming (every frame valid), built once."""
        return self._variant((False, frozenset(), False, True))[1]

    def _variant(self, key):
        """The lowered graph of one kind of call (graph_lower.lower's variant) and its TensorModel, built once."""
        variant = self._variants.get(key)
        if variant is None:
            lowered = lower(self.graph, *key)
            variant = self._variants[key] = (lowered, TensorModel(lowered.graph, weights=self.weights))
        return variant

    input_names = ChainRunner.input_names          # the graph's (self.graph), as a chain's
    output_names = ChainRunner.output_names

    @property
    def input_size(self):
        """Features per input step of the one input; None for a model of several inputs (:attr:`graph`
        describes them)."""
        return self.graph.inputs[0].size if len(self.graph.inputs) == 1 else None

    @property
    def vocabulary(self):
        """None: a graph's token ids are checked per input (:attr:`graph`)."""
        return None

    @property
    def output_size(self):
        """Features of the output (None for a model with several outputs)."""
        outputs = self.graph.outputs
        return self.graph.tensors[outputs[0].name].features if len(outputs) == 1 else None

    @property
    def layers(self):
        return tuple(node.layer for node in self.graph.nodes)

    def __repr__(self) -> str:
        mode = "" if self.weights == "float32" else f" weights={self.weights}"
        return (f"<grurt.Model inputs={list(self.input_names)} outputs={list(self.output_names)}{mode}: "
                f"{len(self.graph.nodes)} nodes>")

    def run(self, seq, initial_state=None, return_state=False, lengths=None, threads=1):
        """Run the graph on its inputs: a list in :attr:`input_names` order or a dict by name (or the one
        input's array); several outputs come back as a tuple in :attr:`output_names` order.
        ``initial_state`` and ``return_state`` go per GRU node, in the graph's order (``model.graph.gru_nodes``);
        a GRU whose h0 is a tensor of the graph takes None there. ``lengths`` and ``threads`` as
        :meth:`grurt.chain_runner.ChainRunner.run`'s."""
        if self._file_states is not None and initial_state is None and not return_state and (
                (type(seq) is dict and set(seq) != set(self.input_names))
                or (type(seq) in (list, tuple) and len(seq) == len(self._file_states.inputs) > 1
                    and all(type(v) is np.ndarray for v in seq))):
            return self._file_states.run(self, seq, lengths, threads)
        check_threads(threads)
        checks = self._graph
        env, single, batch = checks.checked_inputs(seq)
        arrays = [env[name] for name in checks.input_names]
        given = _NONE
        if lengths is not None:
            arrays.append(checks.checked_lengths(lengths, env, batch, single))
        if initial_state is not None:
            states = checks.initial_states(initial_state, batch, single)
            given = frozenset(p for p, s in enumerate(states) if s is not None)
            arrays += [states[p] for p in sorted(given)]
        lowered, tensor_model = self._variant((lengths is not None, given, bool(return_state), False))
        # ops never write into their inputs; a plan made is a signature checked (as TensorModel.run checks it)
        plan = tensor_model.cached_plan(arrays)
        if plan is None:
            checks.check_steps(env, batch)
            plan = tensor_model.plan(tensor_model._inputs(arrays if len(arrays) > 1 else arrays[0]))
        if threads == 1:
            results = plan.run(arrays)
        else:
            with call_threads(threads):
                results = plan.run(arrays)
        n = len(self._directions)
        outputs = results[:n]
        if single:
            outputs = [value[0] if d is None else value[:, 0] for value, d in zip(outputs, self._directions)]
        result = outputs[0] if n == 1 else tuple(outputs)
        if not return_state:
            return result
        return result, [s[:, 0] if single else s for s in results[n:]]

    __call__ = run

    def stream(self, batch: int = 1, threads: int = 1, static=None):
        """A :class:`~grurt.graph_stream.GraphStream`: ``step`` takes one frame of each sequence input (a list in
        input order or a dict by name, when there are several), and ``static`` gives the static inputs (vectors
        and states) once per stream, as a dict by name (or a list, or the one value), with the stream's batch
        axis."""
        check_threads(threads)
        return _allocating(lambda: GraphStream(self, batch, threads, static), "a stream")

    def stream_pool(self, capacity: int):
        """Refused: a pool steps models that are one chain of layers (a graph streams with :meth:`stream`)."""
        raise InputError("stream_pool runs models that are one chain of layers; this model is a graph: "
                         "use stream(batch=...)")


chain_runner.GRAPH_MODEL = GraphModel     # a chain whose mask is not trailing padding only runs as a graph
