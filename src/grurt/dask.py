"""Batch scoring on a Dask cluster: :func:`predict` maps ``Model.run`` over a dask array.

    import dask.array as da
    import grurt, grurt.dask
    from distributed import Client

    client = Client("scheduler:8786")              # or none: the threaded scheduler
    model = grurt.load("model.npz")
    x = da.from_zarr("inputs.zarr")                # (B, T, I), chunked along the batch
    y = grurt.dask.predict(model, x, threads=1)    # lazy (B, F) or (B, T, F) float32
    y.to_zarr("outputs.zarr")

Needs ``pip install "grurt[dask]"`` (dask[array], distributed, threadpoolctl). The workers
(and, with ``distributed``, the scheduler, which unpickles the graph) need grurt installed.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
except ImportError as exc:                                   # pragma: no cover
    raise ImportError("grurt.dask needs dask: pip install 'grurt[dask]'") from exc

from .errors import InputError
from .model import Model

__all__ = ["predict"]

#: run options predict passes to every block's ``Model.run``; the others make no sense per block.
_RUN_OPTIONS = ("threads",)


def predict(model: Model, x, lengths=None, **run_options) -> da.Array:
    """Score a batch of sequences ``x`` (B, T, I) with ``model``, block by block: a lazy dask array.

    Returns a float32 dask array shaped as ``model.run`` returns, (B, T, F) for a model that
    returns a sequence and (B, F) otherwise, chunked along the batch as ``x`` is. Each block
    is ``model.run(block, lengths=block_lengths, **run_options)``, so the result is bit for
    bit what those calls give locally. GRU layers give a sequence bit for bit the same result
    in any batch, so a model of GRUs gives bit for bit ``model.run(x.compute())``; ``Dense``
    layers call OpenBLAS's sgemm, whose summation order depends on the number of rows, so a
    model with one can differ from a single whole-batch run in the last bits (float32
    rounding) depending on the block sizes.

    Chunking rule: ``x`` must be chunked along the batch axis only; if its time or feature
    axis is split, it is rechunked to one chunk on those axes (one GRU pass needs a whole
    sequence), which costs a shuffle: chunk it ``(b, -1, -1)`` in the first place. Block
    size: a few hundred sequences. ``Model.run``'s workspace grows with b·T (for W1's shape,
    GRU(50) -> Dense(1), 520 bytes per sequence step: 130 MB for 2,500 sequences of 100
    steps) and a small model runs slower per sequence once it leaves the caches (W1's shape
    measured 36 us per sequence in batches of 64-128, 44 at 256, 76 at 2,500), while very
    small blocks pay the scheduler's per-task overhead. ``x`` may also be a NumPy array (it
    is then wrapped with dask's default chunks). An unknown (NaN) batch chunking is accepted
    without ``lengths``.

    ``lengths`` (B,) integers, a dask or NumPy array, gives each padded sequence's valid
    length as in ``Model.run``; it is rechunked to ``x``'s batch chunks. ``run_options``
    are passed to ``Model.run``: ``threads=`` only (``initial_state``/``return_state``
    are refused: a state belongs to one call).

    The model is in the graph once: one key (a ``dask.delayed`` of the model) that every
    block task depends on, never pickled into each task. With ``distributed``, the scheduler
    sends it to each worker once, where it stays in memory while the blocks that need it
    run. Each block runs with BLAS limited to one thread (threadpoolctl, if installed):
    grurt's Dense layers call SciPy's OpenBLAS, which otherwise starts one thread per core
    in each worker thread; parallelism comes from the workers, their threads and
    ``threads=``. (``distributed``'s nanny already starts workers with
    ``OPENBLAS_NUM_THREADS=1``; the threaded scheduler and other launchers do not.) While a
    block runs, the limit holds for the whole worker process: BLAS is configured per process.

    Shapes, dtypes, ``lengths``' shape and the options are checked here, when the graph is
    built, and raise :class:`grurt.InputError` naming the shape; ``lengths`` values of a
    dask array, and ``mask_value`` padding, are checked by ``Model.run`` in the workers.
    """
    if not isinstance(model, Model):
        raise TypeError(f"predict expects a grurt.Model, got {type(model).__name__}")
    if model._graph is not None:
        graph = model.graph
        if (len(graph.inputs) != 1 or graph.inputs[0].kind != "sequence" or len(graph.outputs) != 1
                or graph.outputs[0].directions is not None):
            raise InputError(f"grurt.dask.predict scores models of one sequence input and one output; this "
                             f"graph has inputs {list(graph.input_names)} and outputs {list(graph.output_names)}")
        returns_sequence = graph.tensors[graph.outputs[0].name].has_time
    else:
        returns_sequence = model.spec.returns_sequence
    options = _run_options(run_options)
    x = _input(model, x)
    batch, steps, _ = x.shape
    lengths = _lengths(lengths, x, steps)

    model_key = dask.delayed(model, name="grurt-model-" + tokenize(model), pure=True, traverse=False)
    F = model.output_size
    out_ind = "btf" if returns_sequence else "bf"
    args = [model_key, None, x, "bti"]
    if lengths is not None:
        args += [lengths, "b"]
    meta = np.empty((0,) * len(out_ind), np.float32)
    return da.blockwise(_score_block, out_ind, *args, new_axes={"f": F}, concatenate=True,
                        dtype=np.float32, meta=meta, align_arrays=False,
                        name="grurt-predict-" + tokenize(model_key.key, x, lengths, options),
                        options=options)


def _run_options(run_options: dict) -> dict:
    unknown = set(run_options) - set(_RUN_OPTIONS)
    if {"initial_state", "return_state"} & unknown:
        raise InputError("grurt.dask.predict does not take initial_state or return_state "
                         "(a state belongs to one Model.run call)")
    if unknown:
        raise TypeError(f"predict got unexpected run options {sorted(unknown)}; it passes {list(_RUN_OPTIONS)}")
    threads = run_options.get("threads", 1)
    if type(threads) is not int or not 1 <= threads <= 64:
        raise InputError(f"threads must be an integer from 1 to 64, got {threads!r}")
    return {"threads": threads}


def _input(model: Model, x) -> da.Array:
    """x as a (B, T, I) dask array with T and I each in one chunk; shape errors raised now."""
    if not isinstance(x, da.Array):
        if not hasattr(x, "__array__") and not isinstance(x, (list, tuple)):
            raise InputError(f"input must be a dask or NumPy array, got {type(x).__name__}")
        x = da.asarray(np.asarray(x))
    I = model.input_size
    if x.dtype.kind not in "fiub":
        raise InputError(f"input must be real numbers, got dtype {x.dtype}")
    if x.ndim == 2:
        raise InputError(f"grurt.dask.predict scores a batch (B, T, {I}); got one sequence of shape "
                         f"{x.shape}: use model.run for one sequence, or x[None] for a batch of one")
    if x.ndim != 3:
        raise InputError(f"input must be (B, T, {I}), got shape {x.shape}")
    batch, steps, features = x.shape
    if np.isnan(steps) or np.isnan(features):
        raise InputError(f"input shape {x.shape} has an unknown time or feature size: "
                         "call x.compute_chunk_sizes() first")
    if features != I:
        raise InputError(f"input of shape {x.shape} has {features} features per step, the model expects {I}")
    if steps == 0 or batch == 0:
        raise InputError(f"input has no time steps or no sequences (shape {x.shape})")
    if x.numblocks[1] != 1 or x.numblocks[2] != 1:
        x = x.rechunk({1: -1, 2: -1})               # a GRU pass needs whole sequences
    return x


def _lengths(lengths, x: da.Array, steps: int):
    """lengths as a (B,) integer dask array chunked as x's batch axis, or None."""
    if lengths is None:
        return None
    batch = x.shape[0]
    if not isinstance(lengths, da.Array):
        values = np.asarray(lengths)
        if values.shape == (batch,) and values.dtype.kind in "iu" and values.size:
            if values.min() < 1 or values.max() > steps:   # known now: checked now
                raise InputError(f"lengths must be between 1 and {steps} (the number of steps), "
                                 f"got {values.min()}..{values.max()}")
        lengths = values
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or not (lengths.shape[0] == batch or np.isnan(batch)):
        raise InputError(f"lengths must be integers of shape ({batch},) for input of shape {x.shape}, "
                         f"got {lengths.dtype} {lengths.shape}")
    if not isinstance(lengths, da.Array):
        if np.isnan(batch):
            raise InputError(f"input shape {x.shape} has unknown batch chunks: call x.compute_chunk_sizes() "
                             "before passing lengths")
        return da.from_array(lengths, chunks=(x.chunks[0],))
    if lengths.chunks[0] != x.chunks[0]:
        if np.isnan(batch) or any(np.isnan(c) for c in lengths.chunks[0]):
            raise InputError(f"lengths' chunks {lengths.chunks[0]} do not match the input's batch chunks "
                             f"{x.chunks[0]} and one is unknown: call compute_chunk_sizes() first")
        lengths = lengths.rechunk((x.chunks[0],))
    return lengths


def _score_block(model: Model, x: np.ndarray, lengths=None, *, options: dict) -> np.ndarray:
    """One block: ``model.run`` with BLAS on one thread."""
    with single_blas_thread():
        return model.run(x, lengths=lengths, **options)


# ---- one BLAS thread while any block runs in this process ----
#
# BLAS thread counts are per process, while a threaded scheduler or a multi-threaded worker
# runs blocks on several threads at once: the first block to start sets the limit and the
# last one to finish restores the previous setting (a limiter per block would let one
# block's exit restore the full count under another that is still running). threadpoolctl
# (>= 3.6) lets only one "controlling" thread change OpenBLAS's (pthreads) thread count and
# ignores the others; since the first and the last block may run on different threads, each
# change is made after taking control, and control is released once the setting is restored.

_limit_lock = threading.Lock()
_active_blocks = 0
_limiter = None
_controller = None


@contextlib.contextmanager
def single_blas_thread():
    """Limit BLAS (and OpenMP) to one thread in this process while the block runs (threadpoolctl, if installed)."""
    global _active_blocks, _limiter
    with _limit_lock:
        if _active_blocks == 0:
            controller = _threadpool_controller()
            if controller is not None:
                _blas_control(take=True)
                _limiter = controller.limit(limits=1)
        _active_blocks += 1
    try:
        yield
    finally:
        with _limit_lock:
            _active_blocks -= 1
            if _active_blocks == 0 and _limiter is not None:
                _blas_control(take=True)
                _limiter.restore_original_limits()
                _limiter = None
                _blas_control(take=False)


def _threadpool_controller():
    """A ThreadpoolController made once per process (after SciPy's BLAS is loaded), or None."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller or None


def _blas_control(take: bool):
    """Make this thread the one threadpoolctl lets set OpenBLAS's threads (take) or release it."""
    try:
        from threadpoolctl import OpenBLASController
        clear = OpenBLASController.clear_controlling_thread     # threadpoolctl >= 3.6
    except (ImportError, AttributeError):
        return
    clear(force=take)          # take: clear whoever holds it, the next set claims it; else release ours
