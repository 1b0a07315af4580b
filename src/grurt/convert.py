"""Framework conventions → the canonical (ONNX) GRU layout. The one place that knows them.

PyTorch ``nn.GRU`` stores gates in the order r, z, n with two bias vectors and always
resets after the recurrent product (``linear_before_reset = 1``).
"""
from __future__ import annotations

import numpy as np


def reorder_rzn_to_zrh(a: np.ndarray) -> np.ndarray:
    """Swap the first two gate blocks of a (3H, ...) array: PyTorch's r, z, n → z, r, h."""
    r, z, n = np.split(np.asarray(a), 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def torch_gru_direction(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One direction of a PyTorch GRU → (W [3H, I], R [3H, H], B [6H]) in ONNX order."""
    W = reorder_rzn_to_zrh(weight_ih)
    R = reorder_rzn_to_zrh(weight_hh)
    hidden3 = W.shape[0]
    Wb = np.zeros(hidden3, np.float32) if bias_ih is None else reorder_rzn_to_zrh(bias_ih)
    Rb = np.zeros(hidden3, np.float32) if bias_hh is None else reorder_rzn_to_zrh(bias_hh)
    return W, R, np.concatenate([Wb, Rb])
