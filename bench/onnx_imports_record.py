"""Every ONNX file the tests read, and what two builds make of it: the same models? (docs/architecture-tensor-graph.md,
"One IR", step 3: the fusion pass over the TensorGraph must give what the fused interpreter gave.)

1. record: run tests with the hook, in every process (pytest, its workers, the children of the hostile-file tests):

       mkdir -p /tmp/onnx_imports && python bench/onnx_imports_record.py install /tmp/onnx_hook
       ONNX_IMPORTS=/tmp/onnx_imports PYTHONPATH=/tmp/onnx_hook:bench:src python -m pytest -q tests/test_onnx*.py ...

   Each file read by ``grurt.importers.onnx.proto._open`` (a path or bytes) is stored once under $ONNX_IMPORTS/<sha>/
   with the external data files it points to inside its folder.

2. describe, with each build: ``PYTHONPATH=BUILD/src python bench/onnx_imports_record.py describe /tmp/onnx_imports
   OUT.pkl``: for each file, the outcome of ``load_onnx``, ``session_model``, ``_import`` (the fused result the torch
   export reads) and ``tensor_graph_from_source``: every field of the model (layers, arrays, names, FileStates, the
   TensorGraph's nodes and constants) or the error's type and message, and the warnings.

3. ``python bench/onnx_imports_record.py compare A.pkl B.pkl``: counts, and every difference (arrays by
   ``np.array_equal``, dtypes and shapes too).

4. ``python bench/onnx_imports_record.py regions A.pkl B.pkl``: the general models (``load_onnx`` gives a
   TensorModel, or else ``session_model`` does): their outputs on random inputs, the same bits in both? and how
   many GRU nodes became ``grurt.Chain`` nodes (the fusion pass on their regions, "Step 3: regions").
"""
import dataclasses
import hashlib
import importlib.util
import os
import pickle
import sys
import warnings

import numpy as np

_MODULE = "grurt.importers.onnx.proto"


# ---- 1. recording ----

def _store(path):
    folder = os.environ.get("ONNX_IMPORTS")
    if not folder:
        return
    if isinstance(path, (bytes, bytearray, memoryview)):
        data, kind, source = bytes(path), "bytes", None
    else:
        with open(path, "rb") as handle:
            data = handle.read()
        kind, source = "path", os.path.dirname(os.path.abspath(path))
    extra = {}
    if source is not None:
        import onnx

        try:
            model = onnx.load_model_from_string(data)
        except Exception:
            model = None
        tensors = list(model.graph.initializer) if model is not None else []
        for node in (model.graph.node if model is not None else ()):
            tensors += [a.t for a in node.attribute if a.HasField("t")]
        for tensor in tensors:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            target = os.path.realpath(os.path.join(source, location)) if location else None
            if target and os.path.commonpath([source, target]) == source and os.path.isfile(target) \
                    and os.path.getsize(target) < 1 << 28:
                with open(target, "rb") as handle:
                    extra[os.path.relpath(target, source)] = handle.read()
    digest = hashlib.sha256(kind.encode() + data + b"".join(k.encode() + v for k, v in sorted(extra.items())))
    out = os.path.join(folder, digest.hexdigest()[:24])
    if os.path.exists(out):
        return
    os.makedirs(out + ".tmp", exist_ok=True)
    with open(os.path.join(out + ".tmp", "model.onnx"), "wb") as handle:
        handle.write(data)
    for name, content in extra.items():
        os.makedirs(os.path.dirname(os.path.join(out + ".tmp", name)), exist_ok=True)
        with open(os.path.join(out + ".tmp", name), "wb") as handle:
            handle.write(content)
    with open(os.path.join(out + ".tmp", "kind"), "w") as handle:
        handle.write(kind)
    try:
        os.rename(out + ".tmp", out)
    except OSError:
        pass


def _patch(module):
    original = module._open

    def _open(path):
        try:
            _store(path)
        except Exception:
            pass
        return original(path)

    module._open = _open


class _Finder:
    """Wraps grurt.importers.onnx.proto's _open as the module is first imported (before its importers bind it)."""

    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def hook():
    if os.environ.get("ONNX_IMPORTS"):
        sys.meta_path.insert(0, _Finder())


def install(folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as handle:
        handle.write("import onnx_imports_record\nonnx_imports_record.hook()\n")


# ---- 2. describing ----

def plain(x, seen=None):
    """``x`` as nested tuples/dicts of plain values and numpy arrays: every dataclass field, recursively."""
    if isinstance(x, np.ndarray):
        return ("array", x.dtype.str, x.shape, np.array(x))
    if isinstance(x, np.generic):
        return ("scalar", x.dtype.str, x.item())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__, {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)})
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [plain(v) for v in x])
    if isinstance(x, dict):
        return ("dict", [(plain(k), plain(v)) for k, v in x.items()])
    if isinstance(x, (set, frozenset)):
        return ("set", sorted(repr(v) for v in x))
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return ("object", type(x).__name__, repr(x))


def describe_model(model):
    from grurt.tensor_model import TensorModel

    if isinstance(model, TensorModel):
        return ("TensorModel", plain(model.graph), model.weights)
    return (type(model).__name__, plain(model._source), model.weights, plain(model._file_states))


def _outcome(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn()
            error = None
        except Exception as exc:
            value, error = None, (type(exc).__name__, str(exc))
    return value, error, [str(w.message) for w in caught]


#: sizes tried for the dim parameters of a general model's inputs, in order (the first the model runs at)
_SIZES = (lambda params: {p: 3 for p in params}, lambda params: {p: 3 + i for i, p in enumerate(params)},
          lambda params: {p: 1 for p in params})


def run_random(model, seed):
    """(the sizes' index, the outputs) of a general model on random inputs at the first of _SIZES it runs at, or
    the last error: the same inputs in every build (they depend on the declared inputs only)."""
    params = list(dict.fromkeys(d for i in model.graph.inputs for d in i.dims if isinstance(d, str)))
    error = None
    for index, sizes in enumerate(_SIZES):
        sizes = sizes(params)
        rng = np.random.default_rng([seed, index])
        arrays = []
        for tensor_input in model.graph.inputs:
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in tensor_input.dims)
            arrays.append(rng.standard_normal(shape).astype(np.float32) if tensor_input.dtype == "float32" else
                          rng.integers(0, 3, shape) if tensor_input.dtype == "int64" else rng.random(shape) < 0.5)
        try:
            outputs = model.run(dict(zip(model.input_names, arrays)))
            return index, plain(outputs if isinstance(outputs, tuple) else (outputs,))
        except Exception as exc:
            error = (type(exc).__name__, str(exc))
    return None, error


def chains(model):
    """(the grurt.Chain nodes, the GRU nodes) of a general model's graph."""
    ops = [node.op for node in model.graph.nodes]
    return ops.count("grurt.Chain"), ops.count("GRU")


def describe_file(folder):
    from grurt.importers.onnx import _import, load_onnx, session_model
    from grurt.importers.onnx.general import tensor_graph_from_source
    from grurt.importers.onnx.proto import _open

    with open(os.path.join(folder, "kind")) as handle:
        kind = handle.read()
    path = os.path.join(folder, "model.onnx")
    if kind == "bytes":
        with open(path, "rb") as handle:
            path = handle.read()
    result = {}
    model, error, caught = _outcome(lambda: load_onnx(path))
    result["load_onnx"] = (describe_model(model) if model is not None else None, error, caught)
    if type(model).__name__ == "TensorModel":      # a general model: what it computes, and its fused regions
        seed = int(os.path.basename(folder)[:8], 16)
        result["outputs"] = (run_random(model, seed), None, [])
        result["chains"] = (chains(model), None, [])
    value, error, caught = _outcome(lambda: session_model(path))
    result["session_model"] = ((describe_model(value[0]), value[1]) if value is not None else None, error, caught)
    if value is not None and type(value[0]).__name__ == "TensorModel" and "outputs" not in result:
        seed = int(os.path.basename(folder)[:8], 16)        # a file fused whole but not as the session reads it
        result["outputs"] = (run_random(value[0], seed), None, [])
        result["chains"] = (chains(value[0]), None, [])
    value, error, caught = _outcome(lambda: _import(path)[-1])      # main: (source, result); after: (.., graph, result)
    result["_import"] = (plain(value)[1] if value is not None else None, error, caught)    # its fields, not its name
    value, error, caught = _outcome(lambda: tensor_graph_from_source(_open(path)))
    result["tensor_graph"] = (plain(value) if value is not None else None, error, caught)
    return result


def describe(folder, out):
    import grurt

    records = {}
    names = sorted(n for n in os.listdir(folder) if not n.endswith(".tmp"))
    for index, name in enumerate(names):
        records[name] = describe_file(os.path.join(folder, name))
        if index % 200 == 0:
            print(f"{index}/{len(names)}", file=sys.stderr)
    with open(out, "wb") as handle:
        pickle.dump({"grurt": grurt.__file__, "records": records}, handle)
    print(f"{len(records)} files described with {grurt.__file__}")


# ---- 3. comparing ----

def differences(a, b, where="", found=None):
    found = [] if found is None else found
    if isinstance(a, tuple) and a and a[0] == "array" and isinstance(b, tuple) and b and b[0] == "array":
        if a[1:3] != b[1:3] or not np.array_equal(a[3], b[3], equal_nan=a[3].dtype.kind == "f"):
            found.append(f"{where}: arrays differ ({a[1]} {a[2]} vs {b[1]} {b[2]})")
        return found
    if type(a) is not type(b):
        found.append(f"{where}: {str(a)[:200]} vs {str(b)[:200]}")
    elif isinstance(a, (tuple, list)):
        if len(a) != len(b):
            found.append(f"{where}: length {len(a)} vs {len(b)}: {str(a)[:300]} vs {str(b)[:300]}")
        else:
            for k, (x, y) in enumerate(zip(a, b)):
                differences(x, y, f"{where}/{k}", found)
    elif isinstance(a, dict):
        if set(a) != set(b):
            found.append(f"{where}: keys {sorted(a)} vs {sorted(b)}")
        for key in sorted(set(a) & set(b)):
            differences(a[key], b[key], f"{where}/{key}", found)
    elif a != b:
        found.append(f"{where}: {str(a)[:300]} vs {str(b)[:300]}")
    return found


def compare(first, second):
    with open(first, "rb") as handle:
        a = pickle.load(handle)
    with open(second, "rb") as handle:
        b = pickle.load(handle)
    print(f"A: {a['grurt']}\nB: {b['grurt']}")
    ra, rb = a["records"], b["records"]
    common = sorted(set(ra) & set(rb))
    print(f"files: {len(common)} ({len(set(ra) ^ set(rb))} in one only)")
    counts = {}
    differing = 0
    for name in common:
        x, y = ra[name], rb[name]
        model = x["load_onnx"]
        kind = "error" if model[0] is None else "general" if model[0][0] == "TensorModel" else "fused"
        counts[kind] = counts.get(kind, 0) + 1
        found = []
        for entry in x:
            (va, ea, wa), (vb, eb, wb) = x[entry], y[entry]
            if ea != eb:
                found.append(f"{entry}: error {ea} vs {eb}")
            if wa != wb:
                found.append(f"{entry}: warnings {wa} vs {wb}")
            differences(va, vb, entry, found)
        if found:
            differing += 1
            print(f"--- {name} ({kind} in A)")
            for line in found[:12]:
                print("   ", line)
    print(f"load_onnx in A: {counts}; files with a difference: {differing}")


def regions(first, second):
    """The general models of A and B: their outputs on random inputs (the same bits?) and the grurt.Chain and
    GRU nodes of each (a region fused: GRU nodes become grurt.Chain nodes)."""
    with open(first, "rb") as handle:
        a = pickle.load(handle)["records"]
    with open(second, "rb") as handle:
        b = pickle.load(handle)["records"]
    counts = {"general": 0, "fused": 0, "same bits": 0, "same error": 0, "differ": 0, "chains": 0, "GRU before": 0,
              "GRU after": 0, "GRU-free": 0}
    for name in sorted(set(a) & set(b)):
        if "outputs" not in a[name]:
            continue
        counts["general"] += 1
        if "outputs" not in b[name]:
            print(f"--- {name}: general in A only")
            counts["differ"] += 1
            continue
        (chain_a, gru_a), (chain_b, gru_b) = a[name]["chains"][0], b[name]["chains"][0]
        counts["GRU before"] += gru_a
        counts["GRU after"] += gru_b
        counts["chains"] += chain_b - chain_a
        counts["fused"] += gru_b < gru_a
        counts["GRU-free"] += gru_a == 0
        (ia, va), (ib, vb) = a[name]["outputs"][0], b[name]["outputs"][0]
        found = [] if ia == ib else [f"sizes {ia} vs {ib}"]
        differences(va, vb, "outputs", found)
        if found:
            counts["differ"] += 1
            print(f"--- {name} (GRU nodes {gru_a} -> {gru_b}):", *found[:6], sep="\n    ")
        else:
            counts["same bits" if ia is not None else "same error"] += 1
    print(counts)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "install":
        install(sys.argv[2])
    elif command == "describe":
        describe(sys.argv[2], sys.argv[3])
    elif command == "compare":
        compare(sys.argv[2], sys.argv[3])
    elif command == "regions":
        regions(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
