"""The reference implementation: the canonical model executed in plain numpy, float64 inside.

Written for clarity, independently of the kernels, and used as the oracle in the tests.
``run`` takes the same arguments as :meth:`grurt.Model.run`.
"""
from __future__ import annotations

import numpy as np

from .spec import GRU, Activation, ActivationFunction, Dense, LastStep, Merge, ModelSpec, Reverse, Scale
from .spec import Embedding, Flatten, GlobalPool, LayerNorm, UnitNorm


def apply_activation(fn: ActivationFunction, x: np.ndarray) -> np.ndarray:
    """Apply ``fn`` to a float64 array (softmax over the last axis)."""
    a, b = fn.alpha, fn.beta
    with np.errstate(over="ignore", invalid="ignore"):
        if fn.kind == "sigmoid":
            return 0.5 * (np.tanh(0.5 * x) + 1.0)
        if fn.kind == "tanh":
            return np.tanh(x)
        if fn.kind == "relu":
            return np.maximum(x, 0.0)
        if fn.kind == "softsign":
            return x / (1.0 + np.abs(x))
        if fn.kind == "softplus":
            return np.logaddexp(0.0, x)
        if fn.kind == "hard_sigmoid":
            return np.clip(a * x + b, 0.0, 1.0)
        if fn.kind == "leaky_relu":
            return np.where(x >= 0, x, a * x)
        if fn.kind == "elu":
            return np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0)))
        if fn.kind == "affine":
            return a * x + b
        if fn.kind == "scaled_tanh":
            return a * np.tanh(b * x)
        if fn.kind == "thresholded_relu":
            return np.where(x > a, x, 0.0)
        if fn.kind == "linear":
            return x
        if fn.kind == "softmax":
            shifted = np.exp(x - x.max(axis=-1, keepdims=True))
            return shifted / shifted.sum(axis=-1, keepdims=True)
    raise AssertionError(f"unhandled activation {fn.kind}")


def gru_direction(layer: GRU, d: int, x: np.ndarray, h: np.ndarray, reverse: bool, lengths: np.ndarray):
    """One direction of a GRU over x (B, T, I) from state h (B, H).

    Returns the outputs (B, T, H), zero past each sequence's length, and the final state.
    """
    H = layer.hidden_size
    W, R, Bias = (np.asarray(a, np.float64) for a in (layer.W[d], layer.R[d], layer.B[d]))
    Wz, Wr, Wh = W[:H], W[H:2 * H], W[2 * H:]
    Rz, Rr, Rh = R[:H], R[H:2 * H], R[2 * H:]
    Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = Bias.reshape(6, H)
    f, g = layer.gate_activation, layer.candidate_activation
    clip = layer.clip

    def clipped(v):
        return v if clip is None else np.clip(v, -clip, clip)

    batch, steps, _ = x.shape
    y = np.zeros((batch, steps, H))
    h = h.copy()
    for b in range(batch):
        n_steps = int(lengths[b])
        order = range(n_steps - 1, -1, -1) if reverse else range(n_steps)
        hb = h[b]
        for t in order:
            xt = x[b, t]
            z = apply_activation(f, clipped(xt @ Wz.T + hb @ Rz.T + Wbz + Rbz))
            r = apply_activation(f, clipped(xt @ Wr.T + hb @ Rr.T + Wbr + Rbr))
            if layer.linear_before_reset:
                n = apply_activation(g, clipped(xt @ Wh.T + r * (hb @ Rh.T + Rbh) + Wbh))
            else:
                n = apply_activation(g, clipped(xt @ Wh.T + (r * hb) @ Rh.T + Rbh + Wbh))
            hb = (1.0 - z) * n + z * hb
            y[b, t] = hb
        h[b] = hb
    return y, h


def gru(layer: GRU, x: np.ndarray, h0: np.ndarray, lengths: np.ndarray):
    """A whole GRU layer: x (B, T, I), h0 (D, B, H) -> (B, T, D*H) outputs, (D, B, H) final state."""
    reverse_flags = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[layer.direction]
    outputs, states = [], []
    for d, reverse in enumerate(reverse_flags):
        y, h = gru_direction(layer, d, x, h0[d], reverse, lengths)
        outputs.append(y)
        states.append(h)
    return np.concatenate(outputs, axis=-1), np.stack(states)


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
    """Run ``model`` (a ModelSpec or Model) on ``seq`` exactly as :meth:`grurt.Model.run` does.

    A model that takes ids (its first layer an Embedding) takes integer ids (T,) or (B, T).
    """
    spec: ModelSpec = getattr(model, "spec", model)
    if spec.takes_ids:
        ids = np.asarray(seq)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        x = embed(spec.layers[0], ids)
        padding = ids == spec.mask_value if spec.mask_value is not None else None
    else:
        x = np.asarray(seq, dtype=np.float64)
        single = x.ndim == 2
        if single:
            x = x[None]
        padding = (x == spec.mask_value).all(axis=2) if spec.mask_value is not None else None
    batch, steps, _ = x.shape
    if spec.fixed_steps is not None and steps != spec.fixed_steps:
        raise ValueError(f"the model runs on sequences of exactly {spec.fixed_steps} steps (Flatten), got {steps}")
    if lengths is None and padding is not None:
        lengths = np.array([1 + max([t for t in range(steps) if not padding[b, t]], default=0)
                            for b in range(batch)])
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths).reshape(batch)
    grus = spec.gru_layers
    if initial_state is None:
        initial_state = [np.zeros((g.num_directions, batch, g.hidden_size)) for g in grus]
    else:
        initial_state = [np.asarray(s, np.float64).reshape(g.num_directions, batch, g.hidden_size)
                         for s, g in zip(initial_state, grus)]
    states = []
    has_time = True
    for layer in spec.layers:
        if isinstance(layer, GRU):
            y, h = gru(layer, x, initial_state[len(states)], lengths)
            states.append(h)
            if layer.return_sequences:
                x = y
            else:
                x, has_time = np.concatenate(list(h), axis=-1), False
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
            x, has_time = x[np.arange(batch), lengths - 1], False
        elif isinstance(layer, Embedding):
            pass        # applied to the ids above
        elif isinstance(layer, LayerNorm):
            x = layer_norm(layer, x)
        elif isinstance(layer, UnitNorm):
            x = unit_norm(layer, x)
        elif isinstance(layer, GlobalPool):
            x, has_time = global_pool(layer, x, lengths), False
        elif isinstance(layer, Flatten):
            x, has_time = x.reshape(batch, -1), False
        if has_time:
            # outputs past a sequence's end are zero, whatever the layer computes there
            mask = np.arange(steps)[None, :] < lengths[:, None]
            x = np.where(mask[..., None], x, 0.0)
    out = x.astype(np.float32)
    states = [h.astype(np.float32) for h in states]
    if single:
        out = out[0]
        states = [h[:, 0] for h in states]
    return (out, states) if return_state else out
