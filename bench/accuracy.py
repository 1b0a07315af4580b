#!/usr/bin/env python
"""Max abs error of each weight mode against PyTorch float32 and against float32 grurt, on
the benchmark workloads, the shipped forecaster and a 2 x GRU(400) speech-denoiser shape.

    python bench/accuracy.py        (prints the README's Accuracy table)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import grurt
from grurt.cli import EXAMPLES
from test_lowp import _workload  # the same networks the tests hold to the budgets


def rows():
    for name in ("W1", "W2", "W3", "W4", "W5", "denoiser"):
        model, x, expected = _workload(name)
        yield name, model, x, expected
    model = grurt.load(os.path.join(EXAMPLES, "forecaster.npz"))
    x = np.load(os.path.join(EXAMPLES, "forecaster_input.npy"))
    yield "forecaster.npz", model, x, None


def main():
    torch.set_num_threads(1)
    print("| model | mode | vs PyTorch f32: max abs | vs float32 grurt: max abs | max rel (of max abs output) |")
    print("|---|---|---:|---:|---:|")
    for name, model, x, expected in rows():
        y32 = model.run(x)
        for mode in ("bf16", "int8"):
            y = model.with_weights(mode).run(x)
            vs32 = float(np.abs(y - y32).max())
            vs_torch = "—" if expected is None else f"{float(np.abs(y - expected).max()):.1e}"
            print(f"| {name} | {mode} | {vs_torch} | {vs32:.1e} | {vs32 / float(np.abs(y32).max()):.1e} |")


if __name__ == "__main__":
    main()
