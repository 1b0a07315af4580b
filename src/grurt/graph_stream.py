"""A graph model's stream (:meth:`grurt.Model.stream` of a :class:`~grurt.graph.Graph`): the graph lowered for
streaming (:func:`grurt.graph_lower.lower` with ``stream=True``: every frame valid) run by a
:class:`~grurt.tensor_stream.TensorStream`, with a graph's calling convention: frames with or without the batch
axis, the static inputs (vectors and states) given once per stream, ``state`` per GRU node, and the refusals that
name the node or the chain that cannot stream.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .graph import NEW_STEPS_LAYERS, PReLU, Segment, segments
from .graph_model import by_name
from .ops.recurrent import call_threads, shared_model
from .spec import GRU, GlobalPool, ModelSpec

_FLOAT32 = np.dtype(np.float32)


def check_streamable(graph, frame_names, batch: int, threads: int) -> None:
    """InputError naming the first node (or chain) of ``graph`` that cannot run frame by frame."""
    per_frame = set(frame_names)
    for step in segments(graph):
        reads = [step.source, *step.states_in.values()] if isinstance(step, Segment) else list(step.inputs)
        if not any(name in per_frame for name in reads):
            continue
        if isinstance(step, Segment):
            fed = [name for name in step.states_in.values() if name in per_frame]
            if fed:
                raise InputError(f"a GRU takes its initial state from '{fed[0]}', which is computed from a "
                                 "whole sequence: this model cannot stream, use run()")
            try:
                shared_model(step.spec(graph)).stream(batch, threads)
            except InputError as exc:
                raise InputError(f"in the chain {' -> '.join(n.describe() for n in step.nodes)}: {exc}") from None
            per_frame.update(step.states_out.values())
            per_frame.add(step.output)
            continue
        if isinstance(step.layer, PReLU) and step.layer.steps is not None:
            raise InputError(f"node {step.describe()} has an alpha per step of a {step.layer.steps}-step "
                             "sequence: this model cannot stream, use run()")
        if isinstance(step.layer, GlobalPool):
            raise InputError(f"node {step.describe()} needs the whole sequence: this model cannot stream, use run()")
        if isinstance(step.layer, GRU):     # a stream reads every frame as valid: its mask is not read
            if len(step.inputs) == 3:
                raise InputError(f"node {step.describe()} takes its initial state from a tensor and reads a "
                                 "mask: this model cannot stream, use run()")
            try:
                shared_model(ModelSpec(step.layer.input_size, (step.layer,))).stream(batch, threads)
            except InputError as exc:
                raise InputError(f"node {step.describe()}: {exc}") from None
        per_frame.update(step.outputs)
    for step in segments(graph):
        if not isinstance(step, Segment) and isinstance(step.layer, NEW_STEPS_LAYERS):
            raise InputError(f"node {step.describe()} makes a sequence of other steps than the input's: this "
                             "model cannot stream, use run()")


class GraphStream:
    """A graph fed one frame (or a block of frames) at a time; see :meth:`grurt.Model.stream`.

    Tensors that depend on a sequence input are computed frame by frame, the GRU states kept in place; those that
    depend only on the static inputs (vectors and states, given per stream) are computed once, when the stream
    starts or is reset.
    """

    def __init__(self, model, batch: int = 1, threads: int = 1, static=None):
        graph = model.graph
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be a positive integer, got {batch!r}")
        self.model, self.batch, self.threads = model, batch, threads
        self._checks = model._graph
        self.frame_names = tuple(i.name for i in graph.inputs if i.kind in ("sequence", "ids"))
        self.static_names = tuple(i.name for i in graph.inputs if i.kind not in ("sequence", "ids"))
        if not self.frame_names:
            raise InputError("this model has no sequence input: there is nothing to stream, use run()")
        check_streamable(graph, self.frame_names, batch, threads)
        tensor_model = model._stream_model()
        self._stream = tensor_model.stream(batch, time_axes={name: 1 for name in self.frame_names},
                                           static=self._static(static))
        self._directions = [o.directions for o in graph.outputs]
        self._plain = self._directions == [None]                      # one output, not a state
        #: a float32 frame's shape (B, I) and with the time axis (B, 1, I), for the common step
        frame = self._stream._frame
        self._one = (frame[0], frame[2]) if frame is not None and frame[1] == _FLOAT32 else None
        self._summaries = [axis is None for axis in self._stream.compiled.output_axes]
        # each GRU node's state in the stream's states: the k-th GRU state of the Chain node its segment became
        index = {}
        for i, state in enumerate(self._stream.compiled.states):
            if state.kind == "GRU state":
                name = state.node.name
                index[(name, sum(1 for key in index if key[0] == name))] = i
        gru_index = {id(node): p for p, node in enumerate(graph.gru_nodes)}
        self._gru_states = [None] * len(graph.gru_nodes)
        for step in segments(graph):
            nodes = step.grus if isinstance(step, Segment) else [step] if isinstance(step.layer, GRU) else []
            base = step.nodes[0].outputs[0] if isinstance(step, Segment) else step.outputs[0]
            for k, node in enumerate(nodes):
                self._gru_states[gru_index[id(node)]] = index.get((base, k))

    def reset(self, static=None):
        """Every state back to its start, as at the start of a new stream; ``static`` (required the first time,
        for a model with static inputs) gives new values of the static inputs."""
        self._stream.reset(self._static(static) if static is not None else None)

    def _static(self, static):
        """The static inputs checked, for this stream's batch (None without any)."""
        names = self.static_names
        if not names:
            if static is not None:
                raise InputError("this model has no static inputs, got static=")
            return None
        if static is None:
            raise InputError(f"this model's static inputs {list(names)} must be given: "
                             "model.stream(static={name: value})")
        values = {}
        for name, value in by_name(static, names, "static input").items():
            a, _ = self._checks.check_input(name, value)
            size = a.shape[1] if self._checks.inputs[name].kind == "state" else a.shape[0]
            if size != self.batch:
                raise InputError(f"input '{name}' has a batch of {size}, the stream {self.batch}")
            values[name] = a
        return values

    def _frames(self, frames, block: bool):
        """{name: (batch, I) floats or (batch,) ids (a block: (batch, n, ...))} of the sequence inputs, single."""
        names = self.frame_names
        frames = by_name(frames, names, "sequence input")
        given, single, steps = {}, None, None
        for name in names:
            a, is_single = self._checks.check_input(name, frames[name], block)
            if is_single and self.batch != 1:
                raise InputError(f"input '{name}': this stream runs a batch of {self.batch}; give the batch axis")
            if a.shape[0] != self.batch:
                raise InputError(f"input '{name}' has a batch of {a.shape[0]}, the stream {self.batch}")
            n = a.shape[1] if block else 1
            if single is None:
                single, steps = is_single, n
            elif is_single != single or n != steps:
                raise InputError(f"input '{name}': every sequence input needs the same number of frames "
                                 "and the same form (with or without the batch axis)")
            given[name] = a
        return given, single

    def step(self, frames):
        """Advance by one frame of each sequence input: (I,) when batch is 1, or (batch, I) (an id, or
        (batch,) ids). Returns each output at this frame (a tuple for several outputs)."""
        stream = self._stream
        if (type(frames) is np.ndarray and self._one is not None and frames.dtype == _FLOAT32 and self.threads == 1
                and frames.flags.c_contiguous and stream._stream.step_plan is not None):
            shape, step_shape = self._one   # the common call: one float32 frame, (B, I) or for a batch of 1 (I,)
            if frames.shape == shape:
                return stream.step_frame(frames.reshape(step_shape))
            if frames.shape == shape[1:] and self.batch == 1:
                result = stream.step_frame(frames.reshape(step_shape))
                return result[0] if self._plain else self._outputs(result, True)
        given, single = self._frames(frames, block=False)
        return self._outputs(self._step(given), single)

    def _step(self, frames):
        if self.threads == 1:
            return self._stream.step(frames)
        with call_threads(self.threads):
            return self._stream.step(frames)

    def run(self, frames):
        """Advance by a block of n frames of each sequence input: (n, I) when batch is 1, or
        (batch, n, I). Returns each output at every frame, as ``step`` frame by frame would."""
        given, single = self._frames(frames, block=True)
        n = next(iter(given.values())).shape[1]
        if any(self._summaries):        # an output after each frame: the frames one by one
            steps = [self._as_tuple(self._step({k: v[:, t] for k, v in given.items()})) for t in range(n)]
            outputs = [np.stack([s[k] for s in steps], axis=1 if d is None else 2)
                       for k, d in enumerate(self._directions)]
        else:
            with call_threads(self.threads):
                outputs = list(self._as_tuple(self._stream.run(given)))
        return self._outputs(outputs[0] if len(outputs) == 1 else tuple(outputs), single)

    @staticmethod
    def _as_tuple(result):
        return result if isinstance(result, tuple) else (result,)

    def _outputs(self, result, single: bool):
        if not single:
            return result
        outputs = [value[:, 0] if d is not None else value[0]
                   for value, d in zip(self._as_tuple(result), self._directions)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @property
    def state(self):
        """Copies of the GRU states, (directions, batch, hidden) per GRU node in the graph's order (None for a GRU
        node that does not read the frames)."""
        states = self._stream.state
        return [None if i is None else states[i] for i in self._gru_states]

    @state.setter
    def state(self, values):
        if not isinstance(values, (list, tuple)) or len(values) != len(self._gru_states):
            raise InputError(f"state must be a list of {len(self._gru_states)} arrays, one per GRU node")
        states = self._stream.state
        for value, i in zip(values, self._gru_states):
            if i is not None:
                states[i] = value
        self._stream.state = states
