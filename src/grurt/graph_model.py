"""A graph model's inputs: by name or in order (:func:`by_name`), as arrays (:func:`input_array`), and checked
as a :class:`grurt.graph.Graph` declares them (:class:`GraphInputs`), for the graph lowered onto a tensor graph
(:mod:`grurt.graph_lower`) that :class:`grurt.model.GraphModel` runs."""
from __future__ import annotations

import numpy as np

from .errors import InputError
from ._kernels import _memory_limit
from .graph import NEW_STEPS_LAYERS, Combine, Concat, Crop, Graph, Masking, PReLU, Repeat, Segment, Unflatten, segments
from .spec import GRU, GlobalPool, output_steps

_FLOAT32 = np.dtype(np.float32)


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


class GraphInputs:
    """A graph model's run-time inputs checked (the messages name the input and the shapes expected) and given as
    its lowered graph (grurt.graph_lower) takes them: batch first, a state (D, B, H), float32 or int64 ids."""

    def __init__(self, graph: Graph):
        self.graph = graph
        gru_index = {id(node): i for i, node in enumerate(graph.gru_nodes)}
        #: the GRU nodes whose h0 is a tensor of the graph
        self.state_fed = {gru_index[id(node)] for step in segments(graph) if isinstance(step, Segment)
                          for i, node in enumerate(step.grus) if i in step.states_in}
        self.state_fed |= {gru_index[id(node)] for node in graph.gru_nodes if len(node.inputs) == 3}
        self.inputs = {i.name: i for i in graph.inputs}
        self.input_names = graph.input_names
        self.masking = [node for node in graph.nodes if isinstance(node.layer, Masking)]
        self.new_steps = [node for node in graph.nodes if isinstance(node.layer, NEW_STEPS_LAYERS)]

    # ---- inputs ----

    def checked_inputs(self, values):
        """{name: batched float32 (or integer ids) array}, single (no batch axis given), batch."""
        env, single, batch = {}, None, None
        for name, value in by_name(values, self.input_names).items():
            a, is_single = self.check_input(name, value)
            size = a.shape[1] if self.inputs[name].kind == "state" else a.shape[0]
            if single is None:
                single, batch = is_single, size
            elif is_single != single:
                raise InputError(f"input '{name}': give every input with a batch axis or none without one")
            elif size != batch:
                raise InputError(f"input '{name}' has a batch of {size}, another input {batch}")
            env[name] = a
        return env, single, batch

    def check_steps(self, env, batch: int) -> None:
        """InputError naming the node where the inputs' numbers of steps do not fit (sequences of different
        lengths joined, a PReLU's alpha per step, a Crop of every step, a Repeat beyond the memory limit): checked
        once per input signature, before the lowered graph's plan is made."""
        steps = {name: a.shape[1] for name, a in env.items() if self.inputs[name].kind in ("sequence", "ids")}
        for step in segments(self.graph):
            if isinstance(step, Segment):
                n = steps.get(step.source)
                spec = step.spec(self.graph)
                try:
                    steps[step.output] = output_steps(spec, n) if n is not None and not step.vector and \
                        spec.returns_sequence else None
                except InputError:
                    return                      # the chain names its layer when it runs
                continue
            layer, given = step.layer, [steps.get(name) for name in step.inputs]
            n = given[0]
            if isinstance(layer, PReLU) and layer.steps is not None and n is not None and n != layer.steps:
                raise InputError(f"node {step.describe()}: its alpha holds {layer.steps} steps, the sequence has "
                                 f"{n}: this model runs on sequences of exactly {layer.steps} steps")
            if isinstance(layer, Repeat):
                features = self.graph.tensors[step.inputs[0]].features
                if 4 * batch * layer.steps * features > _memory_limit():      # Python ints: no overflow
                    raise InputError(f"node {step.describe()}: {batch} × {layer.steps} steps × {features} features "
                                     f"would need more than the limit of {_memory_limit() / 2**30:.1f} GiB "
                                     "(grurt.model.MEMORY_LIMIT_BYTES)")
                n = layer.steps
            elif isinstance(layer, Unflatten):
                n = layer.steps
            elif isinstance(layer, Crop) and n is not None:
                if n <= layer.left + layer.right:
                    raise InputError(f"node {step.describe()}: crops {layer.left + layer.right} steps of a sequence "
                                     f"of {n}: at least {layer.left + layer.right + 1} needed")
                n -= layer.left + layer.right
            elif isinstance(layer, (Combine, Concat)) and n is not None and any(m not in (None, n) for m in given):
                raise InputError(f"node {step.describe()}: its sequences have different numbers of steps "
                                 f"({', '.join(str(m) for m in given)})")
            elif isinstance(layer, GlobalPool) or isinstance(layer, GRU) and not layer.return_sequences:
                n = None                    # a GRU's last state, a pooling
            for name in step.outputs if isinstance(layer, Masking) else step.outputs[:1]:
                steps[name] = n

    def check_input(self, name: str, value, block: bool = True):
        """One input as the lowered graph takes it (batch first; a state (D, B, H); float32 or int64 ids),
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
            if 0 in a.shape:
                raise InputError(f"{what} is empty (shape {a.shape})")
            return np.ascontiguousarray(a, dtype=_FLOAT32), single
        else:
            a = a[None] if single else a
            if spec.kind != "ids" and a.shape[-1] != spec.size:
                raise InputError(f"{what} has {a.shape[-1]} features, the model expects {spec.size} "
                                 f"({self._shape_text(spec, block)})")
        if 0 in a.shape:
            raise InputError(f"{what} is empty (shape {a.shape})")
        return np.ascontiguousarray(a, dtype=np.int64 if spec.kind == "ids" else _FLOAT32), single

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
        """``lengths`` (B,) as int64, checked against every sequence input's steps (each sequence of the
        graph has its input's lengths); refused for a graph whose mask or steps are its own."""
        if self.masking:
            raise InputError(f"node {self.masking[0].describe()} derives the valid steps from the input: "
                             "this model takes no lengths")
        if self.new_steps:
            raise InputError(f"node {self.new_steps[0].describe()} makes a sequence of other steps than its "
                             "input's: this model takes no lengths")
        values = input_array(lengths, "lengths")
        if single and values.ndim == 0:
            values = values.reshape(1)     # one sequence's length, as its segments take it (batch of one)
        if values.shape != (batch,) or values.dtype.kind not in "iu":
            raise InputError(f"lengths must be integers of shape ({batch},), got {values.dtype} {values.shape}")
        for name, spec in self.inputs.items():
            if spec.kind in ("sequence", "ids") and not 1 <= values.min() <= values.max() <= env[name].shape[1]:
                raise InputError(f"lengths must be between 1 and {env[name].shape[1]}, the steps of input "
                                 f"'{name}', got {values.min()}..{values.max()}")
        return np.ascontiguousarray(values, dtype=np.int64)

    def initial_states(self, initial_state, batch: int, single: bool):
        """One (D, B, H) state or None per GRU node, from the user's list (None entries allowed)."""
        if initial_state is None:
            return None
        grus = self.graph.gru_nodes
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
