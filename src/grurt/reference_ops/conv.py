"""float64 references of the conv ops: plain numpy, independent of :mod:`grurt.ops.conv`."""
from __future__ import annotations

REFERENCE = {}
