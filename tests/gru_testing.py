"""Shared builders for the test suite: random, well-conditioned GRU models and a kink monitor.

Weights are scaled so that every value in a model stays O(1) whatever the activations are:

* input weights ~ N(0, 1/I), recurrent weights ~ N(0, 0.4²/H) with each gate block's spectral
  norm capped at 0.6, so the recurrence contracts (even with an unbounded candidate function)
  and float32 rounding errors do not grow along T;
* when the gate function f is unbounded or can leave [-1, 1] (relu, leaky_relu, elu, softplus,
  affine, thresholded_relu) the z and r rows are scaled by 0.35 (and shifted down for softplus),
  so that |z| stays below 1 nearly always: h' = n + z(h - n) then never blows up;
* when f can be negative (tanh, softsign, scaled_tanh, affine, leaky_relu, elu) the z rows are
  scaled by 0.35 and the z bias shifted by +0.6, so that z is mostly in (0, 1): with z < 0,
  h' = (1 - z)n + zh amplifies errors by up to 1 + |z| per step, and a 3-layer stack over 120
  steps then turns float32 rounding into 1e-5 differences (measured) although nothing is wrong;
  negative gate values still occur, and the activation tests cover every function on [-20, 20];
* alpha/beta are drawn in ranges that keep gate outputs within [-1, 1] (scaled_tanh alpha ≤ 1,
  elu alpha ≤ 1, ...).

Tests assert that the float64 reference stays below ``MAX_REFERENCE_MAGNITUDE`` so that an
absolute tolerance of 1e-5 means what it says (about 100 float32 ulps of an O(1) value).
"""
from __future__ import annotations

import contextlib

import numpy as np

import grurt
from grurt import reference
from grurt.reference_ops import recurrent as reference_ops_recurrent
from grurt.spec import GRU, ActivationFunction, activation
from tolerances import ATOL

#: Every activation a GRU accepts as gate or candidate function.
GRU_ACTIVATIONS = ("sigmoid", "hard_sigmoid", "tanh", "relu", "leaky_relu", "elu", "softsign",
                   "softplus", "affine", "scaled_tanh", "thresholded_relu")
#: Activations continuous everywhere: an input error e gives an output error <= L*e.
CONTINUOUS_ACTIVATIONS = tuple(k for k in GRU_ACTIVATIONS if k != "thresholded_relu")
_UNBOUNDED_GATES = ("relu", "leaky_relu", "elu", "softplus", "affine", "thresholded_relu")
_NEGATIVE_GATES = ("tanh", "softsign", "scaled_tanh", "affine", "leaky_relu", "elu")
DIRECTIONS = ("forward", "reverse", "bidirectional")
MAX_REFERENCE_MAGNITUDE = 20.0
RECURRENT_NORM = 0.6


def random_activation(rng: np.random.Generator, kind: str) -> ActivationFunction:
    """``kind`` with random (but well-conditioned) alpha/beta where it takes them."""
    if kind == "hard_sigmoid":
        return activation(kind, rng.uniform(0.1, 1.0), rng.uniform(0.3, 0.7))
    if kind == "leaky_relu":
        return activation(kind, rng.uniform(0.01, 0.5))
    if kind == "elu":
        return activation(kind, rng.uniform(0.5, 1.0))
    if kind == "affine":
        return activation(kind, rng.uniform(0.3, 1.0), rng.uniform(-0.3, 0.3))
    if kind == "scaled_tanh":
        return activation(kind, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.5))
    if kind == "thresholded_relu":
        return activation(kind, rng.uniform(0.05, 0.8))
    return activation(kind)


def random_gru(rng: np.random.Generator, input_size: int, hidden: int, direction: str = "forward",
               linear_before_reset: bool = True, gate=None, candidate=None, clip=None,
               return_sequences: bool = True) -> GRU:
    """A GRU with weights scaled as described in the module docstring."""
    gate = activation("sigmoid") if gate is None else gate
    candidate = activation("tanh") if candidate is None else candidate
    D = 2 if direction == "bidirectional" else 1
    H = hidden
    W = rng.normal(size=(D, 3 * H, input_size)) / np.sqrt(input_size)
    R = rng.normal(size=(D, 3 * H, H)) * (0.4 / np.sqrt(H))
    for d in range(D):              # cap every gate block's spectral norm (small H draws big ones)
        for k in range(3):
            block = R[d, k * H:(k + 1) * H]
            norm = np.linalg.norm(block, 2)
            if norm > RECURRENT_NORM:
                block *= RECURRENT_NORM / norm
    B = rng.normal(size=(D, 6 * H)) * 0.3
    if gate.kind in _UNBOUNDED_GATES:
        W[:, :2 * H] *= 0.35
        R[:, :2 * H] *= 0.35
        B[:, :2 * H] *= 0.35
        B[:, 3 * H:5 * H] *= 0.35
        if gate.kind == "softplus":   # softplus(-0.7) ≈ 0.4: keep z, r well inside (0, 1)
            B[:, :2 * H] -= 0.7
    if gate.kind in _NEGATIVE_GATES:
        for a in (W, R, B):
            a[:, :H] *= 0.35
        B[:, 3 * H:4 * H] *= 0.35
        B[:, :H] += 0.6
    return GRU(W=W, R=R, B=B, direction=direction, linear_before_reset=linear_before_reset,
               gate_activation=gate, candidate_activation=candidate, clip=clip,
               return_sequences=return_sequences)


def random_states(rng: np.random.Generator, spec, batch: int, single: bool = False):
    """One random initial state per GRU layer, (D, B, H) (or (D, H) when ``single``)."""
    out = []
    for layer in spec.gru_layers:
        shape = (layer.num_directions, layer.hidden_size) if single else \
            (layer.num_directions, batch, layer.hidden_size)
        out.append((0.5 * rng.normal(size=shape)).astype(np.float32))
    return out


def max_abs_diff(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


@contextlib.contextmanager
def kink_monitor():
    """Record how close the reference's thresholded_relu inputs come to their threshold.

    thresholded_relu is the only discontinuous activation (a jump of size alpha at x = alpha):
    a float32 pre-activation within ~1e-6 of alpha may fall on the other side of the jump than
    the float64 one. Yields a dict whose 'margin' is the smallest |x - alpha| seen (inf if the
    function was never evaluated); tests only compare examples whose margin exceeds 1e-4,
    a hundred times the float32 rounding of an O(1) pre-activation.
    """
    record = {"margin": np.inf}
    original = reference.apply_activation

    def watching(fn, x):
        if fn.kind == "thresholded_relu" and np.size(x):
            with np.errstate(invalid="ignore"):
                distance = np.nanmin(np.abs(np.asarray(x) - fn.alpha)) if np.isfinite(x).any() else np.inf
            record["margin"] = min(record["margin"], float(distance))
        return original(fn, x)

    # the GRU maths looks it up in its own module, Dense and the other layers in grurt.reference
    modules = (reference, reference_ops_recurrent)
    for module in modules:
        module.apply_activation = watching
    try:
        yield record
    finally:
        for module in modules:
            module.apply_activation = original


def run_both(model: grurt.Model, x, initial_state=None, lengths=None, threads=1):
    """(output, states) from the kernels and from the reference, plus the kink margin."""
    with kink_monitor() as kinks:
        ref_out, ref_states = reference.run(model, x, initial_state=initial_state, return_state=True,
                                            lengths=lengths)
    out, states = model.run(x, initial_state=initial_state, return_state=True, lengths=lengths, threads=threads)
    return out, states, ref_out, ref_states, kinks["margin"]


def assert_matches_reference(model, x, initial_state=None, lengths=None, atol=ATOL, threads=1):
    """Kernels vs reference: same shapes, float32 output, max abs difference <= atol.

    Returns the measured maximum difference (output and states).
    """
    out, states, ref_out, ref_states, margin = run_both(model, x, initial_state, lengths, threads)
    assert margin > 1e-4, f"thresholded_relu input within {margin:g} of its threshold: choose other data"
    magnitude = max([float(np.max(np.abs(ref_out)))] + [float(np.max(np.abs(s))) for s in ref_states])
    assert magnitude < MAX_REFERENCE_MAGNITUDE, f"test data not O(1): reference reaches {magnitude:g}"
    assert out.dtype == np.float32
    assert out.shape == ref_out.shape
    assert len(states) == len(ref_states)
    # without return_state (and without initial_state) the kernels keep zero states in their
    # workspace: a separate path, same numbers
    plain = model.run(x, initial_state=initial_state, lengths=lengths, threads=threads)
    errors = [max_abs_diff(out, ref_out), max_abs_diff(plain, ref_out)] + \
        [max_abs_diff(s, r) for s, r in zip(states, ref_states)]
    assert max(errors) <= atol, f"max abs difference {max(errors):.3g} > {atol:g} ({model!r})"
    return max(errors)
