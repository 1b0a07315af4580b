#!/usr/bin/env python
"""``grurt.load`` of typical ONNX files with two builds, interleaved: did the import get slower?

    python bench/onnx_load_time.py OLD_SRC [--new NEW_SRC] [--rounds 20]

The files, exported once with torch (``torch.onnx.export``, dynamo=False, opset 17):

* chain: a PyTorch GRU chain, ``nn.GRU(40, 128, num_layers=2, batch_first=True)`` then ``nn.Linear(128, 10)``,
  batch and time dynamic (the fused path: a chain Model);
* W9: bench/workloads_graph.py's attention pooling (BiGRU(128) + softmax weights over time), batch and time
  dynamic (a general TensorModel);
* W10: its DeepFilterNet-style step, one hop, as ``export_w10`` writes it (a general TensorModel).

Each build loads in a worker process of its own (``PYTHONPATH=<src>``); each round loads every file once
in each worker, in a shuffled order, timing ``grurt.load`` (``time.perf_counter``). The table gives the
medians over the rounds and new / old.
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def worker() -> None:
    import grurt

    for line in sys.stdin:
        path = line.strip()
        start = time.perf_counter()
        model = grurt.load(path)
        seconds = time.perf_counter() - start
        sys.stdout.write(json.dumps([seconds, type(model).__name__]) + "\n")
        sys.stdout.flush()


def export_files(folder):
    import torch
    from torch import nn

    sys.path.insert(0, HERE)
    import workloads_graph as wg

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(40, 128, num_layers=2, batch_first=True)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.gru(x)[0])

    torch.manual_seed(0)
    x = torch.randn(1, 100, 40)
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, module in (("chain", Chain().eval()), ("W9", wg.AttentionPooling().eval())):
            files[name] = os.path.join(folder, f"{name}.onnx")
            torch.onnx.export(module, (x,), files[name], input_names=["x"], output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "batch", 1: "time"}}, dynamo=False)
        files["W10"] = os.path.join(folder, "W10.onnx")
        wg.export_w10(wg.w10_module(), 1, files["W10"])
    return files


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("--new", default=os.path.join(os.path.dirname(HERE), "src"))
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = export_files(folder)
        builds = {"old": args.old, "new": args.new}
        workers = {label: subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True,
                                           env={**os.environ, "PYTHONPATH": src, "OPENBLAS_NUM_THREADS": "1"})
                   for label, src in builds.items()}
        times = {(label, name): [] for label in builds for name in files}
        kinds = {}
        turns = [(label, name) for label in builds for name in files]
        for round_ in range(args.rounds + 1):          # round 0 warms up (imports, first plans)
            random.shuffle(turns)
            for label, name in turns:
                process = workers[label]
                process.stdin.write(files[name] + "\n")
                process.stdin.flush()
                seconds, kind = json.loads(process.stdout.readline())
                kinds[label, name] = kind
                if round_:
                    times[label, name].append(seconds)
        for process in workers.values():
            process.stdin.close()
            process.wait()
    print(f"{_cpu()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of {args.rounds} loads")
    print(f"| file | model | old ({builds['old']}) | new ({builds['new']}) | new / old |")
    print("|---|---|---|---|---|")
    for name in files:
        old, new = (1e3 * float(np.median(times[label, name])) for label in ("old", "new"))
        print(f"| {name} | {kinds['new', name]} | {old:.1f} ms | {new:.1f} ms | {new / old:.2f} |")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
