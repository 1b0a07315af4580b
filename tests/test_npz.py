"""grurt's .npz format: bit-identical round trips, the header, and hostile or broken files.

Every bad file must raise a specific grurt exception (ModelFormatError or
UnsupportedModelError) whose message names the problem; nothing in a file is ever unpickled.
"""
from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

import grurt
from grurt.formats import npz, read_header
from grurt.spec import Activation, Dense, LastStep, ModelSpec, Reverse, Scale, activation

from gru_testing import random_gru, random_states


def full_model(rng) -> grurt.Model:
    """Every layer type, non-default activations with alpha/beta, clip, both lbr, all directions."""
    layers = (
        Scale(a=rng.uniform(0.5, 2, 5), c=rng.normal(size=5)),
        random_gru(rng, 5, 7, "bidirectional", False, activation("hard_sigmoid", 0.3, 0.45),
                   activation("scaled_tanh", 0.9, 1.2), clip=2.5),
        Reverse(),
        random_gru(rng, 14, 6, "reverse", True, activation("softsign"), activation("elu", 0.8)),
        Activation(activation("leaky_relu", 0.1)),
        random_gru(rng, 6, 9, "forward", True),
        LastStep(),
        Dense(W=rng.normal(size=(4, 9)), b=rng.normal(size=4), activation=activation("softmax")),
        Activation(activation("affine", 2.0, -0.5)),
    )
    return grurt.Model(ModelSpec(5, layers))


@pytest.fixture
def model():
    return full_model(np.random.default_rng(0))


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / "model.npz"
    grurt.save(model, path)
    return path


def read_entries(path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def write_npz(path, entries: dict, header=None):
    """Write entries (+ header: a dict -> JSON, a str as is, an ndarray as is) with np.savez."""
    entries = dict(entries)
    if header is not None:
        entries["header"] = header if isinstance(header, np.ndarray) else \
            np.array(header if isinstance(header, str) else json.dumps(header))
    np.savez(path, **entries)
    return path


def header_of(entries) -> dict:
    return json.loads(str(entries["header"]))


# ---- round trip ------------------------------------------------------------------------------

def test_round_trip_is_bit_identical(model, saved):
    loaded = grurt.load(saved)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 11, 5)).astype(np.float32)
    h0 = random_states(rng, model.spec, 3)
    lengths = np.array([11, 4, 7])
    a, sa = model.run(x, initial_state=h0, lengths=lengths, return_state=True)
    b, sb = loaded.run(x, initial_state=h0, lengths=lengths, return_state=True)
    assert np.array_equal(a, b)
    assert all(np.array_equal(p, q) for p, q in zip(sa, sb))
    # the specs are the same, array by array and attribute by attribute
    assert [layer.describe() for layer in loaded.spec.layers] == [layer.describe() for layer in model.spec.layers]
    for mine, theirs in zip(model.spec.layers, loaded.spec.layers):
        for name in ("W", "R", "B", "b", "a", "c"):
            if hasattr(mine, name):
                assert np.array_equal(getattr(mine, name), getattr(theirs, name))
                assert getattr(theirs, name).dtype == np.float32
    # and saving the loaded model writes the same arrays and header
    again = saved.parent / "again.npz"
    grurt.save(loaded, again)
    first, second = read_entries(saved), read_entries(again)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_round_trip_of_a_spec_and_compressed_archive(model, tmp_path):
    """save accepts a ModelSpec; the reader takes any zip compression (np.savez_compressed)."""
    path = tmp_path / "spec.npz"
    grurt.save(model.spec, path)
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **read_entries(path))
    x = np.random.default_rng(2).normal(size=(2, 6, 5)).astype(np.float32)
    assert np.array_equal(grurt.load(compressed).run(x), model.run(x))


def test_header_content(model, saved):
    with zipfile.ZipFile(saved) as archive:
        names = sorted(archive.namelist())
    expected = ["header.npy", "0.a.npy", "0.c.npy", "1.W.npy", "1.R.npy", "1.B.npy", "3.W.npy", "3.R.npy",
                "3.B.npy", "5.W.npy", "5.R.npy", "5.B.npy", "7.W.npy", "7.b.npy"]
    assert names == sorted(expected)
    entries = read_entries(saved)
    assert entries["header"].dtype.kind == "U" and entries["header"].ndim == 0
    for key, value in entries.items():
        if key != "header":
            assert value.dtype == np.float32, key
    assert entries["1.W"].shape == (2, 21, 5) and entries["1.R"].shape == (2, 21, 7)
    assert entries["1.B"].shape == (2, 42) and entries["7.W"].shape == (4, 9)

    header = read_header(saved)
    assert header == header_of(entries)
    assert header["format"] == "grurt"
    assert header["format_version"] == "1.0"
    assert header["producer"] == f"grurt {grurt.__version__}"
    assert header["input_size"] == 5
    assert [layer["type"] for layer in header["layers"]] == [
        "Scale", "GRU", "Reverse", "GRU", "Activation", "GRU", "LastStep", "Dense", "Activation"]
    gru = header["layers"][1]
    assert gru == {"type": "GRU", "hidden_size": 7, "direction": "bidirectional", "linear_before_reset": False,
                   "gate_activation": {"kind": "hard_sigmoid", "alpha": float(np.float32(0.3)),
                                       "beta": float(np.float32(0.45))},
                   "candidate_activation": {"kind": "scaled_tanh", "alpha": float(np.float32(0.9)),
                                            "beta": float(np.float32(1.2))},
                   "clip": 2.5, "return_sequences": True}
    assert header["layers"][5]["gate_activation"] == {"kind": "sigmoid"}
    assert header["layers"][5]["clip"] is None
    assert header["layers"][7] == {"type": "Dense", "units": 4, "activation": {"kind": "softmax"}}
    assert header["layers"][8] == {"type": "Activation", "function": {"kind": "affine", "alpha": 2.0, "beta": -0.5}}


def test_metadata_is_stored_as_strings(model, tmp_path):
    path = tmp_path / "meta.npz"
    grurt.save(model, path, metadata={"trained_on": "2024 data", "epochs": 12})
    assert read_header(path)["metadata"] == {"trained_on": "2024 data", "epochs": "12"}
    assert np.array_equal(grurt.load(path).run(np.ones((3, 5))), model.run(np.ones((3, 5))))


def test_newer_minor_version_loads(saved, tmp_path):
    entries = read_entries(saved)
    header = header_of(entries)
    header["format_version"] = "1.9"
    path = write_npz(tmp_path / "minor.npz", {k: v for k, v in entries.items() if k != "header"}, header)
    x = np.ones((4, 5), np.float32)
    assert np.array_equal(grurt.load(path).run(x), grurt.load(saved).run(x))


# ---- bad files -------------------------------------------------------------------------------

def mutated(saved, tmp_path, edit_header=None, edit_entries=None, raw_header=None):
    """A copy of the saved model with its header and/or arrays edited."""
    entries = read_entries(saved)
    header = header_of(entries)
    if edit_header:
        edit_header(header)
    arrays = {k: v for k, v in entries.items() if k != "header"}
    if edit_entries:
        edit_entries(arrays)
    return write_npz(tmp_path / "bad.npz", arrays, raw_header if raw_header is not None else header)


def _set(path, value):
    """A header edit: set header[path[0]][path[1]]... = value."""
    def edit(header):
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        path = tmp_path / f"cut{cut}.npz"
        path.write_bytes(data[:cut])
        with pytest.raises(grurt.ModelFormatError, match="not a readable .npz archive"):
            grurt.load(path)


def test_garbage_and_empty_files(tmp_path):
    for name, data in [("garbage.npz", np.random.default_rng(0).bytes(4096)), ("empty.npz", b""),
                       ("text.npz", b"this is not a model\n" * 20)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(grurt.ModelFormatError, match="not a readable .npz archive"):
            grurt.load(path)


def test_corrupted_array_bytes(saved, tmp_path):
    """A flipped byte inside a stored (uncompressed) array: the zip CRC check catches it."""
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as archive:
        info = archive.getinfo("1.R.npy")
    data[info.header_offset + 30 + len(info.filename) + info.extra.__len__() + 200] ^= 0xFF
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(grurt.ModelFormatError, match="corrupt grurt model.*CRC"):
        grurt.load(path)


def test_missing_array(saved, tmp_path):
    path = mutated(saved, tmp_path, edit_entries=lambda a: a.pop("3.R"))
    with pytest.raises(grurt.ModelFormatError, match=r"layer 3 \(GRU\): array '3.R' is missing"):
        grurt.load(path)


def test_extra_array(saved, tmp_path):
    path = mutated(saved, tmp_path, edit_entries=lambda a: a.__setitem__("2.W", np.zeros((3, 3), np.float32)))
    with pytest.raises(grurt.ModelFormatError, match=r"unexpected arrays in the file: \['2.W'\]"):
        grurt.load(path)


def test_missing_header(saved, tmp_path):
    entries = read_entries(saved)
    entries.pop("header")
    path = write_npz(tmp_path / "noheader.npz", entries)
    with pytest.raises(grurt.ModelFormatError, match="no 'header' entry"):
        grurt.load(path)


@pytest.mark.parametrize("key, shape, fragment", [
    ("1.W", (2, 21, 6), r"array '1.W' has shape \(2, 21, 6\), expected \(2, 21, 5\)"),
    ("1.R", (1, 21, 7), r"array '1.R' has shape \(1, 21, 7\), expected \(2, 21, 7\)"),
    ("1.B", (2, 21), r"array '1.B' has shape \(2, 21\), expected \(2, 42\)"),
    ("7.b", (5,), r"array '7.b' has shape \(5,\), expected \(4,\)"),
    ("0.a", (5, 1), r"array '0.a' has shape \(5, 1\), expected \(5,\)"),
])
def test_wrong_weight_shapes(saved, tmp_path, key, shape, fragment):
    path = mutated(saved, tmp_path, edit_entries=lambda a: a.__setitem__(key, np.zeros(shape, np.float32)))
    with pytest.raises(grurt.ModelFormatError, match=fragment):
        grurt.load(path)


def test_header_and_arrays_disagree_on_hidden_size(saved, tmp_path):
    path = mutated(saved, tmp_path, edit_header=_set(["layers", 5, "hidden_size"], 10))
    with pytest.raises(grurt.ModelFormatError, match=r"array '5.W' has shape \(1, 27, 6\), expected \(1, 30, 6\)"):
        grurt.load(path)


@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.bool_, "U3"])
def test_non_float_arrays(saved, tmp_path, dtype):
    path = mutated(saved, tmp_path, edit_entries=lambda a: a.__setitem__("7.b", np.zeros(4, dtype)))
    with pytest.raises(grurt.ModelFormatError, match=r"array '7.b' has dtype .*, expected float32"):
        grurt.load(path)


def test_float16_and_float64_arrays_are_converted(model, saved, tmp_path):
    """Other float widths are data, not an attack: read and converted to float32."""
    def widen(arrays):
        arrays["7.W"] = arrays["7.W"].astype(np.float64)
        arrays["0.a"] = arrays["0.a"].astype(np.float16).astype(np.float16)
    path = mutated(saved, tmp_path, edit_entries=widen)
    loaded = grurt.load(path)
    assert loaded.spec.layers[7].W.dtype == np.float32
    assert np.array_equal(loaded.spec.layers[7].W, model.spec.layers[7].W)


class _Marker:
    """Unpickling this object writes a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('unpickled')",))


@pytest.mark.parametrize("where", ["weight", "header"])
def test_object_array_is_never_unpickled(saved, tmp_path, where):
    marker = tmp_path / "UNPICKLED"
    trap = np.empty(1, dtype=object)
    trap[0] = _Marker(marker)
    entries = {k: v for k, v in read_entries(saved).items() if k != "header"}
    header = header_of(read_entries(saved))
    if where == "weight":
        entries["1.B"] = trap
        path = write_npz(tmp_path / "trap.npz", entries, header)
    else:
        path = write_npz(tmp_path / "trap.npz", entries, trap)

    # the trap works: numpy with allow_pickle=True would run it
    with np.load(path, allow_pickle=True) as archive:
        archive["1.B" if where == "weight" else "header"]
    assert marker.exists()
    marker.unlink()

    fragment = "array '1.B' has dtype object, expected float32" if where == "weight" else \
        "Object arrays cannot be loaded when allow_pickle=False"
    with pytest.raises(grurt.ModelFormatError, match=fragment):
        grurt.load(path)
    assert not marker.exists(), "grurt.load unpickled an object from the file"
    if where == "header":
        with pytest.raises(grurt.ModelFormatError, match=fragment):
            read_header(path)
    else:
        assert read_header(path)["format"] == "grurt"
    assert not marker.exists()


def test_header_entry_is_a_pickle_not_npy(saved, tmp_path):
    """A raw pickle stream named header.npy (no .npy magic) is refused without unpickling."""
    import pickle
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "pickle.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("header.npy", pickle.dumps(_Marker(marker)))
    with pytest.raises(grurt.ModelFormatError, match="not a readable .npy"):
        grurt.load(path)
    assert not marker.exists()


def test_newer_major_version(saved, tmp_path):
    path = mutated(saved, tmp_path, edit_header=_set(["format_version"], "4.0"))
    with pytest.raises(grurt.UnsupportedModelError, match=r"format 4\.0.*newer grurt.*upgrade grurt"):
        grurt.load(path)
    with pytest.raises(grurt.UnsupportedModelError, match="upgrade grurt"):
        read_header(path)


@pytest.mark.parametrize("version", ["1", "one.zero", "1.0.0", None, ""])
def test_unreadable_version(saved, tmp_path, version):
    path = mutated(saved, tmp_path, edit_header=_set(["format_version"], version))
    with pytest.raises(grurt.ModelFormatError, match="unreadable format_version"):
        grurt.load(path)


@pytest.mark.parametrize("raw, error, fragment", [
    ("{not json", grurt.ModelFormatError, "header is not valid JSON"),
    ("", grurt.ModelFormatError, "header is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, grurt.ModelFormatError, "header is not valid JSON"),   # RecursionError
    ('{"format": "grurt", "format_version": "1.0", "input_size": ' + "9" * 5000 + "}",
     grurt.ModelFormatError, "header is not valid JSON"),
    ("[1, 2, 3]", grurt.ModelFormatError, "not a grurt model"),
    (" " * 300_000, grurt.ModelFormatError, r"header entry is implausibly large \(\d+ bytes\)"),  # > 1 MB as UTF-32
    ('{"format": "onnx"}', grurt.ModelFormatError, "not a grurt model"),
])
def test_header_not_json(saved, tmp_path, raw, error, fragment):
    path = mutated(saved, tmp_path, raw_header=raw)
    with pytest.raises(error, match=fragment):
        grurt.load(path)
    with pytest.raises(error, match=fragment):
        read_header(path)


def test_header_not_a_string(saved, tmp_path):
    path = mutated(saved, tmp_path, raw_header=np.arange(3.0))
    with pytest.raises(grurt.ModelFormatError, match="0-d string array holding JSON"):
        grurt.load(path)


def test_huge_declared_sizes_refused_before_allocation(saved, tmp_path):
    """A header declaring hidden_size = 10**12 (or sizes whose product is huge) must be refused
    from the header alone: peak Python/numpy memory during the load stays under 20 MB."""
    cases = [
        (_set(["layers", 1, "hidden_size"], 10**12), r"'hidden_size' must be a positive integer below 2\*\*31"),
        (_set(["layers", 1, "hidden_size"], 2**20), r"layer 1 \(GRU\): the model declares more than 268435456 param"),
        (_set(["layers", 5, "hidden_size"], 2**30), r"layer 5 \(GRU\): the model declares more than \d+ parameters"),
        (_set(["layers", 7, "units"], 2**30), r"layer 7 \(Dense\): the model declares more than \d+ parameters"),
        (_set(["input_size"], 2**31), r"'input_size' must be a positive integer below 2\*\*31"),
        (_set(["layers", 1, "hidden_size"], -5), "'hidden_size' must be a positive integer"),
        (_set(["layers", 1, "hidden_size"], 7.0), "'hidden_size' must be a positive integer"),
    ]
    for edit, fragment in cases:
        path = mutated(saved, tmp_path, edit_header=edit)
        tracemalloc.start()
        try:
            with pytest.raises(grurt.ModelFormatError, match=fragment):
                grurt.load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20 * 2**20, f"{fragment}: {peak / 2**20:.0f} MB allocated before refusing"


def test_array_header_declaring_huge_shape(saved, tmp_path):
    """An .npy entry whose own header declares a huge shape (data absent) is refused by its
    shape, never read."""
    entries = read_entries(saved)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (2, 21, 5 * 10**9)})
    path = tmp_path / "hugearray.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in entries.items():
            if key == "1.W":
                archive.writestr("1.W.npy", buffer.getvalue())
            else:
                with archive.open(key + ".npy", "w") as handle:
                    np.lib.format.write_array(handle, value, allow_pickle=False)
    with pytest.raises(grurt.ModelFormatError, match=r"array '1.W' has shape \(2, 21, 5000000000\)"):
        grurt.load(path)


def test_truncated_array_data(saved, tmp_path):
    """A well-formed .npy header followed by too few bytes."""
    entries = read_entries(saved)
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in entries.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, value, allow_pickle=False)
            data = buffer.getvalue()
            archive.writestr(key + ".npy", data[:-8] if key == "3.W" else data)
    with pytest.raises(grurt.ModelFormatError, match="array '3.W' is truncated"):
        grurt.load(path)


@pytest.mark.parametrize("key, value", [("1.W", np.nan), ("7.b", np.inf), ("0.c", -np.inf), ("5.R", 1e39)])
def test_non_finite_weights(saved, tmp_path, key, value):
    def poison(arrays):
        array = arrays[key].astype(np.float64 if value == 1e39 else np.float32)
        array.flat[3] = value           # 1e39 is finite in float64 but overflows float32
        arrays[key] = array
    path = mutated(saved, tmp_path, edit_entries=poison)
    with pytest.raises(grurt.ModelFormatError, match="contains NaN or infinity"):
        grurt.load(path)


@pytest.mark.parametrize("edit, error, fragment", [
    (_set(["layers", 1, "type"], "LSTM"), grurt.UnsupportedModelError, "unknown layer type 'LSTM'"),
    (_set(["layers", 1, "type"], ["GRU"]), grurt.UnsupportedModelError, "unknown layer type"),
    (_set(["layers", 1, "gate_activation"], {"kind": "swish"}), grurt.UnsupportedModelError,
     "unsupported activation 'swish'"),
    (_set(["layers", 5, "direction"], "sideways"), grurt.UnsupportedModelError, "direction 'sideways'"),
    (_set(["layers", 1, "peephole"], True), grurt.ModelFormatError, r"unknown fields \['peephole'\]"),
    (_set(["layers", 1, "clip"], -1.0), grurt.ModelFormatError, "clip must be a positive finite number"),
    (_set(["layers", 1, "clip"], "2.5"), grurt.ModelFormatError, "clip must be a positive finite number"),
    (_set(["layers", 1, "clip"], [2.5]), grurt.ModelFormatError, "clip must be a positive finite number"),
    (_set(["layers", 1, "linear_before_reset"], 1), grurt.ModelFormatError, "linear_before_reset must be a bool"),
    (_set(["layers", 1, "gate_activation"], {"kind": "hard_sigmoid", "alpha": "0.2"}), grurt.ModelFormatError,
     "alpha must be a number"),
    (_set(["layers", 1, "gate_activation"], {"kind": "sigmoid", "alpha": 1.0}), grurt.ModelFormatError,
     "takes no alpha"),
    (_set(["layers", 1, "gate_activation"], {"kind": "hard_sigmoid", "gamma": 1.0}), grurt.ModelFormatError,
     r"unknown activation fields \['gamma'\]"),
    (_set(["layers", 4, "function"], None), grurt.ModelFormatError, "an activation must be a name"),
    (_set(["layers", 1, "candidate_activation"], "softmax"), grurt.UnsupportedModelError,
     "cannot be used inside a GRU"),
    (_set(["layers"], []), grurt.ModelFormatError, "'layers' must be a non-empty list"),
    (_set(["layers", 0], "Scale"), grurt.ModelFormatError, "layer 0: expected an object"),
])
def test_bad_header_fields(saved, tmp_path, edit, error, fragment):
    path = mutated(saved, tmp_path, edit_header=edit)
    with pytest.raises(error, match=fragment):
        grurt.load(path)


def test_layer_after_time_axis_removed(saved, tmp_path):
    """A Reverse after LastStep is structurally invalid even with every array present."""
    def insert(header):
        header["layers"].insert(7, {"type": "Reverse"})
    entries = read_entries(saved)
    arrays = {("8" + k[1:] if k.startswith("7.") else k): v for k, v in entries.items() if k != "header"}
    header = header_of(entries)
    insert(header)
    path = write_npz(tmp_path / "order.npz", arrays, header)
    with pytest.raises(grurt.ModelFormatError, match="needs a sequence"):
        grurt.load(path)


def test_load_paths(tmp_path, saved):
    with pytest.raises(FileNotFoundError):
        grurt.load(tmp_path / "missing.npz")
    other = tmp_path / "model.pkl"
    other.write_bytes(saved.read_bytes())
    with pytest.raises(grurt.UnsupportedModelError, match="unknown model file type '.pkl'"):
        grurt.load(other)
    # load accepts str and PathLike
    assert grurt.load(str(saved)).input_size == grurt.load(saved).input_size == 5
    assert os.path.getsize(saved) > 0


def test_parameter_budget_is_per_file(model, saved, monkeypatch):
    """Every layer may fit the budget and the file still exceed it: the budget counts them all."""
    total = model.spec.parameter_count
    largest = max(getattr(layer, "W").size for layer in model.spec.layers if hasattr(layer, "W"))
    assert largest < total - 1
    monkeypatch.setattr(npz, "MAX_PARAMETERS", total - 1)
    with pytest.raises(grurt.ModelFormatError, match="the model declares more than"):
        grurt.load(saved)
    monkeypatch.setattr(npz, "MAX_PARAMETERS", total)
    assert grurt.load(saved).spec.parameter_count == total


def test_the_installed_package_has_the_version_files_name_as_their_producer():
    """pyproject reads the version from grurt/_version.py: the one place it is written."""
    from importlib.metadata import version
    assert version("grurt") == grurt.__version__
