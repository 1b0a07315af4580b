"""float64 references of the linear ops: plain numpy, independent of :mod:`grurt.ops.linear`."""
from __future__ import annotations

REFERENCE = {}
