"""float64 references of the elementwise ops: plain numpy, independent of :mod:`grurt.ops.elementwise`."""
from __future__ import annotations

REFERENCE = {}
