#!/usr/bin/env python
"""Watch 1 thread against 2 while the machine changes: every ~8 s, the machine's scaling
(bench/scaling.py, short), then W2, W3 and W5 interleaved for 1.5 s each as one thread,
split forced (set_split_policy("always")) and the default measured choice ("auto"), medians,
then the scaling again. The split's gain shows in the moments when the cores scale; "auto"
must stay within 5% of one thread in the others.

    python bench/threads_watch.py SECONDS
"""
import os, sys, time, random
os.environ["OPENBLAS_NUM_THREADS"]="1"
import numpy as np, workloads, scaling
from grurt import _kernels as K
ws = {n: workloads.get(n) for n in ("W2","W3","W5")}
buf = np.empty((1, 256), np.float32)
def calls_for(w):
    if w.stream:
        s1, s2, s3 = w.model.stream(1), w.model.stream(1, threads=2), w.model.stream(1, threads=2)
        return {"1t": lambda: (K.set_split_policy("auto"), s1.step(w.x, out=buf)),
                "split": lambda: (K.set_split_policy("always"), s2.step(w.x, out=buf)),
                "auto": lambda: (K.set_split_policy("auto"), s3.step(w.x, out=buf))}
    return {"1t": lambda: (K.set_split_policy("auto"), w.model.run(w.x)),
            "split": lambda: (K.set_split_policy("always"), w.model.run(w.x, threads=2)),
            "auto": lambda: (K.set_split_policy("auto"), w.model.run(w.x, threads=2))}
C = {n: calls_for(w) for n, w in ws.items()}
end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
while time.time() < end:
    sc, a, t = scaling.measure(iterations=100, repeats=1)
    line = [f"{time.strftime('%H:%M:%S')} scaling {sc:.2f}"]
    for n, calls in C.items():
        t0=time.perf_counter(); calls["1t"](); cost=time.perf_counter()-t0
        burst=max(1,min(200,int(0.003/cost)))
        times={k:[] for k in calls}; order=list(calls); stop=time.perf_counter()+1.5
        while time.perf_counter()<stop or min(len(v) for v in times.values())<5:
            random.shuffle(order)
            for k in order:
                c=calls[k]; c()
                for _ in range(burst):
                    t0=time.perf_counter(); c(); times[k].append(time.perf_counter()-t0)
        m={k:np.median(v)*1e6 for k,v in times.items()}
        line.append(f"{n}: 1t {m['1t']:.1f} split {m['split']:.1f} ({m['1t']/m['split']:.2f}x) auto {m['auto']:.1f} ({m['1t']/m['auto']:.2f}x)")
    sc2, _, _ = scaling.measure(iterations=100, repeats=1)
    line.append(f"scaling after {sc2:.2f}")
    print(" | ".join(line), flush=True)
K.set_split_policy("auto")
