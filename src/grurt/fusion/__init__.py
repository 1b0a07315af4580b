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
result built into a Graph (:mod:`.build`). The driver (:mod:`.driver`) unifies the dims that must agree (a
state input's batch and the sequence's) by retrying, lengthens the probes while a convolution
or a pool finds too few frames, transposes a sequence input found time-major, and interprets a
dynamic graph at a second probe size: both must give the same model. Every interpretation of
one graph takes its element ids from one :class:`Budget` (grurt.limits.MAX_IDS).

:func:`fuse_regions` (:mod:`.regions`) runs the pass on the parts of a graph it does not entirely recognize:
each region around a GRU that the interpreter recognizes becomes ``grurt.Chain`` nodes, the rest stays.
"""
from .build import Fused
from .driver import fuse, interpret
from .interpreter import Budget
from .regions import fuse_regions

__all__ = ["Budget", "Fused", "fuse", "fuse_regions", "interpret"]
