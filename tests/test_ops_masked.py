"""grurt's own op grurt.MaskedGRU (grurt.ops.masked): the ONNX GRU skipping the steps a (B, T) mask
marks, wherever they are. Against its float64 reference (grurt.reference_ops.masked, step by step) on
hypothesis-drawn masks (leading, trailing, interior, all, none), and against onnxruntime's ONNX GRU
with ``sequence_lens`` where the mask is trailing padding (the one case ONNX states): ATOL
(tests/tolerances.py). Keras's masked GRUs, which it runs, are tested in tests/test_keras_lower_masks.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grurt.errors import ModelFormatError, UnsupportedModelError
from grurt.ops import REGISTRY
from op_testing import reference_op, run_op
from test_ops_recurrent import ort_gru
from mask_testing import masks  # noqa: E402
from tolerances import ATOL

T, B, I, H = 7, 4, 3, 5
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def weights(rng, D):
    return [rng.standard_normal(shape).astype(np.float32) * 0.6 for shape in ((D, 3 * H, I), (D, 3 * H, H),
                                                                              (D, 6 * H))]




@settings(max_examples=25, deadline=None)
@given(mask=masks(B, T), direction=st.sampled_from(list(DIRECTIONS)), zeros=st.booleans(), seeded=st.booleans(),
       lbr=st.integers(0, 1), seed=st.integers(0, 2**16))
def test_matches_the_float64_reference(mask, direction, zeros, seeded, lbr, seed):
    rng = np.random.default_rng(seed)
    D = DIRECTIONS[direction]
    attrs = {"hidden_size": H, "direction": direction, "linear_before_reset": lbr,
             "masked_output": "zeros" if zeros or D == 2 else "previous"}
    inputs = [rng.standard_normal((B, T, I)).astype(np.float32), *weights(rng, D), mask]
    if seeded:
        inputs.append(rng.standard_normal((B, D, H)).astype(np.float32))
    for got, want in zip(run_op("grurt.MaskedGRU", attrs, inputs), reference_op("grurt.MaskedGRU", attrs, inputs)):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_trailing_padding_is_onnx_sequence_lens(direction):
    """A mask of trailing padding skips what ONNX's sequence_lens skips: Y zero past each length
    (masked_output 'zeros'), Y_h the state at its last step."""
    rng = np.random.default_rng(4)
    D = DIRECTIONS[direction]
    lengths = np.array([T, 1, 4, 6])
    mask = np.arange(T) < lengths[:, None]
    x, h0 = rng.standard_normal((B, T, I)).astype(np.float32), rng.standard_normal((B, D, H)).astype(np.float32)
    W, R, Bias = weights(rng, D)
    y, y_h = run_op("grurt.MaskedGRU", {"hidden_size": H, "direction": direction, "masked_output": "zeros"},
                    [x, W, R, Bias, mask, h0])
    ort_y, ort_h = ort_gru({"hidden_size": H, "direction": direction},
                           [x.transpose(1, 0, 2), W, R, Bias, lengths.astype(np.int64), h0.transpose(1, 0, 2)])
    np.testing.assert_allclose(y, ort_y.transpose(2, 0, 1, 3), rtol=0, atol=ATOL)       # (T, D, B, H) → (B, T, D, H)
    np.testing.assert_allclose(y_h, ort_h.transpose(1, 0, 2), rtol=0, atol=ATOL)


def test_bad_masks_are_named():
    rng = np.random.default_rng(1)
    x, (W, R, Bias) = rng.standard_normal((B, T, I)).astype(np.float32), weights(rng, 1)
    with pytest.raises(ModelFormatError, match=r"mask must be a \(4, 7\) bool tensor for X \(4, 7, 3\), got "
                                                r"float32 \(4, 7\)"):
        run_op("grurt.MaskedGRU", {"hidden_size": H}, [x, W, R, Bias, np.ones((B, T), np.float32)])
    with pytest.raises(ModelFormatError, match=r"mask must be a \(4, 7\) bool tensor"):
        run_op("grurt.MaskedGRU", {"hidden_size": H}, [x, W, R, Bias, np.ones((B, T + 1), bool)])
    W2, R2, B2 = weights(rng, 2)
    with pytest.raises(UnsupportedModelError, match="masked_output must be 'zeros'"):
        run_op("grurt.MaskedGRU", {"hidden_size": H, "direction": "bidirectional"},
               [x, W2, R2, B2, np.ones((B, T), bool)])
    with pytest.raises(ModelFormatError, match="attribute masked_output of grurt.MaskedGRU: must be one of"):
        run_op("grurt.MaskedGRU", {"hidden_size": H, "masked_output": "last"}, [x, W, R, Bias, np.ones((B, T), bool)])


def test_every_op_has_a_reference():
    from grurt.reference_ops import masked as references
    names = [name for name, op in REGISTRY.items() if op.run.__module__ == "grurt.ops.masked"]
    assert sorted(names) == sorted(references.REFERENCE) == ["grurt.MaskedGRU"]
    assert REGISTRY["grurt.MaskedGRU"].time == "sequence"
