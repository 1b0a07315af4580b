"""``ChainRunner``: a chain of grurt's fused layers (a :class:`~grurt.spec.ModelSpec`) on the compiled kernels:
its kernel plan, input checks, lengths and masks, streams and stream pools.

This module sits below the ops (:mod:`grurt.ops.chain`, :mod:`grurt.ops.recurrent` and :mod:`grurt.ops.masked`
build ChainRunners) and below :mod:`grurt.model`, whose :class:`~grurt.model.Model` of a chain is a ChainRunner.
The memory limit it checks is ``grurt.model.MEMORY_LIMIT_BYTES`` at the time of a call, read through
``_kernels._memory_limit()`` (the kernels' one edge up to :mod:`grurt.model`).
"""
from __future__ import annotations

import numpy as np

from . import _kernels
from . import precision
from .errors import InputError, UnsupportedModelError
from .graph import Graph, path_graph
from .limits import MAX_TENSOR_ELEMENTS
from .spec import (GRU, TIME_LAYERS, WHOLE_SEQUENCE, Activation, Dense, Flatten, GlobalPool, LastStep,
                   LayerNorm, Merge, ModelSpec, Reverse, Scale, UnitNorm, activation, conv_history_shapes,
                   frame_rate_layers, output_steps)

#: The layers the compiled kernels run (a leading Embedding's lookup runs in the runner itself).
KERNEL_LAYERS = (GRU, Dense, Activation, Scale, Reverse, LastStep, Merge, LayerNorm, UnitNorm, GlobalPool,
                 Flatten) + TIME_LAYERS
from ._kernels import Stream, StreamPool, _memory_limit

_FLOAT32 = np.dtype(np.float32)


def _as_array(value, what: str) -> np.ndarray:
    """np.asarray, with a ragged or unconvertible value reported as an InputError."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what} must be a rectangular array of numbers ({exc})") from None


#: The class that runs a graph (:class:`grurt.model.GraphModel`, set by that module, above this one): a chain whose
#: mask is not trailing padding only runs as a graph whose GRUs read the mask.
GRAPH_MODEL = None


class ChainRunner:
    """A chain of canonical layers on the compiled kernels (what :class:`grurt.Model` of a chain runs; the ops
    that run fused layers inside a tensor graph build one). Immutable, shared by any number of threads.

    ``weights`` ("float32", "bf16" or "int8") is how the GRU weights are stored and multiplied
    (:mod:`grurt.precision`); ``stored`` maps (layer index, "W" or "R") to the arrays the mode stores, when they
    are known exactly (from a file); they are otherwise computed from ``spec``.
    """

    #: a graph model's runner (grurt.model); a chain has none
    _graph = None
    #: a one-path ONNX file's state inputs and outputs by the file's names (importers.onnx.FileStates, set by Model)
    _file_states = None

    def __init__(self, spec: ModelSpec, weights: str = "float32", stored=None, graph=None):
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"ChainRunner expects a grurt.spec.ModelSpec, got {type(spec).__name__}")
        self.weights = precision.check_mode(weights)
        self._stored = reduced_arrays(spec.layers, self.weights, stored)
        self.spec = spec
        #: the chain as a graph (``graph``: the one-path Graph it was made of, its names kept)
        self.graph = graph if graph is not None else Graph.from_chain(spec)
        # a model that takes ids: the Embedding's lookup runs here (after the ids are checked), the
        # kernels run the rest on its float32 output
        self._table = spec.layers[0].table if spec.takes_ids else None
        for index, layer in enumerate(spec.layers[1:] if spec.takes_ids else spec.layers):
            if not isinstance(layer, KERNEL_LAYERS):
                raise UnsupportedModelError(f"{layer.describe()}: grurt's kernels do not run this layer yet "
                                            "(grurt.reference.run computes it)")
        self._time_layers = any(isinstance(layer, TIME_LAYERS) for layer in spec.layers)
        # the kernels' layer indices start after a leading Embedding
        offset = 1 if spec.takes_ids else 0
        self._plan = _kernels.Plan(_kernel_spec(spec), self.weights,
                                   {(index - offset, name): parts for (index, name), parts in self._stored.items()})
        self._state_shapes = [(g.num_directions, g.hidden_size) for g in spec.gru_layers]
        self._output_size, self._returns_sequence = spec.output_size, spec.returns_sequence
        self._fixed_steps = spec.fixed_steps
        # no lengths to derive from the input, no ids, any number of steps: the C fast path
        #: a GRU starts from a learned state: no zero states in the workspace
        self._learned = any(g.initial_state is not None for g in spec.gru_layers)
        self._plain_runs = (spec.mask_value is None and not spec.takes_ids and spec.fixed_steps is None
                            and not self._learned)
        self._frame_rate_layers = frame_rate_layers(spec)
        if spec.mask_value is not None:
            self._trailing_fill = self._fill_rule()
            self._masked = None            # the graph runner for other masks, made at its first use

    @property
    def input_names(self):
        """The inputs' names, in the order ``run`` takes a list of inputs."""
        return self.graph.input_names

    @property
    def output_names(self):
        """The outputs' names, in the order ``run`` returns several outputs."""
        return self.graph.output_names

    @property
    def input_size(self):
        """Features per input step; None for a model that takes token ids (:attr:`vocabulary`), or
        that has several inputs (:attr:`graph` describes them)."""
        return self.spec.input_size

    @property
    def vocabulary(self):
        """The number of valid token ids (0 .. vocabulary − 1) of a chain that takes ids, else None."""
        return self.spec.vocabulary

    @property
    def output_size(self):
        """Features of the output (None for a model with several outputs)."""
        return self.spec.output_size

    @property
    def layers(self):
        return self.spec.layers

    def __repr__(self) -> str:
        mode = "" if self.weights == "float32" else f" weights={self.weights}"
        layers = ", ".join(layer.describe() for layer in self.spec.layers)
        return f"<grurt.Model input_size={self.input_size}{mode}: {layers}>"

    def __reduce__(self):
        return (type(self), (self.spec, self.weights, self._stored))

    def with_weights(self, weights: str) -> "ChainRunner":
        """This chain with its GRU weights in another mode ("float32", "bf16" or "int8"), as a new runner.
        Reduced precision is rounded from the float32 values (``spec``)."""
        if precision.check_mode(weights) == self.weights:
            return self
        return ChainRunner(self.spec, weights)

    def run(self, seq, initial_state=None, return_state=False, lengths=None, threads=1):
        """Run the chain on ``seq``: the contract is :meth:`grurt.Model.run`'s."""
        try:
            # the common call (a float32 sequence or batch, zero states, one thread) is checked in C; anything
            # else, including what that check turns down, goes through the full checks below
            if (initial_state is None and not return_state and lengths is None and type(threads) is int
                    and 1 <= threads <= _kernels.MAX_THREADS and self._plain_runs):
                out = self._plan.run_plain(seq, _memory_limit(), threads)
                if out is not None:
                    return out
            if self._file_states is not None and initial_state is None and not return_state and (
                    (type(seq) is dict and set(seq) != set(self.input_names))
                    or (type(seq) in (list, tuple) and len(seq) == len(self._file_states.inputs) > 1
                        and all(type(v) is np.ndarray for v in seq))):
                return self._file_states.run(self, seq, lengths, threads)
            if type(seq) is dict:
                check_threads(threads)
                seq = self._graph_input(seq)
            fill = None
            if self._table is not None:
                ids, single = self._ids(seq)
                if lengths is None and self.spec.mask_value is not None:
                    lengths = self._lengths_from_mask(ids != self.spec.mask_value)
                    if lengths is None:
                        return self._run_masked(seq, initial_state, return_state, threads)
                    fill = self._trailing_fill
                x = np.take(self._table, ids, axis=0)          # (B, T, E) float32: the ids are checked
            else:
                x, single = self._input(seq)                   # checks the size before converting
                if lengths is None and self.spec.mask_value is not None:
                    lengths = self._lengths_from_mask((x != np.float32(self.spec.mask_value)).any(axis=2))
                    if lengths is None:
                        return self._run_masked(seq, initial_state, return_state, threads)
                    fill = self._trailing_fill
            batch, steps = x.shape[0], x.shape[1]
            # frames out of the time layers (InputError naming the layer when the input is too short)
            out_steps = output_steps(self.spec, steps) if self._time_layers else steps
            if self._fixed_steps is not None and out_steps != self._fixed_steps:
                if self._time_layers:
                    raise InputError(f"this model flattens exactly {self._fixed_steps} frames, but {steps} input "
                                     f"frames give {out_steps} after its convolution, pooling and padding layers")
                raise InputError(f"this model runs only on sequences of {self._fixed_steps} steps (it flattens "
                                 f"them), got {steps}")
            if initial_state is None and not return_state and not self._learned:
                states = None                                   # zero states kept in the workspace
            else:
                states = self._initial_states(initial_state, batch, single)
            if lengths is not None and self._frame_rate_layers:
                index, layer = self._frame_rate_layers[0]
                raise InputError(f"lengths cannot be used with layer {index} ({layer.describe()}), which changes "
                                 "the number of frames or looks ahead: run sequences of different lengths one at a "
                                 "time")
            length_array = None if lengths is None else self._lengths(lengths, batch, steps, single)
            out = np.empty((batch, out_steps, self._output_size) if self._returns_sequence
                           else (batch, self._output_size), _FLOAT32)
            check_threads(threads)
            self._plan.run(x, states, length_array, out, threads)
            if fill is not None and self._returns_sequence:      # the masked steps: what Keras gives there
                padding = np.arange(out.shape[1]) >= length_array[:, None]
                if isinstance(fill, str):                             # "repeat": the last valid step's output
                    out[padding] = np.repeat(out[np.arange(batch), length_array - 1], out.shape[1] - length_array,
                                             axis=0)
                else:
                    out[padding] = fill
            if single:
                out = out[0]
            if not return_state:
                return out
            return out, [s[:, 0] if single else s for s in states]
        except MemoryError as exc:     # numpy's, past the size checks: the memory is not there
            raise _out_of_memory("the memory of this call", exc) from None

    __call__ = run

    def stream(self, batch: int = 1, threads: int = 1, static=None):
        """A :class:`Stream` that feeds this model one time step at a time, ``batch`` streams at once
        (``threads`` as in :meth:`run`, for each call).
"""
        if static is not None:
            raise InputError("this model has no static inputs, got static=")
        return _allocating(lambda: (_LearnedStateStream if self._learned else Stream)(self, batch, threads), "a stream")

    def stream_pool(self, capacity: int) -> "StreamPool":
        """A :class:`StreamPool`: the states of up to ``capacity`` sessions, stepped together
        (a chain model; a graph streams with :meth:`stream`)."""
        return _allocating(lambda: (_LearnedStatePool if self._learned else StreamPool)(self, capacity), "a stream pool")

    def _graph_input(self, values: dict):
        """The one input of a chain, given as {name: value}."""
        (name,) = self.input_names
        if set(values) != {name}:
            raise InputError(f"this model's one input is {name!r}, got {sorted(map(str, values))}")
        return values[name]

    def _check_streamable(self) -> None:
        """InputError unless every layer can run one frame at a time (no look-ahead)."""
        for index, layer in enumerate(self.spec.layers):
            if isinstance(layer, GRU) and layer.direction != "forward":
                raise InputError(f"layer {index} is a {layer.direction} GRU, which needs the whole sequence: "
                                 "this model cannot stream, use run()")
            if isinstance(layer, Reverse):
                raise InputError(f"layer {index} reverses time, which needs the whole sequence: "
                                 "this model cannot stream, use run()")
            if isinstance(layer, WHOLE_SEQUENCE):
                raise InputError(f"layer {index} ({layer.describe()}) needs the whole sequence: "
                                 "this model cannot stream, use run()")
        for index, layer in frame_rate_layers(self.spec):
            raise InputError(f"layer {index} ({layer.describe()}) changes the number of frames or looks ahead "
                             "(only a causal Conv1D, stride 1 and padding ((k-1)·dilation, 0), streams): "
                             "this model cannot stream, use run()")

    def _token_frames(self, ids) -> np.ndarray:
        """The embedding rows of token ids of any shape, float32, for the streaming calls of a model
        that takes ids: an InputError unless they are integers within [0, vocabulary)."""
        if type(ids) is not np.ndarray:
            if isinstance(ids, (bool, np.bool_)):
                raise InputError("this model takes integer token ids, got a bool")
            ids = _as_array(ids, "ids")
        if ids.dtype.kind not in "iu":
            raise InputError(f"this model takes integer token ids, got dtype {ids.dtype}")
        if ids.size:
            low, high = ids.min(), ids.max()
            if low < 0 or high >= self.spec.vocabulary:
                raise InputError(f"token id {low if low < 0 else high} is outside the vocabulary "
                                 f"[0, {self.spec.vocabulary})")
        return np.take(self._table, ids, axis=0)

    # ---- input checks: once per call, so that the kernels can trust everything ----

    def _input(self, seq):
        if type(seq) is not np.ndarray:
            if not hasattr(seq, "__array__") and not isinstance(seq, (list, tuple)):
                raise InputError(f"input must be an array of numbers, got {type(seq).__name__}")
            if (isinstance(seq, (list, tuple)) and len(seq) > 1 and all(type(v) is np.ndarray for v in seq)
                    and len({v.shape for v in seq}) > 1):     # a list of inputs, as a graph takes them
                raise InputError(f"this model has one input, {self.input_names[0]!r}, got a list of {len(seq)} "
                                 "arrays of different shapes (GRU states go in initial_state=)")
            seq = _as_array(seq, "input")
        if seq.dtype.kind not in "fiub":
            raise InputError(f"input must be real numbers, got dtype {seq.dtype}")
        if seq.ndim not in (2, 3):
            raise InputError(
                f"input must be (T, {self.input_size}) or (B, T, {self.input_size}), got shape {seq.shape}")
        single = seq.ndim == 2
        batch, steps, features = (1,) + seq.shape if single else seq.shape
        if features != self.input_size:
            raise InputError(f"input has {features} features per step, the model expects {self.input_size}")
        if steps == 0 or batch == 0:
            raise InputError(f"input has no time steps or no sequences (shape {seq.shape})")
        self._check_size(batch, steps)                     # before the float32 copy below
        if not (seq.dtype == np.float32 and seq.flags.c_contiguous):
            seq = np.ascontiguousarray(seq, dtype=np.float32)
        return seq.reshape(batch, steps, features), single

    def _check_size(self, batch: int, steps: int):
        """The limits of Plan.check_size (the same check as the C fast path's), explained."""
        limit = _memory_limit()
        failure = self._plan.check_size(batch, steps, limit)
        if failure == _kernels.TOO_MANY_ROWS:
            extra = self._plan.extra_frames
            padding = f" (and the {extra} frames its layers may add to each)" if extra else ""
            raise InputError(f"input of {batch} sequences × {steps} steps{padding} is too large for 32-bit BLAS "
                             f"indexing: at most {MAX_TENSOR_ELEMENTS} elements per tensor "
                             "(grurt.limits.MAX_TENSOR_ELEMENTS)")
        if failure == _kernels.TOO_MUCH_MEMORY:
            needed = self._plan.bytes_needed(batch, steps)
            raise InputError(
                f"input of {batch} sequences × {steps} steps would need {needed / 2**30:.1f} GiB, "
                f"more than the limit of {limit / 2**30:.1f} GiB (grurt.model.MEMORY_LIMIT_BYTES)")

    def _check_stream(self, batch: int):
        """InputError unless a Stream of ``batch`` sequences fits the limits: one step's workspace
        (Plan.check_size) and the Conv1D histories, counted before the Stream allocates them."""
        limit = _memory_limit()
        if batch <= self._plan.max_rows and self._plan.check_size(batch, 1, limit) == _kernels.FITS:
            histories = sum(b * (span + 1) * c for b, span, c in conv_history_shapes(self.spec, batch))
            needed = self._plan.bytes_needed(batch, 1) + 4 * histories
            if needed <= limit:
                return
        raise InputError(f"a stream of {batch} sequences is too large: it would need more than "
                         f"{limit / 2**30:.1f} GiB (grurt.model.MEMORY_LIMIT_BYTES) or more than "
                         f"{MAX_TENSOR_ELEMENTS} elements per tensor (grurt.limits.MAX_TENSOR_ELEMENTS)")

    def _initial_states(self, initial_state, batch: int, single: bool, name: str = "initial_state"):
        """Fresh C-contiguous float32 (D, B, H) states: for None, each GRU's default (zeros, or its
        learned initial_state), else checked copies."""
        if initial_state is None:
            return [gru.default_state(batch) for gru in self.spec.gru_layers]
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != len(self._state_shapes):
            raise InputError(f"{name} must be a list of {len(self._state_shapes)} arrays, one per GRU layer")
        states = []
        for index, (value, (d, h)) in enumerate(zip(initial_state, self._state_shapes)):
            expected = (d, h) if single else (d, batch, h)
            value = _as_array(value, f"{name}[{index}]")
            if value.dtype.kind not in "fiub" or value.shape != expected:
                raise InputError(f"{name}[{index}] must be a real array of shape {expected}, "
                                 f"got {value.dtype} {value.shape}")
            states.append(np.array(value, dtype=np.float32, order="C").reshape(d, batch, h))
        return states

    def _ids(self, seq):
        """Token ids (T,) or (B, T) → C-contiguous (B, T) integers within [0, vocabulary), and single."""
        if type(seq) is not np.ndarray:
            if not hasattr(seq, "__array__") and not isinstance(seq, (list, tuple, int, np.integer)):
                raise InputError(f"input must be an array of token ids, got {type(seq).__name__}")
            seq = _as_array(seq, "input")
        if seq.dtype.kind not in "iu":
            raise InputError(f"this model takes integer token ids, got dtype {seq.dtype}")
        if seq.ndim not in (1, 2):
            raise InputError(f"token ids must be (T,) or (B, T), got shape {seq.shape}")
        single = seq.ndim == 1
        batch, steps = (1,) + seq.shape if single else seq.shape
        if steps == 0 or batch == 0:
            raise InputError(f"input has no time steps or no sequences (shape {seq.shape})")
        self._check_size(batch, steps)
        low, high = seq.min(), seq.max()
        if low < 0 or high >= self.spec.vocabulary:
            bad = low if low < 0 else high
            raise InputError(f"token id {bad} is outside the vocabulary [0, {self.spec.vocabulary})")
        return np.ascontiguousarray(seq).reshape(batch, steps), single

    def _lengths_from_mask(self, real):
        """Each sequence's length when its masked steps are trailing padding and running with these
        lengths gives what the mask gives (``self._trailing_fill``), else None. ``real`` (B, T): the
        step has a feature other than mask_value, or is an id other than the padding id."""
        if self._trailing_fill is False:
            return None
        lengths = real.shape[1] - np.argmax(real[:, ::-1], axis=1)
        if not real[:, 0].all() or (real.sum(axis=1) != lengths).any():    # an empty sequence, or a hole
            return None
        return lengths

    def _run_masked(self, seq, initial_state, return_state, threads):
        """A run whose mask is not trailing padding only: the model as a graph whose GRUs read the mask."""
        if self._masked is None:
            graph = path_graph(self.spec.input_size, self.spec.layers, mask_value=self.spec.mask_value)
            # the Masking node comes first: layer k is node k + 1
            self._masked = GRAPH_MODEL(graph, self.weights, {(i + 1, name): parts
                                                             for (i, name), parts in self._stored.items()})
        if type(threads) is not int or not 1 <= threads <= _kernels.MAX_THREADS:
            raise InputError(f"threads must be an integer from 1 to {_kernels.MAX_THREADS}, got {threads!r}")
        return self._masked.run(seq, initial_state, return_state, None, threads)

    def _fill_rule(self):
        """How a run with lengths from trailing padding completes the masked steps of its output as
        the model's mask rule gives them (grurt.graph.Masking): None (the output has no masked steps),
        "repeat" (each repeats the sequence's last valid output), a constant (F,) vector, or False when
        running with lengths cannot give the rule's values (the mask then runs as a graph)."""
        last_gru = None
        for index, layer in enumerate(self.spec.layers):
            if isinstance(layer, (Reverse, Flatten)):      # Keras reverses and flattens the masked steps too
                return False
            if isinstance(layer, (LastStep, GlobalPool)):
                # the mean of the valid steps; a maximum or a last step is the rule's when the masked
                # steps repeat the valid ones
                if layer.__class__ is GlobalPool and layer.mode == "average":
                    return None
                return None if last_gru is not None and last_gru.direction == "forward" else False
            if isinstance(layer, GRU):
                if not layer.return_sequences:
                    return None
                last_gru, after = layer, index + 1
        if last_gru is None:
            return False
        if last_gru.direction == "forward":
            return "repeat"
        # zeros at the masked steps (a reverse GRU reads them first), then the layers after the GRU
        zeros = np.zeros((1, 1, last_gru.output_size), _FLOAT32)
        rest = self.spec.layers[after:]
        return ChainRunner(ModelSpec(last_gru.output_size, rest)).run(zeros)[0, 0] if rest else zeros[0, 0]

    @staticmethod
    def _lengths(lengths, batch: int, steps: int, single: bool):
        values = _as_array(lengths, "lengths")
        if single and values.ndim == 0:
            values = values.reshape(1)
        if values.shape != (batch,) or values.dtype.kind not in "iu":
            raise InputError(f"lengths must be integers of shape ({batch},), got {values.dtype} {values.shape}")
        if values.min() < 1 or values.max() > steps:
            raise InputError(f"lengths must be between 1 and {steps} (the number of steps), "
                             f"got {values.min()}..{values.max()}")
        return np.ascontiguousarray(values, dtype=np.int32)


class _LearnedStateStream(Stream):
    """A Stream of a model whose GRUs start from learned states: it starts from them, and ``reset()``
    returns to them."""

    def __init__(self, model, batch=1, threads=1):
        super().__init__(model, batch, threads)
        self.state = None

    def reset(self):
        super().reset()
        self.state = None


class _LearnedStatePool(StreamPool):
    """A StreamPool of a model whose GRUs start from learned states: each session opens (and resets)
    with them."""

    def open(self):
        sid = super().open()
        self.set_state(sid, None)
        return sid

    def reset(self, sid):
        super().reset(sid)
        self.set_state(sid, None)


def _out_of_memory(what: str, exc: MemoryError) -> InputError:
    """numpy's MemoryError, past grurt's size checks (the memory is not there), as an InputError
    naming the size asked (numpy's message) and the limit."""
    return InputError(f"could not allocate {what} ({exc}); the size checks allow up to "
                      f"{_memory_limit() / 2**30:.1f} GiB (grurt.model.MEMORY_LIMIT_BYTES), but the machine or "
                      "the process's limit has less free memory")


def _allocating(make, what: str):
    """``make()``, with a MemoryError as _out_of_memory's InputError."""
    try:
        return make()
    except MemoryError as exc:
        raise _out_of_memory(what, exc) from None


def check_threads(threads) -> None:
    if type(threads) is not int or not 1 <= threads <= _kernels.MAX_THREADS:
        raise InputError(f"threads must be an integer from 1 to {_kernels.MAX_THREADS}, got {threads!r}")


def _kernel_spec(spec: ModelSpec) -> ModelSpec:
    """What the kernels run: the spec without a leading Embedding (whose lookup the runner does)."""
    if not spec.takes_ids:
        return spec
    rest = spec.layers[1:] or (Activation(activation("linear")),)
    return ModelSpec(spec.layers[0].output_size, rest)


def reduced_arrays(layers, weights: str, stored=None) -> dict:
    """{(index, "W"/"R"): the arrays ``weights`` mode stores} of each GRU of ``layers``: ``stored``'s (from a file)
    where given, else rounded from the layer's float32 values; empty for float32."""
    if weights == "float32":
        return {}
    stored = stored or {}
    arrays = {}
    for index, layer in enumerate(layers):
        if isinstance(layer, GRU):
            for name in precision.REDUCED_ARRAYS:
                parts = stored.get((index, name))
                arrays[index, name] = tuple(parts) if parts is not None else precision.stored(getattr(layer, name),
                                                                                             weights)
    return arrays
