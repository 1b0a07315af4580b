"""Many streaming sessions of a general graph: :meth:`grurt.TensorModel.stream_pool`.

A pool keeps every session's states (a GRU's h, a causal Conv's history, ...:
:class:`~grurt.tensor_stream.TensorStream` says which) and, for a model with static inputs (an attention
decoder's encoder outputs), the tensors the stream reads that are computed from them alone, once per session
when it opens or resets. Sessions whose static inputs have the same shapes form a *group*: one array per
state and per static tensor, with the group's sessions along that array's batch axis. A step gathers the
stepped sessions' rows, runs them as one batch through a stream of that many sessions (compiled at the first
step of each size and kept) and scatters the new states back; sessions of several groups stepped together run
as one batch per group, their outputs put back in the order of ``ids``.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import List

import numpy as np

from ._kernels import _memory_limit
from .errors import InputError, UnsupportedModelError
from .graph_model import by_name, input_array
from .tensor_stream import Compiled, checked_time_axes, static_checker

#: Compiled streams kept, one per static signature and number of sessions stepped together (the least
#: recently used goes).
STREAMS_KEPT = 16


def _batch_axis(one, two, what: str) -> int:
    """The axis along which a shape at batch 1 (``one``) and at batch 2 (``two``) differ."""
    axes = [axis for axis, (a, b) in enumerate(zip(one, two)) if a != b]
    if len(one) != len(two) or len(axes) != 1 or (one[axes[0]], two[axes[0]]) != (1, 2):
        raise UnsupportedModelError(f"{what}: no batch axis found (shape {one} at batch 1, {two} at batch 2); "
                                    "this model cannot pool sessions, use one model.stream() per session")
    return axes[0]


def _along(array, axis, index):
    """The index tuple selecting ``index`` along ``axis`` of ``array``."""
    where = [slice(None)] * array.ndim
    where[axis] = index
    return tuple(where)


class _Group:
    """The sessions whose static inputs have one signature: one array per state, then one per static tensor
    the stream reads, a session's row along each array's batch axis; rows grow as sessions open."""

    def __init__(self, pool, sig):
        self.sig = sig
        one, two = pool._compiled(sig, 1), pool._compiled(sig, 2)
        states = one.graph.states
        self.n_states = len(states)
        self.state_axes = [_batch_axis(s.shape, t.shape, f"state {i} ({s.describe()})")
                           for i, (s, t) in enumerate(zip(states, two.graph.states))]
        reads = one.graph.static_reads
        self.axes = self.state_axes + [_batch_axis(one.graph.a[n].shape, two.graph.a[n].shape, f"static tensor '{n}'")
                                       for n in reads]
        self.reads = {name: self.n_states + k for k, name in enumerate(reads)}
        self.frame_axes = {name: _batch_axis(shape, two.frame_shapes[name][0], f"time input '{name}'")
                           for name, (shape, _) in one.frame_shapes.items()}
        self.output_axes = []           # each output's batch axis in a step's output (None: none found)
        for name, time in zip(one.graph.outputs, one.graph.output_axes):
            a, b = one.graph.a[name].shape, two.graph.a[name].shape
            axes = [i for i, (x, y) in enumerate(zip(a, b)) if x != y and i != time]
            axis = axes[0] if len(a) == len(b) and len(axes) == 1 else None
            self.output_axes.append(None if axis is None else axis - (time is not None and time < axis))
        self.one = one
        self.stores = None              # made with the first row
        self.rows = 0
        self.free: List[int] = []
        self.row_bytes = sum(np.dtype(s.dtype).itemsize * int(np.prod(s.shape, dtype=object)) for s in states)
        self.row_bytes += sum(one.graph.a[n].dtype.itemsize * int(np.prod(one.graph.a[n].shape, dtype=object))
                              for n in reads)

    @property
    def sessions(self) -> int:
        return self.rows - len(self.free)

    def take_row(self, pool, rows=None) -> int:
        """A free row (the stores grown, doubling, when there is none; checked against the memory limit)."""
        if self.free:
            return self.free.pop()
        grown = rows or max(4, 2 * self.rows)
        grown = min(grown, pool.capacity)
        needed = pool._stored_bytes() + (grown - self.rows) * self.row_bytes
        if needed > _memory_limit():
            raise InputError(f"this pool's states and static tensors would need {needed} bytes, more than the limit "
                             f"of {_memory_limit()} (grurt.model.MEMORY_LIMIT_BYTES)")
        examples = [np.zeros(s.shape, s.dtype) for s in self.one.graph.states] + \
            [np.zeros(self.one.graph.a[n].shape, self.one.graph.a[n].dtype) for n in self.reads]
        added = [np.repeat(e, grown - self.rows, axis=axis) for e, axis in zip(examples, self.axes)]
        self.stores = added if self.stores is None else [np.concatenate([s, a], axis) for s, a, axis in
                                                         zip(self.stores, added, self.axes)]
        self.free = list(range(grown - 1, self.rows, -1))
        row, self.rows = self.rows, grown
        return row

    def write(self, row: int, arrays, first: int = 0) -> None:
        """Arrays of one session (batch 1) into ``row`` of stores ``first``, ``first + 1``, ..."""
        for store, axis, value in zip(self.stores[first:], self.axes[first:], arrays):
            store[_along(store, axis, slice(row, row + 1))] = value

    def read(self, rows, first: int, count: int):
        return [np.take(store, rows, axis=axis) for store, axis in
                zip(self.stores[first:first + count], self.axes[first:first + count])]

    def initial_states(self, row: int) -> List[np.ndarray]:
        """The states at their start of the session in ``row`` (its static tensors written already)."""
        statics = {name: self.read([row], index, 1)[0] for name, index in self.reads.items()}
        return [self.one.initial(i, statics) for i in range(self.n_states)]


class TensorStreamPool:
    """The states of up to ``capacity`` streaming sessions of a general graph; any subset of open
    sessions is stepped together (docs/streaming-and-serving.md, "Pools of a general graph"). A model
    with static inputs takes each session's in ``open(static=...)`` (and ``reset(sid, static=...)``).
    A pool takes one caller at a time."""

    def __init__(self, model, capacity: int, time_axes=None):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise InputError(f"capacity must be a positive integer, got {capacity!r}")
        self.model, self.capacity = model, int(capacity)
        self._time_axes = checked_time_axes(model.graph, time_axes)
        self.frame_names = tuple(t.name for t in model.graph.inputs if t.name in self._time_axes)
        #: the static inputs each session gives at open(static=...), with 1 on axis 0 (one session's batch)
        self.static_names = tuple(t.name for t in model.graph.inputs if t.name not in self._time_axes)
        self._streams = collections.OrderedDict()     # (static signature, sessions) -> Compiled
        self._groups = {}                             # static signature -> _Group
        table = 17 * self.capacity                    # the session tables below: group, row, open flag
        if table > _memory_limit():
            raise InputError(f"a pool of {self.capacity} sessions would need {table} bytes of session tables, more "
                             f"than the limit of {_memory_limit()} (grurt.model.MEMORY_LIMIT_BYTES)")
        self._checker = static_checker(model, self.static_names) if self.static_names else None
        if not self.static_names:                     # every session in one group, its rows made (and checked) now
            group = self._groups[()] = _Group(self, ())
            group.take_row(self, self.capacity)
            group.free = list(range(self.capacity - 1, -1, -1))
        self._group_of: List = [None] * self.capacity
        self._row_of = np.zeros(self.capacity, np.int64)
        self._open = np.zeros(self.capacity, bool)
        self._busy = threading.Lock()

    # ---- sessions ----

    def open(self, static=None) -> int:
        """A free session id (the lowest), its states at their start; ``static``: the session's static inputs
        (required for a model that has them; a dict by name, a list, or the one array), each with 1 on axis 0
        as a one-session ``model.stream(static=...)`` takes them."""
        with self._using():
            free = np.flatnonzero(~self._open)
            if free.size == 0:
                raise InputError(f"all {self.capacity} sessions of this pool are open: close one first")
            sid = int(free[0])
            self._place(sid, static)
            self._open[sid] = True
            return sid

    def close(self, sid) -> None:
        """Free session ``sid`` for a later open()."""
        with self._using():
            sid = self._session(sid)
            self._release(sid)
            self._open[sid] = False

    def reset(self, sid, static=None) -> None:
        """Session ``sid``'s states back to their start; with ``static`` (as :meth:`open` takes it), new static
        inputs for it, the tensors computed from them alone computed again, once."""
        with self._using():
            sid = self._session(sid)
            if static is None:
                group, row = self._group_of[sid], int(self._row_of[sid])
                group.write(row, group.initial_states(row))
            else:
                old = (self._group_of[sid], int(self._row_of[sid]))
                self._place(sid, static)
                old[0].free.append(old[1])
                self._drop_if_empty(old[0])

    def state(self, sid) -> List[np.ndarray]:
        """Session ``sid``'s states, as ``stream.state`` of a one-session stream gives them (copies)."""
        with self._using():
            sid = self._session(sid)
            group = self._group_of[sid]
            return group.read([int(self._row_of[sid])], 0, group.n_states)

    def set_state(self, sid, states) -> None:
        """Set session ``sid``'s states (the form :meth:`state` gives)."""
        with self._using():
            sid = self._session(sid)
            group = self._group_of[sid]
            expected = group.one.graph.states
            if not isinstance(states, (list, tuple)) or len(states) != len(expected):
                raise InputError(f"states must be a list of {len(expected)} arrays, as pool.state(sid) gives")
            arrays = []
            for i, (value, spec) in enumerate(zip(states, expected)):
                array = input_array(value, f"states[{i}]")
                if array.shape != spec.shape or array.dtype.kind != spec.dtype.kind:
                    raise InputError(f"states[{i}] must be {spec.dtype} of shape {spec.shape}, "
                                     f"got {array.dtype} {array.shape}")
                arrays.append(array.astype(spec.dtype))
            group.write(int(self._row_of[sid]), arrays)

    def _place(self, sid: int, static) -> None:
        """Give session ``sid`` a row of the group of its static inputs, its static tensors and states at their
        start written there (nothing changes if this raises)."""
        arrays = self._static_arrays(static)
        sig = tuple((a.shape, a.dtype) for a in arrays)
        group = self._groups.get(sig)
        if group is None:
            group = _Group(self, sig)
        values = self._compiled(sig, 1).static_values(arrays)
        row = group.take_row(self)
        self._groups[sig] = group
        group.write(row, [values[name] for name in group.reads], group.n_states)
        group.write(row, group.initial_states(row))
        self._group_of[sid], self._row_of[sid] = group, row

    def _static_arrays(self, static):
        names = self.static_names
        if not names:
            if static is not None:
                raise InputError("this model has no static inputs, got static=")
            return []
        if static is None:
            raise InputError(f"this pool's sessions take static inputs {list(names)}: give each session's at "
                             "pool.open(static={name: value}), with 1 on axis 0")
        arrays = self._checker._inputs(by_name(static, names, "static input"))
        for name, array in zip(names, arrays):
            if array.ndim == 0 or array.shape[0] != 1:
                raise InputError(f"static input '{name}' of one session must have 1 on axis 0 (the batch of one "
                                 f"session), got shape {array.shape}")
        return arrays

    def _release(self, sid: int) -> None:
        group = self._group_of[sid]
        group.free.append(int(self._row_of[sid]))
        self._group_of[sid] = None
        self._drop_if_empty(group)

    def _drop_if_empty(self, group) -> None:
        if self.static_names and group.sessions == 0:
            del self._groups[group.sig]              # its memory goes; its compiled streams stay kept

    def _stored_bytes(self) -> int:
        return sum(g.rows * g.row_bytes for g in self._groups.values())

    # ---- a step ----

    def step(self, ids, frames):
        """Advance sessions ``ids`` ((n,) integer ids of open sessions, each at most once) by one frame:
        ``frames`` as ``stream.step`` takes them, for a batch of n (row k is session ``ids[k]``'s).
        Returns the outputs as that step does, row k for ``ids[k]``. Nothing changes if it raises."""
        with self._using():
            ids = self._ids(ids)
            given = by_name(frames, self.frame_names, "time input")
            groups = {}
            if len(self._groups) == 1:
                groups[0] = (next(iter(self._groups.values())), None)
            else:
                for position, sid in enumerate(ids):
                    groups.setdefault(id(self._group_of[sid]), (self._group_of[sid], []))[1].append(position)
            if len(groups) == 1:
                ((group, _),) = groups.values()
                outputs, write = self._step_group(group, ids, given)
            else:
                outputs, write = self._step_groups(list(groups.values()), ids, given)
            for group, rows, states in write:
                for store, axis, new in zip(group.stores, group.state_axes, states):
                    store[_along(store, axis, rows)] = new
            return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _step_group(self, group, ids, frames):
        """(outputs, [(group, rows, next states)]) of sessions ``ids`` of one group."""
        rows = self._row_of[ids]
        stream = self._compiled(group.sig, len(ids))
        statics = group.read(rows, group.n_states, len(group.reads))
        outputs, states = stream.advance(self._time_axes, frames, statics, group.read(rows, 0, group.n_states),
                                         block=False)
        return outputs, [(group, rows, states)]

    def _step_groups(self, groups, ids, frames):
        """Sessions of several groups: one batch per group, each output's rows put back in the order of ids."""
        n = len(ids)
        first = groups[0][0]
        for name, value in frames.items():           # the frames of all the sessions, checked as a whole
            shape = list(first.one.frame_shapes[name][0])
            shape[first.frame_axes[name]] = n
            for group, _ in groups[1:]:
                other = list(group.one.frame_shapes[name][0])
                other[group.frame_axes[name]] = n
                if other != shape or group.frame_axes[name] != first.frame_axes[name]:
                    raise InputError(f"time input '{name}': sessions with static inputs of different shapes take "
                                     f"frames of different shapes here ({tuple(shape)} and {tuple(other)} for "
                                     f"{n}); step them in separate calls")
            if np.shape(value) != tuple(shape):
                raise InputError(f"time input '{name}': the frames of {n} sessions have shape {tuple(shape)}, "
                                 f"got {np.shape(value)}")
        results, write = [], []
        for group, positions in groups:
            part = {name: np.take(np.asarray(value), positions, axis=group.frame_axes[name])
                    for name, value in frames.items()}
            outputs, states = self._step_group(group, ids[positions], part)
            results.append(outputs)
            # the next states of a stream graph's nodes may be the states they keep in place: copied before the
            # next group steps
            write += [(g, rows, [s.copy() for s in new]) for g, rows, new in states]
        merged = []
        for k, name in enumerate(first.one.graph.outputs):
            axes = {group.output_axes[k] for group, _ in groups}
            shapes = {tuple(np.delete(outputs[k].shape, group.output_axes[k])) if group.output_axes[k] is not None
                      else None for (group, _), outputs in zip(groups, results)}
            if None in axes or len(axes) > 1 or len(shapes) > 1:
                raise InputError(f"output '{name}' of sessions with static inputs of different shapes differs in "
                                 "shape (or has no batch axis): step them in separate calls, one per shape")
            axis = axes.pop()
            shape = list(results[0][k].shape)
            shape[axis] = n
            out = np.empty(shape, results[0][k].dtype)
            for (_, positions), outputs in zip(groups, results):
                out[_along(out, axis, positions)] = outputs[k]
            merged.append(out)
        return merged, write

    def _compiled(self, sig, n: int) -> Compiled:
        """The compiled stream of ``n`` sessions of static signature ``sig`` (each static input's axis 0 ``n``)."""
        key = (sig, n)
        stream = self._streams.get(key)
        if stream is None:
            shapes = {name: ((n,) + shape[1:], dtype) for name, (shape, dtype) in zip(self.static_names, sig)}
            stream = self._streams[key] = Compiled(self.model, self._time_axes, n, shapes)
            if len(self._streams) > STREAMS_KEPT:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(key)
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

    @contextlib.contextmanager
    def _using(self):
        if not self._busy.acquire(blocking=False):
            raise InputError("this pool is in use by another thread: a pool takes one caller at a time")
        try:
            yield
        finally:
            self._busy.release()
