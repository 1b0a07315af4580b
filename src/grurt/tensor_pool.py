"""Many streaming sessions of a general graph: :meth:`grurt.TensorModel.stream_pool`.

The pool keeps every session's states in one array per stateful node (a GRU's h, a causal
Conv's history, ...; :class:`~grurt.tensor_stream.TensorStream` says which), with the sessions
along that state's batch axis. A step gathers the stepped sessions' rows, runs them as one batch
through a :class:`TensorStream` of that many sessions (made at the first step of each size and
kept) and scatters the new states back.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import List

import numpy as np

from ._kernels import _memory_limit
from .errors import InputError, UnsupportedModelError
from .graph_model import input_array
from .tensor_stream import TensorStream, checked_time_axes

#: Streams kept, one per number of sessions stepped together (the least recently used goes).
STREAMS_KEPT = 16


def _batch_axis(one, two, what: str) -> int:
    """The axis along which a shape at batch 1 (``one``) and at batch 2 (``two``) differ."""
    axes = [axis for axis, (a, b) in enumerate(zip(one, two)) if a != b]
    if len(one) != len(two) or len(axes) != 1 or (one[axes[0]], two[axes[0]]) != (1, 2):
        raise UnsupportedModelError(f"{what}: no batch axis found (shape {one} at batch 1, {two} at batch 2); "
                                    "this model cannot pool sessions, use one model.stream() per session")
    return axes[0]


class TensorStreamPool:
    """The states of up to ``capacity`` streaming sessions of a general graph; any subset of open
    sessions is stepped together as one batch (docs/streaming-and-serving.md, "Pools of a general
    graph"). A pool takes one caller at a time."""

    def __init__(self, model, capacity: int, time_axes=None):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise InputError(f"capacity must be a positive integer, got {capacity!r}")
        self.model, self.capacity = model, int(capacity)
        self._time_axes = time_axes
        static = [t.name for t in model.graph.inputs if t.name not in checked_time_axes(model.graph, time_axes)]
        if static:
            raise UnsupportedModelError(f"this model has static inputs {static}: a pool does not keep them per "
                                        "session yet; use one model.stream(static=...) per session")
        one = TensorStream(model, 1, time_axes)
        two = TensorStream(model, 2, time_axes)
        specs = one.compiled.states
        self._axes = [_batch_axis(s.shape, t.shape, f"state {i} ({s.describe()})")
                      for i, (s, t) in enumerate(zip(specs, two.compiled.states))]
        sizes = [np.dtype(s.dtype).itemsize * int(np.prod(s.shape, dtype=object)) for s in specs]
        needed = sum(sizes) * self.capacity
        if needed > _memory_limit():
            raise InputError(f"a pool of {self.capacity} sessions would need {needed} bytes of states, more than the "
                             f"limit of {_memory_limit()} (grurt.model.MEMORY_LIMIT_BYTES)")
        self._initial = one.state                       # each state at its start, batch 1
        self._store = [np.repeat(start, self.capacity, axis=axis) for start, axis in zip(self._initial, self._axes)]
        self._streams = collections.OrderedDict({1: one, 2: two})
        self.frame_names = one.frame_names
        self._open = np.zeros(self.capacity, bool)
        self._busy = threading.Lock()

    # ---- sessions ----

    def open(self) -> int:
        """A free session id (the lowest), its states at their start."""
        with self._using():
            free = np.flatnonzero(~self._open)
            if free.size == 0:
                raise InputError(f"all {self.capacity} sessions of this pool are open: close one first")
            sid = int(free[0])
            self._set(sid, self._initial)
            self._open[sid] = True
            return sid

    def close(self, sid) -> None:
        """Free session ``sid`` for a later open()."""
        with self._using():
            self._open[self._session(sid)] = False

    def reset(self, sid) -> None:
        """Session ``sid``'s states back to their start."""
        with self._using():
            self._set(self._session(sid), self._initial)

    def state(self, sid) -> List[np.ndarray]:
        """Session ``sid``'s states, as ``stream.state`` of a one-session stream gives them (copies)."""
        with self._using():
            sid = self._session(sid)
            return [np.take(store, [sid], axis=axis) for store, axis in zip(self._store, self._axes)]

    def set_state(self, sid, states) -> None:
        """Set session ``sid``'s states (the form :meth:`state` gives)."""
        with self._using():
            sid = self._session(sid)
            expected = self._initial
            if not isinstance(states, (list, tuple)) or len(states) != len(expected):
                raise InputError(f"states must be a list of {len(expected)} arrays, as pool.state(sid) gives")
            arrays = []
            for i, (value, start) in enumerate(zip(states, expected)):
                array = input_array(value, f"states[{i}]")
                if array.shape != start.shape or array.dtype.kind != start.dtype.kind:
                    raise InputError(f"states[{i}] must be {start.dtype} of shape {start.shape}, "
                                     f"got {array.dtype} {array.shape}")
                arrays.append(array.astype(start.dtype))
            self._set(sid, arrays)

    # ---- a step ----

    def step(self, ids, frames):
        """Advance sessions ``ids`` ((n,) integer ids of open sessions, each at most once) by one frame:
        ``frames`` as ``stream.step`` takes them, for a batch of n (row k is session ``ids[k]``'s).
        Returns the outputs as that step does, row k for ``ids[k]``. Nothing changes if it raises."""
        with self._using():
            ids = self._ids(ids)
            stream = self._stream(len(ids))
            stream._states = [np.take(store, ids, axis=axis) for store, axis in zip(self._store, self._axes)]
            outputs = stream.step(frames)
            for store, axis, new in zip(self._store, self._axes, stream._states):
                index = [slice(None)] * store.ndim
                index[axis] = ids
                store[tuple(index)] = new
            return outputs

    def _stream(self, n: int) -> TensorStream:
        stream = self._streams.get(n)
        if stream is None:
            stream = self._streams[n] = TensorStream(self.model, n, self._time_axes)
            if len(self._streams) > STREAMS_KEPT:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(n)
        return stream

    def _ids(self, ids) -> np.ndarray:
        array = input_array(ids, "ids")
        if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
            raise InputError(f"ids must be a 1-D array of integer session ids, got {array.dtype} {array.shape}")
        if array.min() < 0 or array.max() >= self.capacity:
            raise InputError(f"session ids must be 0 to {self.capacity - 1}, got {array.min()}..{array.max()}")
        array = array.astype(np.int64)
        closed = array[~self._open[array]]
        if closed.size:
            raise InputError(f"session {closed[0]} is not open")
        values, counts = np.unique(array, return_counts=True)
        if values.size != array.size:
            raise InputError(f"session {values[counts > 1][0]} appears more than once in ids")
        return array

    def _session(self, sid) -> int:
        if isinstance(sid, bool) or not isinstance(sid, (int, np.integer)):
            raise InputError(f"a session id must be an integer, got {sid!r}")
        if not 0 <= sid < self.capacity:
            raise InputError(f"session id {sid} is out of range (0 to {self.capacity - 1})")
        if not self._open[sid]:
            raise InputError(f"session {sid} is not open")
        return int(sid)

    def _set(self, sid: int, arrays) -> None:
        for store, axis, value in zip(self._store, self._axes, arrays):
            index = [slice(None)] * store.ndim
            index[axis] = slice(sid, sid + 1)
            store[tuple(index)] = value

    @contextlib.contextmanager
    def _using(self):
        if not self._busy.acquire(blocking=False):
            raise InputError("this pool is in use by another thread: a pool takes one caller at a time")
        try:
            yield
        finally:
            self._busy.release()
