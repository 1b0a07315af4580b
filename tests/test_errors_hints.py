"""Errors that say what to do: each mistake a new user makes gets a GrurtError naming the way out,
and each hint that names a route is followed here to show the route works (against the framework)."""
import os
import re
import warnings

import numpy as np
import pytest

import grurt
from grurt import cli
from grurt.precision import ERROR_BUDGETS

from tolerances import ATOL, LOWP_BUDGETS

torch = pytest.importorskip("torch")


class TwoLayer(torch.nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.gru, self.fc = torch.nn.GRU(3, hidden, batch_first=True), torch.nn.Linear(hidden, 2)

    def forward(self, x):
        return self.fc(self.gru(x)[0])


@pytest.fixture
def net():
    torch.manual_seed(0)
    return TwoLayer().eval()


def torch_out(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_load_of_a_torch_file_names_from_state_dict_and_from_torch(tmp_path, net):
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(grurt.UnsupportedModelError) as info:
        grurt.load(path)
    message = str(info.value)
    assert "grurt.from_state_dict(" in message and "grurt.from_torch(module" in message
    # the route it names reads the file
    model = grurt.from_state_dict(path)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    assert np.abs(model.run(x) - torch_out(net, x)).max() <= ATOL


def test_state_dict_of_a_pickled_module_is_a_clean_message(tmp_path, net):
    path = tmp_path / "whole.pt"
    torch.save(net.gru, path)                 # the module, not its state dict
    with pytest.raises(grurt.ModelFormatError) as info:
        grurt.from_state_dict(path)
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message           # no terminal colours, one line
    assert "pickled torch.nn.modules.rnn.GRU" in message
    assert "grurt.from_torch(torch.load(path, weights_only=False))" in message
    assert message.endswith("read those")                          # not cut mid-word


def test_state_dict_of_another_pickled_object_suggests_no_unpickling(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))
    torch.save({"gru.weight_ih_l0": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(grurt.ModelFormatError) as info:
        grurt.from_state_dict(tmp_path / "evil.pt")
    assert "holds a pickled print," in str(info.value) and "weights_only=False" not in str(info.value)


def test_state_dict_of_a_torchscript_file_names_its_state_dict(tmp_path, net):
    path = tmp_path / "scripted.pt"
    torch.jit.script(net).save(str(path))
    with pytest.raises(grurt.ModelFormatError, match=re.escape("torch.jit.load(path).state_dict()")):
        grurt.from_state_dict(path)


def test_from_torch_of_a_script_module_says_what_to_pass(tmp_path, net):
    path = tmp_path / "scripted.pt"
    torch.jit.script(net).save(str(path))
    scripted = torch.jit.load(str(path))
    x = np.random.default_rng(1).standard_normal((2, 6, 3)).astype(np.float32)
    for call in (lambda: grurt.from_torch(scripted, torch.from_numpy(x)), lambda: grurt.from_torch(scripted)):
        with pytest.raises(grurt.UnsupportedModelError) as info:
            call()
        assert "not a TorchScript module" in str(info.value)
        assert "grurt.from_state_dict(script_module.state_dict()" in str(info.value)
    # the first route it names: the script module's weights by name
    model = grurt.from_state_dict(scripted.state_dict())
    assert np.abs(model.run(x) - torch_out(scripted, x)).max() <= ATOL


def test_from_torch_names_an_lstm():
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    with pytest.raises(grurt.UnsupportedModelError, match=r"^nn\.LSTM is not supported: grurt runs GRUs"):
        grurt.from_torch(lstm, torch.zeros(1, 5, 3))
    with pytest.raises(grurt.UnsupportedModelError, match=r"^nn\.LSTM is not supported: grurt runs GRUs"):
        grurt.from_torch(lstm)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]
    with pytest.raises(grurt.UnsupportedModelError, match=r"nn\.RNN is not supported.*rnn is an nn\.RNN"):
        grurt.from_torch(Encoder(), torch.zeros(1, 5, 3))
    with pytest.raises(grurt.UnsupportedModelError, match=r"nn\.LSTMCell is not supported.*module 1"):
        grurt.from_torch([torch.nn.GRU(3, 4), torch.nn.LSTMCell(4, 4)])


def test_save_refuses_a_name_that_is_not_npz(tmp_path, net):
    model = grurt.from_torch([net.gru, net.fc])
    for name in ("out.onnx", "out.keras", "out"):
        with pytest.raises(grurt.InputError, match=r"does not end in \.npz.*'%s'" % re.escape(
                os.path.splitext(str(tmp_path / name))[0] + ".npz")):
            grurt.save(model, tmp_path / name)
        assert not os.path.exists(tmp_path / name) and not os.path.exists(tmp_path / (name + ".npz"))
    grurt.save(model, tmp_path / "out.NPZ")
    assert grurt.load(tmp_path / "out.NPZ").run(np.ones((4, 3), np.float32)).shape == (4, 2)
    assert cli.main(["convert", str(tmp_path / "out.NPZ"), str(tmp_path / "again.onnx")]) == 1


def test_verify_against_a_state_dict_is_one_line_with_the_way_out(tmp_path, net, capsys):
    grurt.save(grurt.from_torch([net.gru, net.fc]), tmp_path / "m.npz")
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    assert cli.main(["verify", str(tmp_path / "m.npz"), "--against", str(tmp_path / "weights.pt")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "not a TorchScript file" in err and "torch.jit.script(module).save('model.pt')" in err
    # the route it names works
    torch.jit.script(net).save(str(tmp_path / "model.pt"))
    assert cli.main(["verify", str(tmp_path / "m.npz"), "--against", str(tmp_path / "model.pt")]) == 0


def test_verify_defaults_to_the_budget_of_the_weight_mode(tmp_path, capsys):
    assert ERROR_BUDGETS == LOWP_BUDGETS       # the budget the tests hold is the one verify applies
    torch.manual_seed(3)
    net = TwoLayer(hidden=64).eval()
    grurt.save(grurt.from_torch([net.gru, net.fc]), tmp_path / "m.npz")
    torch.jit.script(net).save(str(tmp_path / "model.pt"))
    args = ["verify", str(tmp_path / "m.npz"), "--against", str(tmp_path / "model.pt"), "--weights", "int8"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    error = float(out.split("output: max abs error vs torch: ")[1].split(",")[0])
    assert 1e-4 < error <= ERROR_BUDGETS["int8"]         # above the float32 default, within int8's budget
    assert cli.main(args + ["--tolerance", "1e-4"]) == 1
    assert "exceeds the tolerance 0.0001" in capsys.readouterr().err


def test_help_shows_every_default():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert "default" in (action.help or ""), f"grurt {name} {action.option_strings[0]}: no default shown"
    verify_help = " ".join(commands["verify"].format_help().split())
    assert all(f"{budget:g} for {mode}" in verify_help for mode, budget in ERROR_BUDGETS.items())


def test_from_keras_does_not_warn():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4), keras.layers.Dense(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = grurt.from_keras(model)
    assert [str(w.message) for w in caught] == []
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)
    assert np.abs(converted.run(x) - np.asarray(model.predict(x, verbose=0))).max() <= ATOL
