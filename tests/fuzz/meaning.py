"""Seeded mutations of *meaning*: a valid file with one field changed to a value at a boundary.

Byte mutations (:mod:`mutate`) mostly break a file's framing, which the parsers refuse early.
These keep the framing valid and change what it says, where sizes and numbers enter grurt:

* JSON (a grurt ``.npz`` header, a Keras ``config.json`` or legacy ``model_config``, a
  safetensors header): a boundary sweep of numeric fields (0, −1, 2**31 − 1, 2**31, 2**63,
  10**400, NaN, inf, wrong types, strings), fields added where a layer reads them, fields
  deleted, deep nesting and huge literals;
* ONNX: attribute values at boundaries (huge pads, strides, axes), attributes of the wrong type
  or missing, empty or unknown input names, graph-input dims and integer initializers (shapes,
  pads) at boundaries, ops swapped;
* state dicts: names with huge layer indices, arrays of other shapes and dtypes; safetensors
  headers with overlapping or huge offsets, odd shapes and dtypes, a false header length;
* zip archives (``.npz``, ``.keras``, ``.pt``): members with false declared sizes, compression
  methods changed, deflated members that inflate far past their size.

``mutate_meaning(loader, data, rng)`` returns the mutated bytes; the same (data, rng state) give
the same bytes on every machine.
"""
from __future__ import annotations

import io
import json
import math
import random
import re
import struct
import zipfile

import numpy as np

BOUNDARY_INTS = (0, 1, -1, 2, 3, 7, 255, 2**15, 2**16, 2**16 + 1, 2**20, 2**24, 2**28, 2**31 - 1, 2**31, 2**32,
                 2**32 + 1, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -2**31, -2**63, 10**19, 10**400, -10**400)
BOUNDARY_FLOATS = (0.0, -0.0, 0.5, -1.0, 1e-45, 1e-7, 1.0000001, 1e6, 1e6 + 1, 3.4e38, 3.5e38, 1e308,
                   math.inf, -math.inf, math.nan)
WRONG_TYPES = (None, True, False, "1", "", "x" * 1000, [], [1], [1, 2, 3], [2**31, 2**31], {}, {"kind": "relu"})
#: Fields grurt's headers and Keras configs read as numbers: added where absent, to reach defaults.
NUMERIC_KEYS = ("input_size", "hidden_size", "units", "vocabulary", "features", "out_channels", "kernel_size",
                "stride", "dilation", "groups", "padding", "size", "left", "right", "steps", "epsilon", "alpha",
                "beta", "clip", "mask_value", "begin", "end", "directions", "filters", "strides", "pool_size",
                "dilation_rate", "rate", "momentum", "axis", "cropping", "n", "target_shape", "max_value",
                "negative_slope", "threshold", "input_dim", "output_dim", "size_splits")


def boundary_value(rng: random.Random):
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(BOUNDARY_INTS)
    if roll < 0.8:
        return rng.choice(BOUNDARY_FLOATS)
    return rng.choice(WRONG_TYPES)


# ---- JSON ----

def _locations(value):
    """(container, key) of every value in a JSON tree, breadth first (no recursion)."""
    found, queue = [], [value]
    while queue:
        item = queue.pop(0)
        keys = item.keys() if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else ()
        for key in keys:
            found.append((item, key))
            queue.append(item[key])
    return found


def mutate_json_value(value, rng: random.Random):
    """Mutate a parsed JSON document in place (one to three edits); returns it."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        places = _locations(value)
        if not places:
            return value
        numeric = [(c, k) for c, k in places if isinstance(c[k], (int, float)) and not isinstance(c[k], bool)]
        objects = [c for c, _ in places if isinstance(c, dict)]
        strings = [c[k] for c, k in places if isinstance(c[k], str)]
        choice = rng.random()
        if numeric and choice < 0.55:                       # a number at a boundary
            container, key = rng.choice(numeric)
            container[key] = boundary_value(rng)
        elif objects and choice < 0.7:                      # a numeric field added (or overwritten)
            rng.choice(objects)[rng.choice(NUMERIC_KEYS)] = boundary_value(rng)
        elif choice < 0.8:                                  # any value replaced
            container, key = rng.choice(places)
            container[key] = boundary_value(rng) if rng.random() < 0.7 or not strings else rng.choice(strings)
        elif choice < 0.9:                                  # a field or element deleted
            container, key = rng.choice(places)
            del container[key]
        elif choice < 0.95:                                 # a list element duplicated many times
            lists = [c[k] for c, k in places if isinstance(c[k], list) and c[k]]
            if lists:
                target = rng.choice(lists)
                target.extend([target[0]] * rng.choice((1, 100, 5000)))
        else:                                               # deep nesting
            container, key = rng.choice(places)
            for _ in range(rng.choice((10, 63, 64, 65, 200))):
                container[key] = [container[key]]
    return value


def mutate_json_text(text: str, rng: random.Random) -> str:
    """A JSON text with its meaning mutated; sometimes a literal no float holds spliced in."""
    value = mutate_json_value(json.loads(text), rng)
    out = json.dumps(value)
    if rng.random() < 0.1:
        numbers = list(re.finditer(r"(?<![\w.\"])-?\d+(\.\d+)?([eE][-+]?\d+)?(?![\w.\"])", out))
        if numbers:
            match = rng.choice(numbers)
            literal = rng.choice(("1e999", "-1e999", "9" * 5000, "1" + "0" * 400, "1e-999", "-0"))
            out = out[:match.start()] + literal + out[match.end():]
    return out


# ---- zip archives ----

def _members(data: bytes):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info.filename)) for info in archive.infolist()]


def rezip(members, compress=None) -> bytes:
    """A zip archive of (ZipInfo or name, bytes), each stored as before unless ``compress`` maps its
    name to another method."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info, content in members:
            name = info if isinstance(info, str) else info.filename
            method = (compress or {}).get(name, zipfile.ZIP_STORED if isinstance(info, str) else info.compress_type)
            archive.writestr(name, content, compress_type=method)
    return out.getvalue()


def patch_member(data: bytes, member: str, field: str, value: int) -> bytes:
    """``data`` with a field of ``member`` (its declared uncompressed or compressed size, or its
    compression method) set to ``value`` in its local header and in the central directory: a
    false size, or a method the bytes were not written with."""
    local, fmt = {"file_size": (22, "<I"), "compress_size": (18, "<I"), "method": (8, "<H")}[field]
    value %= 2 ** (8 * struct.calcsize(fmt))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    buf = bytearray(data)
    struct.pack_into(fmt, buf, info.header_offset + local, value)
    end = buf.rfind(b"PK\x05\x06")
    if end < 0:
        return bytes(buf)
    central = struct.unpack_from("<I", buf, end + 16)[0]
    while buf[central:central + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", buf, central + 28)
        if bytes(buf[central + 46:central + 46 + name_len]) == member.encode():
            struct.pack_into(fmt, buf, central + local + 2, value)       # the same fields, 2 bytes later
        central += 46 + name_len + extra_len + comment_len
    return bytes(buf)


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """A member with a false size, another compression method, or a deflated tail that inflates."""
    members = _members(data)
    info, content = rng.choice(members)
    choice = rng.random()
    if choice < 0.45:
        size = rng.choice((0, 1, len(content) - 1, len(content) + 1, 2 * len(content), 2**31 - 1, 2**31,
                           2**32 - 1, 2**32 - 2))
        return patch_member(data, info.filename, rng.choice(("file_size", "file_size", "compress_size")), size)
    if choice < 0.65:                       # another compression method (8: deflate over stored bytes, ...)
        return patch_member(data, info.filename, "method", rng.choice((0, 8, 9, 12, 14, 99)))
    # the member deflated, with zeros appended: a small file that inflates to 1 MiB, past the 64 MiB
    # limits (the pickle of a .pt), or past the 1088 MiB ones (HDF5 members, storages)
    tail = rng.choice((1, 1, 80, 1200))
    return zip_of([(other.filename, other_content) for other, other_content in members], info.filename, tail)


_ZEROS = {}


def _deflated_zeros():
    """1 MiB of zeros as raw deflate blocks that end on a byte boundary with no history (a full
    flush): any number of them can follow each other in one stream."""
    if not _ZEROS:
        import zlib
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
        _ZEROS["chunk"] = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return _ZEROS["chunk"]


def zip_of(members, bomb: str, tail_mib: int) -> bytes:
    """A zip archive of (name, bytes), stored, except member ``bomb``: deflated, with ``tail_mib``
    MiB of zeros after its bytes (a few KiB of file that inflate to that much; past 100 MiB the CRC is left false)."""
    import zlib
    out, central = bytearray(), bytearray()
    for name, content in members:
        method, size, crc = 0, len(content), zlib.crc32(content)
        data = content
        if name == bomb:
            compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
            data = compressor.compress(content) + compressor.flush(zlib.Z_FULL_FLUSH)
            zeros = bytes(1 << 20)
            for _ in range(tail_mib if tail_mib <= 100 else 0):     # a GiB tail keeps a false CRC (time)
                crc = zlib.crc32(zeros, crc)
            data += _deflated_zeros() * tail_mib + zlib.compressobj(1, zlib.DEFLATED, -15).flush()
            method, size = 8, len(content) + (tail_mib << 20)
        encoded = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(out)) \
            + encoded
        out += b"PK\x03\x04" + fields + encoded + data
    end = struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + b"PK\x05\x06" + end)


# ---- grurt .npz ----

def _npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def mutate_grurt_npz(data: bytes, rng: random.Random) -> bytes:
    members = _members(data)
    choice = rng.random()
    if choice < 0.7:                                         # the header's meaning
        index = next(i for i, (info, _) in enumerate(members) if info.filename == "header.npy")
        text = str(np.load(io.BytesIO(members[index][1]), allow_pickle=False))
        members[index] = (members[index][0], _npy(np.array(mutate_json_text(text, rng))))
        return rezip(members)
    if choice < 0.85:                                        # an array of another shape or dtype
        arrays = [i for i, (info, _) in enumerate(members) if info.filename != "header.npy"]
        if arrays:
            index = rng.choice(arrays)
            array = np.load(io.BytesIO(members[index][1]), allow_pickle=False)
            members[index] = (members[index][0], _npy(_reshaped(array, rng)))
            return rezip(members)
    return mutate_zip(data, rng)


def _reshaped(array: np.ndarray, rng: random.Random) -> np.ndarray:
    """``array`` with a row more or less, an axis more or less, another dtype, or NaN/huge values."""
    choice = rng.randrange(6)
    if choice == 0 and array.ndim:
        return array[:-1] if array.shape[0] > 1 else np.concatenate([array, array])
    if choice == 1:
        return array[None] if rng.random() < 0.5 else array.reshape(-1)
    if choice == 2:
        return array.astype(rng.choice((np.float64, np.float16, np.int64, np.int8, np.uint16, np.bool_)))
    if choice == 3 and array.size and array.dtype.kind == "f":
        out = array.copy()
        out.flat[rng.randrange(out.size)] = rng.choice((np.nan, np.inf, 1e38, -1e38, 1e-45))
        return out
    if choice == 4:
        return np.zeros((0,) + array.shape[1:], array.dtype)
    return np.zeros(array.shape[::-1] or (1,), array.dtype)


# ---- state dicts: names ----

_INDEX = re.compile(r"_l(\d+)")


def mutate_name(name: str, rng: random.Random) -> str:
    """A parameter name with a huge layer index, a changed prefix or suffix, or an odd form."""
    choice = rng.random()
    if choice < 0.5 and _INDEX.search(name):
        index = rng.choice(("4294967296", "1" + "0" * 400, "9" * 5000, "1023", "1024", "00", "1", "2",
                            "\u0661", "18446744073709551616", "2147483648"))
        return _INDEX.sub(f"_l{index}", name, count=1)
    if choice < 0.65:
        return name + rng.choice(("_reverse", "_l0", "_l4294967296", "_extra", ""))
    if choice < 0.8:
        prefix, _, param = name.rpartition(".")
        return rng.choice(("", "a.b.c.d.e.f.g", prefix * 50, "\x00", "x" * 10000)) + "." + param
    return rng.choice((name.upper(), name.replace(".", ""), name + "." + name, "." + name, name + "."))


def mutate_state_dict(arrays: dict, rng: random.Random) -> dict:
    """One edit of {name: array}: a name, a shape or dtype, an entry dropped or duplicated."""
    arrays = dict(arrays)
    names = sorted(arrays)
    name = rng.choice(names)
    choice = rng.random()
    if choice < 0.5:
        arrays[mutate_name(name, rng)] = arrays.pop(name)
    elif choice < 0.8:
        arrays[name] = _reshaped(arrays[name], rng)
    elif choice < 0.9:
        del arrays[name]
    else:
        arrays[mutate_name(name, rng)] = arrays[name]
    return arrays


def read_npz_arrays(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def mutate_state_npz(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.75:
        out = io.BytesIO()
        np.savez(out, **mutate_state_dict(read_npz_arrays(data), rng))
        return out.getvalue()
    return mutate_zip(data, rng)


# ---- safetensors ----

_SAFETENSORS_DTYPES = ("F32", "F64", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "U64", "X", "")


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """The JSON header (names, dtypes, shapes, data offsets) or its length field mutated."""
    length = struct.unpack_from("<Q", data)[0]
    header, body = json.loads(data[8:8 + length]), data[8 + length:]
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    entry = header[name]
    choice = rng.random()
    if choice < 0.2:
        header[mutate_name(name, rng)] = header.pop(name)
    elif choice < 0.35:
        entry["dtype"] = rng.choice(_SAFETENSORS_DTYPES)
    elif choice < 0.55:                                      # shapes: boundary sizes, extra or missing axes
        shape = entry["shape"]
        if shape and rng.random() < 0.7:
            shape[rng.randrange(len(shape))] = rng.choice(BOUNDARY_INTS[:24])
        else:
            entry["shape"] = rng.choice(([], [0], [2**31, 2**31], shape + [1], [-1], [2**64]))
    elif choice < 0.8:                                      # offsets: overlapping, huge, reversed
        other = header[rng.choice(names)]["data_offsets"]
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice((list(other), [0, 2**64 - 1], [2**63, 2**63 + 4], [end, begin],
                                            [begin, begin], [begin + 1, end + 1], [0, len(body) * 2],
                                            [begin, 10**400]))
    elif choice < 0.9:
        header = mutate_json_value(header, rng)
    else:                                                   # a false header length
        text = json.dumps(header).encode()
        false = rng.choice((0, 1, len(text) - 1, len(text) + 1, 2**31, 2**63, 2**64 - 1, 100 << 20))
        return struct.pack("<Q", false) + text + body
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


# ---- .pt (torch.save) ----

def mutate_pt(data: bytes, rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.5:
        import torch
        state = torch.load(io.BytesIO(data), weights_only=True)
        arrays = mutate_state_dict({k: v.numpy() for k, v in state.items()}, rng)
        out = io.BytesIO()
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, out)
        return out.getvalue()
    return mutate_zip(data, rng)


# ---- Keras ----

def mutate_keras(data: bytes, rng: random.Random) -> bytes:
    members = _members(data)
    if rng.random() < 0.75:
        index = next(i for i, (info, _) in enumerate(members) if info.filename == "config.json")
        text = mutate_json_text(members[index][1].decode(), rng)
        members[index] = (members[index][0], text.encode())
        return rezip(members)
    return mutate_zip(data, rng)


def mutate_h5(data: bytes, rng: random.Random) -> bytes:
    """A legacy Keras .h5 file with its model_config attribute mutated (written with h5py)."""
    import h5py
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as store:
        store.attrs["model_config"] = mutate_json_text(_text(store.attrs["model_config"]), rng)
    return buffer.getvalue()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- ONNX ----

_ATTRIBUTE_NAMES = ("axis", "axes", "perm", "pads", "kernel_shape", "strides", "dilations", "group", "auto_pad",
                    "hidden_size", "direction", "layout", "linear_before_reset", "activations", "clip", "epsilon",
                    "alpha", "beta", "transA", "transB", "value", "to", "allowzero", "keepdims", "split",
                    "num_outputs", "starts", "ends", "mode", "ceil_mode", "count_include_pad", "p")
_OPS = ("Relu", "Sigmoid", "Softmax", "Transpose", "Reshape", "Concat", "Pad", "Expand", "Tile", "Gather", "Slice",
        "Squeeze", "Unsqueeze", "ConstantOfShape", "Shape", "Identity", "MatMul", "Add", "Conv", "MaxPool",
        "Flatten", "Split", "Range", "Einsum", "Resize", "ReduceSum", "Loop", "Where", "Cast", "CumSum")


def _int64(value: int) -> int:
    return max(-2**63, min(2**63 - 1, value))


def _other_attribute(name, rng):
    """An attribute ``name`` of a random type (INTS, INT, FLOAT, STRING, FLOATS, STRINGS, TENSOR)."""
    from onnx import AttributeProto, helper, numpy_helper
    kind = rng.randrange(7)
    if kind == 0:
        values = [_int64(rng.choice(BOUNDARY_INTS)) for _ in range(rng.choice((0, 1, 2, 3, 6)))]
        return helper.make_attribute(name, values, attr_type=AttributeProto.INTS)
    value = (_int64(rng.choice(BOUNDARY_INTS)), rng.choice(BOUNDARY_FLOATS),
             rng.choice(("", "NOTSET", "SAME_UPPER", "constant", "reflect", "x" * 100)),
             [rng.choice(BOUNDARY_FLOATS) for _ in range(rng.choice((1, 2)))],
             ["Sigmoid", "Tanh", "HardSigmoid"][:rng.choice((1, 2, 3))],
             numpy_helper.from_array(np.array(rng.choice(([1.0], [1, 2], [[3]], [])))))[kind - 1]
    return helper.make_attribute(name, value)


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    import onnx
    from onnx import numpy_helper
    model = onnx.load_model_from_string(data)
    graph = model.graph
    nodes = list(graph.node)
    for _ in range(rng.choice((1, 1, 2))):
        choice = rng.random()
        node = rng.choice(nodes)
        if choice < 0.25 and node.attribute:                # an attribute value at a boundary
            attr = rng.choice(node.attribute)
            if attr.type == onnx.AttributeProto.INT:
                attr.i = _int64(rng.choice(BOUNDARY_INTS))
            elif attr.type == onnx.AttributeProto.INTS and attr.ints:
                attr.ints[rng.randrange(len(attr.ints))] = _int64(rng.choice(BOUNDARY_INTS))
            elif attr.type == onnx.AttributeProto.FLOAT:
                attr.f = rng.choice(BOUNDARY_FLOATS)
            elif attr.type == onnx.AttributeProto.FLOATS and attr.floats:
                attr.floats[rng.randrange(len(attr.floats))] = rng.choice(BOUNDARY_FLOATS)
            else:
                attr.CopyFrom(_other_attribute(attr.name, rng))
        elif choice < 0.35 and node.attribute:              # an attribute of another type, or missing
            attr = rng.choice(node.attribute)
            if rng.random() < 0.5:
                attr.CopyFrom(_other_attribute(attr.name, rng))
            else:
                node.attribute.remove(attr)
        elif choice < 0.45:                                  # an attribute added
            node.attribute.append(_other_attribute(rng.choice(_ATTRIBUTE_NAMES), rng))
        elif choice < 0.55 and node.input:                   # an input empty, unknown, or another value
            values = [n for other in nodes for n in other.output] + [i.name for i in graph.input]
            node.input[rng.randrange(len(node.input))] = rng.choice(("", "", "nowhere", rng.choice(values)))
        elif choice < 0.6:                                   # inputs added or dropped
            if node.input and rng.random() < 0.5:
                del node.input[-1]
            else:
                node.input.append(rng.choice(("", graph.input[0].name)))
        elif choice < 0.72 and graph.initializer:            # an integer initializer (shapes, pads) at a boundary
            tensors = [t for t in graph.initializer if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)]
            tensor = rng.choice(tensors or list(graph.initializer))
            try:
                array = numpy_helper.to_array(tensor).copy()
            except ValueError:                              # dims already made false by an earlier edit
                continue
            if array.size and array.dtype.kind in "iu":
                info = np.iinfo(array.dtype)
                array.flat[rng.randrange(array.size)] = min(max(rng.choice(BOUNDARY_INTS), info.min), info.max)
            elif array.size:
                array.flat[rng.randrange(array.size)] = rng.choice(BOUNDARY_FLOATS)
            else:
                array = np.array([2**31 - 1], np.int64)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        elif choice < 0.8 and graph.initializer:             # a tensor declaring other dims than its data
            tensor = rng.choice(graph.initializer)
            if tensor.dims:
                tensor.dims[rng.randrange(len(tensor.dims))] = _int64(rng.choice(BOUNDARY_INTS[:22]))
            else:
                tensor.dims.append(2**31)
        elif choice < 0.9:                                   # a graph input's dims
            value_info = rng.choice(graph.input)
            dims = value_info.type.tensor_type.shape.dim
            if dims:
                dim = dims[rng.randrange(len(dims))]
                if rng.random() < 0.7:
                    dim.dim_value = _int64(rng.choice((0, 1, 2, 2**20, 2**31, 2**40, 2**62)))
                else:
                    dim.dim_param = rng.choice(("N", "T", "", "x" * 500))
        elif choice < 0.96:                                  # another op
            node.op_type = rng.choice(_OPS)
        else:                                                # the opset
            model.opset_import[0].version = rng.choice((1, 6, 7, 10, 11, 13, 18, 22, 23, 10**6))
    return model.SerializeToString()


# ---- the sweep: every numeric field of a file × every boundary value, in order ----

SWEEP_VALUES = BOUNDARY_INTS + BOUNDARY_FLOATS + WRONG_TYPES


def _numeric_places(value):
    return [(c, k) for c, k in _locations(value) if isinstance(c[k], (int, float)) and not isinstance(c[k], bool)]


def _sweep_json(text: str, k: int):
    """(text with numeric field k // len(SWEEP_VALUES) set to value k % len(SWEEP_VALUES), cases)."""
    value = json.loads(text)
    places = _numeric_places(value)
    cases = len(places) * len(SWEEP_VALUES)
    if k < cases:
        container, key = places[k // len(SWEEP_VALUES)]
        container[key] = SWEEP_VALUES[k % len(SWEEP_VALUES)]
    return json.dumps(value), cases


def _sweep_member(data: bytes, member: str, k: int, decode, encode):
    members = _members(data)
    index = next(i for i, (info, _) in enumerate(members) if info.filename == member)
    text, cases = _sweep_json(decode(members[index][1]), k)
    members[index] = (members[index][0], encode(text))
    return rezip(members), cases


def _sweep_onnx(data: bytes, k: int):
    """Every int and float of every node attribute and integer initializer × every boundary number."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load_model_from_string(data)
    places = []
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT):
                places.append((attr, None))
            elif attr.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
                places += [(attr, i) for i in range(len(attr.ints) or len(attr.floats))]
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT64:
            places += [(tensor, i) for i in range(numpy_helper.to_array(tensor).size)]
    numbers = BOUNDARY_INTS + BOUNDARY_FLOATS
    cases = len(places) * len(numbers)
    if k < cases:
        target, i = places[k // len(numbers)]
        number = numbers[k % len(numbers)]
        if isinstance(target, onnx.TensorProto):
            array = numpy_helper.to_array(target).copy()
            array.flat[i] = _int64(int(number)) if _finite(number) else 0
            target.CopyFrom(numpy_helper.from_array(array, target.name))
        elif target.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS):
            value = _int64(int(number)) if _finite(number) else -1
            if i is None:
                target.i = value
            else:
                target.ints[i] = value
        elif i is None:
            target.f = float(number) if _finite(number) or isinstance(number, float) else math.inf
        else:
            target.floats[i] = float(number) if _finite(number) or isinstance(number, float) else math.inf
    return model.SerializeToString(), cases


def _finite(number) -> bool:
    """Whether ``number`` is a finite float or an int a float holds (10**400 is not)."""
    return abs(number) < 1e308 if isinstance(number, int) else math.isfinite(number)


def sweep(loader: str, data: bytes, k: int):
    """(case k of the sweep of a seed file, the number of cases): every numeric field of its JSON
    (grurt header, Keras config, model_config, safetensors header) or of its ONNX attributes and
    integer initializers, set to every boundary value in turn. None for formats without one."""
    if loader == "npz":
        return _sweep_member(data, "header.npy", k, lambda b: str(np.load(io.BytesIO(b), allow_pickle=False)),
                             lambda text: _npy(np.array(text)))
    if loader == "keras":
        return _sweep_member(data, "config.json", k, bytes.decode, str.encode)
    if loader == "onnx":
        return _sweep_onnx(data, k)
    if loader == "safetensors":
        length = struct.unpack_from("<Q", data)[0]
        text, cases = _sweep_json(data[8:8 + length].decode(), k)
        return struct.pack("<Q", len(text.encode())) + text.encode() + data[8 + length:], cases
    if loader == "h5":
        import h5py
        buffer = io.BytesIO(data)
        with h5py.File(buffer, "r+") as store:
            text, cases = _sweep_json(_text(store.attrs["model_config"]), k)
            store.attrs["model_config"] = text
        return buffer.getvalue(), cases
    return None


MUTATORS = {"npz": mutate_grurt_npz, "onnx": mutate_onnx, "keras": mutate_keras, "h5": mutate_h5,
            "safetensors": mutate_safetensors, "sdnpz": mutate_state_npz, "pt": mutate_pt}


def mutate_meaning(loader: str, data: bytes, rng: random.Random) -> bytes:
    return MUTATORS[loader](data, rng)
