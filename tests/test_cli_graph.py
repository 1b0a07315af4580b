"""The grurt command on a graph model (issue 11): info prints the graph, run takes and writes
several named arrays, bench runs and streams it."""
import numpy as np
import pytest

import grurt

from test_cli import grurt_cmd
from test_graph_npz import graph_model, inputs


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    model = graph_model(rng)
    grurt.save(model, tmp_path / "graph.npz")
    arrays = inputs(rng)
    for name, array in zip(model.input_names, arrays):
        np.save(tmp_path / f"{name}.npy", array)
    return tmp_path, model, arrays


def test_info_prints_inputs_nodes_in_order_and_outputs(saved):
    folder, model, _ = saved
    result = grurt_cmd("info", folder / "graph.npz")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "format:     grurt 2.0" in lines[0]
    assert "  static: vector (B, 2)" in lines and "  h1: state (1, B, 6)" in lines
    nodes = [line.strip() for line in lines[lines.index("nodes (9, in the order they run):") + 1:][:9]]
    assert nodes == [node.describe() for node in model.graph.nodes]
    assert nodes[1].startswith("a, a_state = GRU(hidden=6") and nodes[1].endswith("(seq, h0)")
    assert lines[-2:] == ["  cls: (B, 3)", "  a_state: (1, B, 6) state"]


def test_run_takes_named_inputs_and_writes_each_output(saved):
    folder, model, arrays = saved
    args = [f"--input={name}={folder / name}.npy" for name in model.input_names]
    result = grurt_cmd("run", folder / "graph.npz", *args, "-o", folder / "out")
    assert result.returncode == 0, result.stderr
    for name, want in zip(model.output_names, model.run(arrays)):
        assert np.array_equal(np.load(folder / "out" / f"{name}.npy"), want)


@pytest.mark.parametrize("args, message", [
    (["--input=seq={seq}"], "input 'static' is missing: this model's inputs are ['seq', 'static', 'h1']"),
    (["--input", "seq"], "--input takes name=file.npy, got 'seq'"),
    ([], "no input: give an input file, or --input name=file.npy for each of seq, static, h1"),
    (["{seq}", "--input=seq={seq}"], "give the input file or --input name=file.npy, not both"),
])
def test_run_errors_name_the_input(saved, args, message):
    folder, _, _ = saved
    args = [a.format(seq=folder / "seq.npy") for a in args]
    result = grurt_cmd("run", folder / "graph.npz", *args)
    assert result.returncode == 1
    assert result.stderr.strip() == f"grurt: error: {message}"


@pytest.mark.parametrize("extra", [[], ["--stream"]])
def test_bench_runs_and_streams_a_graph(saved, extra):
    folder, _, _ = saved
    result = grurt_cmd("bench", folder / "graph.npz", "--calls", "20", *extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stream.step batch=1" if extra else "run batch=1 steps=100")


@pytest.mark.slow
def test_verify_and_convert_check_a_keras_graph_against_keras(tmp_path):
    """Two inputs (a sequence, a static vector into the GRU's initial state), two outputs: each
    output is compared with Keras's predict by name, within the default tolerance 1e-4."""
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    seq, static = keras.Input((None, 3), name="seq"), keras.Input((2,), name="static")
    y, h = keras.layers.GRU(4, return_sequences=True, return_state=True, name="gru")(
        seq, initial_state=keras.layers.Dense(4, name="h0")(static))
    per_step = keras.layers.Dense(1, name="per_step")(y)
    label = keras.layers.Dense(2, activation="softmax", name="label")(h)
    keras.Model([seq, static], [label, per_step]).save(tmp_path / "g.keras")
    result = grurt_cmd("verify", tmp_path / "g.keras", "--against", tmp_path / "g.keras")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["label", "per_step"]
    for line in lines:
        assert float(line.split("error vs keras: ")[1]) <= 1e-5
    result = grurt_cmd("convert", tmp_path / "g.keras", tmp_path / "g.npz", "--check")
    assert result.returncode == 0, result.stderr
    assert "check: max abs difference vs keras:" in result.stdout
    assert float(result.stdout.split("vs keras: ")[1]) <= 1e-5
