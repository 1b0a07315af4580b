"""Rewrites of a plan's steps (:mod:`grurt.tensor_plan`), once per plan, when every shape is known.

:func:`optimize` takes the steps ``(run, ctx, input slots, [(output index, slot)], slots to empty
after it, node)`` and what the planner knows of each slot (a :class:`~grurt.ops.Value`), and
returns fewer or cheaper steps computing the same outputs:

* **a separable convolution as one**: a Conv (grouped: depthwise) read only by a 1x1 Conv of one
  group is one Conv of the combined weights (1x1 weights @ grouped weights, per group, in float64,
  biases carried through) when that costs at most ``SEPARABLE_SLACK`` more multiply-adds than the
  pair (at one frame, one call instead of two; DeepFilterNet's first DF conv, 2 groups of 1 input
  channel, is cheaper combined at any length). The sums' order changes (float32 rounding only);
* **a Conv and its activation as one step**: a Conv or ConvTranspose on the C kernel (``_conv2d.h``) whose
  output only a Relu, Sigmoid or Tanh reads applies it itself (the same bits for Relu; the kernels' sigmoid and
  tanh, within 3e-7 of the elementwise ops'). One step, and one pass over the output fewer;
* **a weighted sum as one product**: ``ReduceSum(Mul(x, w), axis)`` over the one axis before
  the last, ``x`` (N, T, C) and ``w`` (N, T, 1) (attention pooling: ``(out * weights).sum(1)``),
  is the batched matrix product (N, 1, T) @ (N, T, C): one call instead of two, without the
  (N, T, C) product in between. The sum's order changes (float32 rounding only: ~1e-7);
* **elementwise ops in place**: Relu, Sigmoid, Tanh, and Add/Sub/Mul of same-shaped float
  tensors write their result into an input that dies at that step and that the plan owns: an
  array an op made (a Conv's, a MatMul's, ...), or a view of one made by Reshape, Transpose,
  Squeeze, Unsqueeze or Flatten from an input that died there. No allocation, the same bits:
  each in-place run makes the op's own calls with ``out=``.

A rewritten step names what it does in its node (``describe`` shows it; errors name the nodes).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .ops import FLOAT, Value
from .ops.conv import ACTIVATIONS
from .tensor_graph import TensorNode

#: Ops whose outputs are arrays of their own (never an input, a constant or a view of one).
FRESH = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid",
                   "Tanh", "Softmax", "Concat", "GRU", "Mul+ReduceSum"}
                  | {f"{conv}+{act}" for conv in ("Conv", "ConvTranspose") for act in ACTIVATIONS})
#: Ops whose output may be a view of their first input (owned when that input is owned and dies there).
#: Any other op's outputs may share memory with its inputs: those inputs are owned no more.
VIEWS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"})


def optimize(steps: Sequence[tuple], known: Dict[int, Value]) -> Tuple[tuple, ...]:
    """The steps rewritten (see the module's text); ``known``: the Value of each slot."""
    steps = _separable_convs(list(steps), known)
    steps = _conv_activations(steps)
    steps = _weighted_sums(steps, known)
    return tuple(_in_place(steps, known))


# ---- grouped Conv -> 1x1 Conv as one Conv ----

#: A separable pair becomes one Conv when that costs at most this many more multiply-adds than the
#: pair (about what one numpy call costs: measured on DeepFilterNet's convs at 1 and 20 frames).
SEPARABLE_SLACK = 200_000


def _separable_convs(steps: List[tuple], known) -> List[tuple]:
    readers = _readers(steps)
    producer = {slot: index for index, step in enumerate(steps) for _, slot in step[3]}
    dropped = set()
    for index, (_, ctx, ins, outs, frees, node) in enumerate(steps):
        mid = ins[0] if ins else None
        if node.op != "Conv" or mid not in producer or readers.get(mid) != [index] or mid not in frees:
            continue
        g = producer[mid]
        first = steps[g]
        if first[5].op != "Conv" or g in dropped:
            continue
        combined = _combined_conv(first, (ins, node), known)
        if combined is None:
            continue
        fused = TensorNode("Conv", (first[5].inputs[0],), node.outputs, dict(first[5].attrs, group=1),
                           f"{first[5].name}+{node.name}")
        frees_first = tuple(s for s in first[4] if s != mid)
        steps[g] = (first[0], combined, first[2][:1], outs, frees_first + tuple(s for s in frees if s != mid), fused)
        dropped.add(index)
    return [step for index, step in enumerate(steps) if index not in dropped]


def _combined_conv(first, second, known):
    """The ctx of one Conv computing Conv 1x1 (``second``) of Conv (``first``), both of constant weights,
    the second of one group, no padding nor stride, when it costs at most SEPARABLE_SLACK more
    multiply-adds than the two; else None."""
    from .ops import REGISTRY

    ins1, attrs1 = first[2], first[5].attrs
    ins2, node2 = second
    if len(ins1) < 2 or known[ins1[1]].const is None or len(ins2) < 2 or known[ins2[1]].const is None:
        return None
    attrs2 = node2.attrs
    p = known[ins2[1]].const                                     # (M, Cmid, 1, ...)
    if attrs2["group"] != 1 or any(k != 1 for k in p.shape[2:]) or any(attrs2["pads"] or ()) \
            or any(s != 1 for s in attrs2["strides"] or ()) or attrs2["auto_pad"] not in ("NOTSET", "VALID"):
        return None
    d = known[ins1[1]].const                                     # (Cmid, Cin/g, kernel...)
    x = known[ins1[0]]
    groups, cmid, m = attrs1["group"], d.shape[0], p.shape[0]
    positions, taps = int(np.prod(known[first[3][0][1]].shape[2:])), int(np.prod(d.shape[2:]))
    dense = m * x.shape[1] * taps * positions
    pair = cmid * d.shape[1] * taps * positions + m * cmid * positions
    if dense > pair + SEPARABLE_SLACK:
        return None
    p2 = p.reshape(m, cmid).astype(np.float64)
    d64 = d.astype(np.float64)
    w = np.zeros((m, x.shape[1]) + d.shape[2:])
    per_in, per_mid = x.shape[1] // groups, cmid // groups
    for k in range(groups):                 # mid channels of group k read input channels of group k
        block = d64[k * per_mid:(k + 1) * per_mid].reshape(per_mid, -1)
        w[:, k * per_in:(k + 1) * per_in] = (p2[:, k * per_mid:(k + 1) * per_mid] @ block).reshape(
            (m, per_in) + d.shape[2:])
    bias = np.zeros(m)
    if len(ins1) > 2 and ins1[2]:
        bias += p2 @ known[ins1[2]].const.astype(np.float64)
    if len(ins2) > 2 and ins2[2]:
        bias += known[ins2[2]].const
    w, bias = w.astype(np.float32), bias.astype(np.float32)
    op = REGISTRY["Conv"]
    return op.prepare(dict(attrs1, group=1), [x, Value(w.shape, w.dtype, w), Value(bias.shape, bias.dtype, bias)])


# ---- Conv -> Relu as one step ----

def _conv_activations(steps: List[tuple]) -> List[tuple]:
    """A Conv or ConvTranspose on the C kernel whose output only an activation of ``conv.ACTIVATIONS`` reads:
    one step, the kernel applying the activation to each block of outputs while it is in cache."""
    readers = _readers(steps)
    producer = {slot: index for index, step in enumerate(steps) for _, slot in step[3]}
    dropped = set()
    for index, (_, _, ins, outs, frees, node) in enumerate(steps):
        mid = ins[0] if ins else None
        if node.op not in ACTIVATIONS or mid not in producer or readers.get(mid) != [index] or mid not in frees:
            continue
        g = producer[mid]
        run, ctx, conv_ins, conv_outs, conv_frees, conv = steps[g]
        if conv.op not in ("Conv", "ConvTranspose") or len(conv_outs) != 1 or g in dropped:
            continue
        fused = ctx.fused(node.op)
        if fused is None:
            continue
        steps[g] = (run, fused, conv_ins, outs, conv_frees + tuple(s for s in frees if s != mid),
                    TensorNode(f"{conv.op}+{node.op}", conv.inputs, node.outputs, conv.attrs,
                               f"{conv.name}+{node.name}"))
        dropped.add(index)
    return [step for index, step in enumerate(steps) if index not in dropped]


# ---- ReduceSum(Mul(x, w)) -> matmul ----

def _weighted_sums(steps: List[tuple], known) -> List[tuple]:
    readers = _readers(steps)
    producer = {slot: index for index, step in enumerate(steps) for _, slot in step[3]}
    dropped = set()
    for index, (_, ctx, ins, outs, frees, node) in enumerate(steps):
        if node.op != "ReduceSum" or len(outs) != 1 or not ins or ins[0] not in producer:
            continue
        product = ins[0]
        m = producer[product]
        if steps[m][5].op != "Mul" or readers.get(product) != [index] or product not in frees:   # read here only
            continue
        x, w = steps[m][2]
        order = _weighted_sum_order(known[x].shape, known[w].shape, known[outs[0][1]].shape, ins, known, node)
        if order is None:
            continue
        if order == "wx":
            x, w = w, x
        out_shape = known[outs[0][1]].shape
        fused = TensorNode(f"{steps[m][5].op}+ReduceSum", (steps[m][5].inputs[0], steps[m][5].inputs[1]),
                           node.outputs, {}, f"{steps[m][5].name}+{node.name}")
        mul_frees = tuple(s for s in steps[m][4] if s != product)
        own_frees = tuple(s for s in frees if s != product)
        # at the Mul's place: x and w are alive there; the sum's frees (its unread output) go along
        steps[m] = (_weighted_sum, out_shape, (x, w), outs, mul_frees + own_frees, fused)
        dropped.add(index)
    return [step for index, step in enumerate(steps) if index not in dropped]


def _weighted_sum_order(x, w, out, ins, known, node):
    """'xw' or 'wx' when the sum is over axis 1 of (N, T, C) * (N, T, 1) (in that order or the other),
    float, else None."""
    product = known[ins[0]]
    if len(product.shape) != 3 or product.dtype != FLOAT or _axes(node, ins, known) != (1,):
        return None
    n, t, c = product = product.shape
    if out not in ((n, c), (n, 1, c)):
        return None
    if tuple(x) == product and tuple(w) == (n, t, 1):
        return "xw"
    if tuple(w) == product and tuple(x) == (n, t, 1):
        return "wx"
    return None


def _axes(node, ins, known):
    """ReduceSum's axes, normalized, when they are known (attribute or constant input); else None."""
    if node.attrs.get("noop_with_empty_axes"):
        return None
    if len(ins) > 1 and ins[1]:
        const = known[ins[1]].const
        if const is None:
            return None
        axes = tuple(int(a) for a in np.ravel(const))
    else:
        axes = node.attrs.get("axes")
    if not axes:
        return None
    rank = len(known[ins[0]].shape)
    return tuple(sorted(a % rank for a in axes))


def _weighted_sum(out_shape, inputs):
    x, w = inputs
    return [np.matmul(w.transpose(0, 2, 1), x).reshape(out_shape)]


# ---- elementwise ops in place ----

def _sigmoid_in_place(x):
    """ops.elementwise's Sigmoid, its calls writing into ``x``."""
    np.negative(x, out=x)
    np.minimum(x, np.float32(88), out=x)
    np.exp(x, out=x)
    x += np.float32(1)
    return np.reciprocal(x, out=x)


_UNARY = {"Relu": lambda x: np.maximum(x, np.float32(0), out=x), "Sigmoid": _sigmoid_in_place,
          "Tanh": lambda x: np.tanh(x, out=x)}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}


def _unary_run(fn, inputs):
    return [fn(inputs[0])]


def _binary_run(ctx, inputs):
    ufunc, into = ctx
    return [ufunc(inputs[0], inputs[1], out=inputs[into])]


def _in_place(steps: List[tuple], known) -> List[tuple]:
    owned = set()                     # slots holding arrays no other live slot or constant shares memory with
    result = []
    for run, ctx, ins, outs, frees, node in steps:
        op = node.op
        dying = {s for s in frees if s in owned}
        if op in _UNARY and ins[0] in dying and known[ins[0]].dtype == FLOAT:
            run, ctx = _unary_run, _UNARY[op]
            node = _renamed(node, f"{op} in place")
        elif op in _BINARY and len(ins) == 2 and ins[0] != ins[1]:
            out_value = known[outs[0][1]]
            into = next((k for k, s in enumerate(ins) if s in dying and known[s].shape == out_value.shape
                         and known[s].dtype == FLOAT == out_value.dtype), None)
            if into is not None and all(known[s].dtype == FLOAT for s in ins):
                run, ctx = _binary_run, (_BINARY[op], into)
                node = _renamed(node, f"{op} in place")
        result.append((run, ctx, ins, outs, frees, node))
        if op in FRESH or (op == "Einsum" and getattr(ctx, "pairs", None)) or (op in VIEWS and ins[0] in dying):
            owned.update(slot for _, slot in outs)
        else:       # its outputs may share memory with its inputs: neither is written in place from now on
            owned.difference_update(ins)
        owned.difference_update(frees)
    return result


def _renamed(node: TensorNode, op: str) -> TensorNode:
    return TensorNode(op, node.inputs, node.outputs, node.attrs, node.name)


def _readers(steps) -> Dict[int, List[int]]:
    readers: Dict[int, List[int]] = {}
    for index, step in enumerate(steps):
        for slot in dict.fromkeys(step[2]):
            readers.setdefault(slot, []).append(index)
    return readers
