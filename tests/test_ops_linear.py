"""The linear family (grurt.ops.linear): MatMul, Gemm and Einsum three ways, grurt's run
(through the registry, as the planner runs it), grurt's float64 reference and onnxruntime.

Tolerance: float32 outputs are held to ATOL (tests/tolerances.py) times the largest magnitude
of the reference's output (at least 1): a sum of K products carries about sqrt(K) float32
rounding errors of each term's size. Integer products are exact (np.array_equal).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grurt.errors import ModelFormatError, UnsupportedModelError
from grurt.ops import REGISTRY, Value, check_attributes, linear, time_rule

from op_testing import ort_op, reference_op, run_op
from tolerances import ATOL

_SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=30,
                     suppress_health_check=[HealthCheck.too_slow])


def _data(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-9, 9, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def close(ours, oracle):
    """Max abs difference, asserted within ATOL relative to the oracle's magnitude."""
    assert ours.shape == oracle.shape, (ours.shape, oracle.shape)
    error = float(np.abs(ours.astype(np.float64) - oracle).max())
    assert error <= ATOL * max(1.0, float(np.abs(oracle).max())), error
    return error


def agree(op, attrs, inputs, const=(), ort=True):
    """grurt's output, after asserting it matches the reference and onnxruntime (exactly for ints)."""
    ours = run_op(op, attrs, inputs, const=const)[0]
    assert isinstance(ours, np.ndarray) and ours.flags.c_contiguous
    ref = reference_op(op, attrs, inputs)[0]
    oracles = [ref] + ([ort_op(op, attrs, inputs, const=tuple(const))[0]] if ort else [])
    for oracle in oracles:
        if ours.dtype.kind == "i":
            assert np.array_equal(ours, oracle), (op, attrs)
        else:
            close(ours, oracle)
    return ours


MATMULS = [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)),
           ((2, 1, 3, 4), (5, 4, 6)), ((3, 4), (2, 4, 5)), ((4,), (2, 3, 4, 2)), ((2, 3, 4), (4,)),
           ((1, 20, 64), (64, 48))]


@pytest.mark.parametrize("a, b", MATMULS)
@pytest.mark.parametrize("const", [(), (1,)])
def test_matmul(a, b, const):
    agree("MatMul", {}, [_data(a, 1), _data(b, 2)], const=const)


def test_matmul_int64_and_refusals():
    agree("MatMul", {}, [_data((2, 3, 4), 1, np.int64), _data((4, 2), 2, np.int64)])
    with pytest.raises(ModelFormatError, match=r"shapes \(3, 4\) and \(5, 2\): 4 columns against 5 rows"):
        run_op("MatMul", {}, [_data((3, 4)), _data((5, 2))])
    with pytest.raises(ModelFormatError, match="batch dims .* do not broadcast"):
        run_op("MatMul", {}, [_data((2, 3, 4)), _data((3, 4, 2))])
    with pytest.raises(ModelFormatError, match="scalar"):
        run_op("MatMul", {}, [np.float32(2), _data((3,))])
    with pytest.raises(ModelFormatError, match="one dtype"):
        run_op("MatMul", {}, [_data((2, 3)), _data((3, 2), dtype=np.int64)])


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (), (5,), (3, 1), (1, 5), (3, 5)])
def test_gemm(trans_a, trans_b, c_shape):
    a = _data((4, 3) if trans_a else (3, 4), 1)
    b = _data((5, 4) if trans_b else (4, 5), 2)
    inputs = [a, b] + ([] if c_shape is None else [_data(c_shape, 3)])
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": 0.7, "beta": -1.3}
    for const in [(), (1, 2)]:
        agree("Gemm", attrs, inputs, const=const)
    agree("Gemm", {"transA": trans_a, "transB": trans_b}, inputs, const=(1,))


def test_gemm_refusals():
    with pytest.raises(ModelFormatError, match="do not multiply: 4 against 5"):
        run_op("Gemm", {}, [_data((3, 4)), _data((5, 2))])
    with pytest.raises(ModelFormatError, match=r"C \(3, 2\)"):
        run_op("Gemm", {}, [_data((3, 4)), _data((4, 5)), _data((3, 2))])
    with pytest.raises(ModelFormatError, match="matrices"):
        run_op("Gemm", {}, [_data((2, 3, 4)), _data((4, 5))])
    with pytest.raises(UnsupportedModelError, match="float"):
        run_op("Gemm", {}, [_data((2, 3), dtype=np.int64), _data((3, 2), dtype=np.int64)])


EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),                       # implicit output
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bij,bkj->bik", [(1, 2, 3), (4, 5, 3)]),          # a batch label of 1 broadcasts
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("ii->i", [(4, 4)]),                               # diagonal
    ("ii", [(4, 4)]),                                  # trace
    ("iij->ji", [(3, 3, 2)]),
    ("iij,jk->ik", [(3, 3, 2), (2, 4)]),
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("i,i->", [(5,), (5,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 2)]),
    ("ab,bc,cd,da->", [(2, 3), (3, 4), (4, 5), (5, 2)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 5, 4, 2)]),
    ("...ij,...jk", [(2, 3, 4), (2, 4, 5)]),           # implicit output with an ellipsis
    ("i...j,j...", [(2, 3, 4), (4, 3)]),
    ("...ij->...", [(2, 3, 4)]),
    ("ba,ca", [(2, 3), (4, 3)]),
    ("zb,ya", [(2, 3), (4, 5)]),
    ("b i j , b j k -> b k i", [(2, 3, 4), (2, 4, 5)]),
]


@pytest.mark.parametrize("equation, shapes", EINSUMS)
def test_einsum(equation, shapes):
    inputs = [_data(s, i) for i, s in enumerate(shapes)]
    agree("Einsum", {"equation": equation}, inputs)
    assert np.allclose(run_op("Einsum", {"equation": equation}, inputs)[0], np.einsum(equation, *inputs), atol=1e-5)


def test_einsum_beyond_onnxruntime():
    """numpy's semantics where onnxruntime refuses: ellipses of different ranks broadcast right
    aligned; implicit outputs with capitals (ASCII order, capitals first); integers."""
    for equation, shapes in [("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]), ("bA,Ca", [(2, 3), (4, 3)]),
                             ("Ab,bC", [(2, 3), (3, 4)])]:
        inputs = [_data(s, i) for i, s in enumerate(shapes)]
        ours = agree("Einsum", {"equation": equation}, inputs, ort=False)
        close(ours, np.einsum(equation, *[x.astype(np.float64) for x in inputs]))
    agree("Einsum", {"equation": "bij,bjk->bki"}, [_data((2, 3, 4), 1, np.int64), _data((2, 4, 3), 2, np.int64)])


@st.composite
def _einsums(draw):
    """An equation over 1-3 operands of labels from 'abcd' (repeats allowed: diagonals), each
    label's size drawn once (an operand may hold 1 instead: broadcasting), explicit or implicit."""
    sizes = {c: draw(st.integers(1, 3)) for c in "abcd"}
    terms = [draw(st.lists(st.sampled_from("abcd"), max_size=3)) for _ in range(draw(st.integers(1, 3)))]
    used = sorted(set(c for t in terms for c in t))
    shapes = [tuple(1 if draw(st.integers(0, 4)) == 0 else sizes[c] for c in t) for t in terms]
    for t, shape in zip(terms, shapes):  # a repeated label has one size within an operand
        for c in set(t):
            dims = {d for x, d in zip(t, shape) if x == c}
            if len(dims) > 1:
                shapes[terms.index(t)] = tuple(sizes[x] if x == c else d for x, d in zip(t, shape))
    lhs = ",".join("".join(t) for t in terms)
    if draw(st.booleans()):
        return lhs, shapes
    return lhs + "->" + "".join(draw(st.permutations(used))[:draw(st.integers(0, len(used)))]), shapes


@given(_einsums())
@_SETTINGS
def test_einsum_drawn(case):
    equation, shapes = case
    inputs = [_data(s, i) for i, s in enumerate(shapes)]
    ours = agree("Einsum", {"equation": equation}, inputs, ort=False)
    close(ours, np.einsum(equation, *[x.astype(np.float64) for x in inputs]))


@pytest.mark.parametrize("equation, shapes, message", [
    ("ij,jk->ik", [(3, 4)], "2 operand terms for 1 inputs"),
    ("ij,jk->ik", [(3, 4, 1), (4, 5)], "term 0 'ij' names 2 axes of input 0, which has 3"),
    ("ij,jk->ik", [(3, 4), (5, 6)], "label 'j' has 4 elements in one operand and 5 in input 1"),
    ("ij,jk->iz", [(3, 4), (4, 5)], "output label 'z' is in no operand"),
    ("ij,jk->ii", [(3, 4), (4, 5)], "repeats a label"),
    ("i1,jk", [(3, 4), (4, 5)], "'1' in term 0"),
    ("ij->j->i", [(3, 4)], "more than one '->'"),
    ("...ij->ij", [(2, 3, 4)], "the operands have an ellipsis and the output does not"),
    ("i......", [(2, 3)], "more than one ellipsis"),
])
def test_einsum_refusals(equation, shapes, message):
    with pytest.raises(ModelFormatError, match=f"Einsum: equation '{equation}'.*" + message.replace("(", r"\(")):
        run_op("Einsum", {"equation": equation}, [_data(s) for s in shapes])


def test_einsum_intermediate_bounded(monkeypatch):
    """An intermediate product is bounded as a tensor is (here with the bound lowered to 100:
    any pair of 'ab,bc,ca' gives 11 x 11 = 121 elements before the third operand sums them)."""
    monkeypatch.setattr(linear, "MAX_PARAMETERS", 100)
    with pytest.raises(ModelFormatError, match="an intermediate product of 121 elements"):
        run_op("Einsum", {"equation": "ab,bc,ca->"}, [_data((11, 11)), _data((11, 11)), _data((11, 11))])


def test_every_op_has_a_reference_and_a_time_rule():
    from grurt.reference_ops import linear as references
    names = [name for name, op in REGISTRY.items() if op.run.__module__ == "grurt.ops.linear"
             or getattr(op.prepare, "__module__", None) == "grurt.ops.linear"]
    assert sorted(names) == sorted(references.REFERENCE)
    for name in names:
        assert REGISTRY[name].time is not None or REGISTRY[name].time_of is not None, name


def test_time_rules():
    def rule(op, attrs, shapes, time_axis):
        attrs = check_attributes(REGISTRY[op], attrs, op)
        return time_rule(REGISTRY[op], attrs, [Value(s, np.dtype(np.float32)) for s in shapes], time_axis)

    assert rule("MatMul", {}, [(1, 7, 4), (4, 5)], 1) == "step"
    assert rule("MatMul", {}, [(1, 7, 4), (4,)], 1) == "step"
    assert rule("MatMul", {}, [(1, 4, 7), (7, 5)], 2) == "sequence"
    assert rule("MatMul", {}, [(7, 4), (2, 4, 5)], 0) == "sequence"     # batch dims moved it
    assert rule("Gemm", {}, [(7, 4), (4, 5)], 0) == "step"
    assert rule("Gemm", {"transA": 1}, [(4, 7), (4, 5)], 1) == "sequence"
    assert rule("Einsum", {"equation": "btc,cd->btd"}, [(1, 7, 4), (4, 5)], 1) == "step"
    assert rule("Einsum", {"equation": "btc,cd->bdt"}, [(1, 7, 4), (4, 5)], 1) == "sequence"
    assert rule("Einsum", {"equation": "btc,btd->bcd"}, [(1, 7, 4), (1, 7, 5)], 1) == "sequence"
