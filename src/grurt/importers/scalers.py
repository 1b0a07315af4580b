"""Fitted scikit-learn scalers → :class:`~grurt.spec.Scale` layers at a model's ends.

scikit-learn is not imported: a scaler is read through its fitted attributes.

=================  ============================================  ===============================
scaler             ``transform(x)``                              as ``x·a + c``
=================  ============================================  ===============================
MinMaxScaler       ``x·scale_ + min_`` (``clip=True`` refused)   a = scale_, c = min_
StandardScaler     ``(x − mean_) / scale_`` (mean 0 without      a = 1/scale_, c = −mean_/scale_
                   ``with_mean``, scale 1 without ``with_std``)
=================  ============================================  ===============================

``inverse_transform`` is ``(x − c) / a``, folded at the output end.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..spec import ModelSpec, Scale

def scaler_affine(scaler, inverse: bool = False):
    """A fitted MinMaxScaler or StandardScaler as ``x·a + c``: its ``transform``, or
    ``inverse_transform`` when ``inverse``. Returns float64 arrays (a, c)."""
    kinds = {cls.__name__ for cls in type(scaler).__mro__}
    if not {"MinMaxScaler", "StandardScaler"} & kinds:
        raise UnsupportedModelError(
            f"unsupported scaler {type(scaler).__name__}; grurt folds MinMaxScaler and StandardScaler")
    if not hasattr(scaler, "n_features_in_"):
        raise ModelFormatError(f"{type(scaler).__name__} is not fitted")
    n = scaler.n_features_in_
    if "MinMaxScaler" in kinds:
        if getattr(scaler, "clip", False):
            raise UnsupportedModelError("MinMaxScaler(clip=True) cannot be folded into a linear layer")
        a, c = np.asarray(scaler.scale_, np.float64), np.asarray(scaler.min_, np.float64)   # x·scale_ + min_
    else:
        # (x − mean_) / scale_; mean_ is set but unused when with_mean is off
        scale = np.asarray(scaler.scale_, np.float64) if scaler.with_std else np.ones(n)
        mean = np.asarray(scaler.mean_, np.float64) if scaler.with_mean else np.zeros(n)
        a, c = 1.0 / scale, -mean / scale
    return (1.0 / a, -c / a) if inverse else (a, c)


def with_scalers(spec: ModelSpec, input_scaler=None, output_scaler=None) -> ModelSpec:
    """Fold scalers into ``spec``: raw input → scaled at the front, scaled → real units at the end."""
    layers = list(spec.layers)
    if input_scaler is not None:
        if spec.takes_ids:
            raise UnsupportedModelError("input_scaler cannot be folded into a model that takes token ids")
        if spec.mask_value is not None:  # the mask compares scaled values, the input would be raw
            raise UnsupportedModelError("input_scaler cannot be folded into a model with Masking")
        a, c = scaler_affine(input_scaler)
        if a.shape != (spec.input_size,):
            raise ModelFormatError(f"input_scaler was fitted on {a.size} features, "
                                   f"the model takes {spec.input_size}")
        layers.insert(0, Scale(a, c))
    if output_scaler is not None:
        a, c = scaler_affine(output_scaler, inverse=True)
        if a.shape != (spec.output_size,):
            raise ModelFormatError(f"output_scaler was fitted on {a.size} features, "
                                   f"the model outputs {spec.output_size}")
        layers.append(Scale(a, c))
    return ModelSpec(spec.input_size, tuple(layers), mask_value=spec.mask_value)
