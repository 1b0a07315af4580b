"""The benchmark workloads, built once and shared by ``test_bench.py`` and ``compare.py``.

Each workload is a batch-first PyTorch module with random weights (fixed seed), the same
network as a grurt Model (``grurt.from_torch``; W8, a module with its own forward, through
``grurt.from_torch(module, example_input)``) and a float32 input:

    W1  forecaster        GRU(50) -> Dense(1) on the last step        (1, 100, 1)
    W2  keyword spotting  2 x GRU(128) -> Dense(12) on the last step  (1, 100, 40)
    W3  streaming step    GRU(256), one ``stream.step``               frame (1, 64)
    W4  throughput        bidirectional GRU(256), output sequence     (64, 200, 64)
    W5  large             GRU(1024), last state                       (1, 50, 512)
    W6  CRNN              causal Conv1D(40 -> 64, k=5) + BatchNorm + ReLU -> GRU(128)
                          -> Dense(12) on the last step                (1, 100, 40)
    W6s CRNN streaming    W6, one ``stream.step``: the frame into the conv history,
                          one GRU step, the head                      frame (1, 40)
    W7  serving           GRU(256), 64 of 1,024 open sessions stepped  frames (64, 64)
                          together (``StreamPool.step``)
    overhead              GRU with H = I = T = B = 1: the Python cost of ``run()``
    W8  residual graph    Dense(40 -> 128) -> GRU(128) -> a; GRU(128)(a) + a
                          -> Dense(12) on the last step               (1, 100, 40)

``torch_module(x)`` gives the reference output that every runtime must match. W3 is a
streaming workload: ``x`` is one frame (B, I) and ``check_frames`` (B, K, I) is a short
sequence used to check that a stepper carries its state correctly. W7 is one too: ``x``
holds one frame for each of 64 sessions (rows in the order of ``session_ids``) of a pool of
1,024 open sessions, and ``check_frames`` (64, K, I) the frames the check feeds them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

import grurt

SEED = 20240601
# each workload's seed is SEED + its index here: new workloads go at the end
NAMES = ("W1", "W2", "W3", "W4", "W5", "W6", "W6s", "W7", "overhead", "W8")


class LastStepHead(nn.Module):
    """GRU -> Linear on the last time step, as ``grurt.from_torch([gru, head], last_step=True)``."""

    def __init__(self, gru: nn.GRU, head: nn.Linear):
        super().__init__()
        self.gru, self.head = gru, head

    def forward(self, x):
        y, _ = self.gru(x)
        return self.head(y[:, -1])


class Sequence(nn.Module):
    """The GRU's full output sequence (B, T, D*H)."""

    def __init__(self, gru: nn.GRU):
        super().__init__()
        self.gru = gru

    def forward(self, x):
        return self.gru(x)[0]


class LastState(nn.Module):
    """The last layer's final state (B, H), i.e. ``h_n[-1]`` (= ``output[:, -1]`` for one direction)."""

    def __init__(self, gru: nn.GRU):
        super().__init__()
        self.gru = gru

    def forward(self, x):
        return self.gru(x)[1][-1]


class CRNN(nn.Module):
    """(B, T, C) -> causal Conv1d (left pad k - 1, then the conv) + BatchNorm + ReLU -> GRU -> Linear,
    on the last step (or every step with ``last_step=False``)."""

    def __init__(self, conv: nn.Conv1d, bn: nn.BatchNorm1d, gru: nn.GRU, head: nn.Linear, last_step: bool = True):
        super().__init__()
        self.conv, self.bn, self.gru, self.head, self.last_step = conv, bn, gru, head, last_step

    def forward(self, x):
        h = nn.functional.pad(x.transpose(1, 2), (self.conv.kernel_size[0] - 1, 0))
        y, _ = self.gru(torch.relu(self.bn(self.conv(h))).transpose(1, 2))
        return self.head(y[:, -1] if self.last_step else y)


class CRNNStep(nn.Module):
    """One streaming step of CRNN: the last k frames (B, k, C) and the GRU state (1, B, H) -> (output, state)."""

    def __init__(self, conv, bn, gru, head):
        super().__init__()
        self.conv, self.bn, self.gru, self.head = conv, bn, gru, head

    def forward(self, frames, h0):
        h = torch.relu(self.bn(self.conv(frames.transpose(1, 2)))).transpose(1, 2)      # (B, 1, 64)
        y, h_n = self.gru(h, h0)
        return self.head(y[:, -1]), h_n


class Residual(nn.Module):
    """W8: ``a = GRU1(Linear(x))``, ``y = GRU2(a) + a``, a Linear head on the last step."""

    def __init__(self, dense: nn.Linear, gru1: nn.GRU, gru2: nn.GRU, head: nn.Linear):
        super().__init__()
        self.dense, self.gru1, self.gru2, self.head = dense, gru1, gru2, head

    def forward(self, x):
        a, _ = self.gru1(self.dense(x))
        y = self.gru2(a)[0] + a
        return self.head(y[:, -1])


@dataclass
class Workload:
    name: str
    title: str
    torch_module: nn.Module          # batch-first; torch_module(x) is the reference output
    model: grurt.Model
    x: np.ndarray                    # the timed input (for W3: one frame (B, I))
    stream: bool = False             # W3, W6s, W7: time one streaming step instead of run()
    check_frames: Optional[np.ndarray] = None  # W3, W6s, W7: (B, K, I) frames for the state check
    step_module: Optional[nn.Module] = None    # W6s: (last `span` frames (B, span, I), h0 (1, B, H)) -> (y, h_n)
    span: int = 1                              # W6s: input frames one step reads
    pool: Optional[tuple] = None     # W7: (capacity, session ids stepped together (n,))

    @property
    def gru(self) -> nn.GRU:
        return self.torch_module.gru

    def __str__(self) -> str:
        return f"{self.name} {self.title}"


def _gru(seed: int, input_size: int, hidden: int, **kwargs) -> nn.GRU:
    torch.manual_seed(seed)  # per workload, so weights do not depend on build order
    return nn.GRU(input_size, hidden, batch_first=True, **kwargs).eval()


def _input(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@functools.lru_cache(maxsize=None)
def get(name: str) -> Workload:
    """Build workload ``name`` (one of NAMES) once; later calls return the same object."""
    seed = SEED + NAMES.index(name)
    if name == "W1":
        gru = _gru(seed, 1, 50)
        head = nn.Linear(50, 1)
        return Workload("W1", "forecaster", LastStepHead(gru, head).eval(),
                        grurt.from_torch([gru, head], last_step=True), _input(seed, (1, 100, 1)))
    if name == "W2":
        gru = _gru(seed, 40, 128, num_layers=2)
        head = nn.Linear(128, 12)
        return Workload("W2", "keyword spotting", LastStepHead(gru, head).eval(),
                        grurt.from_torch([gru, head], last_step=True), _input(seed, (1, 100, 40)))
    if name == "W3":
        gru = _gru(seed, 64, 256)
        frames = _input(seed, (1, 9, 64))
        return Workload("W3", "streaming step", Sequence(gru), grurt.from_torch([gru]),
                        np.ascontiguousarray(frames[:, 0]), stream=True,
                        check_frames=np.ascontiguousarray(frames[:, 1:]))
    if name == "W4":
        gru = _gru(seed, 64, 256, bidirectional=True)
        return Workload("W4", "throughput", Sequence(gru), grurt.from_torch([gru]),
                        _input(seed, (64, 200, 64)))
    if name == "W5":
        gru = _gru(seed, 512, 1024)
        return Workload("W5", "large", LastState(gru), grurt.from_torch([gru], last_step=True),
                        _input(seed, (1, 50, 512)))
    if name in ("W6", "W6s"):
        torch.manual_seed(SEED + NAMES.index("W6"))
        conv, bn = nn.Conv1d(40, 64, 5), nn.BatchNorm1d(64)
        with torch.no_grad():      # trained-looking statistics, so that folding BatchNorm matters
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        gru, head = _gru(SEED + NAMES.index("W6"), 64, 128), nn.Linear(128, 12)
        parts = [conv.eval(), bn.eval(), gru, head.eval()]
        model = grurt.from_torch([nn.ConstantPad1d((4, 0), 0.0), conv, bn, nn.ReLU(), gru, head], last_step=True)
        if name == "W6":
            return Workload("W6", "CRNN", CRNN(*parts).eval(), model, _input(seed, (1, 100, 40)))
        frames = _input(seed, (1, 9, 40))
        return Workload("W6s", "CRNN streaming step", CRNN(*parts, last_step=False).eval(), model,
                        np.ascontiguousarray(frames[:, 0]), stream=True,
                        check_frames=np.ascontiguousarray(frames[:, 1:]), step_module=CRNNStep(*parts).eval(),
                        span=5)
    if name == "W7":
        gru = _gru(seed, 64, 256)
        frames = _input(seed, (64, 9, 64))
        # 64 of 1,024 sessions, scattered over the pool in no particular order
        ids = np.random.default_rng(seed).permutation(1024)[:64].astype(np.int64)
        return Workload("W7", "serving", Sequence(gru), grurt.from_torch([gru]),
                        np.ascontiguousarray(frames[:, 0]), stream=True,
                        check_frames=np.ascontiguousarray(frames[:, 1:]), pool=(1024, ids))
    if name == "W8":
        torch.manual_seed(seed)
        dense, head = nn.Linear(40, 128), nn.Linear(128, 12)
        module = Residual(dense, _gru(seed + 1, 128, 128), _gru(seed + 2, 128, 128), head).eval()
        x = _input(seed, (1, 100, 40))
        # traced through torch.onnx.export into grurt's ONNX importer: the graph the user gets
        return Workload("W8", "residual graph", module, grurt.from_torch(module, torch.from_numpy(x)), x)
    if name == "overhead":
        gru = _gru(seed, 1, 1)
        return Workload("overhead", "(H=I=T=B=1)", Sequence(gru), grurt.from_torch([gru]),
                        _input(seed, (1, 1, 1)))
    raise KeyError(f"unknown workload {name!r}; expected one of {', '.join(NAMES)}")


_references = {}


def reference(w: Workload) -> np.ndarray:
    """The PyTorch output for ``w.x`` (for W3: the states after each of ``check_frames``), computed once."""
    if w.name not in _references:
        x = w.check_frames if w.stream else w.x
        with torch.inference_mode():
            _references[w.name] = w.torch_module(torch.from_numpy(x)).numpy()
    return _references[w.name]


def has_stream(model: grurt.Model) -> bool:
    return callable(getattr(model, "stream", None))


def stream_stepper(model: grurt.Model, batch: int = 1, threads: int = 1):
    """A fresh grurt stream as ``step(frame) -> output``, writing into one preallocated buffer."""
    stream = model.stream(batch=batch, threads=threads) if threads > 1 else model.stream(batch=batch)
    buf = np.empty((batch, model.output_size), np.float32)
    return lambda frame: stream.step(frame, out=buf)


def state_fed_stepper(model: grurt.Model, batch: int = 1):
    """W3 with the state held outside: ``stream.state = [h]`` before each step, the new state
    (the output of a GRU-only model) handed back, as an ONNX session with ``h0`` works."""
    stream = model.stream(batch=batch)
    h = np.zeros((1, batch, model.output_size), np.float32)
    buf = h[0]

    def step(frame):
        stream.state = [h]
        return stream.step(frame, out=buf)      # the new state, written into h
    return step


def has_pool(model: grurt.Model) -> bool:
    return callable(getattr(model, "stream_pool", None))


def pool_stepper(w: Workload, model: Optional[grurt.Model] = None):
    """W7 in grurt: a pool of ``capacity`` open sessions of ``model`` (default: the workload's),
    ``step(frames)`` steps ``session_ids``."""
    capacity, ids = w.pool
    pool = (model or w.model).stream_pool(capacity)
    for _ in range(capacity):
        pool.open()
    buf = np.empty((len(ids), w.model.output_size), np.float32)
    return lambda frames: pool.step(ids, frames, out=buf)


def streams_stepper(w: Workload):
    """W7 without a pool: one Stream per session, ``step`` called once per session."""
    streams = [w.model.stream() for _ in range(len(w.pool[1]))]
    buf = np.empty((len(streams), w.model.output_size), np.float32)
    rows = [buf[k] for k in range(len(streams))]

    def step(frames):
        for k, stream in enumerate(streams):
            stream.step(frames[k], out=rows[k])
        return buf
    return step
