"""``Model``: a validated spec, planned once, run many times."""
from __future__ import annotations

import os

import numpy as np

from . import _kernels
from .errors import InputError, ModelFormatError
from .spec import GRU, ModelSpec, Reverse, Scale

_FLOAT32 = np.dtype(np.float32)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


#: A call that would need more bytes than this (input copy, workspace, output) is refused
#: before anything is allocated. Defaults to the machine's physical memory.
MEMORY_LIMIT_BYTES = _physical_memory()


def _as_array(value, what: str) -> np.ndarray:
    """np.asarray, with a ragged or unconvertible value reported as an InputError."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what} must be a rectangular array of numbers ({exc})") from None


class Model:
    """A GRU model ready to run. Build one with :func:`grurt.load`, :func:`grurt.from_torch`, ...

    A Model is immutable and may be shared by any number of threads: each call allocates
    its own workspace, and the kernels run without the GIL.
    """

    def __init__(self, spec: ModelSpec):
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"Model expects a grurt.spec.ModelSpec, got {type(spec).__name__}")
        self.spec = spec
        self._plan = _kernels.Plan(spec)
        self._state_shapes = [(g.num_directions, g.hidden_size) for g in spec.gru_layers]
        self._output_size, self._returns_sequence = spec.output_size, spec.returns_sequence
        self._plain_runs = spec.mask_value is None      # no lengths to derive from the input

    @classmethod
    def chain(cls, layers, input_size=None, mask_value=None) -> "Model":
        """A Model of canonical layers applied in order (``grurt.layers`` builds them from any
        framework's weights). ``input_size`` defaults to that of the first GRU, Dense or Scale.
        Put ``LastStep()`` after the last GRU to keep only the last time step."""
        layers = tuple(layers)
        for layer in layers if input_size is None else ():
            input_size = layer.size if isinstance(layer, Scale) else getattr(layer, "input_size", None)
            if input_size is not None:
                break
        if input_size is None:
            raise ModelFormatError("Model.chain: no GRU, Dense or Scale layer tells the input size; pass input_size=")
        return cls(ModelSpec(input_size, layers, mask_value=mask_value))

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def output_size(self) -> int:
        return self.spec.output_size

    @property
    def layers(self):
        return self.spec.layers

    def __repr__(self) -> str:
        layers = ", ".join(layer.describe() for layer in self.spec.layers)
        return f"<grurt.Model input_size={self.input_size}: {layers}>"

    def __reduce__(self):
        return (Model, (self.spec,))

    def run(self, seq, initial_state=None, return_state=False, lengths=None, threads=1):
        """Run the model on ``seq``: (T, I) for one sequence or (B, T, I) for a batch.

        Returns float32 output shaped as the model defines ((B, T, F) if the model returns a
        sequence, (B, F) otherwise; the batch axis is dropped for a (T, I) input). With
        ``return_state=True`` returns ``(output, states)``: one (directions, B, H) array per
        GRU layer ((directions, H) for a single sequence). ``initial_state`` takes the same
        form. ``lengths`` (B,) gives each sequence's valid length for padded batches.
        ``threads`` > 1 runs the directions and batch slices of each GRU layer in parallel.
        """
        # the common call (a float32 sequence or batch, zero states, one thread) is checked in C; anything
        # else, including what that check turns down, goes through the full checks below
        if (initial_state is None and not return_state and lengths is None and threads == 1
                and type(threads) is int and self._plain_runs):
            out = self._plan.run_plain(seq, MEMORY_LIMIT_BYTES)
            if out is not None:
                return out
        x, single = self._input(seq)                       # checks the size before converting
        batch, steps = x.shape[0], x.shape[1]
        if initial_state is None and not return_state:
            states = None                                   # zero states kept in the workspace
        else:
            states = self._initial_states(initial_state, batch, single)
        if lengths is None and self.spec.mask_value is not None:
            lengths = self._lengths_from_mask(x)
        length_array = None if lengths is None else self._lengths(lengths, batch, steps, single)
        out = np.empty((batch, steps, self._output_size) if self._returns_sequence else (batch, self._output_size),
                       _FLOAT32)
        if type(threads) is not int or not 1 <= threads <= _kernels.MAX_THREADS:
            raise InputError(f"threads must be an integer from 1 to {_kernels.MAX_THREADS}, got {threads!r}")
        self._plan.run(x, states, length_array, out, threads)
        if single:
            out = out[0]
        if not return_state:
            return out
        return out, [s[:, 0] if single else s for s in states]

    __call__ = run

    def stream(self, batch: int = 1) -> "Stream":
        """A :class:`Stream` that feeds this model one time step at a time, ``batch`` streams at once."""
        return Stream(self, batch)

    def stream_pool(self, capacity: int) -> "StreamPool":
        """A :class:`StreamPool`: the states of up to ``capacity`` sessions, stepped together."""
        return StreamPool(self, capacity)

    def _check_streamable(self) -> None:
        """InputError unless every layer can run one frame at a time (no look-ahead)."""
        for index, layer in enumerate(self.spec.layers):
            if isinstance(layer, GRU) and layer.direction != "forward":
                raise InputError(f"layer {index} is a {layer.direction} GRU, which needs the whole sequence: "
                                 "this model cannot stream, use run()")
            if isinstance(layer, Reverse):
                raise InputError(f"layer {index} reverses time, which needs the whole sequence: "
                                 "this model cannot stream, use run()")

    # ---- input checks: once per call, so that the kernels can trust everything ----

    def _input(self, seq):
        if type(seq) is not np.ndarray:
            if not hasattr(seq, "__array__") and not isinstance(seq, (list, tuple)):
                raise InputError(f"input must be an array of numbers, got {type(seq).__name__}")
            seq = _as_array(seq, "input")
        if seq.dtype.kind not in "fiub":
            raise InputError(f"input must be real numbers, got dtype {seq.dtype}")
        if seq.ndim not in (2, 3):
            raise InputError(
                f"input must be (T, {self.input_size}) or (B, T, {self.input_size}), got shape {seq.shape}")
        single = seq.ndim == 2
        batch, steps, features = (1,) + seq.shape if single else seq.shape
        if features != self.input_size:
            raise InputError(f"input has {features} features per step, the model expects {self.input_size}")
        if steps == 0 or batch == 0:
            raise InputError(f"input has no time steps or no sequences (shape {seq.shape})")
        self._check_size(batch, steps)                     # before the float32 copy below
        if not (seq.dtype == np.float32 and seq.flags.c_contiguous):
            seq = np.ascontiguousarray(seq, dtype=np.float32)
        return seq.reshape(batch, steps, features), single

    def _check_size(self, batch: int, steps: int):
        """The limits of Plan.check_size (the same check as the C fast path's), explained."""
        failure = self._plan.check_size(batch, steps, MEMORY_LIMIT_BYTES)
        if failure == _kernels.TOO_MANY_ROWS:
            raise InputError(f"input of {batch} sequences × {steps} steps is too large for 32-bit BLAS indexing")
        if failure == _kernels.TOO_MUCH_MEMORY:
            needed = self._plan.bytes_needed(batch, steps)
            raise InputError(
                f"input of {batch} sequences × {steps} steps would need {needed / 2**30:.1f} GiB, "
                f"more than the limit of {MEMORY_LIMIT_BYTES / 2**30:.1f} GiB (grurt.model.MEMORY_LIMIT_BYTES)")

    def _initial_states(self, initial_state, batch: int, single: bool, name: str = "initial_state"):
        """Fresh C-contiguous float32 (D, B, H) states: zeros for None, else checked copies."""
        if initial_state is None:
            return [np.zeros((d, batch, h), np.float32) for d, h in self._state_shapes]
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != len(self._state_shapes):
            raise InputError(f"{name} must be a list of {len(self._state_shapes)} arrays, one per GRU layer")
        states = []
        for index, (value, (d, h)) in enumerate(zip(initial_state, self._state_shapes)):
            expected = (d, h) if single else (d, batch, h)
            value = _as_array(value, f"{name}[{index}]")
            if value.dtype.kind not in "fiub" or value.shape != expected:
                raise InputError(f"{name}[{index}] must be a real array of shape {expected}, "
                                 f"got {value.dtype} {value.shape}")
            states.append(np.array(value, dtype=np.float32, order="C").reshape(d, batch, h))
        return states

    def _lengths_from_mask(self, x):
        """Each sequence's length from its trailing steps whose features all equal mask_value."""
        real = (x != self.spec.mask_value).any(axis=2)                 # (B, T)
        lengths = x.shape[1] - np.argmax(real[:, ::-1], axis=1)
        empty = ~real.any(axis=1)
        if empty.any():
            raise InputError(f"sequence {int(np.argmax(empty))} is entirely masked (every step equals "
                             f"mask_value={self.spec.mask_value:g})")
        holes = real.sum(axis=1) != lengths
        if holes.any():
            raise InputError(f"sequence {int(np.argmax(holes))} has masked steps before its last real step; "
                             "grurt supports masking of trailing padding only")
        return lengths

    @staticmethod
    def _lengths(lengths, batch: int, steps: int, single: bool):
        values = _as_array(lengths, "lengths")
        if single and values.ndim == 0:
            values = values.reshape(1)
        if values.shape != (batch,) or values.dtype.kind not in "iu":
            raise InputError(f"lengths must be integers of shape ({batch},), got {values.dtype} {values.shape}")
        if values.min() < 1 or values.max() > steps:
            raise InputError(f"lengths must be between 1 and {steps} (the number of steps), "
                             f"got {values.min()}..{values.max()}")
        return np.ascontiguousarray(values, dtype=np.int32)


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class Stream:
    """Runs a model one frame (or one block of frames) at a time; the GRU states live inside.

    ``step(frame)`` for T frames gives the same outputs as ``run`` on the sequence of those
    frames (each step returns the output for the last frame, as ``run`` on the prefix
    would) and leaves the same final ``state``; ``run(frames)`` takes a block of frames and
    gives bit for bit what stepping them one by one gives. A Stream belongs to one caller
    at a time; the Model it came from can be shared.
    """

    def __init__(self, model: Model, batch: int = 1):
        batch = _positive_int(batch, "batch")
        model._check_streamable()
        self.model = model
        self.batch = batch
        self._plan = model._plan
        self._states = model._initial_states(None, self.batch, single=False)
        self._workspace = _kernels.aligned_empty(self._plan.workspace_floats(self.batch, 1))
        # step() sees one frame: every layer's output is (B, F), there is no time axis left
        self._out_shape = (self.batch, model.output_size)

    def reset(self) -> None:
        """Zero every state, as at the start of a new stream."""
        for state in self._states:
            state.fill(0.0)

    @property
    def state(self):
        """Copies of the GRU states, one (directions, batch, hidden) array per GRU layer."""
        return [state.copy() for state in self._states]

    @state.setter
    def state(self, values):
        """Set every GRU state from a list of (directions, batch, hidden) arrays; None zeros them."""
        self._states = self.model._initial_states(values, self.batch, single=False, name="state")

    def step(self, frame, out=None):
        """Advance every stream by one frame: (I,) when batch is 1, or (batch, I).

        Returns the output for this frame, (F,) or (batch, F). With ``out`` (a C-contiguous
        float32 array of that shape) the result is written there and nothing is allocated.
        """
        result = self._plan.step_plain(frame, out, self._states, self._workspace, self.batch)
        if result is not None:                              # the common call, checked in C
            return result
        if not (type(frame) is np.ndarray and frame.dtype == np.float32 and frame.flags.c_contiguous):
            frame = _coerce(frame, "frame")
        single = frame.ndim == 1
        if frame.ndim not in (1, 2) or frame.shape[-1] != self.model.input_size \
                or (frame.shape[0] != self.batch and not single) or (single and self.batch != 1):
            raise InputError(f"frame must be ({self.batch}, {self.model.input_size})"
                             + (f" or ({self.model.input_size},)" if self.batch == 1 else "")
                             + f", got shape {frame.shape}")
        result = _out_buffer(out, self._out_shape)
        self._plan.step(frame, self._states, result, self._workspace, self.batch)
        if out is None and single:
            return result[0]
        return result

    def run(self, frames, out=None):
        """Advance by a block of n frames: (n, I) when batch is 1, or (batch, n, I).

        Returns the output of every frame, (n, F) or (batch, n, F): frame t's output is what
        ``step`` returns at frame t (for a model ending in LastStep or a GRU's last state,
        the head applied to the state after frame t). The states carry on, as
        ``scipy.signal.sosfilt`` with ``zi``: any split of a sequence into blocks, and
        stepping frame by frame, give bit for bit the same outputs and states.
        """
        if not (type(frames) is np.ndarray and frames.dtype == np.float32 and frames.flags.c_contiguous):
            frames = _coerce(frames, "frames")
        single = frames.ndim == 2
        I, B = self.model.input_size, self.batch
        if frames.ndim not in (2, 3) or frames.shape[-1] != I or (single and B != 1) \
                or (not single and frames.shape[0] != B):
            raise InputError(f"frames must be ({B}, n, {I})" + (f" or (n, {I})" if B == 1 else "")
                             + f", got shape {frames.shape}")
        n = frames.shape[-2]
        F = self.model.output_size
        result = _out_buffer(out, frames.shape[:-1] + (F,))
        view = result.reshape(B, n, F)
        for t in range(n):      # phase 1: frame by frame (the blocked kernel replaces this)
            self._plan.step(np.ascontiguousarray(frames.reshape(B, n, I)[:, t]), self._states, buffer := np.empty((B, F), np.float32),
                            self._workspace, B)
            view[:, t] = buffer
        return result


def _coerce(frame, what):
    frame = _as_array(frame, what)
    if frame.dtype.kind not in "fiub":
        raise InputError(f"{what} must be real numbers, got dtype {frame.dtype}")
    return np.ascontiguousarray(frame, dtype=np.float32)


def _out_buffer(out, shape):
    if out is None:
        return np.empty(shape, np.float32)
    size = int(np.prod(shape))
    if not (type(out) is np.ndarray and out.dtype == np.float32 and out.flags.c_contiguous
            and out.flags.writeable and out.size == size):
        raise InputError(f"out must be a writeable C-contiguous float32 array of {size} elements")
    return out


class StreamPool:
    """The states of up to ``capacity`` streaming sessions of one model, any subset of which
    is stepped together as one batch.

    ``open()`` hands out a session id (an int from 0 to capacity - 1) with zero states;
    ``step(ids, frames)`` gathers those sessions' states, runs one batched step and writes
    them back; ``close(sid)`` frees the id for a later ``open()``. Stepping a session through
    the pool gives bit for bit what a ``Stream`` of its own gives, whatever other sessions
    share its steps.

    A pool belongs to one caller at a time (the loop that batches the frames): a call made
    while another thread's call on the same pool is running raises InputError instead of
    waiting or corrupting a state. Threads that share a pool serialize with a lock of their
    own. The Model it came from can be shared.
    """

    def __init__(self, model: Model, capacity: int):
        capacity = _positive_int(capacity, "capacity")
        model._check_streamable()
        self.model = model
        self.capacity = capacity
        self._plan = model._plan
        self._state_shapes = model._state_shapes
        self._states = [np.zeros((capacity, d, h), np.float32) for d, h in self._state_shapes]
        self._open = np.zeros(capacity, bool)
        self._free = list(range(capacity - 1, -1, -1))      # pop() hands out the lowest id first

    def __len__(self) -> int:
        """The number of open sessions."""
        return self.capacity - len(self._free)

    def open(self) -> int:
        """Open a session with zero states and return its id."""
        if not self._free:
            raise InputError(f"all {self.capacity} sessions of this pool are open: close one first")
        sid = self._free.pop()
        self._open[sid] = True
        for state in self._states:
            state[sid] = 0.0
        return sid

    def _session(self, sid) -> int:
        if isinstance(sid, bool) or not isinstance(sid, (int, np.integer)):
            raise InputError(f"a session id must be an integer, got {sid!r}")
        if not 0 <= sid < self.capacity:
            raise InputError(f"session id {sid} is out of range (0 to {self.capacity - 1})")
        if not self._open[sid]:
            raise InputError(f"session {sid} is not open")
        return int(sid)

    def close(self, sid) -> None:
        """Close session ``sid``: its id may be handed out again by ``open()``."""
        sid = self._session(sid)
        self._open[sid] = False
        self._free.append(sid)

    def is_open(self, sid) -> bool:
        return isinstance(sid, (int, np.integer)) and 0 <= sid < self.capacity and bool(self._open[sid])

    def reset(self, sid) -> None:
        """Zero the states of session ``sid``."""
        sid = self._session(sid)
        for state in self._states:
            state[sid] = 0.0

    def state(self, sid):
        """Copies of session ``sid``'s GRU states, one (directions, hidden) array per GRU layer."""
        sid = self._session(sid)
        return [state[sid].copy() for state in self._states]

    def set_state(self, sid, states) -> None:
        """Set session ``sid``'s GRU states from one (directions, hidden) array per GRU layer."""
        sid = self._session(sid)
        values = self.model._initial_states(states, 1, single=True, name="states")
        for state, value in zip(self._states, values):
            state[sid] = value[:, 0]

    def step(self, ids, frames, out=None):
        """Advance the sessions ``ids`` ((n,) integers, each open, no repeats) by one frame each:
        ``frames`` (n, I) → outputs (n, F), row k for session ids[k]. With ``out`` (a
        C-contiguous float32 array of n × F elements) nothing is allocated for int64 ids and
        C-contiguous float32 frames."""
        ids = _as_array(ids, "ids")
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise InputError(f"ids must be a 1-D array of integer session ids, got {ids.dtype} {ids.shape}")
        n = ids.shape[0]
        if not (type(frames) is np.ndarray and frames.dtype == np.float32 and frames.flags.c_contiguous):
            frames = _coerce(frames, "frames")
        I = self.model.input_size
        if frames.shape != (n, I):
            raise InputError(f"frames must be ({n}, {I}) for {n} session ids, got shape {frames.shape}")
        if n and (ids.min() < 0 or ids.max() >= self.capacity):
            bad = ids[(ids < 0) | (ids >= self.capacity)][0]
            raise InputError(f"session id {bad} is out of range (0 to {self.capacity - 1})")
        closed = ~self._open[ids]
        if closed.any():
            raise InputError(f"session {ids[closed][0]} is not open")
        if len(np.unique(ids)) != n:
            values, counts = np.unique(ids, return_counts=True)
            raise InputError(f"session {values[counts > 1][0]} appears more than once in ids")
        result = _out_buffer(out, (n, self.model.output_size))
        if n == 0:
            return result
        states = [np.ascontiguousarray(state[ids].transpose(1, 0, 2)) for state in self._states]
        self._plan.step(frames, states, result, _kernels.aligned_empty(self._plan.workspace_floats(n, 1)), n)
        for state, new in zip(self._states, states):
            state[ids] = new.transpose(1, 0, 2)
        return result
