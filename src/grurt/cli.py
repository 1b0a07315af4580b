"""The ``grurt`` command: demo, info, run, convert, bench, verify.

Errors are one readable line on stderr and exit code 1 (2 for bad arguments).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

from . import verify
from ._version import __version__
from .errors import GrurtError
from .formats import load, read_header, save
from .precision import ERROR_BUDGETS, WEIGHT_MODES
from .spec import fixed_input_steps, min_steps
from .tensor_model import TensorModel

EXAMPLES = os.path.join(os.path.dirname(__file__), "examples")
#: ``grurt verify``'s tolerance for a float32 model (random inputs of O(1), 16 steps); a reduced-precision
#: model gets its mode's budget, precision.ERROR_BUDGETS
FLOAT32_TOLERANCE = 1e-4


class CommandError(Exception):
    """A user-facing failure of a command: printed as one line."""


def _load_array(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CommandError(f"{what} file not found: {path}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise CommandError(f"{what} file {path} is not a readable .npy array ({exc})") from None


def cmd_demo(args) -> None:
    model = load(os.path.join(EXAMPLES, "forecaster.npz"))
    window = np.load(os.path.join(EXAMPLES, "forecaster_input.npy"), allow_pickle=False)
    prediction = model.run(window)
    print("grurt demo: GRU(50) -> Dense(1) next-day temperature forecaster (100-day window)")
    print("last 7 days (°C):  " + "  ".join(f"{v:6.2f}" for v in window[-7:, 0]))
    print(f"predicted next day: {prediction[0]:6.2f} °C")


def cmd_info(args) -> None:
    model = load(args.model)
    if args.model.lower().endswith(".npz"):
        header = read_header(args.model)
        print(f"format:     grurt {header['format_version']} (written by {header.get('producer', '?')})")
        for key, value in header.get("metadata", {}).items():
            print(f"{key + ':':<11} {value}")
    else:
        print(f"format:     {os.path.splitext(args.model)[1].lstrip('.')} (converted at load)")
    if isinstance(model, TensorModel):
        print("a general tensor graph (docs/onnx.md, 'Graphs beyond the fused layers')")
        print(model.describe())
        return
    spec = model.spec
    if model._graph is not None:
        _print_graph(model)
        return
    shape = "(batch, time, %d)" % spec.output_size if spec.returns_sequence else "(batch, %d)" % spec.output_size
    if spec.takes_ids:
        print(f"input:      (batch, time) integer token ids in [0, {spec.vocabulary})"
              + (f", padding id {spec.mask_value}" if spec.mask_value is not None else ""))
    else:
        print(f"input:      (batch, time, {spec.input_size})")
    if spec.fixed_steps is not None:
        steps = fixed_input_steps(spec)
        if steps is not None and steps != spec.fixed_steps:
            print(f"time steps: {spec.fixed_steps} at its Flatten (e.g. {steps} input frames; the model flattens "
                  "its sequences)")
        else:
            print(f"time steps: exactly {spec.fixed_steps} (the model flattens its sequences)")
    print(f"output:     {shape}")
    print(f"parameters: {spec.parameter_count}")
    print(f"weights:    {model.weights}" + (" (GRU W and R; biases and other layers float32)"
                                             if model.weights != "float32" else ""))
    print("layers:")
    for index, layer in enumerate(spec.layers):
        print(f"  {index}: {layer.describe()}")


def _print_graph(model) -> None:
    """``grurt info`` of a graph: its inputs, its nodes in the order they run, its outputs."""
    graph = model.graph
    print(f"parameters: {graph.parameter_count}")
    print(f"weights:    {model.weights}")
    print("inputs:")
    for i in graph.inputs:
        print(f"  {i.describe()}")
    print(f"nodes ({len(graph.nodes)}, in the order they run):")
    for node in graph.nodes:
        print(f"  {node.describe()}")
    print("outputs:")
    for o in graph.outputs:
        shape = graph.tensors[o.name].describe()
        if o.directions is not None:
            shape = f"({o.directions}, B, {graph.tensors[o.name].features // o.directions}) state"
        print(f"  {o.name}: {shape}")


def _named_inputs(model, args):
    """The run command's inputs: the positional file, or --input name=file.npy for each input."""
    if args.input and args.inputs:
        raise CommandError("give the input file or --input name=file.npy, not both")
    if args.input:
        return _load_array(args.input, "input")
    if not args.inputs:
        raise CommandError(f"no input: give an input file, or --input name=file.npy for each of "
                           f"{', '.join(model.input_names)}")
    named = {}
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CommandError(f"--input takes name=file.npy, got {item!r}")
        named[name] = _load_array(path, f"input '{name}'")
    return named


def cmd_run(args) -> None:
    model = load(args.model)
    lengths = _load_array(args.lengths, "lengths") if args.lengths else None
    if isinstance(model, TensorModel):
        if lengths is not None:
            raise CommandError("--lengths is for fused models; a general graph takes its sequence lengths as an input")
        out = model.run(_named_inputs(model, args))
    else:
        out = model.run(_named_inputs(model, args), lengths=lengths)
    outputs = dict(zip(model.output_names, out if isinstance(out, tuple) else (out,)))
    if args.output and len(outputs) == 1:
        np.save(args.output, out)
        print(f"wrote {args.output}: {out.dtype} {out.shape}")
    elif args.output:                      # several outputs: a folder with one file per output
        os.makedirs(args.output, exist_ok=True)
        for name, value in outputs.items():
            path = os.path.join(args.output, f"{_file_name(name)}.npy")
            np.save(path, value)
            print(f"wrote {path}: {value.dtype} {value.shape}")
    else:
        with np.printoptions(precision=6, suppress=True, threshold=200):
            for name, value in outputs.items():
                if len(outputs) > 1:
                    print(f"{name}:")
                print(value)


def _file_name(name: str) -> str:
    """An output name as a file name: characters other than letters, digits, '-', '_' and '.' become '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "output"


def _random_input(model, batch=4, steps=16, seed=0, source=None) -> np.ndarray:
    """Random input for ``model``; an ONNX ``source`` whose input has fixed sizes gets those."""
    if isinstance(model, TensorModel):          # its inputs as the file declares them
        return _general_inputs(model, batch, steps, np.random.default_rng(seed))
    fixed_steps = None
    suffix = os.path.splitext(source)[1].lower() if source is not None else None
    if suffix == ".onnx":
        fixed_batch, fixed_steps = verify.onnx_input_sizes(source)
        batch = fixed_batch or batch
    elif suffix in (".keras", ".h5", ".hdf5"):
        fixed_steps = verify.keras_input_sizes(source)[1]
    rng = np.random.default_rng(seed)
    if model._graph is not None:
        return _random_graph_inputs(model.graph, batch, fixed_steps or steps, rng)
    # a Flatten fixes the frames it receives; convolutions or pooling before it change the count
    steps = fixed_steps or fixed_input_steps(model.spec) or max(steps, min_steps(model.spec))
    if model.spec.takes_ids:     # ids from 1: 0 may be the padding id
        return rng.integers(min(1, model.vocabulary - 1), model.vocabulary, (batch, steps))
    return rng.standard_normal((batch, steps, model.input_size)).astype(np.float32)


def _random_graph_inputs(graph, batch, steps, rng) -> dict:
    """Random inputs for each input of a graph, by name (ids from 1: 0 may be the padding id)."""
    inputs = {}
    for i in graph.inputs:
        if i.kind == "ids":
            vocabulary = min(node.layer.vocabulary for node in graph.nodes if i.name in node.inputs)
            inputs[i.name] = rng.integers(min(1, vocabulary - 1), vocabulary, (batch, steps))
        else:
            shape = {"sequence": (batch, steps, i.size), "vector": (batch, i.size),
                     "state": (i.directions, batch, i.size // i.directions)}[i.kind]
            inputs[i.name] = rng.standard_normal(shape).astype(np.float32)
    return inputs


def _general_inputs(model, batch, steps, rng) -> dict:
    """Random inputs of a general graph by name, as it declares them: a dim parameter is ``batch``
    on axis 0 and ``steps`` elsewhere; integer inputs are zeros (a valid index of any table)."""
    inputs = {}
    for i in model.graph.inputs:
        shape = tuple(d if isinstance(d, int) else batch if axis == 0 else steps for axis, d in enumerate(i.dims))
        inputs[i.name] = (rng.standard_normal(shape).astype(np.float32) if i.dtype == "float32"
                          else np.zeros(shape, np.int64 if i.dtype == "int64" else bool))
    return inputs


def _named(model, output) -> dict:
    """A run's output(s) by name: "output" for a model of one output, else the model's output names."""
    outputs = output if isinstance(output, tuple) else (output,)
    return dict(zip(model.output_names if len(outputs) > 1 else ("output",), outputs))


def _framework_outputs(source: str, seq, model):
    """(oracle name, {output name: array}) for ``seq`` computed by the framework of the source file.

    An ONNX graph that returns GRU states also yields them, as "state[k]"."""
    suffix = os.path.splitext(source)[1].lower()
    try:
        if suffix == ".onnx" and isinstance(model, TensorModel):     # the file's own inputs and outputs
            import onnxruntime

            session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
            feed = {arg.name: seq[arg.name].astype(np.int32) if "int32" in arg.type else seq[arg.name]
                    for arg in session.get_inputs()}
            return "onnxruntime", _named(model, tuple(session.run(None, feed)))
        if suffix == ".onnx":
            output, states = verify.onnx_outputs(source, seq, return_state=True)
            named = {f"state[{k}]": state for k, state in enumerate(states) if state is not None}
            return "onnxruntime", {**_named(model, output), **named}
        if suffix in (".keras", ".h5", ".hdf5"):
            return "keras", _named(model, verify.keras_outputs(source, seq))
        if suffix in (".pt", ".pth"):
            return "torch", {"output": verify.torchscript_outputs(source, seq)}
    except ImportError as exc:
        raise CommandError(f"the framework to check against is not installed ({exc})") from None
    raise CommandError(f"cannot check against {source}: expected .onnx, .keras, .h5 or a TorchScript .pt file")


def _max_errors(model, seq, expected: dict) -> dict:
    """Max abs difference between grurt and ``expected`` for each named output."""
    if isinstance(model, TensorModel):
        got = _named(model, model.run(seq))
    else:
        output, states = model.run(seq, return_state=True)
        got = {**_named(model, output), **{f"state[{k}]": state for k, state in enumerate(states)}}
    errors = {}
    for name, want in expected.items():
        if got[name].shape != np.shape(want):
            raise CommandError(f"{name} shapes differ: grurt {got[name].shape}, source {np.shape(want)}")
        errors[name] = float(np.abs(got[name] - want).max())
    return errors


def cmd_convert(args) -> None:
    model = load(args.input, weights=args.weights)
    save(model, args.output, metadata={"converted_from": os.path.basename(args.input)})
    if isinstance(model, TensorModel):
        print(f"wrote {args.output}: a general graph of {len(model.graph.nodes)} nodes, "
              f"{sum(a.size for a in model.graph.constants.values())} constant values (format 3.0)")
    else:
        print(f"wrote {args.output}: {len(model.layers)} layers, {model.graph.parameter_count} parameters"
              + ("" if model.weights == "float32" else f", {model.weights} GRU weights"))
    if args.check:
        try:
            seq = _random_input(model, source=args.input)
            oracle, expected = _framework_outputs(args.input, seq, model)
        except (CommandError, GrurtError) as exc:   # no framework, or it cannot run this file
            from .reference import run as reference_run, run_tensor_graph
            reference = (run_tensor_graph(model.graph, seq) if isinstance(model, TensorModel)
                         else reference_run(model, seq))
            oracle, expected = f"grurt.reference ({exc})", _named(model, reference)
        errors = _max_errors(load(args.output), seq, expected)
        print(f"check: max abs difference vs {oracle}: {max(errors.values()):.3g}")


def _relative(error: float, expected) -> float:
    """``error`` relative to the largest magnitude of ``expected``."""
    scale = float(np.abs(expected).max()) if np.size(expected) else 0.0
    return error / scale if scale > 0 else float(error > 0) * float("inf")


def cmd_verify(args) -> None:
    model = load(args.model, weights=args.weights)
    seq = _random_input(model, batch=args.batch, steps=args.steps, source=args.against)
    oracle, expected = _framework_outputs(args.against, seq, model)
    errors = _max_errors(model, seq, expected)
    if model.weights != "float32":
        # the reduced-precision model against the float32 model it was made from
        float32_model = load(args.model, weights="float32")
        output, states = float32_model.run(seq, return_state=True)
        baseline = {**_named(model, output), **{f"state[{k}]": state for k, state in enumerate(states)}}
        for name, error in _max_errors(model, seq, {n: baseline[n] for n in expected}).items():
            print(f"{name}: {model.weights} vs float32 grurt: max abs error {error:.3g}, "
                  f"max relative error {_relative(error, baseline[name]):.3g}")
    for name, error in errors.items():
        print(f"{name}: max abs error vs {oracle}: {error:.3g}"
              + (f", max relative error {_relative(error, expected[name]):.3g}" if model.weights != "float32" else ""))
    tolerance = args.tolerance
    if tolerance is None:
        tolerance = ERROR_BUDGETS.get(model.weights, FLOAT32_TOLERANCE)
    worst = max(errors.values())
    if not worst <= tolerance:
        chosen = "" if args.tolerance is not None else (
            f" (the default for {model.weights} weights; --tolerance sets another)")
        raise CommandError(f"error {worst:.3g} exceeds the tolerance {tolerance:g}{chosen}")


class _Progress:
    """A one-line progress bar on stderr, shown only once a run has lasted a second."""

    def __init__(self, total: int):
        self.total, self.start, self.shown = total, time.perf_counter(), False

    def update(self, done: int):
        if time.perf_counter() - self.start > 1.0 and sys.stderr.isatty() or self.shown:
            self.shown = True
            filled = 30 * done // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}")
            sys.stderr.flush()

    def close(self):
        if self.shown:
            sys.stderr.write("\n")


def cmd_bench(args) -> None:
    model = load(args.model)
    if args.stream and isinstance(model, TensorModel):
        model.stream()                      # UnsupportedModelError: general graphs do not stream yet
    if args.stream and model._graph is not None:
        inputs = _random_input(model, args.batch, 1)
        kinds = {i.name: i.kind for i in model.graph.inputs}
        frames = {name: value[:, 0] for name, value in inputs.items() if kinds[name] in ("sequence", "ids")}
        static = {name: value for name, value in inputs.items() if name not in frames} or None

        def make_call():
            stream = model.stream(batch=args.batch, static=static)
            return lambda: stream.step(frames)
        what = f"stream.step batch={args.batch}"
    elif args.stream:
        frame = _random_input(model, args.batch, 1)[:, 0]

        def make_call():
            stream = model.stream(batch=args.batch)
            return lambda: stream.step(frame)
        what = f"stream.step batch={args.batch}"
    else:
        seq = _random_input(model, batch=args.batch, steps=args.steps)

        def make_call():
            return lambda: model.run(seq)
        what = f"run batch={args.batch} steps={args.steps}"
    calls = [make_call() for _ in range(args.threads)]
    for call in calls:
        call()  # warm up
    per_thread = max(1, args.calls // args.threads)
    latencies = [[] for _ in range(args.threads)]
    progress = _Progress(per_thread * args.threads)
    done = [0]

    def worker(index):
        call, record = calls[index], latencies[index]
        for _ in range(per_thread):
            start = time.perf_counter()
            call()
            record.append(time.perf_counter() - start)
            done[0] += 1
            if index == 0 and len(record) % 16 == 0:
                progress.update(done[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    progress.close()
    times = np.concatenate([np.asarray(record) for record in latencies]) * 1e6
    median, p90, p99 = np.percentile(times, [50, 90, 99])
    print(f"{what} threads={args.threads} calls={times.size}")
    print(f"latency µs: median {median:.1f}  p90 {p90:.1f}  p99 {p99:.1f}")
    print(f"throughput: {times.size / wall:.0f} calls/s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grurt", description="Fast CPU inference for GRU models.")
    parser.add_argument("--version", action="version", version=f"grurt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", help="run the shipped example forecaster").set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("run", help="run a model on input .npy files")
    p.add_argument("model")
    p.add_argument("input", nargs="?", help="(T, I) or (B, T, I) array in .npy format (a model of one input)")
    p.add_argument("--input", dest="inputs", action="append", metavar="NAME=FILE.npy",
                   help="one named input of the model (repeat for each input; default: the one positional "
                        "input file)")
    p.add_argument("-o", "--output", help="write the output to this .npy file; for a model of several outputs, "
                                          "a folder that receives NAME.npy for each (default: print it)")
    p.add_argument("--lengths", help=".npy file with the valid length of each sequence, shape (B,) "
                                     "(default: every sequence runs its full length)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("convert", help="convert .onnx/.keras/.h5 to grurt's .npz")
    p.add_argument("input")
    p.add_argument("output", help="the grurt model file to write (.npz)")
    p.add_argument("--check", action="store_true", help="compare the converted model with the source on a random "
                                                          "batch of 4 x 16 steps (default: no check)")
    p.add_argument("--weights", choices=WEIGHT_MODES, default=None,
                   help="store the GRU weights in this precision (default: as the input has them)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="measure latency and throughput")
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1, help="sequences per call (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="time steps per sequence (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="threads calling the model at once, each with its own "
                                                          "input (default: %(default)s)")
    p.add_argument("--calls", type=int, default=2000, help="total number of calls (default: %(default)s)")
    p.add_argument("--stream", action="store_true", help="time one stream.step instead of run (default: run)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("verify", help="compare grurt with the source framework on random inputs")
    p.add_argument("model")
    p.add_argument("--against", required=True, help="the source model: an .onnx, .keras, .h5 or TorchScript .pt "
                                                    "file (required, no default)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s; an ONNX file's fixed "
                                                        "batch size wins)")
    p.add_argument("--steps", type=int, default=16, help="time steps (default: %(default)s; an ONNX or Keras "
                                                        "file's fixed length wins)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest max abs error vs the source accepted, exit 1 above it (default: "
                        f"{FLOAT32_TOLERANCE:g} for float32 weights, "
                        + ", ".join(f"{budget:g} for {mode}" for mode, budget in ERROR_BUDGETS.items())
                        + ": each mode's error budget)")
    p.add_argument("--weights", choices=WEIGHT_MODES, default=None,
                   help="run the model with its GRU weights in this precision, and also report the "
                        "error against its float32 self (default: as the model file has them)")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch", "steps", "threads", "calls"):
        if getattr(args, name, 1) < 1:
            print(f"grurt: error: --{name} must be at least 1", file=sys.stderr)
            return 2
    try:
        args.func(args)
    except (GrurtError, CommandError, FileNotFoundError, ImportError) as exc:
        print(f"grurt: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
