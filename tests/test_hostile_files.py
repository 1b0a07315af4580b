"""Hostile files (issue 24): one regression test per class an independent fuzzer found.

* **crash**: a chain ``.npz`` whose ZeroPad1D adds 2**31 − 1 frames segfaulted ``run``: each such
  case runs in a child process, which must exit normally with the GrurtError;
* **escapes**: huge JSON numbers, values past 32 bits for the planner, and malformed ONNX nodes
  raised OverflowError, AttributeError, KeyError: each site must raise the named GrurtError,
  with a message that names the field;
* **hangs**: a huge layer index in state-dict names, an ONNX Pad of 2**20 frames, long graphs:
  each refused or loaded within a bounded time, in a child with its memory capped;
* **memory**: sizes a call derives (frames after padding, a stream's batch) checked before they
  are allocated; ``MemoryError`` becomes an ``InputError`` naming the size and the limit; ``.pt``
  archive members whose declared sizes exceed the limits are refused before ``torch.load``.

The children run with ``RLIMIT_AS`` (address space) capped, so that an allocation a check should
have refused fails there instead of swapping the machine.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import grurt
from grurt import limits
from grurt.errors import InputError, ModelFormatError
from grurt.spec import GRU, Conv1D, Dense, ModelSpec, Pool1D, ZeroPad1D

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from meaning import patch_member  # noqa: E402    (the fuzzer's: a zip member's declared size)

#: Seconds a hostile file may take to be refused (or loaded) in a child, imports excluded.
HANG_SECONDS = 5.0
#: Address space of a child: its imports (numpy, grurt: ~300 MiB; torch: ~650 MiB) and room to work.
CHILD_MEMORY = 2 << 30

_CHILD = """
import json, resource, sys, time
if {memory}:
    resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
import numpy as np
import grurt
{imports}
start = time.process_time()    # CPU seconds: a loaded machine does not stretch them as it does wall time
try:
{body}
    outcome = {{"error": None}}
except grurt.GrurtError as exc:
    outcome = {{"error": type(exc).__name__, "message": str(exc)}}
outcome["seconds"] = time.process_time() - start
outcome["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(outcome))
"""


def in_child(body: str, memory: int = CHILD_MEMORY, imports: str = "", timeout: float = 120) -> dict:
    """Run ``body`` in a fresh Python with its address space capped at ``memory`` bytes; returns
    {"error": GrurtError class name or None, "message", "seconds" (CPU), "peak_mib"}. Any other exception,
    or a crash, fails the test with the child's stderr."""
    code = _CHILD.format(memory=memory, imports=imports, body=textwrap.indent(textwrap.dedent(body), "    "))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"the child died with exit code {proc.returncode}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def chain_npz(path, layers, input_size=1, arrays=None, **header):
    """A grurt .npz (format 1.1) with the given header layers and arrays, written by hand."""
    fields = {"format": "grurt", "format_version": "1.1", "producer": "test", "input_size": input_size,
              "layers": layers, **header}
    np.savez(path, header=np.array(json.dumps(fields)), **(arrays or {}))
    return str(path)


def refused(path, error=ModelFormatError):
    with pytest.raises(error) as info:
        grurt.load(path)
    return str(info.value)


# ---- the crash: a ZeroPad1D of 2**31 − 1 frames ----

@pytest.mark.parametrize("frames", [2**31 - 1, 2**30])
def test_zero_padding_of_2_31_frames_is_refused_in_a_child_that_survives(tmp_path, frames):
    path = chain_npz(tmp_path / "pad.npz", [{"type": "ZeroPad1D", "left": frames, "right": frames}])
    outcome = in_child(f"grurt.load({path!r}).run(np.zeros((1, 6, 1), np.float32))")
    assert outcome["error"] == "ModelFormatError"
    assert "ZeroPad1D: left" in outcome["message"] and "MAX_PADDING_FRAMES" in outcome["message"]


def test_padding_within_the_limits_runs_and_its_frames_count_in_the_size_check(tmp_path):
    """Padding at the limit: the frames it adds count in run's size check (C int frame counts
    beyond 2**31 were the crash), in a child whose memory is capped."""
    half = limits.MAX_PADDING_FRAMES // 2
    path = chain_npz(tmp_path / "pad.npz", [{"type": "ZeroPad1D", "left": half, "right": half}])
    outcome = in_child(f"""
        model = grurt.load({path!r})
        assert model.run(np.ones((1, 6, 1), np.float32)).shape == (1, 6 + 2 * {half}, 1)
        model.run(np.zeros((40000, 6, 1), np.float32))     # 40000 × 65542 frames > 2**31 - 1
    """)
    assert outcome["error"] == "InputError"
    assert "65536 frames its layers may add" in outcome["message"] and "MAX_TENSOR_ELEMENTS" in outcome["message"]


# ---- escapes: JSON numbers no float can hold ----

_HUGE = 10**400


def _id(value):
    """Short test ids: 10**400 as '10**400'."""
    if isinstance(value, int) and abs(value) > 2**64:
        return ("-" if value < 0 else "") + "10**400"
    return repr(value) if not isinstance(value, (dict, np.ndarray)) else type(value).__name__


@pytest.mark.parametrize("value", [_HUGE, -_HUGE, float("inf"), float("nan"), "1.0", True, [1.0]], ids=_id)
@pytest.mark.parametrize("where, layers, arrays, extra, field", [
    ("alpha", [{"type": "Activation", "function": {"kind": "leaky_relu", "alpha": None}}], {}, {}, "alpha"),
    ("beta", [{"type": "Activation", "function": {"kind": "affine", "beta": None}}], {}, {}, "beta"),
    ("LayerNorm", [{"type": "LayerNorm", "epsilon": None}],
     {"0.gamma": np.ones(1, np.float32), "0.beta": np.zeros(1, np.float32)}, {}, "epsilon"),
    ("UnitNorm", [{"type": "UnitNorm", "epsilon": None}], {}, {}, "epsilon"),
    ("mask_value", [{"type": "Activation", "function": "tanh"}], {}, {"mask_value": None}, "mask_value"),
], ids=["alpha", "beta", "LayerNorm", "UnitNorm", "mask_value"])
def test_a_number_no_float_holds_is_refused_naming_the_field(tmp_path, where, layers, arrays, extra, field, value):
    text = json.dumps(layers).replace("null", json.dumps(value))
    extra = {k: value for k in extra}
    path = chain_npz(tmp_path / "m.npz", json.loads(text), arrays=arrays, **extra)
    message = refused(path)
    assert f"{field} must be a number" in message, message


@pytest.mark.parametrize("mask_value", [3.4e38, 10, -1, 2.5])
def test_the_padding_id_of_a_model_that_takes_ids_is_in_its_vocabulary(tmp_path, mask_value):
    """Found by the fuzzer of meaning: mask_value 3.4e38 on a model that takes ids became a
    39-digit id, which run then handed to numpy (TypeError)."""
    layers = [{"type": "Embedding", "vocabulary": 10, "features": 2}, {"type": "GRU", "hidden_size": 1}]
    arrays = {"0.table": np.ones((10, 2), np.float32), "1.W": np.zeros((1, 3, 2), np.float32),
              "1.R": np.zeros((1, 3, 1), np.float32), "1.B": np.zeros((1, 6), np.float32)}
    message = refused(chain_npz(tmp_path / "m.npz", layers, input_size=None, arrays=arrays, mask_value=mask_value))
    assert "mask_value of a model that takes ids must be an integer id from 0 to 9" in message
    model = grurt.load(chain_npz(tmp_path / "ok.npz", layers, input_size=None, arrays=arrays, mask_value=0))
    assert model.run(np.array([[3, 4, 0, 0]])).shape == (1, 4, 1)


@pytest.mark.parametrize("value", [_HUGE, float("inf"), 3.5e38], ids=_id)
def test_a_masking_value_no_float32_holds_is_refused(value):
    from grurt.graph import Masking
    with pytest.raises(ModelFormatError, match=r"Masking: value must be a number from .* \(grurt.limits.MAX_FLOAT32\)"):
        Masking(value)


@pytest.mark.parametrize("value", [2.0, 1e39, -1e-9])
def test_epsilon_outside_its_range_is_refused(tmp_path, value):
    message = refused(chain_npz(tmp_path / "m.npz", [{"type": "UnitNorm", "epsilon": value}]))
    assert "UnitNorm: epsilon must be a number from 0 to 1 (grurt.limits.MAX_EPSILON)" in message


@pytest.mark.parametrize("value", [_HUGE, float("nan"), -1.0, 2.0], ids=_id)
def test_a_batch_normalisation_epsilon_outside_its_range_is_refused(value):
    """The fuzzer of meaning found a Keras BatchNormalization with epsilon 10**400 (OverflowError);
    every importer's batch normalisation goes through batchnorm_affine."""
    from grurt.importers.keras import batchnorm_affine
    with pytest.raises(ModelFormatError, match=r"batch normalisation: epsilon must be a number from 0 to 1 "
                                               r"\(grurt.limits.MAX_EPSILON\)"):
        batchnorm_affine(np.zeros(2), np.ones(2), value)


# ---- escapes: values past 32 bits for the planner ----

_CONV = {"0.W": np.ones((1, 1, 2), np.float32), "0.b": np.zeros(1, np.float32)}
_PAST = [2**31 - 1, 2**31, 2**63, _HUGE, -1, 1.5, "2"]          # and 0, except for padding


@pytest.mark.parametrize("layer, arrays, field, value", [
    (layer, arrays, field, value)
    for layer, arrays, field in [
        ({"type": "Flatten", "steps": None}, {}, "steps"),
        ({"type": "ZeroPad1D", "left": None}, {}, "left"),
        ({"type": "ZeroPad1D", "right": None}, {}, "right"),
        ({"type": "Conv1D", "out_channels": 1, "kernel_size": 2, "stride": None}, _CONV, "stride"),
        ({"type": "Conv1D", "out_channels": 1, "kernel_size": 2, "dilation": None}, _CONV, "dilation"),
        ({"type": "Pool1D", "mode": "max", "size": None}, {}, "size"),
        ({"type": "Pool1D", "mode": "max", "size": 2, "stride": None}, {}, "stride")]
    for value in _PAST + ([] if field in ("left", "right") else [0])],
    ids=lambda v: v["type"] if isinstance(v, dict) and "type" in v else _id(v))
def test_a_planner_value_past_its_limit_is_refused_naming_the_field(tmp_path, layer, arrays, field, value):
    layer = {k: (value if v is None else v) for k, v in layer.items()}
    message = refused(chain_npz(tmp_path / "m.npz", [layer], arrays=arrays))
    assert message.startswith("layer 0") and field in message, message


def test_a_conv_window_past_the_limit_is_refused():
    with pytest.raises(ModelFormatError, match=r"window of \(kernel_size - 1\)·dilation \+ 1 = 196609 frames .*"
                                               "MAX_WINDOW_FRAMES"):
        Conv1D(np.ones((1, 1, 4)), np.zeros(1), dilation=2**16)


def test_flatten_features_past_the_limit_are_refused(tmp_path):
    dense = {"0.W": np.zeros((512, 1), np.float32), "0.b": np.zeros(512, np.float32)}
    message = refused(chain_npz(tmp_path / "m.npz", [{"type": "Dense", "units": 512},
                                                     {"type": "Flatten", "steps": 2**16}], arrays=dense))
    assert "flattens 65536 steps of 512 features" in message and "MAX_FEATURES" in message


def test_the_padding_of_a_whole_model_is_bounded():
    layers = (ZeroPad1D(limits.MAX_PADDING_FRAMES, 0), ZeroPad1D(1, 0))
    with pytest.raises(ModelFormatError, match=r"add up to 65537 zero frames .*MAX_PADDING_FRAMES"):
        ModelSpec(1, layers)


@pytest.fixture(scope="module")
def keras_conv_file(tmp_path_factory):
    keras = pytest.importorskip("keras")
    pytest.importorskip("pyfive")
    path = tmp_path_factory.mktemp("keras") / "conv.keras"
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Conv1D(4, 3, strides=2),
                              keras.layers.MaxPooling1D(2), keras.layers.ZeroPadding1D(1), keras.layers.GRU(4)])
    model.save(path)
    return path


def _edit_keras(source, target, edit):
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    config = json.loads(members["config.json"])
    for layer in config["config"]["layers"]:
        edit(layer)
    members["config.json"] = json.dumps(config)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


@pytest.mark.parametrize("kind, key, field", [("Conv1D", "strides", "stride"), ("Conv1D", "dilation_rate", "dilation"),
                                              ("MaxPooling1D", "pool_size", "size"),
                                              ("ZeroPadding1D", "padding", "left")])
def test_a_keras_value_past_its_limit_is_refused_naming_the_field(tmp_path, keras_conv_file, kind, key, field):
    def edit(layer):
        if layer["class_name"] == kind:
            layer["config"][key] = [10**19] if key != "padding" else [10**19, 0]
    message = refused(_edit_keras(keras_conv_file, tmp_path / "m.keras", edit))
    assert field in message and "grurt.limits.MAX_" in message, message


# ---- escapes: malformed ONNX nodes ----

def _onnx(path, nodes, initializers=(), x_shape=("N", "T", 3), opset=17):
    from onnx import TensorProto, helper, numpy_helper, save
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
            for n, s in (("W", (1, 12, 3)), ("R", (1, 12, 4)))]
    init += [numpy_helper.from_array(np.asarray(v), n) for n, v in initializers]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], init)
    save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)], ir_version=9), path)
    return str(path)


def _gru(x="X", h0=""):
    from onnx import helper
    return helper.make_node("GRU", [x, "W", "R", "", "", h0], ["Y", "Y_h"], name="gru", hidden_size=4, layout=1)


def test_onnx_constant_of_shape_whose_value_is_not_a_tensor(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["h0"], name="zeros", value=1.5), _gru(h0="h0")]
    message = refused(_onnx(tmp_path / "m.onnx", nodes, [("shape", np.array([1, 3, 4]))]))
    assert "node 'zeros' (ConstantOfShape): attribute value of ConstantOfShape must be a finite tensor" in message


@pytest.mark.parametrize("op, inputs, fragment", [
    ("Shape", [""], "Shape takes 1 inputs, got 0"),
    ("Reshape", ["", "shape"], "input 0 of Reshape is required, got ''"),
    ("Reshape", ["X", ""], "Reshape takes 2 inputs, got 1"),
    ("Expand", ["X", ""], "Expand takes 2 inputs, got 1"),
])
def test_onnx_node_reading_the_empty_input_name(tmp_path, op, inputs, fragment):
    pytest.importorskip("onnx")
    from onnx import helper
    nodes = [helper.make_node(op, inputs, ["v"], name="odd"),
             helper.make_node("Identity", ["v"], ["h0"]), _gru(h0="h0")]
    message = refused(_onnx(tmp_path / "m.onnx", nodes, [("shape", np.array([1, 3, 4]))]))
    assert f"node 'odd' ({op}): {fragment}" in message, message


def test_onnx_concat_without_axis(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper
    nodes = [helper.make_node("Concat", ["X", "X"], ["XX"], name="join"), _gru("XX")]
    message = refused(_onnx(tmp_path / "m.onnx", nodes))
    assert "node 'join' (Concat): Concat needs the attribute 'axis'" in message


@pytest.mark.parametrize("op, attrs, fragment", [
    ("Transpose", {"perm": 1.5}, "attribute perm has type FLOAT, where ONNX gives it type INTS"),
    ("Concat", {"axis": "one"}, "attribute axis has type STRING, where ONNX gives it type INT"),
])
def test_onnx_attribute_of_the_wrong_type(tmp_path, op, attrs, fragment):
    pytest.importorskip("onnx")
    from onnx import helper
    nodes = [helper.make_node(op, ["X"] * (2 if op == "Concat" else 1), ["v"], name="odd", **attrs), _gru("v")]
    message = refused(_onnx(tmp_path / "m.onnx", nodes))
    assert f"node 'odd' ({op}): {fragment}" in message, message


def test_onnx_gru_activations_of_the_wrong_type(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"], name="gru", hidden_size=4, layout=1,
                            activations=[1, 2])
    message = refused(_onnx(tmp_path / "m.onnx", [node]))
    assert "node 'gru' (GRU): attribute activations has type INTS, where ONNX gives it type STRINGS" in message


# ---- hangs and unbounded memory ----

def _state_dict(extra_name):
    rng = np.random.default_rng(0)
    arrays = {"gru.weight_ih_l0": rng.normal(size=(12, 3)), "gru.weight_hh_l0": rng.normal(size=(12, 4)),
              "gru.bias_ih_l0": np.zeros(12), "gru.bias_hh_l0": np.zeros(12), extra_name: np.zeros(12)}
    return {k: v.astype(np.float32) for k, v in arrays.items()}


@pytest.mark.parametrize("suffix, index", [(".npz", "4294967296"), (".safetensors", "7" * 401)])
def test_a_huge_layer_index_in_state_dict_names_is_refused_in_bounded_time_and_memory(tmp_path, suffix, index):
    name = f"gru.bias_hh_l{index}"
    path = tmp_path / f"state{suffix}"
    if suffix == ".npz":
        np.savez(path, **_state_dict(name))
    else:
        pytest.importorskip("safetensors.numpy").save_file(_state_dict(name), str(path))
    outcome = in_child(f"grurt.from_state_dict({str(path)!r})", memory=1 << 30)
    assert outcome["error"] == "ModelFormatError"
    assert "has layer index" in outcome["message"] and "MAX_LAYER_INDEX" in outcome["message"]
    assert outcome["seconds"] < HANG_SECONDS


def test_onnx_pad_of_2_20_frames_is_refused_in_bounded_time_and_memory(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper
    nodes = [helper.make_node("Pad", ["X", "pads"], ["Xp"], name="pad"),
             helper.make_node("GRU", ["Xp", "W", "R"], ["Y", "Y_h"], hidden_size=4, layout=1)]
    path = _onnx(tmp_path / "pad.onnx", nodes, [("pads", np.array([0, 2**20, 0, 0, 0, 0], np.int64))])
    outcome = in_child(f"grurt.load({path!r})")
    assert outcome["error"] == "ModelFormatError"
    assert "node 'pad' (Pad): ZeroPad1D: left" in outcome["message"] and "MAX_PADDING_FRAMES" in outcome["message"]
    assert outcome["seconds"] < HANG_SECONDS


def test_onnx_fixed_sizes_beyond_the_interpreter_budget_are_refused_in_bounded_time(tmp_path):
    """Fixed sizes that the interpreter would analyse for minutes: refused by the file's budget of
    element ids (grurt.limits.MAX_IDS) before its arrays are built."""
    pytest.importorskip("onnx")
    from onnx import helper
    nodes = [helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=4, layout=1)]
    path = _onnx(tmp_path / "big.onnx", nodes, x_shape=(3, 2**20, 3))
    outcome = in_child(f"grurt.load({path!r})")
    assert outcome["error"] == "ModelFormatError", outcome
    assert "too large for grurt to analyse" in outcome["message"] and "MAX_IDS" in outcome["message"]
    assert outcome["seconds"] < HANG_SECONDS


def test_onnx_graph_of_many_nodes_is_bounded_in_time(tmp_path):
    """Every node interpreted costs ids from the same budget: a long chain of small nodes (which
    took minutes: the interpreter's lookups grew with the number of tensors) ends in seconds."""
    pytest.importorskip("onnx")
    from onnx import helper
    nodes, previous = [_gru()], "Y_h"
    for k in range(20000):
        nodes.append(helper.make_node("Relu", [previous], [f"r{k}"]))
        previous = f"r{k}"
    nodes.append(helper.make_node("Identity", [previous], ["out"]))
    path = tmp_path / "long.onnx"
    from onnx import TensorProto, numpy_helper, save
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
            for n, s in (("W", (1, 12, 3)), ("R", (1, 12, 4)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "T", 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
    save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=9), path)
    outcome = in_child(f"grurt.load({str(path)!r})")
    assert outcome["error"] == "ModelFormatError" and "MAX_IDS" in outcome["message"]
    assert outcome["seconds"] < 2 * HANG_SECONDS


def test_npz_graph_of_thousands_of_nodes_loads_in_bounded_time(tmp_path):
    """The topological order of a graph was quadratic in its nodes (7 s for this file)."""
    n = 2700
    nodes = [{"layer": {"type": "Activation", "function": "relu"}, "inputs": ["x" if k == 0 else str(k - 1)],
              "outputs": [str(k)]} for k in range(n)]
    header = {"format": "grurt", "format_version": "2.0", "producer": "test",
              "inputs": [{"name": "x", "kind": "sequence", "size": 2}], "nodes": nodes,
              "outputs": [{"name": str(n - 1)}]}
    path = tmp_path / "long.npz"
    np.savez(path, header=np.array(json.dumps(header)))
    outcome = in_child(f"""
        model = grurt.load({str(path)!r})
        assert len(model.layers) == {n}
    """)
    assert outcome["error"] is None and outcome["seconds"] < HANG_SECONDS


def test_npz_chain_of_thousands_of_layers_loads_in_bounded_time(tmp_path):
    """Each layer was checked with the whole chain before it (quadratic: 20 s for this file, found
    by the fuzzer of meaning)."""
    layers = [{"type": "GRU", "hidden_size": 1}] + [{"type": "Activation", "function": "relu"}] * 5000
    arrays = {"0.W": np.zeros((1, 3, 1), np.float32), "0.R": np.zeros((1, 3, 1), np.float32),
              "0.B": np.zeros((1, 6), np.float32)}
    path = chain_npz(tmp_path / "long.npz", layers, arrays=arrays)
    outcome = in_child(f"assert len(grurt.load({path!r}).layers) == 5001")
    assert outcome["error"] is None and outcome["seconds"] < HANG_SECONDS


def test_state_dict_of_thousands_of_modules_loads_in_bounded_time(tmp_path):
    """The same quadratic check, per module of a state dict (MAX_ARRAYS allows 50,000 of them)."""
    arrays = {k: v for k, v in _state_dict("gru.bias_hh_l0").items()}
    for k in range(3000):
        arrays[f"m{k}.weight"] = np.eye(4, dtype=np.float32)
    np.savez(tmp_path / "state.npz", **arrays)
    outcome = in_child(f"""
        types = {{f"m{{k}}": "Linear" for k in range(3000)}}
        assert len(grurt.from_state_dict({str(tmp_path / "state.npz")!r}, types=types).layers) == 3001
    """)
    assert outcome["error"] is None and outcome["seconds"] < HANG_SECONDS


# ---- memory: sizes derived from the file, checked before they are allocated ----

def test_run_counts_the_frames_padding_adds_before_it_allocates(monkeypatch):
    """The size check counted the input's frames only; padding then asked numpy for 32-128 GiB."""
    model = grurt.Model(ModelSpec(8, (ZeroPad1D(60000, 0), Dense(np.ones((8, 8)), np.zeros(8)))))
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 256 << 20)
    with pytest.raises(InputError, match=r"would need .* GiB, more than the limit of 0.2 GiB "
                                         r"\(grurt.model.MEMORY_LIMIT_BYTES\)"):
        model.run(np.zeros((64, 10, 8), np.float32))
    assert model.run(np.zeros((1, 10, 8), np.float32)).shape == (1, 60010, 8)


@pytest.mark.parametrize("layers", [
    (ZeroPad1D(300, 7),),
    (Conv1D(np.ones((5, 3, 4)), np.zeros(5), padding=(3, 0)), GRU(np.ones((1, 6, 5)), np.ones((1, 6, 2)),
                                                                  np.zeros((1, 12)))),
    (Conv1D(np.ones((6, 3, 3)), np.zeros(6), stride=2, dilation=5, padding="same_upper"),
     Pool1D("max", 3, 2, "same_lower"), ZeroPad1D(2, 9)),
    (Conv1D(np.ones((16, 3, 2)), np.zeros(16), dilation=40), Pool1D("average", 7, 3, (3, 2))),
])
@pytest.mark.parametrize("batch, steps", [(1, 1), (1, 300), (3, 97), (7, 1000)])
def test_check_size_bounds_what_a_call_allocates(layers, batch, steps):
    """Plan.bytes_needed, which run's check compares with the limit, is at least what a call
    allocates: its float32 input copy, workspace (exactly Plan.workspace_floats) and output."""
    model = grurt.Model(ModelSpec(3, layers))
    try:
        out = model.run(np.zeros((batch, steps, 3), np.float32))
    except InputError:          # shorter than a window: nothing is allocated
        return
    plan = model._plan
    allocated = 4 * (batch * steps * 3 + plan.workspace_floats(batch, steps) + 16) + out.nbytes
    assert plan.bytes_needed(batch, steps) >= allocated


def test_memory_error_of_a_call_becomes_an_input_error_naming_size_and_limit():
    """A call within grurt.model.MEMORY_LIMIT_BYTES (the machine's memory) in a process whose
    address space is capped lower: the allocation fails, and the caller gets an InputError."""
    outcome = in_child("""
        from grurt.spec import Dense, ModelSpec
        grurt.model.MEMORY_LIMIT_BYTES = 64 << 30        # what a large machine allows
        model = grurt.Model(ModelSpec(1, (Dense(np.ones((4096, 1)), np.zeros(4096)),)))
        model.run(np.zeros((1, 200_000, 1), np.float32))      # 3.3 GB of output
    """, memory=1 << 30)
    assert outcome["error"] == "InputError"
    assert "could not allocate" in outcome["message"] and "MEMORY_LIMIT_BYTES" in outcome["message"]


@pytest.mark.parametrize("batch", [2**31, 2**40, 10**30])
def test_a_stream_too_large_is_refused_before_it_allocates(batch):
    model = grurt.Model(ModelSpec(3, (GRU(np.ones((1, 12, 3)), np.ones((1, 12, 4)), np.zeros((1, 24))),)))
    with pytest.raises(InputError, match=f"a stream of {batch} sequences is too large"):
        model.stream(batch=batch)


def test_a_stream_of_a_conv_model_is_refused_before_it_allocates_its_workspace_and_histories(monkeypatch):
    conv = Conv1D(np.ones((4, 100, 2)), np.zeros(4), dilation=60000, padding=(60000, 0))
    model = grurt.Model(ModelSpec(100, (conv,)))
    monkeypatch.setattr(grurt.model, "MEMORY_LIMIT_BYTES", 1 << 30)
    with pytest.raises(InputError, match="a stream of 8 sequences is too large"):
        model.stream(batch=8)             # per sequence, 60001 frames × 100 channels of history and scratch
    assert model.stream(batch=1).step(np.ones(100, np.float32)).shape == (4,)


# ---- .pt archives: the members' declared sizes, before torch.load reads them ----

def _torch_archive(tmp_path, inflate=None):
    """A state dict saved by torch.save; with ``inflate`` = (member suffix, MiB), that member
    deflated and followed by that many MiB of zeros (written in chunks)."""
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in _state_dict("fc.bias").items()}, buffer)
    path = tmp_path / "state.pt"
    if inflate is None:
        path.write_bytes(buffer.getvalue())
        return path
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if not info.filename.endswith(inflate[0]):
                target.writestr(info, data)
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with target.open(entry, "w", force_zip64=True) as member:
                member.write(data)
                for _ in range(inflate[1]):
                    member.write(bytes(1 << 20))
    return path


@pytest.mark.slow    # ~10 s: a member inflating to the limit; the declared-size checks stay in the default run
def test_a_pt_archive_member_inflating_past_the_limit_is_refused_before_torch_reads_it(tmp_path):
    """A 1 MiB file whose 'byteorder' member inflates to 1 GiB: torch.load read it whole, peaking at
    3.3 GB in 12 s. Now refused from the archive's directory, in bounded time and memory."""
    path = _torch_archive(tmp_path, ("byteorder", 1024))
    assert path.stat().st_size < 2 << 20
    outcome = in_child(f"grurt.from_state_dict({str(path)!r})", memory=4 << 30, imports="import torch")
    assert outcome["error"] == "ModelFormatError"
    assert "member 'archive/byteorder' declares 1073741830 bytes" in outcome["message"]
    assert "MAX_PICKLE_BYTES" in outcome["message"]
    assert outcome["seconds"] < HANG_SECONDS and outcome["peak_mib"] < 1024


def test_a_pt_storage_member_declaring_too_many_bytes_is_refused(tmp_path):
    path = _torch_archive(tmp_path)
    path.write_bytes(patch_member(path.read_bytes(), "archive/data/0", "file_size", 0xF0000000))
    with pytest.raises(ModelFormatError, match=r"member 'archive/data/0' declares 4026531840 bytes, more than "
                                               r"1088 MiB \(grurt.limits.MAX_TORCH_BYTES\)"):
        grurt.from_state_dict(path)


def test_pt_archive_members_declaring_too_many_bytes_in_all_are_refused(tmp_path, monkeypatch):
    import grurt.importers.state_dict as state_dict
    path = _torch_archive(tmp_path)
    monkeypatch.setattr(state_dict, "MAX_TORCH_BYTES", 600)
    with pytest.raises(ModelFormatError, match=r"its members declare \d+ bytes in all, more than 0 MiB"):
        grurt.from_state_dict(path)


def test_a_legacy_pt_file_is_bounded_by_its_size(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import grurt.importers.state_dict as state_dict
    path = tmp_path / "legacy.pt"
    torch.save({k: torch.from_numpy(v) for k, v in _state_dict("fc.bias").items()}, path,
               _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert isinstance(grurt.from_state_dict(path, modules=["gru"]), grurt.Model)
    monkeypatch.setattr(state_dict, "MAX_TORCH_BYTES", 1000)
    with pytest.raises(ModelFormatError, match=r"legacy.pt: larger than 0 MiB \(grurt.limits.MAX_TORCH_BYTES\)"):
        grurt.from_state_dict(path)

