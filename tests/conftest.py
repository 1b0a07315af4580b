import fnmatch
import os

# Keras 3 runs on the PyTorch backend in the tests: no TensorFlow needed.
os.environ.setdefault("KERAS_BACKEND", "torch")


import pytest


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (long hypothesis grids, fuzz batches, framework round trips)")


#: Cases of parametrized tests marked slow here (whole tests carry @pytest.mark.slow): test -> fnmatch
#: patterns of the case ids. Each test's other cases stay in the default run, against the same oracle.
SLOW_CASES = {
    "tests/test_threads.py::test_units_split_is_bit_exact": ("*-1056", "*-256"),   # H = 128 stays
    "tests/test_threads.py::test_stream_threads_are_bit_exact": ("256",),         # 128 stays
    "tests/test_threads.py::test_layers_outside_the_units_split": ("1",),         # case 0 stays
    # the .pt loader's meaning fuzz (torch.load per case); npz, onnx, safetensors, sdnpz stay
    "tests/test_fuzz.py::test_short_meaning_fuzz_run": ("pt",),
    # the dynamo exporter: the legacy exports of the same models stay
    "tests/test_tensor_models.py::test_dynamo_export": ("*",),
    "tests/test_kernels.py::test_units_split_over_threads": ("1056-*", "1024-forward-True", "1024-reverse-False"),
    "tests/test_kernels.py::test_batch_sizes_across_panel_edges": ("128-*", "129-*"),   # 1 to 65 stay
    "tests/test_kernels.py::test_directions_and_batch_split_over_threads": ("forward-1024-*",),
    # the dynamo exporter (seconds per export); the legacy exports stay, and test_static_dynamo_export
    "tests/test_torch_graph.py::test_onnx_exports_match_onnxruntime": ("*-dynamo",),
    "tests/test_norm_embed.py::test_torch_onnx_exports": ("*-dynamo",),
    "tests/test_conv.py::test_onnx_torch_crnn": ("*-True",),
    # a subprocess per call: the layout-0 case stays
    "tests/test_cli.py::test_verify_and_convert_check_use_the_fixed_sizes_of_an_onnx_input": ("1",),
}


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only with --slow, or when -m selects by marker (``-m slow``: only them);
    otherwise they are deselected (counted in pytest's summary line)."""
    for item in items:
        test, _, case = item.nodeid.partition("[")
        if any(fnmatch.fnmatchcase(case[:-1], pattern) for pattern in SLOW_CASES.get(test, ())):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(params=["best", "widening"])
def lowp_path(request):
    """Run a reduced-precision test on the fastest path this CPU has, then on the portable widening one."""
    from grurt import _kernels
    _kernels.force_widening(request.param == "widening")
    yield request.param
    _kernels.force_widening(False)
