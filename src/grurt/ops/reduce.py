"""Ops of the reduce family (see :mod:`grurt.ops`)."""
from __future__ import annotations
