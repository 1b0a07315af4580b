import os

# Keras 3 runs on the PyTorch backend in the tests: no TensorFlow needed.
os.environ.setdefault("KERAS_BACKEND", "torch")


import pytest


@pytest.fixture(params=["best", "widening"])
def lowp_path(request):
    """Run a reduced-precision test on the fastest path this CPU has, then on the portable widening one."""
    from grurt import _kernels
    _kernels.force_widening(request.param == "widening")
    yield request.param
    _kernels.force_widening(False)
