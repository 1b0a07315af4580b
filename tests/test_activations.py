"""The C activations against float64, through real models.

src/grurt/_gru_math.h documents (measured over [-20, 20]):
    grurt_exp  relative error < 3e-7
    sigmoid    absolute error < 2.5e-7
    tanh       absolute error < 5e-7
These tests measure the functions over a dense float32 grid of [-20, 20] (4e6 + 1 points,
spacing 1e-5) through a one-layer model (an Activation layer runs grurt_activate on the whole
array) and through the fused sigmoid/tanh gate pass of a GRU, plus the extremes ±88, ±1e4,
±inf and NaN. The bounds asserted are the documented ones, not loosened.
"""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt import reference
from grurt.spec import GRU, Activation, ModelSpec, activation

GRID = np.linspace(-20.0, 20.0, 4_000_001).astype(np.float32)
EXTREMES = np.array([-np.inf, -1e30, -1e4, -100.0, -89.0, -88.0, -87.5, -87.0, -20.0, -1e-30, -0.0, 0.0,
                     1e-30, 20.0, 87.0, 87.5, 88.0, 89.0, 100.0, 1e4, 1e30, np.inf], np.float32)


def run_activation(kind, x, alpha=None, beta=None):
    """The function applied by grurt's C code to float32 x (any shape), as float64."""
    x = np.asarray(x, np.float32)
    model = grurt.Model(ModelSpec(1, (Activation(activation(kind, alpha, beta)),)))
    return model.run(x.reshape(1, -1, 1)).reshape(x.shape).astype(np.float64)


def exact(kind, x, alpha=None, beta=None):
    """The float64 value at the float32 points x."""
    x64 = np.asarray(x, np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        return reference.apply_activation(activation(kind, alpha, beta), x64)


# ---- documented bounds -------------------------------------------------------------------

def test_sigmoid_absolute_error():
    error = np.abs(run_activation("sigmoid", GRID) - exact("sigmoid", GRID))
    assert error.max() < 2.5e-7, f"sigmoid: max abs error {error.max():.3g} at x = {GRID[error.argmax()]}"


def test_tanh_absolute_error():
    error = np.abs(run_activation("tanh", GRID) - exact("tanh", GRID))
    assert error.max() < 5e-7, f"tanh: max abs error {error.max():.3g} at x = {GRID[error.argmax()]}"


def test_exp_relative_error():
    """grurt_exp (used by softplus and elu, on x <= 0 only) is not exposed on its own; it is
    recovered in float64 from softplus(x) = log1p(exp(x)): exp(t) = expm1(softplus(t)) for t in
    [-20, 0] (relative error amplified by log1p(e)(1+e)/e <= 1.39, plus log1pf's ulp). So the
    recovered error is exp's own plus about two float32 roundings: the documented 3e-7 must hold."""
    x = GRID[GRID <= 0]
    exp_negative = np.expm1(run_activation("softplus", x))
    rel_negative = np.abs(exp_negative / np.exp(x.astype(np.float64)) - 1.0)
    assert rel_negative.max() < 3e-7, f"exp(t), t in [-20, 0]: max rel error {rel_negative.max():.3g}"


def _fused_gate_model(gate_weight, gate_bias, candidate_weight):
    """A 1-unit GRU with linear_before_reset=1, sigmoid/tanh and no clip (the fused fast gate
    pass): z = sigmoid(gate_weight·x + gate_bias), n = tanh(candidate_weight·x) and R = 0."""
    W = np.array([[[gate_weight], [0.0], [candidate_weight]]])
    B = np.zeros((1, 6))
    B[0, 0] = gate_bias
    return grurt.Model(ModelSpec(1, (GRU(W=W, R=np.zeros((1, 3, 1)), B=B, linear_before_reset=True),)))


@pytest.mark.parametrize("function", ["sigmoid", "tanh"])
def test_fused_gate_pass_functions(function):
    """The same bounds inside the fused GRU gate loop (compiled separately, possibly with other
    vector code). Each point is its own sequence of one step:
      sigmoid: n = tanh(0) = 0 and h0 = 1, so h1 = n + z(h0 - n) = z = sigmoid(x);
      tanh:    z = sigmoid(-88) ~ 6e-39 and h0 = 0, so h1 = n(1 - z) = n = tanh(x) in float32."""
    x = GRID[::20]                       # 200 001 points, 2e-4 apart
    if function == "sigmoid":
        model, h0 = _fused_gate_model(1.0, 0.0, 0.0), np.ones((1, x.size, 1), np.float32)
    else:
        model, h0 = _fused_gate_model(0.0, -88.0, 1.0), np.zeros((1, x.size, 1), np.float32)
    y = model.run(x.reshape(-1, 1, 1), initial_state=[h0]).reshape(-1).astype(np.float64)
    error = np.abs(y - exact(function, x))
    bound = {"sigmoid": 2.5e-7, "tanh": 5e-7}[function]
    assert error.max() < bound, f"{function} in the gate pass: max abs error {error.max():.3g}"


# ---- the other elementwise functions (bounds not documented: float32 rounding level) -------

@pytest.mark.parametrize("kind, alpha, beta, atol, rtol", [
    ("softsign", None, None, 0.0, 2.5e-7),
    ("softplus", None, None, 0.0, 2.5e-7),      # relative: softplus(20) = 20 is O(10)
    ("elu", 1.0, None, 1e-7, 0.0),              # absolute: expm1 by exp(x) - 1 loses relative accuracy near 0
    ("elu", 0.3, None, 1e-7, 0.0),
    ("scaled_tanh", 1.7159, 0.6667, 1.7159 * 5e-7, 0.0),   # alpha times the documented tanh bound
    ("hard_sigmoid", 0.2, 0.5, 6e-8, 0.0),
    ("hard_sigmoid", 1 / 6, 0.5, 6e-8, 0.0),
    ("leaky_relu", 0.01, None, 0.0, 6e-8),       # one float32 product: half an ulp
    ("relu", None, None, 0.0, 0.0),
    ("affine", 0.5, -0.25, 3e-8, 1.2e-7),      # a product and a sum
    ("thresholded_relu", 1.0, None, 0.0, 0.0),
    ("linear", None, None, 0.0, 0.0),
])
def test_other_functions(kind, alpha, beta, atol, rtol):
    error = np.abs(run_activation(kind, GRID, alpha, beta) - exact(kind, GRID, alpha, beta))
    limit = atol + rtol * np.abs(exact(kind, GRID, alpha, beta))
    worst = np.argmax(error - limit)
    assert np.all(error <= limit), f"{kind}: error {error[worst]:.3g} at x = {GRID[worst]} (limit {limit[worst]:.3g})"


def test_gate_functions_stay_in_range():
    """A gate above 1 or below 0 would make h' = n + z(h - n) extrapolate."""
    for kind in ("sigmoid", "hard_sigmoid"):
        y = run_activation(kind, np.concatenate([GRID, EXTREMES]))
        assert y.min() >= 0.0 and y.max() <= 1.0, kind
    for kind in ("tanh", "softsign"):
        y = run_activation(kind, np.concatenate([GRID, EXTREMES[np.isfinite(EXTREMES)]]))
        assert y.min() >= -1.0 and y.max() <= 1.0, kind


# ---- extremes --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, alpha, beta", [
    ("sigmoid", None, None), ("tanh", None, None), ("softplus", None, None), ("elu", 1.0, None),
    ("scaled_tanh", 1.7159, 0.6667), ("hard_sigmoid", 0.2, 0.5), ("relu", None, None),
    ("leaky_relu", 0.01, None), ("affine", 0.5, -0.25), ("thresholded_relu", 1.0, None),
])
def test_extremes(kind, alpha, beta):
    """±88, ±1e4, ±1e30, ±inf: within 2e-7 absolute or 3e-7 relative of the float64 value
    (exact where it saturates)."""
    got = run_activation(kind, EXTREMES, alpha, beta)
    want = exact(kind, EXTREMES, alpha, beta)
    with np.errstate(invalid="ignore"):
        same_inf = np.isinf(want) & (got == want)
        close = np.abs(got - want) <= 2e-7 + 3e-7 * np.abs(want)
    ok = same_inf | close
    assert ok.all(), f"{kind}: {[(float(x), g, w) for x, g, w in zip(EXTREMES[~ok], got[~ok], want[~ok])]}"


def test_saturation_values():
    assert np.array_equal(run_activation("sigmoid", [88, 1e4, np.inf]), [1.0, 1.0, 1.0])
    assert np.all(run_activation("sigmoid", [-88, -1e4, -np.inf]) <= 1e-38)
    assert np.array_equal(run_activation("tanh", [20, 88, 1e4, np.inf, -20, -88, -1e4, -np.inf]),
                          [1, 1, 1, 1, -1, -1, -1, -1])
    assert np.array_equal(run_activation("softplus", [1e4, np.inf]), [1e4, np.inf])
    assert np.all(run_activation("softplus", [-88, -1e4, -np.inf]) <= 1e-37)
    assert np.array_equal(run_activation("elu", [-1e4, -np.inf], 0.5), [-0.5, -0.5])


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "softplus", "elu", "softsign", "scaled_tanh", "hard_sigmoid",
                                  "relu", "leaky_relu", "affine", "linear"])
def test_nan_propagates(kind):
    x = np.array([0.5, np.nan, -0.5, np.nan, 100.0], np.float32)
    y = run_activation(kind, x)
    assert np.array_equal(np.isnan(y), np.isnan(x)), f"{kind}: {y}"


def test_thresholded_relu_of_nan_is_zero():
    """x if x > alpha else 0: NaN > alpha is false, so 0 (as ONNX ThresholdedRelu and
    torch.nn.Threshold define it), the reference agrees."""
    y = run_activation("thresholded_relu", [np.nan, 2.0, 0.5], 1.0)
    assert np.array_equal(y, [0.0, 2.0, 0.0])
    assert np.array_equal(exact("thresholded_relu", [np.nan, 2.0, 0.5], 1.0), [0.0, 2.0, 0.0])


def test_softmax_extremes():
    def softmax(rows):
        rows = np.asarray(rows, np.float32)
        model = grurt.Model(ModelSpec(rows.shape[-1], (Activation(activation("softmax")),)))
        return model.run(rows[None])[0].astype(np.float64)

    y = softmax([[1e4, 0.0, -1e4], [88.0, 88.0, 88.0], [-1e30, -1e30, 0.0], [3.0, 1.0, 0.2]])
    e = np.exp(np.array([3.0, 1.0, 0.2]) - 3.0)
    assert np.allclose(y[:3], [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]], rtol=0, atol=1e-7)
    assert np.allclose(y[3], e / e.sum(), rtol=0, atol=1e-7)
    # NaN anywhere in a row: that row is NaN (as torch.softmax), other rows untouched
    y = softmax([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]])
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


def test_layer_sigmoid_and_elu_keep_relative_accuracy():
    """Outside the fused gate pass sigmoid is a probability: relative error < 3e-7 in its tail
    (flushed to 0 where exp underflows, x < -87), and elu keeps relative accuracy near 0."""
    x = np.linspace(-80.0, 20.0, 1_000_001).astype(np.float32)
    want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))      # exact() cancels in the far tail
    assert np.max(np.abs(run_activation("sigmoid", x) / want - 1.0)) < 3e-7
    near_zero = np.linspace(-0.2, 0.0, 200_001)[:-1].astype(np.float32)
    got = run_activation("elu", near_zero, 1.0)
    assert np.max(np.abs(got / exact("elu", near_zero, 1.0) - 1.0)) < 2e-6
