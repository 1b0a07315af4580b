"""Reduced-precision GRU weights: the modes, and how float32 weights become bf16 or int8.

A model's weight mode is ``"float32"`` (the default, exact), ``"bf16"`` or ``"int8"``:

* ``bf16``: every GRU input and recurrent weight rounded to bfloat16 (the top 16 bits of a
  float32, round to nearest even): 8 significant bits, relative error ≤ 2⁻⁹.
* ``int8``: every row of every GRU W and R (one output unit's weights) stored as
  ``q · scale`` with q an integer in [-127, 127] and ``scale = max|row| / 127`` (float32):
  absolute error ≤ scale / 2 per weight.

Biases, states, gates and activations stay float32, and so do the other layers' weights.
How the products use them (and what that adds to the error) is in ``_lowp.h``; the error of
each mode on the benchmark workloads is measured in docs/performance-and-threads.md.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

WEIGHT_MODES = ("float32", "bf16", "int8")
#: each reduced-precision mode's error budget: the max abs error of a model's output against the
#: float32 source framework that the tests hold the benchmark workloads to (``grurt verify``'s
#: default tolerance for a model in that mode; float32 models: ``1e-4``)
ERROR_BUDGETS = {"bf16": 5e-3, "int8": 2e-2}
#: the GRU arrays a mode stores in reduced precision
REDUCED_ARRAYS = ("W", "R")


def check_mode(weights) -> str:
    """``weights`` if it names a mode, else an InputError listing the modes."""
    if not isinstance(weights, str) or weights not in WEIGHT_MODES:
        raise InputError(f"weights must be one of {', '.join(map(repr, WEIGHT_MODES))}, got {weights!r}")
    return weights


def to_bf16(a) -> np.ndarray:
    """float32 → bfloat16 bits (uint16), rounding to nearest even. Weights are finite (the spec checks)."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16(bits) -> np.ndarray:
    """bfloat16 bits (uint16) → the float32 values they stand for (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize_int8(a) -> tuple[np.ndarray, np.ndarray]:
    """(..., n_in) float32 → (q int8 of the same shape, scale float32 (...,)) with a ≈ q · scale[..., None].

    One scale per row, max|row| / 127, so that each row's largest weight is ±127; a row of
    zeros has scale 0."""
    a = np.asarray(a, np.float32)
    scale = (np.abs(a).max(axis=-1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(a / safe[..., None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q, scale) -> np.ndarray:
    """The float32 weights that ``q`` and ``scale`` stand for."""
    return (np.asarray(q, np.float32) * np.asarray(scale, np.float32)[..., None]).astype(np.float32)


def stored(a, weights: str):
    """The arrays a mode stores for float32 weights ``a``: (a,) float32, (bits,) bf16, (q, scale) int8."""
    if weights == "bf16":
        return (to_bf16(a),)
    if weights == "int8":
        return quantize_int8(a)
    return (np.asarray(a, np.float32),)


def values(parts, weights: str) -> np.ndarray:
    """The float32 values of stored arrays (the inverse of :func:`stored`, exact)."""
    if weights == "bf16":
        return from_bf16(parts[0])
    if weights == "int8":
        return dequantize_int8(*parts)
    return np.asarray(parts[0], np.float32)


def reduced_spec(spec, weights: str):
    """``spec`` with every GRU W and R replaced by the float32 values the mode stores: the
    model that a reduced-precision Model computes, up to the rounding of its products."""
    import dataclasses

    from .spec import GRU

    if weights == "float32":
        return spec
    layers = tuple(dataclasses.replace(layer, **{name: values(stored(getattr(layer, name), weights), weights)
                                                 for name in REDUCED_ARRAYS})
                   if isinstance(layer, GRU) else layer for layer in spec.layers)
    return dataclasses.replace(spec, layers=layers)
