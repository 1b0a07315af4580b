"""Reduced-precision (bf16, int8) products, without torch: they also run under emulation on
aarch64 (.ci/aarch64 runs them on a CPU with BFDOT/SDOT and on one without). The kernels
against the float64 reference of the rounded weights, on the fastest path of this CPU and on
the portable widening one; and exactness where it is claimed: a sequence alone as in its batch,
threads as one thread, a stream of a batch as a stream per sequence. (tests/test_lowp.py holds
the budgets against PyTorch, files and the API.)"""
import numpy as np
import pytest

import grurt
from grurt import _kernels, reference
from grurt.precision import reduced_spec
from grurt.spec import ModelSpec

from gru_testing import random_gru
from tolerances import ATOL, LOWP_BUDGETS

MODES = ("bf16", "int8")


def _limit(mode, path):
    """Widening multiplies exactly the stored weights: float32 accuracy against the reference of
    the rounded model. The dot path rounds x too: within the budget."""
    return LOWP_BUDGETS[mode] if path == "best" and _kernels.lowp_paths()[mode] == "dot" else ATOL


def _model(mode, lbr, direction="forward"):
    """Two layers: 13 and 37 inputs (odd: a padded bf16 pair, a partial int8 group), 37 and 70
    units (2 and 3 panels per gate set; bidirectional: 74 inputs to the second)."""
    rng = np.random.default_rng(21)
    D = 2 if direction == "bidirectional" else 1
    spec = ModelSpec(13, (random_gru(rng, 13, 37, direction=direction, linear_before_reset=lbr),
                          random_gru(rng, 37 * D, 70, linear_before_reset=lbr)))
    return spec, grurt.Model(spec, mode)


@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("mode", MODES)
def test_against_reference_of_rounded_weights(lbr, direction, mode, lowp_path):
    spec, model = _model(mode, lbr, direction)
    x = np.random.default_rng(22).standard_normal((7, 19, 13)).astype(np.float32)
    lengths = np.array([19, 1, 12, 19, 5, 19, 8])
    got = model.run(x, lengths=lengths)
    want = reference.run(reduced_spec(spec, mode), x, lengths=lengths)
    assert np.abs(got - want).max() <= _limit(mode, lowp_path)
    # 7 rows go through tiles of several rows and the one-row kernel: a sequence alone gets the
    # numbers it gets in the batch, and so does a batch split over threads
    for b in (0, 4, 6):
        assert np.array_equal(model.run(x[b:b + 1, :lengths[b]]), got[b:b + 1, :lengths[b]])
    assert np.array_equal(model.run(x, lengths=lengths, threads=2), got)


@pytest.mark.parametrize("mode", MODES)
def test_stream_of_a_batch_equals_streams_alone(mode, lowp_path):
    spec, model = _model(mode, True)
    frames = np.random.default_rng(23).standard_normal((4, 12, 13)).astype(np.float32)
    stream = model.stream(batch=4)
    together = np.stack([stream.step(frames[:, t]) for t in range(12)], axis=1)
    for b in range(4):
        alone = model.stream()
        assert np.array_equal(np.stack([alone.step(f) for f in frames[b]]), together[b])
    # a run sums R's products in the other order every second step (GRURT_K): not bit for bit
    assert np.abs(together - model.run(frames)).max() <= ATOL
    assert np.abs(together - reference.run(reduced_spec(spec, mode), frames)).max() <= _limit(mode, lowp_path)
