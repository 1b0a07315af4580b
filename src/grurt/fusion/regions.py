"""The fusion pass on parts of a graph: the regions of a general TensorGraph that grurt's fused layers
cover, each rewritten into ``grurt.Chain`` nodes (docs/architecture-tensor-graph.md, "Step 3: regions").

:func:`grurt.fusion.fuse` takes a whole graph or refuses it. A graph with one op beyond the fused layers
(a softmax over time, an Einsum, a 2-D convolution) would keep its GRUs as ONNX ``GRU`` nodes with the
exporter's wiring around them (Transposes, Squeezes, the Shape arithmetic of a zero h0, Slices of a
state input). :func:`fuse_regions` finds the regions around the GRU nodes that the interpreter
recognizes, cuts each out as a TensorGraph of its own and fuses that:

1. **Shapes.** A node a plan folds (Shape, Size, and what reads constants only) is *static*. What a region
   reads of the rest of the graph is found when first asked: a static tensor computed from constants alone is
   computed once (a constant of the region); a graph input has its declared dims; the dims of another tensor come
   from walking the graph (shapes inferred, constants folded) at a base size of its dim parameters (the caller's:
   ``from_torch`` gives its example's; else probe sizes) and again with each parameter changed alone: an axis is a
   fixed size, a dim parameter of the graph (it follows one exactly), or a parameter of its own (it follows them
   otherwise: T - 2, say), shared by the axes that follow them alike.
2. **Regions.** The nodes that compute from the inputs and whose op may be fused (:data:`REGION_OPS`:
   the GRU and data movement) are joined by the tensors they pass; each connected set holding a GRU is
   a region. Static tensors it reads come along: as constants when computed from constants alone, else as
   copies of the nodes computing them (the graph keeps its own).
3. **Fusion.** A region's sub-graph (its inputs: the tensors it reads from outside; its outputs: the
   tensors read outside it or given by the graph) is interpreted at two probe sizes
   (:func:`grurt.fusion.interpret`), which must mean the same layers. A node the interpreter refuses first splits
   the region before it (the tensors it reads from the region stop joining it: what it refused may be what it
   reads, a GRU fed by a repeated state), then, refused again, leaves it; the producer of an output the
   interpreter refuses or the boundary cannot give leaves it too; the rest is tried again. The part of a region
   that a path leaving it comes back to is split off first (fused, the region would run before and after the
   path). A region that fails otherwise (its meaning depends on the sizes; a GRU reads ``sequence_lens``) stays
   as it is.
4. **Boundary.** The fused layers are lowered (:func:`grurt.graph_lower.lower`: ``grurt.Chain`` nodes)
   and wired to the region's tensors by their element ids: each input the lowered nodes take, and each
   output the region gives, must be one tensor as it is, or through a Reshape and/or a Transpose, or slices
   of tensors along one axis joined by a Concat (the rows of a state (L·D, B, H)): layout nodes found at the
   first probe size and checked by running them on the ids of the second. The region is rewritten only when it
   has more nodes than what replaces it (a GRU node alone never: the GRU op moves its layouts itself). A GRU and
   a chain of GRUs run the same kernels as the GRU nodes they replace: the outputs are the same bits.

The pass only rewrites what it proves equal; whatever it leaves runs as before.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._kernels import _memory_limit
from ..errors import GrurtError
from ..graph_lower import lower
from ..ops import BOOL, FLOAT, INT, REGISTRY, Value
from ..tensor_build import GraphBuilder
from ..tensor_graph import TensorGraph, TensorInput, TensorNode
from .driver import interpret
from .interpreter import Budget, _TooLarge

#: The ops a region may hold: the GRU and the ops that move data. Layers that compute (MatMul, Gemm,
#: activations, norms, convolutions, arithmetic) stay general ops: the planner already runs them on the
#: kernels a grurt.Chain would (packed Gemms with their activation, convolutions), where a chain would not
#: give the same bits (a Dense of fewer than 32 outputs runs on BLAS in a plan, on the panels in a chain).
REGION_OPS = frozenset({"GRU", "Identity", "Dropout", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                        "Slice", "Concat", "Split", "Gather", "Expand", "Tile", "Cast"})
#: Ops whose outputs depend on their inputs' shapes only (folded from the shapes, as the planner does).
_SHAPE_OPS = ("Shape", "Size")
_DTYPE_NAMES = {FLOAT: "float32", INT: "int64", BOOL: "bool"}
_INPUT_DTYPES = {"float32": FLOAT, "int64": INT, "bool": BOOL}
_NUMPY_ERRORS = (ValueError, IndexError, TypeError, ArithmeticError, MemoryError)
#: The most dim parameters whose shapes are walked one by one (a walk each).
MAX_PARAMS = 16
#: The most layout steps between a tensor and what the boundary makes of it.
_MAX_RANK = 5


def fuse_regions(graph: TensorGraph, sizes: Optional[Dict[str, int]] = None) -> Tuple[TensorGraph, list]:
    """(``graph`` with the regions the fused layers cover as ``grurt.Chain`` nodes, the names of the nodes of
    each region fused). ``sizes``: dim parameter -> a size at which the graph runs (default: probe sizes).
    A graph without GRU nodes, or whose shapes cannot be followed, is returned as it is."""
    if not any(node.op == "GRU" for node in graph.nodes):
        return graph, []
    return _Pass(graph).run(sizes)


# ---- 1. shapes ----

class _Shapes:
    """What the regions read of the rest of the graph, walked when first asked: the values of static tensors computed
    from constants alone, and the dims of tensors (a graph input's as declared; others walked at the base sizes and
    with each parameter changed)."""

    def __init__(self, graph, sizes, needed, constant_nodes):
        self.graph, self.needed, self.constant_nodes = graph, needed, constant_nodes
        self.inputs = {t.name: t for t in graph.inputs}
        params = list(dict.fromkeys(d for t in graph.inputs for d in t.dims if isinstance(d, str)))
        self.sizes = dict(sizes) if sizes else {p: 3 + i for i, p in enumerate(params)}
        self.complete = set(self.sizes) == set(params)
        self.constants = None     # static tensor computed from constants alone -> Value
        self.walks = None         # (Values at the base sizes, [(parameter, its sizes, Values)]), or () when failed
        self.fresh = {}           # how an axis follows the parameters -> the parameter it becomes

    def constant(self, name) -> Optional[np.ndarray]:
        """The value of a static tensor computed from constants alone (None when it cannot be computed)."""
        if self.constants is None:
            self.constants = (_walk(self.graph, self.sizes, self.constant_nodes) if self.complete else None) or {}
        value = self.constants.get(name)
        return None if value is None else value.const

    def _walked(self):
        if self.walks is None:
            self.walks = ()
            base = _walk(self.graph, self.sizes, self.needed) if self.complete else None
            read = {name for index in self.needed for name in self.graph.nodes[index].inputs}
            varied = list(dict.fromkeys(d for t in self.graph.inputs if t.name in read
                                        for d in t.dims if isinstance(d, str)))
            if base is None or len(varied) > MAX_PARAMS:
                return self.walks
            variants = []
            for param in varied:
                for size in (self.sizes[param] + 1, 2 * self.sizes[param]):
                    changed = dict(self.sizes, **{param: size})
                    walked = _walk(self.graph, changed, self.needed, base)
                    if walked is not None:
                        variants.append((param, changed, walked))
                        break
                else:
                    return self.walks     # a parameter that cannot change alone: which axes follow it is not known
            self.walks = (base, variants)
        return self.walks

    def dtype(self, name) -> Optional[str]:
        if name in self.inputs:
            return self.inputs[name].dtype
        walks = self._walked()
        return _DTYPE_NAMES.get(walks[0][name].dtype) if walks else None

    def dims(self, name) -> Optional[tuple]:
        """The dims of tensor ``name``: a fixed size, a parameter of the graph, or a parameter of its own."""
        if name in self.inputs:
            return self.inputs[name].dims
        walks = self._walked()
        if not walks:
            return None
        base, variants = walks
        shape = base[name].shape
        if any(len(walk[name].shape) != len(shape) for _, _, walk in variants):
            return None
        dims = []
        for axis, size in enumerate(shape):
            moves = tuple(walk[name].shape[axis] for _, _, walk in variants)
            follows = [(param, changed) for (param, changed, _), moved in zip(variants, moves) if moved != size]
            if not follows:
                dims.append(size)
            elif len(follows) == 1 and size == self.sizes[follows[0][0]] \
                    and moves[[p for p, _, _ in variants].index(follows[0][0])] == follows[0][1][follows[0][0]]:
                dims.append(follows[0][0])
            else:
                dims.append(self.fresh.setdefault((size, moves), f"{name}:{axis}"))
        return tuple(dims)


def _walk(graph, sizes, needed, base=None) -> Optional[dict]:
    """The :class:`~grurt.ops.Value` of what the nodes ``needed`` (indices, with every node they read from) give
    with the dim parameters at ``sizes`` (the arrays of those a plan folds), or None when they cannot be planned
    there. ``base``: the values at other sizes, of which only what the inputs whose sizes differ reach is computed
    again. Folded values are counted against the memory limit before they are computed, as the planner counts
    them."""
    limit, folded = _memory_limit(), 0
    values = dict(base) if base is not None else {name: Value(array.shape, array.dtype, array)
                                                  for name, array in graph.constants.items()}
    changed = set()
    for t in graph.inputs:
        value = Value(tuple(sizes[d] if isinstance(d, str) else d for d in t.dims), _INPUT_DTYPES[t.dtype])
        if base is None or value.shape != base[t.name].shape:
            values[t.name] = value
            changed.add(t.name)
    try:
        for index, node in enumerate(graph.nodes):
            if index not in needed or base is not None and changed.isdisjoint(node.inputs):
                continue
            op = REGISTRY[node.op]
            args = [values[name] if name else None for name in node.inputs]
            if any(position < len(args) and args[position] is not None and args[position].const is None
                   for position in op.const_inputs):
                return None
            outputs = [Value(tuple(int(d) for d in shape), np.dtype(dtype))
                       for shape, dtype in op.infer(node.attrs, args)[:len(node.outputs)]]
            if any(d < 0 for value in outputs for d in value.shape):
                return None
            if op.name in _SHAPE_OPS or all(a is None or a.const is not None for a in args):
                folded += sum(value.size * value.dtype.itemsize for value in outputs)
                if folded > limit:
                    return None
                ctx = op.prepare(node.attrs, args) if op.prepare is not None else node.attrs
                arrays = [None if a is None else a.const if a.const is not None
                          else np.broadcast_to(np.zeros((), a.dtype), a.shape) for a in args]
                results = op.run(ctx, arrays)
                outputs = [Value(value.shape, value.dtype, np.asarray(result))
                           for value, result in zip(outputs, results)]
            for name, value in zip(node.outputs, outputs):
                if name:
                    values[name] = value
                    changed.add(name)
    except (GrurtError,) + _NUMPY_ERRORS:
        return None
    return values


# ---- 2, 3. regions and their fusion ----

class _Refused(Exception):
    """A region cannot be fused as it is: ``nodes`` (indices) leave it, the tensors ``edges`` ((tensor, reader
    index) pairs) no longer join its nodes, and the rest is tried again; neither: the region stays as it is."""

    def __init__(self, nodes=frozenset(), edges=frozenset()):
        super().__init__()
        self.nodes, self.edges = frozenset(nodes), frozenset(edges)


class _Pass:
    """One run of the pass over a graph: its regions, tried, split and rewritten (see the module's text)."""

    def __init__(self, graph):
        self.graph = graph
        self.nodes = graph.nodes
        self.producer = {name: index for index, node in enumerate(self.nodes) for name in node.outputs if name}
        self.readers = defaultdict(list)
        for index, node in enumerate(self.nodes):
            for name in dict.fromkeys(node.inputs):
                if name:
                    self.readers[name].append(index)
        # the nodes a plan folds (Shape, Size, and what reads constants only) and the tensors they give; those of
        # them that read a shape (their values may change with the sizes)
        self.static, self.known, self.sized = set(), set(graph.constants), set()
        for index, node in enumerate(self.nodes):
            if node.op in _SHAPE_OPS or all(not name or name in self.known for name in node.inputs):
                self.static.add(index)
                self.known.update(node.outputs)
                if node.op in _SHAPE_OPS or not self.sized.isdisjoint(node.inputs):
                    self.sized.update(node.outputs)
        self.budget = Budget()        # element ids of every interpretation of the pass (grurt.limits.MAX_IDS)
        self.cut = set()              # (tensor, reader): a tensor that no longer joins its reader to a region
        self.outputs = set(graph.outputs)
        self.taken = {t.name for t in graph.inputs} | set(graph.constants) | set(self.producer)

    def run(self, sizes):
        candidates = {index for index, node in enumerate(self.nodes)
                      if index not in self.static and node.op in REGION_OPS}
        queue = self._components(candidates)
        if queue:
            needed = set().union(*queue)
            needed |= self._reach(needed, False)
            constant_nodes = {index for index in needed & self.static
                              if self.sized.isdisjoint(self.nodes[index].outputs)}
            self.shapes = _Shapes(self.graph, sizes, needed, constant_nodes)
        replacements = []
        while queue:
            region = queue.pop(0)
            try:
                replacements.append(self._fuse(region))
            except _Refused as refused:
                self.cut |= refused.edges
                if refused.nodes or refused.edges:
                    queue += self._components(region - refused.nodes)
            except _TooLarge:                      # the pass's budget is spent: the rest stays as it is
                break
        if not replacements:
            return self.graph, []
        removed = set().union(*(r.region for r in replacements))
        nodes = [node for index, node in enumerate(self.nodes) if index not in removed]
        constants = dict(self.graph.constants)
        for replacement in replacements:
            nodes += replacement.nodes
            constants.update(replacement.constants)
        fused = TensorGraph(self.graph.inputs, nodes, self.graph.outputs, constants)
        names = [tuple(self.nodes[index].name or self.nodes[index].op for index in sorted(r.region))
                 for r in replacements]
        return fused, names

    def _components(self, indices) -> List[set]:
        """The connected sets of ``indices`` (joined by the tensors they pass) holding a GRU node, in order."""
        indices, found = set(indices), []
        for start in sorted(indices):
            if start not in indices:
                continue
            component, stack = set(), [start]
            while stack:
                index = stack.pop()
                if index in component:
                    continue
                component.add(index)
                node = self.nodes[index]
                linked = [self.producer.get(name) for name in node.inputs if name and (name, index) not in self.cut]
                linked += [reader for name in node.outputs if name for reader in self.readers[name]
                           if (name, reader) not in self.cut]
                stack += [other for other in linked if other in indices and other not in component]
            indices -= component
            if any(self.nodes[index].op == "GRU" for index in component):
                found.append(component)
        return found

    def _fuse(self, region) -> "_Replacement":
        if len(region) < 2:           # a GRU node alone: its grurt.Chain would need as many nodes or more
            raise _Refused()
        self._convex(region)
        sub, copies = self._subgraph(region)
        results = self._interpret(sub, region, copies)
        try:
            boundary = _Boundary(self, sub, region, results)
        except GrurtError:            # layers the lowering does not take
            raise _Refused() from None
        return boundary.replacement()

    def _convex(self, region):
        """_Refused splitting off the region's nodes a path leaving it comes back to (through a node that computes):
        once fused, the region would have to run before and after that node. The nodes are in a topological order:
        such a path runs between the region's first and last node."""
        first, last = min(region), max(region)
        after = self._reach(region, True, last)
        through = {index for index in after & self._reach(region, False, first) if index not in self.static}
        if through:
            later = self._reach(through, True, last) & region
            raise _Refused(edges={(name, index) for index in later for name in self.nodes[index].inputs
                                  if self.producer.get(name) in region - later})

    def _reach(self, start, forward, bound=None):
        """The nodes reachable from ``start`` (forward: reading what it gives, up to node ``bound``; else: giving what
        it reads, from node ``bound`` on), but ``start``'s own."""
        seen, stack = set(), list(start)
        while stack:
            node = self.nodes[stack.pop()]
            if forward:
                nxt = [r for name in node.outputs if name for r in self.readers[name] if bound is None or r <= bound]
            else:
                nxt = [self.producer[name] for name in node.inputs
                       if name in self.producer and (bound is None or self.producer[name] >= bound)]
            for index in nxt:
                if index not in seen:
                    seen.add(index)
                    stack.append(index)
        return seen - set(start)

    def _subgraph(self, region):
        """(the region as a TensorGraph, the indices of the static nodes copied into it)."""
        shapes, constants, inputs, copies = self.shapes, {}, {}, set()
        pending = [name for index in sorted(region) for name in self.nodes[index].inputs if name]
        while pending:
            name = pending.pop(0)
            index = self.producer.get(name)
            if name in constants or name in inputs or index in region or index in copies:
                continue
            if name in self.graph.constants:
                constants[name] = self.graph.constants[name]
            elif name in self.known and name not in self.sized:
                constants[name] = shapes.constant(name)
                if constants[name] is None:
                    raise _Refused()
            elif index is not None and index in self.static:
                copies.add(index)
                pending += [n for n in self.nodes[index].inputs if n]
            else:
                dims, dtype = shapes.dims(name), shapes.dtype(name)
                if dims is None or dtype is None:
                    raise _Refused()
                inputs[name] = TensorInput(name, dtype, dims)
        outputs = self._given(region)
        nodes = [self.nodes[index] for index in sorted(region | copies)]
        try:
            return TensorGraph(tuple(inputs.values()), nodes, outputs, constants), copies
        except GrurtError:
            raise _Refused() from None

    def _given(self, region) -> list:
        """The tensors the region gives that are needed outside it: the graph's outputs, and what a node outside it
        that computes from the inputs reads, or a static node that such a node (or an output) needs."""
        statics, stack = set(), [index for index in region]
        while stack:                  # the static nodes that read (through static nodes) what the region gives
            for name in self.nodes[stack.pop()].outputs:
                for reader in self.readers[name] if name else ():
                    if reader in self.static and reader not in statics:
                        statics.add(reader)
                        stack.append(reader)
        live = {}                     # static node -> whether something outside the region needs it

        def needs(reader):
            return reader not in region and (reader not in self.static or live[reader])

        for index in sorted(statics, reverse=True):     # readers after the nodes they read: theirs known first
            live[index] = any(name in self.outputs or any(needs(r) for r in self.readers[name])
                              for name in self.nodes[index].outputs if name)
        return [name for index in sorted(region) for name in self.nodes[index].outputs
                if name and (name in self.outputs or any(needs(r) for r in self.readers[name]))]

    def _interpret(self, sub, region, copies):
        """The fused result of ``sub`` at probe sizes 0 and 1 (one when its dims are fixed), the same layers."""
        dynamic = any(isinstance(d, str) for tensor_input in sub.inputs for d in tensor_input.dims)
        try:
            results = [interpret(sub, probe=probe, budget=self.budget) for probe in ((0, 1) if dynamic else (0,))]
        except _TooLarge:
            raise
        except GrurtError as exc:
            raise self._blamed(exc, region, copies) from None
        if len(results) == 2 and results[0].signature() != results[1].signature():
            raise _Refused()
        if results[0].lengths_input is not None:
            raise _Refused()
        return results

    def _blamed(self, exc, region, copies) -> _Refused:
        """What an error of the interpreter puts out of the region: the node it refused, once it reads nothing
        from the region (before, the region is split before it: what it reads may be what it refused); the
        producer of the output it refused; the region's readers of a static copy it refused; else nothing."""
        node, output = getattr(exc, "node", None), getattr(exc, "output", None)
        if output is not None:
            return _Refused({self.producer[output]})
        if node is None:
            return _Refused()
        index = self.producer.get(next((name for name in node.outputs if name), None))
        if index in region:
            edges = {(name, index) for name in node.inputs if self.producer.get(name) in region} - self.cut
            return _Refused(edges=edges) if edges else _Refused({index})
        if index in copies:      # the region's nodes reading (through other copies) what the copy gives
            tensors, blamed, stack = set(), set(), [index]
            while stack:
                for name in self.nodes[stack.pop()].outputs:
                    tensors.add(name)
                    for reader in self.readers[name]:
                        if reader in region:
                            blamed.add(reader)
                        elif reader in copies:
                            stack.append(reader)
            return _Refused(blamed)
        return _Refused()


# ---- 4. the boundary ----

class _Replacement:
    def __init__(self, region, nodes, constants):
        self.region, self.nodes, self.constants = region, nodes, constants


class _Boundary:
    """The lowered fused layers of a region, wired to the region's inputs and outputs by layout nodes (built with a
    :class:`~grurt.tensor_build.GraphBuilder` whose names avoid the graph's and the other regions')."""

    def __init__(self, owner: _Pass, sub: TensorGraph, region: set, results):
        self.owner, self.sub, self.region, self.results = owner, sub, region, results
        first = results[0]
        states = frozenset(first.state_inputs) if first.chain else frozenset()
        self.lowered = lower(first.graph, states=states, return_state=first.chain)
        self.g = GraphBuilder(owner.taken)
        grus = [owner.nodes[index] for index in sorted(region) if owner.nodes[index].op == "GRU"]
        #: the names the region's new nodes and tensors are given from: its GRU nodes'
        self.label = "+".join(node.name or node.outputs[0] for node in grus)
        self.base = grus[0].name or grus[0].outputs[0]

    def replacement(self) -> _Replacement:
        lowered, first, g = self.lowered, self.results[0], self.g
        state_of = {name: p for p, name in lowered.states.items()}
        rename = {}
        for tensor_input in lowered.graph.inputs:        # what the lowered nodes take, from the region's inputs
            name = tensor_input.name
            if name in state_of:
                p = state_of[name]
                source, targets = first.state_inputs[p][0], [r.state_inputs[p][1] for r in self.results]
            else:
                source, targets = name, [r.taken[name] for r in self.results]
            found = _layout(targets, [[(source, r.inputs[source])] for r in self.results])
            if found is None:
                raise _Refused({index for index in self.owner.readers[source] if index in self.region})
            rename[name] = self._emit(found, {}, g.fresh(f"{source}/{name}") if found[1] else None)
        finals = {name: p for p, name in enumerate(lowered.finals)}
        given = [[(name, r.states[finals[name]] if name in finals else r.returned[name])
                  for name in lowered.graph.outputs] for r in self.results]
        outputs = {}
        for name in self.sub.outputs:                    # what the region gives, from the lowered outputs
            found = _layout([r.outputs[name] for r in self.results], given)
            if found is None:
                raise _Refused({self.owner.producer[name]})
            outputs[name] = found
            if not found[1] and found[0] not in rename:  # the lowered tensor itself: it takes the output's name
                rename[found[0]] = name
        read = {n for node in lowered.graph.nodes for n in node.inputs}
        read |= {piece for found in outputs.values() for piece in _sources(found)}
        for name, array in lowered.graph.constants.items():
            rename[name] = g.const(array, f"{self.base}/{name}", array.dtype)
        chains = sum(node.op == "grurt.Chain" for node in lowered.graph.nodes)
        for node in lowered.graph.nodes:
            for k, name in enumerate(node.outputs):      # a tensor nobody reads is not kept (but a node's first)
                if name and name not in rename:
                    rename[name] = g.fresh(f"{self.base}/{name}") if name in read or k == 0 else ""
            label = node.name
            if node.op == "grurt.Chain":                 # named after the GRU nodes it runs
                label = self.label if chains == 1 else f"{self.label}:{sum(n[0] == 'grurt.Chain' for n in g.nodes) + 1}"
            g.add(node.op, [rename.get(n, n) for n in node.inputs], node.attrs, label,
                  names=[rename[n] if n else "" for n in node.outputs])
        for name, found in outputs.items():
            if self._emit(found, rename, name) != name:  # given twice as it is: a copy
                g.add("Identity", [rename[found[0]]], {}, f"{name}/Identity", names=[name])
        nodes = _live([TensorNode(op, tuple(ins), tuple(outs), attrs, label)
                       for op, ins, outs, attrs, label in g.nodes], self.sub.outputs)
        if len(nodes) >= len(self.region):     # the layouts would cost more steps than the fused layers save
            raise _Refused()
        self.owner.taken = g.taken
        used = {name for node in nodes for name in node.inputs}
        return _Replacement(self.region, nodes, {k: v for k, v in g.constants.items() if k in used})

    def _emit(self, found, names, target) -> str:
        """The layout nodes of ``found`` (:func:`_layout`) on the tensors ``names`` gives (a source's own name
        when absent), the last one giving ``target`` (a fresh name when None); the name of what they give (the
        source's when there are no steps)."""
        source, ops = found
        g, current = self.g, names.get(source, source)
        for k, (op, args) in enumerate(ops):
            base = f"{target or current}/{op}"
            out = [target] if target is not None and k == len(ops) - 1 else None
            if op == "Reshape":
                current = g.add("Reshape", [current, g.ints(args)], {}, base, names=out)
            elif op == "Transpose":
                current = g.add("Transpose", [current], {"perm": tuple(args)}, base, names=out)
            else:                                        # slices along one axis, side by side
                parts = [names.get(piece, piece) if whole else
                         g.add("Slice", [names.get(piece, piece), g.ints((begin,)), g.ints((end,)), g.ints((axis,))],
                               {}, f"{target or current}/Slice", names=out if len(args) == 1 else None)
                         for piece, (begin, end, axis, whole) in args]
                current = parts[0] if len(parts) == 1 else g.add("Concat", parts, {"axis": args[0][1][2]}, base,
                                                                  names=out)
        return current


def _live(nodes, outputs) -> list:
    """The ``nodes`` that ``outputs`` need."""
    producer = {name: node for node in nodes for name in node.outputs if name}
    needed, stack = set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack += [name for name in node.inputs if name]
    return [node for node in nodes if id(node) in needed]


def _sources(found):
    """The tensors layout steps read."""
    source, ops = found
    return [source] + [piece for op, args in ops if op == "Concat" for piece, _ in args]


def _layout(targets: Sequence[np.ndarray], sources: Sequence[list]):
    """How ``targets[k]`` (ids, at probe size k) is made of the tensors ``sources[k]`` ((name, ids) pairs): (the
    source read, [(op, args)]) with ops Reshape (a shape of sizes, 0 for a dim copied, -1 for one inferred),
    Transpose (perm) and Concat ([(source, (begin, end, axis, whole))]: slices of sources along one axis); the
    same at every probe size, or None."""
    target, given = targets[0], sources[0]
    found = _arrangement(target, given, targets[1] if len(targets) > 1 else None,
                         sources[1] if len(sources) > 1 else None)
    if found is None:
        found = _pieces(target, given)
    if found is None:
        return None
    for k in range(1, len(targets)):      # the same steps at the other probe size
        if not np.array_equal(_apply(found, dict(sources[k])), targets[k]):
            return None
    return found


def _locate(target, given):
    """(index of the source of each element of ``target``, its flat position there), or None if some element
    is in none of them."""
    ids = np.concatenate([ids.ravel() for _, ids in given]) if given else np.zeros(0, np.int64)
    which = np.concatenate([np.full(ids.size, k) for k, (_, ids) in enumerate(given)]) if given else ids
    where = np.concatenate([np.arange(ids.size) for _, ids in given]) if given else ids
    order = np.argsort(ids, kind="stable")
    at = np.searchsorted(ids[order], target.ravel())
    if ids.size == 0 or (at >= ids.size).any() or not np.array_equal(ids[order][np.minimum(at, ids.size - 1)],
                                                                    target.ravel()):
        return None
    return which[order][at].reshape(target.shape), where[order][at].reshape(target.shape)


def _arrangement(target, given, other_target, other_given):
    """One whole source as ``target``: Reshape and/or Transpose of it."""
    located = _locate(target, given)
    if located is None or target.ndim > _MAX_RANK:
        return None
    which, where = located
    source = int(which.flat[0]) if which.size else 0
    name, ids = given[source]
    if (which != source).any() or ids.size != target.size:
        return None
    identity = tuple(range(target.ndim))
    for perm in itertools.permutations(identity):
        inverse = tuple(np.argsort(perm))
        if not np.array_equal(where.transpose(inverse).ravel(), np.arange(target.size)):
            continue
        shape = tuple(target.shape[i] for i in inverse)
        ops = []
        if shape != ids.shape:
            dims = _reshape_dims(shape, ids.shape, other_target, inverse, other_given, name)
            if dims is None:
                return None
            ops.append(("Reshape", dims))
        if perm != identity:
            ops.append(("Transpose", perm))
        return name, ops
    return None


def _reshape_dims(shape, source_shape, other_target, inverse, other_given, name):
    """The Reshape target of ``shape``: sizes, 0 where a dim that changes with the probe sizes is the source's
    at the same axis, -1 for one other such dim."""
    if other_target is None:
        return shape
    other_shape = tuple(other_target.shape[i] for i in inverse)
    other_source = dict(other_given)[name].shape
    dims, inferred = [], False
    for axis, (size, other) in enumerate(zip(shape, other_shape)):
        if size == other:
            dims.append(size)
        elif axis < len(source_shape) and source_shape[axis] == size and other_source[axis] == other:
            dims.append(0)
        elif not inferred:
            dims.append(-1)
            inferred = True
        else:
            return None
    return tuple(dims)


def _pieces(target, given):
    """``target`` as slices of sources along one axis, side by side (a Concat, or a Slice alone)."""
    located = _locate(target, given)
    if located is None:
        return None
    which, where = located
    for axis in range(target.ndim):
        pieces = []
        for j in range(target.shape[axis]):
            plane_which, plane_where = which.take(j, axis), where.take(j, axis)
            source = int(plane_which.flat[0])
            name, ids = given[source]
            if (plane_which != source).any() or ids.ndim != target.ndim or \
                    ids.shape[:axis] + ids.shape[axis + 1:] != target.shape[:axis] + target.shape[axis + 1:]:
                break
            row = np.unravel_index(int(plane_where.flat[0]), ids.shape)[axis]
            positions = np.arange(ids.size).reshape(ids.shape).take(row, axis)
            if not np.array_equal(plane_where, positions):
                break
            if pieces and pieces[-1][0] == name and pieces[-1][1][1] == row:
                begin = pieces[-1][1][0]
                pieces[-1] = (name, (begin, row + 1, axis, begin == 0 and row + 1 == ids.shape[axis]))
            else:
                pieces.append((name, (row, row + 1, axis, ids.shape[axis] == 1)))
        else:
            return pieces[0][0], [("Concat", pieces)]
    return None


def _apply(found, arrays: dict) -> np.ndarray:
    """The layout steps ``found`` run on id arrays (ONNX's semantics: a Reshape's 0 copies the input's dim)."""
    name, ops = found
    value = arrays[name]
    for op, args in ops:
        if op == "Reshape":
            value = value.reshape([value.shape[i] if d == 0 else d for i, d in enumerate(args)])
        elif op == "Transpose":
            value = value.transpose(args)
        else:
            value = np.concatenate([arrays[piece].take(range(begin, end), axis)
                                    for piece, (begin, end, axis, _) in args], args[0][1][2])
    return value
