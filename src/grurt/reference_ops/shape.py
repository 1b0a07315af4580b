"""float64 references of the shape ops: plain numpy, independent of :mod:`grurt.ops.shape`."""
from __future__ import annotations

REFERENCE = {}
