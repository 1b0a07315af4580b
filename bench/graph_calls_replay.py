"""Replay the graph-model calls bench/graph_calls_record.py recorded on this PYTHONPATH's grurt: each run call gives
the recorded bits (or the same error); the streams' outputs, replayed from fresh streams, are written to the file
given (compare two builds' files with --compare A B).

    PYTHONPATH=OLD_SRC python bench/graph_calls_replay.py /tmp/old.pkl
    PYTHONPATH=src python bench/graph_calls_replay.py /tmp/new.pkl && python bench/graph_calls_replay.py --compare /tmp/old.pkl /tmp/new.pkl
"""
import glob
import os
import pickle
import sys

import numpy as np


def same(a, b):
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def compare(path_a: str, path_b: str) -> None:
    """Two builds' replays of the streams: the same bits (or the same error), call by call?"""
    a, b = (pickle.load(open(path, "rb")) for path in (path_a, path_b))
    calls = bad = 0
    for x, y in zip(a, b):
        for p, q in zip(x, y):
            calls += 1
            bad += (p != q) if isinstance(p, str) or isinstance(q, str) else not same(p, q)
    print(f"stream calls {calls}, differences {bad}")


if sys.argv[1] == "--compare":
    compare(*sys.argv[2:4])
    sys.exit()

runs = streams = bad = errors = 0
seen = {}
for path in sorted(glob.glob(os.path.join(os.environ.get("GRAPH_CALLS", "/tmp/graph_calls"), "*.pkl"))):
    with open(path, "rb") as f:
        while True:
            try:
                rec = pickle.load(f)
            except EOFError:
                break
            if rec[0] == "run":
                _, model, args, out, err = rec
                model = pickle.loads(model)
                seq, initial_state, return_state, lengths, threads = args
                runs += 1
                try:
                    got = model.run(seq, initial_state=initial_state, return_state=return_state, lengths=lengths,
                                    threads=threads)
                    if err is not None or not same(out, got):
                        bad += 1
                        print("RUN DIFF", err, type(model).__name__)
                except Exception as exc:
                    if err is None or err[1] != str(exc):
                        bad += 1
                        print("RUN ERR", repr(exc)[:300], "| recorded:", err and err[1][:300])
                    else:
                        errors += 1
            else:
                _, model, (batch, threads, static), ops, _ = rec
                seen[(model, repr(static)[:200], batch)] = (model, batch, threads, static, ops)
results = []
for key in sorted(seen):
    model, batch, threads, static, ops = seen[key]
    streams += 1
    stream = pickle.loads(model).stream(batch, threads, static=static)
    outs = []
    for name, args, out in ops:
        try:
            outs.append(getattr(stream, name)(args))
        except Exception as exc:
            outs.append(repr(exc))
    results.append(outs)
pickle.dump(results, open(sys.argv[1], "wb"))
print(f"runs {runs} (errors alike {errors}), differences {bad}; streams {streams} "
      f"({sum(len(v[4]) for v in seen.values())} calls) written to {sys.argv[1]}")
