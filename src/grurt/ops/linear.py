"""Ops of the linear family (see :mod:`grurt.ops`)."""
from __future__ import annotations
