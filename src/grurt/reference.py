"""The reference implementation: the canonical model executed in plain numpy, float64 inside.

Written for clarity, independently of the kernels, and used as the oracle in the tests.
``run`` takes the same arguments as :meth:`grurt.Model.run`.
"""
from __future__ import annotations

import numpy as np

from .spec import GRU, Activation, Dense, LastStep, Merge, ModelSpec, Reverse, Scale
from .spec import Embedding, Flatten, GlobalPool, LayerNorm, UnitNorm
from .errors import InputError, UnsupportedModelError
from .spec import TIME_LAYERS, Conv1D, Pool1D, frame_rate_layers, output_steps
from .graph import Combine, Concat, Crop, Graph, Masking, PReLU, Repeat, Slice, Unflatten, path_graph
# the GRU maths and the activations live with the GRU op's reference (the reference of every op is below this module)
from .reference_ops.recurrent import apply_activation, gru, gru_direction  # noqa: F401 (public: grurt.reference.gru)


def masked_gru(layer: GRU, x: np.ndarray, h0: np.ndarray, mask: np.ndarray):
    """A GRU node reading a mask (grurt.graph.Masking's rule): its output and (D, B, H) final state.
    Without return_sequences the output is each direction's output at the last step it reads."""
    reverse_flags = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[layer.direction]
    zeros = layer.direction == "bidirectional" and layer.return_sequences
    outputs, states = [], []
    for d, reverse in enumerate(reverse_flags):
        y, h = gru_direction(layer, d, x, h0[d], reverse, np.full(x.shape[0], x.shape[1]), mask, zeros)
        outputs.append(y if layer.return_sequences else y[:, 0 if reverse else -1])
        states.append(h)
    return np.concatenate(outputs, axis=-1), np.stack(states)


def learned_state(layer: GRU, batch: int) -> np.ndarray:
    """The (D, B, H) state a GRU starts from without one given: its initial_state for every sequence, or zeros."""
    if layer.initial_state is None:
        return np.zeros((layer.num_directions, batch, layer.hidden_size))
    return np.stack([np.asarray(layer.initial_state, np.float64)] * batch, axis=1)


def reverse_time(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse each sequence within its own length; padding stays where it is."""
    out = x.copy()
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n][::-1]
    return out


def embed(layer: Embedding, ids: np.ndarray) -> np.ndarray:
    """Rows of the table for integer ids (B, T) → (B, T, E); ids outside [0, vocabulary) are an error."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= layer.vocabulary):
        raise IndexError(f"ids must be in [0, {layer.vocabulary}), got {ids.min()}..{ids.max()}")
    return np.asarray(layer.table, np.float64)[ids]


def layer_norm(layer: LayerNorm, x: np.ndarray) -> np.ndarray:
    """(x − mean) / sqrt(var + eps) · gamma + beta over the last axis, var biased."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + layer.epsilon) * layer.gamma + layer.beta


def unit_norm(layer: UnitNorm, x: np.ndarray) -> np.ndarray:
    """x / max(‖x‖₂, eps) over the last axis; a zero vector gives zeros (also when eps is 0)."""
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    denominator = np.maximum(norm, layer.epsilon)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, x / np.where(denominator > 0, denominator, 1.0), 0.0)


def global_pool(layer: GlobalPool, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean or max of each sequence over its own valid steps: (B, T, F) → (B, F)."""
    pool = np.mean if layer.mode == "average" else np.max
    return np.stack([pool(x[b, :n], axis=0) for b, n in enumerate(lengths)])


def run(model, seq, initial_state=None, return_state=False, lengths=None):
    """Run ``model`` (a ModelSpec, Graph or Model) on ``seq`` exactly as :meth:`grurt.Model.run` does.

    A model that takes ids (its first layer an Embedding) takes integer ids (T,) or (B, T).
    """
    spec: ModelSpec = getattr(model, "spec", model)
    if isinstance(spec, Graph):
        return run_graph(spec, seq, initial_state, return_state, lengths)
    if spec.mask_value is not None and lengths is None:      # a Masking first, its mask as the graph reads it
        return run_graph(path_graph(spec.input_size, spec.layers, mask_value=spec.mask_value), seq, initial_state,
                         return_state)
    if spec.takes_ids:
        ids = np.asarray(seq)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        x = embed(spec.layers[0], ids)
    else:
        x = np.asarray(seq, dtype=np.float64)
        single = x.ndim == 2
        if single:
            x = x[None]
    batch, steps, _ = x.shape
    flattened = output_steps(spec, steps)   # InputError when a window finds no frames, as Model.run
    if spec.fixed_steps is not None and flattened != spec.fixed_steps:
        raise ValueError(f"the model runs on sequences of exactly {spec.fixed_steps} steps at its Flatten, "
                         f"got {flattened} (from {steps} input frames)")
    if lengths is not None and frame_rate_layers(spec):
        index, layer = frame_rate_layers(spec)[0]
        raise InputError(f"lengths cannot be used with layer {index} ({layer.describe()}), "
                         "which changes the number of frames or looks ahead")
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths).reshape(batch)
    grus = spec.gru_layers
    initial_state = [None] * len(grus) if initial_state is None else initial_state
    initial_state = [learned_state(g, batch) if s is None else
                     np.asarray(s, np.float64).reshape(g.num_directions, batch, g.hidden_size)
                     for s, g in zip(initial_state, grus)]
    states = []
    for layer in spec.layers[1:] if spec.takes_ids else spec.layers:      # the Embedding read the ids above
        h0 = initial_state[len(states)] if isinstance(layer, GRU) else None
        x, h, lengths = apply_layer(layer, x, lengths, h0)
        if h is not None:
            states.append(h)
    out = x.astype(np.float32)
    states = [h.astype(np.float32) for h in states]
    if single:
        out = out[0]
        states = [h[:, 0] for h in states]
    return (out, states) if return_state else out


def run_graph(graph: Graph, inputs, initial_state=None, return_state=False, lengths=None):
    """Run a graph node by node in its order, on float64 arrays. ``inputs``: one array (a graph of one
    input), a list in input order or a dict by name; the rest as :meth:`grurt.Model.run`."""
    if not isinstance(inputs, dict):
        inputs = dict(zip(graph.input_names, [inputs] if len(graph.inputs) == 1 else inputs))
    env, single = {}, False
    for spec in graph.inputs:
        value = np.asarray(inputs[spec.name])
        single = value.ndim == {"sequence": 2, "ids": 1, "vector": 1, "state": 2}[spec.kind]
        if spec.kind == "ids":
            env[spec.name] = value[None] if single else value
        elif spec.kind == "state":         # (D, B, H) → (B, D·H)
            value = value[:, None] if single else value
            env[spec.name] = np.concatenate(list(value.astype(np.float64)), axis=-1)
        else:
            env[spec.name] = value.astype(np.float64)[None] if single else value.astype(np.float64)
    batch = env[graph.input_names[0]].shape[0]
    if lengths is not None and any(isinstance(node.layer, Masking) for node in graph.nodes):
        raise InputError("a graph with a Masking node takes no lengths")
    lengths = None if lengths is None else np.asarray(lengths).reshape(batch)
    grus = graph.gru_nodes
    given = list(initial_state) if initial_state is not None else [None] * len(grus)
    states = []
    for node in graph.nodes:
        layer, args = node.layer, [env[name] for name in node.inputs]
        masked = args[-1].dtype == bool and len(args) > 1        # a mask as the last input
        if isinstance(layer, Masking):
            x = args[0]
            if x.dtype.kind in "iu":
                env[node.outputs[1]] = x != layer.value
                out = x
            else:
                env[node.outputs[1]] = (x != layer.value).any(axis=-1)
                out = np.where(env[node.outputs[1]][..., None], x, 0.0)
        elif masked and isinstance(layer, GlobalPool):
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(args[1][..., None], args[0], 0.0).sum(axis=1) / args[1].sum(axis=1)[:, None]
        elif masked:                                            # a GRU
            d, hidden = layer.num_directions, layer.hidden_size
            if len(args) == 3:
                h0 = args[1].reshape(batch, d, hidden).transpose(1, 0, 2)
            elif given[len(states)] is not None:
                h0 = np.asarray(given[len(states)], np.float64).reshape(d, batch, hidden)
            else:
                h0 = learned_state(layer, batch)
            out, h = masked_gru(layer, args[0], h0, args[-1])
            states.append(h)
            if len(node.outputs) == 2:
                env[node.outputs[1]] = np.concatenate(list(h), axis=-1)
        elif isinstance(layer, Slice):
            out = args[0][..., layer.begin:layer.end]
        elif isinstance(layer, PReLU):
            out = np.where(args[0] >= 0, args[0], args[0] * np.asarray(layer.alpha, np.float64))
        elif isinstance(layer, Repeat):
            out = np.stack([args[0]] * layer.steps, axis=1)
        elif isinstance(layer, Unflatten):
            out = args[0].reshape(batch, layer.steps, -1)
        elif isinstance(layer, Crop):
            out = args[0][:, layer.left:args[0].shape[1] - layer.right]
        elif isinstance(layer, Concat):
            out = np.concatenate(args, axis=-1)
        elif isinstance(layer, Combine):
            ops = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
                   "mean": np.add}
            out = args[0]
            for other in args[1:]:
                out = ops[layer.op](out, other)
            out = out / len(args) if layer.op == "mean" else out
        else:
            h0 = None
            if isinstance(layer, GRU):
                d, hidden = layer.num_directions, layer.hidden_size
                if len(args) == 2:              # h0 (B, D·H) → (D, B, H)
                    h0 = args[1].reshape(batch, d, hidden).transpose(1, 0, 2)
                elif given[len(states)] is not None:
                    h0 = np.asarray(given[len(states)], np.float64).reshape(d, batch, hidden)
            x = args[0]
            # the lengths given hold for every sequence; without them each runs whole
            has_time = x.ndim == 3 or isinstance(layer, Embedding)
            seq_lengths = (np.full(batch, x.shape[1]) if lengths is None else lengths) if has_time else np.ones(batch, int)
            out, h, _ = apply_layer(layer, x, seq_lengths, h0)
            if h is not None:
                states.append(h)
                if len(node.outputs) == 2:
                    env[node.outputs[1]] = np.concatenate(list(h), axis=-1)
        env[node.outputs[0]] = out
    outputs = []
    for output in graph.outputs:
        value = env[output.name]
        if output.directions is not None:
            value = value.reshape(batch, output.directions, -1).transpose(1, 0, 2)
            value = value[:, 0] if single else value
        elif single:
            value = value[0]
        outputs.append(value.astype(np.float32))
    result = outputs[0] if len(outputs) == 1 else tuple(outputs)
    if not return_state:
        return result
    return result, [h.astype(np.float32)[:, 0] if single else h.astype(np.float32) for h in states]


def apply_layer(layer, x: np.ndarray, lengths: np.ndarray, h0=None):
    """One layer on float64 ``x`` ((B, T, F) or (B, F)) with the sequences' ``lengths``: the output
    (zero past each sequence's end), a GRU's final state (D, B, H) or None, and the lengths (all
    equal to the new step count when a layer changes the number of frames)."""
    batch = x.shape[0]
    h = None
    if isinstance(layer, GRU):
        if h0 is None:
            h0 = learned_state(layer, batch)
        y, h = gru(layer, x, h0, lengths)
        x = y if layer.return_sequences else np.concatenate(list(h), axis=-1)
    elif isinstance(layer, Dense):
        x = apply_activation(layer.activation, x @ np.asarray(layer.W, np.float64).T + layer.b)
    elif isinstance(layer, Activation):
        x = apply_activation(layer.function, x)
    elif isinstance(layer, Scale):
        x = x * layer.a + layer.c
    elif isinstance(layer, Reverse):
        x = reverse_time(x, lengths)
    elif isinstance(layer, Merge):
        first, second = np.split(x, 2, axis=-1)
        x = {"sum": first + second, "ave": (first + second) / 2, "mul": first * second}[layer.mode]
    elif isinstance(layer, LastStep):
        x = x[np.arange(batch), lengths - 1]
    elif isinstance(layer, Embedding):
        x = embed(layer, x)
    elif isinstance(layer, LayerNorm):
        x = layer_norm(layer, x)
    elif isinstance(layer, UnitNorm):
        x = unit_norm(layer, x)
    elif isinstance(layer, GlobalPool):
        x = global_pool(layer, x, lengths)
    elif isinstance(layer, Flatten):
        x = x.reshape(batch, -1)
    elif isinstance(layer, TIME_LAYERS):
        x = time_layer(layer, x)
        if x.shape[1] != lengths.max():      # only whole sequences (no lengths) change their frame count
            lengths = np.full(batch, x.shape[1])
    else:
        raise AssertionError(f"unhandled layer {layer!r}")
    if x.ndim == 3:
        # outputs past a sequence's end are zero, whatever the layer computes there
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        x = np.where(mask[..., None], x, 0.0)
    return x, h, lengths


# ---- layers over time (issue 12) ----

def conv1d(layer: Conv1D, x: np.ndarray) -> np.ndarray:
    """x (B, T, C) -> (B, T_out, O): for each tap j, the strided frames t·s + j·d of the padded input."""
    batch, steps, channels = x.shape
    left, right = layer.pads(steps)
    xp = np.concatenate([np.zeros((batch, left, channels)), x, np.zeros((batch, right, channels))], axis=1)
    out_steps = layer.output_steps(steps)
    W = np.asarray(layer.W, np.float64)                     # (O, C/G, k)
    G, s, d = layer.groups, layer.stride, layer.dilation
    og, cg = W.shape[0] // G, W.shape[1]
    y = np.zeros((batch, out_steps, W.shape[0]))
    for g in range(G):
        acc = np.zeros((batch, out_steps, og)) + np.asarray(layer.b[g * og:(g + 1) * og], np.float64)
        for j in range(layer.kernel_size):
            frames = xp[:, j * d: j * d + s * (out_steps - 1) + 1: s, g * cg:(g + 1) * cg]
            acc += frames @ W[g * og:(g + 1) * og, :, j].T
        y[..., g * og:(g + 1) * og] = acc
    return apply_activation(layer.activation, y)


def pool1d(layer: Pool1D, x: np.ndarray) -> np.ndarray:
    """Window t covers input frames t·stride − left ... + size − 1, clipped to the real frames."""
    batch, steps, features = x.shape
    left, _ = layer.pads(steps)
    out_steps = layer.output_steps(steps)
    y = np.empty((batch, out_steps, features))
    for t in range(out_steps):
        start = t * layer.stride - left
        window = x[:, max(start, 0):min(start + layer.size, steps)]
        if layer.mode == "max":
            y[:, t] = window.max(axis=1)
        else:
            y[:, t] = window.sum(axis=1) / (layer.size if layer.count_include_pad else window.shape[1])
    return y


def time_layer(layer, x: np.ndarray) -> np.ndarray:
    if isinstance(layer, Conv1D):
        return conv1d(layer, x)
    if isinstance(layer, Pool1D):
        return pool1d(layer, x)
    return np.pad(x, ((0, 0), (layer.left, layer.right), (0, 0)))


# ---- general tensor graphs (grurt.tensor_graph) ----

def chain_node(attrs, inputs):
    """The reference of a ``grurt.Chain`` node (grurt.ops.chain): :func:`run` of its layers. It lives here, not
    in grurt.reference_ops (which this module's run_tensor_graph reads): that keeps the package free of cycles.
    Histories (a chain continuing a stream) are the stream's business: the reference runs whole sequences."""
    layers = attrs["layers"]
    x, lengths = (list(inputs) + [None])[:2]
    spec = ModelSpec(None if isinstance(layers[0], Embedding) else x.shape[2], layers, attrs["mask_value"])
    grus = len(spec.gru_layers)
    states = list(inputs[2:2 + grus]) + [None] * (grus - len(inputs[2:2 + grus]))
    if any(v is not None for v in inputs[2 + grus:]):
        raise UnsupportedModelError("the reference of grurt.Chain runs whole sequences: it takes no Conv1D histories")
    y, h = run(spec, x, states, return_state=True, lengths=lengths)
    return [y] + h


def run_tensor_graph(graph, inputs):
    """Run a :class:`~grurt.tensor_graph.TensorGraph` node by node through the float64 reference
    of each op (:data:`grurt.reference_ops.REFERENCE`): no folding, no plan, no kernels.

    ``inputs``: one array (a graph of one input), a list in input order or a dict by name.
    Returns float64 arrays for float tensors (int64, bool for the others): one, or a tuple in
    output order."""
    from .graph_model import by_name
    from .reference_ops import REFERENCE

    given = by_name(inputs, graph.input_names)
    env = {}
    for declared in graph.inputs:
        value = np.asarray(given[declared.name])
        env[declared.name] = value.astype({"float32": np.float64, "int64": np.int64, "bool": np.bool_}[declared.dtype])
    for name, array in graph.constants.items():
        env[name] = _float64(array)
    for node in graph.nodes:
        args = [env[name] if name else None for name in node.inputs]
        attrs = {k: _float64(v) if isinstance(v, np.ndarray) else v for k, v in node.attrs.items()}
        results = (chain_node if node.op == "grurt.Chain" else REFERENCE[node.op])(attrs, args)
        for name, value in zip(node.outputs, results):
            if name:
                env[name] = _float64(np.asarray(value))
    outputs = tuple(env[name] for name in graph.outputs)
    return outputs[0] if len(outputs) == 1 else outputs


def _float64(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float64) if array.dtype.kind == "f" else array
