"""A pytest plugin recording every graph Model's run call and every graph stream (its step/run calls in order), to be
replayed on another build by bench/graph_calls_replay.py: the same bits? (docs/architecture-tensor-graph.md, "Step 2")

    mkdir -p /tmp/graph_calls && PYTHONPATH=src:bench python -m pytest -q -p graph_calls_record tests/test_graph.py ...
    PYTHONPATH=OTHER_SRC python bench/graph_calls_replay.py        # and PYTHONPATH=src, for the streams

Records go to $GRAPH_CALLS (default /tmp/graph_calls), a file per process. A stream's state set or reset between its
calls is not recorded: compare two builds' replays of the streams, not a replay with the recording."""
import os, pickle
import grurt.model as m
import grurt.graph_stream as gs

_FILE = None


def _dump(record):
    global _FILE
    if _FILE is None:
        _FILE = open(os.path.join(os.environ.get("GRAPH_CALLS", "/tmp/graph_calls"), f"{os.getpid()}.pkl"), "ab")
    try:
        pickle.dump(record, _FILE)
        _FILE.flush()
    except Exception:
        pass


def _copy(x):
    try:
        return pickle.loads(pickle.dumps(x))
    except Exception:
        return None


_run = m.GraphModel.run


def run(self, seq, initial_state=None, return_state=False, lengths=None, threads=1):
    try:
        model = pickle.dumps(self)
    except Exception:
        model = None
    args = _copy((seq, initial_state, return_state, lengths, threads))
    try:
        out = _run(self, seq, initial_state, return_state, lengths, threads)
    except Exception as exc:
        if model is not None and args is not None:
            _dump(("run", model, args, None, (type(exc).__name__, str(exc))))
        raise
    if model is not None and args is not None:
        _dump(("run", model, args, _copy(out), None))
    return out


m.GraphModel.run = run

_init, _step, _srun = gs.GraphStream.__init__, gs.GraphStream.step, gs.GraphStream.run


def init(self, model, batch=1, threads=1, static=None):
    self._rec = None
    try:
        rec = [pickle.dumps(model), _copy((batch, threads, static))]
    except Exception:
        rec = None
    _init(self, model, batch, threads, static)
    self._rec = rec and rec + [[]]


def _op(name, fn):
    def call(self, frames):
        args = _copy(frames)
        out = fn(self, frames)
        if self._rec is not None:
            self._rec[2].append((name, args, _copy(out)))
            _dump(("stream", self._rec[0], self._rec[1], list(self._rec[2]), None))
        return out
    return call


gs.GraphStream.__init__ = init
gs.GraphStream.step = _op("step", _step)
gs.GraphStream.run = _op("run", _srun)
