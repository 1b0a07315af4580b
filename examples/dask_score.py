"""Score a Zarr data set on a Dask cluster with ``grurt.dask.predict``, and write the scores to Zarr.

Writes 20,000 random 100-day temperature windows (20000, 100, 1) to ``inputs.zarr`` in a
temporary directory, starts a local two-worker cluster, runs the shipped forecaster (GRU(50)
→ Dense(1), degrees Celsius in and out) over it block by block, writes the next-day
forecasts (20000, 1) to ``forecasts.zarr`` and checks a few against a local ``model.run``.

    pip install "grurt[dask]" zarr
    python examples/dask_score.py

On a real cluster, replace the LocalCluster by ``Client("scheduler-address:8786")`` and the
temporary directory by shared storage (a file system every worker mounts, or ``s3://...``
with s3fs); grurt must be installed on the workers and the scheduler. The model is sent to
each worker once (one key of the graph), and every block runs with one BLAS thread.
"""
import os
import tempfile
import time

import dask.array as da
import numpy as np
import zarr
from distributed import Client, LocalCluster

import grurt
import grurt.dask

SEQUENCES, STEPS, CHUNK = 20_000, 100, 500        # 40 blocks of 500 sequences


def write_inputs(path: str) -> None:
    """Random daily temperatures around a seasonal cycle: a stand-in for a real data set."""
    rng = np.random.default_rng(0)
    start = rng.uniform(0, 365, size=(SEQUENCES, 1))
    days = start + np.arange(STEPS)
    x = 11 + 9 * np.sin(2 * np.pi * (days - 110) / 365.25) + rng.normal(0, 2, size=days.shape)
    inputs = zarr.open_array(path, mode="w", shape=(SEQUENCES, STEPS, 1), chunks=(CHUNK, STEPS, 1),
                             dtype="float32")
    inputs[:] = x[:, :, None].astype(np.float32)


def main():
    model = grurt.load(os.path.join(os.path.dirname(grurt.__file__), "examples", "forecaster.npz"))
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster):
        inputs_path, outputs_path = os.path.join(tmp, "inputs.zarr"), os.path.join(tmp, "forecasts.zarr")
        write_inputs(inputs_path)

        x = da.from_zarr(inputs_path)                       # (20000, 100, 1), chunked along the batch
        forecasts = grurt.dask.predict(model, x)            # lazy (20000, 1) float32
        start = time.perf_counter()
        forecasts.to_zarr(outputs_path)                     # runs the graph on the cluster
        elapsed = time.perf_counter() - start

        written = zarr.open_array(outputs_path, mode="r")
        print(f"scored {x.shape} in {x.numblocks[0]} blocks -> {written.shape} {written.dtype} "
              f"in {elapsed:.2f} s; forecasts {float(np.min(written)):.1f} .. {float(np.max(written)):.1f} °C")
        sample = zarr.open_array(inputs_path, mode="r")[:100]
        # equal within float32 rounding (the Dense layer's BLAS sums in an order that depends on the block size)
        assert np.allclose(written[:100], model.run(sample), rtol=0, atol=1e-4)
        print("first 100 forecasts match a local model.run")


if __name__ == "__main__":
    main()
