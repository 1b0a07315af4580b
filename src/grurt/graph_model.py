"""Running a graph: its chains (segments) as Models of their own, joined by whole-array numpy
operations (merges, concatenation, slices), each tensor dropped after its last use.

A graph that is one path never comes here: :class:`grurt.Model` runs it as a chain. This module sits
below :mod:`grurt.model`: the Model class that runs each chain and the memory limit come from it, given
to :class:`GraphRunner`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import InputError
from .graph import NEW_STEPS_LAYERS, Concat, Crop, Graph, Masking, PReLU, Repeat, Segment, Slice, Unflatten, segments
from .spec import GRU, GlobalPool, ModelSpec

_FLOAT32 = np.dtype(np.float32)
_REDUCE = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
           "mean": np.add}


def combine(node, arrays, memory_limit: int):
    """A node of a graph layer (grurt.graph.GRAPH_LAYERS) on float32 arrays (the same batch; the time axes
    checked here); ``memory_limit``: grurt.model.MEMORY_LIMIT_BYTES, which a Repeat's output must fit."""
    layer = node.layer
    if layer.__class__ is Slice:
        return np.ascontiguousarray(arrays[0][..., layer.begin:layer.end])
    if layer.__class__ is PReLU:
        x = arrays[0]
        if layer.steps is not None and x.shape[1] != layer.steps:
            raise InputError(f"node {node.describe()}: its alpha holds {layer.steps} steps, the sequence has "
                             f"{x.shape[1]}: this model runs on sequences of exactly {layer.steps} steps")
        return np.where(x >= 0, x, x * layer.alpha)
    if layer.__class__ is Repeat:
        batch, features = arrays[0].shape
        if 4 * batch * layer.steps * features > memory_limit:        # Python ints: no overflow
            raise InputError(f"node {node.describe()}: {batch} × {layer.steps} steps × {features} features would "
                             f"need more than the limit of {memory_limit / 2**30:.1f} GiB "
                             "(grurt.model.MEMORY_LIMIT_BYTES)")
        return np.repeat(arrays[0][:, None, :], layer.steps, axis=1)
    if layer.__class__ is Unflatten:
        x = arrays[0]
        return x.reshape(x.shape[0], layer.steps, x.shape[1] // layer.steps)
    if layer.__class__ is Crop:
        x = arrays[0]
        if x.shape[1] <= layer.left + layer.right:
            raise InputError(f"node {node.describe()}: crops {layer.left + layer.right} steps of a sequence of "
                             f"{x.shape[1]}: at least {layer.left + layer.right + 1} needed")
        return np.ascontiguousarray(x[:, layer.left:x.shape[1] - layer.right])
    first = arrays[0]
    if first.ndim == 3 and any(a.shape[1] != first.shape[1] for a in arrays):
        raise InputError(f"node {node.describe()}: its sequences have different numbers of steps "
                         f"({', '.join(str(a.shape[1]) for a in arrays)})")
    if layer.__class__ is Concat:
        return np.concatenate(arrays, axis=-1)
    reduce = _REDUCE[layer.op]
    result = reduce(first, arrays[1])
    for a in arrays[2:]:
        reduce(result, a, out=result)
    if layer.op == "mean":
        result /= np.float32(len(arrays))
    return result


def masking(layer: Masking, x: np.ndarray):
    """A Masking node: (x with its masked steps zeroed (token ids: unchanged), the (B, T) mask)."""
    if x.dtype.kind in "iu":
        return x, x != layer.value
    mask = (x != np.float32(layer.value)).any(axis=-1)
    return np.where(mask[..., None], x, np.float32(0)), mask


def masked_average(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of each sequence's valid steps, (B, T, F) → (B, F), as Keras: NaN (0/0) without any."""
    total = np.where(mask[..., None], x, np.float32(0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / mask.sum(axis=1, dtype=np.float32)[:, None]


def _steps_at(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``out[b, t] = a[b, index[b, t]]`` for a (B, T, F) and index (B, T): one gather of whole rows."""
    batch, steps, features = a.shape
    rows = (index + np.arange(batch)[:, None] * steps).ravel()
    return np.take(a.reshape(batch * steps, features), rows, axis=0).reshape(batch, index.shape[1], features)


def masked_gru(model, layer: GRU, x: np.ndarray, mask: np.ndarray, h0: np.ndarray, threads: int):
    """A GRU node reading a mask (the rule in :class:`grurt.graph.Masking`): its output and final
    state (D, B, H). ``model`` runs the layer returning its sequence: each sequence's valid steps
    are gathered to the front, run with their count as length (the state carried over the masked
    steps), and the outputs put back at their steps, each masked step taking the output the rule
    gives from the valid steps around it."""
    batch, steps = mask.shape
    if x.shape[1] != steps:
        raise InputError(f"a GRU's sequence has {x.shape[1]} steps, its mask {steps}")
    counts = mask.sum(axis=1)
    if not (mask == (np.arange(steps) < counts[:, None])).all():     # not trailing padding only: gather
        x = _steps_at(x, np.argsort(~mask, axis=1, kind="stable"))
    y, (h,) = model.run(x, initial_state=[h0], return_state=True, lengths=np.maximum(counts, 1), threads=threads)
    empty = counts == 0
    if empty.any():                                      # nothing valid: the state stays h0
        h[:, empty] = h0[:, empty]
    seen = np.cumsum(mask, axis=1)                       # valid steps up to and including each step
    hidden = layer.hidden_size
    zeros_there = layer.direction == "bidirectional" and layer.return_sequences
    parts = []
    for d, backwards in enumerate({"forward": (False,), "reverse": (True,),
                                   "bidirectional": (False, True)}[layer.direction]):
        if zeros_there:
            index, keep = seen - 1, mask
        elif not backwards:                              # the last valid step at or before each step
            index, keep = seen - 1, seen > 0
        else:                                            # the first valid step at or after it
            index = seen - mask
            keep = index < counts[:, None]
        direction = y if layer.num_directions == 1 else np.ascontiguousarray(y[..., d * hidden:(d + 1) * hidden])
        out = _steps_at(direction, np.clip(index, 0, steps - 1))
        out[~keep] = 0
        parts.append(out if layer.return_sequences else out[:, 0 if backwards else -1])
    return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)), h


def by_name(values, names, what: str = "input") -> dict:
    """{name: value} from a dict by name, a list or tuple in ``names`` order, or, for one name, the
    value itself (a nested list is then that value's data); InputError naming what is missing,
    unknown or miscounted."""
    if isinstance(values, dict):
        unknown = [k for k in values if k not in names]
        if unknown:
            raise InputError(f"unknown {what} {unknown[0]!r}: this model's {what}s are {list(names)}")
        missing = [n for n in names if n not in values]
        if missing:
            raise InputError(f"{what} {missing[0]!r} is missing: this model's {what}s are {list(names)}")
        return dict(values)
    if len(names) == 1:
        return {names[0]: values}
    if not isinstance(values, (list, tuple)):
        raise InputError(f"this model takes {len(names)} {what}s {list(names)}: pass a list in that order "
                         f"or a dict by name, got {type(values).__name__}")
    if len(values) != len(names):
        raise InputError(f"this model takes {len(names)} {what}s {list(names)}, got {len(values)}")
    return dict(zip(names, values))


def input_array(value, what: str) -> np.ndarray:
    """``value`` as a numpy array (a list, a number, anything with ``__array__``); InputError naming
    ``what`` otherwise."""
    if type(value) is not np.ndarray:
        if not hasattr(value, "__array__") and not isinstance(value, (list, tuple, int, float, np.number)):
            raise InputError(f"{what} must be an array, got {type(value).__name__}")
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{what} must be a rectangular array of numbers ({exc})") from None
    return value


class GraphRunner:
    """The plan of a graph: its steps, a Model per segment, the last use of each tensor.

    ``chain_model`` is the class that runs a chain (:class:`grurt.model.Model`, called as
    ``chain_model(spec, weights, stored)``) and ``memory_limit()`` gives grurt.model.MEMORY_LIMIT_BYTES
    at the time of a call: both from the module above this one."""

    def __init__(self, graph: Graph, weights: str, stored: dict, chain_model, memory_limit):
        self.graph = graph
        self.memory_limit = memory_limit
        self.steps = segments(graph)
        index_of = {id(node): i for i, node in enumerate(graph.nodes)}
        gru_index = {id(node): i for i, node in enumerate(graph.gru_nodes)}
        self.models, self.gru_positions = {}, {}
        for step in self.steps:
            # the stored reduced-precision arrays are keyed by node; a segment's Model by its layer
            nodes = step.nodes if isinstance(step, Segment) else [step]
            sub_stored = {(k, name): parts for k, node in enumerate(nodes)
                          for (i, name), parts in stored.items() if i == index_of[id(node)]}
            if isinstance(step, Segment):
                self.models[id(step)] = chain_model(step.spec(graph), weights, sub_stored)
                self.gru_positions[id(step)] = [gru_index[id(node)] for node in step.grus]
            elif isinstance(step.layer, GRU):      # a GRU reading a mask: run returning its sequence
                layer = dataclasses.replace(step.layer, return_sequences=True)
                self.models[id(step)] = chain_model(ModelSpec(layer.input_size, (layer,)), weights, sub_stored)
                self.gru_positions[id(step)] = [gru_index[id(step)]]
        last_use = {}
        for position, step in enumerate(self.steps):
            for name in self._reads(step):
                last_use[name] = position
        keep = set(graph.output_names)
        self.release = [[name for name, at in last_use.items() if at == position and name not in keep]
                        for position in range(len(self.steps))]
        #: the GRU nodes whose h0 is a tensor of the graph
        self.state_fed = {self.gru_positions[id(step)][i] for step in self.steps if isinstance(step, Segment)
                          for i in step.states_in}
        self.state_fed |= {gru_index[id(node)] for node in graph.gru_nodes if len(node.inputs) == 3}
        self.inputs = {i.name: i for i in graph.inputs}
        self.masking = [node for node in graph.nodes if isinstance(node.layer, Masking)]
        self.new_steps = [node for node in graph.nodes if isinstance(node.layer, NEW_STEPS_LAYERS)]

    @staticmethod
    def _reads(step):
        if isinstance(step, Segment):
            return [step.source] + list(step.states_in.values())
        return list(step.inputs)

    # ---- inputs ----

    def checked_inputs(self, values):
        """{name: batched float32 (or integer ids) array}, single (no batch axis given), batch."""
        env, single, batch = {}, None, None
        for name, value in by_name(values, self.graph.input_names).items():
            a, is_single = self.check_input(name, value)
            if single is None:
                single, batch = is_single, a.shape[0]
            elif is_single != single:
                raise InputError(f"input '{name}': give every input with a batch axis or none without one")
            elif a.shape[0] != batch:
                raise InputError(f"input '{name}' has a batch of {a.shape[0]}, another input {batch}")
            env[name] = a
        return env, single, batch

    def check_input(self, name: str, value, block: bool = True):
        """One input as the graph holds it (batch first; a state as (B, D·H); float32 or integer ids),
        and whether it came without a batch axis. ``block`` False: a sequence input as one frame."""
        spec = self.inputs[name]
        what = f"input '{name}'"
        a = input_array(value, what)
        if spec.kind == "ids":
            if a.dtype.kind not in "iu":
                raise InputError(f"{what} takes integer token ids, got dtype {a.dtype}")
        elif a.dtype.kind not in "fiub":
            raise InputError(f"{what} must be real numbers, got dtype {a.dtype}")
        base = {"sequence": 2, "vector": 1, "state": 2, "ids": 1}[spec.kind]    # dimensions without a batch axis
        if not block and spec.kind in ("sequence", "ids"):
            base -= 1                                                            # one frame: no time axis
        if a.ndim not in (base, base + 1):
            raise InputError(f"{what} must be {self._shape_text(spec, block)}, got shape {a.shape}")
        single = a.ndim == base
        if spec.kind == "state":
            d, h = spec.directions, spec.size // spec.directions
            if a.shape[0] != d or a.shape[-1] != h:
                raise InputError(f"{what} must be {self._shape_text(spec, block)}, got shape {a.shape}")
            a = a[:, None] if single else a
            a = a.transpose(1, 0, 2).reshape(a.shape[1], d * h)
        else:
            a = a[None] if single else a
            if spec.kind != "ids" and a.shape[-1] != spec.size:
                raise InputError(f"{what} has {a.shape[-1]} features, the model expects {spec.size} "
                                 f"({self._shape_text(spec, block)})")
        if 0 in a.shape:
            raise InputError(f"{what} is empty (shape {a.shape})")
        return (a if spec.kind == "ids" else np.ascontiguousarray(a, dtype=_FLOAT32)), single

    @staticmethod
    def _shape_text(spec, block: bool = True) -> str:
        if spec.kind == "state":
            d, h = spec.directions, spec.size // spec.directions
            return f"({d}, B, {h}) or ({d}, {h})"
        if spec.kind == "vector" or (spec.kind == "sequence" and not block):
            return f"(B, {spec.size}) or ({spec.size},)"
        return {"sequence": f"(B, T, {spec.size}) or (T, {spec.size})",
                "ids": "(B, T) or (T,) token ids" if block else "(B,) token ids or one id"}[spec.kind]

    def checked_lengths(self, lengths, env, batch: int, single: bool) -> np.ndarray:
        """``lengths`` (B,) as int32, checked against every sequence input's steps (each sequence of the
        graph has its input's lengths)."""
        values = input_array(lengths, "lengths")
        if single and values.ndim == 0:
            values = values.reshape(1)     # one sequence's length, as its segments take it (batch of one)
        if values.shape != (batch,) or values.dtype.kind not in "iu":
            raise InputError(f"lengths must be integers of shape ({batch},), got {values.dtype} {values.shape}")
        for name, spec in self.inputs.items():
            if spec.kind in ("sequence", "ids") and not 1 <= values.min() <= values.max() <= env[name].shape[1]:
                raise InputError(f"lengths must be between 1 and {env[name].shape[1]}, the steps of input "
                                 f"'{name}', got {values.min()}..{values.max()}")
        return np.ascontiguousarray(values, dtype=np.int32)

    def initial_states(self, initial_state, batch: int, single: bool):
        """One (D, B, H) state or None per GRU node, from the user's list (None entries allowed)."""
        grus = self.graph.gru_nodes
        if initial_state is None:
            return None
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != len(grus):
            raise InputError(f"initial_state must be a list of {len(grus)} arrays (or None), one per GRU node")
        states = []
        for index, (value, node) in enumerate(zip(initial_state, grus)):
            if value is None:
                states.append(None)
                continue
            if index in self.state_fed:
                raise InputError(f"initial_state[{index}]: GRU node {node.describe()} takes its state from "
                                 f"tensor '{node.inputs[1]}'; give None there")
            d, h = node.layer.num_directions, node.layer.hidden_size
            expected = (d, h) if single else (d, batch, h)
            value = input_array(value, f"initial_state[{index}]")
            if value.dtype.kind not in "fiub" or value.shape != expected:
                raise InputError(f"initial_state[{index}] must be a real array of shape {expected}, "
                                 f"got {value.dtype} {value.shape}")
            states.append(np.array(value, dtype=np.float32).reshape(d, batch, h))
        return states

    # ---- a call ----

    def run(self, values, initial_state, return_state, lengths, threads):
        env, single, batch = self.checked_inputs(values)
        if lengths is not None:
            if self.masking:
                raise InputError(f"node {self.masking[0].describe()} derives the valid steps from the input: "
                                 "this model takes no lengths")
            if self.new_steps:
                raise InputError(f"node {self.new_steps[0].describe()} makes a sequence of other steps than its "
                                 "input's: this model takes no lengths")
            lengths = self.checked_lengths(lengths, env, batch, single)
        user_states = self.initial_states(initial_state, batch, single)
        final_states = [None] * len(self.graph.gru_nodes)
        for position, step in enumerate(self.steps):
            if step.__class__ is Segment:
                self._run_segment(step, env, user_states, final_states, return_state, lengths, threads)
            else:
                self._run_node(step, env, user_states, final_states, threads)
            for name in self.release[position]:
                del env[name]
        outputs = []
        for output in self.graph.outputs:
            value = env[output.name]
            if output.directions is not None:
                d = output.directions
                value = value.reshape(batch, d, -1).transpose(1, 0, 2).copy()
                value = value[:, 0] if single else value
            elif single:
                value = value[0]
            outputs.append(value)
        result = outputs[0] if len(outputs) == 1 else tuple(outputs)
        if not return_state:
            return result
        return result, [s[:, 0] if single else s for s in final_states]

    def _run_node(self, node, env, user_states, final_states, threads):
        """A node run on whole arrays: a graph layer, or a GRU or GlobalPool reading a mask."""
        layer, arrays = node.layer, [env[name] for name in node.inputs]
        if layer.__class__ is Masking:
            env[node.outputs[0]], env[node.outputs[1]] = masking(layer, arrays[0])
        elif isinstance(layer, GlobalPool):
            env[node.outputs[0]] = masked_average(arrays[0], arrays[1])
        elif isinstance(layer, GRU):
            (position,) = self.gru_positions[id(node)]
            d, hidden, batch = layer.num_directions, layer.hidden_size, arrays[0].shape[0]
            if len(arrays) == 3:
                h0 = arrays[1].reshape(batch, d, hidden).transpose(1, 0, 2)
            elif user_states and user_states[position] is not None:
                h0 = user_states[position]
            else:
                h0 = layer.default_state(batch)
            out, h = masked_gru(self.models[id(node)], layer, arrays[0], arrays[-1], h0, threads)
            final_states[position] = h
            env[node.outputs[0]] = out
            if len(node.outputs) == 2:
                env[node.outputs[1]] = np.ascontiguousarray(h.transpose(1, 0, 2).reshape(batch, -1))
        else:
            env[node.outputs[0]] = combine(node, arrays, self.memory_limit())

    def _run_segment(self, step: Segment, env, user_states, final_states, return_state, lengths, threads):
        model = self.models[id(step)]
        x = env[step.source]
        if step.vector:
            x = x[:, None, :]
        states_in, states_out = step.states_in, step.states_out
        wants_states = return_state or bool(states_out)
        if not (wants_states or states_in or user_states):    # the common case: zero states, no state out
            result = model.run(x, None, False, None if step.vector else lengths, threads)
            env[step.output] = result[:, 0] if step.vector else result
            return
        positions = self.gru_positions[id(step)]
        batch = x.shape[0]
        states = None
        if wants_states or states_in or any(user_states[p] is not None for p in positions):
            states = []
            for i, p in enumerate(positions):
                layer = step.grus[i].layer
                d, h = layer.num_directions, layer.hidden_size
                if i in states_in:
                    states.append(env[states_in[i]].reshape(batch, d, h).transpose(1, 0, 2))
                elif user_states and user_states[p] is not None:
                    states.append(user_states[p])
                else:
                    states.append(layer.default_state(batch))
        result = model.run(x, initial_state=states, return_state=wants_states,
                           lengths=None if step.vector else lengths, threads=threads)
        if wants_states:
            result, finals = result
            for i, (p, state) in enumerate(zip(positions, finals)):
                final_states[p] = state
                if i in states_out:
                    env[states_out[i]] = np.ascontiguousarray(state.transpose(1, 0, 2).reshape(batch, -1))
        env[step.output] = result[:, 0] if step.vector else result


class GraphStream:
    """A graph fed one frame (or a block of frames) at a time; see :meth:`grurt.Model.stream`.

    Tensors that depend on a sequence input are computed frame by frame, by a
    :class:`~grurt.model.Stream` per chain; those that depend only on the static inputs
    (vectors and states, given per stream) are computed once, when the stream starts or is reset.
    """

    def __init__(self, model, batch: int = 1, threads: int = 1, static=None):
        runner = self.runner = model._graph
        graph = runner.graph
        self.model = model
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be a positive integer, got {batch!r}")
        self.batch, self.threads = batch, threads
        self.frame_names = tuple(i.name for i in graph.inputs if i.kind in ("sequence", "ids"))
        self.static_names = tuple(i.name for i in graph.inputs if i.kind not in ("sequence", "ids"))
        if not self.frame_names:
            raise InputError("this model has no sequence input: there is nothing to stream, use run()")
        per_frame = set(self.frame_names)
        self.streams = {}
        for step in runner.steps:
            if not any(name in per_frame for name in runner._reads(step)):
                continue
            if isinstance(step, Segment):
                fed = [name for name in step.states_in.values() if name in per_frame]
                if fed:
                    raise InputError(f"a GRU takes its initial state from '{fed[0]}', which is computed from a "
                                     "whole sequence: this model cannot stream, use run()")
                try:
                    self.streams[id(step)] = runner.models[id(step)].stream(batch, threads)
                except InputError as exc:
                    raise InputError(f"in the chain {' -> '.join(n.describe() for n in step.nodes)}: {exc}") from None
                per_frame.update(step.states_out.values())
                per_frame.add(step.output)
                continue
            if isinstance(step.layer, PReLU) and step.layer.steps is not None:
                raise InputError(f"node {step.describe()} has an alpha per step of a {step.layer.steps}-step "
                                 "sequence: this model cannot stream, use run()")
            if isinstance(step.layer, GlobalPool):
                raise InputError(f"node {step.describe()} needs the whole sequence: this model cannot stream, "
                                 "use run()")
            if isinstance(step.layer, GRU):     # a stream reads every frame as valid: its mask is not read
                if len(step.inputs) == 3:
                    raise InputError(f"node {step.describe()} takes its initial state from a tensor and reads a "
                                     "mask: this model cannot stream, use run()")
                try:
                    self.streams[id(step)] = runner.models[id(step)].stream(batch, threads)
                except InputError as exc:
                    raise InputError(f"node {step.describe()}: {exc}") from None
            per_frame.update(step.outputs)
        for step in runner.steps:
            if not isinstance(step, Segment) and isinstance(step.layer, NEW_STEPS_LAYERS):
                raise InputError(f"node {step.describe()} makes a sequence of other steps than the input's: this "
                                 "model cannot stream, use run()")
        self.per_frame = per_frame
        #: what one advance runs, in order: (its Stream, segment or masked GRU node) or (None, graph layer node)
        self.frame_steps = [(self.streams.get(id(step)), step) for step in runner.steps
                            if id(step) in self.streams or (not isinstance(step, Segment)
                                                            and step.outputs[0] in per_frame)]
        self.static_env = {}
        self.reset(static)

    def reset(self, static=None):
        """Zero every state, as at the start of a new stream; ``static`` (required the first time,
        for a model with static inputs) gives new values of the static inputs."""
        runner = self.runner
        if static is not None or not self.static_env:
            self.static_env = self._static(static)
        for step in runner.steps:
            if id(step) in self.streams:
                stream = self.streams[id(step)]
                stream.reset()
                if isinstance(step, Segment) and step.states_in:
                    states = []
                    for i, node in enumerate(step.grus):
                        d, h = node.layer.num_directions, node.layer.hidden_size
                        given = self.static_env.get(step.states_in.get(i))
                        states.append(node.layer.default_state(self.batch) if given is None
                                      else given.reshape(self.batch, d, h).transpose(1, 0, 2))
                    stream.state = states

    def _static(self, static) -> dict:
        """The tensors computed from the static inputs alone, for this stream's batch."""
        runner, names = self.runner, self.static_names
        if not names:
            if static is not None:
                raise InputError("this model has no static inputs, got static=")
            return {}
        if static is None:
            raise InputError(f"this model's static inputs {list(names)} must be given: "
                             "model.stream(static={name: value})")
        static = by_name(static, names, "static input")
        env = {}
        for name, value in static.items():
            a, _ = runner.check_input(name, value)
            if a.shape[0] != self.batch:
                raise InputError(f"input '{name}' has a batch of {a.shape[0]}, the stream {self.batch}")
            env[name] = a
        for step in runner.steps:
            if id(step) in self.streams or any(name in self.per_frame for name in runner._reads(step)):
                continue
            if isinstance(step, Segment):
                runner._run_segment(step, env, None, [None] * len(runner.graph.gru_nodes), False, None, self.threads)
            else:
                runner._run_node(step, env, None, None, self.threads)
        return env

    def _frames(self, frames, block: bool):
        """{name: (batch, n, I) floats or (batch, n) ids} of the sequence inputs, n, and single."""
        names = self.frame_names
        if type(frames) is np.ndarray and len(names) == 1 and frames.dtype == _FLOAT32 and frames.flags.c_contiguous:
            spec = self.runner.inputs[names[0]]   # the common call: one float32 frame or block, the right shape
            shape = frames.shape
            if spec.kind == "sequence" and shape[-1] == spec.size and 0 not in shape:
                if len(shape) == 1 + block and self.batch == 1:
                    return {names[0]: frames.reshape(1, -1, spec.size)}, (shape[0] if block else 1), True
                if len(shape) == 2 + block and shape[0] == self.batch:
                    return {names[0]: frames.reshape(self.batch, -1, spec.size)}, (shape[1] if block else 1), False
        frames = by_name(frames, names, "sequence input")
        env, single, steps = {}, None, None
        for name in names:
            a, is_single = self.runner.check_input(name, frames[name], block)
            if is_single and self.batch != 1:
                raise InputError(f"input '{name}': this stream runs a batch of {self.batch}; give the batch axis")
            if a.shape[0] != self.batch:
                raise InputError(f"input '{name}' has a batch of {a.shape[0]}, the stream {self.batch}")
            if not block:
                a = a[:, None]
            if single is None:
                single, steps = is_single, a.shape[1]
            elif is_single != single or a.shape[1] != steps:
                raise InputError(f"input '{name}': every sequence input needs the same number of frames "
                                 "and the same form (with or without the batch axis)")
            env[name] = a
        return env, steps, single

    def step(self, frames):
        """Advance by one frame of each sequence input: (I,) when batch is 1, or (batch, I) (an id, or
        (batch,) ids). Returns each output at this frame (a tuple for several outputs)."""
        return self._advance(frames, block=False)

    def run(self, frames):
        """Advance by a block of n frames of each sequence input: (n, I) when batch is 1, or
        (batch, n, I). Returns each output at every frame, as ``step`` frame by frame would."""
        return self._advance(frames, block=True)

    def _advance(self, frames, block: bool):
        env, steps, single = self._frames(frames, block)
        runner = self.runner
        env.update(self.static_env)
        for stream, step in self.frame_steps:
            if stream is not None and step.__class__ is not Segment:       # a GRU node reading a mask
                out = stream.run(env[step.inputs[0]])
                for name in step.outputs:                 # a streamed GRU is forward: its h_n is its output
                    env[name] = out
            elif stream is not None:
                out = stream.run(env[step.source])
                env[step.output] = out
                for name in step.states_out.values():     # a streamed GRU is forward: its h_n is its output
                    env[name] = out
            elif step.layer.__class__ is Masking:
                env[step.outputs[0]], env[step.outputs[1]] = masking(step.layer, env[step.inputs[0]])
            else:
                arrays = [env[n] if n in self.per_frame else
                          np.broadcast_to(env[n][:, None], (self.batch, steps, env[n].shape[-1]))
                          for n in step.inputs]
                env[step.outputs[0]] = combine(step, arrays, runner.memory_limit())
        outputs = []
        for output in runner.graph.outputs:
            value = env[output.name]
            if output.name not in self.per_frame:
                value = np.broadcast_to(value[:, None], (self.batch, steps, value.shape[-1])).copy()
            if output.directions is not None:
                d = output.directions
                value = value.reshape(self.batch, steps, d, -1).transpose(2, 0, 1, 3)
                value = value[:, :, 0] if not block else value
                value = value[:, 0] if single else value
            else:
                value = value[:, 0] if not block else value
                value = value[0] if single else value
            outputs.append(np.ascontiguousarray(value))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @property
    def state(self):
        """Copies of the GRU states, (directions, batch, hidden) per GRU node in the graph's order."""
        states = [None] * len(self.runner.graph.gru_nodes)
        for step in self.runner.steps:
            if id(step) in self.streams:
                values = self.streams[id(step)].state
                for i, position in enumerate(self.runner.gru_positions[id(step)]):
                    states[position] = values[i]
        return states

    @state.setter
    def state(self, values):
        grus = self.runner.graph.gru_nodes
        if not isinstance(values, (list, tuple)) or len(values) != len(grus):
            raise InputError(f"state must be a list of {len(grus)} arrays, one per GRU node")
        for step in self.runner.steps:
            if id(step) in self.streams:
                self.streams[id(step)].state = [values[p] for p in self.runner.gru_positions[id(step)]]
