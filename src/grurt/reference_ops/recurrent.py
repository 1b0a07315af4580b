"""float64 references of the recurrent ops: plain numpy, independent of :mod:`grurt.ops.recurrent`
and of the kernels. The GRU maths (:func:`gru`, with the activations of :func:`apply_activation`)
is the one :mod:`grurt.reference` runs canonical GRU layers with."""
from __future__ import annotations

import numpy as np
from scipy import special

from ..ops.recurrent import RNN_ACTIVATIONS, direction_activations
from ..spec import GRU, ActivationFunction


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
        if fn.kind == "gelu":
            return 0.5 * x * special.erfc(-x / np.sqrt(2.0))
        if fn.kind == "silu":
            return x * (0.5 * (np.tanh(0.5 * x) + 1.0))
        if fn.kind == "mish":
            return x * np.tanh(np.logaddexp(0.0, x))
        if fn.kind == "selu":
            return b * np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0)))
        if fn.kind == "hard_silu":
            return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
        if fn.kind == "clip":
            return np.clip(x, a, b)
        if fn.kind == "softmax":
            shifted = np.exp(x - x.max(axis=-1, keepdims=True))
            return shifted / shifted.sum(axis=-1, keepdims=True)
    raise AssertionError(f"unhandled activation {fn.kind}")


def gru_direction(layer: GRU, d: int, x: np.ndarray, h: np.ndarray, reverse: bool, lengths: np.ndarray,
                  mask=None, zeros_at_masked: bool = False):
    """One direction of a GRU over x (B, T, I) from state h (B, H).

    Returns the outputs (B, T, H), zero past each sequence's length, and the final state. With
    ``mask`` (B, T), the masked steps leave the state as it is and give zeros (``zeros_at_masked``)
    or the previous output in reading order (zeros before the first valid step).
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

    def cell(xt, hb):
        z = apply_activation(f, clipped(xt @ Wz.T + hb @ Rz.T + Wbz + Rbz))
        r = apply_activation(f, clipped(xt @ Wr.T + hb @ Rr.T + Wbr + Rbr))
        if layer.linear_before_reset:
            n = apply_activation(g, clipped(xt @ Wh.T + r * (hb @ Rh.T + Rbh) + Wbh))
        else:
            n = apply_activation(g, clipped(xt @ Wh.T + (r * hb) @ Rh.T + Rbh + Wbh))
        return (1.0 - z) * n + z * hb

    batch, steps, _ = x.shape
    y = np.zeros((batch, steps, H))
    h = h.copy()
    for b in range(batch):
        n_steps = int(lengths[b])
        order = range(n_steps - 1, -1, -1) if reverse else range(n_steps)
        hb = h[b]
        previous = np.zeros(H)                  # the output a masked step repeats
        for t in order:
            if mask is None or mask[b, t]:
                hb = previous = cell(x[b, t], hb)
                y[b, t] = hb
            elif not zeros_at_masked:
                y[b, t] = previous
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



def direction_layers(op: str, attrs, W, R, B, names=RNN_ACTIVATIONS):
    """(d, reverse, one-direction GRU layer) for each direction of an ONNX-style GRU node of ``op``
    (W (D, 3H, I), R (D, 3H, H), B (D, 6H)), its activations read as onnxruntime reads them."""
    for d, (f, g) in enumerate(direction_activations(op, attrs, W.shape[0], names)):
        reverse = attrs["direction"] == "reverse" or d == 1
        yield d, reverse, GRU(W[d:d + 1], R[d:d + 1], B[d:d + 1], direction="reverse" if reverse else "forward",
                              linear_before_reset=bool(attrs["linear_before_reset"]), gate_activation=f,
                              candidate_activation=g, clip=attrs["clip"])


def onnx_gru(attrs, inputs):
    """The ONNX GRU operator: X (T, B, I) (layout 1: (B, T, I)), W, R, B, sequence_lens, initial_h
    → Y (T, D, B, H) and Y_h (D, B, H) (layout 1: (B, T, D, H) and (B, D, H)), direction by direction."""
    X, W, R, B, lengths, initial_h = (list(inputs) + [None] * 6)[:6]
    D = 2 if attrs["direction"] == "bidirectional" else 1
    H = R.shape[-1]
    x = X.transpose(1, 0, 2) if attrs["layout"] == 0 else X              # (B, T, I)
    batch, steps, _ = x.shape
    B = np.zeros((D, 6 * H)) if B is None else B
    if initial_h is None:
        h0 = np.zeros((D, batch, H))
    else:
        h0 = initial_h if attrs["layout"] == 0 else initial_h.transpose(1, 0, 2)
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    ys, hs = [], []
    for d, _, layer in direction_layers("GRU", attrs, W, R, B):
        y, h = gru(layer, x, np.asarray(h0[d:d + 1], np.float64), lengths)    # (B, T, H), (1, B, H)
        ys.append(y)
        hs.append(h)
    y, h = np.stack(ys, axis=2), np.concatenate(hs)                          # (B, T, D, H), (D, B, H)
    if attrs["layout"] == 0:
        return [y.transpose(1, 2, 0, 3), h]
    return [y, h.transpose(1, 0, 2)]


REFERENCE = {"GRU": onnx_gru}
