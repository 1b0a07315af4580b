"""Ops of the recurrent family (see :mod:`grurt.ops`): the ONNX ``GRU``, run on grurt's kernels.

``prepare`` turns the node's constant weights and its attributes into one canonical
:class:`grurt.spec.GRU` layer (the ONNX operator *is* grurt's canonical GRU: gate order z, r, h,
``W`` (D, 3H, I), ``R`` (D, 3H, H), ``B`` (D, 6H) = [Wb, Rb]) and a :class:`grurt.Model` of it;
``run`` moves the tensors between ONNX's layouts and the Model's (B, T, I) sequences (a layer
of one Model without ``sequence_lens``, the common case, calls the Model's kernels directly: the
plan fixes the shapes, so ``Model.run``'s checks are made once, in ``prepare``):

==================  ==========================================  =============================
input / output      ONNX layout 0 (layout 1)                    :meth:`grurt.Model.run`
==================  ==========================================  =============================
``X``               (T, B, I) ((B, T, I))                       ``seq`` (B, T, I)
``sequence_lens``   (B,) integers, each in 1..T                 ``lengths``
``initial_h``       (D, B, H) ((B, D, H)); zeros when omitted   ``initial_state=[(D, B, H)]``
``Y``               (T, D, B, H) ((B, T, D, H)), zero past      output (B, T, D·H)
                    each sequence's length
``Y_h``             (D, B, H) ((B, D, H))                       ``return_state``: (D, B, H)
==================  ==========================================  =============================

``activations`` name f and g per direction (default Sigmoid, Tanh); ``activation_alpha``
(``activation_beta``) is consumed in order by the functions that take an alpha (a beta), as
onnxruntime reads it. Directions with different pairs run as two one-direction layers.
``clip`` clamps the inputs of f and g to [−clip, clip].
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref

import numpy as np

from .._fields import ACTIVATION_DEFAULTS, activation
from ..errors import InputError, ModelFormatError, UnsupportedModelError
from ..chain_runner import ChainRunner
from ..spec import GRU, ModelSpec, output_steps
from .registry import FLOAT, INT, Attr, Op, register

#: ONNX RNN activation names (case-insensitive) -> grurt activation kinds.
RNN_ACTIVATIONS = {
    "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "affine": "affine", "leakyrelu": "leaky_relu",
    "thresholdedrelu": "thresholded_relu", "scaledtanh": "scaled_tanh", "hardsigmoid": "hard_sigmoid",
    "elu": "elu", "softsign": "softsign", "softplus": "softplus",
}
#: What grurt's own recurrent ops (grurt.MaskedGRU) name f and g with: the ONNX names and grurt's activation kinds
#: (the fused layers' GELU, SiLU, Mish, SELU, hard SiLU, clip, ...).
GRURT_ACTIVATIONS = {**RNN_ACTIVATIONS, **{kind: kind for kind in ACTIVATION_DEFAULTS if kind != "softmax"}}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


class _Call(threading.local):
    """The calling thread's ``threads`` for the ops of the graph it runs (TensorModel.run): GRU layers and
    convolutions (grurt.ops.conv reads it too)."""

    threads = 1


CALL = _Call()


@contextlib.contextmanager
def call_threads(threads: int):
    """The GRU and Conv ops the calling thread runs inside run on up to ``threads`` threads (checked by the
    caller): :meth:`grurt.Model.run`'s ``threads``, each GRU layer split when that is measured to pay; a Conv
    of enough work split over output rows or positions."""
    previous, CALL.threads = CALL.threads, threads
    try:
        yield
    finally:
        CALL.threads = previous


def direction_activations(where, attrs, directions, names=RNN_ACTIVATIONS):
    """[(f, g)] per direction from activations/activation_alpha/activation_beta, read the way
    onnxruntime does: the alpha (beta) list is consumed in order by the functions that take an
    alpha (beta). ``names``: the function names the op reads (lower case) -> grurt's kinds."""
    kinds, names = names, list(attrs.get("activations") or ["Sigmoid", "Tanh"] * directions)
    if len(names) != 2 * directions:
        raise ModelFormatError(f"{where}: activations={names} must name {2 * directions} functions "
                               "(f and g per direction)")
    alphas, betas = list(attrs.get("activation_alpha") or []), list(attrs.get("activation_beta") or [])
    functions = []
    for name in names:
        kind = kinds.get(name.lower())
        if kind is None:
            raise UnsupportedModelError(f"{where}: activation {name!r} is not supported")
        takes_alpha, takes_beta = (default is not None for default in ACTIVATION_DEFAULTS[kind])
        alpha = alphas.pop(0) if takes_alpha and alphas else None
        beta = betas.pop(0) if takes_beta and betas else None
        functions.append(activation(kind, alpha, beta))
    if alphas or betas:
        raise ModelFormatError(f"{where}: activation_alpha/activation_beta hold more values than the activations "
                               f"{names} take")
    return [tuple(functions[2 * d:2 * d + 2]) for d in range(directions)]


def gru_activations(where, attrs, directions):
    """(f, g) of a GRU layer, whose directions share them (:func:`direction_activations`)."""
    pairs = direction_activations(where, attrs, directions)
    if len(set(pairs)) > 1:
        described = [fn.describe() for pair in pairs for fn in pair]
        raise UnsupportedModelError(f"{where}: the two directions use different activations {described}; grurt "
                                    "uses the same f and g for both")
    return pairs[0]


def _activations_check(names, known=RNN_ACTIVATIONS):
    unknown = [n for n in names if n.lower() not in known]
    return f"activation {unknown[0]!r} is not supported" if unknown else None
class _SharedModels:
    """The :class:`grurt.Model` s (their kernels' plans: packed weights) that plans run GRU and Chain nodes on,
    shared by every plan of the same layers and weights mode: a plan for a new input signature (or of a stream
    graph made from the same node) neither builds nor packs them again, and the plans hold one copy.

    An entry holds its Model weakly, so it lives exactly as long as a plan (or anything else) holds the Model:
    the memory is the plans', bounded by their caches. A hit compares what the Model is made of (every field,
    the arrays with ``np.array_equal`` after the same-object check) with the Model's own spec, never an ``id``,
    so no other graph's weights can be mistaken for these after a graph dies. Two threads planning the same
    layers at once may both build; the first one stored is the one both keep."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = {}          # fingerprint -> [weakref to a Model]

    def get(self, parts, build, view=lambda model: model.spec) -> ChainRunner:
        """The Model whose ``view`` equals ``parts`` (a spec, or what a spec is built from), else ``build()``."""
        key = _fingerprint(parts)
        with self._lock:
            candidates = [ref() for ref in self._entries.get(key, ())]
        found = next((m for m in candidates if m is not None and _same(view(m), parts)), None)
        if found is not None:
            return found
        built = build()                         # outside the lock: other nodes keep planning
        with self._lock:
            refs = [ref for ref in self._entries.get(key, ()) if ref() is not None]
            for model in (ref() for ref in refs):
                if model is not None and _same(view(model), parts):
                    return model
            self._entries = {k: alive for k, alive in ((k, [r for r in v if r() is not None])
                                                      for k, v in self._entries.items()) if alive}
            self._entries[key] = refs + [weakref.ref(built)]
        return built

    def __len__(self) -> int:
        """The Models alive in the cache."""
        with self._lock:
            return sum(ref() is not None for refs in self._entries.values() for ref in refs)


SHARED = _SharedModels()


def shared_model(spec: ModelSpec, weights: str = "float32") -> ChainRunner:
    """The shared :class:`grurt.Model` of ``spec`` in ``weights`` mode (:class:`_SharedModels`)."""
    return SHARED.get((weights, spec), lambda: ChainRunner(spec, weights), lambda model: (model.weights, model.spec))


def _shared_gru(W, R, B, direction, lbr, f, g, clip) -> ChainRunner:
    """The shared float32 Model of one GRU layer, found from the node's arrays before a layer is built (building
    one checks and copies its weights)."""
    clip = None if clip is None else float(np.float32(clip))
    parts = (W, R, B, direction, lbr, f, g, clip)

    def build():
        layer = GRU(W, R, B, direction=direction, linear_before_reset=lbr, gate_activation=f, candidate_activation=g,
                    clip=clip)
        return ChainRunner(ModelSpec(layer.input_size, (layer,)))

    def view(model):
        (layer,) = model.spec.layers
        return (layer.W, layer.R, layer.B, layer.direction, layer.linear_before_reset, layer.gate_activation,
                layer.candidate_activation, layer.clip)
    return SHARED.get(parts, build, view)


def _fingerprint(value):
    """A hashable summary of a spec (types, attributes, array shapes and a sample of their values): equal specs
    have equal fingerprints; :func:`_same` decides."""
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        return value.shape, value.dtype.str, flat[::max(1, flat.size // 16)].tobytes()
    if dataclasses.is_dataclass(value):
        return (type(value).__name__,) + tuple(_fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return tuple(_fingerprint(v) for v in value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _same(a, b) -> bool:
    """Whether two specs (or fields of them) hold the same layers and values."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _positive(value):
    return None if value is None or value >= 1 else f"must be a positive integer, got {value}"


def _gru_shapes(attrs, values):
    """(D, H, I, batch, steps) of a GRU node, every input's shape checked."""
    X, W, R, B, lengths, initial_h = (list(values) + [None] * 6)[:6]
    D = DIRECTIONS[attrs["direction"]]
    layout = attrs["layout"]
    if X.dtype != FLOAT or len(X.shape) != 3:
        raise ModelFormatError(f"X must be a 3-D float tensor, got {X.dtype} {X.shape}")
    steps, batch, features = X.shape if layout == 0 else (X.shape[1], X.shape[0], X.shape[2])
    if len(R.shape) != 3:
        raise ModelFormatError(f"R must be (directions, 3·hidden, hidden), got shape {R.shape}")
    H = attrs["hidden_size"] or R.shape[2]
    expected = {"W": (D, 3 * H, features), "R": (D, 3 * H, H), "B": (D, 6 * H),
                "initial_h": (D, batch, H) if layout == 0 else (batch, D, H), "sequence_lens": (batch,)}
    for name, value in (("W", W), ("R", R), ("B", B), ("sequence_lens", lengths), ("initial_h", initial_h)):
        if value is not None and tuple(value.shape) != expected[name]:
            raise ModelFormatError(f"{name} has shape {tuple(value.shape)}; with hidden_size={H}, direction="
                                   f"{attrs['direction']}, layout={layout} and X {X.shape} it must be {expected[name]}")
        if value is not None and value.dtype != (INT if name == "sequence_lens" else FLOAT):
            raise ModelFormatError(f"{name} has dtype {value.dtype}")
    if steps == 0 or batch == 0:
        raise InputError(f"X of shape {X.shape} has no time steps or no sequences")
    return D, H, features, batch, steps


def _gru_infer(attrs, values):
    D, H, _, batch, steps = _gru_shapes(attrs, values)
    if attrs["layout"] == 0:
        return [((steps, D, batch, H), FLOAT), ((D, batch, H), FLOAT)]
    return [((batch, steps, D, H), FLOAT), ((batch, D, H), FLOAT)]


def _gru_prepare(attrs, values):
    """A grurt Model of the node's GRU layer, its weights the node's constants; one Model per
    direction when the two directions use different activations."""
    D, H, _, _, _ = _gru_shapes(attrs, values)
    W, R, B = (v.const if v is not None else None for v in (list(values) + [None] * 4)[1:4])
    B = np.zeros((D, 6 * H), np.float32) if B is None else B
    pairs = direction_activations("GRU", attrs, D)
    lbr, clip = bool(attrs["linear_before_reset"]), attrs["clip"]
    if len(set(pairs)) == 1:
        models = [_shared_gru(W, R, B, attrs["direction"], lbr, *pairs[0], clip)]
    else:
        models = [_shared_gru(W[d:d + 1], R[d:d + 1], B[d:d + 1], ("forward", "reverse")[d], lbr, f, g, clip)
                  for d, (f, g) in enumerate(pairs)]
    if len(models) == 1:
        # the plan fixes the shapes: the size limits are checked once here, and run calls the kernels directly
        _, _, _, batch, steps = _gru_shapes(attrs, values)
        models[0]._check_size(batch, steps)
        if len(values) < 5 or values[4] is None:
            return Direct(models[0], batch, steps, attrs["layout"])
    return models, attrs["layout"]


class Direct:
    """A Model and the shapes of one plan: ``run`` hands (B, T, I) input and (D, B, H) states to the Model's
    kernels as :meth:`grurt.Model.run` does after its checks, made once here, when the plan is made (the
    shapes are fixed: the size limits are checked now). ``layout``: the ONNX GRU's (None for a grurt.Chain)."""

    __slots__ = ("model", "kernels", "layout", "out", "rows", "starts")

    def __init__(self, model, batch, steps, layout=None):
        model._check_size(batch, steps)
        spec = model.spec
        self.model, self.kernels, self.layout = model, model._plan, layout
        out_steps = output_steps(spec, steps)
        self.out = (batch, out_steps, spec.output_size) if spec.returns_sequence else (batch, spec.output_size)
        self.rows = batch * steps
        #: each GRU's state when none is given: the shape of its zeros, or its learned initial_state (D, B, H)
        self.starts = [(gru.num_directions, batch, gru.hidden_size) if gru.initial_state is None
                       else gru.default_state(batch) for gru in spec.gru_layers]

    def reduced(self, mode):
        """This Direct with the Model's GRU weights in ``mode`` (grurt.precision)."""
        direct = Direct.__new__(Direct)
        direct.model = shared_model(self.model.spec, weights=mode)
        direct.kernels, direct.layout, direct.out, direct.rows = direct.model._plan, self.layout, self.out, self.rows
        direct.starts = self.starts
        return direct

    def run(self, x, states):
        """(output, final states) for ``x`` (B, T, I) float32 C-contiguous and ``states``, one (D, B, H) array per
        GRU layer or None (its default: zeros or its learned initial_state); the states given are copied."""
        h = [(np.zeros(start, np.float32) if type(start) is tuple else start.copy()) if s is None
             else np.array(s, np.float32, order="C") for start, s in zip(self.starts, states)]
        y = np.empty(self.out, np.float32)
        # one step of one sequence stays on the calling thread: its split (a worker woken for a few µs of work)
        # measured 4% slower on W10 at one frame with the second core busy (833 -> 870 µs a hop), where 20 frames gain
        self.kernels.run(x, h, None, y, CALL.threads if self.rows > 1 else 1)
        return y, h


def _gru_reduced(ctx, mode):
    """The prepared GRU with its weights stored and multiplied in ``mode`` (grurt.precision)."""
    if type(ctx) is Direct:
        return ctx.reduced(mode)
    models, layout = ctx
    return [shared_model(model.spec, weights=mode) for model in models], layout


def _gru_direct(ctx, X, initial_h):
    x = np.ascontiguousarray(X.transpose(1, 0, 2) if ctx.layout == 0 else X)                  # (B, T, I)
    h0 = None if initial_h is None else initial_h if ctx.layout == 0 else initial_h.transpose(1, 0, 2)  # (D, B, H)
    y, (h,) = ctx.run(x, [h0])
    return y, h


def _gru_run(ctx, inputs):
    if type(ctx) is Direct:
        y, h = _gru_direct(ctx, inputs[0], inputs[5] if len(inputs) > 5 else None)
        layout, first = ctx.layout, h.shape[0]
    else:
        y, h, first = _gru_models(ctx, inputs)
        layout = ctx[1]
    batch, steps, _ = y.shape
    y = y.reshape(batch, steps, first, -1)                                 # (B, T, D, H)
    if layout == 0:
        return [np.ascontiguousarray(y.transpose(1, 2, 0, 3)), h]          # (T, D, B, H), (D, B, H)
    return [y, np.ascontiguousarray(h.transpose(1, 0, 2))]                 # (B, T, D, H), (B, D, H)


def _gru_models(ctx, inputs):
    """(Y (B, T, D·H), Y_h (D, B, H), D) through ``grurt.Model.run`` of each Model of ``ctx``."""
    models, layout = ctx
    X, _, _, _, lengths, initial_h = (list(inputs) + [None] * 6)[:6]
    x = X.transpose(1, 0, 2) if layout == 0 else X                          # (B, T, I)
    h0 = None if initial_h is None else initial_h if layout == 0 else initial_h.transpose(1, 0, 2)   # (D, B, H)
    ys, hs, first = [], [], 0
    for model in models:
        directions = model.spec.layers[0].num_directions
        y, (h,) = model.run(x, initial_state=None if h0 is None else [h0[first:first + directions]],
                            return_state=True, lengths=lengths, threads=CALL.threads)
        ys.append(y)
        hs.append(h)
        first += directions
    y, h = (ys[0], hs[0]) if len(models) == 1 else (np.concatenate(ys, -1), np.concatenate(hs, 0))
    return y, h, first


register(Op(
    "GRU",
    attributes={
        "activation_alpha": Attr("floats", ()),
        "activation_beta": Attr("floats", ()),
        "activations": Attr("strings", (), _activations_check),
        "clip": Attr("float", None, lambda v: None if v > 0 else f"must be positive, got {v}"),
        "direction": Attr("string", "forward", lambda v: None if v in DIRECTIONS else
                          f"must be one of {', '.join(DIRECTIONS)}, got {v!r}"),
        "hidden_size": Attr("int", None, _positive),
        "layout": Attr("int", 0, lambda v: None if v in (0, 1) else f"must be 0 or 1, got {v}"),
        "linear_before_reset": Attr("int", 0, lambda v: None if v in (0, 1) else f"must be 0 or 1, got {v}"),
    },
    infer=_gru_infer, prepare=_gru_prepare, run=_gru_run, reduced=_gru_reduced,
    time="sequence",      # a forward GRU steps with its state (streaming, later); a reverse one needs it all
    inputs=(3, 6), outputs=(1, 2), const_inputs=(1, 2, 3)))
