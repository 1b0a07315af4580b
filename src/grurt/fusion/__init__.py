"""The fusion pass: a :class:`~grurt.tensor_graph.TensorGraph` of ONNX ops → grurt's fused layers.

:func:`fuse` reads a TensorGraph whose nodes are the registry's ops (their attributes checked and
defaulted, older opsets' forms normalized by the importer) and, when every node is recognized,
gives the :class:`~grurt.graph.Graph` of grurt's layers it computes (GRU, Dense, Conv1D, norms, ...,
wired by Concat/Slice/Combine nodes) with the map of the TensorGraph's inputs and outputs onto
it (:class:`.build.Fused`); :class:`grurt.Model` runs that Graph on the kernels. Anything else
raises UnsupportedModelError naming the node, and the TensorGraph runs as it is
(:class:`~grurt.tensor_model.TensorModel`).

The graph is interpreted symbolically (:mod:`.interpreter`, with the ops of :mod:`.ops`,
:mod:`.gru`, :mod:`.conv`, :mod:`.norm`) at small probe sizes of its dim parameters, and the
result built into a Graph (:mod:`.build`). The driver here unifies the dims that must agree (a
state input's batch and the sequence's) by retrying, lengthens the probes while a convolution
or a pool finds too few frames, transposes a sequence input found time-major, and interprets a
dynamic graph at a second probe size: both must give the same model. Every interpretation of
one graph takes its element ids from one :class:`Budget` (grurt.limits.MAX_IDS).
"""
from __future__ import annotations

from ..errors import GrurtError, InputError, ModelFormatError, UnsupportedModelError
from .build import Fused, build
from .conv import _ConvOps, _TooShort
from .gru import _GRUOp
from .interpreter import Budget, _Layout, _Mismatch, _TooLarge
from .norm import _NormOps
from .ops import _Ops

__all__ = ["Budget", "Fused", "fuse", "interpret"]


class _Fusion(_GRUOp, _NormOps, _ConvOps, _Ops):
    """The interpreter with every op's handler."""


def interpret(graph, fixed=None, probe=0, budget=None) -> Fused:
    """Interpret the graph with dims from ``fixed`` (param -> size) and probe sizes for the others.

    Dims that must agree (a state input's batch and the sequence's) are unified by retrying.
    """
    budget = Budget() if budget is None else budget
    fixed = dict(fixed or {})
    params = []
    for tensor_input in graph.inputs:
        params += [d for d in tensor_input.dims if isinstance(d, str) and d not in params]
    links = {}
    time_major = frozenset()
    longer = 0      # added to the probe sizes while a convolution or pool finds too few frames
    while True:
        sizes = {}
        for index, param in enumerate(params):
            sizes[param] = fixed.get(param, (3, 5)[probe] + index + longer)
        for param, target in links.items():
            sizes[param] = sizes[target] if isinstance(target, str) else target
        try:
            return build(_Fusion(graph, sizes, time_major, budget).run())
        except _Layout as layout:
            if layout.inputs & time_major:
                raise UnsupportedModelError(str(layout)) from None
            time_major |= layout.inputs
        except _TooShort as short:
            if longer >= 1024 or not params:
                raise ModelFormatError(f"{short} (the graph's input is too short for it)") from None
            longer = max(16, 4 * longer)
        except _Mismatch as mismatch:
            got = [p for p in params if sizes[p] == mismatch.got and p not in links and p not in fixed]
            expected = [p for p in params if sizes[p] == mismatch.expected]
            if got:
                links.update({p: expected[0] if expected else mismatch.expected for p in got})
            elif expected and not set(expected) & set(fixed):
                links.update({p: mismatch.got for p in expected})
            else:   # the graph cannot run the batch size asked for, or contradicts itself
                raise (InputError if set(expected) & set(fixed) else ModelFormatError)(str(mismatch)) from None


def fuse(graph, budget=None) -> Fused:
    """The fused layers ``graph`` (a TensorGraph) computes, the same at every size of its dim parameters;
    UnsupportedModelError when it is not entirely recognized."""
    budget = Budget() if budget is None else budget
    try:
        result = interpret(graph, budget=budget)
        if any(isinstance(d, str) for tensor_input in graph.inputs for d in tensor_input.dims):
            try:
                other = interpret(graph, probe=1, budget=budget)
            except _TooLarge:
                raise
            except GrurtError as exc:
                raise UnsupportedModelError(f"the graph works only for some input sizes: {exc}") from None
            if other.signature() != result.signature():
                raise UnsupportedModelError("the graph means a different model for different input sizes "
                                            "(e.g. a hard-coded time index or batch size)")
    except _TooLarge as exc:      # the graph's budget is spent, whichever the probe (grurt.limits.MAX_IDS)
        raise ModelFormatError(str(exc)) from None
    return result
