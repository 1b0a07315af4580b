#!/usr/bin/env python
"""Serve a streaming GRU model to many clients over WebSocket: one session per connection.

    pip install "grurt[serve]"
    python examples/serve.py --model denoiser.npz [--host 127.0.0.1] [--port 8765] [--capacity 1024]
    python examples/serve.py --model denoiser.npz --mode stream          # baselines: one call per frame
    python examples/serve.py --onnx denoiser_step.onnx --mode onnx

Protocol, binary messages: the client sends a frame as a 4-byte little-endian frame number
followed by the model's input_size float32 values; the server answers each frame, in order,
with its number followed by the output_size float32 values of the model's output for it.
A message of another size closes the connection (code 1003).

Modes:

    pool    (the default) every connection is a session of one ``StreamPool``. A batching
            loop steps, at each tick, every session that has a frame waiting (its oldest
            frame) as one batch; between ticks the connections receive and a single sender
            sends the replies, in order. The next tick takes whatever frames arrived
            meanwhile: the busier the server, the larger (and cheaper per frame) its batches.
            (A worker thread for the step made each tick wait for a thread switch, which on
            a loaded machine took milliseconds.)
    stream  one ``Stream`` per connection, one ``step`` call per frame as it arrives.
    onnx    onnxruntime (1 thread) on the model's one-step graph (inputs x (batch, 1, I) and
            h0 (1, batch, H); outputs y and h_n), the state kept per connection, one call per
            frame.

bench/service_load.py opens N concurrent streams against this server and measures the
latency of every frame; docs/performance.md has the results.
"""
import argparse
import asyncio
import collections
import sys

import numpy as np
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

HEADER = 4      # bytes of the frame number


class PoolServer:
    """Every connection a session of one StreamPool, stepped together at each tick. Everything
    runs in the event loop's thread (the pool takes one caller at a time): a tick steps in C,
    then yields so that the connections receive and the replies go out before the next one."""

    def __init__(self, model, capacity):
        self.pool = model.stream_pool(capacity)
        self.input_size, self.capacity = model.input_size, capacity
        self.pending = {}                       # session id -> deque of (connection, number, frame)
        self.ready = collections.deque()        # sessions with a frame waiting, each once, oldest first
        self.wake = asyncio.Event()
        self.replies = asyncio.Queue()          # (connection, number) list and outputs of each step, in order
        self.ids = np.empty(capacity, np.int64)
        self.frames = np.empty((capacity, model.input_size), np.float32)
        self.out = np.empty((capacity, model.output_size), np.float32)

    async def handle(self, connection):
        if len(self.pool) == self.capacity:
            await connection.close(1013, f"all {self.capacity} sessions are in use")
            return
        sid = self.pool.open()
        self.pending[sid] = collections.deque()
        try:
            async for message in connection:
                frame = parse_frame(message, self.input_size)
                if frame is None:
                    await connection.close(1003, f"a frame is {HEADER + 4 * self.input_size} bytes")
                    break
                queue = self.pending[sid]
                queue.append((connection, message[:HEADER], frame))
                if len(queue) == 1:
                    self.ready.append(sid)
                    self.wake.set()
        finally:
            if self.pending.pop(sid):
                self.ready.remove(sid)
            self.pool.close(sid)

    async def batch_loop(self):
        while True:
            await self.wake.wait()
            self.wake.clear()
            n = len(self.ready)
            senders = []
            for k in range(n):
                sid = self.ready.popleft()
                queue = self.pending[sid]
                connection, number, frame = queue.popleft()
                self.ids[k], self.frames[k] = sid, frame
                senders.append((connection, number))
                if queue:                       # its next frame goes in the next tick
                    self.ready.append(sid)
            if n:
                self.pool.step(self.ids[:n], self.frames[:n], self.out[:n])
                self.replies.put_nowait((senders, self.out[:n].copy()))
            await asyncio.sleep(0)              # receive and reply before the next tick
            if self.ready:
                self.wake.set()

    async def reply_loop(self):
        while True:
            senders, out = await self.replies.get()
            for (connection, number), row in zip(senders, out):
                try:
                    await connection.send(number + row.tobytes())
                except ConnectionClosed:
                    pass

    def start(self):
        return [asyncio.create_task(self.batch_loop()), asyncio.create_task(self.reply_loop())]


def parse_frame(message, input_size):
    """The frame of a client's message (a read-only float32 view), or None if it is malformed."""
    if not isinstance(message, bytes) or len(message) != HEADER + 4 * input_size:
        return None
    return np.frombuffer(message, np.float32, input_size, HEADER)


def stream_handler(model):
    """One Stream per connection, one step per frame."""
    async def handle(connection):
        stream, out = model.stream(), np.empty(model.output_size, np.float32)
        async for message in connection:
            frame = parse_frame(message, model.input_size)
            if frame is None:
                await connection.close(1003, f"a frame is {HEADER + 4 * model.input_size} bytes")
                return
            stream.step(frame, out=out)
            await connection.send(message[:HEADER] + out.tobytes())
    return handle


def onnx_handler(path):
    """onnxruntime on the one-step graph, the state kept per connection, one run per frame."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    input_size, hidden = inputs["x"][2], inputs["h0"][2]

    async def handle(connection):
        h = np.zeros((1, 1, hidden), np.float32)
        async for message in connection:
            frame = parse_frame(message, input_size)
            if frame is None:
                await connection.close(1003, f"a frame is {HEADER + 4 * input_size} bytes")
                return
            y, h = session.run(None, {"x": frame.reshape(1, 1, input_size), "h0": h})
            await connection.send(message[:HEADER] + y.tobytes())
    return handle


async def run(args):
    tasks = []
    if args.mode == "onnx":
        handle = onnx_handler(args.onnx)
    else:
        import grurt
        model = grurt.load(args.model)
        if args.mode == "pool":
            server = PoolServer(model, args.capacity)
            handle = server.handle
            tasks = server.start()
        else:
            handle = stream_handler(model)
    # binary frames: no per-message compression; no pings (the load generator closes idle connections)
    async with serve(handle, args.host, args.port, compression=None, ping_interval=None,
                     max_size=2 ** 20) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        print(f"listening on ws://{args.host}:{port} ({args.mode})", flush=True)
        await asyncio.gather(ws_server.serve_forever(), *tasks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model file grurt.load reads (.npz, .onnx, .keras, .h5)")
    parser.add_argument("--onnx", help="--mode onnx: the one-step ONNX graph (x, h0 -> y, h_n)")
    parser.add_argument("--mode", choices=("pool", "stream", "onnx"), default="pool")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port (printed)")
    parser.add_argument("--capacity", type=int, default=1024, help="pool mode: sessions at most")
    args = parser.parse_args(argv)
    if (args.mode == "onnx") != (args.onnx is not None) or (args.mode != "onnx" and args.model is None):
        parser.error("--mode pool/stream need --model; --mode onnx needs --onnx")
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
