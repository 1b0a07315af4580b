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

#: Element ids the fusion pass (grurt.fusion) hands out or moves while it interprets a graph, over
#: every interpretation of one graph (of one ONNX file: probe sizes, retries): every input, layer
#: output and state element takes one, every value computed from them holds one per element (an
#: int64 each), and every node interpreted counts as 512. The pass's time is about a microsecond per
#: id: this bounds a hostile file to seconds. A graph with fixed sizes beyond it loads with dynamic
#: batch and time axes (grurt then interprets it at small probe sizes).
MAX_IDS = 1 << 22

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

#: Bytes of a PyTorch .pt/.pth/.bin file's members (a zip archive: each member, and all of them
#: together), or of a legacy (non-zip) file, checked before ``torch.load`` reads it.
MAX_TORCH_BYTES = MAX_HDF5_BYTES

#: Bytes of a .pt archive's members other than tensor storages: the pickle (data.pkl, about
#: 100 bytes per tensor of a state dict), version, byteorder, ...
MAX_PICKLE_BYTES = 64 << 20

# ---- the numbers a layer holds: each checked by the layer itself (files and the Python API
# alike), so that every size derived from them fits the kernels' 32-bit indexing ----

#: Frames one window spans: a Conv1D's (kernel_size − 1)·dilation + 1 (so its kernel_size too),
#: a Pool1D's size.
MAX_WINDOW_FRAMES = 1 << 16

#: A Conv1D's dilation.
MAX_DILATION = 1 << 16

#: Frames between two windows of a Conv1D or Pool1D.
MAX_STRIDE = 1 << 16

#: Zero frames a model's layers may add to a sequence, in all: both sides of every ZeroPad1D,
#: Conv1D and Pool1D padding (a SAME padding counts as its window − 1, the most it adds).
MAX_PADDING_FRAMES = 1 << 16

#: Steps a Flatten takes.
MAX_FLATTEN_STEPS = 1 << 16

#: Features of one step of any tensor of a model (a Flatten's: steps × features).
MAX_FEATURES = 1 << 24

#: The largest layer index k in a state dict's names (``weight_ih_l{k}``: nn.GRU's num_layers − 1).
MAX_LAYER_INDEX = 1023

#: Epsilon of LayerNorm, UnitNorm and batch normalisation: from 0 to MAX_EPSILON.
MAX_EPSILON = 1.0

#: Magnitude of an activation function's alpha and beta.
MAX_ACTIVATION_PARAMETER = 1e6

#: Magnitude of any other number a model holds (mask_value, GRU clip): float32's largest.
MAX_FLOAT32 = 3.4028234663852886e38

#: Elements of any tensor a call computes (batch × frames × features, a padded sequence
#: included): the kernels index with 32-bit ints. Checked with grurt.model.MEMORY_LIMIT_BYTES
#: before a call allocates anything.
MAX_TENSOR_ELEMENTS = 2**31 - 1


def shown(value) -> str:
    """``repr(value)``, short: a huge integer (10**400 from a JSON header) by its digit count."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def bounded_int(owner: str, name: str, value, low: int, high: int, limit_name: str = "", error=None) -> int:
    """``value`` as an int within [low, high], else ``error`` (ModelFormatError) naming the field
    and, when given, the limit of this module that bounds it. Compared as Python ints: no overflow."""
    import numbers

    if error is None:
        from .errors import ModelFormatError as error
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        limit = f" (grurt.limits.{limit_name})" if limit_name else ""
        raise error(f"{owner}: {name} must be an integer from {low} to {high}{limit}, got {shown(value)}")
    return int(value)


def bounded_float(owner: str, name: str, value, low: float, high: float, limit_name: str = "", error=None) -> float:
    """``value`` (an int or a float, not a bool) as a float within [low, high] (so finite; NaN is
    refused), else ``error`` (ModelFormatError) naming the field. A huge int is compared, never
    converted (``float(10**400)`` overflows)."""
    import numbers

    if error is None:
        from .errors import ModelFormatError as error
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        limit = f" (grurt.limits.{limit_name})" if limit_name else ""
        raise error(f"{owner}: {name} must be a number from {low:g} to {high:g}{limit}, got {shown(value)}")
    return float(value)


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
