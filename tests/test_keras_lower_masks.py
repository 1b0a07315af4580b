"""Masks on the lowered Keras path (issue 21; grurt.importers.keras.lower): ``Masking`` and
``Embedding(mask_zero=True)`` before GRUs (``grurt.MaskedGRU``), Attention, AdditiveAttention,
MultiHeadAttention (padding masks with and without the causal mask), GlobalAveragePooling1D, merges
and the layers that pass a mask on, with masked steps at the start, the end, in between, everywhere or
nowhere (hypothesis draws the patterns). Each model against Keras 3 ``predict`` (from the live model
and from its ``.keras`` file) and against grurt's float64 reference of the lowered graph, ATOL at
every output (NaN where Keras gives NaN: an average over no valid step). The fused path's own mask
zoo (tests/test_keras_masking.py) is lowered too and held to the same oracle."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Layer .* does not support masking:UserWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")]

import grurt  # noqa: E402
from grurt.importers.keras import _live_triple  # noqa: E402
from grurt.importers.keras.lower import lower_keras  # noqa: E402
from grurt.reference import run_tensor_graph  # noqa: E402
from grurt.tensor_model import TensorModel  # noqa: E402
from keras_testing import as_tuple, saved_files  # noqa: E402
from test_keras_masking import BATCH, FEATURES, PATTERN, STEPS, VOCABULARY  # noqa: E402
from test_keras_masking import MODELS as FUSED_MODELS  # noqa: E402
from mask_testing import masks  # noqa: E402
from test_keras_masking import inputs, randomize  # noqa: E402
from tolerances import ATOL  # noqa: E402


# ---- models beyond the fused layers ----

def embedded():
    ids = keras.Input((STEPS,), dtype="int32", name="ids")
    return ids, layers.Embedding(VOCABULARY, 6, mask_zero=True, name="emb")(ids)


def masked_features(name="x"):
    x = keras.Input((STEPS, FEATURES), name=name)
    return x, layers.Masking(0.0, name=f"{name}_mask")(x)


def bigru_mha():
    """The issue's model: Embedding(mask_zero) → BiGRU → MultiHeadAttention → GlobalAveragePooling1D → Dense."""
    ids, e = embedded()
    g = layers.Bidirectional(layers.GRU(5, return_sequences=True), name="bi")(e)
    a = layers.MultiHeadAttention(2, 3, name="mha")(g, g)
    return keras.Model(ids, layers.Dense(2, name="out")(layers.GlobalAveragePooling1D(name="avg")(a)))


def bigru_attention():
    ids, e = embedded()
    g = layers.Bidirectional(layers.GRU(5, return_sequences=True), name="bi")(e)
    a = layers.Attention(use_scale=True, name="att")([g, g])
    return keras.Model(ids, layers.Dense(2, name="out")(layers.GlobalAveragePooling1D(name="avg")(a)))


def bigru_additive():
    ids, e = embedded()
    g = layers.Bidirectional(layers.GRU(5, return_sequences=True), merge_mode="sum", name="bi")(e)
    a = layers.AdditiveAttention(name="att")([g, g])
    return keras.Model(ids, layers.Dense(2, name="out")(layers.GlobalAveragePooling1D(name="avg")(a)))


def sequences():
    """Every step's value (masked steps too): causal attention over a masked GRU's sequence, a
    causal MultiHeadAttention with its scores (Keras's softmax path: zero weights where hidden),
    concat-score Attention with a key, and a GRU after attention (it reads the mask attention
    passes on)."""
    x, m = masked_features()
    g = layers.GRU(4, return_sequences=True, name="g")(m)
    additive, weights = layers.AdditiveAttention(name="additive")([g, g], use_causal_mask=True,
                                                                  return_attention_scores=True)
    h = layers.GRU(4, return_sequences=True, go_backwards=True, name="h")(m)
    mha, scores = layers.MultiHeadAttention(2, 2, name="mha")(h, h, use_causal_mask=True,
                                                               return_attention_scores=True)
    concat = layers.Attention(score_mode="concat", name="concat")([g, m, g])
    after = layers.GRU(3, return_sequences=True, name="after")(layers.Dense(4, activation="tanh", name="d")(mha))
    return keras.Model(x, [layers.TimeDistributed(layers.Dense(2), name="td")(additive), weights, after, scores,
                           concat])


def cross_attention():
    """Queries from token ids, values from a masked feature sequence (two masks): Attention, and
    MultiHeadAttention with a key of its own mask."""
    ids, e = embedded()
    x, m = masked_features()
    k_in = keras.Input((STEPS, FEATURES), name="k")
    k = layers.Masking(-1.0, name="k_mask")(k_in)
    q = layers.GRU(4, return_sequences=True, name="q")(e)
    v = layers.Bidirectional(layers.GRU(2, return_sequences=True), name="v")(m)
    luong = layers.Attention(name="luong")([q, v])
    # its own copies of q and v: Keras 3's MultiHeadAttention removes its inputs' masks when it runs
    mha = layers.MultiHeadAttention(2, 3, name="mha")(layers.Dense(4, name="qd")(q), layers.Dense(4, name="vd")(v),
                                                      key=layers.Dense(4, name="kd")(k))
    return keras.Model([ids, x, k_in], [
        layers.GlobalAveragePooling1D(name="avg")(luong), layers.GlobalAveragePooling1D(name="avg2")(mha)])


def merges():
    """Merges of masked sequences (Keras 3: masks ORed, none with an unmasked input; Maximum and
    Minimum take the other side's value at a masked step), pooled two ways."""
    x, m = masked_features()
    ids, e = embedded()
    a = layers.GRU(4, return_sequences=True, name="a")(m)
    b = layers.GRU(4, return_sequences=True, go_backwards=True, name="b")(e)
    c = layers.Attention(name="att")([a, b])
    biggest = layers.Maximum(name="max")([a, b, c])
    smallest = layers.Minimum(name="min")([a, layers.Dense(4, name="u")(x)])
    joined = layers.Concatenate(name="cat")([a, b])
    mean = layers.Average(name="avg")([a, b])
    return keras.Model([x, ids], [layers.GRU(2, return_sequences=True, name="after_max")(biggest),
                                  layers.GlobalAveragePooling1D(name="pool_min")(smallest),
                                  layers.GRU(3, name="after_cat")(joined),
                                  layers.GlobalAveragePooling1D(name="pool_avg")(mean),
                                  layers.GlobalMaxPooling1D(name="max_pool")(mean)])


def last_outputs():
    """GRUs returning their last output after masked attention: forward, backwards with
    zero_output_for_mask, Bidirectional mirrored (with states) and with a backward layer of its own."""
    x, m = masked_features()
    a = layers.MultiHeadAttention(1, 3, name="mha")(m, m)
    last = layers.GRU(3, name="last")(a)
    zeroed = layers.GRU(3, go_backwards=True, zero_output_for_mask=True, name="zeroed")(a)
    both, h_f, h_b = layers.Bidirectional(layers.GRU(2, return_state=True), name="bi")(a)
    own = layers.Bidirectional(layers.GRU(2, return_sequences=True), name="own",
                               backward_layer=layers.GRU(3, return_sequences=True, go_backwards=True))(a)
    return keras.Model(x, [last, zeroed, both, h_f, h_b, own])


def residual():
    """A transformer block over a masked BiGRU: x + MultiHeadAttention(x, x) (Keras 3's attention removes
    x's mask, so the sum has none), LayerNormalization, the mean of every step; and a dropout>0
    attention (Keras's softmax path) pooled over its query's mask."""
    ids, e = embedded()
    g = layers.Bidirectional(layers.GRU(3, return_sequences=True), name="bi")(e)
    a = layers.MultiHeadAttention(2, 3, name="mha")(g, g)
    block = layers.LayerNormalization(name="norm")(layers.Add(name="add")([g, a]))
    d = layers.Dense(6, name="d")(e)
    dropped = layers.MultiHeadAttention(2, 3, dropout=0.3, name="dropped")(d, d)
    return keras.Model(ids, [layers.GlobalAveragePooling1D(name="avg")(block),
                             layers.GlobalAveragePooling1D(name="avg2")(dropped)])


def by_hand():
    """Masks given by hand (keras.ops in the functional graph, which Keras 3 records and grurt lowers),
    one of them from a second input of per-step weights."""
    x = keras.Input((STEPS, FEATURES), name="x")
    weights = keras.Input((STEPS,), name="w")
    valid = keras.ops.any(keras.ops.not_equal(x, 0.0), axis=-1)
    g = layers.GRU(3, return_sequences=True, name="g")(x, mask=valid)
    heavy = keras.ops.logical_and(valid, keras.ops.greater(weights, -0.5))
    return keras.Model([x, weights], [layers.GlobalAveragePooling1D(name="avg")(g, mask=heavy),
                                      layers.GRU(2, go_backwards=True, name="back")(x, mask=valid)])


def nested():
    """A nested model called on a masked sequence: its layers read the mask (Keras hands it to the model's
    inputs), its output keeps it."""
    inner_in = keras.Input((STEPS, 6), name="inner_in")
    inner = keras.Model(inner_in, layers.GRU(3, return_sequences=True, name="g")(layers.Dense(6, name="d")(inner_in)),
                        name="inner")
    ids, e = embedded()
    h = inner(e)
    return keras.Model(ids, layers.GlobalAveragePooling1D(name="avg")(layers.Attention(name="att")([h, h])))


def parallel():
    """Branches beside a MultiHeadAttention that read its inputs (which it unmasks when it runs): Keras's
    order of execution (depth first, then its walk's order) decides which see the mask."""
    ids, e = embedded()
    g = layers.Bidirectional(layers.GRU(3, return_sequences=True), name="bi")(e)
    a = layers.MultiHeadAttention(2, 2, name="mha")(g, g, use_causal_mask=True)
    b = layers.AdditiveAttention(name="add_att")([layers.Dense(6, name="q")(g),
                                                  layers.Masking(0.5, name="m")(layers.Dense(6, name="v")(g))])
    c = layers.Attention(name="att")([g, g])
    top = layers.Maximum(name="max")([layers.Add(name="res")([g, a]), b])
    return keras.Model(ids, [layers.Dense(2, name="out")(layers.GlobalAveragePooling1D(name="avg")(top)), c,
                             layers.Attention(name="late")([layers.Dense(6, name="d")(a), g])])


MODELS = {"bigru_mha": bigru_mha, "bigru_attention": bigru_attention, "bigru_additive": bigru_additive,
          "sequences": sequences, "cross_attention": cross_attention, "merges": merges, "last_outputs": last_outputs,
          "residual": residual, "by_hand": by_hand, "nested": nested,
          "parallel": parallel}


def lowered(model):
    """The TensorModel of the model lowered onto ops (even where grurt's fused layers would run it)."""
    return TensorModel(lower_keras(*_live_triple(model)))


def model_inputs(model, valid, rng):
    """Inputs of ``model`` (token ids, masked feature sequences) with the steps where ``valid`` is False masked."""
    values = []
    for tensor in model.inputs:
        shape = (BATCH,) + tuple(tensor.shape[1:])
        if tensor.name == "w":
            values.append(rng.standard_normal((BATCH, STEPS)).astype(np.float32))
        elif "int" in str(tensor.dtype):
            values.append(np.where(valid, rng.integers(1, VOCABULARY, shape), 0).astype(np.int32))
        else:
            pad = -1.0 if tensor.name == "k" else 0.0
            x = rng.standard_normal(shape).astype(np.float32)
            values.append(np.where(np.roll(valid, 1, axis=0)[..., None] if tensor.name == "k" else valid[..., None],
                                   x, np.float32(pad)))
    return values if len(values) > 1 else values[0]


#: Outputs that are attention weights (B, Tq, Tk), by model: at a masked query that sees no valid key,
#: Keras's float32 scores − 1e9 all round to −1e9 (uniform weights), which grurt's float32 graph
#: reproduces and its float64 reference, keeping the scores' differences, does not: the reference is
#: compared at the valid queries there.
QUERY_ROWS = {"sequences": (1,)}


def assert_keras(converted, model, x, valid=None, query_rows=()):
    """grurt's outputs (and the float64 reference of its graph) against ``model.predict``; the max error."""
    expected = as_tuple(model.predict(x, verbose=0))
    got = as_tuple(converted.run(x))
    refs = as_tuple(run_tensor_graph(converted.graph, x))
    worst = 0.0
    assert len(got) == len(expected)
    for k, (out, ref, want) in enumerate(zip(got, refs, expected)):
        assert out.shape == want.shape
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        np.testing.assert_allclose(out, want, rtol=0, atol=ATOL)
        rows = valid if k in query_rows else slice(None)
        np.testing.assert_allclose(ref[rows], want[rows], rtol=0, atol=ATOL)
        if np.isfinite(want).any():
            worst = max(worst, float(np.nanmax(np.abs(out - want))))
    return worst


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (Keras model, its lowered TensorModel, {"keras": path, "h5": path})."""
    rng = np.random.default_rng(2121)
    folder = tmp_path_factory.mktemp("keras_lower_masks")
    out = {}
    for name, build in MODELS.items():
        model = build()
        randomize(model, rng)
        out[name] = model, lowered(model), saved_files(model, folder, name)
    return out


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid=masks(BATCH, STEPS), seed=st.integers(0, 2**16))
def test_drawn_masks_match_keras(zoo, name, valid, seed):
    model, converted, _ = zoo[name]
    assert_keras(converted, model, model_inputs(model, valid, np.random.default_rng(seed)), valid,
                 QUERY_ROWS.get(name, ()))


@pytest.mark.parametrize("name", list(MODELS))
def test_from_keras_and_files_match_keras(zoo, name):
    """from_keras(model) and grurt.load of its .keras and .h5 files (lowered: attention is beyond the fused
    layers) on the pattern of every kind of row: leading, trailing, interior, none and all masked."""
    model, _, files = zoo[name]
    x = model_inputs(model, PATTERN, np.random.default_rng(7))
    for converted in (grurt.from_keras(model), grurt.load(files["keras"]), grurt.load(files["h5"])):
        assert isinstance(converted, TensorModel)
        assert_keras(converted, model, x, PATTERN, QUERY_ROWS.get(name, ()))


def test_masked_gru_nodes(zoo):
    """A GRU reading a mask is one grurt.MaskedGRU node (bidirectional when Keras's pair mirrors), and
    Keras's recorded mask operations (not_equal, any) are not in the graph."""
    ops = [node.op for node in zoo["bigru_mha"][1].graph.nodes]
    assert ops.count("grurt.MaskedGRU") == 1 and "GRU" not in ops
    bidirectional = [node for node in zoo["bigru_mha"][1].graph.nodes if node.op == "grurt.MaskedGRU"]
    assert bidirectional[0].attrs["direction"] == "bidirectional"
    own = [node.attrs for node in zoo["last_outputs"][1].graph.nodes if node.name.startswith("own/")
           and node.op == "grurt.MaskedGRU"]
    assert [(a["direction"], a["masked_output"]) for a in own] == [("forward", "zeros"), ("reverse", "zeros")]


@pytest.mark.parametrize("name", list(FUSED_MODELS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid=masks(BATCH, STEPS), seed=st.integers(0, 2**16))
def test_fused_zoo_lowered_matches_keras(name, valid, seed, fused_zoo):
    """The fused path's mask zoo (Sequential and functional, Masking and mask_zero, GRUs in every
    direction, initial states, merges, pooling), lowered onto ops instead: the same values as Keras."""
    model, converted = fused_zoo[name]
    x = inputs(name, model, valid, np.random.default_rng(seed))
    assert_keras(converted, model, x)


@pytest.fixture(scope="module")
def fused_zoo():
    rng = np.random.default_rng(2101)
    out = {}
    for name, build in FUSED_MODELS.items():
        model = build()
        randomize(model, rng)
        out[name] = model, lowered(model)
    return out


def test_max_errors(zoo, fused_zoo):
    """Every model on the all-kinds pattern: the max error against Keras (printed for the report)."""
    worst = {}
    for name, (model, converted, _) in zoo.items():
        worst[name] = assert_keras(converted, model, model_inputs(model, PATTERN, np.random.default_rng(11)), PATTERN,
                                   QUERY_ROWS.get(name, ()))
    for name, (model, converted) in fused_zoo.items():
        worst[f"fused zoo {name}"] = assert_keras(converted, model, inputs(name, model, PATTERN,
                                                                           np.random.default_rng(11)))
    print("max |grurt - keras|:", {k: f"{v:.2e}" for k, v in worst.items()})
    assert max(worst.values()) <= ATOL


# ---- what stays refused, named ----

def refused(model, match):
    with pytest.raises(grurt.UnsupportedModelError, match=match):
        lowered(model)


def test_refusals_name_the_layer_and_why():
    x, m = masked_features()
    g = layers.GRU(3, return_sequences=True, name="g")(m)
    refused(keras.Model(x, layers.Softmax(name="sm")(g)), r"layer 'sm' \(Softmax\): reads a masked sequence")
    refused(keras.Model(x, layers.Concatenate(axis=1, name="cat")([g, g])),
            r"layer 'cat' \(Concatenate\): concatenates masked sequences along axis 1")
    attention_mask = keras.Input((STEPS, STEPS), dtype="bool", name="am")
    mha = layers.MultiHeadAttention(1, 2, name="mha")(g, g, attention_mask=attention_mask)
    refused(keras.Model([x, attention_mask], mha), r"layer 'mha' \(MultiHeadAttention\): attention_mask= given by "
                                                   "hand is not supported")


def test_time_distributed_of_a_mask_reader_is_refused():
    ids = keras.Input((STEPS,), dtype="int32", name="ids")
    e = layers.Embedding(VOCABULARY, 6, mask_zero=True, name="emb")(ids)
    folded = layers.TimeDistributed(layers.Dense(4), name="ok")(e)
    model = keras.Model(ids, layers.Reshape((STEPS, 2, 2))(folded))
    assert isinstance(lowered(model), TensorModel)
    wrapped = {"class_name": "GRU", "config": {"name": "inner", "units": 2}}
    config, weights, version = _live_triple(model)
    for layer in config["config"]["layers"]:
        if layer["name"] == "ok":
            layer["config"]["layer"] = wrapped
    with pytest.raises(grurt.UnsupportedModelError, match=r"layer 'ok' \(TimeDistributed\): wraps GRU, which reads a "
                                                          "mask, on a masked sequence"):
        lower_keras(config, weights, version)


def test_keras_2_attention_masks_are_refused():
    model = bigru_attention()
    config, weights, _ = _live_triple(model)
    with pytest.raises(grurt.UnsupportedModelError, match=r"layer 'att' \(Attention\): masked inputs to attention "
                                                          "in a Keras 2 model"):
        lower_keras(config, weights, "2.15.0")
