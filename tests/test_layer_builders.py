"""grurt.layers offers every canonical layer: the builders of the layers beyond GRU and Dense (Embedding,
Conv1D, BatchNorm, Pool1D, LayerNorm, UnitNorm) against PyTorch and Keras 3 (max abs difference ≤ ATOL)."""
import numpy as np
import pytest

import grurt
from grurt import layers, spec
from grurt.layers import (GRU, Activation, BatchNorm, Conv1D, Dense, Embedding, LastStep, LayerNorm, Pool1D,
                          UnitNorm, activation)
from grurt.timelayers import TIME_LAYERS

from tolerances import ATOL


def test_every_canonical_layer_is_in_grurt_layers():
    """Every canonical layer type can be built from grurt.layers alone, from canonical arrays."""
    L = layers
    built = [L.GRU(np.zeros((1, 3, 2)), np.zeros((1, 3, 1)), np.zeros((1, 6))), L.Dense(np.ones((2, 3)), np.zeros(2)),
             L.Activation(L.activation("relu")), L.Scale(np.ones(2), np.zeros(2)), L.Reverse(), L.LastStep(),
             L.Merge("sum"), L.Embedding(np.ones((4, 2))), L.LayerNorm(np.ones(3), np.zeros(3)), L.UnitNorm(),
             L.GlobalPool("max"), L.Flatten(4), L.Conv1D(np.ones((2, 3, 1)), np.zeros(2)), L.Pool1D("max", 2, 2),
             L.ZeroPad1D(1, 0)]
    kinds = tuple(set(spec.LAYER_TYPES + TIME_LAYERS))
    assert sorted(type(layer).__name__ for layer in built) == sorted(kind.__name__ for kind in kinds)
    assert all(type(layer) in kinds for layer in built)
    assert {kind.__name__ for kind in kinds} <= set(layers.__all__)


def test_torch_layer_builders_match_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    emb, conv = torch.nn.Embedding(20, 6), torch.nn.Conv1d(6, 8, 3, padding=1)
    bn, pool, ln = torch.nn.BatchNorm1d(8), torch.nn.MaxPool1d(2), torch.nn.LayerNorm(8)
    gru, fc = torch.nn.GRU(8, 5, batch_first=True), torch.nn.Linear(5, 3)
    with torch.no_grad():                        # running statistics other than 0 and 1
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1), ln.weight.uniform_(0.5, 2), ln.bias.uniform_(-1, 1)
    ids = np.random.default_rng(0).integers(0, 20, (3, 11))
    with torch.no_grad():
        x = torch.relu(bn.eval()(conv(emb(torch.from_numpy(ids)).transpose(1, 2))))
        x = ln(pool(x).transpose(1, 2))
        want = torch.nn.functional.normalize(fc(gru(x)[0][:, -1]), dim=-1).numpy()
    p = dict(gru.named_parameters())
    model = grurt.Model.chain([
        Embedding.from_torch(emb.weight), Conv1D.from_torch(conv.weight, conv.bias, padding=1),
        BatchNorm.from_torch(bn.running_mean, bn.running_var, bn.weight, bn.bias), Activation(activation("relu")),
        Pool1D.from_torch("max", 2), LayerNorm.from_torch(ln.weight, ln.bias),
        GRU.from_torch(p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]), LastStep(),
        Dense.from_torch(fc.weight, fc.bias), UnitNorm.from_torch()])
    assert np.abs(model.run(ids) - want).max() <= ATOL


def test_torch_conv_builder_paddings():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    x = np.random.default_rng(1).standard_normal((2, 9, 4)).astype(np.float32)
    for padding, dilation in (("same", 2), ("valid", 1), ("causal", 2)):
        conv = torch.nn.Conv1d(4, 4, 3, padding=padding if padding != "causal" else 0, dilation=dilation, groups=2)
        with torch.no_grad():
            xt = torch.from_numpy(x).transpose(1, 2)
            if padding == "causal":
                xt = torch.nn.functional.pad(xt, (2 * dilation, 0))
            want = torch.tanh(conv(xt)).transpose(1, 2).numpy()
        layer = Conv1D.from_torch(conv.weight, conv.bias, padding=padding, dilation=dilation, groups=2,
                                  activation="tanh")
        assert np.abs(grurt.Model.chain([layer]).run(x) - want).max() <= ATOL
        assert layer.causal == (padding == "causal")
    with pytest.raises(grurt.ModelFormatError, match="Conv1D.from_torch.*padding"):
        Conv1D.from_torch(np.ones((2, 2, 3)), padding="full")


def test_keras_layer_builders_match_keras():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"), keras.layers.Embedding(20, 6),
        keras.layers.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu"),
        keras.layers.BatchNormalization(), keras.layers.AveragePooling1D(2, padding="same"),
        keras.layers.LayerNormalization(), keras.layers.UnitNormalization(), keras.layers.GRU(5)])
    bn = model.layers[2]
    bn.set_weights([w + np.random.default_rng(i).uniform(0.5, 1.5, w.shape) for i, w in enumerate(bn.get_weights())])
    ln = model.layers[4]
    ln.set_weights([np.random.default_rng(9).uniform(0.5, 2, w.shape) for w in ln.get_weights()])
    ids = np.random.default_rng(2).integers(0, 20, (3, 11))
    want = np.asarray(model.predict(ids, verbose=0))
    w = [layer.get_weights() for layer in model.layers]
    gru = model.layers[6]
    chain = grurt.Model.chain([
        Embedding.from_keras(w[0][0]),
        Conv1D.from_keras(*w[1], padding="causal", dilation_rate=2, activation="relu"),
        BatchNorm.from_keras(*w[2], epsilon=bn.epsilon), Pool1D.from_keras("average", 2, padding="same"),
        LayerNorm.from_keras(*w[4], epsilon=ln.epsilon), UnitNorm.from_keras(keras.__version__),
        GRU.from_keras(*w[6], return_sequences=False), ])
    assert gru.reset_after
    assert np.abs(chain.run(ids) - want).max() <= ATOL


def test_builder_errors_name_the_builder():
    with pytest.raises(grurt.ModelFormatError, match=r"^Conv1D.from_keras: kernel must be 3-D"):
        Conv1D.from_keras(np.ones((3, 4)))
    with pytest.raises(grurt.ModelFormatError, match=r"^Conv1D.from_keras: bias has shape \(3,\), expected \(2,\)"):
        Conv1D.from_keras(np.ones((3, 4, 2)), np.ones(3))
    with pytest.raises(grurt.UnsupportedModelError, match=r"^Pool1D.from_keras: padding='causal'"):
        Pool1D.from_keras("max", 2, padding="causal")
    with pytest.raises(grurt.ModelFormatError, match="running_var has negative values"):
        BatchNorm.from_torch(np.zeros(3), -np.ones(3))
    with pytest.raises(grurt.ModelFormatError, match=r"^LayerNorm.from_keras: weight 1 has shape"):
        LayerNorm.from_keras(np.ones(3), np.ones(4))
