"""The driver of the fusion pass (:mod:`grurt.fusion`): :func:`interpret` a graph at probe sizes, :func:`fuse` a
whole graph."""
from __future__ import annotations

from ..errors import GrurtError, InputError, ModelFormatError, UnsupportedModelError
from .build import Fused, build
from .conv import _ConvOps, _TooShort
from .gru import _GRUOp
from .interpreter import Budget, _Layout, _Mismatch, _TooLarge
from .norm import _NormOps
from .ops import _Ops


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
