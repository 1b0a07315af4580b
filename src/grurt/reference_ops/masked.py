"""float64 references of grurt's own ops (:mod:`grurt.ops.masked`): plain numpy, independent of
the kernels and of :func:`grurt.ops.masked.masked_gru`, step by step (:func:`.recurrent.gru_direction`)."""
from __future__ import annotations

import numpy as np

from ..ops.recurrent import GRURT_ACTIVATIONS
from .recurrent import direction_layers, gru_direction


def masked_gru(attrs, inputs):
    """grurt.MaskedGRU: X (B, T, I), W, R, B, mask (B, T), initial_h (B, D, H) → Y (B, T, D, H), Y_h (B, D, H)."""
    X, W, R, B, mask, initial_h = (list(inputs) + [None] * 6)[:6]
    D = 2 if attrs["direction"] == "bidirectional" else 1
    H = R.shape[-1]
    batch, steps, _ = X.shape
    B = np.zeros((D, 6 * H)) if B is None else B
    h0 = np.zeros((D, batch, H)) if initial_h is None else initial_h.transpose(1, 0, 2)
    zeros = attrs["masked_output"] == "zeros"
    ys, hs = [], []
    for d, reverse, layer in direction_layers("MaskedGRU", attrs, W, R, B, GRURT_ACTIVATIONS):
        y, h = gru_direction(layer, 0, X, np.asarray(h0[d], np.float64), reverse, np.full(batch, steps),
                             mask=np.asarray(mask, bool), zeros_at_masked=zeros)
        ys.append(y)
        hs.append(h)
    return [np.stack(ys, axis=2), np.stack(hs, axis=1)]


REFERENCE = {"grurt.MaskedGRU": masked_gru}
