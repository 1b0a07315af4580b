"""Hypothesis-drawn masks of valid steps, for the tests of masked GRUs (ops, Keras paths)."""
import numpy as np
from hypothesis import strategies as st


@st.composite
def masks(draw, batch: int, steps: int):
    """(batch, steps) valid steps: each row masked at the start, at the end, in between (its first
    and last steps valid), everywhere, nowhere, or at random."""
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["leading", "trailing", "interior", "none", "all", "random"]))
        cut = draw(st.integers(1, steps - 1))
        row = np.ones(steps, bool)
        if kind == "leading":
            row[:cut] = False
        elif kind == "trailing":
            row[cut:] = False
        elif kind == "interior":
            row[cut:cut + draw(st.integers(1, steps - cut))] = False
            row[0] = row[-1] = True
        elif kind == "all":
            row[:] = False
        elif kind == "random":
            row = np.array(draw(st.lists(st.booleans(), min_size=steps, max_size=steps)))
        rows.append(row)
    return np.stack(rows)
