"""Bounds on what a model file may make grurt allocate.

A model file is data from possibly untrusted hands: a few-MB compressed archive of zeros or a
protobuf that declares a huge shape must not make a loader allocate gigabytes. Each loader
checks the sizes a file declares against these limits *before* it reads or allocates.
"""

#: Parameters (float32 values: 1 GiB) one grurt .npz file may declare in all, and the elements
#: of any one array a Keras file holds or any one tensor an ONNX file holds or builds.
MAX_PARAMETERS = 2**28

#: Bytes of the JSON header of a grurt .npz file.
MAX_HEADER_BYTES = 1 << 20

#: Bytes of a JSON member (config.json, metadata.json) of a .keras archive.
MAX_JSON_BYTES = 64 << 20

#: Element ids the ONNX importer hands out while it interprets a graph at a probe size: every
#: input, layer output and state element takes one (an int64 each, so 512 MiB).
MAX_IDS = 1 << 26

#: Bytes of an HDF5 file grurt reads (a legacy Keras .h5 file, or the model.weights.h5 member of
#: a .keras archive, decompressed): MAX_PARAMETERS float32 values and room for the file's own
#: structures. Also the decompressed size of any one member of a state-dict .npz archive.
MAX_HDF5_BYTES = 4 * MAX_PARAMETERS + (64 << 20)
MAX_MEMBER_BYTES = MAX_HDF5_BYTES

#: Arrays (datasets, archive members, state-dict entries, names in an HDF5 name-list attribute)
#: one file may hold.
MAX_ARRAYS = 100_000

#: Nesting depth of JSON (Keras configs, grurt headers, safetensors headers). Keras configs nest
#: about 10 deep.
MAX_JSON_DEPTH = 64


def json_depth_ok(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests at most ``limit`` deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def parse_json(text, where: str, error=None):
    """``json.loads`` for file content: bad JSON, JSON nested deeper than MAX_JSON_DEPTH (or the
    parser's own recursion limit) and non-UTF-8 bytes raise ``error`` (ModelFormatError)."""
    import json

    if error is None:
        from .errors import ModelFormatError as error
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        value = json.loads(str(text))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise error(f"{where} is not valid JSON ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not json_depth_ok(value):
        raise error(f"{where} nests deeper than {MAX_JSON_DEPTH} levels (grurt.limits.MAX_JSON_DEPTH)")
    return value
