"""The ``GRU`` op (ONNX's) → a canonical :class:`~grurt.spec.GRU` layer.

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
                    a constant, the same for every sequence (of batch 1,   the GRU's learned
                    or X's batch: a learned h0 expanded or tiled)          ``initial_state`` (D, H)
``sequence_lens``   one integer graph input given to every GRU             ``run(lengths=...)``
``activations``     f, g per direction, default Sigmoid, Tanh; the alpha   ``gate_activation``,
                    (beta) list is consumed in order by the functions      ``candidate_activation``: the
                    that take an alpha (beta), as onnxruntime reads it     same for both directions
``HardSigmoid``     α = 0.2, β = 0.5 by default                            ``hard_sigmoid``
==================  =====================================================  ===============================
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..ops.recurrent import gru_activations
from ..spec import GRU
from .interpreter import _Interpreter, _Mismatch, _Node, _RawInput, _Sym, unique


class _GRUOp(_Interpreter):
    """The handler of the GRU op."""

    def _op_GRU(self, where, inputs, attrs, n_out):
        X, W, R, B, lengths, initial_h = (inputs + [None] * 6)[:6]
        W = np.asarray(self._const(where, W, "W"))       # the GRU layer keeps them float32
        R = np.asarray(self._const(where, R, "R"))
        direction = attrs["direction"]         # checked by the registry, as layout and linear_before_reset
        D = 2 if direction == "bidirectional" else 1
        if R.ndim != 3 or W.ndim != 3:
            raise ModelFormatError(f"{where}: W and R must be 3-D, got shapes {W.shape} and {R.shape}")
        H = R.shape[-1] if attrs["hidden_size"] is None else attrs["hidden_size"]
        B = np.zeros((D, 6 * R.shape[-1]), np.float32) if B is None else np.asarray(self._const(where, B, "B"))
        for name, array, shape in (("W", W, (D, 3 * H, W.shape[-1])), ("R", R, (D, 3 * H, H)), ("B", B, (D, 6 * H))):
            if array.shape != shape:
                raise ModelFormatError(f"{where}: {name} has shape {array.shape}, but hidden_size={H} and "
                                       f"direction={direction} need {shape}")
        layout, lbr = attrs["layout"], bool(attrs["linear_before_reset"])
        f, g = gru_activations(where, attrs, D)
        if not isinstance(X, _Sym) or X.ids.ndim != 3:
            raise UnsupportedModelError(f"{where}: X must be a 3-D sequence computed from the model's inputs")
        x = X.ids if layout == 0 else X.ids.transpose(1, 0, 2)      # (T, B, I)
        tensor, rows, features = self._sequence_rows(where, x)
        if W.shape[-1] != features.size:
            raise ModelFormatError(f"{where}: X has {features.size} features, W expects {W.shape[-1]}")
        batch, steps = tensor.ids.shape[:2]
        h0, learned = self._gru_state(where, initial_h, layout, (D, batch, H))
        self._gru_lengths(where, lengths, batch, steps)
        W_full = W
        if not np.array_equal(features, np.arange(tensor.features)):    # the features X reads of the tensor
            W_full = np.zeros((D, 3 * H, tensor.features), np.float32)
            W_full[:, :, features] = W
        layer = GRU(W=W_full, R=R, B=B, direction=direction, linear_before_reset=lbr,
                    gate_activation=f, candidate_activation=g, clip=attrs["clip"], initial_state=learned)
        y = self._tensor(self._new_ids((batch, steps, D * H)), True, name=self._name())
        state = self._tensor(self._new_ids((batch, D * H)), False, name=self._name(":h"))
        self.nodes.append(_Node(layer, [tensor.name] + ([h0.name] if h0 is not None else []), [y.name, state.name]))
        self.grus.append(self.nodes[-1])
        if not lbr:
            self.lbr0_nodes.append(where)
        Y = y.ids.reshape(batch, steps, D, H)
        Y_h = state.ids.reshape(batch, D, H)
        if layout == 0:
            return [_Sym(Y.transpose(1, 2, 0, 3)), _Sym(Y_h.transpose(1, 0, 2))]   # Y (T, D, B, H), Y_h (D, B, H)
        return [_Sym(Y), _Sym(Y_h)]                                               # Y (B, T, D, H), Y_h (B, D, H)

    def _sequence_rows(self, where, x):
        """(tensor, rows, features) of x (T, B, I): a sequence read in time order (a ``Reverse`` of it
        when x reads it reversed)."""
        tensor, rows, features = self._rows(where, x)
        if not tensor.has_time:
            raise UnsupportedModelError(f"{where}: X has no time axis (an earlier layer removed it)")
        steps, batch = x.shape[:2]
        if self._time_order(where, tensor, rows, steps, batch, "X"):
            # x reads the sequence reversed in time: it reads the Reverse of it in time order
            _, positions = self._find(where, x)
            b, t, f = np.unravel_index(positions, tensor.ids.shape)
            tensor, rows, features = self._rows(where, self._reverse(tensor).ids[b, tensor.ids.shape[1] - 1 - t, f])
        return tensor, rows, features

    def _gru_state(self, where, initial_h, layout, shape):
        """(the tensor initial_h reads, as a (B, D·H) vector (directions side by side), or None; the learned
        (D, H) state a constant initial_h gives every sequence, or None): both None for zeros."""
        if initial_h is None:
            return None, None
        if not isinstance(initial_h, _Sym):
            return None, self._learned_state(where, np.asarray(initial_h), layout, shape)
        ids = initial_h.ids if layout == 0 else initial_h.ids.transpose(1, 0, 2)
        if ids.shape != shape:
            if ids.ndim == 3 and (ids.shape[0], ids.shape[2]) == (shape[0], shape[2]):
                raise _Mismatch(shape[1], ids.shape[1], f"{where}: initial_h has batch size {ids.shape[1]}, "
                                f"X has {shape[1]}")
            raise ModelFormatError(f"{where}: initial_h has shape {ids.shape}, expected {shape}")
        self._claim_states(where, ids)
        tensor, rows = self._aligned(where, _Sym(ids.transpose(1, 0, 2).reshape(shape[1], -1)))
        if tensor.has_time or not np.array_equal(rows, np.arange(shape[1])):
            raise UnsupportedModelError(f"{where}: initial_h is not a state (directions, batch, hidden) of each "
                                        "sequence in the batch")
        return tensor, None

    @staticmethod
    def _learned_state(where, value, layout, shape):
        """A constant initial_h → None when it is zero, else the (D, H) state every sequence starts from: a
        learned h0 expanded or tiled over X's batch (the interpreter folds the batch from X's shape), or one
        of batch 1, which grurt broadcasts over the batch (a file valid at batch 1 only means that there)."""
        if not np.any(value != 0):
            return None
        if not np.isfinite(value).all():
            raise ModelFormatError(f"{where}: initial_h contains NaN or infinity")
        directions, batch, hidden = shape
        given = value.shape
        if value.ndim == 3 and layout == 1:
            value = value.transpose(1, 0, 2)
        if value.ndim != 3 or (value.shape[0], value.shape[2]) != (directions, hidden) \
                or value.shape[1] not in (1, batch):
            sizes = (directions, f"{batch} or 1", hidden) if layout == 0 else (f"{batch} or 1", directions, hidden)
            raise ModelFormatError(f"{where}: initial_h is a constant of shape {given}, expected "
                                   f"({', '.join(map(str, sizes))})")
        if not (value == value[:, :1]).all():
            raise UnsupportedModelError(f"{where}: initial_h is a constant that differs between the sequences of "
                                        "the batch; grurt starts every sequence from the same learned state (make a "
                                        "state of each sequence a graph input: run(initial_state=...))")
        return value[:, 0]

    def _claim_states(self, where, ids):
        """Graph inputs read for the first time as initial_h (D, B, H) become state inputs: (N, B, H) (or
        (B, N, H) with layout 1) → a vector (B, N·H), N states side by side."""
        flat = ids.ravel()
        owners = {self.owners[i] for i in unique(self._owner_indices(flat))}
        batch_index = np.indices(ids.shape)[1].ravel()
        for raw in owners:
            if not isinstance(raw, _RawInput):
                continue
            if raw.integer or raw.ids.ndim != 3:
                raise UnsupportedModelError(f"{where}: initial_h reads graph input '{raw.name}' of shape "
                                            f"{raw.ids.shape}; a state input is (directions, batch, hidden)")
            mask = (flat >= raw.ids.min()) & (flat <= raw.ids.max())
            coords = np.unravel_index(flat[mask] - raw.ids.min(), raw.ids.shape)
            axis = next((a for a in (1, 0) if np.array_equal(coords[a], batch_index[mask])), None)
            if axis is None or raw.ids.shape[axis] != ids.shape[1]:
                raise UnsupportedModelError(f"{where}: initial_h reads graph input '{raw.name}' of shape "
                                            f"{raw.ids.shape} other than as states (directions, batch, hidden)")
            block = raw.ids.transpose(1, 0, 2) if axis == 1 else raw.ids
            index = self.owners.index(raw)
            tensor = self._tensor(block.reshape(block.shape[0], -1), False, (), raw.name, index)
            self.claimed[raw.name] = ("state", tensor, block.shape[1])
            self.state_batch_axis[raw.name] = axis

    def _gru_lengths(self, where, lengths, batch, steps):
        if lengths is None:
            return
        if not isinstance(lengths, _Sym):
            if np.any(np.asarray(lengths) != steps):
                raise UnsupportedModelError(f"{where}: sequence_lens is a constant other than the sequence length; "
                                            "pass lengths= to run() instead (make it a graph input)")
            return
        for name, raw in self.raw.items():
            if raw.integer and np.array_equal(lengths.ids, raw.ids):
                if raw.ids.ndim != 1:
                    raise ModelFormatError(f"{where}: sequence_lens must be 1-D, got shape {raw.ids.shape}")
                if raw.ids.shape[0] != batch:
                    raise _Mismatch(batch, raw.ids.shape[0],
                                    f"{where}: sequence_lens has {raw.ids.shape[0]} entries, X has batch size {batch}")
                self.lengths.append(name)
                self.claimed[name] = ("lengths", None, 1)
                return
        raise UnsupportedModelError(f"{where}: sequence_lens must be an integer graph input, used as it is")
