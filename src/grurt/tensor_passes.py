"""Rewrites of a plan's steps (:mod:`grurt.tensor_plan`), once per plan, when every shape is known.

:func:`optimize` takes the steps ``(run, ctx, input slots, [(output index, slot)], slots to empty
after it, node)`` and what the planner knows of each slot (a :class:`~grurt.ops.Value`), and
returns fewer or cheaper steps computing the same outputs:

* **a separable convolution as one**: a Conv (grouped: depthwise) read only by a 1x1 Conv of one
  group is one Conv of the combined weights (1x1 weights @ grouped weights, per group, in float64,
  biases carried through) when that costs at most ``SEPARABLE_SLACK`` more multiply-adds than the
  pair (DeepFilterNet's first DF conv, 2 groups of 1 input channel, is cheaper combined at any length).
  The sums' order changes (float32 rounding only);
* **a Conv and its activation as one step**: a Conv or ConvTranspose on the C kernel (``_conv2d.h``) whose
  output only a Relu, Sigmoid or Tanh reads applies it itself (the same bits for Relu; the kernels' sigmoid and
  tanh, which the elementwise Sigmoid and Tanh compute too). One step, and one pass over the output fewer;
* **a causal conv on its history without the concatenation**: ``Concat(history, frames)`` along H read only by a
  Conv on the C kernel (unpadded, column stride 1) and by Slices of it along H (the next call's history) is gone: the
  Conv reads the history's rows then the frames' (``Conv2d.history``: the same bits), each Slice copies its rows from
  the two (DeepFilterNet's (5, 1) pathway conv: W10 at 20 frames, 15-30 µs of about 210; none measured at 1);
* **a grouped linear as one step**: an Einsum ``...gi,gih->...gh`` of a constant (G, I, H) weight
  (DeepFilterNet's GroupedLinearEinsum) is one call of ``_kernels.GroupedLinear`` (``_grouped.h``)
  instead of numpy's transposes and batched matmul, reading the input of the Reshapes in front of
  it, making the output of those after it, and applying the Relu, Sigmoid or Tanh that alone reads
  it (W10: 4 steps of 6 numpy calls each → 1 C call). The sums' order changes (float32 rounding only);
* **a weighted sum as one product**: ``ReduceSum(Mul(x, w), axis)`` over the one axis before
  the last, ``x`` (N, T, C) and ``w`` (N, T, 1) (attention pooling: ``(out * weights).sum(1)``),
  is the batched matrix product (N, 1, T) @ (N, T, C): one call instead of two, without the
  (N, T, C) product in between. The sum's order changes (float32 rounding only: ~1e-7);
* **attention as one step**: ``MatMul(softmax(s · MatMul(q, k)), v)`` (``s`` an optional Mul or Div
  by a scalar constant, the softmax over the last axis) is one call of ``_kernels.attention``, the
  transposes around it read as strides; followed by a mean over its queries, the second product
  becomes the softmax rows' mean times v;
* **a linear layer as one step**: ``Add(MatMul(x, W), c)``, W a constant matrix and c a constant
  row (how PyTorch and Keras write a Linear/Dense on a sequence), is one product with its bias;
* **Gemms of constant weights on packed panels**: the panel kernels of grurt's Dense layers
  (``_kernels.Linear``) instead of BLAS sgemm, the Gemms of one input (an attention's Q, K, V) as
  one product, and a ReduceMean over the rows of one as the Gemm of the mean, and a Relu, Sigmoid or
  Tanh that alone reads a packed Gemm's output applied by the kernel to each row. Sums change order
  (float32 rounding only);
* **elementwise ops in place**: Relu, Sigmoid, Tanh, and Add/Sub/Mul of same-shaped float
  tensors write their result into an input that dies at that step and that the plan owns: an
  array an op made (a Conv's, a MatMul's, ...), or a view of one made by Reshape, Transpose,
  Squeeze, Unsqueeze or Flatten from an input that died there. No allocation, the same bits as
  the op on its own: Sigmoid and Tanh are the kernels' activation (one C call) on a contiguous
  array, Relu too (numpy's maximum on a strided one), Add/Sub/Mul the op's numpy call with ``out=``.

A rewritten step names what it does in its node (``describe`` shows it; errors name the nodes).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from . import _kernels
from .ops import FLOAT, REGISTRY, Value
from .ops.conv import ACTIVATIONS
from .ops.recurrent import CALL
from .ops.linear import parse_einsum
from .tensor_graph import TensorNode

#: Ops whose outputs are arrays of their own (never an input, a constant or a view of one).
FRESH = frozenset({"Conv", "ConvTranspose", "MatMul", "MatMul+Add", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid",
                   "Tanh", "Softmax", "Concat", "GRU", "Mul+ReduceSum", "MatMul+Softmax+MatMul", "Gemm packed",
                   "ReduceMean+Gemm", "MatMul+Softmax+MatMul mean", "Einsum grouped"}
                  | {f"{op}+{act}" for op in ("Einsum grouped", "Gemm packed")
                     for act in ACTIVATIONS}
                  | {f"{conv}+{act}" for conv in ("Conv", "ConvTranspose", "Concat+Conv") for act in ACTIVATIONS}
                  | {"Concat+Conv", "Concat+Slice"})
#: Ops whose output may be a view of their first input (owned when that input is owned and dies there).
#: Any other op's outputs may share memory with its inputs: those inputs are owned no more.
VIEWS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"})


def optimize(steps: Sequence[tuple], known: Dict[int, Value]) -> Tuple[tuple, ...]:
    """The steps rewritten (see the module's text); ``known``: the Value of each slot."""
    steps = _separable_convs(list(steps), known)
    steps = _conv_activations(steps)
    steps = _conv_histories(steps, known)
    steps = _grouped_linears(steps, known)
    steps = _weighted_sums(steps, known)
    steps = _biased_matmuls(steps, known)
    steps = _attentions(steps, known)
    steps = _packed_gemms(steps, known)
    steps = _means_first(steps, known)
    steps = _attention_means(steps, known)
    steps = _linear_activations(steps)
    return tuple(_in_place(steps, known))


# ---- grouped Conv -> 1x1 Conv as one Conv ----

#: A separable pair becomes one Conv when that costs at most this many more multiply-adds than the
#: pair. It was 200K (a numpy call's cost) before the native executor made a step's call nearly free:
#: W10 at one frame then ran its four separable convs apart 2% faster (grurt.tensor_native).
SEPARABLE_SLACK = 0


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


# ---- Concat(history, frames) -> Conv, Slice: without the concatenation ----

def _conv_histories(steps: List[tuple], known) -> List[tuple]:
    """A Concat of two 4-D float tensors along axis 2 read only by Convs that ``Conv2d.history`` runs (the Concat's
    output their input 0 only) and by Slices of axis 2 alone (step 1): each Conv reads the two inputs' rows in turn,
    each Slice copies its rows from them, the Concat is gone."""
    readers = _readers(steps)
    dropped, moved = set(), set()
    for index, (_, axis, ins, outs, frees, node) in enumerate(steps):
        if node.op != "Concat" or len(ins) != 2 or len(outs) != 1 or axis != 2 or ins[0] == ins[1]:
            continue
        full = outs[0][1]
        value = known[full]
        if len(value.shape) != 4 or value.dtype != FLOAT or any(known[s].dtype != FLOAT for s in ins) \
                or not any(full in step[4] for step in steps):       # a graph output: kept
            continue
        hh = known[ins[0]].shape[2]
        rewrites = {}
        for r in readers.get(full, []):
            run, ctx, r_ins, r_outs, r_frees, r_node = steps[r]
            if r_node.op.split("+")[0] == "Conv" and r_ins[0] == full and full not in r_ins[1:] \
                    and getattr(ctx, "native", None) is not None and ctx.native.reads_history \
                    and ctx.native_args[1] == value.shape:
                rewrites[r] = (_history_conv_run, ctx.native, ins + r_ins[1:], r_outs, r_frees,
                               TensorNode("Concat+" + r_node.op, node.inputs + r_node.inputs[1:], r_node.outputs,
                                          r_node.attrs, f"{node.name}+{r_node.name}"))
                continue
            rows = _rows_sliced(r_node, ctx, value.shape) if r_node.op == "Slice" and r_ins[0] == full \
                and full not in r_ins[1:] else None
            if rows is None:
                break
            rewrites[r] = (_history_slice_run, (hh,) + rows, ins, r_outs, r_frees,
                           TensorNode("Concat+Slice", node.inputs, r_node.outputs, r_node.attrs,
                                      f"{node.name}+{r_node.name}"))
        else:
            if not any(step[0] is _history_conv_run for step in rewrites.values()):
                continue
            for r, step in rewrites.items():
                steps[r] = step
            dropped.add(index)
            moved.update(s for s in ins + (full,) if any(s in step[4] for step in steps))
    steps = [step for index, step in enumerate(steps) if index not in dropped]
    return _refree(steps, moved) if moved else steps


def _rows_sliced(node, slices, shape):
    """(start, stop) of the rows along axis 2 that a Slice's prepared ``slices`` keep, all of every other axis,
    step 1; else None."""
    for axis, (part, dim) in enumerate(zip(slices, shape)):
        start, stop, step = part.indices(dim)
        if step != 1 or (axis != 2 and (start, stop) != (0, dim)):
            return None
    start, stop, _ = slices[2].indices(shape[2])
    return (start, max(start, stop))


def _history_conv_run(native, inputs):
    return [native.history(inputs[0], inputs[1], CALL.threads)]


def _history_slice_run(ctx, inputs):
    """Rows [start, stop) of the concatenation of ``inputs`` along axis 2, a new array."""
    hh, start, stop = ctx
    hist, x = inputs
    if start >= hh:
        return [x[:, :, start - hh:stop - hh].copy()]
    if stop <= hh:
        return [hist[:, :, start:stop].copy()]
    return [np.concatenate((hist[:, :, start:], x[:, :, :stop - hh]), axis=2)]


# ---- Einsum "...gi,gih->...gh" -> one grouped linear ----

#: Ops whose output holds its input's elements in the same order (C order), a new shape only.
REORDERLESS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _grouped_linears(steps: List[tuple], known) -> List[tuple]:
    """An Einsum of a constant (G, I, H) float32 weight whose equation is a grouped linear
    (``...gi,gih->...gh``, any labels: x's last two axes (G, I) full, its leading axes kept in front of
    the output's (G, H)) is one call of ``_kernels.GroupedLinear``; it reads the input of the
    Reshapes (Flatten, Squeeze, Unsqueeze) in front of it and makes the output of those after it
    directly, and applies a Relu, Sigmoid or Tanh reading it (when each is the sole reader of what it
    reads, which dies there)."""
    readers = _readers(steps)
    producer = {slot: index for index, step in enumerate(steps) for _, slot in step[3]}
    dropped = set()

    def sole(slot, index):
        """The step reading ``slot`` when only it reads it and empties it there, not dropped; else None."""
        r = readers.get(slot)
        if r is None or len(r) != 1 or r[0] in dropped or slot not in steps[r[0]][4]:
            return None
        return r[0] if r[0] > index else None

    for index, (_, _, ins, outs, frees, node) in enumerate(steps):
        if node.op != "Einsum" or len(ins) != 2 or len(outs) != 1 or index in dropped:
            continue
        rows = _grouped_rows(node, [known[s] for s in ins], known[outs[0][1]])
        if rows is None:
            continue
        x, out = ins[0], outs[0][1]
        frees = tuple(frees)
        names, x_name, out_names = [node.name], node.inputs[0], node.outputs
        while x in producer and producer[x] not in dropped and sole(x, producer[x]) == index:
            p = producer[x]
            if steps[p][5].op not in REORDERLESS or len(steps[p][3]) != 1:
                break
            frees = tuple(s for s in frees if s != x) + steps[p][4]
            names.insert(0, steps[p][5].name)
            x, x_name = steps[p][2][0], steps[p][5].inputs[0]
            dropped.add(p)
        act = None
        while True:
            q = sole(out, index)
            if q is None or len(steps[q][3]) != 1 or not (steps[q][5].op in REORDERLESS or
                                                          (steps[q][5].op in ACTIVATIONS and act is None)):
                break
            if steps[q][5].op in ACTIVATIONS:
                act = steps[q][5].op
            frees = tuple(s for s in frees if s != out) + tuple(s for s in steps[q][4] if s != out)
            names.append(steps[q][5].name)
            out, out_names = steps[q][3][0][1], steps[q][5].outputs
            dropped.add(q)
        weight = known[ins[1]].const
        code = _kernels.ACTIVATION_CODES[ACTIVATIONS[act]] if act else _kernels.ACTIVATION_CODES["linear"]
        kernel = _kernels.GroupedLinear(weight, rows, known[out].shape, code)
        fused = TensorNode("Einsum grouped" + (f"+{act}" if act else ""), (x_name, node.inputs[1]), out_names,
                           node.attrs, "+".join(n or "-" for n in names))
        steps[index] = (_grouped_run, kernel, (x,), ((0, out),), frees, fused)
    return [step for index, step in enumerate(steps) if index not in dropped]


def _grouped_rows(node, values, out) -> int:
    """The rows (product of the leading dims) of an Einsum that is a grouped linear of a constant
    float32 weight (see _grouped_linears); None when it is not one."""
    x, w = values
    if w.const is None or w.dtype != FLOAT or x.dtype != FLOAT or len(w.shape) != 3 or len(x.shape) < 2 \
            or len(out.shape) > _kernels.GROUPED_MAX_DIMS or x.size == 0 or w.size == 0:
        return None
    operands, output, _ = parse_einsum(node.attrs["equation"], [x.shape, w.shape])
    (g, i, h), lead = operands[1], operands[0][:-2]
    if len({g, i, h}) != 3 or operands[0][-2:] != [g, i] or output != lead + [g, h] \
            or len(set(lead)) != len(lead) or {g, i, h} & set(lead) or tuple(x.shape[-2:]) != tuple(w.shape[:2]):
        return None
    return int(np.prod(x.shape[:-2], dtype=np.int64))


def _grouped_run(kernel, inputs):
    return [kernel(inputs[0])]


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


# ---- MatMul -> (scale) -> Softmax -> MatMul as one attention step ----

def _attentions(steps: List[tuple], known) -> List[tuple]:
    """``MatMul(softmax(scale · MatMul(a, b)), c)`` (the scale a Mul or Div by a scalar constant, or
    none; the softmax over the last axis; the scores read there only) as one step of
    ``_kernels.attention``: per matrix of the batch, BLAS scores into a scratch block, the softmax in
    place, BLAS again. A Transpose read only by the chain feeds it as strides (its input taken
    instead), and so does a Transpose that is the only reader of the result (written in its layout)."""
    readers, dropped = _readers(steps), set()
    sole = _sole_producer(steps, readers, dropped)
    for k, (_, _, ins, outs, _, node) in enumerate(steps):
        if node.op != "MatMul" or len(outs) != 1 or k in dropped:
            continue
        j = sole(ins[0], k, "Softmax")
        if j is None or steps[j][1] != len(known[ins[0]].shape) - 1:
            continue
        chain, scale, scores = [j], 1.0, steps[j][2][0]
        for op in ("Mul", "Div"):
            m = sole(scores, j, op)
            scaled = None if m is None else _scalar(steps[m], known, op)
            if scaled is not None:
                chain.append(m)
                scale, scores = scaled
                break
        i = sole(scores, chain[-1], "MatMul")
        if i is None:
            continue
        chain.append(i)
        operands = [(steps[i][2][0], steps[i][5].inputs[0], i), (steps[i][2][1], steps[i][5].inputs[1], i),
                    (ins[1], node.inputs[1], k)]
        result = outs[0][1]
        shapes = [known[slot].shape for slot, _, _ in operands] + [known[result].shape]
        if any(known[slot].dtype != FLOAT for slot, _, _ in operands) or len({len(s) for s in shapes}) != 1 \
                or len(shapes[0]) < 2 or len({s[:-2] for s in shapes}) != 1 or 0 in sum(shapes, ()):
            continue
        slots, names, perms = [], [], []
        for slot, name, reader in operands:
            t = sole(slot, reader, "Transpose") if [s for s, _, _ in operands].count(slot) == 1 else None
            if t is None:
                slots.append(slot), names.append(name), perms.append(None)
            else:
                slots.append(steps[t][2][0]), names.append(steps[t][5].inputs[0]), perms.append(steps[t][1])
                chain.append(t)
        out_perm, out_shape, last = None, known[result].shape, k
        after = readers.get(result)
        if after and len(after) == 1 and steps[after[0]][5].op == "Transpose" and result in steps[after[0]][4]:
            perm = steps[after[0]][1]
            if perm[-1] == len(perm) - 1:
                last = after[0]
                out_perm, result = tuple(int(a) for a in np.argsort(perm)), steps[last][3][0][1]
                out_shape = known[result].shape
        chain += [k] + ([last] if last != k else [])
        frees = {s for index in chain for s in steps[index][4]} - {s for index in chain for _, s in steps[index][3]}
        frees |= {s for _, s in steps[last][3]} & {s for index in chain for s in steps[index][4]}
        fused = TensorNode("MatMul+Softmax+MatMul", tuple(names), steps[last][5].outputs, {},
                           "+".join(steps[index][5].name for index in sorted(set(chain))))
        steps[k] = (_attention_run, (tuple(perms), out_shape, out_perm, scale), tuple(slots), ((0, result),),
                    tuple(sorted(frees)), fused)
        dropped.update(index for index in chain if index != k)
    return [step for index, step in enumerate(steps) if index not in dropped]


def _scalar(step, known, op):
    """(factor, the scaled tensor's slot) of a Mul (Div) step of a float tensor by (over) a float
    constant of one value, its output of the tensor's shape; else None."""
    ins = step[2]
    if len(ins) != 2:
        return None
    x, other = (ins[0], ins[1]) if op == "Div" or known[ins[0]].const is None else (ins[1], ins[0])
    const = known[other].const
    if const is None or const.size != 1 or const.dtype != FLOAT or known[x].const is not None \
            or known[x].dtype != FLOAT or known[x].shape != known[step[3][0][1]].shape:
        return None
    value = float(const.reshape(()))
    value = 1.0 / value if op == "Div" and value != 0 else value
    return (value, x) if np.isfinite(value) and value != 0 else None


def _attention_run(ctx, inputs):
    perms, out_shape, out_perm, scale = ctx
    a, b, c = (x if perm is None else x.transpose(perm) for x, perm in zip(inputs, perms))
    y = np.empty(out_shape, np.float32)
    _kernels.attention(a, b, c, y if out_perm is None else y.transpose(out_perm), scale)
    return [y]


# ---- Gemms of constant weights on the panel kernels, those of one input as one ----

#: A Gemm's constant weights (K·N floats) up to this many run on grurt's panel kernels: they win
#: over BLAS sgemm on one thread while the packed weights stay in L2 (measured on a Xeon: 1.2x at
#: 512 × 512, 2x at 128 × 384, 0.6x at 1024 × 1024).
PACKED_MAX_WEIGHTS = 512 * 512
#: ... and give at least this many outputs (a panel), or one row: fewer outputs of many rows run
#: on BLAS (at 100 rows of 256, 1 to 16 outputs: sgemm 3-11 µs, the panels' tail path 11-14 µs).
PACKED_MIN_OUTPUTS = 32


# ---- MatMul by constant weights, then Add of a constant row: one linear step ----

def _biased_matmuls(steps: List[tuple], known) -> List[tuple]:
    """``Add(MatMul(x, W), c)`` with W a constant (K, N) matrix and c a constant of N values along the
    last axis (its other dims 1, no broadcasting of the product), the product read only by the Add,
    as one step of ctx (W, c) (op "MatMul+Add"; :func:`_packed_gemms` packs it as a Gemm of a bias)."""
    readers = _readers(steps)
    sole = _sole_producer(steps, readers, set())
    dropped, result = set(), list(steps)
    for index, (run, _, ins, outs, frees, node) in enumerate(steps):
        if node.op != "Add" or run is not REGISTRY["Add"].run or len(ins) != 2 or len(outs) != 1:
            continue
        for product, bias in ((ins[0], ins[1]), (ins[1], ins[0])):
            m = sole(product, index, "MatMul")
            c = known[bias].const
            if m is None or steps[m][0] is not REGISTRY["MatMul"].run or c is None:
                continue
            w, x = steps[m][1], steps[m][2][0]
            shape = known[product].shape
            if (w is None or w.ndim != 2 or w.dtype != FLOAT or c.dtype != FLOAT or len(shape) < 2
                    or known[outs[0][1]].shape != shape or c.ndim > len(shape) or c.shape[-1:] != (w.shape[1],)
                    or c.size != w.shape[1] or known[x].dtype != FLOAT):
                continue
            merged = TensorNode("MatMul+Add", (steps[m][5].inputs[0],), node.outputs, {},
                                f"{steps[m][5].name}+{node.name}")
            result[index] = (_matmul_add_run, (w, np.ascontiguousarray(c.reshape(-1))), (x,), outs,
                             tuple(dict.fromkeys(f for f in (*steps[m][4], *frees) if f not in (product, bias))),
                             merged)
            dropped.add(m)
            break
    if not dropped:
        return list(steps)
    kept = [step for index, step in enumerate(result) if index not in dropped]
    return _refree(kept, {s for index in dropped for s in steps[index][4]})      # freed after the merged step's reads


def _matmul_add_run(ctx, inputs):
    w, c = ctx
    y = np.matmul(inputs[0], w)
    y += c
    return [y]


def _packed_gemms(steps: List[tuple], known) -> List[tuple]:
    """Each Gemm of constant B and a bias of one row (or none), A not transposed, and each MatMul of
    constant 2-D B (A's leading dims as rows), as a step of ``_kernels.Linear`` (weights packed once,
    here), where PACKED_MAX_WEIGHTS and PACKED_MIN_OUTPUTS say it pays; the products reading one input
    (through equal views of it, see :func:`_same_views`) as one Linear of their weights side by side,
    at the first one's place, its outputs the column blocks of one product (views where only attention
    steps read them, copies elsewhere: other steps may expect C-contiguous arrays)."""
    steps = _same_views(steps)
    groups: Dict[int, List[int]] = {}
    for index, step in enumerate(steps):
        if (step[5].op == "MatMul+Add" or step[5].op in ("Gemm", "MatMul") and step[0] is REGISTRY[step[5].op].run) \
                and _gemm_weights(step, known) is not None:
            groups.setdefault(step[2][0], []).append(index)
    readers = _readers(steps)
    freeable = {s for step in steps for s in step[4]}
    dropped, moved = set(), set()
    for x, members in groups.items():
        weights = [_gemm_weights(steps[m], known) for m in members]
        while len(members) > 1 and sum(w.size for w, _ in weights) > PACKED_MAX_WEIGHTS:
            members, weights = members[:-1], weights[:-1]
        rows = int(np.prod(known[x].shape[:-1]))
        if sum(w.size for w, _ in weights) > PACKED_MAX_WEIGHTS \
                or (sum(w.shape[1] for w, _ in weights) < PACKED_MIN_OUTPUTS and rows > 1):
            continue
        linear = _kernels.Linear(np.concatenate([w for w, _ in weights], 1), np.concatenate([c for _, c in weights]))
        blocks, outs, frees, start = [], [], set(), 0
        for k, (m, (w, _)) in enumerate(zip(members, weights)):
            slot = steps[m][3][0][1]
            view = len(members) > 1 and _strided_readers(slot, steps, readers)
            blocks.append((start, start + w.shape[1], view, known[slot].shape))
            outs.append((k, slot))
            frees.update(steps[m][4])
            start += w.shape[1]
        node = TensorNode("Gemm packed", steps[members[0]][5].inputs[:1],
                          tuple(name for m in members for name in steps[m][5].outputs), {},
                          "+".join(steps[m][5].name for m in members))
        steps[members[0]] = (_linear_run, (linear, tuple(blocks)), (x,), tuple(outs), tuple(frees - {x}), node)
        dropped.update(members[1:])
        if x in freeable:
            moved.add(x)
    return _refree([step for index, step in enumerate(steps) if index not in dropped], moved)


def _linear_activations(steps: List[tuple]) -> List[tuple]:
    """A Gemm packed of one product whose output only a Relu, Sigmoid or Tanh reads (and empties): one
    step, the activation applied to each row as the panel kernels make it (a Dense layer's
    activation: the same bits for Relu, the kernels' sigmoid and tanh within 3e-7 of numpy's)."""
    readers = _readers(steps)
    dropped = set()
    for index, (run, ctx, ins, outs, frees, node) in enumerate(steps):
        if node.op != "Gemm packed" or run is not _linear_run or len(outs) != 1:
            continue
        out = outs[0][1]
        reader = readers.get(out, [None])
        q = reader[0]
        if len(reader) != 1 or q is None or steps[q][5].op not in ACTIVATIONS or out not in steps[q][4] \
                or len(steps[q][3]) != 1:
            continue
        act = steps[q][5].op
        linear, blocks = ctx                        # one output: one block
        fused = linear.activated(_kernels.ACTIVATION_CODES[ACTIVATIONS[act]])
        steps[index] = (run, (fused, blocks), ins, steps[q][3],
                        frees + tuple(s for s in steps[q][4] if s != out),
                        TensorNode(f"Gemm packed+{act}", node.inputs, steps[q][5].outputs, {},
                                   f"{node.name}+{steps[q][5].name}"))
        dropped.add(q)
    return [step for index, step in enumerate(steps) if index not in dropped]


def _gemm_weights(step, known):
    """(W (K, N), c (N,)) of a Gemm step computing A @ W + c, A not transposed, W and c constants
    (c a row, a scalar or none), or of a MatMul step of A (…, K) by a constant W (c zeros), float;
    else None."""
    out = known[step[3][0][1]]
    if step[5].op in ("MatMul", "MatMul+Add"):
        (w, c), a = (step[1], None) if step[5].op == "MatMul" else step[1], known[step[2][0]]
        if w is None or w.ndim != 2 or len(a.shape) < 2 or a.dtype != FLOAT:
            return None
    else:
        trans_a, _, _, _, w, c = step[1]
        if trans_a:
            return None
    if w is None or w.dtype != FLOAT or out.dtype != FLOAT or 0 in w.shape or 0 in out.shape:
        return None
    if c is None:
        return w, np.zeros(w.shape[1], np.float32)
    if not isinstance(c, np.ndarray) or c.size not in (1, w.shape[1]) or (c.ndim == 2 and c.shape[0] != 1):
        return None
    return w, np.broadcast_to(c.reshape(-1), (w.shape[1],)).astype(np.float32)


def _strided_readers(slot, steps, readers) -> bool:
    """Whether ``slot`` is read, and only by steps that take strided arrays: attention steps, or
    Reshapes whose output only such steps read."""
    for index in readers.get(slot, []):
        _, _, ins, outs, _, node = steps[index]
        if node.op == "Reshape" and ins[0] == slot and _strided_readers(outs[0][1], steps, readers):
            continue
        if node.op != "MatMul+Softmax+MatMul":
            return False
    return bool(readers.get(slot))


def _linear_run(ctx, inputs):
    linear, blocks = ctx
    x = inputs[0]
    y = linear.run(x.reshape(-1, x.shape[-1]))
    if len(blocks) == 1:
        return [y.reshape(blocks[0][3])]
    return [(y[:, start:end] if view else np.ascontiguousarray(y[:, start:end])).reshape(shape)
            for start, end, view, shape in blocks]


def _same_views(steps: List[tuple]) -> List[tuple]:
    """A view step (Reshape, Transpose, Squeeze, ...) equal to an earlier one (the same op, attributes
    and input slots: the same array) dropped, its readers reading the earlier one's output."""
    freeable = {s for step in steps for s in step[4]}
    seen, renamed, result, moved = {}, {}, [], set()
    for run, ctx, ins, outs, frees, node in steps:
        ins = tuple(renamed.get(s, s) for s in ins)
        if node.op in VIEWS and len(outs) == 1 and outs[0][1] in freeable:
            key = (node.op, ins, repr(sorted(node.attrs.items())))
            if key in seen:
                renamed[outs[0][1]] = seen[key]
                moved.update({seen[key], *ins} & freeable)
                continue
            seen[key] = outs[0][1]
        result.append((run, ctx, ins, outs, tuple(dict.fromkeys(renamed.get(s, s) for s in frees)), node))
    return _refree(result, moved) if renamed else list(steps)


def _refree(steps: List[tuple], slots) -> List[tuple]:
    """``steps`` with each of ``slots`` freed after its last reader (after its producer when nobody
    reads it), wherever it was freed before."""
    last = {}
    for index, (_, _, ins, outs, _, _) in enumerate(steps):
        for s in slots:
            if s in ins or (s not in last and any(s == slot for _, slot in outs)):
                last[s] = index
    return [(run, ctx, ins, outs, tuple(f for f in frees if f not in slots)
             + tuple(s for s in slots if last.get(s) == index), node)
            for index, (run, ctx, ins, outs, frees, node) in enumerate(steps)]


# ---- the mean of a linear map as the linear map of the mean ----

def _means_first(steps: List[tuple], known) -> List[tuple]:
    """``ReduceMean`` over one axis of the rows of a packed Gemm's output ((d0, d1, N) as a MatMul makes
    it, or reshaped to it; then perhaps transposed, the features kept last) as the Gemm of the rows'
    mean: mean(x·W + c) =
    mean(x)·W + c (GlobalAveragePooling after a projection: the product of one row per mean instead
    of one per time step). The sums' order changes (float32 rounding only)."""
    readers, dropped = _readers(steps), set()
    sole = _sole_producer(steps, readers, dropped)
    for index, (_, ctx, ins, outs, frees, node) in enumerate(steps):
        if node.op != "ReduceMean" or len(outs) != 1 or known[outs[0][1]].dtype != FLOAT or len(ctx[0]) != 1:
            continue
        chain, slot, perm = [index], ins[0], (0, 1, 2)
        t = sole(slot, index, "Transpose")
        if t is not None:
            chain.append(t)
            slot, perm = steps[t][2][0], steps[t][1]
        r = sole(slot, chain[-1], "Reshape")
        g = sole(slot, chain[-1], "Gemm packed") if r is None else sole(steps[r][2][0], r, "Gemm packed")
        rows = None if g is None else known[steps[g][3][0][1]].shape
        if g is None or len(steps[g][1][1]) != 1 or len(rows) != (2 if r is not None else 3):
            continue
        rows = (int(np.prod(rows[:-1])), rows[-1])
        shape = known[slot].shape
        axis = perm[ctx[0][0]] if len(perm) == 3 else None
        if len(shape) != 3 or perm[2] != 2 or shape[2] != rows[1] or axis not in (0, 1) \
                or shape[0] * shape[1] != rows[0]:
            continue
        chain += [g] if r is None else [r, g]
        x = steps[g][2][0]
        frees = {s for i in chain for s in steps[i][4]} - {s for i in chain for _, s in steps[i][3]}
        fused = TensorNode("ReduceMean+Gemm", steps[g][5].inputs, node.outputs, {},
                           "+".join(steps[i][5].name for i in sorted(chain)))
        weights = np.full(shape[axis], 1 / shape[axis], np.float32)
        fused_ctx = (steps[g][1][0], shape[:2], axis, weights, known[outs[0][1]].shape)
        steps[index] = (_mean_linear_run, fused_ctx, (x,), outs, tuple(sorted(frees)), fused)
        dropped.update(i for i in chain if i != index)
    return [step for i, step in enumerate(steps) if i not in dropped]


def _mean_linear_run(ctx, inputs):
    """The mean as a product by 1/count (BLAS gemv: a third of numpy's mean over a middle axis)."""
    linear, (d0, d1), axis, weights, out_shape = ctx
    x = inputs[0]
    mean = weights @ x.reshape(d0, -1) if axis == 0 else np.matmul(weights, x.reshape(d0, d1, -1))
    return [linear.run(mean.reshape(-1, x.shape[-1])).reshape(out_shape)]


def _attention_means(steps: List[tuple], known) -> List[tuple]:
    """The mean over the queries of an attention's output (a ReduceMean+Gemm of it, through a Reshape
    of its rows) as the attention of the softmax rows' mean: mean_t(P·V) = (mean_t P)·V, two gemv per
    head instead of the second product (GlobalAveragePooling after MultiHeadAttention)."""
    readers, dropped = _readers(steps), set()
    sole = _sole_producer(steps, readers, dropped)
    for index, (_, ctx, ins, outs, frees, node) in enumerate(steps):
        if node.op != "ReduceMean+Gemm":
            continue
        linear, (d0, d1), axis, _, out_shape = ctx
        r = sole(ins[0], index, "Reshape")
        a = None if r is None else sole(steps[r][2][0], r, "MatMul+Softmax+MatMul")
        if a is None:
            continue
        perms, shape, out_perm, scale = steps[a][1]
        batch = shape[:1] + shape[2:-1] if out_perm else shape[:-2]       # the kernel's batch dims
        queries = shape[1] if out_perm else shape[-2]
        if axis != 1 or (d0, d1) != (shape[0], queries) or out_perm not in (None, (0, 2, 1, 3)) \
                or (out_perm is None and len(shape) != 3):
            continue
        result = steps[a][3][0][1]
        mean_shape = batch + shape[-1:]
        steps[a] = (_attention_mean_run, (perms, mean_shape, scale), steps[a][2], steps[a][3],
                    tuple(s for s in steps[a][4] if s != result), _renamed(steps[a][5], "MatMul+Softmax+MatMul mean"))
        kept = tuple(s for s in dict.fromkeys(frees + steps[r][4]) if s != ins[0])      # the result dies here now
        steps[index] = (_mean_done_run, (linear, out_shape), (result,), outs, kept,
                        TensorNode("Gemm packed", (steps[a][5].outputs[0],), node.outputs, {}, node.name))
        dropped.add(r)
    return [step for i, step in enumerate(steps) if i not in dropped]


def _attention_mean_run(ctx, inputs):
    perms, mean_shape, scale = ctx
    a, b, c = (x if perm is None else x.transpose(perm) for x, perm in zip(inputs, perms))
    y = np.empty(mean_shape, np.float32)
    _kernels.attention(a, b, c, y[..., None, :], scale, True)
    return [y]


def _mean_done_run(ctx, inputs):
    linear, out_shape = ctx
    return [linear.run(inputs[0].reshape(out_shape[0], -1)).reshape(out_shape)]


# ---- elementwise ops in place ----

#: The unary ops run in place: by the kernels' activation (ops.elementwise's Sigmoid and Tanh are that
#: too) on a contiguous array, numpy's calls on a strided one (for Relu, the same bits either way).
_UNARY = {"Relu": lambda x: np.maximum(x, np.float32(0), out=x),
          "Sigmoid": lambda x: _strided_activation(x, "sigmoid"), "Tanh": lambda x: _strided_activation(x, "tanh")}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}


def _strided_activation(x, name):
    y = np.ascontiguousarray(x)
    _kernels.activate(y, _kernels.ACTIVATION_CODES[name])
    x[...] = y
    return x


def _unary_run(ctx, inputs):
    code, strided = ctx
    x = inputs[0]
    if x.flags.c_contiguous:
        _kernels.activate(x, code)
        return [x]
    return [strided(x)]


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
            run, ctx = _unary_run, (_kernels.ACTIVATION_CODES[ACTIVATIONS[op]], _UNARY[op])
            node = _renamed(node, f"{op} in place")
        elif op in _BINARY and len(ins) == 2 and ins[0] != ins[1]:
            out_value = known[outs[0][1]]
            into = next((k for k, s in enumerate(ins) if s in dying and known[s].shape == out_value.shape
                         and known[s].dtype == FLOAT == out_value.dtype), None)
            if into is not None and all(known[s].dtype == FLOAT for s in ins):
                run, ctx = _binary_run, (_BINARY[op], into)
                node = _renamed(node, f"{op} in place")
        result.append((run, ctx, ins, outs, frees, node))
        if (op in FRESH or (op == "Einsum" and getattr(ctx, "pairs", None)) or (op in VIEWS and ins[0] in dying)
                or (op == "grurt.Chain" and not node.attrs["keep_state"])):     # (a stream's Chain hands out its states)
            owned.update(slot for _, slot in outs)
        else:       # its outputs may share memory with its inputs: neither is written in place from now on
            owned.difference_update(ins)
        owned.difference_update(frees)
    return result


def _renamed(node: TensorNode, op: str) -> TensorNode:
    return TensorNode(op, node.inputs, node.outputs, node.attrs, node.name)


def _sole_producer(steps, readers, dropped):
    """``sole(slot, reader, op)``: the index of the step of ``op`` (one output) making ``slot`` when only
    step ``reader`` reads it and empties it there, neither dropped; else None."""
    producer = {slot: index for index, step in enumerate(steps) for _, slot in step[3]}

    def sole(slot, reader, op):
        index = producer.get(slot)
        if index is None or index in dropped or readers.get(slot) != [reader] or slot not in steps[reader][4]:
            return None
        return index if steps[index][5].op == op and len(steps[index][3]) == 1 else None
    return sole


def _readers(steps) -> Dict[int, List[int]]:
    readers: Dict[int, List[int]] = {}
    for index, step in enumerate(steps):
        for slot in dict.fromkeys(step[2]):
            readers.setdefault(slot, []).append(index)
    return readers
