"""float64 references of the linear ops: plain numpy, independent of :mod:`grurt.ops.linear`.

MatMul loops over the broadcast batch, Einsum over every assignment of its labels (the sum
of products the equation writes), so both are for the small shapes of tests."""
from __future__ import annotations

import itertools
import string

import numpy as np


def matmul(attrs, inputs):
    a, b = inputs
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    out = np.zeros(batch + (a2.shape[-2], b2.shape[-1]), dtype=np.result_type(a, b))
    for index in np.ndindex(*batch):
        ia = tuple(i if d > 1 else 0 for i, d in zip(index[len(index) - (a2.ndim - 2):], a2.shape[:-2]))
        ib = tuple(i if d > 1 else 0 for i, d in zip(index[len(index) - (b2.ndim - 2):], b2.shape[:-2]))
        out[index] = a2[ia] @ b2[ib]
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return [out]


def gemm(attrs, inputs):
    a, b = inputs[0], inputs[1]
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = attrs["alpha"] * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + attrs["beta"] * inputs[2]
    return [y]


def einsum(attrs, inputs):
    """Σ over the labels not in the output of the product of the operands' elements, each label
    running over its size (a dim of 1 broadcasts); the ellipsis is a run of unnamed labels."""
    equation = attrs["equation"].replace(" ", "")
    lhs, rhs = equation.split("->") if "->" in equation else (equation, None)
    terms = lhs.split(",")
    ellipsis = max((x.ndim - len(t.replace("...", "")) for t, x in zip(terms, inputs) if "..." in t), default=0)
    spare = iter(c for c in string.ascii_letters if c not in equation)
    dots = "".join(next(spare) for _ in range(ellipsis))

    def expand(term, rank):
        named = len(term.replace("...", ""))
        return term.replace("...", dots[ellipsis - (rank - named):]) if "..." in term else term

    terms = [expand(t, x.ndim) for t, x in zip(terms, inputs)]
    if rhs is None:
        once = [c for c in sorted(set("".join(terms))) if "".join(terms).count(c) == 1 and c not in dots]
        rhs = dots + "".join(once)
    else:
        rhs = rhs.replace("...", dots)
    size = {}
    for t, x in zip(terms, inputs):
        for c, d in zip(t, x.shape):
            size[c] = max(size.get(c, 1), d)
    labels = sorted(size)
    out = np.zeros([size[c] for c in rhs], dtype=np.result_type(*inputs))
    for values in itertools.product(*(range(size[c]) for c in labels)):
        at = dict(zip(labels, values))
        product = 1
        for t, x in zip(terms, inputs):
            product = product * x[tuple(at[c] if d > 1 else 0 for c, d in zip(t, x.shape))]
        out[tuple(at[c] for c in rhs)] += product
    return [out]


REFERENCE = {"MatMul": matmul, "Gemm": gemm, "Einsum": einsum}
