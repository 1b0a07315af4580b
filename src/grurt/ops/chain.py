"""``grurt.Chain``: a chain of grurt's fused layers (:mod:`grurt.spec`) as one node of a tensor graph.

The node computes what :meth:`grurt.Model.run` computes for ``grurt.Model(ModelSpec(input_size, layers,
mask_value))``, on the same kernels, to the same bits (docs/ops.md, "grurt.Chain"):

==================  ==============================================================================
attribute           ``layers`` (required): the canonical layers, in order; ``input_size``: features
                    per step (default: the first GRU's, Dense's, Scale's, LayerNorm's or Conv1D's;
                    none for a chain that starts with an Embedding); ``mask_value``: as ModelSpec's
``x``               (B, T, F) float32, or (B, T) int64 token ids when the first layer is an Embedding
``lengths``         optional (B,) int64, each in 1..T (``Model.run(lengths=)``)
``state_k``         optional, one per GRU layer: (D, B, H) float32; omitted: zeros, or the layer's
                    learned ``initial_state``
``history_k``       optional, one per Conv1D of a chain that streams (below): (B, (k-1)·dilation, C),
                    the input frames before the first one, oldest first; omitted: zeros
``y``               (B, T', F') or (B, F'), as ``Model.run`` returns it
``state_k'``        optional: each GRU layer's final state (``return_state=True``)
``history_k'``      optional: each Conv1D's last (k-1)·dilation input frames
==================  ==============================================================================

A chain *streams* when its GRUs all run forward, its Conv1Ds are causal (stride 1, padding
((k-1)·dilation, 0)) and it has no mask_value, Reverse, pooling, Flatten or padding layers: it then acts
causally, its states and histories carrying it from one block of frames to the next
(:mod:`grurt.tensor_stream`); any other chain needs the whole sequence. A chain ending in a LastStep or a GRU's
last state streams as a summary: its output after a block is what it gives for the frames so far.

``prepare`` takes the Model (its kernels' plan) shared by every plan of the same layers
(:func:`grurt.ops.recurrent.shared_model`). ``run`` calls the kernels directly
(:class:`grurt.ops.recurrent.Direct`) without ``lengths`` or a mask, the common case; with histories
through a :class:`grurt._kernels.Stream` (the kernels' streaming path); otherwise through
``Model.run`` itself. A node of a stream graph (attribute ``keep_state=1``, set by :mod:`grurt.tensor_stream`)
keeps its kernels' Stream and its states in it between calls: a call given back the states it returned copies
nothing in.
"""
from __future__ import annotations

import threading

import numpy as np

from .._kernels import Stream
from ..errors import InputError, ModelFormatError, UnsupportedModelError
from ..chain_runner import KERNEL_LAYERS
from ..spec import (GRU, WHOLE_SEQUENCE, Conv1D, Dense, Embedding, LayerNorm, ModelSpec, Reverse, Scale,
                    frame_rate_layers, output_steps)
from .recurrent import CALL, Direct, shared_model
from .registry import FLOAT, INT, Attr, Op, register


def chain_spec(attrs) -> ModelSpec:
    """The ModelSpec of a Chain node's checked attributes (ModelFormatError for a chain it refuses)."""
    layers, input_size = attrs["layers"], attrs["input_size"]
    if input_size is None and not isinstance(layers[0], Embedding):
        input_size = next((layer.size if isinstance(layer, (Scale, LayerNorm)) else
                           layer.in_channels if isinstance(layer, Conv1D) else layer.input_size
                           for layer in layers if isinstance(layer, (GRU, Dense, Scale, LayerNorm, Conv1D))), None)
        if input_size is None:
            raise ModelFormatError("no GRU, Dense, Scale, LayerNorm or Conv1D layer tells the input size: give the "
                                   "attribute input_size")
    return ModelSpec(input_size, layers, mask_value=attrs["mask_value"])


def _check(attrs):
    spec = chain_spec(attrs)
    for index, layer in enumerate(spec.layers[1:] if spec.takes_ids else spec.layers):
        if not isinstance(layer, KERNEL_LAYERS):
            raise UnsupportedModelError(f"layer {index}: {layer.describe()} does not run on grurt's kernels")


def stream_refusal(spec: ModelSpec):
    """Why a chain cannot run frame by frame (None: it can, with its GRU states and Conv1D histories)."""
    if spec.mask_value is not None:
        return "its mask_value makes each sequence's length depend on its last frames"
    for index, layer in enumerate(spec.layers):
        if isinstance(layer, GRU) and layer.direction != "forward":
            return f"layer {index} is a {layer.direction} GRU, which reads the sequence from its end"
        if isinstance(layer, (Reverse,) + WHOLE_SEQUENCE):
            return f"layer {index} ({layer.describe()}) needs the whole sequence"
    for index, layer in frame_rate_layers(spec):
        return (f"layer {index} ({layer.describe()}) changes the number of frames or looks ahead (only a causal "
                "Conv1D, stride 1 and padding ((k-1)·dilation, 0), streams)")
    return None


def _counts(spec: ModelSpec):
    """(GRU layers, histories): a history per Conv1D of a chain that streams."""
    histories = sum(isinstance(layer, Conv1D) for layer in spec.layers) if stream_refusal(spec) is None else 0
    return len(spec.gru_layers), histories


def _arity(attrs):
    grus, histories = _counts(chain_spec(attrs))
    return (1, 2 + grus + histories), (1, 1 + grus + histories)


def _time_of(attrs, values, time_axis):
    spec = chain_spec(attrs)
    if stream_refusal(spec) is not None or time_axis != 1:
        return "sequence"
    return "causal" if spec.gru_layers or any(isinstance(layer, Conv1D) for layer in spec.layers) else "step"


def _shapes(spec: ModelSpec, values):
    """(batch, steps, [(shape, dtype)] of every output), every input's shape checked."""
    grus, histories = _counts(spec)
    x, lengths = (list(values) + [None])[:2]
    states, given = values[2:2 + grus], values[2 + grus:]
    if spec.takes_ids:
        if x.dtype != INT or len(x.shape) != 2:
            raise ModelFormatError(f"x must be (batch, steps) int64 token ids (the chain starts with an Embedding), "
                                   f"got {x.dtype} {x.shape}")
    elif x.dtype != FLOAT or len(x.shape) != 3 or x.shape[2] != spec.input_size:
        raise ModelFormatError(f"x must be (batch, steps, {spec.input_size}) float32, got {x.dtype} {x.shape}")
    batch, steps = x.shape[:2]
    if not batch or not steps:
        raise InputError(f"x of shape {x.shape} has no time steps or no sequences")
    out_steps = output_steps(spec, steps)          # InputError naming the layer when a window finds no frame
    if spec.fixed_steps is not None and out_steps != spec.fixed_steps:
        raise InputError(f"the chain flattens exactly {spec.fixed_steps} frames, but {steps} input frames give "
                         f"{out_steps} there")
    if lengths is not None:
        if lengths.dtype != INT or lengths.shape != (batch,):
            raise ModelFormatError(f"lengths must be ({batch},) int64, got {lengths.dtype} {lengths.shape}")
        if frame_rate_layers(spec):
            index, layer = frame_rate_layers(spec)[0]
            raise UnsupportedModelError(f"lengths cannot be used with layer {index} ({layer.describe()}), which "
                                        "changes the number of frames or looks ahead")
        if any(v is not None for v in given):
            raise ModelFormatError("a chain given Conv1D histories continues a stream: it takes no lengths")
    history_shapes = [(batch, layer.span - 1, layer.in_channels) for layer in spec.layers
                      if isinstance(layer, Conv1D)][:histories]
    expected = [(gru.num_directions, batch, gru.hidden_size) for gru in spec.gru_layers] + history_shapes
    for index, (value, shape) in enumerate(zip(states + given, expected)):
        if value is not None and (value.dtype != FLOAT or tuple(value.shape) != shape):
            what = f"state {index}" if index < grus else f"history {index - grus}"
            raise ModelFormatError(f"{what} must be {shape} float32 for x {x.shape}, got {value.dtype} {value.shape}")
    y = (batch, out_steps, spec.output_size) if spec.returns_sequence else (batch, spec.output_size)
    return batch, steps, [(y, FLOAT)] + [(shape, FLOAT) for shape in expected]


def _infer(attrs, values):
    return _shapes(chain_spec(attrs), values)[2]


class _Chain:
    """A Chain node prepared for one plan: its Model, the way ``run`` goes ("direct", "stream" or "model")
    and, for the direct way, the kernels' call (Direct)."""

    __slots__ = ("model", "way", "direct", "grus", "histories", "batch", "streams", "starts", "kept", "summary")

    def __init__(self, model, way, batch, steps):
        self.model, self.way, self.batch = model, way, batch
        self.direct = Direct(model, batch, steps) if way == "direct" else None
        if way != "direct":
            model._check_size(batch, steps)
        self.grus, self.histories = _counts(model.spec)
        self.streams = threading.local()        # "stream", "kept" ways: each thread's kernels' Stream, by threads
        self.starts = None                      # "kept" way: each state's start (for a state input not given)
        self.kept = {}                          # "kept" way: (Stream, its states read-only, writable) by threads
        self.summary = None if model.spec.returns_sequence else True    # output of the last frame, no time axis

    def reduced(self, mode):
        chain = _Chain.__new__(_Chain)
        chain.model = shared_model(self.model.spec, weights=mode)
        chain.way, chain.batch, chain.grus, chain.histories = self.way, self.batch, self.grus, self.histories
        chain.direct = self.direct.reduced(mode) if self.direct is not None else None
        chain.streams = threading.local()
        chain.starts, chain.kept, chain.summary = self.starts, {}, self.summary
        return chain


def _prepare(attrs, values):
    spec = chain_spec(attrs)
    batch, steps, _ = _shapes(spec, values)
    grus = len(spec.gru_layers)
    lengths = len(values) > 1 and values[1] is not None
    histories = any(v is not None for v in values[2 + grus:])
    if attrs["keep_state"] and not lengths:
        way = "kept"
    else:
        way = "stream" if histories else "model" if lengths or spec.mask_value is not None else "direct"
    chain = _Chain(shared_model(spec), way, batch, steps)
    if way == "kept":
        chain.starts = [gru.default_state(batch) for gru in spec.gru_layers] + [
            np.zeros((batch, layer.span - 1, layer.in_channels), np.float32)
            for layer in spec.layers if isinstance(layer, Conv1D)][:chain.histories]
    return chain


def _frames(ctx, x):
    """The float32 frames the kernels read: x, or the embedding rows of token ids (checked)."""
    table = ctx.model._table
    if table is None:
        return x
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= table.shape[0]:
        raise InputError(f"token id {low if low < 0 else high} is outside the vocabulary [0, {table.shape[0]})")
    return np.take(table, x, axis=0)


def _run(ctx, inputs):
    if ctx.way == "kept":
        return _run_kept(ctx, inputs)
    if ctx.way == "direct":          # the common call: x and the states (None for a state not given)
        states = inputs[2:2 + ctx.grus]
        if len(states) < ctx.grus:
            states = [*states, *[None] * (ctx.grus - len(states))]
        y, h = ctx.direct.run(inputs[0] if ctx.model._table is None else _frames(ctx, inputs[0]), states)
        h.insert(0, y)
        return h
    inputs = list(inputs) + [None] * (2 + ctx.grus + ctx.histories - len(inputs))
    x, lengths = inputs[0], inputs[1]
    states, histories = inputs[2:2 + ctx.grus], inputs[2 + ctx.grus:]
    if ctx.way == "model":
        initial = None
        if any(s is not None for s in states):
            initial = [gru.default_state(ctx.batch) if s is None else s
                       for gru, s in zip(ctx.model.spec.gru_layers, states)]
        y, h = ctx.model.run(x, initial_state=initial, return_state=True, lengths=lengths, threads=CALL.threads)
        return [y] + h
    stream = _stream(ctx)
    stream.state = [gru.default_state(ctx.batch) if s is None else s
                    for gru, s in zip(ctx.model.spec.gru_layers, states)] + [
        np.zeros(shape, np.float32) if v is None else v
        for v, shape in zip(histories, [(ctx.batch, layer.span - 1, layer.in_channels)
                                        for layer in ctx.model.spec.layers if isinstance(layer, Conv1D)])]
    y = stream.run(np.ascontiguousarray(_frames(ctx, x), np.float32))
    return [y if ctx.model.spec.returns_sequence else y[:, -1]] + stream.state


def _run_kept(ctx, inputs):
    """A node of a stream graph: its states live in a kept kernels' Stream; a state input that is not the Stream's
    own (what the last call returned) is copied in first. Returns the Stream's states themselves (read-only views the
    next call writes into: a stream copies what it hands out). A stream graph's plan has one caller at a time (a
    Stream refuses a second one)."""
    stream, views, writable = ctx.kept.get(CALL.threads) or _keep(ctx)
    if views:
        for view, into, given, start in zip(views, writable, inputs[2:], ctx.starts):
            if given is not view:
                into[...] = start if given is None else given
    y = stream.run(inputs[0] if ctx.model._table is None else _frames(ctx, inputs[0]))   # (any layout: it copies)
    return [y, *views] if ctx.summary is None else [y[:, -1], *views]


def _keep(ctx):
    """(a new kernels' Stream, its states as read-only views, writable views) for the calling threads' setting."""
    stream = Stream(ctx.model, ctx.batch, CALL.threads)
    writable = stream.live_state
    kept = ctx.kept[CALL.threads] = (stream, [_read_only(v) for v in writable], writable)
    return kept


def _read_only(array):
    view = array.view()
    view.setflags(write=False)
    return view


def _stream(ctx) -> Stream:
    """The calling thread's kernels' Stream of the chain's Model (a Stream takes one caller at a time)."""
    threads = CALL.threads
    streams = getattr(ctx.streams, "by_threads", None)
    if streams is None:
        streams = ctx.streams.by_threads = {}
    stream = streams.get(threads)
    if stream is None:
        stream = streams[threads] = Stream(ctx.model, ctx.batch, threads)
    return stream


register(Op(
    "grurt.Chain",
    attributes={
        "layers": Attr("layers"),
        "input_size": Attr("int", None, lambda v: None if 0 < v < 2**31 else f"must be a positive integer, got {v}"),
        "mask_value": Attr("float", None),
        # 1: a node of a stream graph (grurt.tensor_stream), whose states stay in place between its calls
        "keep_state": Attr("int", 0, lambda v: None if v in (0, 1) else f"must be 0 or 1, got {v}"),
    },
    infer=_infer, prepare=_prepare, run=_run, reduced=lambda ctx, mode: ctx.reduced(mode),
    check=_check, arity=_arity, time=None, time_of=_time_of,
    inputs=(1, 2 + 2 * 64), outputs=(1, 1 + 2 * 64)))
