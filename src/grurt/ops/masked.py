"""grurt's own ops, beyond ONNX's vocabulary (see :mod:`grurt.ops`): ``grurt.MaskedGRU``.

``grurt.MaskedGRU`` is the ONNX ``GRU`` (its attributes, batch-first layout 1) reading a mask
instead of ``sequence_lens``: the steps where ``mask`` (B, T) is false are skipped, the state
carried over them, wherever they are (leading, interior or trailing padding), as Keras runs a GRU
after ``Masking`` or ``Embedding(mask_zero=True)``:

==================  ===========================================================================
``X``               (B, T, I)
``mask``            (B, T) bool, true at the steps the GRU reads
``initial_h``       (B, D, H); zeros when omitted
``Y``               (B, T, D, H): at a masked step zeros (``masked_output="zeros"``, and always
                    for a bidirectional GRU), or the direction's previous output in the order it
                    reads the steps, zeros before its first valid step (``"previous"``)
``Y_h``             (B, D, H): the state after the last valid step (``initial_h`` without any)
==================  ===========================================================================

It runs on the kernels of grurt's fused layers (:func:`masked_gru`: each
sequence's valid steps gathered to the front and run with their count as length).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError, ModelFormatError, UnsupportedModelError
from ..spec import GRU, ModelSpec
from .recurrent import CALL, GRURT_ACTIVATIONS, _activations_check, _gru_shapes, direction_activations, shared_model
from .registry import BOOL, FLOAT, REGISTRY, Attr, Op, register

MASKED_OUTPUTS = ("previous", "zeros")


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


def _shapes(attrs, values):
    """(D, H, batch, steps) of a MaskedGRU node, every input's shape checked."""
    X, W, R, B, mask, initial_h = (list(values) + [None] * 6)[:6]
    D, H, _, batch, steps = _gru_shapes({**attrs, "layout": 1}, [X, W, R, B, None, initial_h])
    if mask is None or mask.dtype != BOOL or tuple(mask.shape) != (batch, steps):
        raise ModelFormatError(f"mask must be a ({batch}, {steps}) bool tensor for X {X.shape}, got "
                               + ("none" if mask is None else f"{mask.dtype} {mask.shape}"))
    if D == 2 and attrs["masked_output"] != "zeros":
        raise UnsupportedModelError("a bidirectional MaskedGRU gives zeros at masked steps (as Keras's "
                                    "Bidirectional): masked_output must be 'zeros'")
    return D, H, batch, steps


def _infer(attrs, values):
    D, H, batch, steps = _shapes(attrs, values)
    return [((batch, steps, D, H), FLOAT), ((batch, D, H), FLOAT)]


def _prepare(attrs, values):
    """(Model of the GRU layer returning its sequence, the layer, zeros at masked steps)."""
    D, H, _, _ = _shapes(attrs, values)
    W, R, B = (v.const if v is not None else None for v in values[1:4])
    B = np.zeros((D, 6 * H), np.float32) if B is None else B
    pairs = direction_activations("MaskedGRU", attrs, D, GRURT_ACTIVATIONS)
    if len(set(pairs)) > 1:
        raise UnsupportedModelError("the two directions of a MaskedGRU must use the same activations")
    layer = GRU(W, R, B, direction=attrs["direction"], linear_before_reset=bool(attrs["linear_before_reset"]),
                gate_activation=pairs[0][0], candidate_activation=pairs[0][1], clip=attrs["clip"])
    return shared_model(ModelSpec(layer.input_size, (layer,))), layer, attrs["masked_output"] == "zeros"


def _run(ctx, inputs):
    model, layer, zeros = ctx
    X, mask = inputs[0], inputs[4]
    initial_h = inputs[5] if len(inputs) > 5 else None
    batch, steps, _ = X.shape
    D, H = layer.num_directions, layer.hidden_size
    h0 = np.zeros((D, batch, H), np.float32) if initial_h is None else \
        np.array(initial_h.transpose(1, 0, 2), np.float32, order="C")
    y, h = masked_gru(model, layer, np.ascontiguousarray(X), mask, h0, CALL.threads)
    if zeros:
        y[~mask] = 0
    return [y.reshape(batch, steps, D, H), np.ascontiguousarray(h.transpose(1, 0, 2))]


def _reduced(ctx, mode):
    model, layer, zeros = ctx
    return shared_model(model.spec, weights=mode), layer, zeros


register(Op(
    "grurt.MaskedGRU",
    attributes={**{k: v for k, v in REGISTRY["GRU"].attributes.items() if k != "layout"},
                # f and g: an ONNX name, or any of grurt's activation kinds (gelu, silu, mish, ...)
                "activations": Attr("strings", (), lambda names: _activations_check(names, GRURT_ACTIVATIONS)),
                "masked_output": Attr("string", "previous", lambda v: None if v in MASKED_OUTPUTS else
                                      f"must be one of {', '.join(MASKED_OUTPUTS)}, got {v!r}")},
    infer=_infer, prepare=_prepare, run=_run, reduced=_reduced,
    time="sequence",      # the mask decides which steps it reads: it needs the whole sequence
    inputs=(5, 6), outputs=(1, 2), const_inputs=(1, 2, 3)))
