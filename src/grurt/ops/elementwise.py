"""Ops of the elementwise family (see :mod:`grurt.ops`)."""
from __future__ import annotations
