"""float64 references of the recurrent ops: plain numpy, independent of :mod:`grurt.ops.recurrent`."""
from __future__ import annotations

REFERENCE = {}
