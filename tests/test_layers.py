"""Merge and mask_value: kernels vs the reference, validation, the .npz round trip."""
import numpy as np
import pytest

import grurt
from grurt.spec import Dense, LastStep, Merge, ModelSpec

from gru_testing import assert_matches_reference, random_gru


@pytest.mark.parametrize("mode", ["sum", "ave", "mul"])
@pytest.mark.parametrize("sequence", [True, False])
def test_merge_matches_reference(mode, sequence):
    rng = np.random.default_rng(len(mode))
    gru = random_gru(rng, 3, 9, direction="bidirectional", return_sequences=sequence)
    model = grurt.Model(ModelSpec(3, (gru, Merge(mode), Dense(rng.normal(size=(2, 9)), np.ones(2)))))
    assert model.output_size == 2
    x = rng.normal(size=(5, 11, 3)).astype(np.float32)
    assert_matches_reference(model, x)                                   # ≤ 1e-5
    half = model.run(x, return_state=True)[1][0]                          # (2, B, H) final states
    if not sequence:
        first, second = half[0], half[1]
        expected = {"sum": first + second, "ave": (first + second) / 2, "mul": first * second}[mode]
        dense = model.layers[2]
        assert np.abs(model.run(x) - (expected @ dense.W.T + dense.b)).max() <= 1e-5


def test_merge_validation():
    with pytest.raises(grurt.UnsupportedModelError, match="mode 'max'"):
        Merge("max")
    rng = np.random.default_rng(0)
    with pytest.raises(grurt.ModelFormatError, match="even number of features, receives 5"):
        ModelSpec(3, (random_gru(rng, 3, 5), Merge("sum")))


def test_mask_value_derives_lengths():
    rng = np.random.default_rng(1)
    spec = ModelSpec(2, (random_gru(rng, 2, 6), LastStep()), mask_value=0.0)
    model = grurt.Model(spec)
    x = rng.normal(size=(3, 8, 2)).astype(np.float32)
    lengths = np.array([8, 2, 5])
    for b, n in enumerate(lengths):
        x[b, n:] = 0.0
    x[2, 1, 0] = 0.0               # one zero feature is not a masked step: the other is not zero
    assert np.array_equal(model.run(x), model.run(x, lengths=lengths))
    assert_matches_reference(model, x)
    # an entirely masked sequence keeps its zero state, as Keras (issue 21: any mask pattern runs)
    empty = np.concatenate([x[:1], np.zeros((1, 8, 2), np.float32)])
    assert not model.run(empty)[1].any()
    assert_matches_reference(model, empty)
    with pytest.raises(grurt.ModelFormatError, match="mask_value must be a number from"):
        ModelSpec(2, spec.layers, mask_value=float("nan"))


def test_merge_and_mask_survive_the_npz_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    spec = ModelSpec(4, (random_gru(rng, 4, 5, direction="bidirectional"), Merge("mul")), mask_value=-1.0)
    grurt.save(spec, tmp_path / "m.npz")
    loaded = grurt.load(tmp_path / "m.npz")
    assert loaded.spec.mask_value == -1.0
    assert isinstance(loaded.layers[1], Merge) and loaded.layers[1].mode == "mul"
    x = rng.normal(size=(2, 6, 4)).astype(np.float32)
    x[1, 4:] = -1.0
    assert np.array_equal(loaded.run(x), grurt.Model(spec).run(x))
