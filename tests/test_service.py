"""examples/serve.py under bench/service_load.py's client, short: a few streams for about a second.

Every frame of every stream must come back, in order; the pool server's and the one-Stream-
per-connection server's outputs must be bit for bit what ``model.stream().run`` gives offline
for each stream's frames (a session in a pool gives the bits of its own stream), and the
onnxruntime server's within ``ATOL`` of them (an independent runtime). A malformed frame
closes its connection with code 1003.
"""
import asyncio
import os
import sys

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tolerances import ATOL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import service_load  # noqa: E402

STREAMS, FRAMES, HOP = 3, 80, 0.01


MODES = ("pool", "stream", "onnx")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return service_load.make_models(str(tmp_path_factory.mktemp("serve")))


@pytest.fixture(scope="module")
def servers(models):
    """The three servers, started at once (their start-up is most of this file's time)."""
    _, npz, onnx = models
    started = {mode: service_load.Server(mode, npz, onnx, capacity=8) for mode in MODES}
    yield started
    for server in started.values():
        server.close()


@pytest.mark.parametrize("mode", MODES)
def test_served_outputs_equal_offline_outputs(models, servers, mode):
    model = models[0]
    frames = np.random.default_rng(len(mode)).standard_normal((STREAMS, FRAMES, model.input_size), dtype=np.float32)
    result = asyncio.run(service_load.run_streams(servers[mode].uri, STREAMS, frames, HOP, grace=10.0,
                                                  keep_outputs=True, output_size=model.output_size))
    assert not np.isnan(result["received"]).any(), "frames lost"
    assert result["reordered"] == 0
    summary = service_load.summarize(result, HOP)
    assert summary["lost"] == 0 and summary["frames"] == STREAMS * FRAMES
    for k in range(STREAMS):
        offline = model.stream().run(frames[k])
        if mode == "onnx":
            assert np.max(np.abs(result["outputs"][k] - offline)) <= ATOL
        else:
            assert np.array_equal(result["outputs"][k], offline)


def test_a_malformed_frame_closes_the_connection(servers):
    async def send_bad(uri):
        async with connect(uri, compression=None) as connection:
            await connection.send(b"\x00\x00\x00\x00" + b"\x00" * 12)
            with pytest.raises(ConnectionClosed) as closed:
                await connection.recv()
            return closed.value.rcvd.code

    assert asyncio.run(send_bad(servers["pool"].uri)) == 1003
