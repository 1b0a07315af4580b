"""The ONNX ``GRU`` operator → a canonical :class:`~grurt.spec.GRU` layer.

The canonical GRU *is* this operator's (gate order z, r, h; ``W`` (D, 3H, I), ``R`` (D, 3H, H),
``B`` (D, 6H) = [Wb, Rb]; ``linear_before_reset``; ``clip``), so the weights pass through
unchanged. What this module maps is the wiring around them:

==================  =====================================================  ===============================
input / attribute   ONNX                                                   grurt
==================  =====================================================  ===============================
``X``               layout 0: (T, B, I); layout 1: (B, T, I)               the previous layer's sequence,
                                                                           reversed in time → ``Reverse``
``Y``, ``Y_h``      layout 0: (T, D, B, H), (D, B, H); layout 1:           the layer's output and its final
                    (B, T, D, H), (B, D, H)                                state (D, B, H)
``initial_h``       (D, B, H), layout 1: (B, D, H); a graph input or zero  ``run(initial_state=...)``
``sequence_lens``   one integer graph input given to every GRU             ``run(lengths=...)``
``activations``     f, g per direction, default Sigmoid, Tanh; the alpha   ``gate_activation``,
                    (beta) list is consumed in order by the functions      ``candidate_activation``: the
                    that take an alpha (beta), as onnxruntime reads it     same for both directions
``HardSigmoid``     α = 0.2, β = 0.5 by default                            ``hard_sigmoid``
==================  =====================================================  ===============================
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelFormatError, UnsupportedModelError
from ...spec import ACTIVATION_DEFAULTS, GRU, Reverse, activation
from .graph import _Interpreter, _Mismatch, _positions, _Sym

# ONNX RNN activation names (case-insensitive) -> grurt kinds
_RNN_ACTIVATIONS = {
    "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "affine": "affine", "leakyrelu": "leaky_relu",
    "thresholdedrelu": "thresholded_relu", "scaledtanh": "scaled_tanh", "hardsigmoid": "hard_sigmoid",
    "elu": "elu", "softsign": "softsign", "softplus": "softplus",
}


class _GRUOp(_Interpreter):
    """The handler of the GRU operator."""

    ATTRIBUTES = {"GRU": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
                          "layout", "linear_before_reset"}}

    def _op_GRU(self, where, inputs, attrs, n_out):
        X, W, R, B, lengths, initial_h = (inputs + [None] * 6)[:6]
        W = np.asarray(self._const(where, W, "W"), np.float64)
        R = np.asarray(self._const(where, R, "R"), np.float64)
        direction = attrs.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise UnsupportedModelError(f"{where}: attribute direction={direction!r} is not supported")
        D = 2 if direction == "bidirectional" else 1
        if R.ndim != 3 or W.ndim != 3:
            raise ModelFormatError(f"{where}: W and R must be 3-D, got shapes {W.shape} and {R.shape}")
        H = attrs.get("hidden_size", R.shape[-1])
        B = np.zeros((D, 6 * R.shape[-1])) if B is None else np.asarray(self._const(where, B, "B"), np.float64)
        for name, array, shape in (("W", W, (D, 3 * H, W.shape[-1])), ("R", R, (D, 3 * H, H)), ("B", B, (D, 6 * H))):
            if array.shape != shape:
                raise ModelFormatError(f"{where}: {name} has shape {array.shape}, but hidden_size={H} and "
                                       f"direction={direction} need {shape}")
        for name in ("layout", "linear_before_reset"):
            if attrs.get(name, 0) not in (0, 1):
                raise UnsupportedModelError(f"{where}: attribute {name}={attrs[name]} is not supported")
        layout, lbr = attrs.get("layout", 0), bool(attrs.get("linear_before_reset", 0))
        f, g = _gru_activations(where, attrs, D)
        if not isinstance(X, _Sym) or X.ids.ndim != 3:
            raise UnsupportedModelError(f"{where}: X must be the model's 3-D input sequence")
        x = X.ids if layout == 0 else X.ids.transpose(1, 0, 2)      # (T, B, I)
        rows, features = self._sequence_rows(where, x)
        if W.shape[-1] != features.size:
            raise ModelFormatError(f"{where}: X has {features.size} features, W expects {W.shape[-1]}")
        batch, steps = self.tip.shape[:2]
        self._gru_state(where, initial_h, layout, (D, batch, H))
        self._gru_lengths(where, lengths, batch, steps)
        W_full = np.zeros((D, 3 * H, self.tip.shape[-1]))
        W_full[:, :, features] = W
        self._push(GRU(W=W_full, R=R, B=B, direction=direction, linear_before_reset=lbr,
                       gate_activation=f, candidate_activation=g, clip=attrs.get("clip")), D * H)
        if not lbr:
            self.lbr0_nodes.append(where)
        state = self._new_ids((D, batch, H))
        self.states.append(state)
        y = self.tip.reshape(batch, steps, D, H)
        if layout == 0:
            return [_Sym(y.transpose(1, 2, 0, 3)), _Sym(state)]        # Y (T, D, B, H), Y_h (D, B, H)
        return [_Sym(y), _Sym(state.transpose(1, 0, 2))]                # Y (B, T, D, H), Y_h (B, D, H)

    def _sequence_rows(self, where, x):
        """Check that x (T, B, I) is the tip's sequence in time order (adding Reverse if it is reversed)."""
        rows, features = self._rows(where, x)
        steps, batch = x.shape[:2]
        if self.batch_first is None:    # the first GRU tells which input axis is time
            a0, a1 = np.divmod(rows.reshape(steps, batch), self.tip.shape[1])
            t, b = np.indices((steps, batch))

            def is_time(axis):   # in time order or reversed
                return np.array_equal(axis, t) or np.array_equal(axis, steps - 1 - t)

            if self.tip.shape[:2] == (batch, steps) and np.array_equal(a0, b) and is_time(a1):
                self.batch_first = True
            elif self.tip.shape[:2] == (steps, batch) and np.array_equal(a1, b) and is_time(a0):
                self.batch_first = False
                self.tip = self.tip.transpose(1, 0, 2)
                rows, features = self._rows(where, x)
            else:
                raise UnsupportedModelError(f"{where}: X is not the input sequence in time order")
        if not self.has_time:
            raise UnsupportedModelError(f"{where}: X has no time axis (an earlier layer removed it)")
        if self.tip.shape[:2] != (batch, steps):
            raise UnsupportedModelError(f"{where}: X is not the previous layer's sequence in time order")
        b, t = np.divmod(rows.reshape(steps, batch), steps)
        time, batch_index = np.indices((steps, batch))
        if not np.array_equal(b, batch_index):
            raise UnsupportedModelError(f"{where}: X mixes the batch and time axes")
        if not np.array_equal(t, time):
            if not np.array_equal(t, steps - 1 - time):
                raise UnsupportedModelError(f"{where}: X is not the previous layer's sequence in time order")
            self._push(Reverse())
            rows, features = self._rows(where, x)
        return rows, features

    def _gru_state(self, where, initial_h, layout, shape):
        if initial_h is None:
            return
        if not isinstance(initial_h, _Sym):
            if np.any(np.asarray(initial_h) != 0):
                raise UnsupportedModelError(f"{where}: initial_h is a nonzero constant; grurt takes the initial "
                                            "state at run time (make it a graph input)")
            return
        ids = initial_h.ids if layout == 0 else initial_h.ids.transpose(1, 0, 2)
        if ids.shape != shape:
            if ids.ndim == 3 and (ids.shape[0], ids.shape[2]) == (shape[0], shape[2]):
                raise _Mismatch(shape[1], ids.shape[1], f"{where}: initial_h has batch size {ids.shape[1]}, "
                                f"X has {shape[1]}")
            raise ModelFormatError(f"{where}: initial_h has shape {ids.shape}, expected {shape}")
        for name, (block, integer) in self.inputs.items():
            if name != self.sequence_input and not integer and _positions(ids, block) is not None:
                self.state_inputs[len(self.states)] = (name, ids)
                return
        raise UnsupportedModelError(f"{where}: initial_h must come from a graph input (or be zero); here it is "
                                    "computed in the graph (e.g. another GRU's final state)")

    def _gru_lengths(self, where, lengths, batch, steps):
        if lengths is None:
            return
        if not isinstance(lengths, _Sym):
            if np.any(np.asarray(lengths) != steps):
                raise UnsupportedModelError(f"{where}: sequence_lens is a constant other than the sequence length; "
                                            "pass lengths= to run() instead (make it a graph input)")
            return
        for name, (block, integer) in self.inputs.items():
            if integer and np.array_equal(lengths.ids, block):
                if block.ndim != 1:
                    raise ModelFormatError(f"{where}: sequence_lens must be 1-D, got shape {block.shape}")
                if block.shape[0] != batch:
                    raise _Mismatch(batch, block.shape[0],
                                    f"{where}: sequence_lens has {block.shape[0]} entries, X has batch size {batch}")
                self.lengths.append(name)
                return
        raise UnsupportedModelError(f"{where}: sequence_lens must be an integer graph input, used as it is")


def _gru_activations(where, attrs, directions):
    """(f, g) from activations/activation_alpha/activation_beta, read the way onnxruntime does:
    the alpha (beta) list is consumed in order by the functions that take an alpha (beta)."""
    names = list(attrs.get("activations", ["Sigmoid", "Tanh"] * directions))
    if len(names) != 2 * directions:
        raise ModelFormatError(f"{where}: activations={names} must name {2 * directions} functions "
                               "(f and g per direction)")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    functions = []
    for name in names:
        kind = _RNN_ACTIVATIONS.get(name.lower())
        if kind is None:
            raise UnsupportedModelError(f"{where}: activation {name!r} is not supported")
        takes_alpha, takes_beta = (default is not None for default in ACTIVATION_DEFAULTS[kind])
        alpha = alphas.pop(0) if takes_alpha and alphas else None
        beta = betas.pop(0) if takes_beta and betas else None
        functions.append(activation(kind, alpha, beta))
    if alphas or betas:
        raise ModelFormatError(f"{where}: activation_alpha/activation_beta hold more values than the activations "
                               f"{names} take")
    if functions[2:] and functions[2:] != functions[:2]:
        described = [fn.describe() for fn in functions]
        raise UnsupportedModelError(f"{where}: the two directions use different activations {described}; grurt "
                                    "uses the same f and g for both")
    return functions[0], functions[1]
