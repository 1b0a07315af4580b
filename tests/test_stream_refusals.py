"""What ``TensorModel.stream()`` says when a node cannot stream: the node, why (what it reads from the whole
sequence) and what to do. Each message is matched in full enough to pin all three."""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt import spec
from grurt.errors import UnsupportedModelError
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_model import TensorModel

rng = np.random.default_rng(9)


def _f32(*shape):
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


def _refused(model, message, **options):
    with pytest.raises(UnsupportedModelError, match=message) as info:
        model.stream(**options)
    return str(info.value)


def test_a_keras_masked_gru_says_why_and_what_streams_instead():
    keras = pytest.importorskip("keras")
    layers = keras.layers
    x = keras.Input((None, 4), name="x")
    g = layers.GRU(3, return_sequences=True, name="g")(layers.Masking(name="m")(x))
    converted = grurt.from_keras(keras.Model(x, layers.Attention(name="att")([g, g])))
    assert isinstance(converted, TensorModel)
    message = _refused(converted, r"node 'g/grurt.MaskedGRU' \(grurt.MaskedGRU\): its mask \(input '[^']+'\) picks "
                       r"the steps it reads anywhere in the sequence .*; this model cannot stream: use run\(\) on "
                       r"whole padded sequences with their mask; to stream, step only each sequence's real frames "
                       r"through the model converted without its mask \(Keras: without the Masking layer, or with "
                       r"Embedding\(mask_zero=False\)\)", batch=1)
    assert "mixes the frames" not in message


def _gru_graph(lengths=False, direction="forward"):
    D = 2 if direction == "bidirectional" else 1
    inputs = [TensorInput("x", "float32", ("batch", "time", 2))]
    names = ["x", "W", "R", "B"]
    if lengths:
        inputs.append(TensorInput("lens", "int64", ("batch",)))
        names.append("lens")
    node = TensorNode("GRU", tuple(names), ("y",), {"hidden_size": 4, "direction": direction, "layout": 1}, "gru")
    return TensorGraph(tuple(inputs), (node,), ("y",), {"W": _f32(D, 12, 2), "R": _f32(D, 12, 4),
                                                        "B": _f32(D, 24)})


def test_a_gru_with_sequence_lens_says_what_streams():
    _refused(TensorModel(_gru_graph(lengths=True)),
             r"node 'gru' \(GRU\): sequence_lens ends each sequence at its own step \(input 'lens'\), and a stream "
             r"runs every frame of every sequence; this model cannot stream: use run\(\) on the whole padded batch, "
             r"or step each sequence's own frames through the model exported without sequence_lens",
             time_axes={"x": 1}, static={"lens": np.array([3])})
    _refused(TensorModel(_gru_graph(direction="reverse")),
             r"node 'gru' \(GRU\): a reverse GRU reads the sequence from its end; this model cannot stream: use run\(\) "
             r"on the whole sequence", time_axes={"x": 1})


def test_a_chain_with_mask_value_says_what_streams():
    layer = spec.GRU(_f32(1, 12, 3), _f32(1, 12, 4), _f32(1, 24))
    node = TensorNode("grurt.Chain", ("x",), ("y",), {"layers": (layer,), "mask_value": 0.0}, "chain")
    graph = TensorGraph((TensorInput("x", "float32", ("batch", "time", 3)),), (node,), ("y",))
    _refused(TensorModel(graph), r"node 'chain' \(grurt.Chain\): its mask_value makes each sequence's length depend "
             r"on its last frames; this model cannot stream: use run\(\) on whole padded sequences; to stream, step "
             r"only each sequence's real frames through the chain without mask_value")


@pytest.mark.parametrize("op, attrs, reads", [
    ("Softmax", {"axis": 1}, r"Softmax along time \(axis 1 of its input 'x'\) normalizes over every frame, later ones "
                             r"included"),
    ("LogSoftmax", {"axis": 1}, r"LogSoftmax along time \(axis 1 of its input 'x'\) normalizes over every frame, "
                                r"later ones included"),
    ("CumSum", {"reverse": 1}, r"CumSum along time \(axis 1 of its input 'x'\) sums from the last frame back "
                               r"\(reverse=1\)"),
])
def test_ops_that_mix_the_frames_say_what_they_read(op, attrs, reads):
    inputs = ("x", "axis") if op == "CumSum" else ("x",)
    constants = {"axis": np.array(1, np.int64)} if op == "CumSum" else {}
    graph = TensorGraph((TensorInput("x", "float32", ("batch", "time", 3)),),
                        (TensorNode(op, inputs, ("y",), attrs, "mix"),), ("y",), constants)
    _refused(TensorModel(graph), rf"node 'mix' \({op}\): mixes the frames along time: {reads}; this model cannot "
                                 r"stream: use run\(\) on the whole sequence")


def test_a_reduction_over_time_says_so():
    graph = TensorGraph((TensorInput("x", "float32", ("batch", "time", 3)),),
                        (TensorNode("ReduceMean", ("x",), ("m",), {"axes": (1,), "keepdims": 1}, "mean"),
                         TensorNode("Sub", ("x", "m"), ("y",), {}, "sub")), ("y",))
    _refused(TensorModel(graph), r"node 'mean' \(ReduceMean\): mixes the frames along time.*ReduceMean.*every frame"
                                 r".*; this model cannot stream: use run\(\) on the whole sequence")
