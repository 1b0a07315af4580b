#!/usr/bin/env python
"""Load generator for examples/serve.py: N concurrent streams on 127.0.0.1, one frame per hop each.

    python bench/service_load.py [--modes pool,stream,onnx] [--streams 1,64,256,1024] [--seconds 5]

For each mode the server is started as a subprocess (on a free port of 127.0.0.1, with the
demo denoiser: GRU(64 -> 256) -> Dense(64) -> sigmoid, a mask per 10 ms frame of 64 features,
random weights, written to a temporary directory as grurt .npz and as a one-step ONNX graph
of the same weights)
and stopped at the end. For each N, N WebSocket connections each send ``--seconds`` of
frames, one every ``--hop-ms`` (the connections' phases spread over the hop), and record
each reply's arrival. Per frame: latency = reply received − frame sent. A frame without a
reply ``--grace`` seconds after the last one was sent is lost; a reply whose number is below
one already received is reordered. Printed: p50 / p99 / p99.9 latency, lost and reordered
frames, how late the client sent (p99 of the delay behind its schedule: when the client
itself cannot keep the rate, this grows), the server's CPU time per answered frame (the cost
of a frame in that server, which the machine's other load changes less), and per mode
the highest N whose p99 is under the hop with no frame lost. Each (mode, N) gets a fresh
server.

Bounded: at most 1,024 streams, at most 60 s per run, localhost only; the server process is
ended when the run ends (or fails). Client and server share this machine's cores.
"""
import argparse
import asyncio
import datetime
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "examples", "serve.py")
MAX_STREAMS, MAX_SECONDS = 1024, 60.0
INPUT, HIDDEN = 64, 256


def make_models(directory, seed=23):
    """The demo denoiser with random weights, as ``denoiser.npz`` (grurt) and as the one-step
    ONNX graph ``denoiser_step.onnx`` (x (batch, 1, I), h0 (1, batch, H) -> y (batch, 1, I),
    h_n: an ONNX GRU, then MatMul, Add, Sigmoid); returns (grurt model, npz path, onnx path)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import grurt
    from grurt.spec import GRU, Dense, ModelSpec, activation

    rng = np.random.default_rng(seed)
    H, I = HIDDEN, INPUT
    W = (rng.uniform(-1, 1, (1, 3 * H, I)) / np.sqrt(H)).astype(np.float32)     # PyTorch's initialisation
    R = (rng.uniform(-1, 1, (1, 3 * H, H)) / np.sqrt(H)).astype(np.float32)
    B = (rng.uniform(-1, 1, (1, 6 * H)) / np.sqrt(H)).astype(np.float32)
    Wd = (rng.uniform(-1, 1, (I, H)) / np.sqrt(H)).astype(np.float32)
    bd = (rng.uniform(-1, 1, I) / np.sqrt(H)).astype(np.float32)
    gru = GRU(W=W, R=R, B=B, linear_before_reset=True)           # PyTorch's GRU
    model = grurt.Model(ModelSpec(I, (gru, Dense(Wd, bd, activation("sigmoid")))))
    npz = os.path.join(directory, "denoiser.npz")
    grurt.save(model, npz)
    nodes = [helper.make_node("Transpose", ["x"], ["x_tbi"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["x_tbi", "W", "R", "B", "", "h0"], ["", "h_n"], hidden_size=H,
                              linear_before_reset=1),
             helper.make_node("MatMul", ["h_n", "Wd_t"], ["projected"]),
             helper.make_node("Add", ["projected", "bd"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["mask"]),
             helper.make_node("Transpose", ["mask"], ["y"], perm=[1, 0, 2])]
    graph = helper.make_graph(
        nodes, "denoiser_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, I]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, I]),
         helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [1, "batch", H])],
        [numpy_helper.from_array(a, name) for a, name in ((W, "W"), (R, "R"), (B, "B"),
                                                           (np.ascontiguousarray(Wd.T), "Wd_t"), (bd, "bd"))])
    onnx_path = os.path.join(directory, "denoiser_step.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), onnx_path)
    return model, npz, onnx_path


class Server:
    """examples/serve.py in a subprocess on a free port; a context manager that ends it. ``uri``
    waits for it to listen (so that several servers may start at once)."""

    def __init__(self, mode, npz, onnx, capacity=MAX_STREAMS):
        model = ["--onnx", onnx] if mode == "onnx" else ["--model", npz]
        self.process = subprocess.Popen([sys.executable, SERVER, "--mode", mode, "--port", "0",
                                         "--capacity", str(capacity)] + model,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._uri = None

    @property
    def uri(self):
        if self._uri is None:
            line = self.process.stdout.readline()          # "listening on ws://127.0.0.1:PORT (mode)"
            if not line.startswith("listening on "):
                self.close()
                raise RuntimeError(f"the server did not start: {line}{self.process.stderr.read()}")
            self._uri = line.split()[2]
        return self._uri

    def cpu_seconds(self):
        """CPU time the server has used so far (user + system; None where /proc is missing)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


async def run_streams(uri, n, frames, hop, grace=2.0, keep_outputs=False, output_size=INPUT):
    """n connections to ``uri``, connection k sending ``frames[k]`` ((count, I) float32), one frame
    per ``hop`` seconds. Returns dict of sent / received times (n, count; NaN: never), the
    number of reordered replies, and with ``keep_outputs`` the replies (n, count, output_size)."""
    from websockets.asyncio.client import connect

    count = frames.shape[1]
    sent = np.full((n, count), np.nan)
    received = np.full((n, count), np.nan)
    scheduled = np.full((n, count), np.nan)
    reordered = np.zeros(n, np.int64)
    outputs = np.full((n, count, output_size), np.nan, np.float32) if keep_outputs else None
    payloads = [[i.to_bytes(4, "little") + frames[k, i].tobytes() for i in range(count)] for k in range(n)]
    connections = []
    for k in range(0, n, 64):           # connect in groups: a burst of 1,024 handshakes overflows the backlog
        connections += await asyncio.gather(*(connect(uri, compression=None, ping_interval=None, max_size=2 ** 20)
                                              for _ in range(k, min(n, k + 64))))
    start = time.perf_counter() + 0.2

    async def send(k, connection):
        for i in range(count):
            t = start + (k / n + i) * hop
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            scheduled[k, i] = t
            sent[k, i] = time.perf_counter()
            await connection.send(payloads[k][i])

    async def receive(k, connection):
        expected = got = 0
        async for message in connection:
            i = int.from_bytes(message[:4], "little")
            received[k, i] = time.perf_counter()
            if i < expected:
                reordered[k] += 1
            expected = max(expected, i + 1)
            if keep_outputs:
                outputs[k, i] = np.frombuffer(message, np.float32, output_size, 4)
            got += 1
            if got == count:
                return

    receivers = [asyncio.create_task(receive(k, c)) for k, c in enumerate(connections)]
    await asyncio.gather(*(send(k, c) for k, c in enumerate(connections)))
    await asyncio.wait(receivers, timeout=grace)
    for task in receivers:
        task.cancel()
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return {"sent": sent, "received": received, "scheduled": scheduled, "reordered": int(reordered.sum()),
            "outputs": outputs}


def summarize(result, hop):
    latency = (result["received"] - result["sent"]) * 1e3
    ok = latency[np.isfinite(latency)]
    late = (result["sent"] - result["scheduled"]) * 1e3
    p50, p99, p999 = np.percentile(ok, [50, 99, 99.9]) if ok.size else (np.nan,) * 3
    lost = int(np.isnan(result["received"]).sum())
    return {"frames": latency.size, "p50": p50, "p99": p99, "p99.9": p999, "lost": lost,
            "reordered": result["reordered"], "late_p99": float(np.nanpercentile(late, 99)),
            "keeps_up": bool(p99 < hop * 1e3 and lost == 0)}


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="pool,stream,onnx")
    parser.add_argument("--streams", default="1,64,256,1024")
    parser.add_argument("--seconds", type=float, default=5.0, help="of frames per stream")
    parser.add_argument("--hop-ms", type=float, default=10.0)
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to wait for replies after the last frame")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    counts = [int(v) for v in args.streams.split(",") if v]
    if not all(1 <= n <= MAX_STREAMS for n in counts) or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"streams from 1 to {MAX_STREAMS}, seconds up to {MAX_SECONDS:g}")
    hop = args.hop_ms / 1e3
    frames_per_stream = max(1, round(args.seconds / hop))
    print(f"# service load, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- {machine()}")
    print(f"- model GRU({INPUT} -> {HIDDEN}) -> Dense({INPUT}) -> sigmoid; {frames_per_stream} frames per stream, "
          f"one per {args.hop_ms:g} ms\n")
    print("| mode | streams | frames | p50 ms | p99 ms | p99.9 ms | lost | reordered | client late p99 ms | "
          "server CPU µs per frame | p99 < hop, 0 lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    best = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="grurt-serve-") as directory:
        _, npz, onnx = make_models(directory)
        for mode in modes:
            for n in counts:
                frames = rng.standard_normal((n, frames_per_stream, INPUT), dtype=np.float32)
                with Server(mode, npz, onnx) as server:     # a fresh server: no backlog from the last run
                    uri = server.uri
                    cpu = server.cpu_seconds()
                    try:
                        result = asyncio.run(run_streams(uri, n, frames, hop, args.grace))
                    except (OSError, asyncio.TimeoutError) as error:
                        print(f"| {mode} | {n:,} | could not open the {n:,} connections ({error}) |", flush=True)
                        continue
                    used = server.cpu_seconds()
                s = summarize(result, hop)
                answered = s["frames"] - s["lost"]
                per_frame = ("—" if cpu is None or used is None or not answered
                             else f"{(used - cpu) / answered * 1e6:.0f}")
                if s["keeps_up"]:
                    best[mode] = max(best.get(mode, 0), n)
                print(f"| {mode} | {n:,} | {s['frames']:,} | {s['p50']:.2f} | {s['p99']:.2f} | {s['p99.9']:.2f} | "
                      f"{s['lost']:,} | {s['reordered']} | {s['late_p99']:.2f} | {per_frame} | "
                      f"{'yes' if s['keeps_up'] else 'no'} |", flush=True)
    print("\nhighest N with p99 under the hop and no frame lost: "
          + ", ".join(f"{mode} {best.get(mode, 0):,}" for mode in modes))
    print(f"(end: load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
