"""_conv2d.h's row paths: a depthwise Conv's rows of 16 outputs or more computed into y a vector at a time (the last
one overlapping, `grurt_c2_depthwise`), and a ConvTranspose's taps summed in a register per 16 outputs of a row (the
last Wo % 16 a tap at a time, `grurt_ct_row_taps`). Within ATOL (tests/tolerances.py) of the float64 reference, and
the same bits (np.array_equal) with the native executor on and off, on 1 and 2 threads: W10's shapes (64 channels,
(1, 3), column stride 2) at 1 and 20 frames, and shapes of few channels (not a multiple of 16) whose rows end in a
partial vector, with row strides, pads and dilations."""
import numpy as np
import pytest

from grurt.tensor_graph import TensorGraph, TensorInput
from test_tensor_native import _f32, assert_near_reference, assert_same_bits, node

CASES = [  # (x shape, W shape, attributes)
    ((1, 64, 1, 8), (64, 1, 1, 3), {"group": 64, "strides": [1, 2], "pads": [0, 1, 0, 1], "output_padding": [0, 1]}),
    ((1, 64, 20, 8), (64, 1, 1, 3), {"group": 64, "strides": [1, 2], "pads": [0, 1, 0, 1], "output_padding": [0, 1]}),
    ((1, 64, 20, 16), (64, 1, 1, 3), {"group": 64, "strides": [1, 2], "pads": [0, 1, 0, 1], "output_padding": [0, 1]}),
    ((1, 5, 20, 11), (5, 1, 1, 3), {"group": 5, "strides": [1, 2], "pads": [0, 0, 0, 1]}),                # Wo 22
    ((2, 6, 7, 9), (6, 2, 3, 5), {"group": 3, "strides": [2, 2], "pads": [1, 1, 0, 0], "output_padding": [1, 1]}),
    ((1, 3, 1, 15), (3, 4, 2, 4), {"group": 3, "strides": [1, 2], "dilations": [2, 2], "pads": [1, 0, 0, 0]}),  # Wo 35
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_transpose_rows(x_shape, w_shape, attrs, threads):
    x = _f32(*x_shape)
    m = w_shape[1] * attrs.get("group", 1)
    graph = TensorGraph([TensorInput("x", "float32", x.shape)],
                        [node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=list(w_shape[2:]), **attrs),
                         node("Mul", ["y", "half"], ["z"])],       # a second step: a native run is two or more
                        ["y", "z"], {"w": _f32(*w_shape), "b": _f32(m), "half": np.array([0.5], np.float32)})
    got = assert_same_bits(graph, x, runs=1, threads=threads)
    assert got[0].shape[:2] == (x_shape[0], m)
    assert_near_reference(graph, x, got)


DEPTHWISE = [  # (x shape, W shape, attributes): rows of 16 outputs or more computed into y
    ((1, 64, 1, 32), (64, 1, 1, 3), {"group": 64, "strides": [1, 2], "pads": [0, 1, 0, 1]}),
    ((1, 64, 20, 32), (64, 1, 1, 3), {"group": 64, "strides": [1, 2], "pads": [0, 1, 0, 1]}),
    ((1, 64, 20, 16), (64, 1, 1, 3), {"group": 64, "pads": [0, 1, 0, 1]}),
    ((2, 5, 9, 23), (5, 1, 3, 3), {"group": 5, "strides": [2, 1], "pads": [1, 1, 0, 0], "dilations": [1, 2]}),  # Wo 20
    ((1, 3, 20, 45), (3, 1, 2, 5), {"group": 3, "strides": [1, 2], "pads": [1, 2, 0, 1]}),                    # Wo 22
    ((1, 3, 20, 12), (3, 1, 1, 3), {"group": 3, "pads": [0, 1, 0, 1]}),                # Wo 12: the flat plane, copied
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", DEPTHWISE)
@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_rows(x_shape, w_shape, attrs, threads):
    x = _f32(*x_shape)
    graph = TensorGraph([TensorInput("x", "float32", x.shape)],
                        [node("Conv", ["x", "w", "b"], ["c"], kernel_shape=list(w_shape[2:]), **attrs),
                         node("Relu", ["c"], ["y"]), node("Mul", ["y", "half"], ["z"])],
                        ["y", "z"], {"w": _f32(*w_shape), "b": _f32(w_shape[0]), "half": np.array([0.5], np.float32)})
    got = assert_same_bits(graph, x, runs=1, threads=threads)
    assert got[0].shape[:2] == (x_shape[0], w_shape[0])
    assert_near_reference(graph, x, got)
