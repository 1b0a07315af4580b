"""The ``grurt.Chain`` op (grurt.ops.chain): a chain of fused layers as one node of a tensor graph.

Oracles: ``grurt.Model`` of the same ModelSpec (the same kernels: ``np.array_equal``), grurt's float64
reference (``grurt.reference.run_tensor_graph``, ``ATOL``) and PyTorch (``ATOL``).
"""
from __future__ import annotations

import numpy as np
import pytest

import grurt
from grurt import spec
from grurt.errors import InputError, ModelFormatError, UnsupportedModelError
from grurt.reference import run_tensor_graph
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.tensor_model import TensorModel

from tolerances import ATOL

rng = np.random.default_rng(20)


def _f32(*shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def gru(I, H, direction="forward", lbr=False, return_sequences=True, learned=False):
    D = 2 if direction == "bidirectional" else 1
    return spec.GRU(_f32(D, 3 * H, I), _f32(D, 3 * H, H), _f32(D, 6 * H, scale=0.1), direction=direction,
                    linear_before_reset=lbr, return_sequences=return_sequences,
                    initial_state=_f32(D, H) if learned else None)


def dense(I, units, activation="linear"):
    return spec.Dense(_f32(units, I), _f32(units, scale=0.1), activation=spec.activation(activation))


def chain_graph(layers, ids=False, features=None, states=0, lengths=False, state_outputs=None, **attrs):
    """A TensorGraph of one Chain node: inputs x (and lengths, and ``states`` initial states), outputs y and the
    final states (``state_outputs`` of them; default: as many as GRU layers)."""
    grus = sum(isinstance(layer, spec.GRU) for layer in layers)
    state_outputs = grus if state_outputs is None else state_outputs
    inputs = [TensorInput("x", "int64", ("batch", "time")) if ids else
              TensorInput("x", "float32", ("batch", "time", features or _input_size(layers)))]
    names = ["x", "lengths" if lengths else ""]
    if lengths:
        inputs.append(TensorInput("lengths", "int64", ("batch",)))
    for k in range(states):
        layer = [layer for layer in layers if isinstance(layer, spec.GRU)][k]
        inputs.append(TensorInput(f"h{k}", "float32", (layer.num_directions, "batch", layer.hidden_size)))
        names.append(f"h{k}")
    outputs = ["y"] + [f"hn{k}" for k in range(state_outputs)]
    node = TensorNode("grurt.Chain", tuple(names), tuple(outputs), {"layers": tuple(layers), **attrs}, "chain")
    return TensorGraph(tuple(inputs), (node,), tuple(outputs))


def _input_size(layers):
    first = layers[0]
    return first.in_channels if isinstance(first, spec.Conv1D) else first.input_size


def test_one_chain_node_gives_the_models_bits_and_the_references_values():
    layers = (gru(5, 7), gru(7, 6, lbr=True), dense(6, 3, "tanh"))
    graph = chain_graph(layers)
    x = _f32(3, 9, 5, scale=1)
    y, h0, h1 = TensorModel(graph).run(x)
    model = grurt.Model.chain(layers)
    y_model, (m0, m1) = model.run(x, return_state=True)
    assert np.array_equal(y, y_model) and np.array_equal(h0, m0) and np.array_equal(h1, m1)
    for ours, ref in zip((y, h0, h1), run_tensor_graph(graph, x)):
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_initial_states_and_lengths_give_the_models_bits():
    layers = (gru(4, 5), gru(5, 6, direction="bidirectional"), dense(12, 2))
    graph = chain_graph(layers, states=2, lengths=True)
    x = _f32(3, 7, 4, scale=1)
    h = [_f32(1, 3, 5), _f32(2, 3, 6)]
    lengths = np.array([7, 3, 5])
    y, *hn = TensorModel(graph).run([x, lengths] + h)
    y_model, hm = grurt.Model.chain(layers).run(x, initial_state=h, return_state=True, lengths=lengths)
    assert np.array_equal(y, y_model) and all(np.array_equal(a, b) for a, b in zip(hn, hm))
    for ours, ref in zip([y] + hn, run_tensor_graph(graph, [x, lengths] + h)):
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_a_chain_the_modelspec_refuses_is_named():
    with pytest.raises(ModelFormatError, match="node 'chain'.*expects 6 input features"):
        chain_graph((gru(4, 5), dense(6, 2)))
    with pytest.raises(ModelFormatError, match="node 'chain'.*layers of grurt.Chain must be a tuple of 1 to 1024 grurt.spec layers"):
        TensorGraph((TensorInput("x", "float32", ("b", "t", 3)),),
                    (TensorNode("grurt.Chain", ("x",), ("y",), {"layers": ("GRU",)}, "chain"),), ("y",))
    with pytest.raises(ModelFormatError, match="node 'chain'.*takes 1 to 2 outputs, got 3"):
        chain_graph((gru(4, 5), dense(5, 2)), state_outputs=2)


def _check_against_model(layers, x, graph=None, threads=1, **model_kwargs):
    """The Chain node's outputs are the Model's bits, and within ATOL of the float64 reference."""
    graph = graph or chain_graph(layers, ids=x.dtype.kind == "i", features=model_kwargs.get("input_size"),
                                 **{k: v for k, v in model_kwargs.items() if k != "input_size"})
    outputs = TensorModel(graph).run(x, threads=threads)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    model = grurt.Model.chain(layers, **model_kwargs)
    y, states = model.run(x, return_state=True)
    for ours, theirs in zip(outputs, [y] + list(states)):
        assert np.array_equal(ours, theirs)
    for ours, ref in zip(outputs, run_tensor_graph(graph, x)):
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    return outputs


def test_token_ids_and_ids_outside_the_vocabulary():
    table = spec.Embedding(_f32(11, 4, scale=1))
    layers = (table, gru(4, 5), dense(5, 3, "softmax"))
    _check_against_model(layers, rng.integers(0, 11, (3, 6)))
    with pytest.raises(InputError, match="node 'chain'.*token id 11 is outside the vocabulary"):
        TensorModel(chain_graph(layers, ids=True)).run(np.array([[1, 11]]))


def test_learned_initial_state_bidirectional_and_two_threads_give_the_same_bits():
    layers = (gru(4, 6, learned=True), gru(6, 5, direction="bidirectional", learned=True), dense(10, 2))
    x = _f32(5, 8, 4, scale=1)
    one = _check_against_model(layers, x)
    two = _check_against_model(layers, x, threads=2)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("padding", [(2, 0), (1, 1), "same_upper"])
def test_conv1d_front_ends(padding):
    conv = spec.Conv1D(_f32(6, 3, 3), _f32(6, scale=0.1), padding=padding, activation=spec.activation("relu"))
    layers = (conv, gru(6, 5), spec.LayerNorm(np.ones(5, np.float32), np.zeros(5, np.float32)), dense(5, 2))
    _check_against_model(layers, _f32(2, 9, 3, scale=1))


def test_a_masked_chain_and_its_last_step():
    layers = (gru(3, 4), gru(4, 5, return_sequences=False), dense(5, 2))
    x = _f32(3, 6, 3, scale=1)
    x[0, 4:] = 0            # trailing padding
    x[1, 2] = 0             # a hole: the masked runner
    _check_against_model(layers, x, mask_value=0.0)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_reduced_weights_give_the_models_bits(mode):
    layers = (gru(4, 8), gru(8, 6, lbr=True), dense(6, 3))
    x = _f32(2, 7, 4, scale=1)
    ours = TensorModel(chain_graph(layers)).with_weights(mode).run(x)
    y, states = grurt.Model.chain(layers).with_weights(mode).run(x, return_state=True)
    assert all(np.array_equal(a, b) for a, b in zip(ours, [y] + states))
    assert not np.array_equal(ours[0], TensorModel(chain_graph(layers)).run(x)[0])


def test_against_pytorch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net_gru, net_fc = torch.nn.GRU(5, 8, num_layers=1, batch_first=True), torch.nn.Linear(8, 3)
    layers = (grurt.layers.GRU.from_torch(*(p.detach().numpy() for p in net_gru.parameters())),
              grurt.layers.Dense.from_torch(net_fc.weight.detach().numpy(), net_fc.bias.detach().numpy()))
    x = _f32(2, 10, 5, scale=1)
    h0 = _f32(1, 2, 8)
    y, h = TensorModel(chain_graph(layers, states=1)).run([x, h0])
    with torch.no_grad():
        seq, h_torch = net_gru(torch.from_numpy(x), torch.from_numpy(h0))
        y_torch = net_fc(seq)
    np.testing.assert_allclose(y, y_torch.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(h, h_torch.numpy(), atol=ATOL, rtol=0)


def test_lengths_out_of_range_are_named():
    graph = chain_graph((gru(3, 4),), lengths=True)
    with pytest.raises(InputError, match="node 'chain'.*lengths must be between 1 and 5"):
        TensorModel(graph).run([_f32(2, 5, 3), np.array([5, 6])])


# ---- streaming ----

def _streaming_chain():
    conv = spec.Conv1D(_f32(5, 4, 3), _f32(5, scale=0.1), dilation=2, padding=(4, 0))
    return (conv, gru(5, 6, learned=True), gru(6, 4, lbr=True), dense(4, 3))


def test_streaming_steps_blocks_pools_and_the_kernels_stream():
    layers = _streaming_chain()
    model = TensorModel(chain_graph(layers))
    x = _f32(2, 11, 4, scale=1)
    y = model.run(x)[0]
    stream = model.stream(batch=2)
    assert len(stream.state) == 3          # two GRU states, a Conv1D history
    steps = np.stack([stream.step(x[:, t])[0] for t in range(11)], axis=1)
    np.testing.assert_allclose(steps, y, atol=ATOL, rtol=0)      # step == run on the prefix
    # the kernels' own stream of the same Model: the same bits
    kernels = grurt.Model.chain(layers).stream(batch=2)
    assert np.array_equal(steps, np.stack([kernels.step(x[:, t]) for t in range(11)], axis=1))
    stream.reset()
    blocks = np.concatenate([stream.run(x[:, :4])[0], stream.run(x[:, 4:5])[0], stream.run(x[:, 5:])[0]], axis=1)
    assert np.array_equal(blocks, steps)
    pool = model.stream_pool(3)
    a, b = pool.open(), pool.open()
    pooled = np.stack([pool.step([b, a], x[::-1, t])[0] for t in range(11)], axis=1)
    assert np.array_equal(pooled[::-1], steps)


def test_a_chain_ending_in_its_last_step_streams_each_frame_its_own_last_step():
    """A chain ending in a LastStep streams as the kernels' Stream streams it: a step gives the head of the states after
    that frame (the same bits), a block what the last of its frames gives, as run() on the frames so far (ATOL)."""
    layers = _streaming_chain()[:3] + (spec.LastStep(), dense(4, 3))
    model = TensorModel(chain_graph(layers))
    x = _f32(2, 7, 4, scale=1)
    stream = model.stream(batch=2)
    steps = [stream.step(x[:, t])[0] for t in range(7)]
    kernels = grurt.Model.chain(layers).stream(batch=2)
    assert all(np.array_equal(a, kernels.step(x[:, t])) for t, a in enumerate(steps))
    for t in (0, 6):
        np.testing.assert_allclose(steps[t], model.run(x[:, :t + 1])[0], atol=ATOL, rtol=0)
    stream.reset()
    assert np.array_equal(stream.run(x[:, :5])[0], steps[4]) and np.array_equal(stream.run(x[:, 5:])[0], steps[6])


@pytest.mark.parametrize("layers, why", [
    ((gru(3, 4, direction="bidirectional"),), "bidirectional GRU"),
    ((gru(3, 4), spec.GlobalPool("average")), "needs the whole sequence"),
    ((spec.Conv1D(_f32(4, 3, 3), _f32(4), padding=(1, 1)), gru(4, 4)), "looks ahead"),
    ((gru(3, 4), spec.Reverse()), "needs the whole sequence"),
])
def test_chains_that_cannot_stream_are_refused_by_name(layers, why):
    with pytest.raises(UnsupportedModelError, match=f"node 'chain'.*{why}"):
        TensorModel(chain_graph(layers, features=3)).stream()


def test_a_chain_given_lengths_is_refused_by_name():
    model = TensorModel(chain_graph((gru(3, 4),), lengths=True))
    with pytest.raises(UnsupportedModelError, match="node 'chain'.*lengths end each sequence"):
        model.stream(time_axes={"x": 1}, static={"lengths": np.array([3])})


# ---- format 3.0, pickling ----

@pytest.mark.parametrize("mode", ["float32", "bf16"])
def test_save_load_and_pickle_keep_the_bits(tmp_path, mode):
    import pickle

    layers = (spec.Embedding(_f32(9, 4)),) + (gru(4, 6, learned=True), dense(6, 2))
    model = TensorModel(chain_graph(layers, ids=True)).with_weights(mode)
    grurt.save(model, tmp_path / "chain.npz")
    loaded = grurt.load(tmp_path / "chain.npz")
    ids = rng.integers(0, 9, (2, 5))
    assert loaded.weights == mode
    for got in (loaded.run(ids), pickle.loads(pickle.dumps(model)).run(ids)):
        assert all(np.array_equal(a, b) for a, b in zip(got, model.run(ids)))


def _rewrite(path, target, edit):
    """Copy the npz at ``path`` to ``target`` with ``edit(header, arrays)`` applied."""
    import json

    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(str(arrays.pop("header")))
    edit(header, arrays)
    np.savez(target, header=np.array(json.dumps(header)), **arrays)
    return target


@pytest.mark.parametrize("edit, message", [
    (lambda h, a: h["nodes"][0]["attrs"]["layers"]["layers"][0].update(hidden_size=2**30),
     "more than 268435456 parameters"),
    (lambda h, a: h["nodes"][0]["attrs"]["layers"]["layers"][0].update(hidden_size=2**31),
     "positive integer below 2\\*\\*31"),
    (lambda h, a: a.update({"attribute.0.0.W": np.zeros((1, 18, 5), np.float32)}), "has shape \\(1, 18, 5\\)"),
    (lambda h, a: a.update({"attribute.0.1.b": np.zeros(2, np.int64)}), "has dtype int64"),
    (lambda h, a: a.pop("attribute.0.0.R"), "array 'attribute.0.0.R' is missing"),
    (lambda h, a: h["nodes"][0]["attrs"]["layers"].update(arrays="constant.0"), "'arrays' must name a prefix"),
    (lambda h, a: h["nodes"][0]["attrs"]["layers"].update(input_size=7), "expected|expects"),
    (lambda h, a: h["nodes"][0]["attrs"]["layers"]["layers"][0].update(weights="bf16"), "missing|dtype"),
    (lambda h, a: h["nodes"][0]["attrs"]["layers"].update(layers=[]), "a list of 1 to 1024 layers"),
])
def test_hostile_chain_files_are_refused(tmp_path, edit, message):
    layers = (gru(4, 6), dense(6, 2))
    grurt.save(TensorModel(chain_graph(layers)), tmp_path / "chain.npz")
    bad = _rewrite(tmp_path / "chain.npz", tmp_path / "bad.npz", edit)
    with pytest.raises(ModelFormatError, match=message):
        grurt.load(bad)
