"""float64 references of the reduce ops: plain numpy, independent of :mod:`grurt.ops.reduce`."""
from __future__ import annotations

REFERENCE = {}
