"""PyTorch state dicts (parameter name → array) → grurt: :func:`from_state_dict`. See docs/state_dicts.md.

A state dict holds weights and names, not the forward pass. The names tell the module type and
sizes; what they cannot tell is never guessed and comes as an option (or is an error naming it):

==============================================  ====================  =====================================
parameter names in one module (prefix ``m.``)   module                grurt
==============================================  ====================  =====================================
``weight_ih_l{k}``, ``weight_hh_l{k}``,         ``nn.GRU``            one ``GRU`` layer per k (``_reverse``:
``bias_ih_l{k}``, ``bias_hh_l{k}`` (bias                              bidirectional), reset after
optional), suffix ``_reverse``                                        (``linear_before_reset=1``)
``weight_ih``, ``weight_hh``, ``bias_ih``,      ``nn.GRUCell``        a one-direction ``GRU`` layer over the
``bias_hh`` (bias optional)                                           sequence, ``linear_before_reset=1``
``weight`` (out, in), ``bias`` (out,)           ``nn.Linear``         ``Dense`` (per step on a sequence, as
                                                                      torch applies Linear)
``weight`` (num, dim) with                      ``nn.Embedding``      ``Embedding``: first module only, the
``types={"m": "Embedding"}``                                          model takes token ids (B, T)
``weight`` (out, in/groups, k), ``bias``        ``nn.Conv1d``         ``Conv1D`` over (B, T, C) (the
(optional); ``conv={"m": padding}``                                   transposes implied, as from_torch);
                                                                      a BatchNorm1d right after it folds in
``running_mean``, ``running_var``, ``weight``,  ``nn.BatchNorm1d``    ``Scale`` (eps ``eps={"m": ...}``,
``bias`` (affine), ``num_batches_tracked``                            default 1e-5), folded into the
                                                                      Conv1d or Linear before it
``weight`` (n,), ``bias`` (n,)                  ``nn.LayerNorm``      ``LayerNorm`` over the features (eps
                                                                      ``eps=``, default 1e-5)
==============================================  ====================  =====================================

``weight_hh`` with 3H rows is a GRU; 4H rows (``nn.LSTM``) or H (``nn.RNN``) are refused, as
are modules whose names match none of the rows above. What names cannot tell comes as an option:
a lone 2-D ``weight`` is ``nn.Linear(bias=False)`` or ``nn.Embedding`` (``types={"m": "Linear"}``
or ``"Embedding"``); a lone 1-D ``weight`` is ``nn.LayerNorm(bias=False)`` or another module
(``types={"m": "LayerNorm"}``); a Conv1d's padding, stride and dilation are not stored
(``conv={"m": "causal"}``, an int p for ``padding=p``, ``(left, right)``, ``"same"``, ``"valid"``,
or a dict ``{"padding": ..., "stride": s, "dilation": d, "groups": g}``: required for every Conv1d).

Modules run in the order the state dict lists them (PyTorch lists them in the order ``__init__``
assigns them, which is not always the call order: ``modules=[...]`` gives the order, and uses
only the modules it names). A ``.safetensors`` file stores names sorted, so its modules run in
the one order in which their sizes chain; when none or several do, ``modules=`` is required. The PyTorch gate and bias conventions are those of
:mod:`grurt.importers.torch` (:func:`~grurt.importers.torch.torch_gru_direction`).

Files: ``.npz`` (``numpy.savez``; read with ``allow_pickle=False``), ``.safetensors`` and
``.pt``/``.pth``/``.bin`` (``torch.load(weights_only=True)``, when torch is installed). Every
array is checked (numeric, finite, sizes within :mod:`grurt.limits`) before it reaches a layer.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from ..errors import GrurtError, ModelFormatError, UnsupportedModelError
from ..limits import (MAX_ARRAYS, MAX_LAYER_INDEX, MAX_MEMBER_BYTES, MAX_PARAMETERS, MAX_PICKLE_BYTES,
                      MAX_TORCH_BYTES, shown)
from ..model import Model
from ..spec import (GRU, Activation, ActivationFunction, Conv1D, Dense, Embedding, LastStep, LayerNorm, ModelSpec,
                    Scale, activation, append_folded, batchnorm_affine, layer_output)
from .scalers import with_scalers
from .torch import torch_gru_direction

_GRU_PARAM = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?")
_CELL_PARAMS = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
_TYPES = ("GRU", "GRUCell", "Linear", "Embedding", "Conv1d", "BatchNorm1d", "LayerNorm")
_WHAT_WE_READ = ("grurt reads the parameters of nn.GRU, nn.GRUCell, nn.Linear, nn.Embedding, nn.Conv1d, "
                 "nn.BatchNorm1d and nn.LayerNorm; build other layers with grurt.layers and grurt.Model.chain, "
                 "or leave this module out with modules=[...]")
_TORCH_EPS = 1e-5        # nn.BatchNorm1d's and nn.LayerNorm's default eps


def from_state_dict(source, last_step: bool = False, activations=None, modules=None, types=None,
                    key=None, input_scaler=None, output_scaler=None, conv=None, eps=None,
                    weights: str = "float32") -> Model:
    """A Model from a PyTorch state dict: a ``.npz``, ``.safetensors`` or ``.pt``/``.pth`` file, or a
    mapping name → array (numpy arrays or torch tensors).

    * ``last_step``: keep only the last time step after the last GRU (``output[:, -1]``); without
      it a Linear after a GRU applies to every step, as ``nn.Linear`` on a sequence does.
    * ``activations``: ``{module prefix: activation}`` applied to that module's output
      (``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"softmax"``, ... or a ``grurt.spec.activation(...)``).
    * ``modules``: the module prefixes in call order (default: the order of the state dict);
      modules not named are left out.
    * ``types``: ``{module prefix: "Linear"}`` where names cannot tell: a lone 2-D ``weight``
      (``"Linear"`` or ``"Embedding"``; an Embedding must be the first module, the model then
      takes token ids), a lone 1-D ``weight`` (``"LayerNorm"``).
    * ``conv``: ``{module prefix: padding}`` for each ``nn.Conv1d``, which the state dict does not
      store: ``"causal"`` ((k−1)·dilation frames on the left: the convolution streams), an int p
      (torch's ``padding=p``), ``(left, right)``, ``"same"`` or ``"valid"``; or a dict with
      ``padding`` and any of ``stride``, ``dilation``, ``groups`` (default 1). The Conv1d runs on
      the (B, T, C) sequence, the transposes to and from torch's (B, C, T) implied.
    * ``eps``: ``{module prefix: epsilon}`` of an ``nn.BatchNorm1d`` or ``nn.LayerNorm`` created
      with another eps than torch's default 1e-5.
    * ``key``: the entry holding the state dict in a checkpoint dict (``"model_state_dict"``).
    * ``input_scaler``/``output_scaler``: fitted scikit-learn scalers, as in :func:`grurt.from_torch`.
    * ``weights``: ``"float32"``, ``"bf16"`` or ``"int8"`` GRU weights, see :mod:`grurt.precision`.
    """
    arrays = read_state_dict(source, key=key)
    groups = _modules(arrays, modules)
    types = dict(types or {})
    activations = dict(activations or {})
    conv, eps = dict(conv or {}), dict(eps or {})
    for option, names in (("types", types), ("activations", activations), ("conv", conv), ("eps", eps)):
        unknown = [name for name in names if name not in groups]
        if unknown:
            raise ModelFormatError(f"{option} names {unknown}, which are not modules of the state dict "
                                   f"(modules: {_listing(groups)})")
    built = []
    for prefix, params in groups.items():
        kind = _module_type(prefix, params, types.get(prefix))
        for option, kinds in (("conv", ("Conv1d",)), ("eps", ("BatchNorm1d", "LayerNorm"))):
            if prefix in {"conv": conv, "eps": eps}[option] and kind not in kinds:
                raise ModelFormatError(f"{option} names module {_name(prefix)}, which is an nn.{kind}, not "
                                       f"{' or '.join('nn.' + k for k in kinds)}")
        built.append((prefix, kind, _build(kind, prefix, params, conv.get(prefix), eps.get(prefix, _TORCH_EPS))))
    if not any(kind in _GRU_LAYERS for _, kind, _ in built):
        raise UnsupportedModelError(f"the state dict holds no nn.GRU or nn.GRUCell parameters (modules: "
                                    f"{_listing(groups)})")
    if modules is None and _is_safetensors(source) and len(built) > 1:
        built = _order_by_sizes(built, source)
    embeddings = [index for index, (_, kind, _) in enumerate(built) if kind == "Embedding"]
    if embeddings and embeddings != [0]:
        prefix = built[embeddings[-1] if embeddings[0] == 0 else embeddings[0]][0]
        raise ModelFormatError(f"module {_name(prefix)} (nn.Embedding) must be the first module (its ids are the "
                               "model's input); pass modules=[...] in the order forward() calls them")
    last_gru = max(index for index, (_, kind, _) in enumerate(built) if kind in _GRU_LAYERS)
    layers, features = [], None
    for index, (prefix, kind, module_layers) in enumerate(built):
        takes = _takes(module_layers[0])
        if features is not None and takes != features:
            hint = (" (a grouped Conv1d: conv={%r: {'padding': ..., 'groups': g}})" % prefix
                    if kind == "Conv1d" and takes and features % takes == 0 else "")
            raise ModelFormatError(
                f"module {_name(prefix)} ({kind}) takes {takes} features, but the module before it "
                f"({_name(built[index - 1][0])}) gives {features}{hint}: the state dict lists modules in the order "
                "__init__ assigns them; pass modules=[...] in the order forward() calls them")
        function = activations.get(prefix)
        if function is not None:
            function = _activation(prefix, function)
        if kind == "Linear" and function is not None:
            module_layers = [Dense(module_layers[0].W, module_layers[0].b, function)]
            function = None
        # a BatchNorm1d folds into the Conv1d or Linear right before it, an activation into a Conv1d
        # (neither changes that layer's output size: only the layers appended are walked, linear time)
        first_new = len(layers)
        append_folded(layers, module_layers)
        if last_step and index == last_gru:
            layers.append(LastStep())
        if function is not None:
            append_folded(layers, [Activation(function)])
        if not first_new:
            features, has_time = _takes(layers[0]), True
        for k in range(first_new, len(layers)):
            features, has_time = layer_output(f"layer {k} ({type(layers[k]).__name__})", layers[k], features,
                                              has_time)
    spec = ModelSpec(_takes(layers[0]), tuple(layers))
    return Model(with_scalers(spec, input_scaler, output_scaler), weights)


def _takes(layer):
    """The features a module's first layer reads (None for an Embedding: it reads ids)."""
    if isinstance(layer, Embedding):
        return None
    return layer.size if isinstance(layer, (Scale, LayerNorm)) else layer.input_size


def _is_safetensors(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".safetensors")


def _order_by_sizes(built, source):
    """safetensors files store names sorted, not in the module order: the order is the one in which
    the sizes chain, when exactly one does (else modules=[...] must give it)."""
    if len(built) > 8:
        raise ModelFormatError(f"{source}: a .safetensors file stores parameter names sorted, not in module "
                               "order: pass modules=[...] in the order forward() calls them")
    orders = []

    def extend(order, remaining, features):
        if len(orders) > 1:
            return
        if not remaining:
            orders.append(order)
            return
        for index in remaining:
            layers = built[index][2]
            takes = _takes(layers[0])
            if takes is None and order:         # an Embedding reads the ids: first only
                continue
            if features is None or takes == features:
                extend(order + [index], remaining - {index}, ModelSpec(takes, tuple(layers)).output_size)

    extend([], frozenset(range(len(built))), None)
    if len(orders) != 1:
        names = [_name(prefix) for prefix, _, _ in built]
        raise ModelFormatError(
            f"{source}: a .safetensors file stores parameter names sorted, not in module order, and the sizes of "
            f"the modules {', '.join(names)} chain in {'no' if not orders else 'more than one'} order: pass "
            "modules=[...] in the order forward() calls them")
    return [built[index] for index in orders[0]]


# ---- reading: files and mappings → {name: float array} ----

def read_state_dict(source, key=None) -> dict:
    """{name: numpy array} from a state-dict file or mapping, every array checked."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such state-dict file: {path}")
        suffix = os.path.splitext(path)[1].lower()
        readers = {".npz": _read_npz, ".safetensors": _read_safetensors, ".pt": _read_torch,
                   ".pth": _read_torch, ".bin": _read_torch}
        if suffix not in readers:
            raise UnsupportedModelError(f"{path}: unknown state-dict file type {suffix!r}; expected .npz, "
                                        ".safetensors, .pt, .pth or .bin")
        try:
            mapping = readers[suffix](path)
        except (GrurtError, ImportError):
            raise
        except Exception as exc:    # noqa: BLE001 - readers of untrusted bytes: any failure is a malformed file
            raise ModelFormatError(f"{path}: not a readable {suffix} state dict "
                                   f"({type(exc).__name__}: {str(exc)[:200]})") from None
        where = path
    elif isinstance(source, Mapping):
        mapping, where = source, "the state dict"
    else:
        raise TypeError(f"from_state_dict expects a path or a mapping name -> array, got {type(source).__name__}")
    if key is not None:
        if key not in mapping or not isinstance(mapping[key], Mapping):
            raise ModelFormatError(f"{where}: no state dict under key {key!r} (keys: {_listing(mapping)})")
        mapping = mapping[key]
    nested = [name for name, value in mapping.items() if isinstance(value, Mapping)]
    if nested:
        raise ModelFormatError(f"{where} is a checkpoint holding dicts ({', '.join(map(repr, nested[:5]))}): "
                               f"pass key={nested[0]!r} (the one holding the model's parameters)")
    if len(mapping) > MAX_ARRAYS:
        raise ModelFormatError(f"{where}: {len(mapping)} arrays, more than {MAX_ARRAYS} (grurt.limits.MAX_ARRAYS)")
    arrays, total = {}, 0
    for name, value in mapping.items():
        if not isinstance(name, str):
            raise ModelFormatError(f"{where}: parameter names must be strings, got {name!r}")
        array = _checked(name, _numpy(value), where)
        total += array.size
        if total > MAX_PARAMETERS:
            raise ModelFormatError(f"{where}: more than {MAX_PARAMETERS} parameters (grurt.limits.MAX_PARAMETERS)")
        arrays[name] = array
    if not arrays:
        raise ModelFormatError(f"{where}: the state dict is empty")
    return arrays


def _numpy(value):
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):   # a torch tensor
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()   # bfloat16 included
    return value


def _checked(name, value, where) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ModelFormatError(f"{where}: {name!r} is a {type(value).__name__}, not an array")
    if value.dtype.kind not in "fiu" or value.dtype.hasobject:
        raise ModelFormatError(f"{where}: {name!r} has dtype {value.dtype}, expected numbers")
    if value.size > MAX_PARAMETERS:
        raise ModelFormatError(f"{where}: {name!r} has {value.size} elements, more than {MAX_PARAMETERS}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ModelFormatError(f"{where}: {name!r} contains NaN or infinity")
    return value


def _read_npz(path) -> dict:
    """``numpy.savez`` archives, member by member: each .npy header checked before its data is read."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ARRAYS:
            raise ModelFormatError(f"{path}: {len(infos)} members, more than {MAX_ARRAYS}")
        if any(info.filename == "header.npy" for info in infos):
            raise ModelFormatError(f"{path} has a 'header' entry: a grurt model file, not a state dict; "
                                   "load it with grurt.load")
        arrays, total = {}, 0
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise ModelFormatError(f"{path}: member {info.filename!r} is not a .npy array")
            if info.file_size > MAX_MEMBER_BYTES:
                raise ModelFormatError(f"{path}: member {info.filename!r} is larger than {MAX_MEMBER_BYTES >> 20} MiB")
            with archive.open(info) as handle:
                arrays[info.filename[:-4]] = _read_npy(handle, f"{path}: {info.filename}")
            total += arrays[info.filename[:-4]].size
            if total > MAX_PARAMETERS:
                raise ModelFormatError(f"{path}: more than {MAX_PARAMETERS} parameters")
    return arrays


def _read_npy(handle, where) -> np.ndarray:
    """One .npy stream, never unpickled: a numeric dtype and a size within the limits, then the data."""
    try:
        version = np.lib.format.read_magic(handle)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ModelFormatError(f"{where}: unknown .npy version {version}")
        shape, fortran, dtype = reader(handle)
    except (GrurtError, zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError):
        raise
    except Exception as exc:    # noqa: BLE001 - numpy parses the header with ast/tokenize: many exception types
        raise ModelFormatError(f"{where}: corrupt .npy header ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject or dtype.kind not in "fiu" or dtype.subdtype is not None:
        raise ModelFormatError(f"{where}: dtype {dtype}, expected numbers")
    count = math.prod(shape)
    if count > MAX_PARAMETERS:
        raise ModelFormatError(f"{where}: {count} elements, more than {MAX_PARAMETERS}")
    data = handle.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ModelFormatError(f"{where}: truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8}


def _read_safetensors(path) -> dict:
    try:
        from safetensors import safe_open
    except ImportError:
        raise ImportError("reading .safetensors needs safetensors: pip install grurt[torch] "
                          "(or pip install safetensors)") from None
    arrays, total = {}, 0
    with safe_open(path, framework="numpy") as store:
        names = list(store.keys())
        if len(names) > MAX_ARRAYS:
            raise ModelFormatError(f"{path}: {len(names)} tensors, more than {MAX_ARRAYS}")
        for name in names:
            view = store.get_slice(name)
            dtype, shape = view.get_dtype(), view.get_shape()
            if dtype not in _SAFETENSORS_DTYPES:
                raise UnsupportedModelError(f"{path}: tensor {name!r} has dtype {dtype}; grurt reads "
                                            f"{', '.join(_SAFETENSORS_DTYPES)} (convert bf16 to float32)")
            total += math.prod(shape)
            if total > MAX_PARAMETERS:
                raise ModelFormatError(f"{path}: more than {MAX_PARAMETERS} parameters")
            arrays[name] = np.asarray(store.get_tensor(name))
    return arrays


def _read_torch(path) -> dict:
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {os.path.basename(path)} needs torch (torch.load); without torch, save the "
                          "state dict as .npz or .safetensors: numpy.savez(path, **{k: v.numpy() for k, v in "
                          "state_dict.items()})") from None
    _check_torch_file(path)
    try:
        with warnings.catch_warnings():     # torch warns before refusing a TorchScript archive: refused below
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            value = torch.load(path, map_location="cpu", weights_only=True)     # never arbitrary unpickling
    except pickle.UnpicklingError as exc:       # weights_only refused a Python object
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else "Python object"
        if not what.startswith("torch.nn."):
            raise ModelFormatError(f"{path}: not a readable .pt state dict: it holds a pickled {what}, which only "
                                   "arbitrary unpickling could read, and grurt never unpickles code") from None
        raise ModelFormatError(
            f"{path}: not a readable .pt state dict: it holds a pickled {what} (torch.save(model) saves the module, "
            "not its state dict), and grurt never unpickles code. If you trust the file, load it and convert the "
            "module: grurt.from_torch(torch.load(path, weights_only=False)); or save its weights once with "
            "torch.save(model.state_dict(), path) and read those") from None
    except RuntimeError as exc:
        if "TorchScript" not in str(exc):
            raise
        raise ModelFormatError(f"{path}: not a readable .pt state dict: it is a TorchScript archive (torch.jit.save); "
                               "read its weights with grurt.from_state_dict(torch.jit.load(path).state_dict(), ...)"
                               ) from None
    if not isinstance(value, Mapping):
        raise ModelFormatError(f"{path} holds a {type(value).__name__}, not a state dict")
    return dict(value)


_TORCH_STORAGE = re.compile(r"[^/]*/data/\d+")      # a tensor storage's member in a torch.save archive


def _check_torch_file(path):
    """torch.load reads each member of a .pt zip archive whole, at the size the archive's directory
    declares (the pickle, every storage): those sizes are bounded here first. A legacy (non-zip)
    file holds its storages inline: its own size bounds them."""
    if not zipfile.is_zipfile(path):
        if os.path.getsize(path) > MAX_TORCH_BYTES:
            raise ModelFormatError(f"{path}: larger than {MAX_TORCH_BYTES >> 20} MiB (grurt.limits.MAX_TORCH_BYTES)")
        return
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    if len(infos) > MAX_ARRAYS:
        raise ModelFormatError(f"{path}: {len(infos)} archive members, more than {MAX_ARRAYS} "
                               "(grurt.limits.MAX_ARRAYS)")
    total = 0
    for info in infos:
        limit, name = ((MAX_TORCH_BYTES, "MAX_TORCH_BYTES") if _TORCH_STORAGE.fullmatch(info.filename)
                       else (MAX_PICKLE_BYTES, "MAX_PICKLE_BYTES"))
        if info.file_size > limit:
            raise ModelFormatError(f"{path}: member {shown(info.filename)} declares {info.file_size} bytes, more "
                                   f"than {limit >> 20} MiB (grurt.limits.{name})")
        total += info.file_size
    if total > MAX_TORCH_BYTES:
        raise ModelFormatError(f"{path}: its members declare {total} bytes in all, more than "
                               f"{MAX_TORCH_BYTES >> 20} MiB (grurt.limits.MAX_TORCH_BYTES)")


# ---- modules: names → types → canonical layers ----

def _name(prefix) -> str:
    return repr(prefix) if prefix else "(top level)"


def _listing(names) -> str:
    names = [_name(n) if isinstance(n, str) else repr(n) for n in names]
    return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def _modules(arrays, order) -> dict:
    """{module prefix: {parameter name: array}} in the state dict's order, or ``order``'s."""
    groups = {}
    for name, array in arrays.items():
        prefix, _, param = name.rpartition(".")
        groups.setdefault(prefix, {})[param] = array
    if order is None:
        return groups
    missing = [prefix for prefix in order if prefix not in groups]
    if missing:
        raise ModelFormatError(f"modules names {missing}, which are not in the state dict "
                               f"(modules: {_listing(groups)})")
    return {prefix: groups[prefix] for prefix in order}


def _module_type(prefix, params, declared) -> str:
    """The module type from the parameter names and shapes; anything else is an error naming it."""
    names = set(params)
    where = f"module {_name(prefix)}"
    if declared is not None:
        if declared not in _TYPES:
            raise UnsupportedModelError(f"{where}: types says {declared!r}; grurt reads {', '.join(_TYPES)}")
        if declared in ("Linear", "Embedding", "LayerNorm"):       # what the names may not tell
            shapes = {"Linear": ({"weight"}, {"weight", "bias"}), "Embedding": ({"weight"},),
                      "LayerNorm": ({"weight"}, {"weight", "bias"})}[declared]
            ndim = 1 if declared == "LayerNorm" else 2
            if names not in shapes or np.ndim(params["weight"]) != ndim:
                raise ModelFormatError(f"{where}: types says {declared!r}, but its parameters are not those of "
                                       f"nn.{declared}: {sorted(names)} (weight {np.shape(params.get('weight'))})")
        elif _module_type(prefix, params, None) != declared:    # the names tell the others apart
            raise ModelFormatError(f"{where}: types says {declared!r}, but its parameters are not those of "
                                   f"nn.{declared}: {sorted(names)}")
        return declared
    if names and all(_GRU_PARAM.fullmatch(name) for name in names):
        _recurrent_kind(where, params[min(n for n in names if n.startswith("weight_hh"))]
                        if any(n.startswith("weight_hh") for n in names) else None, "nn.GRU")
        return "GRU"
    if names <= _CELL_PARAMS and {"weight_ih", "weight_hh"} <= names:
        _recurrent_kind(where, params["weight_hh"], "nn.GRUCell")
        return "GRUCell"
    if names in ({"weight", "bias"}, {"weight"}) and np.ndim(params["weight"]) == 2 \
            and ("bias" not in names or np.ndim(params["bias"]) == 1):
        if names == {"weight"}:
            raise UnsupportedModelError(
                f"{where} has a lone 2-D 'weight' {tuple(params['weight'].shape)}: nn.Linear(bias=False) or "
                f"nn.Embedding? The names cannot tell: pass types={{{prefix!r}: 'Linear'}} if it is a Linear, "
                f"types={{{prefix!r}: 'Embedding'}} if it is an Embedding (the first module)")
        return "Linear"
    if {"running_mean", "running_var"} <= names <= {"running_mean", "running_var", "weight", "bias",
                                                    "num_batches_tracked"}:
        return "BatchNorm1d"
    if names in ({"weight", "bias"}, {"weight"}) and np.ndim(params["weight"]) == 3 \
            and ("bias" not in names or np.ndim(params["bias"]) == 1):
        return "Conv1d"
    if names == {"weight", "bias"} and np.ndim(params["weight"]) == 1 and np.ndim(params["bias"]) == 1:
        return "LayerNorm"
    if names == {"weight"} and np.ndim(params["weight"]) == 1:
        raise UnsupportedModelError(
            f"{where} has a lone 1-D 'weight' {tuple(params['weight'].shape)}: nn.LayerNorm(bias=False) or "
            f"another module (nn.PReLU, ...)? The names cannot tell: pass types={{{prefix!r}: 'LayerNorm'}} if it "
            "is a LayerNorm")
    raise UnsupportedModelError(f"{where} ({_guess(params)}) with parameters {sorted(names)}: {_WHAT_WE_READ}")


def _recurrent_kind(where, weight_hh, module):
    if weight_hh is None:
        raise ModelFormatError(f"{where}: {module} parameters without weight_hh")
    rows, hidden = (tuple(np.shape(weight_hh)) + (0, 0))[:2]
    if np.ndim(weight_hh) != 2 or hidden < 1 or rows != 3 * hidden:
        other = {4: "nn.LSTM/LSTMCell", 1: "nn.RNN/RNNCell"}.get(rows // hidden if hidden else 0)
        raise UnsupportedModelError(
            f"{where}: weight_hh has shape {tuple(np.shape(weight_hh))}, not (3·hidden, hidden)"
            + (f": {other} parameters; grurt runs GRUs" if other and rows % hidden == 0 else ""))


def _guess(params) -> str:
    """What a module we do not read probably is, to name it in the error."""
    names = set(params)
    if {"running_mean", "running_var"} <= names:
        return "nn.BatchNorm1d"
    if names == {"weight"} and np.ndim(params["weight"]) == 2:
        return "nn.Embedding?"
    if "weight" in names and np.ndim(params["weight"]) == 3:
        return "nn.Conv1d"
    if names <= {"weight", "bias"} and "weight" in names and np.ndim(params["weight"]) == 1:
        return "nn.LayerNorm"
    if any(name.startswith(("weight_ih", "weight_hh")) for name in names):
        return "a recurrent module with parameters grurt does not know (proj_size?)"
    return "an unknown module"


def _param(where, params, name, shape):
    if name not in params:
        raise ModelFormatError(f"{where}: parameter {name!r} is missing")
    array = params[name]
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ModelFormatError(f"{where}: {name} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    return np.asarray(array, np.float64)


def _gru_module(prefix, params) -> list:
    """nn.GRU: weight_ih_l{k}[_reverse], ... → one GRU layer per k."""
    where = f"module {_name(prefix)} (nn.GRU)"
    for name in params:     # the layer index, bounded before anything counts up to it
        k = _GRU_PARAM.fullmatch(name).group(2)
        if len(k) > len(str(MAX_LAYER_INDEX)) or int(k) > MAX_LAYER_INDEX:
            index = k if len(k) <= 20 else f"of {len(k)} digits"
            raise ModelFormatError(f"{where}: parameter {shown(name)} has layer index {index}, more than "
                                   f"{MAX_LAYER_INDEX} (grurt.limits.MAX_LAYER_INDEX)")
    found = {_GRU_PARAM.fullmatch(name).groups() for name in params}
    depth = 1 + max(int(k) for _, k, _ in found)
    directions = 2 if any(reverse for _, _, reverse in found) else 1
    bias = any(kind.startswith("bias") for kind, _, _ in found)
    expected = {(kind, str(k), suffix or None) for k in range(depth) for suffix in ("", "_reverse")[:directions]
                for kind in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())}
    extra = {f"{kind}_l{k}{suffix or ''}" for kind, k, suffix in found - expected}
    missing = {f"{kind}_l{k}{suffix or ''}" for kind, k, suffix in expected - found}
    if extra or missing:
        raise ModelFormatError(f"{where}: the parameters do not form {depth} layer(s) of "
                               f"{'bidirectional ' if directions == 2 else ''}GRU"
                               f"{' with bias' if bias else ''}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    layers = []
    for k in range(depth):
        per_direction = []
        for suffix in ("", "_reverse")[:directions]:
            w_hh = params[f"weight_hh_l{k}{suffix}"]
            hidden = w_hh.shape[1] if w_hh.ndim == 2 else 0
            inputs = params[f"weight_ih_l{k}{suffix}"].shape[-1] if params[f"weight_ih_l{k}{suffix}"].ndim == 2 else 0
            if hidden < 1 or inputs < 1:
                raise ModelFormatError(f"{where}: layer {k} weights must be 2-D and non-empty")
            if k and inputs != directions * hidden:
                raise ModelFormatError(f"{where}: weight_ih_l{k}{suffix} takes {inputs} features, layer {k - 1} "
                                       f"gives {directions * hidden}")
            per_direction.append(_direction(where, params, f"_l{k}{suffix}", inputs, hidden, bias))
        W, R, B = (np.stack(parts) for parts in zip(*per_direction))
        layers.append(GRU(W=W, R=R, B=B, direction="bidirectional" if directions == 2 else "forward",
                          linear_before_reset=True))
    return layers


def _direction(where, params, suffix, inputs, hidden, bias):
    names = [name + suffix for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    shapes = [(3 * hidden, inputs), (3 * hidden, hidden), (3 * hidden,), (3 * hidden,)]
    arrays = [_param(where, params, n, s) for n, s in zip(names[:2], shapes[:2])]
    arrays += [_param(where, params, n, s) if bias else None for n, s in zip(names[2:], shapes[2:])]
    return torch_gru_direction(*arrays)


def _gru_cell(prefix, params) -> list:
    """nn.GRUCell: weight_ih, weight_hh[, bias_ih, bias_hh] → a one-direction GRU layer."""
    where = f"module {_name(prefix)} (nn.GRUCell)"
    bias = {"bias_ih", "bias_hh"} & set(params)
    if bias and len(bias) != 2:
        raise ModelFormatError(f"{where}: has {sorted(bias)} but not both bias_ih and bias_hh")
    w_ih, w_hh = params["weight_ih"], params["weight_hh"]
    if w_ih.ndim != 2 or w_hh.ndim != 2 or 0 in w_ih.shape:
        raise ModelFormatError(f"{where}: weight_ih and weight_hh must be non-empty 2-D arrays")
    W, R, B = _direction(where, params, "", w_ih.shape[1], w_hh.shape[1], bool(bias))
    return [GRU(W=W[None], R=R[None], B=B[None], linear_before_reset=True)]


def _linear(prefix, params) -> Dense:
    where = f"module {_name(prefix)} (nn.Linear)"
    weight = _param(where, params, "weight", None)
    if weight.ndim != 2 or 0 in weight.shape:
        raise ModelFormatError(f"{where}: weight must be a non-empty 2-D (out, in) array, got {weight.shape}")
    bias = _param(where, params, "bias", (weight.shape[0],)) if "bias" in params else np.zeros(weight.shape[0])
    if set(params) - {"weight", "bias"}:
        raise ModelFormatError(f"{where}: unexpected parameters {sorted(set(params) - {'weight', 'bias'})}")
    return Dense(weight, bias)


_GRU_LAYERS = {"GRU": _gru_module, "GRUCell": _gru_cell}


def _build(kind, prefix, params, conv, eps) -> list:
    """The canonical layers of one module of type ``kind``."""
    if kind in _GRU_LAYERS:
        return _GRU_LAYERS[kind](prefix, params)
    if kind == "Linear":
        return [_linear(prefix, params)]
    return {"Embedding": _embedding, "Conv1d": _conv1d, "BatchNorm1d": _batch_norm,
            "LayerNorm": _layer_norm}[kind](f"module {_name(prefix)} (nn.{kind})", prefix, params, conv, eps)


def _embedding(where, prefix, params, conv, eps):
    weight = _param(where, params, "weight", None)
    if weight.ndim != 2 or 0 in weight.shape:
        raise ModelFormatError(f"{where}: weight must be a non-empty 2-D (num, dim) array, got {weight.shape}")
    return [Embedding(weight)]         # padding_idx only affects training


def _conv1d(where, prefix, params, conv, eps):
    """nn.Conv1d: weight (out, in/groups, k), bias; padding, stride, dilation and groups from ``conv``."""
    if conv is None:
        raise UnsupportedModelError(
            f"{where}: a state dict does not store a Conv1d's padding: pass conv={{{prefix!r}: padding}} with "
            "padding 'causal', an int p (torch's padding=p), (left, right), 'same' or 'valid' (or a dict with "
            "'padding' and any of 'stride', 'dilation', 'groups')")
    options = dict(conv) if isinstance(conv, Mapping) else {"padding": conv}
    unknown = set(options) - {"padding", "stride", "dilation", "groups"}
    if unknown or "padding" not in options:
        raise ModelFormatError(f"{where}: conv options are 'padding' (required), 'stride', 'dilation' and "
                               f"'groups', got {sorted(options)}")
    weight = _param(where, params, "weight", None)
    if weight.ndim != 3 or 0 in weight.shape:
        raise ModelFormatError(f"{where}: weight must be a non-empty 3-D (out, in/groups, k) array, got "
                               f"{weight.shape}")
    out, _, k = weight.shape
    bias = _param(where, params, "bias", (out,)) if "bias" in params else np.zeros(out)
    stride, dilation, groups = (options.get(name, 1) for name in ("stride", "dilation", "groups"))
    for name, value in (("stride", stride), ("dilation", dilation), ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ModelFormatError(f"{where}: conv {name} must be a positive integer, got {value!r}")
    padding = options["padding"]
    span = (k - 1) * dilation + 1
    if padding == "causal":
        padding = (span - 1, 0)
    elif padding == "valid":
        padding = (0, 0)
    elif padding == "same":             # torch: stride 1, the odd frame on the right
        if stride != 1:
            raise ModelFormatError(f"{where}: torch's padding='same' needs stride 1, got {stride}")
        padding = ((span - 1) // 2, span - 1 - (span - 1) // 2)
    elif isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (int(padding), int(padding))
    elif not (isinstance(padding, (tuple, list)) and len(padding) == 2):
        raise ModelFormatError(f"{where}: conv padding must be 'causal', 'same', 'valid', an int or (left, right), "
                               f"got {padding!r}")
    return [Conv1D(W=weight, b=bias, stride=stride, dilation=dilation, groups=groups, padding=tuple(padding))]


def _batch_norm(where, prefix, params, conv, eps):
    """nn.BatchNorm1d in eval mode: a per-channel x·a + c from the running statistics."""
    mean = _param(where, params, "running_mean", None)
    if mean.ndim != 1 or mean.size == 0:
        raise ModelFormatError(f"{where}: running_mean must be a non-empty 1-D array, got {mean.shape}")
    n = mean.size
    variance = _param(where, params, "running_var", (n,))
    if (variance < 0).any():
        raise ModelFormatError(f"{where}: running_var has negative values")
    gamma = _param(where, params, "weight", (n,)) if "weight" in params else None
    beta = _param(where, params, "bias", (n,)) if "bias" in params else None
    if (gamma is None) != (beta is None):
        raise ModelFormatError(f"{where}: an affine BatchNorm1d has both weight and bias")
    a, c = batchnorm_affine(mean, variance, _eps(where, eps), gamma, beta)
    return [Scale(a, c)]


def _layer_norm(where, prefix, params, conv, eps):
    gamma = _param(where, params, "weight", None)
    if gamma.ndim != 1 or gamma.size == 0:
        raise ModelFormatError(f"{where}: weight must be a non-empty 1-D array, got {gamma.shape}")
    beta = _param(where, params, "bias", gamma.shape) if "bias" in params else np.zeros(gamma.size)
    return [LayerNorm(gamma, beta, _eps(where, eps))]


def _eps(where, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ModelFormatError(f"{where}: eps must be a non-negative number, got {value!r}")
    return float(value)


def _activation(prefix, value) -> ActivationFunction:
    if isinstance(value, ActivationFunction):
        return value
    if isinstance(value, str):
        return activation(value)
    raise ModelFormatError(f"activations[{prefix!r}] must be an activation name (e.g. 'sigmoid') or "
                           f"grurt.spec.activation(...), got {value!r}")
