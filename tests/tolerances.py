"""The test suite's tolerances, stated once.

Every float32 output or state of grurt is held to ``ATOL`` (max abs difference) against an
independent oracle: grurt's float64 numpy reference (``grurt.reference.run``), PyTorch,
Keras 3 or onnxruntime. Claims of exactness (batch independence, threads, round trips,
streaming a block vs frame by frame) are asserted with ``np.array_equal``, not a tolerance.
"""

#: float32 kernels vs an oracle: about 100 float32 ulps of an O(1) value (the design's budget).
ATOL = 1e-5

#: reduced-precision weights (bf16, int8): max abs error of a model's output against PyTorch
#: float32, or against the reference of the rounded weights on a dot path (which rounds x too);
#: max abs error of bf16/int8 weights against float32 (README, Accuracy)
LOWP_BUDGETS = {"bf16": 5e-3, "int8": 2e-2}
