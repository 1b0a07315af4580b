"""Ops of the shape family (see :mod:`grurt.ops`)."""
from __future__ import annotations
