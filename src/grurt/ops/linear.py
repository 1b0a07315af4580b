"""Ops of the linear family: MatMul, Gemm, Einsum (see :mod:`grurt.ops`).

Constant weights are packed in ``prepare`` (Gemm's B transposed and scaled by alpha, its C
scaled by beta); an Einsum's contraction is planned there too, as a sequence of transposes,
reshapes and one batched matrix product per pair of operands (numpy's own ``einsum`` costs
~40 us a call whatever its ``optimize`` path), so ``run`` does only the arithmetic.
"""
from __future__ import annotations

import math
import string
from typing import Optional, Sequence

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..limits import MAX_PARAMETERS
from .registry import BOOL, FLOAT, Attr, Op, Value, broadcast_shapes, canonical_dtype, register
from .shape import FROM_INPUT, VARIADIC, checked_shape, contiguous, optional


def _numeric_dtype(op: str, values: Sequence[Value]) -> np.dtype:
    """The one dtype (float32 or int64) of ``values``; ModelFormatError naming the op otherwise."""
    dtypes = {canonical_dtype(v.dtype) for v in values}
    if len(dtypes) != 1 or BOOL in dtypes:
        raise ModelFormatError(f"{op}: inputs of dtypes {', '.join(str(v.dtype) for v in values)} "
                               "(needs numbers of one dtype)")
    return dtypes.pop()


def _timed(name):
    """``Op.time_of`` of op ``name``: :func:`_time` (defined with the ops, below)."""
    return lambda attrs, values, time_axis: _time(name, attrs, values, time_axis)


# ---- MatMul: numpy's matmul (1-D operands, broadcast batch dims) ----

def _matmul_shape(a, b):
    if not a or not b:
        raise ModelFormatError(f"MatMul: operands of shapes {a} and {b} (a scalar has no matrix product)")
    a2, b2 = ((1,) + a if len(a) == 1 else a), (b + (1,) if len(b) == 1 else b)
    if a2[-1] != b2[-2]:
        raise ModelFormatError(f"MatMul: shapes {a} and {b}: {a2[-1]} columns against {b2[-2]} rows")
    batch = broadcast_shapes(f"MatMul: the batch dims of {a} and {b}", a2[:-2], b2[:-2])
    return batch + a2[-2:-1] * (len(a) > 1) + b2[-1:] * (len(b) > 1)


def _matmul_infer(attrs, values):
    a, b = values
    return [(checked_shape("MatMul", _matmul_shape(a.shape, b.shape)), _numeric_dtype("MatMul", values))]


def _matmul_prepare(attrs, values):
    b = values[1].const
    return None if b is None else np.ascontiguousarray(b, dtype=_numeric_dtype("MatMul", values))


def _matmul_run(b, inputs):
    return [np.asarray(np.matmul(inputs[0], inputs[1] if b is None else b))]   # 1-D @ 1-D: a numpy scalar


register(Op("MatMul", {}, _matmul_infer, _matmul_run, _matmul_prepare, time=None, time_of=_timed("MatMul"),
            inputs=(2, 2)))


# ---- Gemm: Y = alpha * A' B' + beta * C ----

def _gemm_shape(attrs, values):
    a, b = values[0].shape, values[1].shape
    if len(a) != 2 or len(b) != 2:
        raise ModelFormatError(f"Gemm: A {a} and B {b} must be matrices")
    (m, k), (k2, n) = a[::-1] if attrs["transA"] else a, b[::-1] if attrs["transB"] else b
    if k != k2:
        raise ModelFormatError(f"Gemm: A {a} (transA={attrs['transA']}) and B {b} (transB={attrs['transB']}) "
                               f"do not multiply: {k} against {k2}")
    c = optional(values, 2)
    if c is not None and broadcast_shapes(f"Gemm: C {c.shape} against ({m}, {n})", c.shape, (m, n)) != (m, n):
        raise ModelFormatError(f"Gemm: C {c.shape} does not broadcast to the output ({m}, {n})")
    return m, n


def _gemm_infer(attrs, values):
    dtype = _numeric_dtype("Gemm", [v for v in values if v is not None])
    if dtype != FLOAT:
        raise UnsupportedModelError(f"Gemm: grurt runs it on float tensors, got {dtype}")
    return [(checked_shape("Gemm", _gemm_shape(attrs, values)), dtype)]


def _gemm_prepare(attrs, values):
    """B transposed to (K, N) and scaled by alpha, C scaled by beta, when they are constants."""
    alpha, beta = attrs["alpha"], attrs["beta"]
    b, c = values[1].const, optional(values, 2)
    if b is not None:
        b = b.T if attrs["transB"] else b
        b = np.ascontiguousarray(b * alpha if alpha != 1.0 else b, dtype=np.float32)
    if c is not None:
        c = FROM_INPUT if c.const is None else (c.const * beta if beta != 1.0 else c.const).astype(np.float32)
    return attrs["transA"], attrs["transB"], alpha, beta, b, c


def _gemm_run(ctx, inputs):
    trans_a, trans_b, alpha, beta, b, c = ctx
    a = inputs[0].T if trans_a else inputs[0]
    if b is not None:
        y = a @ b
    else:
        y = a @ (inputs[1].T if trans_b else inputs[1])
        if alpha != 1.0:
            y *= np.float32(alpha)
    if c is FROM_INPUT:
        y += inputs[2] * np.float32(beta) if beta != 1.0 else inputs[2]
    elif c is not None:
        y += c
    return [y]


register(Op("Gemm", {"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0),
                     "transA": Attr("int", 0, lambda v: None if v in (0, 1) else "must be 0 or 1"),
                     "transB": Attr("int", 0, lambda v: None if v in (0, 1) else "must be 0 or 1")},
            _gemm_infer, _gemm_run, _gemm_prepare, time=None, time_of=_timed("Gemm"), inputs=(2, 3)))


# ---- Einsum ----

ELLIPSIS = "..."


def parse_einsum(equation: str, shapes: Sequence[Sequence[int]]):
    """The labels of each operand and of the output, and each label's size, for ``equation``
    over operands of ``shapes``. Labels are letters; the dims an ellipsis stands for are the
    labels ``'...0'``, ``'...1'``, ... aligned to the right (numpy's broadcasting). A label's size
    is the one dim its operands give it, 1 broadcasting. ModelFormatError naming what is wrong."""
    def fail(problem):
        raise ModelFormatError(f"Einsum: equation {equation!r} for inputs {', '.join(map(str, shapes))}: {problem}")

    text = equation.replace(" ", "")
    if text.count("->") > 1:
        fail("more than one '->'")
    lhs, rhs = text.split("->") if "->" in text else (text, None)
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        fail(f"{len(terms)} operand terms for {len(shapes)} inputs")

    def tokens(term, where):
        if term.count(ELLIPSIS) > 1:
            fail(f"more than one ellipsis in {where}")
        letters = term.replace(ELLIPSIS, "")
        bad = [c for c in letters if c not in string.ascii_letters]
        if bad:
            fail(f"{bad[0]!r} in {where} (labels are letters a-z, A-Z and one '...')")
        return letters, ELLIPSIS in term

    ellipsis_rank, parsed = 0, []
    for i, (term, shape) in enumerate(zip(terms, shapes)):
        letters, has_ellipsis = tokens(term, f"term {i}")
        if len(letters) > len(shape) or (not has_ellipsis and len(letters) != len(shape)):
            fail(f"term {i} {term!r} names {len(letters)} axes of input {i}, which has {len(shape)}")
        if has_ellipsis:
            ellipsis_rank = max(ellipsis_rank, len(shape) - len(letters))
        parsed.append((term, has_ellipsis))

    def expand(term, rank):
        head, _, tail = term.partition(ELLIPSIS)
        if ELLIPSIS not in term:
            return list(term)
        n = rank - len(head) - len(tail)
        return list(head) + [f"{ELLIPSIS}{k}" for k in range(ellipsis_rank - n, ellipsis_rank)] + list(tail)

    operands = [expand(term, len(shape)) for (term, _), shape in zip(parsed, shapes)]
    sizes = {}
    for i, (labels, shape) in enumerate(zip(operands, shapes)):
        for label, dim in zip(labels, shape):
            if sizes.get(label, 1) not in (1, dim) and dim != 1:
                fail(f"label {label!r} has {sizes[label]} elements in one operand and {dim} in input {i}")
            sizes[label] = max(sizes.get(label, 1), dim)
    ellipsis = [f"{ELLIPSIS}{k}" for k in range(ellipsis_rank)]
    if rhs is None:
        counts = {}
        for labels in operands:
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        output = ellipsis + sorted(c for c, n in counts.items() if n == 1 and len(c) == 1)
    else:
        letters, has_ellipsis = tokens(rhs, "the output")
        if len(set(letters)) != len(letters):
            fail("the output repeats a label")
        missing = [c for c in letters if c not in sizes]
        if missing:
            fail(f"output label {missing[0]!r} is in no operand")
        if ellipsis_rank and not has_ellipsis:
            fail("the operands have an ellipsis and the output does not")
        output = expand(rhs, len(letters) + ellipsis_rank)
    return operands, output, sizes


def _permutation(labels, order):
    """The transpose taking ``labels`` to ``order``; None when it is the identity."""
    perm = [labels.index(label) for label in order]
    return None if perm == list(range(len(perm))) else perm


class EinsumPlan:
    """An Einsum made of numpy calls decided once: per operand, the broadcast dims dropped and a
    diagonal / sum over labels no one else needs (a one-operand ``np.einsum``); then, pair by
    pair (the pair whose product is smallest first), a transpose and reshape of each operand to
    (batch, rows, contracted) and (batch, contracted, columns) and one ``np.matmul``; last, a
    transpose to the output's order."""

    def __init__(self, operands, output, sizes, shapes):
        letter = {}   # np.einsum's subscripts for the one-operand steps

        def sub(labels):
            for label in labels:
                if label not in letter:
                    if len(letter) == len(string.ascii_letters):
                        raise UnsupportedModelError("Einsum: more than 52 distinct labels (ellipsis dims included)")
                    letter[label] = string.ascii_letters[len(letter)]
            return "".join(letter[label] for label in labels)

        operands = [list(labels) for labels in operands]
        squeezes = []   # a label of 1 element where another operand has more is not this operand's
        for k, (labels, shape) in enumerate(zip(operands, shapes)):
            kept = [(label, d) for label, d in zip(labels, shape) if d == sizes[label]]
            squeezes.append(tuple(d for _, d in kept) if len(kept) != len(labels) else None)
            operands[k] = [label for label, _ in kept]
        self.unary = []
        current = []
        for i, (labels, squeeze) in enumerate(zip(operands, squeezes)):
            others = set(output).union(*(operands[j] for j in range(len(operands)) if j != i))
            needed = list(dict.fromkeys(label for label in labels if label in others))
            if len(operands) == 1:
                needed = output
            equation = None if needed == labels else f"{sub(labels)}->{sub(needed)}"
            if squeeze is not None or equation is not None:
                self.unary.append((i, squeeze, equation))
            current.append(needed)
        self.pairs = []
        while len(current) > 1:
            i, j = min(((i, j) for i in range(len(current)) for j in range(i + 1, len(current))),
                       key=lambda ij: self._cost(current, ij, output, sizes))
            la, lb = current[i], current[j]
            keep = set(output).union(*(current[k] for k in range(len(current)) if k not in (i, j)))
            batch = [label for label in la if label in lb and label in keep]
            contracted = [label for label in la if label in lb and label not in keep]
            left, right = [label for label in la if label not in lb], [label for label in lb if label not in la]
            n = [math.prod(sizes[label] for label in group) for group in (batch, left, contracted, right)]
            if n[0] * n[1] * n[3] > MAX_PARAMETERS:
                raise ModelFormatError(f"Einsum: an intermediate product of {n[0] * n[1] * n[3]} elements, more than "
                                       f"grurt.limits.MAX_PARAMETERS = {MAX_PARAMETERS}")
            self.pairs.append((i, j, _permutation(la, batch + left + contracted), (n[0], n[1], n[2]),
                               _permutation(lb, batch + contracted + right), (n[0], n[2], n[3]),
                               tuple(sizes[label] for label in batch + left + right)))
            del current[j], current[i]   # i < j
            current.append(batch + left + right)
        self.final = _permutation(current[0], output)

    @staticmethod
    def _cost(current, ij, output, sizes):
        others = set(output).union(*(c for k, c in enumerate(current) if k not in ij))
        return math.prod(sizes[label] for label in set(current[ij[0]]) | set(current[ij[1]]) if label in others)

    def __call__(self, operands):
        current = list(operands)
        for i, squeeze, equation in self.unary:
            x = current[i] if squeeze is None else current[i].reshape(squeeze)
            current[i] = x if equation is None else np.einsum(equation, x)
        for i, j, perm_a, shape_a, perm_b, shape_b, shape in self.pairs:
            b, a = current.pop(j), current.pop(i)   # i < j
            a = (a if perm_a is None else a.transpose(perm_a)).reshape(shape_a)
            b = (b if perm_b is None else b.transpose(perm_b)).reshape(shape_b)
            current.append(np.matmul(a, b).reshape(shape))
        y = current[0] if self.final is None else current[0].transpose(self.final)
        return contiguous(y)


def _einsum_parse(attrs, values):
    if any(v is None for v in values):
        raise ModelFormatError("Einsum: an input is omitted")
    shapes = [tuple(v.shape) for v in values]
    operands, output, sizes = parse_einsum(attrs["equation"], shapes)
    return operands, output, sizes, shapes


def _einsum_infer(attrs, values):
    operands, output, sizes, shapes = _einsum_parse(attrs, values)
    EinsumPlan(operands, output, sizes, shapes)   # its intermediate products are bounded
    return [(checked_shape("Einsum", [sizes[label] for label in output]), _numeric_dtype("Einsum", values))]


register(Op("Einsum", {"equation": Attr("string")}, _einsum_infer,
            lambda plan, inputs: [plan(inputs)],
            lambda attrs, values: EinsumPlan(*_einsum_parse(attrs, values)),
            time=None, time_of=_timed("Einsum"), inputs=(1, VARIADIC)))


# ---- time ----

def _time(op_name: str, attrs: dict, values: Sequence[Optional[Value]], time_axis: int) -> str:
    """How a linear op acts along the time axis ``time_axis`` of its input 0, the other inputs
    being constant along time (weights): ``"step"`` when the time axis is a row or batch axis the
    output keeps at the same place, ``"sequence"`` when it is contracted (or moves). A node whose
    other inputs carry time too (attention) is for the caller to call "sequence"."""
    a = values[0].shape
    if op_name == "MatMul":
        b = values[1].shape
        out = _matmul_shape(a, b)   # (batch, rows, columns): a row or batch axis of A keeps its place
        keeps = len(a) >= 2 and time_axis < len(a) - 1 and len(out) - (len(b) > 1) == len(a) - 1
        return "step" if keeps else "sequence"
    if op_name == "Gemm":
        return "step" if time_axis == 0 and not attrs["transA"] else "sequence"
    if op_name == "Einsum":
        operands, output, _, _ = _einsum_parse(attrs, values)
        label = operands[0][time_axis]
        keeps = label in output and operands[0].count(label) == 1 and output.index(label) == time_axis
        return "step" if keeps else "sequence"
    return "sequence"
